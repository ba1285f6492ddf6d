"""Shared fixtures: a tiny Oxford-IIIT Pet folder in the real on-disk layout, and smoke-run overrides.

The tiny folder is what `torchvision.datasets.OxfordIIITPet(root, split=..., target_types="segmentation",
download=False)` reads: `oxford-iiit-pet/images/<Name>.jpg`, `oxford-iiit-pet/annotations/trimaps/<Name>.png`
and the split lists `annotations/{trainval,test}.txt`. Each picture is a coloured ellipse on a plain
background; its trimap codes 1 inside the ellipse, 3 on a ring at its edge and 2 outside. Two files keep the
quirks of the real release: one `.jpg` is really a GIF, another a PNG with alpha.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# See cli_env: tiny models on a shared 2-core machine run far faster on one thread.
torch.set_num_threads(1)

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
requires_real_data = pytest.mark.skipif(
    not (REAL_DATA / "oxford-iiit-pet").is_dir(), reason=f"real data absent: {REAL_DATA / 'oxford-iiit-pet'}"
)

# (width, height) of the originals, cycled over the items: non-square, odd, smaller and larger than 32.
SIZES = [(50, 40), (37, 61), (64, 48), (45, 45), (80, 33), (29, 52)]
BREEDS = [("Abyssinian", 1, 1), ("beagle", 2, 2)]  # name, class id, species (1 cat, 2 dog)
TRAINVAL_PER_BREED = 10
TEST_PER_BREED = 4
GIF_NAME = "Abyssinian_3"  # trainval; a GIF saved under .jpg, as Abyssinian_34 in the real release
PNG_NAME = "beagle_12"  # test; an RGBA PNG saved under .jpg, as Abyssinian_5 in the real release
INNER, OUTER = 0.75, 1.0  # ellipse radii (relative) of the pet and of the border ring around it


@dataclass
class TinyPets:
    """Where the tiny data set lies and what it holds."""

    root: Path  # the folder that holds oxford-iiit-pet/
    trainval: list[str]
    test: list[str]
    colours: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = field(default_factory=dict)  # (pet, bg)

    @property
    def base(self) -> Path:
        return self.root / "oxford-iiit-pet"

    def image_file(self, name: str) -> Path:
        return self.base / "images" / f"{name}.jpg"

    def trimap_file(self, name: str) -> Path:
        return self.base / "annotations" / "trimaps" / f"{name}.png"


def synthetic_pair(width: int, height: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    """An RGB picture of an ellipse (H, W, 3) and its trimap (H, W) with values 1 pet, 2 background, 3 border."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = height / 2 + rng.uniform(-2, 2), width / 2 + rng.uniform(-2, 2)
    ry, rx = height * rng.uniform(0.3, 0.4), width * rng.uniform(0.3, 0.4)
    r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    trimap = np.full((height, width), 2, dtype=np.uint8)
    trimap[r < OUTER] = 3
    trimap[r < INNER] = 1
    pet = tuple(int(v) for v in rng.integers(150, 256, 3))
    background = tuple(int(v) for v in rng.integers(0, 90, 3))
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = background
    rgb[r < (INNER + OUTER) / 2] = pet
    return rgb, trimap, pet, background


def write_tiny_pets(root: Path) -> TinyPets:
    """Write the tiny data set under `root` and describe it."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations" / "trimaps").mkdir(parents=True)
    rng = np.random.default_rng(1234)
    tiny = TinyPets(root, [], [])
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    k = 0
    for breed_id, (breed, class_id, species) in enumerate(BREEDS, start=1):
        numbers = range(1, TRAINVAL_PER_BREED + TEST_PER_BREED + 1)
        for number in numbers:
            name = f"{breed}_{number}"
            split = "trainval" if number <= TRAINVAL_PER_BREED else "test"
            width, height = SIZES[k % len(SIZES)]
            k += 1
            rgb, trimap, pet, background = synthetic_pair(width, height, rng)
            tiny.colours[name] = (pet, background)
            _save_image(rgb, tiny.image_file(name), name)
            Image.fromarray(trimap, mode="L").save(tiny.trimap_file(name), format="PNG")
            lines[split].append(f"{name} {class_id} {species} {breed_id}")
            getattr(tiny, split).append(name)
    for split, rows in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return tiny


def _save_image(rgb: np.ndarray, path: Path, name: str) -> None:
    image = Image.fromarray(rgb, mode="RGB")
    if name == GIF_NAME:
        image.convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path, format="GIF")
    elif name == PNG_NAME:
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(path, format="PNG")
    else:
        image.save(path, format="JPEG", quality=95)


@pytest.fixture(scope="session")
def tiny_pets(tmp_path_factory: pytest.TempPathFactory) -> TinyPets:
    """The tiny data set, shared by every test: treat it as read-only."""
    return write_tiny_pets(tmp_path_factory.mktemp("tiny-pets"))


@pytest.fixture
def tiny_pets_copy(tiny_pets: TinyPets, tmp_path: Path) -> TinyPets:
    """A private copy of the tiny data set, for tests that modify or break source files."""
    root = tmp_path / "data"
    shutil.copytree(tiny_pets.root, root)
    return TinyPets(root, list(tiny_pets.trainval), list(tiny_pets.test), dict(tiny_pets.colours))


def smoke_overrides_for(data_root: Path, work: Path) -> list[str]:
    """CLI overrides of a tiny CPU run that reads `data_root` and writes its cache under `work`."""
    return [
        f"data.root={data_root}",
        "data.download=false",
        "data.image_size=32",
        "model.width=4",
        "model.depth=2",
        "trainer.max_epochs=1",
        "trainer.batch_size=4",
        "trainer.device=cpu",
        "trainer.progress=plain",
        "wandb.mode=offline",
        f"paths.cache_dir={work / 'cache'}",
    ]


@pytest.fixture
def smoke_overrides(tiny_pets: TinyPets, tmp_path: Path) -> list[str]:
    return smoke_overrides_for(tiny_pets.root, tmp_path)


def cli_env(wandb_home: Path) -> dict[str, str]:
    """Environment of a CLI subprocess: quiet W&B that keeps its files under `wandb_home` and never goes online.

    One OpenMP thread: on a busy 2-core machine, two spinning OpenMP threads make a tiny model's step
    a hundred times slower, and a tiny model gains nothing from a second thread.
    """
    env = dict(os.environ)
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE", "S18EXP_DATA", "HYDRA_FULL_ERROR"):
        env.pop(key, None)
    env.update(
        WANDB_SILENT="true",
        WANDB_MODE="offline",
        WANDB_CONFIG_DIR=str(wandb_home / "config"),
        WANDB_CACHE_DIR=str(wandb_home / "cache"),
        WANDB_DATA_DIR=str(wandb_home / "data"),
        WANDB_DISABLE_GIT="true",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env
