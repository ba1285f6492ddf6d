"""Oxford-IIIT Pet trimaps as decoded tensors, read through torchvision's own `OxfordIIITPet`."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from s18exp.data import TensorSplit
from s18exp.data.cache import cached, fingerprint
from s18exp.data.download import with_download
from s18exp.data.settings import DataSettings, takes_data_settings
from s18exp.errors import UserError

if TYPE_CHECKING:
    from torchvision.datasets import OxfordIIITPet

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


@takes_data_settings
class PetsData:
    """Train / val / test splits of Oxford-IIIT Pet segmentation, images resized to `image_size` squares.

    The official `trainval` list is split into train and val with `split_seed` (so every run validates on
    the same images whatever its own seed); the official `test` list is the test split. Images are converted
    to RGB and resized bilinear; masks are resized NEAREST only, so they keep their class values. The test
    split also keeps each mask at its original resolution (`full_targets`), where test scores are computed.

    `limit_*` keep a seeded subset (seed `split_seed`, the same for every run) of N items of a split, as equal
    as possible across breeds (`stratified_subset`): the lists are sorted by breed, and the first N would
    hold one or two breeds only.
    """

    def __init__(
        self, root: str, image_size: int = 128, classes: str = "trimap", name: str = "pets", **shared: Any
    ) -> None:
        """`shared`: the other fields of `DataSettings` (val_fraction, split_seed, limit_*, download, cache, cache_dir)."""
        if classes not in CLASS_SCHEMES:
            raise UserError(f"data.classes={classes!r} is unknown; use one of {sorted(CLASS_SCHEMES)}")
        self.settings = settings = DataSettings.from_config(root, image_size, name, **shared)
        self.classes = classes
        self.class_names, self._value_to_class = CLASS_SCHEMES[classes]
        self.num_classes = len(self.class_names)

        trainval = self._open("trainval", settings.download)
        test = self._open("test", download=False)
        seed = settings.split_seed
        order = torch.randperm(len(trainval), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = max(1, round(len(trainval) * settings.val_fraction))
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        train_idx = stratified_subset(train_idx, _breeds(trainval, train_idx), settings.limit_train, seed)
        val_idx = stratified_subset(val_idx, _breeds(trainval, val_idx), settings.limit_val, seed)
        test_idx = list(range(len(test)))
        test_idx = stratified_subset(test_idx, _breeds(test, test_idx), settings.limit_test, seed)
        self.train = self._load(trainval, "train", train_idx)
        self.val = self._load(trainval, "val", val_idx)
        self.test = self._load(test, "test", test_idx, keep_full_masks=True)

    def _open(self, split: str, download: bool) -> OxfordIIITPet:
        # Imported here: torchvision.datasets pulls in torch._dynamo, a second or more of start-up that
        # `predict`, which imports this module for its class schemes, never needs.
        from torchvision.datasets import OxfordIIITPet

        root = self.settings.root
        base = root / "oxford-iiit-pet"

        def local() -> OxfordIIITPet | None:
            present = all((base / p).exists() for p in ("images", "annotations/trimaps", f"annotations/{split}.txt"))
            return OxfordIIITPet(root, split=split, target_types="segmentation", download=False) if present else None

        return with_download(
            local,
            lambda folder: OxfordIIITPet(folder, split=split, target_types="segmentation", download=True),
            download,
            f"Oxford-IIIT Pet not found under {base} (expected {EXPECTED_LAYOUT})",
            root,
            touches=("oxford-iiit-pet",),
            holds="oxford-iiit-pet/",
        )

    def _load(self, dataset: OxfordIIITPet, split: str, indices: list[int], keep_full_masks: bool = False) -> TensorSplit:
        image_files = [Path(dataset._images[i]) for i in indices]
        mask_files = [Path(dataset._segs[i]) for i in indices]
        names = [p.stem for p in image_files]
        description = {
            "dataset": "oxford-iiit-pet",
            "split": split,
            "image_size": self.settings.image_size,
            "classes": self.classes,
            "files": fingerprint(image_files) + fingerprint(mask_files),
        }
        if keep_full_masks:  # only here, so that the cached train and val splits keep their keys
            description["full_masks"] = True

        def decode_all() -> dict:
            size = self.settings.image_size
            images = torch.empty(len(indices), 3, size, size, dtype=torch.uint8)
            masks = torch.empty(len(indices), size, size, dtype=torch.uint8)
            full_masks: list[torch.Tensor | None] = [None] * len(indices)
            lut = np.full(256, 255, dtype=np.uint8)
            for value, cls in self._value_to_class.items():
                lut[value] = cls

            def decode(k: int) -> None:
                images[k], masks[k], full = _decode_pair(image_files[k], mask_files[k], size, lut)
                if keep_full_masks:  # only the test split is scored at full size, and originals cost ~190 kB each
                    full_masks[k] = full

            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                list(pool.map(decode, range(len(indices))))
            tensors = {"images": images, "masks": masks}
            if keep_full_masks:
                tensors["full_masks"] = full_masks
            return tensors

        tensors = cached(self.settings.cache_folder, description, decode_all)
        return TensorSplit(tensors["images"], tensors["masks"], names, tensors.get("full_masks"))


def breed_of(name: str) -> str:
    """The breed of an Oxford-IIIT Pet file stem: `Abyssinian_12` -> `Abyssinian`, `american_bulldog_3` -> `american_bulldog`."""
    return re.sub(r"_\d+$", "", name)


def _breeds(dataset: OxfordIIITPet, indices: list[int]) -> list[str]:
    return [breed_of(Path(dataset._images[i]).stem) for i in indices]


def stratified_subset(indices: list[int], groups: list[str], limit: int | None, seed: int) -> list[int]:
    """`limit` of `indices` (all of them when `limit` is None or not smaller), sorted; `groups[k]` is the group of `indices[k]`.

    A seeded random choice, as equal as possible across groups: groups take turns, each giving its next item
    in a seeded random order, and a group that runs out drops out; the turn order of the groups is seeded too,
    so the remainder of limit / groups does not always go to the same groups.
    """
    if limit is None or limit >= len(indices):
        return sorted(indices)
    generator = torch.Generator().manual_seed(seed)
    names = sorted(set(groups))
    turn = {names[i]: position for position, i in enumerate(torch.randperm(len(names), generator=generator).tolist())}
    rank = [0] * len(indices)
    for name in names:
        members = [k for k, group in enumerate(groups) if group == name]
        for position, i in enumerate(torch.randperm(len(members), generator=generator).tolist()):
            rank[members[i]] = position
    order = sorted(range(len(indices)), key=lambda k: (rank[k], turn[groups[k]]))
    return sorted(indices[k] for k in order[:limit])


def _decode_pair(image_file: Path, mask_file: Path, size: int, lut: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image (RGB, bilinear) and its trimap (NEAREST, mapped to class indices) at size x size, and the
    trimap's class indices at its own resolution."""
    try:
        with Image.open(image_file) as im:
            image = im.convert("RGB").resize((size, size), Image.BILINEAR)
    except Exception as exc:
        raise UserError(f"cannot read image {image_file} ({exc}); remove or replace the file") from exc
    try:
        with Image.open(mask_file) as im:
            trimap = np.asarray(im)
            resized = np.asarray(im.resize((size, size), Image.NEAREST))
    except Exception as exc:
        raise UserError(f"cannot read trimap {mask_file} ({exc}); remove or replace the file") from exc
    full = lut[trimap]
    if (full == 255).any():
        bad = sorted(set(np.unique(trimap)) - {1, 2, 3})
        raise UserError(f"trimap {mask_file} holds values {bad}; trimaps code 1 pet, 2 background, 3 border")
    image_tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    return image_tensor, torch.from_numpy(lut[resized]), torch.from_numpy(full)
