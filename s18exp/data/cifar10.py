"""CIFAR-10 through torchvision's own `CIFAR10`, or, when only image folders exist, through `ImageFolder`.

Where the data is looked for under `data.root`, in this order:
1. `cifar-10-batches-py/` (torchvision's pickle layout): read with `torchvision.datasets.CIFAR10`.
2. `cifar10-jpg/{train,test}/<class>/*.jpg` (the offline copy in ../shared/data, re-encoded as JPEG):
   read with `torchvision.datasets.ImageFolder`; the alphabetical folder order is CIFAR's own label order.
   60,000 small files take a while to decode, so the decoded tensors are cached (`data.cache`).
3. Neither: torchvision downloads the pickle layout when `data.download=true` and a network is reachable.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.datasets import CIFAR10

from s18exp.data.download import with_download
from s18exp.data.imagefolder import folder_classes, folder_splits
from s18exp.data.labelled import LabelledData, check_channels, resize_square, seeded_split, tensor_split
from s18exp.data.settings import DataSettings, takes_data_settings
from s18exp.errors import UserError

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PICKLE_DIR = "cifar-10-batches-py"
JPG_DIR = "cifar10-jpg"


@takes_data_settings
class CIFAR10Data(LabelledData):
    """Train / val / test of CIFAR-10 at `image_size` (32 native; other sizes are resized bilinear)."""

    @staticmethod
    def classes_for(cfg: object) -> list[str]:
        return list(CLASS_NAMES)

    def __init__(
        self, root: str, image_size: int = 32, channels: int = 3, jpg_dir: str = JPG_DIR, name: str = "cifar10", **shared: Any
    ) -> None:
        """`shared`: the other fields of `DataSettings` (val_fraction, split_seed, limit_*, download, cache, cache_dir)."""
        check_channels(channels)
        self.settings = settings = DataSettings.from_config(root, image_size, name, **shared)
        jpg = settings.root / jpg_dir
        if not (settings.root / PICKLE_DIR).is_dir() and (jpg / "train").is_dir():
            if folder_classes(jpg, "data=cifar10") != CLASS_NAMES:
                raise UserError(f"{jpg} must hold the 10 CIFAR-10 class folders {CLASS_NAMES}")
            folder_splits(self, jpg / "train", jpg / "test", channels, settings)
            return
        self.class_names = list(CLASS_NAMES)
        train_set, test_set = self._open(True, settings.download), self._open(False, False)
        train_idx, val_idx, test_idx = seeded_split(settings, len(train_set.data), len(test_set.data))
        train_images = self._images(train_set.data, image_size, channels)
        test_images = self._images(test_set.data, image_size, channels)
        train_labels, test_labels = torch.tensor(train_set.targets), torch.tensor(test_set.targets)
        self.train = tensor_split(train_images, train_labels, train_idx, "train")
        self.val = tensor_split(train_images, train_labels, val_idx, "train")
        self.test = tensor_split(test_images, test_labels, test_idx, "test")

    @staticmethod
    def _images(data: object, image_size: int, channels: int) -> torch.Tensor:
        images = resize_square(torch.from_numpy(data).permute(0, 3, 1, 2), image_size, pad=False)
        return images.float().mean(1, keepdim=True).round().to(torch.uint8) if channels == 1 else images.contiguous()

    def _open(self, train: bool, download: bool) -> CIFAR10:
        root = self.settings.root

        def local() -> CIFAR10 | None:
            if not (root / PICKLE_DIR).is_dir():
                return None
            try:
                return CIFAR10(root, train=train, download=False)
            except RuntimeError:  # an incomplete or damaged folder: download again where allowed
                return None

        return with_download(
            local,
            lambda folder: CIFAR10(folder, train=train, download=True),
            download,
            f"CIFAR-10 not found under {root} (expected {PICKLE_DIR}/ or {JPG_DIR}/{{train,test}}/<class>/*.jpg)",
            root,
            touches=(PICKLE_DIR,),
        )
