"""The judge: a small CNN classifier that says which class an image (a VAE output) looks like.

Its training and cache live in s18exp/judge_training.py; this module holds the network and its use.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from s18exp.blocks import DoubleConv
from s18exp.runtime import Runtime


class Judge(nn.Module):
    """DoubleConv at full size, then `depth` (max pool, DoubleConv) steps doubling the channels,
    global average pooling and a linear layer: logits (N, num_classes) for images in [0, 1]."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [DoubleConv(in_channels, width)]
        channels = width
        for _ in range(depth):
            layers += [nn.MaxPool2d(2), DoubleConv(channels, channels * 2)]
            channels *= 2
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x - 0.5).mean(dim=(2, 3))))


def build_judge(num_classes: int, in_channels: int, image_size: int, width: int) -> Judge:
    depth = 3 if image_size >= 16 else max(1, int(math.log2(max(image_size, 2))) - 1)
    return Judge(num_classes, in_channels, width, depth)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> floats in [0, 1], channels_last."""
    return (images.float() / 255).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def classify(judge: nn.Module, images: torch.Tensor, runtime: Runtime, batch_size: int = 500) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> the judge's class indices (N,) on the CPU."""
    judge.eval()
    predictions = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(runtime.device)
        with runtime.autocast():
            predictions.append(judge(to_unit(batch)).argmax(1).cpu())
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)
