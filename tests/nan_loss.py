"""A loss for fault-injection tests: BCE for the first training steps, NaN from the given one on."""

import torch

from s18exp.losses import OneHotBCEWithLogitsLoss


class NaNFromStep(OneHotBCEWithLogitsLoss):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.training_calls = step, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = super().forward(logits, target)
        if not torch.is_grad_enabled():  # evaluation
            return loss
        self.training_calls += 1
        return loss * torch.nan if self.training_calls >= self.step else loss
