"""One optimiser update, the step that the training loop, the LR range test and the judge's training all take
(and scripts/bench.py times): backward through the fp16 gradient scaler, optional clipping, the update, the
schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


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
