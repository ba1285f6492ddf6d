"""Reading checkpoints safely: the one place where `predict`, `score`, `generate` and a resumed run open a
`.pt` file, and where the commands that read one build its task and model (`load_checkpoint`).

A checkpoint may come from elsewhere (a W&B artifact, a download, a colleague), so loading one never runs
code from it:

- it is read with `torch.load(..., weights_only=True)`, which rebuilds tensors and plain Python types
  (dicts, lists, tuples, strings, numbers, None) and refuses everything else, so that a pickle that would call
  a function on load is refused before it runs; checkpoints hold nothing else (`loop.Checkpoints.save` stores the RNG
  states as tensors and tuples, the config as a plain dict);
- every `_target_` in the checkpoint's config, at any depth, must be one of the project's own config options
  (a `_target_` of a YAML file under conf/) or a torch.optim optimiser or learning-rate scheduler; anything
  else (`os.system`, a class of another package) is refused before anything is instantiated;
- tensors load onto the CPU; the caller moves weights to its device through `load_state_dict`, and the RNG
  states stay the CPU tensors that `torch.set_rng_state` and `torch.cuda.set_rng_state_all` need.

A checkpoint written before this format (with NumPy arrays inside) cannot load this way: it is refused
with a one-line message to retrain, never loaded the unsafe way.
"""

from __future__ import annotations

import inspect
import json
import pickle
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
    check_targets(state["config"], path)
    return state


@overload
def load_checkpoint(path: Path, device: torch.device) -> tuple[Task, torch.nn.Module, DictConfig]: ...
@overload
def load_checkpoint(path: Path, device: torch.device, kind: type[T]) -> tuple[T, torch.nn.Module, DictConfig]: ...
def load_checkpoint(path: Path, device: torch.device, kind: type[Task] | None = None) -> tuple[Task, torch.nn.Module, DictConfig]:
    """(task, model in eval mode on `device`, config) of a checkpoint for inference: the task built from the
    checkpoint's config and class names, the model with its weights. `kind`: the task class the caller needs
    (a UserError for a checkpoint of another task)."""
    state = read_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
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
