"""A real tiny sweep, end to end: `python -m s18exp --multirun trainer.lr=0.000001,0.003 seed=0,1,2` on the tiny
pets folder (6 epochs of 32-px images: about 15 s for the six runs), then its report: per-item test outcomes
that give each run's test mIoU exactly, two rows labelled by the learning rate, with intervals and a verdict,
and report.json holding them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TinyPets, cli_env, smoke_overrides_for
from PIL import Image

from s18exp import test_items
from s18exp.report.__main__ import main

pytestmark = pytest.mark.slow
LABELS = ["trainer.lr=1e-06", "trainer.lr=0.003"]


@pytest.fixture(scope="module")
def sweep(tiny_pets: TinyPets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("lr-sweep")
    sweep = work / "sweep"
    args = [
        "--multirun", "trainer.lr=0.000001,0.003", "seed=0,1,2", *smoke_overrides_for(tiny_pets.root, work),
        "trainer.max_epochs=6", f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "s18exp", *args], cwd=work, env=cli_env(work / "wandb-home"), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep


def run_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/summary.json"))


def miou(matrix: np.ndarray) -> float:
    hits = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - hits
    return float(np.mean(hits[union > 0] / union[union > 0]))


def test_each_runs_test_items_give_its_test_miou_exactly(sweep: Path, tiny_pets: TinyPets) -> None:
    pixels = {name: np.asarray(Image.open(tiny_pets.trimap_file(name))).size for name in tiny_pets.test}
    assert len(run_dirs(sweep)) == 6
    for run in run_dirs(sweep):
        summary = json.loads((run / "summary.json").read_text())
        items = test_items.load(run / test_items.TEST_ITEMS)
        assert sorted(items["names"]) == sorted(tiny_pets.test)
        assert items["confusion"].dtype == np.int64 and items["confusion"].shape == (len(tiny_pets.test), 3, 3)
        # every pixel of every test image at its original size counted once, in its own image's row
        assert [int(c.sum()) for c in items["confusion"]] == [pixels[name] for name in items["names"]]
        assert miou(items["confusion"].sum(0)) == pytest.approx(summary["test/miou"], abs=1e-12)
        assert list(items["class_names"]) == ["pet", "background", "border"]


def test_the_report_has_a_row_per_learning_rate_with_intervals_and_a_verdict(sweep: Path) -> None:
    """The multirun wrote its report itself. lr=1e-6 barely moves the weights in 30 steps; 0.003 trains."""
    report = json.loads((sweep / "report.json").read_text())
    (section,) = report["sections"]
    assert [row["label"] for row in section["rows"]] == LABELS
    assert section["varying"] == ["trainer.lr"] and "lr" not in section["settings"]
    for row, lr in zip(section["rows"], ("1e-06", "0.003")):
        metric = row["metrics"]["test/miou"]
        assert row["n"] == 3 and row["settings"] == {"trainer.lr": lr}
        values = [json.loads((sweep / run / "summary.json").read_text())["test/miou"] for run in row["runs"]]
        assert metric["mean"] == pytest.approx(np.mean(values)) and metric["std"] == pytest.approx(np.std(values, ddof=1))
        assert metric["ci"][0] < metric["mean"] < metric["ci"][1] and metric["method"] == "seeds and test items"
    (comparison,) = section["comparisons"]
    assert (comparison["a"], comparison["b"], comparison["metric"]) == (*LABELS, "test/miou")
    assert comparison["verdict"] == "B better" and comparison["ci"][1] < 0 and comparison["p_better"] < 0.025
    assert comparison["diff"] == pytest.approx(section["rows"][0]["metrics"]["test/miou"]["mean"] - section["rows"][1]["metrics"]["test/miou"]["mean"])
    md = (sweep / "report.md").read_text()
    assert "| trainer.lr=1e-06 | trainer.lr=0.003 |" in md and "| B better |" in md
    assert "seeds and 8 test items, paired" in md
    assert (sweep / "report-unet-forest.png").is_file()


def test_the_same_report_twice_gives_the_same_numbers(sweep: Path, tmp_path: Path) -> None:
    assert main([str(sweep), "--out", str(tmp_path / "one")]) == 0
    assert main([str(sweep), "--out", str(tmp_path / "two")]) == 0
    one, two = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    one.pop("generated"), two.pop("generated")
    assert one["sections"][0]["comparisons"] and one == two


def test_a_baseline_makes_it_b_of_every_comparison_and_an_unknown_one_is_refused(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep), "--out", str(tmp_path / "base"), "--baseline", "trainer.lr=0.003"]) == 0
    (section,) = json.loads((tmp_path / "base" / "report.json").read_text())["sections"]
    assert [(c["a"], c["b"], c["verdict"]) for c in section["comparisons"]] == [("trainer.lr=1e-06", "trainer.lr=0.003", "B better")]
    assert section["baseline"] == "trainer.lr=0.003"
    capsys.readouterr()
    assert main([str(sweep), "--out", str(tmp_path / "none"), "--baseline", "trainer.lr=0.1"]) == 2
    out = capsys.readouterr().out.strip()
    assert out == "error: --baseline trainer.lr=0.1 names no row; the rows are: trainer.lr=1e-06, trainer.lr=0.003"
    assert not (tmp_path / "none").exists()
    with pytest.raises(SystemExit):
        main([str(sweep), "--min-effect", "0"])


def test_runs_without_usable_test_items_are_compared_from_their_seeds_and_the_report_says_why(sweep: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    first, second, *_ = run_dirs(copy)
    (first / test_items.TEST_ITEMS).unlink()  # an older run
    items = test_items.load(second / test_items.TEST_ITEMS)
    items["confusion"][0, 0, 0] += 1000  # a file that does not give the run's own score
    test_items.save(second / test_items.TEST_ITEMS, items)
    assert main([str(copy)]) == 0
    (section,) = json.loads((copy / "report.json").read_text())["sections"]
    (comparison,) = section["comparisons"]
    assert comparison["method"] == "seeds only" and section["rows"][0]["metrics"]["test/miou"]["method"] == "seeds only"
    assert section["rows"][1]["metrics"]["test/miou"]["method"] == "seeds and test items"
    notes = " ".join(section["notes"])
    assert "no test_items.npz" in notes and "test_items.npz gives test/miou" in notes
    assert "mp_tr_dicece-s0" in notes and "mp_tr_dicece-s1" in notes
