"""Strict keys: every `key=value` of the command line must name a setting that a config group defines, and
every `group=option` an option of that group.

Hydra alone lets a misspelt key through when it is written `+key=value` (the run starts and the setting does
nothing) and, without the `+`, answers with advice to add the `+`; a misspelt option of a group gets its
many-line error. Here all of them stop before Hydra starts, with one line that names the key (or option) and
the closest known one.

The one kind of key a config group does not list but a run may take: an argument of an object that
Hydra builds from a `_target_` node (`+trainer.optimizer.betas=[0.9,0.95]`), accepted with `+` when the
target's signature has that parameter. Hydra's own keys (`hydra.*`) are Hydra's to check.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from s18exp.errors import UserError
from s18exp.paths import CONFIG_DIR

MISSING = object()


def _dotted_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}{key}"
            yield from _dotted_keys(value, f"{prefix}{key}.")


def _is_group(name: str) -> bool:
    return (CONFIG_DIR / name).is_dir()


def _target_parameters(node: Any) -> tuple[set[str], bool] | None:
    """The parameter names of the callable a `_target_` node names, and whether it takes any keyword."""
    target = node.get("_target_") if OmegaConf.is_dict(node) else None
    if not isinstance(target, str):
        return None
    module, _, name = target.rpartition(".")
    try:
        signature = inspect.signature(getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    kinds = {p.kind for p in signature.parameters.values()}
    return set(signature.parameters), inspect.Parameter.VAR_KEYWORD in kinds


def _closest(key: str, known: list[str]) -> str | None:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return close[0] if close else None


def check_key(cfg: DictConfig, key: str, adds: bool, written: str) -> None:
    """A UserError when `key` (written on the command line as `written`) is no setting of `cfg`; `adds`:
    it was written with `+` or `++`."""
    exists = OmegaConf.select(cfg, key, default=MISSING) is not MISSING
    if exists:
        if written.startswith("+") and not written.startswith("++"):
            raise UserError(f"{key} is already a setting; write {written[1:]} without the +")
        return
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    target = _target_parameters(node) if OmegaConf.is_dict(node) else None
    if target is not None and (leaf in target[0] or target[1]) and not leaf.startswith("_"):
        if adds:
            return
        raise UserError(f"{key} is not in the config but {node._target_} takes {leaf}; add it with +{written}")
    known = [k for k in _dotted_keys(OmegaConf.to_container(cfg, resolve=False)) if not k.startswith("hydra")]
    if target is not None:
        known += [f"{parent}.{name}" for name in target[0] if name not in ("self", "cfg")]
    hint = _closest(key, known)
    advice = f"did you mean {hint}?" if hint else "python -m s18exp --cfg job lists the settings"
    raise UserError(f"{key} is not a setting; {advice}")


def check_group_option(group: str, option: str) -> None:
    """A UserError when `option` is none of the config group's options (`null` deselects a group)."""
    folder = CONFIG_DIR / group
    if option == "null" or (folder / f"{option}.yaml").is_file():
        return
    options = sorted(path.stem for path in folder.glob("*.yaml"))
    hint = _closest(option, options)
    advice = f"did you mean {group}={hint}? " if hint else ""
    raise UserError(f"{group}={option} is not an option of {group}; {advice}the options are {', '.join(options)}")


def _compositions(group_overrides: list[Any]) -> Iterator[list[str]]:
    """Override lists covering each value of each swept group once (the other sweeps at their first value)."""
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line] for o in group_overrides]
    first = [c[0] for c in choices]
    yield first
    for i, options in enumerate(choices):
        for option in options[1:]:
            yield first[:i] + [option] + first[i + 1 :]


def check_command_line(argv: list[str]) -> None:
    """A UserError for the first key of the command line that no config group defines; nothing for
    command lines Hydra itself will refuse (it says why)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        args = get_args_parser().parse_args(argv)
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except (SystemExit, HydraException):
        return
    keys, groups = [], []
    for override in overrides:
        name = override.key_or_group
        if name.split(".")[0].split("/")[0] == "hydra":
            continue
        (groups if _is_group(name) or override.package is not None else keys).append(override)
    for override in groups:
        if not override.is_delete() and override.package is None:
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
            for value in values:
                if value is not None:  # `group=null` deselects the group
                    check_group_option(override.key_or_group, str(value))
    if not keys:
        return
    group_lines = [o for o in groups if not o.is_delete()]
    for selection in _compositions(group_lines):
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = compose(config_name="config", overrides=selection)
        except HydraException:
            return
        for override in keys:
            check_key(cfg, override.key_or_group, override.is_add() or override.is_force_add(), override.input_line)


def exit_on_unknown_keys(argv: list[str]) -> None:
    """`check_command_line`, its error as one line on stderr and exit status 2: for the Hydra entry points."""
    try:
        check_command_line(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
