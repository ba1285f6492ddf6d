"""The readers' training augmentation: each reader draws its own mix of these, with its own strengths
(task.panel.readers.<name>.augment), from its own generator.

VAE outputs are blurrier, lower in contrast and less centred than real images; a reader that has only seen
sharp, centred images reads such outputs as a class of their own. So every reader learns from real images
that were shifted, blurred, faded or noised, each by its own amounts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

AUGMENT_KEYS = ("shift", "flip", "blur", "blur_share", "fade", "noise")


def shifted(x: torch.Tensor, most: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by its own whole-pixel offset of up to `most` px each way, edges repeated."""
    if most <= 0:
        return x
    batch, channels, height, width = x.shape
    padded = F.pad(x, (most, most, most, most), mode="replicate")
    rows = torch.randint(0, 2 * most + 1, (batch,), generator=generator).to(x.device)[:, None] + torch.arange(height, device=x.device)
    cols = torch.randint(0, 2 * most + 1, (batch,), generator=generator).to(x.device)[:, None] + torch.arange(width, device=x.device)
    index = torch.arange(batch, device=x.device)[:, None, None, None]
    return padded[index, torch.arange(channels, device=x.device)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


def gaussian_blurred(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred by a Gaussian of its own `sigma` (px): separable, edges repeated."""
    batch, channels, height, width = x.shape
    radius = max(1, int(torch.ceil(2 * sigma.max()).item()))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    taps = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None].to(x) ** 2))
    taps = (taps / taps.sum(1, keepdim=True)).repeat_interleave(channels, 0)
    # one group per (image, channel), so that each image gets its own sigma
    planes = F.pad(x.reshape(1, batch * channels, height, width), (radius,) * 4, mode="replicate")
    planes = F.conv2d(planes, taps[:, None, :, None], groups=batch * channels)
    planes = F.conv2d(planes, taps[:, None, None, :], groups=batch * channels)
    return planes.reshape(batch, channels, height, width)


def augmented(x: torch.Tensor, settings: dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """A float batch in [0, 1] (N, C, H, W), augmented as `settings` say:

    - `shift`: move each image by up to this many px each way;
    - `flip`: mirror a random half left to right (RGB images only: a mirrored digit is another glyph);
    - `blur`, `blur_share`: blur that share of the images by a Gaussian of sigma drawn in [0.5, blur] px;
    - `fade`: pull each image towards its own mean by a factor drawn in [0, fade] (lower contrast);
    - `noise`: add Gaussian noise of a standard deviation drawn in [0, noise] per image.
    """
    batch = len(x)

    def share(p: float) -> torch.Tensor:
        return (torch.rand(batch, generator=generator) < p).to(x.device)[:, None, None, None]

    x = shifted(x, int(settings["shift"]), generator)
    if settings["flip"] and x.shape[1] == 3:
        x = torch.where(share(0.5), x.flip(3), x)
    if settings["blur"] > 0 and settings["blur_share"] > 0:
        sigma = 0.5 + (settings["blur"] - 0.5) * torch.rand(batch, generator=generator)
        x = torch.where(share(settings["blur_share"]), gaussian_blurred(x, sigma.clamp(min=0.5).to(x.device)), x)
    if settings["fade"] > 0:
        amount = (settings["fade"] * torch.rand(batch, generator=generator)).to(x.device)[:, None, None, None]
        x = x + amount * (x.mean(dim=(1, 2, 3), keepdim=True) - x)
    if settings["noise"] > 0:
        spread = (settings["noise"] * torch.rand(batch, generator=generator)).to(x.device)[:, None, None, None]
        x = (x + spread * torch.randn(x.shape, generator=generator).to(x.device)).clamp(0, 1)
    return x
