"""test_items.npz (s18exp/test_items.py): written atomically, read back as data, a damaged or foreign file
refused in one line without running anything."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from s18exp import test_items
from s18exp.errors import UserError


def test_arrays_come_back_as_written(tmp_path: Path) -> None:
    arrays = {
        "names": np.array(["Abyssinian_1", "beagle_12"]),
        "confusion": np.arange(18, dtype=np.int64).reshape(2, 3, 3),
        "follow": np.array([[True, False], [False, True]]),
        "readers": np.array(["judge", "reader_a"]),
    }
    path = tmp_path / test_items.TEST_ITEMS
    test_items.save(path, arrays)
    read = test_items.load(path)
    assert sorted(read) == sorted(arrays)
    for name, array in arrays.items():
        assert read[name].dtype == array.dtype and np.array_equal(read[name], array)
    assert [p.name for p in tmp_path.iterdir()] == [test_items.TEST_ITEMS]  # no temporary file left


def test_object_arrays_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / test_items.TEST_ITEMS
    with pytest.raises(ValueError, match="names are object arrays"):
        test_items.save(path, {"names": np.array(["a", None], dtype=object), "confusion": np.zeros((2, 2, 2), dtype=np.int64)})
    assert not path.exists()


def test_a_pickled_array_is_not_unpickled(tmp_path: Path) -> None:
    class Marker:
        def __reduce__(self):  # unpickling this would create the marker file
            return (Path.touch, (tmp_path / "unpickled",))

    path = tmp_path / "hostile.npz"
    np.savez(path, names=np.array([Marker()], dtype=object))
    with pytest.raises(UserError) as error:
        test_items.load(path)
    assert not (tmp_path / "unpickled").exists()
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04 truncated"])
def test_a_damaged_file_is_one_line_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / test_items.TEST_ITEMS
    path.write_bytes(content)
    with pytest.raises(UserError) as error:
        test_items.load(path)
    message = str(error.value)
    assert message.startswith(f"{path} is not a readable test-items file") and "\n" not in message


def test_a_file_that_would_unpack_to_more_than_a_test_items_file_holds_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / test_items.TEST_ITEMS
    test_items.save(path, {"follow": np.zeros(4096, dtype=bool)})
    with zipfile.ZipFile(path) as archive:
        size = sum(info.file_size for info in archive.infolist())
    monkeypatch.setattr(test_items, "MAX_BYTES", size - 1)
    with pytest.raises(UserError, match="more than a test-items file holds"):
        test_items.load(path)
