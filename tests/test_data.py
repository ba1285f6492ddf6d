"""PetsData on the tiny Oxford-IIIT Pet folder, its disk cache, and the batch iterator."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GIF_NAME, PNG_NAME, TinyPets
from PIL import Image

import s18exp.data.pets as pets_module
from s18exp.data import Batches, TensorSplit
from s18exp.data.cache import cached
from s18exp.data.pets import PetsData, breed_of, stratified_subset
from s18exp.errors import UserError

SIZE = 32
TRIMAP_CLASSES = {1: 0, 2: 1, 3: 2}  # pet, background, border
BINARY_CLASSES = {1: 1, 2: 0, 3: 1}  # pet and border -> pet (1), background -> 0


def load(root: Path, **kwargs) -> PetsData:
    kwargs.setdefault("image_size", SIZE)
    kwargs.setdefault("cache", False)
    return PetsData(str(root), download=False, **kwargs)


@pytest.fixture(scope="module")
def pets(tiny_pets: TinyPets) -> PetsData:
    return load(tiny_pets.root)


def splits(data: PetsData) -> dict[str, TensorSplit]:
    return {"train": data.train, "val": data.val, "test": data.test}


def item(data: PetsData, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (image, mask) called `name`, whichever split holds it."""
    for split in splits(data).values():
        if name in split.names:
            k = split.names.index(name)
            return split.images[k], split.targets[k]
    raise KeyError(name)


def all_names(data: PetsData) -> list[str]:
    return [n for split in splits(data).values() for n in split.names]


def trimap_resized(tiny: TinyPets, name: str, resample: Image.Resampling, mode: str = "L") -> np.ndarray:
    with Image.open(tiny.trimap_file(name)) as im:
        return np.asarray(im.convert(mode).resize((SIZE, SIZE), resample))


def to_classes(trimap: np.ndarray, mapping: dict[int, int]) -> torch.Tensor:
    out = np.full(trimap.shape, 255, dtype=np.uint8)
    for value, cls in mapping.items():
        out[trimap == value] = cls
    return torch.from_numpy(out)


# --- images -----------------------------------------------------------------------------------------


def test_fixture_keeps_the_real_release_quirks(tiny_pets: TinyPets) -> None:
    with Image.open(tiny_pets.image_file(GIF_NAME)) as im:
        assert im.format == "GIF" and im.mode == "P"
    with Image.open(tiny_pets.image_file(PNG_NAME)) as im:
        assert im.format == "PNG" and im.mode == "RGBA"


@pytest.mark.parametrize("name", [GIF_NAME, PNG_NAME, "Abyssinian_1", "beagle_13"])
def test_images_decode_to_rgb_with_their_colours(pets: PetsData, tiny_pets: TinyPets, name: str) -> None:
    image, _ = item(pets, name)
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
    pet, background = tiny_pets.colours[name]
    centre, corner = image[:, SIZE // 2, SIZE // 2], image[:, 0, 0]
    # JPEG may shift a colour by a few levels; a GIF palette or a PNG alpha must not change it at all.
    tolerance = 1 if name in (GIF_NAME, PNG_NAME) else 8
    assert (centre.int() - torch.tensor(pet)).abs().max() <= tolerance, (centre, pet)
    assert (corner.int() - torch.tensor(background)).abs().max() <= tolerance, (corner, background)


def test_images_match_an_independent_pil_decode(pets: PetsData, tiny_pets: TinyPets) -> None:
    for name in all_names(pets):
        with Image.open(tiny_pets.image_file(name)) as im:
            expected = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
        image, _ = item(pets, name)
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(expected.copy())), name


def test_split_shapes_and_dtypes(pets: PetsData, tiny_pets: TinyPets) -> None:
    for split in splits(pets).values():
        n = len(split)
        assert split.images.shape == (n, 3, SIZE, SIZE) and split.images.dtype == torch.uint8
        assert split.targets.shape == (n, SIZE, SIZE) and split.targets.dtype == torch.uint8
        assert len(split.names) == n
    assert len(pets.test) == len(tiny_pets.test)
    assert pets.num_classes == 3 and pets.class_names == ["pet", "background", "border"]


def test_image_size_sets_the_square_size(tiny_pets: TinyPets) -> None:
    data = load(tiny_pets.root, image_size=16, limit_train=2, limit_val=1, limit_test=1)
    assert data.train.images.shape == (2, 3, 16, 16) and data.test.targets.shape == (1, 16, 16)


# --- masks ------------------------------------------------------------------------------------------


def test_trimap_classes_match_the_nearest_resized_source(pets: PetsData, tiny_pets: TinyPets) -> None:
    for name in all_names(pets):
        expected = to_classes(trimap_resized(tiny_pets, name, Image.NEAREST), TRIMAP_CLASSES)
        assert torch.equal(item(pets, name)[1], expected), name
    for split in splits(pets).values():
        assert set(split.targets.unique().tolist()) <= {0, 1, 2}
    assert set(pets.train.targets.unique().tolist()) == {0, 1, 2}


def test_binary_scheme_merges_pet_and_border(tiny_pets: TinyPets) -> None:
    data = load(tiny_pets.root, classes="binary")
    assert data.num_classes == 2 and data.class_names == ["background", "pet"]
    for name in all_names(data):
        expected = to_classes(trimap_resized(tiny_pets, name, Image.NEAREST), BINARY_CLASSES)
        assert torch.equal(item(data, name)[1], expected), name


def test_unknown_class_scheme_is_a_user_error(tiny_pets: TinyPets) -> None:
    with pytest.raises(UserError, match="data.classes='quad'"):
        load(tiny_pets.root, classes="quad")


def test_fixture_tells_nearest_from_bilinear_mask_resizing(pets: PetsData, tiny_pets: TinyPets) -> None:
    """A bilinear resize makes in-between values; the masks must be the NEAREST resize, never those."""
    names = all_names(pets)
    blended = [trimap_resized(tiny_pets, n, Image.BILINEAR, mode="F") for n in names]
    assert any(not np.isin(b, [1.0, 2.0, 3.0]).all() for b in blended), "fixture cannot catch bilinear"
    bilinear_l = [to_classes(trimap_resized(tiny_pets, n, Image.BILINEAR), TRIMAP_CLASSES) for n in names]
    assert any(not torch.equal(item(pets, n)[1], b) for n, b in zip(names, bilinear_l))


def test_trimap_with_a_foreign_value_is_a_user_error(tiny_pets_copy: TinyPets) -> None:
    path = tiny_pets_copy.trimap_file(tiny_pets_copy.test[0])
    Image.fromarray(np.full((20, 20), 7, dtype=np.uint8), mode="L").save(path)
    with pytest.raises(UserError, match=re.escape(str(path))):
        load(tiny_pets_copy.root)


# --- splits -----------------------------------------------------------------------------------------


def test_train_and_val_split_trainval(pets: PetsData, tiny_pets: TinyPets) -> None:
    train, val = set(pets.train.names), set(pets.val.names)
    assert not train & val
    assert train | val == set(tiny_pets.trainval)
    assert len(pets.val) == round(0.1 * len(tiny_pets.trainval))  # val_fraction 0.1 of 20 = 2
    assert pets.test.names == tiny_pets.test
    assert pets.train.names == sorted(pets.train.names, key=tiny_pets.trainval.index)  # list order kept


def test_val_fraction_sets_the_val_size(tiny_pets: TinyPets) -> None:
    data = load(tiny_pets.root, val_fraction=0.25)
    assert (len(data.train), len(data.val)) == (15, 5)


def test_split_is_reproducible_and_ignores_the_global_seed(tiny_pets: TinyPets) -> None:
    torch.manual_seed(1)
    first = load(tiny_pets.root)
    torch.manual_seed(2)
    second = load(tiny_pets.root)
    assert first.val.names == second.val.names and first.train.names == second.train.names
    other = load(tiny_pets.root, split_seed=1)
    assert other.val.names != first.val.names  # the split does depend on its own seed


def breed_counts(names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        breed = name.rsplit("_", 1)[0]
        counts[breed] = counts.get(breed, 0) + 1
    return counts


def test_limits_take_equal_shares_of_each_breed(pets: PetsData, tiny_pets: TinyPets) -> None:
    """The split lists are sorted by breed: the first 6 items would all be Abyssinians."""
    data = load(tiny_pets.root, limit_train=6, limit_val=1, limit_test=4)
    assert breed_counts(data.train.names) == {"Abyssinian": 3, "beagle": 3}
    assert breed_counts(data.test.names) == {"Abyssinian": 2, "beagle": 2}
    assert len(data.val) == 1
    for split in ("train", "val", "test"):
        limited, full = splits(data)[split], splits(pets)[split]
        positions = [full.names.index(n) for n in limited.names]
        assert positions == sorted(positions)  # a subset in the split's own order
        assert torch.equal(limited.images, full.images[positions])
        assert torch.equal(limited.targets, full.targets[positions])
    odd = load(tiny_pets.root, limit_train=5)
    assert sorted(breed_counts(odd.train.names).values()) == [2, 3]


def test_limits_are_seeded_by_split_seed_only(tiny_pets: TinyPets) -> None:
    torch.manual_seed(1)
    first = load(tiny_pets.root, limit_train=6, limit_test=2)
    torch.manual_seed(2)
    again = load(tiny_pets.root, limit_train=6, limit_test=2)
    assert (first.train.names, first.test.names) == (again.train.names, again.test.names)
    picks = {tuple(load(tiny_pets.root, limit_train=6, split_seed=seed).train.names) for seed in range(4)}
    assert len(picks) > 1


def test_stratified_subset_shares_out_what_a_small_group_cannot_take() -> None:
    groups = ["a"] * 2 + ["b"] * 10 + ["c"] * 5
    indices = list(range(100, 117))
    chosen = stratified_subset(indices, groups, 9, seed=0)
    assert chosen == sorted(chosen) and len(set(chosen)) == 9 and set(chosen) <= set(indices)
    counts = {g: sum(groups[i - 100] == g for i in chosen) for g in "abc"}
    assert counts == {"a": 2, "b": 4, "c": 3} or counts == {"a": 2, "b": 3, "c": 4}
    assert stratified_subset(indices, groups, 9, seed=0) == chosen
    assert len({tuple(stratified_subset(indices, groups, 9, seed=seed)) for seed in range(5)}) > 1
    assert stratified_subset(indices, groups, None, seed=0) == indices
    assert stratified_subset(indices, groups, 50, seed=0) == indices


@pytest.mark.parametrize(
    ("stem", "breed"), [("Abyssinian_12", "Abyssinian"), ("american_bulldog_3", "american_bulldog"), ("beagle_1", "beagle")]
)
def test_breed_is_the_stem_without_its_number(stem: str, breed: str) -> None:
    assert breed_of(stem) == breed


# --- original-resolution test masks --------------------------------------------------------------------


def test_test_split_keeps_each_mask_at_its_original_resolution(pets: PetsData, tiny_pets: TinyPets) -> None:
    assert pets.train.full_targets is None and pets.val.full_targets is None
    assert len(pets.test.full_targets) == len(pets.test)
    for name, full in zip(pets.test.names, pets.test.full_targets):
        with Image.open(tiny_pets.trimap_file(name)) as im:
            expected = to_classes(np.asarray(im), TRIMAP_CLASSES)
            width, height = im.size
        assert full.dtype == torch.uint8 and full.shape == (height, width), name
        assert torch.equal(full, expected), name
    assert len({tuple(full.shape) for full in pets.test.full_targets}) > 1  # sizes differ, none is the training size


def test_subset_carries_the_original_masks(pets: PetsData) -> None:
    part = pets.test.subset([3, 0])
    assert part.names == [pets.test.names[3], pets.test.names[0]]
    assert torch.equal(part.full_targets[0], pets.test.full_targets[3]) and torch.equal(part.full_targets[1], pets.test.full_targets[0])


# --- disk cache -------------------------------------------------------------------------------------


class CountingDecode:
    """Stands in for `_decode_pair`: counts the calls, then decodes (or refuses to)."""

    def __init__(self, allow: bool = True) -> None:
        self.real = pets_module._decode_pair
        self.allow = allow
        self.files: list[Path] = []

    def __call__(self, image_file: Path, *args):
        self.files.append(Path(image_file))
        if not self.allow:
            raise AssertionError(f"decoded {image_file} although the cache holds it")
        return self.real(image_file, *args)


def assert_same(a: PetsData, b: PetsData) -> None:
    for split in ("train", "val", "test"):
        sa, sb = splits(a)[split], splits(b)[split]
        assert sa.names == sb.names
        assert torch.equal(sa.images, sb.images) and torch.equal(sa.targets, sb.targets)
        assert (sa.full_targets is None) == (sb.full_targets is None)
        assert all(torch.equal(a, b) for a, b in zip(sa.full_targets or [], sb.full_targets or []))


def test_second_construction_reads_the_cache(
    tiny_pets: TinyPets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = load(tiny_pets.root, cache=True, cache_dir=str(cache))
    assert len(list(cache.glob("*.pt"))) == 3  # train, val, test
    monkeypatch.setattr(pets_module, "_decode_pair", CountingDecode(allow=False))
    assert_same(first, load(tiny_pets.root, cache=True, cache_dir=str(cache)))


def test_cache_is_off_when_cache_is_false(tiny_pets: TinyPets, tmp_path: Path) -> None:
    load(tiny_pets.root, cache=False, cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_cache_key_depends_on_image_size_and_classes(tiny_pets: TinyPets, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    a = load(tiny_pets.root, cache=True, cache_dir=cache)
    b = load(tiny_pets.root, cache=True, cache_dir=cache, image_size=16)
    c = load(tiny_pets.root, cache=True, cache_dir=cache, classes="binary")
    assert len(list(Path(cache).glob("*.pt"))) == 9
    assert b.train.images.shape[-1] == 16
    assert not torch.equal(a.train.targets, c.train.targets)


def test_touching_a_source_file_invalidates_its_split(
    tiny_pets_copy: TinyPets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = str(tmp_path / "cache")
    first = load(tiny_pets_copy.root, cache=True, cache_dir=cache)
    touched = tiny_pets_copy.image_file(first.test.names[1])
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    counter = CountingDecode()
    monkeypatch.setattr(pets_module, "_decode_pair", counter)
    second = load(tiny_pets_copy.root, cache=True, cache_dir=cache)
    # Only the test split, which holds the touched file, is decoded again, under a new key.
    assert sorted(p.stem for p in counter.files) == sorted(first.test.names)
    assert len(list(Path(cache).glob("*.pt"))) == 4
    assert_same(first, second)


def test_modified_source_content_is_never_read_stale(tiny_pets_copy: TinyPets, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    first = load(tiny_pets_copy.root, cache=True, cache_dir=cache)
    name = first.train.names[0]
    path = tiny_pets_copy.image_file(name)
    with Image.open(path) as im:
        size = im.size
    Image.new("RGB", size, (10, 200, 30)).save(path, format="JPEG", quality=95)
    image, _ = item(load(tiny_pets_copy.root, cache=True, cache_dir=cache), name)
    assert (image.int() - torch.tensor([10, 200, 30]).view(3, 1, 1)).abs().max() <= 4
    assert not torch.equal(image, item(first, name)[0])


# --- bad input --------------------------------------------------------------------------------------


def test_unreadable_image_is_a_user_error_naming_the_file(tiny_pets_copy: TinyPets) -> None:
    path = tiny_pets_copy.image_file(tiny_pets_copy.trainval[4])
    path.write_bytes(b"this is not an image\x00\x01\x02" * 10)
    with pytest.raises(UserError, match=re.escape(str(path))):
        load(tiny_pets_copy.root)


def test_missing_root_without_download_names_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as info:
        load(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "data.root" in message and "S18EXP_DATA" in message and "data.download=false" in message
    assert not missing.exists()


# --- batches ----------------------------------------------------------------------------------------


def numbered_split(n: int = 10) -> TensorSplit:
    """Item k has every pixel of its image equal to k and every pixel of its mask equal to k + 100."""
    ids = torch.arange(n, dtype=torch.uint8)
    return TensorSplit(
        ids.view(n, 1, 1, 1).expand(n, 3, 2, 2).clone(),
        (ids + 100).view(n, 1, 1).expand(n, 2, 2).clone(),
        [f"item{k}" for k in range(n)],
    )


def epoch_order(batches: Batches) -> list[int]:
    order = []
    for images, targets in batches:
        assert torch.equal(targets[:, 0, 0].long() - 100, images[:, 0, 0, 0].long())  # pairs stay together
        order += images[:, 0, 0, 0].tolist()
    return order


def epoch_orders(batches: Batches, epochs: int = 3) -> list[list[int]]:
    """The item order of several consecutive epochs, telling the iterator the epoch where it asks for it."""
    orders = []
    for epoch in range(epochs):
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(epoch)
        orders.append(epoch_order(batches))
    return orders


def test_batches_cover_every_item_once_per_epoch() -> None:
    batches = Batches(numbered_split(10), batch_size=4, shuffle=True, seed=0)
    assert len(batches) == 3
    assert [len(images) for images, _ in batches] == [4, 4, 2]
    for order in epoch_orders(batches):
        assert sorted(order) == list(range(10))


def test_batches_reshuffle_between_epochs() -> None:
    orders = epoch_orders(Batches(numbered_split(10), batch_size=4, shuffle=True, seed=0))
    assert len({tuple(o) for o in orders}) == 3


def test_batches_are_deterministic_for_a_seed() -> None:
    def epochs(seed: int) -> list[list[int]]:
        return epoch_orders(Batches(numbered_split(10), batch_size=3, shuffle=True, seed=seed))

    torch.manual_seed(123)
    a = epochs(0)
    torch.manual_seed(456)
    assert epochs(0) == a
    assert epochs(1) != a


def test_unshuffled_batches_keep_the_order() -> None:
    batches = Batches(numbered_split(10), batch_size=4)
    assert len(batches) == 3
    assert epoch_orders(batches, epochs=2) == [list(range(10))] * 2


def test_a_corrupt_cache_entry_is_built_again(tiny_pets: TinyPets, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load(tiny_pets.root, cache=True, cache_dir=str(cache))
    entries = sorted(cache.glob("*.pt"))
    damaged = next(p for p in entries if "-test-" in p.name)
    damaged.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_same(first, load(tiny_pets.root, cache=True, cache_dir=str(cache)))
    assert sorted(cache.glob("*.pt")) == entries
    rebuilt = torch.load(damaged, weights_only=True)
    assert torch.equal(rebuilt["images"], first.test.images)


def test_a_cache_file_name_stays_inside_the_cache_dir(tmp_path: Path) -> None:
    """The label part of a cache file's name comes from the description (a data set name from a config):
    path separators and leading dots in it cannot move the file out of the cache dir."""
    cache_dir = tmp_path / "a" / "b" / "cache"
    built = []
    description = {"dataset": "../../x", "split": "train", "image_size": 32}
    value = cached(cache_dir, description, lambda: built.append(1) or {"images": torch.arange(3)})
    (entry,) = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert entry.parent == cache_dir and entry.name.endswith(".pt")
    assert torch.equal(cached(cache_dir, description, lambda: {"images": torch.zeros(3)})["images"], value["images"])
    assert built == [1]
