"""scripts/resolution_ceiling.py: an oracle's scores at a training resolution, against hand-counted cases."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TinyPets

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "resolution_ceiling.py"


def load_script():
    spec = importlib.util.spec_from_file_location("resolution_ceiling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLASS_NAMES = ["pet", "background", "border"]


def pair(trimap: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class indices at size x size, class indices at the original size) of a trimap coded 1, 2, 3, the
    small one resized NEAREST, as the data pipeline does."""
    small = np.asarray(Image.fromarray(trimap).resize((size, size), Image.NEAREST))
    return torch.from_numpy(small - 1), torch.from_numpy(trimap - 1)


def test_at_the_masks_own_size_the_ceiling_is_perfect() -> None:
    rng = np.random.default_rng(0)
    trimaps = [rng.integers(1, 4, (6, 6), dtype=np.uint8) for _ in range(3)]
    scores = load_script().resolution_ceiling([pair(t, 6) for t in trimaps], CLASS_NAMES)
    assert scores["miou"] == scores["pixel_acc"] == 1.0


def test_a_thin_border_vanishes_when_the_mask_shrinks() -> None:
    # 8x8: background (2), a one-pixel border column (3) at x = 3, a pet block (1) in the top-right quarter.
    # At 2x2, NEAREST samples one pixel per 4x4 block, never column 3: the border is gone, the pet block stays.
    # Upsampled back bilinearly, the pet quarter loses its inner corner (y 3, x 4): the pet logit's weight there
    # is 0.625 x 0.625 < 0.5, so background wins; every other pixel of the quarter stays pet.
    trimap = np.full((8, 8), 2, dtype=np.uint8)
    trimap[:, 3] = 3
    trimap[:4, 4:] = 1
    scores = load_script().resolution_ceiling([pair(trimap, 2)], CLASS_NAMES)
    assert scores["iou_pet"] == pytest.approx(15 / 16)
    assert scores["iou_border"] == pytest.approx(0.0)
    assert scores["iou_background"] == pytest.approx(40 / 49)  # 40 true background pixels of the 49 predicted
    assert scores["miou"] == pytest.approx((15 / 16 + 40 / 49 + 0) / 3)
    assert scores["pixel_acc"] == pytest.approx(55 / 64)


def test_the_script_reads_the_pets_test_split(tiny_pets: TinyPets) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), f"--data-root={tiny_pets.root}", "--sizes=16,32"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" px")[0] for line in lines] == ["16", "32"]
    assert all(f"({len(tiny_pets.test)} test trimaps)" in line and "iou_border" in line for line in lines)
