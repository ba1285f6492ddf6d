"""The plain PyTorch training loop, shared by every task: read it top to bottom.

`fit` knows nothing task-specific: the task supplies the batch loss (`task.training_loss`) and the
evaluation of a split (`task.evaluate`, returning a dict with the monitored metric). Each epoch trains,
validates, appends a line to `metrics.jsonl`, logs to W&B, and writes `checkpoints/last.pt` and, when
the monitored validation metric improves, `checkpoints/best.pt`; both atomically, on rank 0 only.

Faults: a SIGTERM/Ctrl-C lets the current step finish, saves `last.pt` with the position inside the
epoch and raises `Interrupted`; a non-finite loss is skipped up to `trainer.skip_nonfinite` times, then
raises `NonFiniteLoss` naming the epoch and step, leaving the last good checkpoints as they were.
A resumed run restores weights, optimiser, scheduler, scaler, RNG states and the position, and the
data order of an epoch depends only on (seed, epoch), so it continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from s18exp import console
from s18exp.data import Batches
from s18exp.distributed import all_reduce_sum, any_rank
from s18exp.errors import TrainingError
from s18exp.atomic_files import atomic_link, atomic_torch_save, atomic_write_text
from s18exp.runtime import Runtime, all_rng_states, set_rng_state, unwrap
from s18exp.stopping import Interrupted, StopRequest
from s18exp.tracking import Tracker
from s18exp.updates import optimizer_step


class NonFiniteLoss(TrainingError):
    """The loss became NaN or Inf more often than `trainer.skip_nonfinite` allows."""


class Task(Protocol):
    monitor: str  # key of the evaluation dict that picks the best epoch
    monitor_mode: str  # "max" or "min"

    def training_loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        """The batch loss; `progress` is the share of training done, 0 at the first step (for schedules)."""

    def evaluate(self, model: nn.Module, batches: Batches, runtime: Runtime) -> dict[str, float]: ...

    def finalize(self, model: nn.Module, data: Any, runtime: Runtime, run_dir: Path, tracker: Tracker) -> dict[str, Any]: ...


def compiled(model: nn.Module, trainer: DictConfig) -> nn.Module:
    """`model` through torch.compile when `trainer.compile` is true (the caller keeps the plain module)."""
    return torch.compile(model) if trainer.get("compile", False) else model


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


def truncate_metrics(path: Path, epochs: int) -> None:
    """Keep the lines of the first `epochs` epochs: a run killed after writing a line but before its
    checkpoint repeats that epoch, and each epoch must appear once."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= epochs]
    if len(kept) != len(lines):
        atomic_write_text("".join(line + "\n" for line in kept), path)


class FirstNonFinite:
    """The first non-finite loss of an epoch, recorded on the device, so that the step needs no host read."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        new = ~torch.isfinite(loss.detach()) & (self.step < 0)
        self.step = torch.where(new, step, self.step)
        self.value = torch.where(new, loss.detach().float(), self.value)

    def read(self) -> tuple[int, float] | None:
        """(step, loss) of the first non-finite loss, or None; one host read."""
        step = int(self.step)
        return None if step < 0 else (step, float(self.value))


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
    resume: dict[str, Any] | None = None,
    stop: StopRequest | None = None,
) -> TrainState:
    """Train until `trainer.max_epochs` epochs are complete, from `resume` (a last.pt) when given.

    `model` is the plain module (or its DDP wrapper); with `trainer.compile` the steps and evaluations run
    through torch.compile's wrapper of it, and checkpoints hold the plain module's state_dict.
    """
    dist = runtime.dist
    step_model = compiled(model, trainer)
    # Skipping a bad batch, and ranks agreeing on it, need to know before the update: one flag read per
    # step. Otherwise the check stays on the device and is read with the progress display (about once a
    # second) and before anything is saved, so that a GPU step has no host-device synchronisation.
    check_each_step = dist.enabled or trainer.skip_nonfinite > 0
    optimizer = instantiate(trainer.optimizer, params=model.parameters())
    scheduler = None
    if trainer.scheduler is not None:
        scheduler = instantiate(trainer.scheduler, optimizer=optimizer, total_steps=trainer.max_epochs * len(train))
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
    state = TrainState()
    if resume is not None:
        unwrap(model).load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        state = TrainState(**resume["train_state"])
        rngs = resume["rng"]
        set_rng_state(rngs[dist.rank])  # run.check_resumable made sure the checkpoint has one per rank
    better = (lambda a, b: a > b) if task.monitor_mode == "max" else (lambda a, b: a < b)
    checkpoints = run_dir / "checkpoints"
    stop = stop or StopRequest()

    def save(*names: str) -> None:
        rngs = all_rng_states(dist)
        if not dist.is_main:
            return
        snapshot = {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "epoch": state.epochs_completed,
            "train_state": asdict(state),
            "rng": rngs,
            **checkpoint_extra,
        }
        atomic_torch_save(snapshot, checkpoints / names[0])
        for name in names[1:]:
            atomic_link(checkpoints / names[0], checkpoints / name)

    def non_finite(value: float, epoch: int, step: int) -> NonFiniteLoss:
        kept = (
            f"checkpoints/last.pt of epoch {state.epochs_completed} is kept"
            if state.epochs_completed else "no epoch was complete, so there is no checkpoint"
        )
        return NonFiniteLoss(
            f"loss is {value} at epoch {epoch}, step {step + 1}; {kept}; lower trainer.lr or "
            f"set trainer.grad_clip (trainer.skip_nonfinite={trainer.skip_nonfinite} bad batches were allowed)"
        )

    for epoch in range(state.epochs_completed + 1, trainer.max_epochs + 1):
        train.set_epoch(epoch)
        step_model.train()
        first_bad = FirstNonFinite(runtime.device)

        def check_finite() -> None:
            if not check_each_step and (bad := first_bad.read()) is not None:
                raise non_finite(bad[1], epoch, bad[0])

        skip = state.next_step
        loss_sum = torch.tensor(state.partial_loss_sum, device=runtime.device)
        seen, seconds_before = state.partial_seen, state.partial_seconds
        start = time.perf_counter()
        style = trainer.progress if dist.is_main else "off"
        with console.EpochProgress(epoch, trainer.max_epochs, len(train.split) // dist.world_size, style) as progress:
            progress.advance(seen)
            last_shown = 0.0
            for step, (images, targets) in enumerate(train):
                if step < skip:
                    continue
                images, targets = runtime.to_device(images, targets)
                share_done = ((epoch - 1) * len(train) + step) / (trainer.max_epochs * len(train))
                with runtime.autocast():
                    loss = task.training_loss(step_model, images, targets, share_done)
                if check_each_step:
                    nonfinite = (~torch.isfinite(loss.detach())).cpu()
                    flags = any_rank(torch.stack([nonfinite, torch.tensor(stop.signum is not None)]), dist)
                    bad, stopping = bool(flags[0]), bool(flags[1])
                else:
                    first_bad.update(loss, step)
                    bad, stopping = False, stop.signum is not None
                if bad:
                    state.bad_batches += 1
                    optimizer.zero_grad(set_to_none=True)
                    if state.bad_batches > trainer.skip_nonfinite:
                        raise non_finite(loss.item(), epoch, step)
                    console.warn(f"skipped a batch with a non-finite loss at epoch {epoch}, step {step + 1}")
                else:
                    optimizer_step(model, loss, optimizer, scaler, scheduler, trainer.grad_clip)
                    loss_sum += loss.detach() * len(images)
                    seen += len(images)
                # Reading the loss syncs with the device, so the display refreshes it at most once a second.
                now = time.perf_counter()
                shown = None
                if now - last_shown > 1.0 and seen:
                    check_finite()
                    shown, last_shown = (loss_sum / seen).item(), now
                progress.advance(len(images), shown)
                if stopping:
                    check_finite()
                    state.next_step = step + 1
                    state.partial_loss_sum, state.partial_seen = float(loss_sum), seen
                    state.partial_seconds = seconds_before + time.perf_counter() - start
                    save("last.pt")
                    raise Interrupted(stop.signum or 15)
        check_finite()
        epoch_seconds = seconds_before + time.perf_counter() - start
        totals = all_reduce_sum(torch.stack([loss_sum.float().cpu(), torch.tensor(float(seen))]), dist)

        val_scores = task.evaluate(step_model, val, runtime)
        record = {
            "epoch": epoch,
            "train/loss": float(totals[0] / max(float(totals[1]), 1.0)),
            **{f"val/{k}": v for k, v in val_scores.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": epoch_seconds,
            "train_images_per_second": float(totals[1]) / epoch_seconds,
        }
        if dist.is_main:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            tracker.log(record, step=epoch)
            console.info(
                f"epoch {epoch}/{trainer.max_epochs}  "
                + console.format_metrics(record, ["train/loss", "val/loss", f"val/{task.monitor}"])
                + f"  {record['train_images_per_second']:.1f} img/s  {epoch_seconds:.1f} s"
            )

        value = val_scores[task.monitor]
        improved = state.best_epoch == 0 or better(value, state.best_value)
        if improved:
            state.best_value, state.best_epoch = value, epoch
        state.epochs_completed = epoch
        state.train_seconds += epoch_seconds
        state.next_step, state.partial_loss_sum, state.partial_seen, state.partial_seconds = 0, 0.0, 0, 0.0
        if improved:
            save("last.pt", "best.pt")
        else:
            save("last.pt")
        if stop.signum is not None:
            raise Interrupted(stop.signum)

    return state
