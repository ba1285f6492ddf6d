"""Atomic file writes: the old file or the new one, never half of one, and no temporary file left behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s18exp.atomic_files import (
    FILE_MODE, atomic_link, atomic_save_image, atomic_torch_save, atomic_write, atomic_write_json, atomic_write_text,
    remove_stale_temporaries,
)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    atomic_write_json({"status": "complete"}, path)

    def half_then_fail(f) -> None:
        f.write(b'{"status": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert json.loads(path.read_text()) == {"status": "complete"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_every_writer_leaves_its_format_with_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    atomic_write_json({"b": 1, "a": 2}, tmp_path / "sorted.json")
    atomic_write_json({"b": 1, "a": 2}, tmp_path / "ordered.json", sort_keys=False)
    atomic_write_text("naïve\n", tmp_path / "notes.txt")
    atomic_save_image(Image.new("RGB", (3, 2), (10, 20, 30)), tmp_path / "picture.png")
    atomic_torch_save({"weight": torch.arange(3)}, tmp_path / "last.pt")
    atomic_write(tmp_path / "arrays.npz", lambda f: np.savez(f, x=np.arange(4)))
    atomic_link(tmp_path / "last.pt", tmp_path / "best.pt")

    assert (tmp_path / "sorted.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert list(json.loads((tmp_path / "ordered.json").read_text())) == ["b", "a"]
    assert (tmp_path / "notes.txt").read_bytes() == "naïve\n".encode("utf-8")
    with Image.open(tmp_path / "picture.png") as picture:
        assert picture.format == "PNG" and picture.getpixel((2, 1)) == (10, 20, 30)
    assert torch.equal(torch.load(tmp_path / "best.pt", weights_only=True)["weight"], torch.arange(3))
    assert np.load(tmp_path / "arrays.npz")["x"].tolist() == [0, 1, 2, 3]
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == FILE_MODE, path.name
    assert not list(tmp_path.glob(".*.tmp"))


def test_stale_temporaries_are_removed_and_real_files_kept(tmp_path: Path) -> None:
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "last.pt").write_bytes(b"a whole checkpoint")
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]

