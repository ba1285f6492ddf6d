"""PetsData on the real 3-breed Oxford-IIIT Pet subset in ../shared/data (skipped where it is absent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REAL_DATA, requires_real_data
from PIL import Image

from s18exp.data.pets import PetsData

pytestmark = [pytest.mark.realdata, requires_real_data]

BASE = REAL_DATA / "oxford-iiit-pet"
QUIRKS = {"Abyssinian_34": "GIF", "Abyssinian_5": "PNG"}  # named .jpg, but not JPEG files
# Abyssinian_34 is in no official split list, so the quirk tests read the real files through lists of their own.
QUIRK_LISTS = {"trainval": ["Abyssinian_34", "Abyssinian_1", "Bengal_1"], "test": ["Abyssinian_5", "Bengal_10"]}


def split_list(name: str) -> list[str]:
    return [line.split()[0] for line in (BASE / "annotations" / f"{name}.txt").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def full32() -> PetsData:
    """Every listed image at 32 px: the whole subset decodes in seconds at this size."""
    return PetsData(str(REAL_DATA), image_size=32, download=False, cache=False)


@pytest.fixture(scope="module")
def quirks32(tmp_path_factory: pytest.TempPathFactory) -> PetsData:
    """The real image and trimap folders (linked, not copied) under split lists that name the quirky files."""
    root = tmp_path_factory.mktemp("real-quirks")
    annotations = root / "oxford-iiit-pet" / "annotations"
    annotations.mkdir(parents=True)
    (root / "oxford-iiit-pet" / "images").symlink_to(BASE / "images")
    (annotations / "trimaps").symlink_to(BASE / "annotations" / "trimaps")
    for split, names in QUIRK_LISTS.items():
        (annotations / f"{split}.txt").write_text("".join(f"{n} 1 1 1\n" for n in names))
    return PetsData(str(root), image_size=32, download=False, cache=False)


def find(data: PetsData, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    for split in (data.train, data.val, data.test):
        if name in split.names:
            k = split.names.index(name)
            return split.images[k], split.targets[k]
    raise KeyError(name)


def test_limited_subset_at_64_px() -> None:
    data = PetsData(str(REAL_DATA), image_size=64, limit_train=8, limit_test=8, download=False, cache=False)
    assert (len(data.train), len(data.test)) == (8, 8)
    for split in (data.train, data.test):
        assert split.images.shape == (8, 3, 64, 64) and split.images.dtype == torch.uint8
        assert split.targets.shape == (8, 64, 64) and split.targets.dtype == torch.uint8
        assert set(split.targets.unique().tolist()) <= {0, 1, 2}
    assert set(data.train.targets.unique().tolist()) == {0, 1, 2}  # real trimaps hold all three codes


def test_official_split_sizes(full32: PetsData) -> None:
    assert "Abyssinian_34" not in split_list("trainval") + split_list("test")
    trainval, test = split_list("trainval"), split_list("test")
    assert (len(trainval), len(test)) == (300, 298)
    assert (len(full32.train), len(full32.val), len(full32.test)) == (270, 30, 298)
    assert set(full32.train.names) | set(full32.val.names) == set(trainval)
    assert full32.test.names == test


@pytest.mark.parametrize("name", sorted(QUIRKS))
def test_non_jpeg_files_decode_to_rgb(quirks32: PetsData, name: str) -> None:
    path = BASE / "images" / f"{name}.jpg"
    with Image.open(path) as im:
        assert im.format == QUIRKS[name]
        expected = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR))
    image, _ = find(quirks32, name)
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(expected.copy()))
    assert image.float().std() > 10  # a real picture, not a blank


def test_abyssinian_34_has_an_all_background_trimap(quirks32: PetsData) -> None:
    _, mask = find(quirks32, "Abyssinian_34")
    assert (mask == 1).all()  # class 1 = background in the trimap scheme
