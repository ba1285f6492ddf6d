"""What the labelled-image datasets of the VAE share: the seeded split, limits, folder decoding.

Every dataset ends as three `TensorSplit`s of uint8 images (N, C, S, S) and int64 class indices (N,),
plus `class_names` (index -> name, used in captions). Validation is a fixed, seeded share of the
official training set (the same for every run, whatever its seed); the official test set is the test
split. `limit_*` keep a seeded random subset of a split (the same for every run), not its first N items:
image folders list their files class by class, and the first N would hold one class only.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from s18exp.data import TensorSplit
from s18exp.data.cache import cached, fingerprint
from s18exp.data.settings import DataSettings
from s18exp.errors import UserError

MODES = {1: "L", 3: "RGB"}


class LabelledData:
    """The three splits, the class names and the settings they were made with; subclasses fill them in `__init__`."""

    settings: DataSettings
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def check_channels(channels: int) -> None:
    if channels not in MODES:
        raise UserError(f"data.channels={channels} is not supported; use data.channels=1 (grey) or 3 (RGB)")


def split_indices(
    n_train: int, n_test: int, val_fraction: float, split_seed: int,
    limit_train: int | None, limit_val: int | None, limit_test: int | None,
) -> tuple[list[int], list[int], list[int]]:
    """Sorted indices of train, val (both into the official train set) and test, after the limits."""
    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(n_train, generator=generator).tolist()
    n_val = max(1, round(n_train * val_fraction)) if n_train > 1 else 0
    val, train = order[:n_val], order[n_val:]
    test = torch.randperm(n_test, generator=generator).tolist()
    return sorted(train[:limit_train]), sorted(val[:limit_val]), sorted(test[:limit_test])


def seeded_split(settings: DataSettings, n_train: int, n_test: int) -> tuple[list[int], list[int], list[int]]:
    """`split_indices` with the validation share, split seed and limits of `settings`."""
    return split_indices(
        n_train, n_test, settings.val_fraction, settings.split_seed, settings.limit_train, settings.limit_val, settings.limit_test
    )


def resize_square(images: torch.Tensor, size: int, pad: bool) -> torch.Tensor:
    """uint8 (N, C, h, w) -> (N, C, size, size): zero padding around the centre when `pad` and it fits,
    else bilinear resizing (antialiased when shrinking)."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if pad and h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        return torch.nn.functional.pad(images, (left, size - w - left, top, size - h - top))
    resized = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.round().clamp(0, 255).to(torch.uint8)


def tensor_split(images: torch.Tensor, labels: torch.Tensor, indices: list[int], prefix: str) -> TensorSplit:
    index = torch.as_tensor(indices, dtype=torch.long)
    return TensorSplit(images[index].contiguous(), labels[index].long(), [f"{prefix}-{i:05d}" for i in indices])


def decode_files(
    files: list[Path], labels: list[int], image_size: int, channels: int, cache_dir: str | None, description: dict,
) -> TensorSplit:
    """Decode image files into uint8 (N, C, S, S) with a thread pool, through the decoded-tensor cache."""
    mode = MODES[channels]
    description = {
        **description, "image_size": image_size, "channels": channels,
        "files": fingerprint(files), "labels": labels, "dirs": sorted({str(p.parent) for p in files}),
    }

    def decode_all() -> dict:
        images = torch.empty(len(files), channels, image_size, image_size, dtype=torch.uint8)

        def decode(k: int) -> None:
            try:
                with Image.open(files[k]) as im:
                    picture = im.convert(mode)
                    if picture.size != (image_size, image_size):
                        picture = picture.resize((image_size, image_size), Image.BILINEAR)
            except Exception as exc:
                raise UserError(f"cannot read image {files[k]} ({exc}); remove or replace the file") from exc
            array = np.asarray(picture)
            images[k] = torch.from_numpy(array.reshape(image_size, image_size, channels).copy()).permute(2, 0, 1)

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(decode, range(len(files))))
        return {"images": images, "labels": torch.tensor(labels, dtype=torch.long)}

    tensors = cached(cache_dir, description, decode_all)
    names = [f"{p.parent.name}/{p.name}" for p in files]
    return TensorSplit(tensors["images"], tensors["labels"], names)
