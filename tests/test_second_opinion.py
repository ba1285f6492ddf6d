"""scripts/second_opinion.py without training: its npz checks, its cache key and its error for missing data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from s18exp.errors import UserError

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("second_opinion", REPO / "scripts" / "second_opinion.py")
second_opinion = importlib.util.module_from_spec(spec)
spec.loader.exec_module(second_opinion)


def write_npz(path: Path, **changes: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "inputs": rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8),
        "true_labels": np.arange(5, dtype=np.int64),
        "given_labels": np.arange(1, 6, dtype=np.int64),
        "outputs": rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8),
        **changes,
    }
    np.savez(path, **arrays)
    return path


def test_digits_read_the_same_at_any_size_the_project_padded_them_to(tmp_path: Path) -> None:
    digits = np.random.default_rng(1).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    padded = np.pad(digits, ((0, 0), (18, 18), (18, 18), (0, 0)))  # as data.image_size=64 leaves them
    read = [
        second_opinion.read_npz(write_npz(tmp_path / f"{i}.npz", inputs=images, outputs=images), channels=1, digits=True)
        for i, images in enumerate((digits, padded))
    ]
    assert read[0]["inputs"].shape == (5, 1, 32, 32) and read[0]["inputs"][:, :, :2].sum() == 0
    assert read[0]["inputs"].equal(read[1]["inputs"])
    assert read[0]["given_labels"].tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "changes, fragment",
    [({"outputs": np.zeros((4, 28, 28, 1), np.uint8)}, "outputs"), ({"true_labels": np.full(5, 10)}, "true_labels")],
)
def test_read_npz_names_what_is_wrong(tmp_path: Path, changes: dict, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        second_opinion.read_npz(write_npz(tmp_path / "bad.npz", **changes), channels=1, digits=True)


def test_cache_key_tells_settings_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stems = {second_opinion.cache_stem(tmp_path, "mnist", "idx", 6, bf16) for bf16 in (True, False)}
    assert len(stems) == 2  # the precision is not in the readable prefix, only in the hash
    before = second_opinion.cache_stem(tmp_path, "mnist", "idx", 6, True)
    monkeypatch.setitem(second_opinion.SETTINGS, "version", second_opinion.SETTINGS["version"] + 1)
    assert second_opinion.cache_stem(tmp_path, "mnist", "idx", 6, True) != before


def test_missing_root_is_one_line_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    argv = ["mnist", str(write_npz(tmp_path / "a.npz")), "--root", str(missing), "--cache", str(tmp_path / "cache")]
    assert second_opinion.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and str(missing) in line and "--root" in line
    assert not (tmp_path / "cache").exists()
