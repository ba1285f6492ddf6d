"""Datasets as decoded uint8 tensors in memory, and a batch iterator over them.

Every dataset is decoded and resized once (and cached on disk, see `cache.py`); an epoch is then a
permutation of indices into tensors, so no image is decoded twice and no per-sample Python runs in the
training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class TensorSplit:
    """One split: `images` uint8 (N, C, H, W); `targets` uint8 masks (N, H, W) or int64 labels (N,)."""

    images: torch.Tensor
    targets: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: list[int]) -> "TensorSplit":
        index = torch.as_tensor(indices, dtype=torch.long)
        return TensorSplit(self.images[index], self.targets[index], [self.names[i] for i in indices])


class Batches:
    """Iterates a split in batches of (images, targets); reshuffled on every pass when `shuffle`."""

    def __init__(
        self, split: TensorSplit, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        full, rest = divmod(len(self.split), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for batch in range(len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield self.split.images[index], self.split.targets[index]
