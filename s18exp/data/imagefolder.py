"""Any labelled image folder: `DIR/train/<class>/*` and `DIR/test/<class>/*`, read with torchvision's `ImageFolder`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchvision.datasets import ImageFolder

from s18exp.data.labelled import LabelledData, check_channels, decode_files, seeded_split
from s18exp.data.settings import DataSettings, takes_data_settings
from s18exp.errors import UserError

SPLITS = ("train", "test")


def folder_classes(root: str | Path | None, what: str = "data=imagefolder") -> list[str]:
    """The class names of `root/train` and `root/test` (sorted, as ImageFolder numbers them), after checking
    that both folders exist and hold the same classes. Cheap: it lists folders, it opens no image."""
    if root is None or str(root) in ("", "None"):
        raise UserError(f"{what} needs data.root=DIR, a folder with DIR/train/<class>/* and DIR/test/<class>/*")
    base = Path(str(root)).expanduser()
    classes = {}
    for split in SPLITS:
        folder = base / split
        if not folder.is_dir():
            raise UserError(
                f"{what}: {folder} is missing; data.root=DIR must hold DIR/train/<class>/* and DIR/test/<class>/*"
            )
        classes[split] = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes[split]:
            raise UserError(f"{what}: {folder} has no class folders; put the images of class C in {folder}/C/")
    for split, other in (("train", "test"), ("test", "train")):
        lacking = sorted(set(classes[split]) - set(classes[other]))
        if lacking:
            raise UserError(
                f"{what}: class {lacking[0]!r} is in {base / split} but missing from {base / other}; "
                f"every class needs images in both train/ and test/"
            )
    return classes["train"]


def open_folder(folder: Path) -> ImageFolder:
    """torchvision's ImageFolder (files only listed, nothing decoded), its errors as one line."""
    try:
        return ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"cannot read the image folder {folder}: {exc}") from exc


def folder_splits(data: LabelledData, train_dir: Path, test_dir: Path, channels: int, settings: DataSettings) -> None:
    """Fill `data.train/val/test/class_names` from two ImageFolder trees, decoding only the selected files."""
    check_channels(channels)
    train_set, test_set = open_folder(train_dir), open_folder(test_dir)
    if train_set.classes != test_set.classes:
        missing = sorted(set(train_set.classes) ^ set(test_set.classes))
        raise UserError(f"class {missing[0]!r} has images in only one of {train_dir} and {test_dir}")
    data.class_names = list(train_set.classes)
    train_idx, val_idx, test_idx = seeded_split(settings, len(train_set.samples), len(test_set.samples))
    for attr, dataset_split, folder, indices in (
        ("train", "train", train_set, train_idx), ("val", "val", train_set, val_idx), ("test", "test", test_set, test_idx)
    ):
        files = [Path(folder.samples[i][0]) for i in indices]
        labels = [int(folder.samples[i][1]) for i in indices]
        description = {"dataset": settings.name, "split": dataset_split}
        split = decode_files(files, labels, settings.image_size, channels, settings.cache_folder, description)
        setattr(data, attr, split)


@takes_data_settings
class ImageFolderData(LabelledData):
    """Train / val / test from `root/train/<class>/*` and `root/test/<class>/*`, images resized bilinear to
    `image_size` squares and converted to `channels` (1 grey, 3 RGB). Classes are the folder names, sorted."""

    @staticmethod
    def classes_for(cfg: object) -> list[str]:
        return folder_classes(getattr(cfg, "root", None))

    def __init__(self, root: str, image_size: int = 32, channels: int = 3, name: str = "imagefolder", **shared: Any) -> None:
        """`shared`: the other fields of `DataSettings` (val_fraction, split_seed, limit_*, download, cache,
        cache_dir); an image folder is never downloaded, whatever `download` says."""
        folder_classes(root)
        self.settings = settings = DataSettings.from_config(root, image_size, name, **shared)
        folder_splits(self, settings.root / "train", settings.root / "test", channels, settings)
