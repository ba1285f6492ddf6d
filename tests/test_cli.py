"""End to end through `python -m s18exp` in a subprocess, from a working directory outside the repository.

W&B 0.31 writes an offline run as `<run dir>/wandb/offline-run-*/run-<id>.wandb`: a LevelDB-style log of
`wandb_internal_pb2.Record` protobufs (its `files/` folder holds no config.yaml until a sync). The run's
name, group and config are in the `run` record, each `wandb.log` call in a `history` record.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TinyPets, cli_env, smoke_overrides_for
from wandb_offline import OfflineRun, offline_runs, read_run
from omegaconf import OmegaConf
from PIL import Image

from s18exp import score
from s18exp.blocks import MaxPoolDownsample, TransposeUpsample
from s18exp.models.unet import UNet

pytestmark = pytest.mark.slow

EPOCHS = 2
METRIC_KEYS = {"epoch", "train/loss", "val/loss", "val/miou", "val/dice", "val/pixel_acc", "lr", "epoch_seconds"}
SUMMARY_KEYS = {
    "test/miou", "test/dice", "test/pixel_acc", "test/iou_pet", "test/iou_background", "test/iou_border",
    "best_epoch", "epochs_completed", "train_seconds", "params", "encoder", "decoder", "loss", "seed", "test_scoring",
}
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "epoch", "config"}
EXPERIMENTS = ["mp_tr_bce", "mp_tr_dice", "strconv_tr_bce", "strconv_ups_dice"]


# --- helpers ----------------------------------------------------------------------------------------


def run_cli(args: list[str], work: Path) -> subprocess.CompletedProcess:
    """`python -m s18exp ARGS` with `work` as working directory and W&B kept inside it."""
    return subprocess.run(
        [sys.executable, "-m", "s18exp", *args],
        cwd=work, env=cli_env(work / "wandb-home"), capture_output=True, text=True, timeout=300,
    )


def with_override(args: list[str], key: str, value: Any) -> list[str]:
    """`args` with `key=value` in place of any earlier value of `key`."""
    return [a for a in args if not a.startswith(f"{key}=")] + [f"{key}={value}"]


def offline_run(run_dir: Path) -> OfflineRun:
    (folder,) = offline_runs(run_dir)
    return read_run(folder)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tiny_unet_params() -> int:
    """Parameters of the UNet that the smoke overrides describe, built here without the config."""
    model = UNet(num_classes=3, downsample=MaxPoolDownsample, upsample=TransposeUpsample, in_channels=3, width=4, depth=2, block="double")
    return sum(p.numel() for p in model.parameters())


# --- one complete run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tiny_pets: TinyPets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("cli-run")
    args = with_override(smoke_overrides_for(tiny_pets.root, work), "trainer.max_epochs", EPOCHS)
    result = run_cli([*args, f"hydra.run.dir={work / 'run'}"], work)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    assert not (work / "outputs").exists()  # hydra.run.dir is honoured, nothing lands in the cwd
    return work / "run"


def test_run_dir_holds_every_file(finished_run: Path) -> None:
    for relative in (
        ".hydra/config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt",
        "predictions.png", "s18exp.log", "test_items.npz",
    ):
        assert (finished_run / relative).is_file(), relative
    assert (finished_run / "wandb").is_dir()
    assert not list(finished_run.rglob("*.tmp")), "an atomic write left its temporary file"


def test_hydra_config_records_the_overrides(finished_run: Path) -> None:
    cfg = OmegaConf.load(finished_run / ".hydra" / "config.yaml")
    assert (cfg.data.image_size, cfg.model.width, cfg.model.depth, cfg.trainer.max_epochs) == (32, 4, 2, EPOCHS)
    assert cfg.wandb.mode == "offline" and cfg.data.download is False


def test_metrics_jsonl_has_one_line_per_epoch(finished_run: Path) -> None:
    lines = read_jsonl(finished_run / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == list(range(1, EPOCHS + 1))
    for line in lines:
        assert METRIC_KEYS <= line.keys()
        assert all(math.isfinite(line[k]) for k in ("train/loss", "val/loss", "lr", "epoch_seconds"))
        for key in ("val/miou", "val/dice", "val/pixel_acc"):
            assert 0.0 <= line[key] <= 1.0, (key, line[key])
        assert 0 < line["lr"] <= 1e-3 and line["epoch_seconds"] > 0


def test_summary_json(finished_run: Path) -> None:
    summary = json.loads((finished_run / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert (summary["encoder"], summary["decoder"], summary["loss"], summary["seed"]) == ("maxpool", "transpose", "dice_ce", 0)
    assert summary["params"] == tiny_unet_params()
    assert summary["test_scoring"].startswith("original resolution, tta=flip")
    assert summary["epochs_completed"] == EPOCHS
    assert (summary["test_weights"], summary["test_epoch"]) == ("best", summary["best_epoch"])
    assert 0.0 <= summary["test/pixel_acc"] <= 1.0
    ious = [summary[f"test/iou_{c}"] for c in ("pet", "background", "border")]
    assert summary["test/miou"] == pytest.approx(sum(v for v in ious if not math.isnan(v)) / sum(not math.isnan(v) for v in ious))
    lines = read_jsonl(finished_run / "metrics.jsonl")
    best = max(lines, key=lambda line: line["val/miou"])  # max() keeps the first of equals, as fit does
    assert summary["best_epoch"] == best["epoch"]
    assert summary["train_seconds"] == pytest.approx(sum(line["epoch_seconds"] for line in lines), rel=1e-6)


def test_checkpoints_hold_the_whole_state(finished_run: Path) -> None:
    summary = json.loads((finished_run / "summary.json").read_text())
    last = torch.load(finished_run / "checkpoints" / "last.pt", weights_only=False)
    best = torch.load(finished_run / "checkpoints" / "best.pt", weights_only=False)
    for checkpoint in (last, best):
        assert CHECKPOINT_KEYS <= checkpoint.keys()
        assert checkpoint["config"]["seed"] == 0 and checkpoint["config"]["data"]["image_size"] == 32
        assert checkpoint["scheduler"] is not None and checkpoint["optimizer"]["state"]
        model = UNet(num_classes=3, downsample=MaxPoolDownsample, upsample=TransposeUpsample, in_channels=3, width=4, depth=2, block="double")
        model.load_state_dict(checkpoint["model"])  # strict: same architecture, same keys
    assert last["epoch"] == EPOCHS
    assert best["epoch"] == summary["best_epoch"]


@pytest.mark.parametrize("weights", ["best", "last"])
def test_eval_weights_picks_the_checkpoint_the_test_split_scores(tiny_pets: TinyPets, tmp_path: Path, weights: str) -> None:
    args = with_override(smoke_overrides_for(tiny_pets.root, tmp_path), "trainer.max_epochs", 4)
    run_dir = tmp_path / "run"
    # a constant, too-high learning rate: validation peaks early, so best.pt and last.pt are different epochs
    unstable = ["trainer.precision=fp32", "trainer.scheduler=null", "trainer.lr=0.05"]
    result = run_cli([*args, *unstable, f"eval.weights={weights}", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_epoch"] < 4, "the setting must end on an epoch that is not the best, or the test proves nothing"
    assert (summary["test_weights"], summary["test_epoch"]) == (weights, {"best": summary["best_epoch"], "last": 4}[weights])
    # the run dir, given as ckpt=, means that checkpoint, and scoring it again gives the summary's scores
    out = tmp_path / "rescored.json"
    assert score.main([f"ckpt={run_dir}", f"output={out}", f"data_root={tiny_pets.root}"]) == 0
    rescored = json.loads(out.read_text())
    assert rescored["checkpoint"] == str(run_dir / "checkpoints" / f"{weights}.pt")
    for key in ("miou", "iou_pet", "iou_background", "iou_border", "pixel_acc"):
        assert rescored[f"test/{key}"] == pytest.approx(summary[f"test/{key}"], abs=1e-6), key


def test_predictions_png_shows_image_truth_and_prediction(finished_run: Path) -> None:
    with Image.open(finished_run / "predictions.png") as im:
        im.verify()
    with Image.open(finished_run / "predictions.png") as im:
        assert im.format == "PNG"
        width, height = im.size
    assert width >= 3 * 32 and height >= 8 * 32  # three columns, the eight tiny test images


def test_log_file_gets_the_console_lines(finished_run: Path) -> None:
    log = (finished_run / "s18exp.log").read_text()
    assert f"epoch {EPOCHS}/{EPOCHS}" in log and "resolved config" in log


def test_offline_wandb_run_records_config_and_history(finished_run: Path) -> None:
    run = offline_run(finished_run)
    summary = json.loads((finished_run / "summary.json").read_text())
    assert run.name == "mp_tr_dicece-s0"
    assert run.group == "mp_tr_dicece-s0"  # a single run is its own group
    assert run.project == "s18exp"
    assert run.config["seed"] == 0 and run.config["run_name"] == "mp_tr_dicece-s0"
    assert run.config["params"] == summary["params"]
    epochs = [row for row in run.history if "epoch" in row]
    lines = read_jsonl(finished_run / "metrics.jsonl")
    assert [row["epoch"] for row in epochs] == [line["epoch"] for line in lines]
    assert [row["train/loss"] for row in epochs] == pytest.approx([line["train/loss"] for line in lines])
    assert [row["val/miou"] for row in epochs] == pytest.approx([line["val/miou"] for line in lines])
    assert run.summary["test/miou"] == pytest.approx(summary["test/miou"])
    assert run.exit_code == 0


# --- a multirun of the four experiments -------------------------------------------------------------


def test_multirun_of_the_four_experiments(tiny_pets: TinyPets, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = smoke_overrides_for(tiny_pets.root, tmp_path)
    result = run_cli(["--multirun", f"experiment={','.join(EXPERIMENTS)}", f"hydra.sweep.dir={sweep}", *args], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = sorted(p.parent for p in sweep.glob("*/.hydra"))  # the sweep dir may also hold a report
    assert len(jobs) == 4 and len({p.name for p in jobs}) == 4
    combos = [json.loads((job / "summary.json").read_text())["combo"] for job in jobs]
    assert sorted(combos) == sorted(EXPERIMENTS)
    runs = [offline_run(job) for job in jobs]
    names = [run.name for run in runs]
    assert sorted(names) == sorted(f"{e}-s0" for e in EXPERIMENTS)
    assert {run.group for run in runs} == {sweep.name}
    assert len({run.run_id for run in runs}) == 4
    for job, combo in zip(jobs, combos):
        assert combo in job.name  # the job dir carries the run name
    # the console: no config tree (each job's log file holds its config), one header line and one line of
    # test scores per job
    lines = result.stdout.splitlines()
    assert not any(line.strip() == "config" for line in lines)
    headers = [line for line in lines if line.startswith("job ")]
    assert len(headers) == 4
    for number, (header, experiment) in enumerate(zip(headers, EXPERIMENTS)):
        assert header.startswith(f"job {number} [experiment={experiment} ")
    assert sum(line.startswith("test metrics of ") and "test/miou" in line for line in lines) == 4


# --- bad input --------------------------------------------------------------------------------------


def assert_nothing_trained(run_dir: Path) -> None:
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "summary.json").exists()


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2 and exactly one `error: ...` line on stderr that holds every fragment."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0]


def bad_run(tiny: TinyPets, work: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    args = smoke_overrides_for(tiny.root, work)
    for override in overrides:
        key, value = override.split("=", 1)
        args = with_override(args, key, value)
    run_dir = work / "run"
    result = run_cli([*args, f"hydra.run.dir={run_dir}"], work)
    assert "Traceback" not in result.stderr + result.stdout
    return result, run_dir


def test_unknown_group_option_lists_the_options(tiny_pets: TinyPets, tmp_path: Path) -> None:
    result, run_dir = bad_run(tiny_pets, tmp_path, "encoder=avgpool")
    assert_one_line_error(result, "encoder=avgpool is not an option of encoder", "the options are maxpool, strided")
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("override", "fragment"),
    [("data.image_size=30", "data.image_size=30"), ("trainer.max_epochs=0", "trainer.max_epochs=0")],
)
def test_bad_value_is_one_line(tiny_pets: TinyPets, tmp_path: Path, override: str, fragment: str) -> None:
    result, run_dir = bad_run(tiny_pets, tmp_path, override)
    assert_one_line_error(result, fragment)
    assert not run_dir.exists()


def test_missing_data_root_names_the_path(tiny_pets: TinyPets, tmp_path: Path) -> None:
    missing = tmp_path / "no-data-here"
    result, run_dir = bad_run(tiny_pets, tmp_path, f"data.root={missing}")
    assert_one_line_error(result, str(missing), "data.root", "S18EXP_DATA")
    assert_nothing_trained(run_dir)


def test_unreadable_image_names_the_file(tiny_pets_copy: TinyPets, tmp_path: Path) -> None:
    broken = tiny_pets_copy.image_file(tiny_pets_copy.test[2])
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    result, run_dir = bad_run(tiny_pets_copy, tmp_path)
    assert_one_line_error(result, str(broken))
    assert_nothing_trained(run_dir)
