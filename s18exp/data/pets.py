"""Oxford-IIIT Pet trimaps as decoded tensors, read through torchvision's own `OxfordIIITPet`."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import OxfordIIITPet

from s18exp.data import TensorSplit
from s18exp.data.cache import cached, fingerprint
from s18exp.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Trimap pixel value -> class index, per class scheme. Trimaps code 1 pet, 2 background, 3 border.
CLASS_SCHEMES = {
    "trimap": (["pet", "background", "border"], {1: 0, 2: 1, 3: 2}),
    "binary": (["background", "pet"], {1: 1, 2: 0, 3: 1}),
}
# Class index -> pixel value when a predicted mask is written to a file: the dataset's own trimap coding,
# and 0 background / 1 pet for the binary scheme.
MASK_FILE_VALUES = {"trimap": [1, 2, 3], "binary": [0, 1]}
EXPECTED_LAYOUT = "oxford-iiit-pet/images/*.jpg, oxford-iiit-pet/annotations/trimaps/*.png, annotations/{trainval,test}.txt"
DOWNLOAD_TIMEOUT_S = 20


class PetsData:
    """Train / val / test splits of Oxford-IIIT Pet segmentation, images resized to `image_size` squares.

    The official `trainval` list is split into train and val with `split_seed` (so every run validates on
    the same images whatever its own seed); the official `test` list is the test split. Images are converted
    to RGB and resized bilinear; masks are resized NEAREST only, so they keep their class values.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 128,
        classes: str = "trimap",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        limit_train: int | None = None,
        limit_val: int | None = None,
        limit_test: int | None = None,
        download: bool = True,
        cache: bool = True,
        cache_dir: str | None = None,
        name: str = "pets",
    ) -> None:
        if classes not in CLASS_SCHEMES:
            raise UserError(f"data.classes={classes!r} is unknown; use one of {sorted(CLASS_SCHEMES)}")
        self.root = Path(root).expanduser()
        self.image_size = image_size
        self.classes = classes
        self.class_names, self._value_to_class = CLASS_SCHEMES[classes]
        self.num_classes = len(self.class_names)
        self._cache_dir = cache_dir if cache else None

        trainval = self._open("trainval", download)
        test = self._open("test", download=False)
        order = torch.randperm(len(trainval), generator=torch.Generator().manual_seed(split_seed)).tolist()
        n_val = max(1, round(len(trainval) * val_fraction))
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        self.train = self._load(trainval, "train", train_idx[:limit_train])
        self.val = self._load(trainval, "val", val_idx[:limit_val])
        self.test = self._load(test, "test", list(range(len(test)))[:limit_test])

    def _open(self, split: str, download: bool) -> OxfordIIITPet:
        base = self.root / "oxford-iiit-pet"
        present = all((base / p).exists() for p in ("images", "annotations/trimaps", f"annotations/{split}.txt"))
        if not present and download:
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
            try:
                return OxfordIIITPet(self.root, split=split, target_types="segmentation", download=True)
            except Exception as exc:  # any failure to fetch ends in the same advice
                reason = f"the download failed ({type(exc).__name__}: {exc})"
            finally:
                socket.setdefaulttimeout(previous)
        elif not present:
            reason = "data.download=false"
        else:
            return OxfordIIITPet(self.root, split=split, target_types="segmentation", download=False)
        raise UserError(
            f"Oxford-IIIT Pet not found under {base} (expected {EXPECTED_LAYOUT}) and {reason}; "
            f"set data.root=DIR or S18EXP_DATA=DIR to the folder that holds oxford-iiit-pet/"
        )

    def _load(self, dataset: OxfordIIITPet, split: str, indices: list[int]) -> TensorSplit:
        image_files = [Path(dataset._images[i]) for i in indices]
        mask_files = [Path(dataset._segs[i]) for i in indices]
        names = [p.stem for p in image_files]
        description = {
            "dataset": "oxford-iiit-pet",
            "split": split,
            "image_size": self.image_size,
            "classes": self.classes,
            "files": fingerprint(image_files) + fingerprint(mask_files),
        }

        def decode_all() -> dict:
            size = self.image_size
            images = torch.empty(len(indices), 3, size, size, dtype=torch.uint8)
            masks = torch.empty(len(indices), size, size, dtype=torch.uint8)
            lut = np.full(256, 255, dtype=np.uint8)
            for value, cls in self._value_to_class.items():
                lut[value] = cls

            def decode(k: int) -> None:
                images[k], masks[k] = _decode_pair(image_files[k], mask_files[k], size, lut)

            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                list(pool.map(decode, range(len(indices))))
            return {"images": images, "masks": masks}

        tensors = cached(self._cache_dir, description, decode_all)
        return TensorSplit(tensors["images"], tensors["masks"], names)


def _decode_pair(image_file: Path, mask_file: Path, size: int, lut: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """One image (RGB, bilinear) and its trimap (NEAREST, mapped to class indices) at size x size."""
    try:
        with Image.open(image_file) as im:
            image = im.convert("RGB").resize((size, size), Image.BILINEAR)
    except Exception as exc:
        raise UserError(f"cannot read image {image_file} ({exc}); remove or replace the file") from exc
    try:
        with Image.open(mask_file) as im:
            trimap = np.asarray(im.resize((size, size), Image.NEAREST))
    except Exception as exc:
        raise UserError(f"cannot read trimap {mask_file} ({exc}); remove or replace the file") from exc
    mask = lut[trimap]
    if (mask == 255).any():
        bad = sorted(set(np.unique(trimap)) - {1, 2, 3})
        raise UserError(f"trimap {mask_file} holds values {bad}; trimaps code 1 pet, 2 background, 3 border")
    image_tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    return image_tensor, torch.from_numpy(mask.copy())
