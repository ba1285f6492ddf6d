"""Helpers and fixtures of the VAE tests: tiny labelled datasets in real on-disk formats, composed configs,
the environment of CLI subprocesses. Independent of conftest.py; the test modules import what they use.

- `write_image_folder`: DIR/train/<class>/*.png|jpg and DIR/test/<class>/*, what torchvision's ImageFolder
  reads. Each class has its own pattern (a filled disc, a horizontal bar, a vertical bar) in its own colour
  on a dark background, at odd sizes that the loader must resize.
- `write_mnist_idx`: MNIST/raw/ with the four uncompressed IDX files, what torchvision's MNIST reads.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s18exp.paths import CONFIG_DIR
from conftest import cli_env

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLASSES = ("bars", "disc", "pillar")  # alphabetical = ImageFolder's class order
COLOURS = {"bars": (230, 60, 40), "disc": (40, 200, 90), "pillar": (60, 90, 240)}
SIZES = [(24, 24), (30, 22), (19, 27), (32, 32), (40, 36)]
TRAIN_PER_CLASS = 10
TEST_PER_CLASS = 9


def class_picture(name: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8: the class's shape in the class's colour, slightly jittered."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = height / 2 + rng.uniform(-2, 2), width / 2 + rng.uniform(-2, 2)
    if name == "disc":
        inside = ((y - cy) / (0.35 * height)) ** 2 + ((x - cx) / (0.35 * width)) ** 2 < 1
    elif name == "bars":
        inside = np.abs(y - cy) < 0.15 * height
    else:
        inside = np.abs(x - cx) < 0.15 * width
    picture = np.full((height, width, 3), rng.integers(0, 40), dtype=np.uint8)
    picture[inside] = COLOURS[name]
    return picture


def write_image_folder(root: Path, classes: tuple[str, ...] = CLASSES, train: int = TRAIN_PER_CLASS, test: int = TEST_PER_CLASS) -> Path:
    """Write the tiny folder under `root` (which must not hold train/ or test/ yet); returns `root`."""
    rng = np.random.default_rng(7)
    k = 0
    for split, count in (("train", train), ("test", test)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                width, height = SIZES[k % len(SIZES)]
                k += 1
                image = Image.fromarray(class_picture(name, width, height, rng))
                if i % 2:
                    image.save(folder / f"{i:03d}.jpg", quality=95)
                else:
                    image.save(folder / f"{i:03d}.png")
    return root


def _idx(path: Path, array: np.ndarray) -> None:
    """One uncompressed IDX file: magic (0, 0, dtype 0x08 = ubyte, ndim), sizes as big-endian int32, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_idx(root: Path, n_train: int = 40, n_test: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """root/MNIST/raw/ in torchvision's layout, 28x28 digits that are just their label's grey level;
    returns the train and test label arrays."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    labels = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 4:24, 4:24] = (y * 25 + 5)[:, None, None]
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        labels[prefix] = y
    return labels["train"], labels["t10k"]


def compose_vae(overrides: list[str]):
    """The composed config of `python -m s18exp task=vae <overrides>`, without Hydra's own node."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=["task=vae", *overrides])


def tiny_overrides(data_root: Path, work: Path) -> list[str]:
    """A tiny CPU VAE on the tiny image folder: 16x16 images, 4 channels, 1 epoch, judge and readers of 1 epoch."""
    return [
        "data=imagefolder",
        f"data.root={data_root}",
        "data.image_size=16",
        "model.width=4",
        "model.depth=2",
        "model.latent_dim=4",
        "model.embed_dim=4",
        "trainer.max_epochs=1",
        "trainer.batch_size=8",
        "trainer.device=cpu",
        "trainer.num_threads=1",
        "trainer.progress=plain",
        "task.judge.width=4",
        "task.judge.epochs=1",
        "task.panel.readers.resnet.width=4",
        "task.panel.readers.resnet.epochs=1",
        "task.panel.readers.mixer.width=8",
        "task.panel.readers.mixer.epochs=1",
        "task.panel.readers.wide.width=4",
        "task.panel.readers.wide.epochs=1",
        "wandb.mode=offline",
        f"paths.cache_dir={work / 'cache'}",
    ]


def run_cli(module: str, args: list[str], home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=cli_env(home), capture_output=True, text=True,
        timeout=timeout, cwd=home,
    )


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny image folder, shared by every test: treat it as read-only."""
    return write_image_folder(tmp_path_factory.mktemp("tiny-imagefolder"))


@pytest.fixture
def one_thread():
    """Torch on one thread during the test: on a small, busy CPU, tiny models run several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
