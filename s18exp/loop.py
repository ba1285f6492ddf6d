"""The plain PyTorch training loop, shared by every task: read it top to bottom.

`fit` knows nothing task-specific: the task supplies the batch loss (`task.training_loss`) and the
evaluation of a split (`task.evaluate`, returning a dict with the monitored metric). Each epoch trains,
validates, appends a line to `metrics.jsonl`, logs to W&B, and writes `checkpoints/last.pt` and, when
the monitored validation metric improves, `checkpoints/best.pt`; both atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from s18exp import console
from s18exp.data import Batches
from s18exp.io import atomic_torch_save
from s18exp.tracking import Tracker

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Task(Protocol):
    monitor: str  # key of the evaluation dict that picks the best epoch
    monitor_mode: str  # "max" or "min"

    def training_loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, batches: Batches, runtime: "Runtime") -> dict[str, float]: ...

    def finalize(self, model: nn.Module, data: Any, runtime: "Runtime", run_dir: Path, tracker: Tracker) -> dict[str, Any]: ...


@dataclass
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    precision: str  # bf16 | fp16 | fp32, already resolved
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def to_device(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        return images.to(self.device, non_blocking=non_blocking), targets.to(self.device, non_blocking=non_blocking)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto` -> bf16 where the device computes it natively, else fp16 on a GPU and fp32 on a CPU."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


@dataclass
class FitResult:
    best_epoch: int
    best_value: float
    epochs_completed: int
    train_seconds: float


def fit(
    model: nn.Module,
    task: Task,
    train: Batches,
    val: Batches,
    trainer: DictConfig,
    runtime: Runtime,
    run_dir: Path,
    tracker: Tracker,
    checkpoint_extra: dict[str, Any],
) -> FitResult:
    """Train for `trainer.max_epochs` epochs; return which epoch was best and how long it took."""
    optimizer = instantiate(trainer.optimizer, params=model.parameters())
    scheduler = None
    if trainer.scheduler is not None:
        scheduler = instantiate(trainer.scheduler, optimizer=optimizer, total_steps=trainer.max_epochs * len(train))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
    better = (lambda a, b: a > b) if task.monitor_mode == "max" else (lambda a, b: a < b)
    best_value = -math.inf if task.monitor_mode == "max" else math.inf
    best_epoch = 0
    checkpoints = run_dir / "checkpoints"
    train_seconds = 0.0

    for epoch in range(1, trainer.max_epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=runtime.device)
        seen = 0
        start = time.perf_counter()
        with console.EpochProgress(epoch, trainer.max_epochs, len(train.split), trainer.progress) as progress:
            last_shown = 0.0
            for images, targets in train:
                images, targets = runtime.to_device(images, targets)
                with runtime.autocast():
                    loss = task.training_loss(model, images, targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if trainer.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                loss_sum += loss.detach() * len(images)
                seen += len(images)
                # Reading the loss syncs with the device, so the display refreshes it at most once a second.
                now = time.perf_counter()
                shown = None
                if now - last_shown > 1.0:
                    shown, last_shown = (loss_sum / seen).item(), now
                progress.advance(len(images), shown)
        epoch_seconds = time.perf_counter() - start
        train_seconds += epoch_seconds

        val_scores = task.evaluate(model, val, runtime)
        record = {
            "epoch": epoch,
            "train/loss": (loss_sum / max(seen, 1)).item(),
            **{f"val/{k}": v for k, v in val_scores.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": epoch_seconds,
            "train_images_per_second": seen / epoch_seconds,
        }
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        tracker.log(record, step=epoch)
        console.info(
            f"epoch {epoch}/{trainer.max_epochs}  "
            + console.format_metrics(record, ["train/loss", "val/loss", f"val/{task.monitor}"])
            + f"  {record['train_images_per_second']:.1f} img/s  {epoch_seconds:.1f} s"
        )

        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "val": val_scores,
            **checkpoint_extra,
        }
        atomic_torch_save(state, checkpoints / "last.pt")
        value = val_scores[task.monitor]
        if best_epoch == 0 or better(value, best_value):
            best_value, best_epoch = value, epoch
            atomic_torch_save(state, checkpoints / "best.pt")

    return FitResult(best_epoch, best_value, trainer.max_epochs, train_seconds)
