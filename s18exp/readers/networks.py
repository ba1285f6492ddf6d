"""The readers' networks: three classifiers built to share nothing with the judge and the VAE's guide.

The judge and the guide (s18exp/models/judge.py) are stacks of 3x3 convolutions with BatchNorm and ReLU that
halve the resolution by max pooling. Each reader departs from that in how it mixes space, how it
down-samples and which non-linearity it uses, so that patterns one architecture happens to read as a class
are unlikely to fool all three:

- `resnet`: residual blocks of 3x3 convolutions, BatchNorm and GELU, down-sampling by stride-2 convolutions;
- `mixer`: an MLP-Mixer: the image cut into patches (a linear map of each), then blocks that mix across
  patches and across channels with MLPs, LayerNorm and GELU; no convolution after the patch map;
- `wide`: few, wide layers that start with large kernels (7x7, then 5x5), BatchNorm, SiLU and average pooling.

Every reader takes images in [0, 1] (N, C, H, W) and returns logits (N, num_classes).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from s18exp.errors import UserError


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] to roughly zero mean and unit spread."""
    return (x - 0.5) / 0.25


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and GELU; the first may stride; a projected shortcut where the
    shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.body(x) + self.shortcut(x))


class ResidualReader(nn.Module):
    """A stem, then residual blocks of `width`, 2x, 4x and 8x channels, each after the first at stride 2 (a
    32 px image ends at 4 px); global average pooling and a linear layer."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width, 8 * width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.GELU())
        self.stages = nn.Sequential(
            *(ResidualBlock(c_in, c_out, 1 if i == 0 else 2) for i, (c_in, c_out) in enumerate(zip((width,) + widths, widths)))
        )
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(standardize(x))).mean(dim=(2, 3)))


class MixerBlock(nn.Module):
    """Token mixing (an MLP across patches, per channel), then channel mixing (an MLP across channels, per
    patch), each behind a LayerNorm and around a residual connection."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, dim), nn.GELU(), nn.Linear(dim, tokens))
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.token_mlp(self.token_norm(h).transpose(1, 2)).transpose(1, 2)
        return h + self.channel_mlp(self.channel_norm(h))


def patch_side(image_size: int) -> int:
    """The largest patch side that divides the image and leaves at least 8 patches a side (4 px at 32 px)."""
    return max(p for p in range(1, image_size + 1) if image_size % p == 0 and (image_size // p >= 8 or p == 1))


class MixerReader(nn.Module):
    """An MLP-Mixer: non-overlapping patches mapped linearly to `width` features, `depth` mixer blocks, the
    mean over patches and a linear layer."""

    def __init__(self, in_channels: int, num_classes: int, width: int, image_size: int, depth: int = 6) -> None:
        super().__init__()
        patch = patch_side(image_size)
        self.patch = patch
        self.embed = nn.Linear(in_channels * patch * patch, width)
        self.blocks = nn.Sequential(*(MixerBlock((image_size // patch) ** 2, width) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, patches, C * patch * patch), patches in row order."""
        return F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.embed(self.patches(standardize(x))))
        return self.head(self.norm(h).mean(dim=1))


class WideReader(nn.Module):
    """Large kernels first and few layers: a 7x7 convolution of `width` channels, average pooling, a 5x5 and a
    3x3 of 2x, average pooling, two 3x3 of 4x, each with BatchNorm and SiLU; global average pooling, dropout and
    a linear layer."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)

        def layer(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU()]

        self.features = nn.Sequential(
            *layer(in_channels, widths[0], 7), nn.AvgPool2d(2),
            *layer(widths[0], widths[1], 5), *layer(widths[1], widths[1], 3), nn.AvgPool2d(2),
            *layer(widths[1], widths[2], 3), *layer(widths[2], widths[2], 3),
        )
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(standardize(x)).mean(dim=(2, 3))))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet": lambda channels, classes, width, size: ResidualReader(channels, classes, width),
    "mixer": lambda channels, classes, width, size: MixerReader(channels, classes, width, size),
    "wide": lambda channels, classes, width, size: WideReader(channels, classes, width),
}


def build_reader(arch: str, in_channels: int, num_classes: int, width: int, image_size: int) -> nn.Module:
    """The reader network that `arch` names, freshly initialised (from torch's global generator)."""
    if arch not in ARCHITECTURES:
        raise UserError(f"reader architecture {arch!r} is not one of {'|'.join(ARCHITECTURES)}; e.g. arch: resnet")
    if image_size < 4:
        raise UserError(f"the readers need images of at least 4 px; data.image_size={image_size}")
    return ARCHITECTURES[arch](in_channels, num_classes, width, image_size)
