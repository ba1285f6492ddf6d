"""The range test of a composed config, run on its training split, shown and written (`find_lr`, which the
command runs), and `trainer.lr=auto` in a training run (`auto_lr`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from s18exp import console
from s18exp.data import Batches, TensorSplit
from s18exp.distributed import broadcast_object
from s18exp.lr_find import display
from s18exp.lr_find.range_test import Curve, range_test, settings_from
from s18exp.runtime import Runtime


def find_lr(cfg: DictConfig, task: Any, model: nn.Module, train: TensorSplit, runtime: Runtime, run_dir: Path) -> Curve:
    """The range test of a composed config on its training split: run it, show it, write lr_find.{json,png}."""
    settings = settings_from(cfg.trainer)
    console.info(
        f"LR range test: {settings.num_steps} steps from {settings.start_lr:.3g} to {settings.end_lr:.3g}, "
        f"batch size {cfg.trainer.batch_size}, {len(train)} training items"
    )
    batches = Batches(train, cfg.trainer.batch_size, shuffle=True, seed=cfg.seed)
    curve = range_test(model, task, batches, cfg.trainer, runtime)
    display.show(curve)
    display.write(curve, run_dir, title=f"LR range test: {cfg.run_name}")
    return curve


def auto_lr(
    cfg: DictConfig, task: Any, model: nn.Module, train: TensorSplit, runtime: Runtime, run_dir: Path,
    resume: dict[str, Any] | None = None,
) -> tuple[float, Curve | None]:
    """`trainer.lr=auto`: the learning rate to train with, and the curve it was read from (rank 0 of a fresh run;
    else None). Call after the model is built and before training. A resumed run takes the lr from its
    checkpoint's config instead of testing again; under torchrun, rank 0 tests on the whole training split and
    the other ranks take its pick."""
    saved = resume.get("config", {}).get("trainer", {}).get("lr") if resume is not None else None
    if isinstance(saved, (int, float)):
        console.info(f"trainer.lr=auto: {saved:.3g}, the pick of the run being resumed")
        return saved, None
    curve = find_lr(cfg, task, model, train, runtime, run_dir) if runtime.dist.is_main else None
    return broadcast_object(curve.pick if curve is not None else None, runtime.dist), curve
