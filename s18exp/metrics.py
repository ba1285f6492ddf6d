"""Segmentation metrics from one confusion matrix accumulated over a whole split.

The same metrics serve every loss, so that a BCE run and a Dice run compare on equal terms.
"""

from __future__ import annotations

import math

import torch


class ConfusionMatrix:
    """Counts (true class, predicted class) pairs on the device; read once at the end of a split."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true class indices of the same shape."""
        self.counts += pair_counts(predicted, target, self.num_classes)

    def matrix(self) -> torch.Tensor:
        """(true, predicted) counts as a C x C CPU tensor."""
        return self.counts.view(self.num_classes, self.num_classes).cpu()


def pair_counts(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The (true, predicted) counts of predicted and true class indices of the same shape, flattened: C * C
    int64 counts, entry `true * C + predicted` (a C x C matrix after `.view(C, C)`)."""
    pairs = target.reshape(-1).long() * num_classes + predicted.reshape(-1).long()
    return torch.bincount(pairs, minlength=num_classes**2)


def segmentation_scores(matrix: torch.Tensor, class_names: list[str]) -> dict[str, float]:
    """IoU per class, mIoU, mean Dice (F1) over classes, and pixel accuracy from a C x C (true, predicted) matrix.

    A class absent from both truth and prediction has an undefined IoU/Dice (NaN) and is left out of the means.
    """
    m = matrix.double()
    true_positive = m.diag()
    false_positive = m.sum(0) - true_positive
    false_negative = m.sum(1) - true_positive
    iou = true_positive / (true_positive + false_positive + false_negative)
    dice = 2 * true_positive / (2 * true_positive + false_positive + false_negative)
    total = m.sum()
    scores = {
        "miou": _nanmean(iou),
        "dice": _nanmean(dice),
        "pixel_acc": float(true_positive.sum() / total) if total > 0 else math.nan,
    }
    scores.update({f"iou_{name}": float(value) for name, value in zip(class_names, iou)})
    return scores


def _nanmean(values: torch.Tensor) -> float:
    present = values[~values.isnan()]
    return float(present.mean()) if present.numel() else math.nan
