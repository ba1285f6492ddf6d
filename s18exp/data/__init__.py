"""Datasets as decoded uint8 tensors in memory, and a batch iterator over them.

Every dataset is decoded and resized once (and cached on disk, see `cache.py`); an epoch is then a
permutation of indices into tensors, so no image is decoded twice and no per-sample Python runs in the
training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DistributedSampler


@dataclass
class TensorSplit:
    """One split: `images` uint8 (N, C, H, W); `targets` uint8 masks (N, H, W) or int64 labels (N,).

    `full_targets`, where a dataset keeps them, are the masks at each item's original resolution (uint8
    class indices, one (H_i, W_i) tensor per item), for scoring at that resolution.
    """

    images: torch.Tensor
    targets: torch.Tensor
    names: list[str]
    full_targets: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, indices: list[int]) -> "TensorSplit":
        index = torch.as_tensor(indices, dtype=torch.long)
        full = None if self.full_targets is None else [self.full_targets[i] for i in indices]
        return TensorSplit(self.images[index], self.targets[index], [self.names[i] for i in indices], full)


class Batches:
    """Batches of (images, targets) from one split, for this rank of `world_size`.

    Training order comes from torch's `DistributedSampler` (shuffled by `seed` and the epoch set with
    `set_epoch`, so epoch e has the same order whether the run was resumed or not, and ranks take
    disjoint shares). Without `shuffle`, ranks take every world_size-th item, unpadded, so that summed
    evaluation counts cover each item exactly once.
    """

    def __init__(
        self, split: TensorSplit, batch_size: int, shuffle: bool = False, seed: int = 0,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.sampler = DistributedSampler(range(len(split)), world_size, rank, shuffle=shuffle, seed=seed) if shuffle else None

    def set_epoch(self, epoch: int, batch_size: int | None = None) -> None:
        """Epoch `epoch`'s order, and from now on `batch_size` items per batch when given (a schedule's batch size)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if batch_size is not None:
            self.batch_size = batch_size

    def indices(self) -> torch.Tensor:
        if self.sampler is not None:
            return torch.tensor(list(self.sampler), dtype=torch.long)
        return torch.arange(self.rank, len(self.split), self.world_size)

    @property
    def items(self) -> int:
        """The items of an epoch on this rank (with shuffling, the sampler's share, padded to be equal on every rank)."""
        return len(self.sampler) if self.sampler is not None else len(range(self.rank, len(self.split), self.world_size))

    def __len__(self) -> int:
        return -(-self.items // self.batch_size)

    def index_batches(self) -> Iterator[torch.Tensor]:
        """The item indices of each batch, in the order `__iter__` yields the batches."""
        order = self.indices()
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in self.index_batches():
            yield self.split.images[index], self.split.targets[index]
