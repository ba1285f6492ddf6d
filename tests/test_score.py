"""`python -m s18exp.score`: a checkpoint's test split scored again, as its run scored it or with other views."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyPets
from omegaconf import OmegaConf

from s18exp import score, test_items
from s18exp.data import Batches
from s18exp.data.pets import PetsData
from s18exp.runtime import Runtime
from s18exp.tasks.segmentation import SegmentationTask
from test_scoring import compose_config

CPU = Runtime(torch.device("cpu"), "fp32", channels_last=False)


def miou(matrix: np.ndarray) -> float:
    """The mean IoU of a (true, predicted) count matrix, classes absent from both left out."""
    hits = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - hits
    return float(np.mean(hits[union > 0] / union[union > 0]))


def write_checkpoint(path: Path, cfg) -> tuple[SegmentationTask, torch.nn.Module]:
    """A checkpoint of a UNet with weights far from their initial scale, so that its masks vary."""
    task = SegmentationTask(cfg)
    model = task.build_model().eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    torch.save({"config": OmegaConf.to_container(cfg, resolve=True), "model": model.state_dict()}, path)
    return task, model


def test_score_repeats_the_runs_test_scoring_and_takes_other_views(tiny_pets: TinyPets, tmp_path: Path) -> None:
    cfg = compose_config(f"data.root={tmp_path / 'moved'}", f"paths.cache_dir={tmp_path / 'cache'}", "trainer.precision=fp32")
    task, model = write_checkpoint(tmp_path / "best.pt", cfg)
    test = PetsData(str(tiny_pets.root), image_size=32, download=False, cache=False).test
    for options, scales in ([], (1.0,)), (["tta=none", "tta_scales=1,2"], (1.0, 2.0)):
        out = tmp_path / f"scores{len(scales)}.json"
        assert score.main([f"ckpt={tmp_path / 'best.pt'}", f"data_root={tiny_pets.root}", f"output={out}", *options]) == 0
        written = json.loads(out.read_text())
        task.tta, task.tta_scales = ("flip", scales) if not options else ("none", scales)
        expected = task.test(model, Batches(test, int(cfg.trainer.eval_batch_size)), CPU)
        assert written["test_images"] == len(tiny_pets.test)
        assert written["test_scoring"].startswith(f"original resolution, tta={task.tta}, scales {', '.join(f'{s:g}' for s in scales)}")
        for key, value in expected.scores.items():
            assert written[f"test/{key}"] == pytest.approx(value, abs=1e-6), key
        # the per-image counts beside the scores, named after them, in the format of a run's test_items.npz
        items = test_items.load(tmp_path / f"scores{len(scales)}.test_items.npz")
        np.testing.assert_array_equal(items["confusion"], expected.items["confusion"])
        assert list(items["names"]) == test.names
        assert written["test/miou"] == pytest.approx(miou(items["confusion"].sum(0)), abs=1e-12)
    assert not (tmp_path / test_items.TEST_ITEMS).exists()
    assert json.loads((tmp_path / "scores1.json").read_text())["test/miou"] != json.loads((tmp_path / "scores2.json").read_text())["test/miou"]


def test_score_refuses_missing_data_and_bad_views_in_one_line(tiny_pets: TinyPets, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_checkpoint(tmp_path / "best.pt", compose_config(f"data.root={tiny_pets.root}", f"paths.cache_dir={tmp_path / 'cache'}"))
    ckpt = f"ckpt={tmp_path / 'best.pt'}"
    assert score.main([ckpt, "tta_scales=0", f"output={tmp_path / 'x.json'}"]) == 2
    assert capsys.readouterr().err.strip() == "error: tta_scales='0' must list distinct positive resize factors; e.g. tta_scales=[0.75,1,1.25]"
    assert score.main([ckpt, f"data_root={tmp_path / 'nowhere'}", f"output={tmp_path / 'x.json'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(tmp_path / "nowhere") in error
    assert score.main([ckpt, f"output={tmp_path}"]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
