"""Per-item test outcomes of a run, `<run dir>/test_items.npz`: one row per test item, so that a score of the
summary can be recomputed, split or compared item by item (paired tests between runs).

Arrays only (no pickled objects): `save` writes them atomically, `load` reads them with allow_pickle=False.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s18exp.atomic_files import atomic_write

TEST_ITEMS = "test_items.npz"


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """`arrays` into the npz file `path`, replacing it atomically."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz file that `save` wrote; never unpickles anything."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}
