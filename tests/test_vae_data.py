"""The VAE's datasets: image folders, MNIST's IDX layout, CIFAR-10's JPEG-folder fallback, their errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s18exp.data.cifar10 import CLASS_NAMES as CIFAR_CLASSES
from s18exp.data.cifar10 import CIFAR10Data
from s18exp.data.imagefolder import ImageFolderData, folder_classes
from s18exp.data.labelled import split_indices
from s18exp.data.mnist import MNISTData
from s18exp.errors import UserError
from vae_data import CLASSES, COLOURS, TEST_PER_CLASS, TRAIN_PER_CLASS, image_folder, write_image_folder, write_mnist_idx  # noqa: F401


def test_image_folder_splits_shapes_labels_and_class_names(image_folder: Path, tmp_path: Path):
    data = ImageFolderData(str(image_folder), image_size=16, channels=3, cache_dir=str(tmp_path / "cache"))
    assert data.class_names == list(CLASSES)
    n_train = len(CLASSES) * TRAIN_PER_CLASS
    assert len(data.train) + len(data.val) == n_train and len(data.val) == round(0.1 * n_train)
    assert len(data.test) == len(CLASSES) * TEST_PER_CLASS
    for split in (data.train, data.val, data.test):
        assert split.images.shape[1:] == (3, 16, 16) and split.images.dtype == torch.uint8
        assert split.targets.dtype == torch.int64
    # the label is the folder's class: the centre pixel has the class's colour
    for image, label in zip(data.test.images, data.test.targets):
        name = CLASSES[label]
        centre = image[:, 8, 8].tolist() if name != "bars" else image[:, 8, :].float().mean(1).tolist()
        assert np.abs(np.array(centre) - COLOURS[name]).max() < 60, name
    # val and train never share an item; the split is the same whatever else is asked
    assert not set(data.train.names) & set(data.val.names)
    again = ImageFolderData(str(image_folder), image_size=16, channels=3, cache_dir=str(tmp_path / "cache"))
    assert again.val.names == data.val.names and torch.equal(again.train.images, data.train.images)
    grey = ImageFolderData(str(image_folder), image_size=8, channels=1, cache=False)
    assert grey.test.images.shape[1:] == (1, 8, 8)


def test_limits_take_a_seeded_subset_that_spans_the_classes(image_folder: Path):
    data = ImageFolderData(str(image_folder), image_size=16, limit_train=9, limit_val=2, limit_test=6, cache=False)
    assert (len(data.train), len(data.val), len(data.test)) == (9, 2, 6)
    assert len(set(data.train.targets.tolist())) == len(CLASSES)  # not the first 9 files, i.e. one class
    assert len(set(data.test.targets.tolist())) > 1


def test_split_indices_are_disjoint_and_fixed():
    train, val, test = split_indices(100, 30, 0.1, 0, None, None, None)
    assert len(val) == 10 and len(train) == 90 and not set(train) & set(val) and sorted(test) == list(range(30))
    assert split_indices(100, 30, 0.1, 0, None, None, None) == (train, val, test)
    assert split_indices(100, 30, 0.1, 1, None, None, None)[1] != val


def test_image_folder_layout_errors(image_folder: Path, tmp_path: Path):
    with pytest.raises(UserError, match="needs data.root"):
        folder_classes(None)
    no_test = tmp_path / "no_test"
    shutil.copytree(image_folder / "train", no_test / "train")
    with pytest.raises(UserError, match=r"test is missing"):
        ImageFolderData(str(no_test))
    with pytest.raises(UserError, match=r"train is missing"):
        folder_classes(tmp_path / "nothing_here")
    lacking = tmp_path / "lacking"
    shutil.copytree(image_folder, lacking)
    shutil.rmtree(lacking / "test" / "disc")
    with pytest.raises(UserError, match="class 'disc' is in .*train but missing from .*test"):
        folder_classes(lacking)
    empty = tmp_path / "empty"
    shutil.copytree(image_folder, empty)
    for f in (empty / "test" / "disc").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="disc"):
        ImageFolderData(str(empty), cache=False)


def test_unreadable_image_names_the_file(image_folder: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(image_folder, broken)
    bad = broken / "test" / "disc" / "000.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="000.png"):
        ImageFolderData(str(broken), cache=False)


def test_mnist_reads_torchvisions_idx_layout_and_pads_to_32(tmp_path: Path):
    train_labels, test_labels = write_mnist_idx(tmp_path)
    data = MNISTData(str(tmp_path), image_size=32, download=False)
    assert data.class_names == [str(d) for d in range(10)]
    assert data.train.images.shape[1:] == (1, 32, 32) and len(data.train) + len(data.val) == len(train_labels)
    assert torch.equal(data.test.targets, torch.as_tensor(test_labels))
    first = data.test.images[0, 0]
    assert first[:2].sum() == 0 and first[:, :2].sum() == 0  # 2 pixels of padding each side
    assert torch.equal(first[6:26, 6:26], torch.full((20, 20), int(test_labels[0]) * 25 + 5, dtype=torch.uint8))
    assert MNISTData(str(tmp_path), image_size=16, download=False).test.images.shape[-1] == 16
    assert MNISTData(str(tmp_path), channels=3, download=False).test.images.shape[1] == 3


def test_mnist_missing_offline_names_path_layout_and_fix(tmp_path: Path):
    with pytest.raises(UserError) as info:
        MNISTData(str(tmp_path / "nowhere"), download=False)
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "MNIST/raw" in message and "data.root" in message


def test_cifar10_falls_back_to_jpeg_class_folders(tmp_path: Path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("test", 1)):
        for k, name in enumerate(CIFAR_CLASSES):
            folder = root / "cifar10-jpg" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.full((32, 32, 3), k * 25, dtype=np.uint8) + rng.integers(0, 3, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=95)
    data = CIFAR10Data(str(root), download=False, cache_dir=str(tmp_path / "cache"))
    assert data.class_names == CIFAR_CLASSES
    assert len(data.test) == 10 and data.test.images.shape[1:] == (3, 32, 32)
    assert torch.equal(data.test.targets, torch.arange(10))
    assert (data.test.images.float().mean(dim=(1, 2, 3)) - torch.arange(10) * 25).abs().max() < 4
    with pytest.raises(UserError, match="CIFAR-10 not found"):
        CIFAR10Data(str(tmp_path / "nowhere"), download=False)
