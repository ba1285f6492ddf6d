"""The guides: classifiers trained beside the VAE on real images, whose reading of the decoder's drawn images
teaches the decoder to draw the given class (VAETask's guide term), and the random changes made to those
drawn images before a guide reads them.

A decoder trained against one classifier can learn patterns that only that classifier reads as the class.
Two options make what it learns hold for other readers: several guides of different architectures (the
term is their mean cross-entropy), and random differentiable changes of each drawn image before the guides
read it (DiffAugment, Zhao et al. 2020): shifts, cut-out squares, brightness, saturation, contrast and noise,
so that only what survives them is rewarded. Neither guide architecture is one of the panel's readers
(s18exp/readers/networks.py), which must stay independent of everything the VAE trains against.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from s18exp.errors import UserError
from s18exp.models.judge import build_judge


class DilatedGuide(nn.Module):
    """3x3 convolutions at full resolution with dilations 1, 2, 4 and 8 (no down-sampling), GroupNorm and
    LeakyReLU, then global max pooling and a linear layer: logits for images in [0, 1]."""

    def __init__(self, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        widths = (width, width, 2 * width, 2 * width)
        layers: list[nn.Module] = []
        channels = in_channels
        for dilation, out in zip((1, 2, 4, 8), widths):
            layers += [nn.Conv2d(channels, out, 3, padding=dilation, dilation=dilation, bias=False), nn.GroupNorm(4, out), nn.LeakyReLU(0.2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x - 0.5).amax(dim=(2, 3)))


GUIDE_ARCHITECTURES: dict[str, Callable[[int, int, int, int], nn.Module]] = {
    "judge": lambda classes, channels, size, width: build_judge(classes, channels, size, width),
    "dilated": lambda classes, channels, size, width: DilatedGuide(classes, channels, width),
}


def build_guides(names: list[str], num_classes: int, in_channels: int, image_size: int, width: int) -> nn.ModuleDict:
    """One guide per architecture name, each of `width` channels at its first layer."""
    unknown = [name for name in names if name not in GUIDE_ARCHITECTURES]
    if not names or unknown or len(set(names)) != len(names):
        raise UserError(
            f"task.guides={list(names)} must name each guide architecture once, from {'|'.join(GUIDE_ARCHITECTURES)}; e.g. task.guides=[judge]"
        )
    if width % 4 and "dilated" in names:
        raise UserError(f"model.guide_width={width} must be a multiple of 4 for the dilated guide (GroupNorm of 4 groups)")
    return nn.ModuleDict({name: GUIDE_ARCHITECTURES[name](num_classes, in_channels, image_size, width) for name in names})


class DrawnAugment(nn.Module):
    """Random, differentiable changes of a batch of drawn images in [0, 1] (N, C, H, W), each image its own
    draw from torch's global generator (which checkpoints save). All strengths 0: the identity.

    - `translation`: shift by up to this fraction of the side, in whole pixels; zeros fill in;
    - `cutout`: zero one square of this fraction of the side at a random place;
    - `brightness`: add one offset drawn in [-brightness, brightness];
    - `saturation` (RGB only): scale each pixel's colour around its grey by a factor in [1 - s, 1 + s];
    - `contrast`: scale around the image's mean by a factor in [1 - c, 1 + c];
    - `noise`: add Gaussian noise of this standard deviation.
    Pixels may leave [0, 1], as in DiffAugment: clamping would stop the gradient where they do.
    """

    def __init__(
        self, translation: float = 0.0, cutout: float = 0.0, brightness: float = 0.0, saturation: float = 0.0,
        contrast: float = 0.0, noise: float = 0.0,
    ) -> None:
        super().__init__()
        self.strengths = {
            "translation": translation, "cutout": cutout, "brightness": brightness,
            "saturation": saturation, "contrast": contrast, "noise": noise,
        }
        for key, value in self.strengths.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise UserError(f"task.guide_augment.{key}={value!r} must be a number in [0, 1]; 0 turns it off")

    @property
    def active(self) -> bool:
        return any(value > 0 for value in self.strengths.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.strengths
        batch, device = len(x), x.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return (low + (high - low) * torch.rand(batch, 1, 1, 1, device=device)).to(x.dtype)

        if s["brightness"] > 0:
            x = x + uniform(-s["brightness"], s["brightness"])
        if s["saturation"] > 0 and x.shape[1] == 3:
            grey = x.mean(dim=1, keepdim=True)
            x = grey + (x - grey) * uniform(1 - s["saturation"], 1 + s["saturation"])
        if s["contrast"] > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = mean + (x - mean) * uniform(1 - s["contrast"], 1 + s["contrast"])
        if s["translation"] > 0:
            x = translated(x, s["translation"])
        if s["cutout"] > 0:
            x = x * cutout_mask(x, s["cutout"])
        if s["noise"] > 0:
            x = x + s["noise"] * torch.randn_like(x)
        return x


def translated(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Each image shifted by whole pixels, up to `fraction` of its side each way, zeros filling in: sampled
    at integer offsets, so the values move unchanged and the gradient flows back to them."""
    batch, _, height, width = x.shape
    most = torch.tensor([round(fraction * width), round(fraction * height)], device=x.device)
    shift = torch.floor(torch.rand(batch, 2, device=x.device) * (2 * most + 1)) - most  # (dx, dy) in pixels
    theta = torch.zeros(batch, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shift[:, 0] / width  # sampling at x - dx moves the content by +dx
    theta[:, 1, 2] = -2 * shift[:, 1] / height
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def cutout_mask(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """(N, 1, H, W) of ones with one square of zeros per image, its side `fraction` of the image's."""
    batch, _, height, width = x.shape
    side_h, side_w = max(1, round(fraction * height)), max(1, round(fraction * width))
    top = torch.randint(0, height - side_h + 1, (batch, 1, 1), device=x.device)
    left = torch.randint(0, width - side_w + 1, (batch, 1, 1), device=x.device)
    rows = torch.arange(height, device=x.device)[None, :, None]
    cols = torch.arange(width, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
    return (~inside).to(x.dtype)[:, None]
