"""One job, from a composed config to a finished run dir: validate, build, fit, test, write, finish W&B."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from s18exp import console
from s18exp.config import validate
from s18exp.data import Batches
from s18exp.io import atomic_write_json
from s18exp.loop import Runtime, fit, resolve_device, resolve_precision
from s18exp.tracking import Tracker


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def wandb_group(cfg: DictConfig) -> str:
    """The W&B group: set explicitly, else the sweep dir's name in a multirun, else the run's own name."""
    if cfg.wandb.group:
        return cfg.wandb.group
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return Path(hydra_cfg.sweep.dir).name
    return cfg.run_name


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one configuration; returns what it writes to summary.json."""
    validate(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    runtime = Runtime(device, resolve_precision(cfg.trainer.precision, device), cfg.trainer.channels_last)

    task = get_class(cfg.task._target_)(cfg)
    data = task.build_data()
    model = runtime.prepare_model(task.build_model())
    params = sum(p.numel() for p in model.parameters())
    resolved = OmegaConf.to_container(cfg, resolve=True)

    console.show_config(cfg)
    console.info(
        f"{cfg.run_name}: {params:,} parameters, {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test items, {device} {runtime.precision}, run dir {run_dir}"
    )
    identity = task.describe()
    tracker = Tracker(
        mode=cfg.wandb.mode,
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        run_dir=run_dir,
        name=cfg.run_name,
        group=wandb_group(cfg),
        job_type=identity["task"],
        tags=[str(v) for k, v in identity.items() if k in ("encoder", "decoder", "loss", "dataset", "condition")],
        config={**resolved, "params": params, "precision_resolved": runtime.precision},
        init_timeout=cfg.wandb.init_timeout,
    )
    try:
        train = Batches(data.train, cfg.trainer.batch_size, shuffle=True, seed=cfg.seed)
        val = Batches(data.val, cfg.trainer.eval_batch_size)
        test = Batches(data.test, cfg.trainer.eval_batch_size)
        start = time.perf_counter()
        result = fit(
            model, task, train, val, cfg.trainer, runtime, run_dir, tracker,
            checkpoint_extra={"config": resolved, "class_names": data.class_names},
        )
        best = torch.load(run_dir / "checkpoints" / "best.pt", map_location=device, weights_only=False)
        model.load_state_dict(best["model"])
        test_scores = task.evaluate(model, test, runtime)
        extra = task.finalize(model, data, runtime, run_dir, tracker)
        summary = {
            **{f"test/{k}": v for k, v in test_scores.items()},
            **extra,
            "best_epoch": result.best_epoch,
            f"best_val/{task.monitor}": result.best_value,
            "epochs_completed": result.epochs_completed,
            "train_seconds": result.train_seconds,
            "wall_seconds": time.perf_counter() - start,
            "params": params,
            "precision": runtime.precision,
            "device": str(device),
            "run_name": cfg.run_name,
            **identity,
            "status": "complete",
        }
        atomic_write_json(summary, run_dir / "summary.json")
        tracker.summarize(summary)
        if cfg.wandb.log_checkpoint:
            tracker.log_artifact(run_dir / "checkpoints" / "best.pt", name=f"{cfg.run_name}-best")
        console.show_metrics(f"test metrics of {cfg.run_name} (best epoch {result.best_epoch})", summary_metrics(summary))
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish()
    return summary


def summary_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k.startswith("test/")}
