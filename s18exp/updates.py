"""One optimiser update, the step that the training loop, the LR range test and the judge's training all take
(and scripts/bench.py times): backward through the fp16 gradient scaler, optional clipping, the update, the
schedule; and `Updates`, everything that updates the weights of a training run (that step, the optimiser, its
schedule, the scaler and the moving average of `trainer.ema_decay`), with its checkpoint state."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from s18exp.distributed import Dist
from s18exp.runtime import Runtime, unwrap
from s18exp.weight_average import WeightAverage


def optimizer_step(
    model: nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    scheduler: Any, grad_clip: float | None,
) -> bool:
    """The backward pass and update of one batch (the scaler scales only under fp16); False when the fp16
    scaler skipped the update."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    # Under fp16 the scaler skips the update of a step whose gradients overflowed (and lowers its scale); the
    # schedule follows the updates that happened. The comparison reads the scale, a device sync, only under fp16.
    skipped = scaler.is_enabled() and scaler.get_scale() < scale
    if scheduler is not None and not skipped:
        scheduler.step()
    return not skipped


class Updates:
    """What updates the weights of one training run: the optimiser of `trainer.optimizer`, its schedule of
    `trainer.scheduler` over `total_steps` (None for a constant lr), a scaler active under fp16, gradient clipping
    at `trainer.grad_clip`, and with `trainer.ema_decay` the moving average of the weights, which starts as a copy
    of them at the first update and is what validation scores and checkpoints keep as `model`.

    The loop sees one `step` per batch; the average follows the updates that happened (the fp16 scaler skips
    some), so the loop need not know it exists."""

    def __init__(self, model: nn.Module, trainer: DictConfig, total_steps: int, runtime: Runtime) -> None:
        self.model = model
        self.grad_clip = trainer.grad_clip
        self.optimizer = instantiate(trainer.optimizer, params=model.parameters())
        self.scheduler = None
        if trainer.scheduler is not None:
            self.scheduler = instantiate(trainer.scheduler, optimizer=self.optimizer, total_steps=total_steps)
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
        self.average = None
        if trainer.get("ema_decay") is not None:
            self.average = WeightAverage(unwrap(model), trainer.ema_decay)

    def step(self, loss: torch.Tensor) -> None:
        """The backward pass and update of one batch, then the moving average when the update happened."""
        updated = optimizer_step(self.model, loss, self.optimizer, self.scaler, self.scheduler, self.grad_clip)
        if updated and self.average is not None:
            self.average.update()

    def skip(self) -> None:
        """A batch that updates nothing (a non-finite loss): its gradients are dropped."""
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def evaluated_module(self) -> nn.Module:
        """The weights that validation scores: the moving average with `trainer.ema_decay`, else the plain module."""
        return self.average.module if self.average is not None else unwrap(self.model)

    def end_epoch(self, dist: Dist) -> None:
        """The end of an epoch's updates: the ranks agree on the averaged BatchNorm statistics (each rank's follow
        its own batches)."""
        if self.average is not None:
            self.average.agree_across_ranks(dist)

    def state_dict(self) -> dict[str, Any]:
        """The weights and update state a checkpoint holds: `model` is the averaged weights with
        `trainer.ema_decay` (what test, predict and score load), the trained ones beside them for resuming."""
        trained = unwrap(self.model).state_dict()
        average = self.average
        return {
            "model": trained if average is None else average.module.state_dict(),
            **({} if average is None else {"trained_model": trained, "average_updates": average.updates}),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Weights and update state from a checkpoint that `state_dict` wrote."""
        unwrap(self.model).load_state_dict(saved.get("trained_model", saved["model"]))
        if self.average is not None:
            self.average.module.load_state_dict(saved["model"])
            self.average.updates = saved["average_updates"]
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler.is_enabled() and saved["scaler"]:
            # A checkpoint of a bf16, fp32 or CPU run has no scale to restore: an fp16 run resumed from it (where
            # precision=auto resolves to fp16) starts the scale afresh; an fp16 scale means nothing without fp16.
            self.scaler.load_state_dict(saved["scaler"])
