"""MNIST digits through torchvision's own `MNIST`, as uint8 tensors; padded 28 -> 32 by default."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.datasets import MNIST

from s18exp.data.download import with_download
from s18exp.data.labelled import LabelledData, check_channels, resize_square, seeded_split, tensor_split
from s18exp.data.settings import DataSettings, takes_data_settings

CLASS_NAMES = [str(d) for d in range(10)]
EXPECTED_LAYOUT = "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"


@takes_data_settings
class MNISTData(LabelledData):
    """Train / val / test of MNIST. The IDX files decode instantly into tensors, so nothing is cached.

    Digits are zero-padded around the centre to `image_size` when it is at least 28 (32 by default, so that
    2 or 3 down steps divide it), else resized bilinear. `channels=3` repeats the grey channel.
    """

    @staticmethod
    def classes_for(cfg: object) -> list[str]:
        return list(CLASS_NAMES)

    def __init__(self, root: str, image_size: int = 32, channels: int = 1, name: str = "mnist", **shared: Any) -> None:
        """`shared`: the other fields of `DataSettings` (val_fraction, split_seed, limit_*, download, cache, cache_dir)."""
        check_channels(channels)
        self.settings = settings = DataSettings.from_config(root, image_size, name, **shared)
        self.class_names = list(CLASS_NAMES)
        train_set, test_set = self._open(True, settings.download), self._open(False, download=False)
        train_idx, val_idx, test_idx = seeded_split(settings, len(train_set.data), len(test_set.data))
        train_images = self._images(train_set.data, image_size, channels)
        test_images = self._images(test_set.data, image_size, channels)
        self.train = tensor_split(train_images, train_set.targets, train_idx, "train")
        self.val = tensor_split(train_images, train_set.targets, val_idx, "train")
        self.test = tensor_split(test_images, test_set.targets, test_idx, "test")

    @staticmethod
    def _images(data: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
        images = resize_square(data.unsqueeze(1), image_size, pad=True)
        return images.expand(-1, channels, -1, -1) if channels != 1 else images

    def _open(self, train: bool, download: bool) -> MNIST:
        root = self.settings.root

        def local() -> MNIST | None:
            try:
                return MNIST(root, train=train, download=False)
            except RuntimeError:
                return None

        return with_download(
            local,
            lambda folder: MNIST(folder, train=train, download=True),
            download,
            f"MNIST not found under {root} (expected {EXPECTED_LAYOUT})",
            root,
            touches=("MNIST",),
        )
