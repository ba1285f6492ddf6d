"""Per-item test outcomes: `test_items.npz`, beside a run's summary.json (and what `score` and `predict` score).

One file of named numpy arrays whose first axis is the test item, plus small arrays that name things
(`names`, the items; `class_names`, `readers`, the columns of another array). What each task stores, and how
the report recomputes a summary score from it, is declared in the task's TaskSpec (`item_metrics`, see
s18exp/report/spec.py): the UNet stores `names` (N,), `confusion` (N, C, C) int64 counts of (true class,
predicted class) per image, summing to the split's confusion matrix, and `class_names` (C,).

The file is plain `np.savez` (no pickled objects), written atomically, and read with `allow_pickle=False`: a
file from elsewhere is data, and a damaged or foreign one is a one-line UserError.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from s18exp.atomic_files import atomic_write
from s18exp.errors import UserError

TEST_ITEMS = "test_items.npz"
# A test_items.npz holds counts or flags per test item: kilobytes to a few megabytes. A file that unpacks to
# more is not one, and is refused before numpy inflates it.
MAX_BYTES = 1 << 30


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` atomically; a ValueError, before writing, for an array numpy would pickle."""
    plain = {name: np.asarray(array) for name, array in arrays.items()}
    pickled = [name for name, array in plain.items() if array.dtype.hasobject]
    if pickled:
        raise ValueError(f"test items {', '.join(pickled)} are object arrays; store numbers, booleans or strings")
    atomic_write(path, lambda f: np.savez(f, **plain))


def load(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a test_items.npz; a UserError naming the file when it is missing, damaged or not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            size = sum(info.file_size for info in archive.infolist())
        if size > MAX_BYTES:
            raise UserError(f"{path} unpacks to {size:,} bytes, more than a test-items file holds; remove it or score the run again")
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except UserError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(
            f"{path} is not a readable test-items file ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "remove it or score the run again"
        ) from exc
