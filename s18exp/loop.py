"""The plain PyTorch training loop, shared by every task: read `fit` top to bottom, then `train_epoch`.

`fit` knows nothing task-specific: the task supplies the batch loss (`task.training_loss`) and the
evaluation of a split (`task.evaluate`, returning a dict with the monitored metric). Each epoch trains,
validates, appends a line to `metrics.jsonl`, logs to W&B, and writes `checkpoints/last.pt` and, when
the monitored validation metric improves, `checkpoints/best.pt`; both atomically, on rank 0 only
(s18exp/checkpoint.py). Each update is `Updates.step` (s18exp/updates.py): backward, clipping, the optimiser,
its schedule and, with `trainer.ema_decay`, the moving average of the weights that validation scores.

Faults (s18exp/stopping.py): a SIGTERM/Ctrl-C lets the current step finish, saves `last.pt` with the position
inside the epoch and raises `Interrupted`; a non-finite loss is skipped up to `trainer.skip_nonfinite` times,
then raises `NonFiniteLoss` naming the epoch and step, leaving the last good checkpoints as they were.
A resumed run restores weights, optimiser, scheduler, scaler, RNG states and the position, and the
data order of an epoch depends only on (seed, epoch), so it continues exactly where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from omegaconf import DictConfig
from torch import nn

from s18exp import console
from s18exp.checkpoint import Checkpoints, TrainState, restore
from s18exp.data import Batches
from s18exp.distributed import all_reduce_sum
from s18exp.runtime import Runtime, unwrap
from s18exp.size_schedule import EpochPlan, epoch_plan
from s18exp.stopping import Interrupted, StepChecks, StopRequest
from s18exp.tracking import Tracker
from s18exp.updates import Updates


class LoopTask(Protocol):
    """The part of `s18exp.tasks.Task` that the loop itself calls: the batch loss, and the validation that
    picks the best epoch."""

    monitor: str  # key of the evaluation dict that picks the best epoch
    monitor_mode: str  # "max" or "min"

    def training_loss(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, progress: float = 1.0, size: int | None = None
    ) -> torch.Tensor:
        """The batch loss; `progress` is the share of training done, 0 at the first step (for schedules); `size` the
        side of the epoch's training views (None: the images' own)."""

    def evaluate(self, model: nn.Module, batches: Batches, runtime: Runtime) -> dict[str, float]: ...


@dataclass
class LoopContext:
    """What a run gives the loop besides the model, the task and the data: the `trainer` config, where it runs,
    where it writes and logs, what every checkpoint carries besides the training state (config, class names,
    W&B id), the checkpoint to continue from (a last.pt), the stop request it watches, and `plan`, each
    epoch's side of the training views and batch size (`trainer.size_schedule`; None: every epoch at the
    training batches' own size on the images as they are)."""

    trainer: DictConfig
    runtime: Runtime
    run_dir: Path
    tracker: Tracker
    checkpoint_extra: dict[str, Any]
    resume: dict[str, Any] | None = None
    stop: StopRequest = field(default_factory=StopRequest)
    plan: EpochPlan | None = None


@dataclass
class Training:
    """The working parts of one `fit`, built once and handed to each `train_epoch`."""

    context: LoopContext
    plan: EpochPlan
    updates: Updates
    state: TrainState
    checkpoints: Checkpoints
    clock: console.RunClock | None = None


class TrainedEpoch(NamedTuple):
    """An epoch's training, summed over the ranks."""

    loss: float  # mean over the images of the batches that updated the weights
    images: float
    seconds: float


def fit(model: nn.Module, task: LoopTask, train: Batches, val: Batches, context: LoopContext) -> TrainState:
    """Train until `trainer.max_epochs` epochs are complete, from `context.resume` when given.

    `model` is the plain module (or its DDP wrapper); with `trainer.compile` the steps and evaluations run
    through torch.compile's wrapper of it (of the averaged copy, with `trainer.ema_decay`), and checkpoints hold
    the plain module's state_dict.
    """
    trainer, runtime = context.trainer, context.runtime
    plan = context.plan or epoch_plan(train.items, [train.batch_size] * trainer.max_epochs, [None] * trainer.max_epochs)
    updates = Updates(model, trainer, plan.total_steps, runtime)
    state = restore(context.resume, updates, runtime.dist) if context.resume is not None else TrainState()
    checkpoints = Checkpoints(context.run_dir / "checkpoints", updates, state, runtime.dist, context.checkpoint_extra)
    clock = console.RunClock(state.epochs_completed + state.next_step / max(len(train), 1), trainer.max_epochs)
    training = Training(context, plan, updates, state, checkpoints, clock)
    step_model = compiled(model, trainer)
    val_model = validation_model(model, step_model, updates, context)

    for epoch in range(state.epochs_completed + 1, trainer.max_epochs + 1):
        trained = train_epoch(epoch, step_model, task, train, training)
        updates.end_epoch(runtime.dist)
        val_scores = task.evaluate(val_model, val, runtime)
        record = {
            "epoch": epoch,
            "train/loss": trained.loss,
            **{f"val/{k}": v for k, v in val_scores.items()},
            "lr": updates.lr,
            "epoch_seconds": trained.seconds,
            "train_images_per_second": trained.images / trained.seconds,
            **plan.record(epoch),
        }
        if runtime.dist.is_main:
            log_epoch(record, context.run_dir, context.tracker, trainer.max_epochs, task.monitor, clock)
        if state.complete_epoch(epoch, val_scores[task.monitor], trained.seconds, task.monitor_mode):
            # best.pt before last.pt: a kill between the two leaves last.pt one epoch behind, and the resumed
            # run redoes that epoch, instead of a last.pt that names a best epoch whose weights best.pt lacks.
            checkpoints.save("best.pt", "last.pt")
        else:
            checkpoints.save("last.pt")
        if context.stop.signum is not None:
            raise Interrupted(context.stop.signum)

    return state


def train_epoch(epoch: int, step_model: nn.Module, task: LoopTask, train: Batches, training: Training) -> TrainedEpoch:
    """One epoch of updates at the plan's batch size and side, from `state.next_step` when the epoch was stopped
    part-way. A stop request saves last.pt after the current step and raises `Interrupted`; too many non-finite losses
    raise `NonFiniteLoss`."""
    context, plan, updates, state = training.context, training.plan, training.updates, training.state
    runtime, dist, max_epochs = context.runtime, context.runtime.dist, context.trainer.max_epochs
    checks = StepChecks(epoch, state, context.trainer.skip_nonfinite, context.stop, dist, runtime.device)
    train.set_epoch(epoch, plan.batch_sizes[epoch - 1])
    size = plan.sizes[epoch - 1]
    step_model.train()
    skip = state.next_step
    loss_sum = torch.tensor(state.partial_loss_sum, device=runtime.device)
    seen, seconds_before = state.partial_seen, state.partial_seconds
    start = time.perf_counter()
    style = context.trainer.progress if dist.is_main else "off"
    with console.EpochProgress(epoch, max_epochs, len(train.split) // dist.world_size, style, training.clock) as progress:
        progress.advance(seen)
        last_shown = 0.0
        for step, (images, targets) in enumerate(train):
            if step < skip:
                continue
            images, targets = runtime.to_device(images, targets)
            with runtime.autocast():
                loss = task.training_loss(step_model, images, targets, plan.share_done(epoch, step), size)
            bad, stopping = checks.after_loss(loss, step)
            if bad:
                updates.skip()
            else:
                updates.step(loss)
                loss_sum += loss.detach() * len(images)
                seen += len(images)
            # Reading the loss syncs with the device, so the display refreshes it at most once a second.
            now = time.perf_counter()
            shown = None
            if now - last_shown > 1.0 and seen:
                checks.check_deferred()
                shown, last_shown = (loss_sum / seen).item(), now
            progress.advance(len(images), shown)
            if stopping:
                checks.check_deferred()
                state.next_step = step + 1
                state.partial_loss_sum, state.partial_seen = float(loss_sum), seen
                state.partial_seconds = seconds_before + time.perf_counter() - start
                training.checkpoints.save("last.pt")
                raise Interrupted(context.stop.signum or 15)
    checks.check_deferred()
    seconds = seconds_before + time.perf_counter() - start
    totals = all_reduce_sum(torch.stack([loss_sum.float().cpu(), torch.tensor(float(seen))]), dist)
    return TrainedEpoch(float(totals[0] / max(float(totals[1]), 1.0)), float(totals[1]), seconds)


def log_epoch(
    record: dict[str, Any], run_dir: Path, tracker: Tracker, max_epochs: int, monitor: str, clock: console.RunClock | None = None
) -> None:
    """The epoch's line in metrics.jsonl, in W&B and on the terminal (rank 0's), there with the run's elapsed
    time and ETA when given its `clock`."""
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    tracker.log(record, step=record["epoch"])
    console.info(
        f"epoch {record['epoch']}/{max_epochs}  "
        + console.format_metrics(record, ["train/loss", "val/loss", f"val/{monitor}"])
        + f"  {record['train_images_per_second']:.1f} img/s  {record['epoch_seconds']:.1f} s"
        + (f"  {clock.text(record['epoch'])}" if clock is not None else "")
    )


def compiled(model: nn.Module, trainer: DictConfig) -> nn.Module:
    """`model` through torch.compile when `trainer.compile` is true (the caller keeps the plain module)."""
    return torch.compile(model) if trainer.get("compile", False) else model


def validation_model(model: nn.Module, step_model: nn.Module, updates: Updates, context: LoopContext) -> nn.Module:
    """What validation runs: the weights `updates` has them scored (compiled with `trainer.compile`). It runs on
    each rank's shard without DDP's wrapper: it needs no gradient sync, and DDP's forward syncs buffers across
    ranks, which hangs when the ranks' shards have different numbers of batches."""
    evaluated = updates.evaluated_module()
    if evaluated is unwrap(model) and not context.runtime.dist.enabled:
        return step_model
    return compiled(evaluated, context.trainer)
