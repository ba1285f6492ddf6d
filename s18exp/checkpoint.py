"""Reading checkpoints safely: the one place where `predict`, `score`, `generate` and a resumed run open a
`.pt` file, and where the commands that read one build its task and model (`load_checkpoint`).

A checkpoint may come from elsewhere (a W&B artifact, a download, a colleague), so loading one never runs
code from it:

- it is read with `torch.load(..., weights_only=True)`, which rebuilds tensors and plain Python types
  (dicts, lists, tuples, strings, numbers, None) and refuses everything else, so that a pickle that would call
  a function on load is refused before it runs; checkpoints hold nothing else (`loop.Checkpoints.save` stores the RNG
  states as tensors and tuples, the config as a plain dict);
- the checkpoint's config must be plain data: nested dicts and lists of strings, numbers, booleans and None,
  with no OmegaConf interpolation or resolver call (`${...}`) anywhere, in a key or a value. A run saves its
  config resolved, so an s18exp checkpoint never holds one; a crafted one could call a resolver such as
  `oc.create` with a `_target_` of its choosing, so it is refused before the config is ever turned into an
  OmegaConf object;
- every `_target_` in the checkpoint's config, at any depth, must be one of the project's own config options
  (a `_target_` of a YAML file under conf/) or a torch.optim optimiser or learning-rate scheduler; anything
  else (`os.system`, a class of another package) is refused before anything is instantiated;
- the commands that read a checkpoint take every path and download setting from the local machine, never
  from the checkpoint (`local_config`): where the data lie, the cache folders, and no download;
- tensors load onto the CPU; the caller moves weights to its device through `load_state_dict`, and the RNG
  states stay the CPU tensors that `torch.set_rng_state` and `torch.cuda.set_rng_state_all` need.

A checkpoint written before this format (with NumPy arrays inside) cannot load this way: it is refused
with a one-line message to retrain, never loaded the unsafe way.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar, overload

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from s18exp.config import TEST_WEIGHTS
from s18exp.errors import UserError
from s18exp.paths import CONFIG_DIR
from s18exp.tasks import Task, task_for

T = TypeVar("T", bound=Task)


@lru_cache(maxsize=1)
def project_targets() -> frozenset[str]:
    """Every `_target_` written in a YAML file of conf/, at any depth."""
    found: set[str] = set()
    for file in Path(CONFIG_DIR).rglob("*.yaml"):
        found.update(_targets_in(yaml.safe_load(file.read_text())))
    return frozenset(found)


def _targets_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if "_target_" in node else []
        return own + [t for value in node.values() for t in _targets_in(value)]
    if isinstance(node, list):
        return [t for item in node for t in _targets_in(item)]
    return []


def _is_torch_optim_class(target: str) -> bool:
    """`torch.optim.<Optimizer>` or `torch.optim.lr_scheduler.<scheduler>`, looked up without importing anything else."""
    module_name, _, name = target.rpartition(".")
    kinds = {"torch.optim": torch.optim.Optimizer, "torch.optim.lr_scheduler": torch.optim.lr_scheduler.LRScheduler}
    if module_name not in kinds:
        return False
    module = torch.optim if module_name == "torch.optim" else torch.optim.lr_scheduler
    value = getattr(module, name, None)
    return inspect.isclass(value) and issubclass(value, kinds[module_name])


def check_targets(config: Any, source: Path) -> None:
    """UserError naming the first `_target_` of `config` that is not one of the project's own options."""
    allowed = project_targets()
    for target in _targets_in(config):
        if not isinstance(target, str) or not (target in allowed or _is_torch_optim_class(target)):
            raise UserError(
                f"{source} asks to build _target_={target!r}, which is not one of s18exp's config options; "
                "refusing to load a checkpoint from an unknown source (use one that s18exp trained)"
            )


PLAIN_SCALARS = (str, int, float, bool, type(None))


def check_plain(node: Any, source: Path, where: str = "config") -> None:
    """UserError unless `node` is plain data (dicts with string keys, lists, scalars) with no `${...}` in any key
    or string: what OmegaConf would read as an interpolation or a resolver call."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str) or "${" in key:
                raise UserError(f"{source} has a config key {str(key)[:80]!r} at {where} that is not a plain name; refusing to load it (use a checkpoint that s18exp trained)")
            check_plain(value, source, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for index, item in enumerate(node):
            check_plain(item, source, f"{where}[{index}]")
    elif not isinstance(node, PLAIN_SCALARS):
        raise UserError(f"{source} holds a {type(node).__name__} at {where}, not a plain config value; refusing to load it (use a checkpoint that s18exp trained)")
    elif isinstance(node, str) and "${" in node:
        raise UserError(
            f"{source} has an interpolation or resolver call at {where} ({node[:60]!r}); an s18exp checkpoint stores "
            "its config resolved, so this file was edited: refusing to load it (use a checkpoint that s18exp trained)"
        )


def local_config(cfg: DictConfig, data_root: str | None = None) -> DictConfig:
    """`cfg` (a checkpoint's config) with every setting that names a place on this machine taken from here:
    `paths` from conf/paths/default.yaml, `data.root` from `data_root` (the command line) or else
    `$S18EXP_DATA` or `paths.data_home`, no download, and a data set's own sub-folder names at their defaults.
    A checkpoint from elsewhere decides what the model is, never where anything is read or written."""
    paths = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "paths" / "default.yaml"), resolve=True)
    local = OmegaConf.to_container(cfg, resolve=False)
    local["paths"] = paths
    data = local.setdefault("data", {})
    data["root"] = data_root if data_root is not None else os.environ.get("S18EXP_DATA") or paths["data_home"]
    data["download"] = False
    for key, default in _data_defaults(str(data.get("name"))).items():
        if key in data:
            data[key] = default
    return OmegaConf.create(local)


def _data_defaults(name: str) -> dict[str, Any]:
    """The sub-folder settings of conf/data/<name>.yaml (keys ending in `_dir`): local names, never a checkpoint's."""
    file = CONFIG_DIR / "data" / f"{name}.yaml"
    if not name.isidentifier() or not file.is_file():
        return {}
    group = yaml.safe_load(file.read_text()) or {}
    return {key: value for key, value in group.items() if key.endswith("_dir")}


def run_weights_file(run_dir: Path) -> Path:
    """The checkpoint a run dir stands for: the one its test split was scored with (`test_weights` in its
    summary.json, from `eval.weights`), or best.pt for a run without a complete summary."""
    try:
        chosen = json.loads((run_dir / "summary.json").read_text()).get("test_weights")
    except (OSError, ValueError, AttributeError):
        chosen = None
    return run_dir / "checkpoints" / f"{chosen if chosen in TEST_WEIGHTS else 'best'}.pt"


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, tensors on the CPU, after the checks above; a one-line UserError otherwise."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; give RUN_DIR/checkpoints/best.pt or last.pt of a run")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6; s18exp writes nothing else
        raise UserError(f"{path} is not a PyTorch checkpoint (not a zip archive as torch.save writes); give a .pt file that s18exp wrote")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        what = str(exc).split("\n\n")[-1].strip().splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"{path} holds more than tensors and plain values ({what[:160]}), so it is not loaded: it was written by "
            "an older s18exp or by other software; retrain to get a checkpoint in the current format"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"{path} is not a readable checkpoint ({type(exc).__name__}); give a .pt file that s18exp wrote") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or "model" not in state:
        raise UserError(f"{path} is not an s18exp checkpoint (no model weights and config); give a .pt file that s18exp wrote")
    check_plain(state["config"], path)
    check_plain(state.get("class_names"), path, "class_names")
    check_targets(state["config"], path)
    return state


@overload
def load_checkpoint(path: Path, device: torch.device, *, data_root: str | None = None) -> tuple[Task, torch.nn.Module, DictConfig]: ...
@overload
def load_checkpoint(path: Path, device: torch.device, kind: type[T], data_root: str | None = None) -> tuple[T, torch.nn.Module, DictConfig]: ...
def load_checkpoint(
    path: Path, device: torch.device, kind: type[Task] | None = None, data_root: str | None = None
) -> tuple[Task, torch.nn.Module, DictConfig]:
    """(task, model in eval mode on `device`, config) of a checkpoint for inference: the task built from the
    checkpoint's config (its places on disk made local by `local_config`, with `data_root` from the command
    line) and class names, the model with its weights. `kind`: the task class the caller needs (a UserError
    for a checkpoint of another task)."""
    state = read_checkpoint(path)
    cfg = local_config(OmegaConf.create(state["config"]), data_root)
    if OmegaConf.select(cfg, "task._target_") is None:
        raise UserError(f"{path} has no task._target_ in its config; give a .pt file that s18exp wrote")
    task = task_for(cfg, class_names=state.get("class_names"))
    if kind is not None and not isinstance(task, kind):
        raise UserError(f"ckpt={path} is a task={task.name} checkpoint; this command needs one of task={kind.name}")
    model = task.build_model()
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise UserError(f"{path}: the weights do not fit the model its config describes ({first[:160]}); the file is damaged or edited") from None
    return task, model.to(device).eval(), cfg
