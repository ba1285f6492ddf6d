"""Segmentation losses, written from scratch. Both take raw logits (N, C, H, W) and class indices (N, H, W).

Neither applies a softmax before a cross-entropy: BCE works on the logits themselves (its sigmoid lives
inside `binary_cross_entropy_with_logits`, numerically stable), and Dice turns logits into
probabilities with a softmax first, since a Dice of raw logits is meaningless.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`F.cross_entropy` (mean over every pixel or item) of float32 logits. Under trainer.deterministic=true on a
    GPU its mean comes from per-element losses: CUDA's NLL kernel sums with atomic adds, which torch refuses in
    deterministic mode (and which do not repeat bit for bit); elsewhere the fused kernel, as always."""
    logits, target = logits.float(), target.long()
    if logits.is_cuda and torch.are_deterministic_algorithms_enabled():
        return F.cross_entropy(logits, target, reduction="none").mean()
    return F.cross_entropy(logits, target)


def one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) class indices -> (N, C, H, W) float one-hot."""
    return F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).float()


class OneHotBCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy per class channel against the one-hot mask, mean over every element."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, one_hot(target, logits.shape[1]))


class SoftDiceLoss(nn.Module):
    """1 - soft Dice on softmax probabilities, per class over the whole batch, mean over classes.

    `smooth` is added to numerator and denominator so that a class absent from both prediction and
    target counts as a perfect match rather than 0/0.
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(dim=1)
        truth = one_hot(target, logits.shape[1])
        dims = (0, 2, 3)
        intersection = (probs * truth).sum(dims)
        total = probs.sum(dims) + truth.sum(dims)
        dice = (2 * intersection + self.smooth) / (total + self.smooth)
        return 1 - dice.mean()


class DiceCELoss(nn.Module):
    """Soft Dice plus cross-entropy, both on the same raw logits: `dice_weight * dice + ce_weight * ce`.

    Cross-entropy takes the logits themselves (its log-softmax is inside `F.cross_entropy`); Dice takes their
    softmax. Dice alone optimises the overlap of each class, the thin border included, but gives weak gradients
    to pixels already on the right side; cross-entropy keeps every pixel's gradient alive.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.dice = SoftDiceLoss(smooth)
        self.dice_weight, self.ce_weight = dice_weight, ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = cross_entropy(logits, target)
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * ce


def lovasz_gradient(truth_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at a sorting, along the last dim: `truth_sorted` holds
    a class's 0/1 ground truth ordered by decreasing error; entry i is the rise of 1 - IoU when pixel i joins
    the mispredicted pixels."""
    positives = truth_sorted.sum(-1, keepdim=True)
    intersection = positives - truth_sorted.cumsum(-1)
    union = positives + (1 - truth_sorted).cumsum(-1)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


class LovaszSoftmaxLoss(nn.Module):
    """The Lovász-softmax loss (Berman et al., 2018): a convex surrogate of 1 - IoU per class, on softmax
    probabilities, over all pixels of the batch, mean over the classes present in the batch's masks.

    Each class's pixel errors |truth - probability| are sorted in decreasing order and weighted by the
    Jaccard loss's Lovász gradient, so the loss is the IoU the errors cost, smoothly. A batch-wide IoU (not per
    image) matches how mIoU is scored: from one confusion matrix over the whole split. The classes are sorted
    in one call, which on a CPU takes about half the time of one sort per class.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classes = logits.shape[1]
        probs = logits.float().softmax(dim=1).transpose(0, 1).reshape(classes, -1)
        truth = F.one_hot(target.reshape(-1).long(), classes).T.float()
        errors, order = (truth - probs).abs().sort(dim=1, descending=True)
        per_class = (errors * lovasz_gradient(truth.gather(1, order))).sum(dim=1)
        return per_class[truth.sum(dim=1) > 0].mean()


class LovaszCELoss(nn.Module):
    """Lovász-softmax plus cross-entropy on the same raw logits: `lovasz_weight * lovasz + ce_weight * ce`.

    The Lovász term optimises each class's IoU, the scored metric; cross-entropy keeps every pixel's gradient
    alive, early in training above all, when the Lovász term's sorting is still close to random.
    """

    def __init__(self, lovasz_weight: float = 1.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        self.lovasz = LovaszSoftmaxLoss()
        self.lovasz_weight, self.ce_weight = lovasz_weight, ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = cross_entropy(logits, target)
        return self.lovasz_weight * self.lovasz(logits, target) + self.ce_weight * ce
