"""Checkpoints, the one module that writes, reads and resumes from them: `Checkpoints` writes last.pt and
best.pt during training (`TrainState`, the progress they carry); `read_checkpoint` opens a `.pt` file safely for
`predict`, `score`, `generate` and a resumed run, and `load_checkpoint` builds the task and model of one for the
commands that read it; `find_resume`, `read_resumable`, `restore`, `start_history` and `read_last_state` are
resuming (`trainer.resume`): which checkpoint, whether it continues the same training, its state back in place,
its run's history brought along, and the progress of a run that stopped.

A checkpoint may come from elsewhere (a W&B artifact, a download, a colleague), so loading one never runs
code from it:

- it is read with `torch.load(..., weights_only=True)`, which rebuilds tensors and plain Python types
  (dicts, lists, tuples, strings, numbers, None) and refuses everything else, so that a pickle that would call
  a function on load is refused before it runs; checkpoints hold nothing else (`Checkpoints.save` stores the RNG
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
import math
import os
import pickle
import shutil
import zipfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from s18exp import console
from s18exp.atomic_files import atomic_link, atomic_torch_save, atomic_write_text
from s18exp.distributed import Dist
from s18exp.errors import UserError
from s18exp.options import TEST_WEIGHTS
from s18exp.paths import CONFIG_DIR
from s18exp.runtime import all_rng_states, set_rng_state
from s18exp.size_schedule import schedule_text, size_schedule
from s18exp.tasks import Task, task_for

if TYPE_CHECKING:
    from s18exp.updates import Updates

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


@dataclass
class TrainState:
    """Progress that a checkpoint carries besides the weights; `next_step` > 0 means stopped mid-epoch."""

    epochs_completed: int = 0
    best_epoch: int = 0
    best_value: float = math.nan
    train_seconds: float = 0.0
    bad_batches: int = 0
    next_step: int = 0
    partial_loss_sum: float = 0.0
    partial_seen: int = 0
    partial_seconds: float = 0.0

    def complete_epoch(self, epoch: int, value: float, seconds: float, mode: str) -> bool:
        """Record a finished epoch and its monitored value (`mode` "max" or "min"); True when it is the best so far.
        A NaN value is the best only while no epoch had a number: any number beats it."""
        improved = (
            self.best_epoch == 0
            or (math.isnan(self.best_value) and not math.isnan(value))
            or (value > self.best_value if mode == "max" else value < self.best_value)
        )
        if improved:
            self.best_value, self.best_epoch = value, epoch
        self.epochs_completed = epoch
        self.train_seconds += seconds
        self.next_step, self.partial_loss_sum, self.partial_seen, self.partial_seconds = 0, 0.0, 0, 0.0
        return improved


@dataclass
class Checkpoints:
    """Writes the checkpoints of a run: the weights and update state of `updates` (the averaged weights as
    `model` with `trainer.ema_decay`), the progress, every rank's RNG states and `extra` (config, class names,
    W&B id)."""

    folder: Path
    updates: Updates
    state: TrainState
    dist: Dist
    extra: dict[str, Any]

    def save(self, *names: str) -> None:
        """The first name written atomically, the others linked to it; every rank calls it (the RNG states are
        gathered), rank 0 writes."""
        rngs = all_rng_states(self.dist)
        if not self.dist.is_main:
            return
        snapshot = {
            **self.updates.state_dict(),
            "epoch": self.state.epochs_completed,
            "train_state": asdict(self.state),
            "rng": rngs,
            **self.extra,
        }
        atomic_torch_save(snapshot, self.folder / names[0])
        for name in names[1:]:
            atomic_link(self.folder / names[0], self.folder / name)


def restore(resume: dict[str, Any], updates: Updates, dist: Dist) -> TrainState:
    """Weights, update state and this rank's RNG states from a last.pt; returns its progress."""
    updates.load_state_dict(resume)
    set_rng_state(resume["rng"][dist.rank])  # check_resumable made sure the checkpoint has one per rank
    return TrainState(**resume["train_state"])


def find_resume(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to continue from, per `trainer.resume`."""
    mode = str(cfg.trainer.resume)
    if mode == "never":
        return None
    if mode == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.exists() else None
    path = Path(mode).expanduser()
    path = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"trainer.resume={mode} holds no checkpoint; give a run dir with checkpoints/last.pt or a .pt file")
    return path


def read_resumable(path: Path | None, cfg: DictConfig, model: torch.nn.Module, world_size: int) -> dict[str, Any] | None:
    """The checkpoint at `path` (None: a fresh run), after `check_resumable`."""
    if path is None:
        return None
    checkpoint = read_checkpoint(path)
    check_resumable(checkpoint, cfg, model, world_size, path)
    return checkpoint


def check_resumable(checkpoint: dict[str, Any], cfg: DictConfig, model: torch.nn.Module, world_size: int, path: Path) -> None:
    """A resume must continue the same training: the keys that fix the step schedule, the sides of the training
    views and the weight average, the number of ranks (the data order and the RNG states are per rank) and the
    model's parameter names and shapes."""
    saved = OmegaConf.create(checkpoint["config"])
    averaged = OmegaConf.select(saved, "trainer.ema_decay") is not None
    needed = ("optimizer", "scaler", "train_state", "rng") + (("trained_model", "average_updates") if averaged else ())
    missing = [key for key in needed if key not in checkpoint]
    if missing:
        raise UserError(f"{path} holds weights but no training state ({', '.join(missing)}); resume from a last.pt or best.pt that a run wrote")
    epochs_fixed = cfg.trainer.scheduler is not None or size_schedule(cfg) is not None
    keys = ["trainer.batch_size", "trainer.ema_decay", "data.limit_train"] + (["trainer.max_epochs"] if epochs_fixed else [])
    if size_schedule(saved) != size_schedule(cfg):
        raise UserError(
            f"trainer.size_schedule ({schedule_text(size_schedule(cfg))}) differs from the one in {path} "
            f"({schedule_text(size_schedule(saved))}); resume with that run's trainer.size_schedule or trainer.resume=never"
        )
    for key in keys:
        before, now = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        if before != now:
            raise UserError(
                f"{key}={as_override(now)} differs from {as_override(before)} in {path}; "
                f"resume with {key}={as_override(before)} or trainer.resume=never"
            )
    saved_ranks = len(checkpoint["rng"])
    if saved_ranks != world_size:
        raise UserError(
            f"this run has {world_size} rank(s) but {path} was written by {saved_ranks}; resume with "
            f"torchrun --nproc_per_node={saved_ranks} (or without torchrun for 1), or trainer.resume=never"
        )
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    saved_shapes = {name: tuple(tensor.shape) for name, tensor in checkpoint["model"].items()}
    if shapes != saved_shapes:
        changed = [k for k in saved_shapes if k not in shapes] + [k for k in shapes if saved_shapes.get(k) != shapes[k]]
        first = changed[0]
        detail = f"{first} is {saved_shapes.get(first, 'absent')} there and {shapes.get(first, 'absent')} here"
        raise UserError(
            f"the model differs from the one in {path} ({len(changed)} parameter(s) differ; {detail}); "
            "resume with the model settings of that run or trainer.resume=never"
        )


def as_override(value: object) -> str:
    """A config value as a command line writes it (None is null there)."""
    return "null" if value is None else str(value)


def adopt_history(resume_path: Path, run_dir: Path) -> None:
    """Resuming from another run's checkpoint: bring its metrics.jsonl and checkpoints along, so this run dir
    holds the whole history (best.pt falls back to the resumed checkpoint itself; last.pt is the resumed
    checkpoint until training writes its own, so that a finished run resumed elsewhere has one to test)."""
    source_dir = resume_path.parent.parent
    if source_dir.resolve() == run_dir.resolve():
        return
    if (source_dir / "metrics.jsonl").exists():
        shutil.copyfile(source_dir / "metrics.jsonl", run_dir / "metrics.jsonl")
    best = resume_path.parent / "best.pt"
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    atomic_link(best if best.exists() else resume_path, run_dir / "checkpoints" / "best.pt")
    atomic_link(resume_path, run_dir / "checkpoints" / "last.pt")


def truncate_metrics(path: Path, epochs: int) -> None:
    """Keep the lines of the first `epochs` epochs: a run killed after writing a line but before its
    checkpoint repeats that epoch, and each epoch must appear once."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= epochs]
    if len(kept) != len(lines):
        atomic_write_text("".join(line + "\n" for line in kept), path)


def start_history(resume: dict[str, Any] | None, path: Path | None, run_dir: Path, dist: Dist) -> None:
    """metrics.jsonl as training starts: a resumed run's history up to its checkpoint (another run's brought
    along), a fresh run's none."""
    if resume is not None:
        done = resume["train_state"]["epochs_completed"]
        console.info(f"resuming from {path} after {done} complete epochs")
        if dist.is_main:
            adopt_history(path, run_dir)
            truncate_metrics(run_dir / "metrics.jsonl", done)
    elif dist.is_main:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)


def read_last_state(run_dir: Path) -> dict[str, Any]:
    """`epochs_completed` and `best_epoch` from last.pt, for the summary of a run that stopped early."""
    try:
        state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["train_state"]
    except (OSError, KeyError, RuntimeError, pickle.UnpicklingError):
        return {"epochs_completed": 0}
    return {"epochs_completed": state["epochs_completed"], "best_epoch": state["best_epoch"]}
