"""A UNet written from scratch, in the spirit of milesial/Pytorch-UNet's unet_parts."""

from __future__ import annotations

import torch
from torch import nn

from s18exp.blocks import CONV_BLOCKS, Down, Downsample, Up, Upsample


class UNet(nn.Module):
    """`depth` down steps from `width` channels, a bottleneck, and a symmetric up path with skips.

    Level i has `width * 2**i` channels; the bottleneck is the convolution block of the last down step.
    `block` names the convolution block of every level (`CONV_BLOCKS`): `double`, two 3x3 convolutions as
    in the original UNet, or `residual`, the same with a shortcut around them.
    Returns logits of shape (N, num_classes, H, W) for inputs whose H and W divide by 2**depth.
    """

    def __init__(
        self,
        num_classes: int,
        downsample: Downsample,
        upsample: Upsample,
        in_channels: int,
        width: int,
        depth: int,
        block: str = "double",  # checkpoints written before the option existed hold no model.block
    ) -> None:
        super().__init__()
        if block not in CONV_BLOCKS:
            raise ValueError(f"block={block!r} is not one of {', '.join(CONV_BLOCKS)}")
        conv_block = CONV_BLOCKS[block]
        channels = [width * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.stem = conv_block(in_channels, width)
        self.downs = nn.ModuleList(Down(c_in, c_out, downsample, conv_block) for c_in, c_out in zip(channels, channels[1:]))
        self.ups = nn.ModuleList(
            Up(c_in, c_out, upsample, conv_block) for c_in, c_out in zip(channels[:0:-1], channels[-2::-1])
        )
        self.head = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)
