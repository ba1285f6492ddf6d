"""An exponential moving average of a model's weights, the `trainer.ema_decay` option of the training loop.

Written out rather than torch's `AveragedModel`: that one keeps its update count as a tensor and moves it to
the device at every update, a host-device synchronisation per step on a GPU, and averages integer buffers
(BatchNorm's `num_batches_tracked`) by truncation. Here the count is a Python int, floating-point parameters
and buffers (BatchNorm's running statistics, which must match the averaged weights) are averaged with one
fused lerp, and integer buffers follow the trained model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from s18exp.distributed import Dist, broadcast_from_main


class WeightAverage:
    """`module` holds decay x itself + (1 - decay) x the weights of `model` after each `update`; a copy of them
    at the first one. `model`'s tensors are read where they are, so it must keep them (load_state_dict copies
    into them; the optimiser relies on the same)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.updates = 0
        # Paired once rather than at every step: both state dicts hold the same tensors throughout training.
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))
        self._floats = ([a for a, _ in pairs if a.is_floating_point()], [t for a, t in pairs if a.is_floating_point()])
        self._others = [(a, t) for a, t in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        averaged, trained = self._floats
        if self.updates == 0:
            for a, t in zip(averaged, trained):
                a.copy_(t)
        else:
            torch._foreach_lerp_(averaged, trained, 1.0 - self.decay)
        for a, t in self._others:
            a.copy_(t)
        self.updates += 1

    def agree_across_ranks(self, dist: Dist) -> None:
        """Rank 0's buffers on every rank. Each rank's BatchNorm statistics follow its own batches (DDP sends
        rank 0's to the others only at the next forward), so their averages drift apart; the averaged weights are
        the same on every rank already."""
        broadcast_from_main(list(self.module.buffers()), dist)
