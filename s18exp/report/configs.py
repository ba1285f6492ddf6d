"""A run's `.hydra/*.yaml`, read as data: the report never lets a foreign config run anything.

The YAML is parsed by OmegaConf's safe loader and turned into plain Python values without resolving:
no resolver (`${oc.env:...}`, `${oc.create:...}`, `${now:...}`, any other `${name:...}`) is ever
evaluated, so a config cannot read the reader's environment or build objects. Plain interpolations of other
keys (`${trainer.lr}`, `${encoder.tag}_${decoder.tag}`) are resolved here, by text substitution on the plain
values; a value that calls a resolver, or refers to a key that is missing, stays as its raw text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

PLAIN_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w-]*(?:\.[\w-]+)*)\}")  # ${a.b.c}: no resolver, no relative key
MAX_DEPTH = 16  # chains of interpolations longer than this (or a cycle) stay raw
MISSING = object()


@dataclass(frozen=True)
class Config:
    values: dict[str, Any]  # the plain values, plain interpolations resolved
    derived: frozenset[str]  # dotted keys whose value is an interpolation of other keys, nothing of their own
    raw: dict[str, Any]  # the plain values as written, interpolations unresolved

    def references(self, key: str) -> list[str]:
        """The keys that the value of `key` interpolates, as written (`combo: ${encoder.tag}_...`)."""
        value = lookup(self.raw, key)
        return PLAIN_REFERENCE.findall(value) if isinstance(value, str) else []


def read(file: Path) -> tuple[Config | None, str | None]:
    """(the YAML file's mapping as plain values, None), or (None, why not)."""
    if not file.is_file():
        return None, f"no {file.name}"
    try:
        raw = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    except Exception as exc:  # a YAML error of any kind: the run is still listed
        return None, f"{file.name} could not be read ({type(exc).__name__})"
    if not isinstance(raw, dict):
        return None, f"{file.name} holds no mapping"
    values = resolve_plain(raw, raw)
    resolved = flatten(values)
    derived = frozenset(key for key, value in flatten(raw).items() if isinstance(value, str) and "${" in value and resolved.get(key) != value)
    return Config(values, derived, raw), None


def read_list(file: Path) -> tuple[list[Any] | None, str | None]:
    """(a YAML file's list, e.g. Hydra's overrides.yaml, as plain values, None), or (None, why not)."""
    if not file.is_file():
        return None, f"no {file.name}"
    try:
        raw = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    except Exception as exc:
        return None, f"{file.name} could not be read ({type(exc).__name__})"
    return (raw, None) if isinstance(raw, list) else (None, f"{file.name} holds no list")


def lookup(config: Any, key: str, default: Any = None) -> Any:
    """The value at dotted `key`, `default` when a part of the path is missing."""
    node = config
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return default
    return node


def resolve_plain(node: Any, root: Any, depth: int = 0) -> Any:
    """`node` with its plain interpolations resolved against `root` (see the module's docstring)."""
    if isinstance(node, dict):
        return {key: resolve_plain(value, root, depth) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve_plain(value, root, depth) for value in node]
    if not isinstance(node, str) or "${" not in node or "\\${" in node or depth >= MAX_DEPTH:
        return node
    whole = PLAIN_REFERENCE.fullmatch(node)
    if whole:  # the whole value is one reference: it takes the referred value's type
        target = lookup(root, whole.group(1), MISSING)
        return node if target is MISSING else resolve_plain(target, root, depth + 1)
    pieces: list[str] = []
    position = 0
    for match in PLAIN_REFERENCE.finditer(node):
        target = resolve_plain(lookup(root, match.group(1), MISSING), root, depth + 1)
        if target is MISSING or isinstance(target, (dict, list)) or (isinstance(target, str) and "${" in target):
            return node
        pieces += [node[position : match.start()], _text(target)]
        position = match.end()
    text = "".join(pieces) + node[position:]
    return node if "${" in text else text  # a resolver call somewhere in it: keep it raw


def _text(value: Any) -> str:
    """A scalar as OmegaConf puts it into a string interpolation."""
    return "None" if value is None else str(value)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (a list is one leaf)."""
    if not isinstance(config, dict):
        return {prefix: config} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
