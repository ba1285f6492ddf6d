"""The plain PyTorch training loop, shared by every task: read `fit` top to bottom, then `train_epoch`.

`fit` knows nothing task-specific: the task supplies the batch loss (`task.training_loss`) and the
evaluation of a split (`task.evaluate`, returning a dict with the monitored metric). Each epoch trains,
validates, appends a line to `metrics.jsonl`, logs to W&B, and writes `checkpoints/last.pt` and, when
the monitored validation metric improves, `checkpoints/best.pt`; both atomically, on rank 0 only.

Faults: a SIGTERM/Ctrl-C lets the current step finish, saves `last.pt` with the position inside the
epoch and raises `Interrupted`; a non-finite loss is skipped up to `trainer.skip_nonfinite` times, then
raises `NonFiniteLoss` naming the epoch and step, leaving the last good checkpoints as they were.
A resumed run restores weights, optimiser, scheduler, scaler, RNG states and the position, and the
data order of an epoch depends only on (seed, epoch), so it continues exactly where it stopped.

With `trainer.ema_decay` set, an exponential moving average of the weights (and of the BatchNorm statistics)
follows every update; validation scores the averaged weights, and checkpoints hold them as `model`, the
weights that test, predict and score load, with the trained weights beside them for resuming.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from s18exp import console
from s18exp.data import Batches
from s18exp.distributed import Dist, all_reduce_sum, any_rank
from s18exp.errors import TrainingError
from s18exp.atomic_files import atomic_link, atomic_torch_save, atomic_write_text
from s18exp.runtime import Runtime, all_rng_states, set_rng_state, unwrap
from s18exp.size_schedule import EpochPlan, epoch_plan
from s18exp.stopping import Interrupted, StopRequest
from s18exp.tracking import Tracker
from s18exp.updates import optimizer_step
from s18exp.weight_average import WeightAverage


class NonFiniteLoss(TrainingError):
    """The loss became NaN or Inf more often than `trainer.skip_nonfinite` allows."""


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
class Updates:
    """What updates the weights: the optimiser, its lr schedule (None for a constant lr), the fp16 scaler and
    the moving average of the weights (None without `trainer.ema_decay`)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    average: WeightAverage | None


class TrainedEpoch(NamedTuple):
    """An epoch's training, summed over the ranks."""

    loss: float  # mean over the images of the batches that updated the weights
    images: float
    seconds: float


def fit(
    model: nn.Module,
    task: LoopTask,
    train: Batches,
    val: Batches,
    trainer: DictConfig,
    runtime: Runtime,
    run_dir: Path,
    tracker: Tracker,
    checkpoint_extra: dict[str, Any],
    resume: dict[str, Any] | None = None,
    stop: StopRequest | None = None,
    plan: EpochPlan | None = None,
) -> TrainState:
    """Train until `trainer.max_epochs` epochs are complete, from `resume` (a last.pt) when given.

    `plan` gives each epoch's side of the training views and batch size (`trainer.size_schedule`); None: every
    epoch at `train`'s batch size on the images as they are.

    `model` is the plain module (or its DDP wrapper); with `trainer.compile` the steps and evaluations run
    through torch.compile's wrapper of it (of the averaged copy, with `trainer.ema_decay`), and checkpoints hold
    the plain module's state_dict.
    """
    step_model = compiled(model, trainer)
    plan = plan or epoch_plan(train.items, [train.batch_size] * trainer.max_epochs, [None] * trainer.max_epochs)
    updates = build_updates(model, trainer, plan.total_steps, runtime)
    # Validation runs on each rank's shard without DDP's wrapper: it needs no gradient sync, and DDP's forward
    # syncs buffers across ranks, which hangs when the ranks' shards have different numbers of batches.
    if updates.average is not None:
        val_model = compiled(updates.average.module, trainer)
    else:
        val_model = compiled(unwrap(model), trainer) if runtime.dist.enabled else step_model
    state = restore(resume, model, updates, runtime.dist) if resume is not None else TrainState()
    checkpoints = Checkpoints(run_dir / "checkpoints", model, updates, state, runtime.dist, checkpoint_extra)
    stop = stop or StopRequest()
    clock = console.RunClock(state.epochs_completed + state.next_step / max(len(train), 1), trainer.max_epochs)

    for epoch in range(state.epochs_completed + 1, trainer.max_epochs + 1):
        trained = train_epoch(epoch, model, step_model, task, train, trainer, runtime, updates, state, checkpoints, stop, plan, clock)
        if updates.average is not None:
            updates.average.agree_across_ranks(runtime.dist)
        val_scores = task.evaluate(val_model, val, runtime)
        record = {
            "epoch": epoch,
            "train/loss": trained.loss,
            **{f"val/{k}": v for k, v in val_scores.items()},
            "lr": updates.optimizer.param_groups[0]["lr"],
            "epoch_seconds": trained.seconds,
            "train_images_per_second": trained.images / trained.seconds,
            **plan.record(epoch),
        }
        if runtime.dist.is_main:
            log_epoch(record, run_dir, tracker, trainer.max_epochs, task.monitor, clock)
        if state.complete_epoch(epoch, val_scores[task.monitor], trained.seconds, task.monitor_mode):
            # best.pt before last.pt: a kill between the two leaves last.pt one epoch behind, and the resumed
            # run redoes that epoch, instead of a last.pt that names a best epoch whose weights best.pt lacks.
            checkpoints.save("best.pt", "last.pt")
        else:
            checkpoints.save("last.pt")
        if stop.signum is not None:
            raise Interrupted(stop.signum)

    return state


def train_epoch(
    epoch: int,
    model: nn.Module,
    step_model: nn.Module,
    task: LoopTask,
    train: Batches,
    trainer: DictConfig,
    runtime: Runtime,
    updates: Updates,
    state: TrainState,
    checkpoints: Checkpoints,
    stop: StopRequest,
    plan: EpochPlan,
    clock: console.RunClock | None = None,
) -> TrainedEpoch:
    """One epoch of updates at the plan's batch size and side, from `state.next_step` when the epoch was stopped
    part-way. A stop request saves last.pt after the current step and raises `Interrupted`; too many non-finite losses
    raise `NonFiniteLoss`."""
    dist = runtime.dist
    # Skipping a bad batch, and ranks agreeing on it, need to know before the update: one flag read per
    # step. Otherwise the check stays on the device and is read with the progress display (about once a
    # second) and before anything is saved, so that a GPU step has no host-device synchronisation.
    check_each_step = dist.enabled or trainer.skip_nonfinite > 0
    train.set_epoch(epoch, plan.batch_sizes[epoch - 1])
    size = plan.sizes[epoch - 1]
    step_model.train()
    first_bad = None if check_each_step else FirstNonFinite(runtime.device)
    skip = state.next_step
    loss_sum = torch.tensor(state.partial_loss_sum, device=runtime.device)
    seen, seconds_before = state.partial_seen, state.partial_seconds
    start = time.perf_counter()
    style = trainer.progress if dist.is_main else "off"
    with console.EpochProgress(epoch, trainer.max_epochs, len(train.split) // dist.world_size, style, clock) as progress:
        progress.advance(seen)
        last_shown = 0.0
        for step, (images, targets) in enumerate(train):
            if step < skip:
                continue
            images, targets = runtime.to_device(images, targets)
            with runtime.autocast():
                loss = task.training_loss(step_model, images, targets, plan.share_done(epoch, step), size)
            if check_each_step:
                nonfinite = (~torch.isfinite(loss.detach())).cpu()
                flags = any_rank(torch.stack([nonfinite, torch.tensor(stop.signum is not None)]), dist)
                bad, stopping = bool(flags[0]), bool(flags[1])
            else:
                first_bad.update(loss, step)
                bad, stopping = False, stop.signum is not None
            if bad:
                state.bad_batches += 1
                updates.optimizer.zero_grad(set_to_none=True)
                if state.bad_batches > trainer.skip_nonfinite:
                    raise non_finite_loss(loss.item(), epoch, step, state, trainer.skip_nonfinite)
                console.warn(f"skipped a batch with a non-finite loss at epoch {epoch}, step {step + 1}")
            else:
                updated = optimizer_step(model, loss, updates.optimizer, updates.scaler, updates.scheduler, trainer.grad_clip)
                if updated and updates.average is not None:
                    updates.average.update()
                loss_sum += loss.detach() * len(images)
                seen += len(images)
            # Reading the loss syncs with the device, so the display refreshes it at most once a second.
            now = time.perf_counter()
            shown = None
            if now - last_shown > 1.0 and seen:
                check_deferred(first_bad, epoch, state, trainer.skip_nonfinite)
                shown, last_shown = (loss_sum / seen).item(), now
            progress.advance(len(images), shown)
            if stopping:
                check_deferred(first_bad, epoch, state, trainer.skip_nonfinite)
                state.next_step = step + 1
                state.partial_loss_sum, state.partial_seen = float(loss_sum), seen
                state.partial_seconds = seconds_before + time.perf_counter() - start
                checkpoints.save("last.pt")
                raise Interrupted(stop.signum or 15)
    check_deferred(first_bad, epoch, state, trainer.skip_nonfinite)
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


def build_updates(model: nn.Module, trainer: DictConfig, total_steps: int, runtime: Runtime) -> Updates:
    """The optimiser and schedule of `trainer.optimizer` and `trainer.scheduler` (over `total_steps` steps), a scaler
    active under fp16, and with `trainer.ema_decay` the moving average, which starts as a copy of the weights at the
    first update."""
    optimizer = instantiate(trainer.optimizer, params=model.parameters())
    scheduler = None
    if trainer.scheduler is not None:
        scheduler = instantiate(trainer.scheduler, optimizer=optimizer, total_steps=total_steps)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
    average = None
    if trainer.get("ema_decay") is not None:
        average = WeightAverage(unwrap(model), trainer.ema_decay)
    return Updates(optimizer, scheduler, scaler, average)


def restore(resume: dict[str, Any], model: nn.Module, updates: Updates, dist: Dist) -> TrainState:
    """Weights, update state and this rank's RNG states from a last.pt; returns its progress."""
    unwrap(model).load_state_dict(resume.get("trained_model", resume["model"]))
    if updates.average is not None:
        updates.average.module.load_state_dict(resume["model"])
        updates.average.updates = resume["average_updates"]
    updates.optimizer.load_state_dict(resume["optimizer"])
    if updates.scheduler is not None:
        updates.scheduler.load_state_dict(resume["scheduler"])
    if updates.scaler.is_enabled() and resume["scaler"]:
        # A checkpoint of a bf16, fp32 or CPU run has no scale to restore: an fp16 run resumed from it (where
        # precision=auto resolves to fp16) starts the scale afresh; an fp16 scale means nothing without fp16.
        updates.scaler.load_state_dict(resume["scaler"])
    set_rng_state(resume["rng"][dist.rank])  # run.check_resumable made sure the checkpoint has one per rank
    return TrainState(**resume["train_state"])


@dataclass
class Checkpoints:
    """Writes the checkpoints of a run: the plain module's weights (the averaged ones as `model` with
    `trainer.ema_decay`), the update state, the progress, every rank's RNG states and `extra` (config, class
    names, W&B id)."""

    folder: Path
    model: nn.Module
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
        trained = unwrap(self.model).state_dict()
        average = self.updates.average
        snapshot = {
            "model": trained if average is None else average.module.state_dict(),
            **({} if average is None else {"trained_model": trained, "average_updates": average.updates}),
            "optimizer": self.updates.optimizer.state_dict(),
            "scheduler": self.updates.scheduler.state_dict() if self.updates.scheduler is not None else None,
            "scaler": self.updates.scaler.state_dict(),
            "epoch": self.state.epochs_completed,
            "train_state": asdict(self.state),
            "rng": rngs,
            **self.extra,
        }
        atomic_torch_save(snapshot, self.folder / names[0])
        for name in names[1:]:
            atomic_link(self.folder / names[0], self.folder / name)


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


def check_deferred(first_bad: FirstNonFinite | None, epoch: int, state: TrainState, allowed: int) -> None:
    """Raise NonFiniteLoss when the epoch's deferred check (None: checked at each step) recorded a non-finite loss."""
    if first_bad is not None and (bad := first_bad.read()) is not None:
        raise non_finite_loss(bad[1], epoch, bad[0], state, allowed)


def non_finite_loss(value: float, epoch: int, step: int, state: TrainState, allowed: int) -> NonFiniteLoss:
    kept = (
        f"checkpoints/last.pt of epoch {state.epochs_completed} is kept"
        if state.epochs_completed else "no epoch was complete, so there is no checkpoint"
    )
    return NonFiniteLoss(
        f"loss is {value} at epoch {epoch}, step {step + 1}; {kept}; lower trainer.lr or "
        f"set trainer.grad_clip (trainer.skip_nonfinite={allowed} bad batches were allowed)"
    )


def truncate_metrics(path: Path, epochs: int) -> None:
    """Keep the lines of the first `epochs` epochs: a run killed after writing a line but before its
    checkpoint repeats that epoch, and each epoch must appear once."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= epochs]
    if len(kept) != len(lines):
        atomic_write_text("".join(line + "\n" for line in kept), path)
