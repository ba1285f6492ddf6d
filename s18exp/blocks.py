"""The building blocks that both models are assembled from.

The `encoder` config group picks a *downsample* block and the `decoder` group an *upsample* block;
everything around them (the convolution block after each, which `model.block` picks, and the skip
connections) is the same for every variant, so that a comparison between variants measures only the block
that changed.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Downsample = Callable[[int], nn.Module]
Upsample = Callable[[int, int], nn.Module]
ConvBlock = Callable[[int, int], nn.Module]


class DoubleConv(nn.Sequential):
    """(3x3 conv, BatchNorm, ReLU) twice; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualDoubleConv(nn.Module):
    """DoubleConv's two 3x3 convolutions with a shortcut around them, as in a ResNet basic block: the input
    (through a 1x1 convolution and BatchNorm when the channel count changes, which in the UNet is at every
    level) is added before the last ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


# The convolution blocks that `model.block` names.
CONV_BLOCKS: dict[str, ConvBlock] = {"double": DoubleConv, "residual": ResidualDoubleConv}


class MaxPoolDownsample(nn.MaxPool2d):
    """Halves height and width with a 2x2 max pool; no parameters."""

    def __init__(self, channels: int) -> None:
        super().__init__(kernel_size=2)
        self.channels = channels


class StridedConvDownsample(nn.Sequential):
    """Halves height and width with a learned 3x3 convolution of stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )


class TransposeUpsample(nn.ConvTranspose2d):
    """Doubles height and width with a learned 2x2 transposed convolution of stride 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=2, stride=2)


class InterpolateUpsample(nn.Sequential):
    """Doubles height and width by interpolation, then maps channels with a 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int, mode: str) -> None:
        align = False if mode in ("bilinear", "bicubic") else None
        super().__init__(
            nn.Upsample(scale_factor=2, mode=mode, align_corners=align),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
        )


class Down(nn.Sequential):
    """One encoder step: the configured downsample, then a DoubleConv (or `conv_block`) to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, downsample: Downsample, conv_block: ConvBlock = DoubleConv) -> None:
        super().__init__(downsample(in_channels), conv_block(in_channels, out_channels))


class Up(nn.Module):
    """One decoder step of a UNet: the configured upsample, concatenation with the skip, `conv_block`."""

    def __init__(self, in_channels: int, out_channels: int, upsample: Upsample, conv_block: ConvBlock) -> None:
        super().__init__()
        self.upsample = upsample(in_channels, in_channels // 2)
        self.conv = conv_block(in_channels // 2 + out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.upsample(x)], dim=1))
