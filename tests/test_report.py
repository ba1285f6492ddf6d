"""`python -m s18exp.report`: run dirs written by the test with known numbers -> tables, figures, HTML, W&B.

The expected means and stds are computed here independently (numpy, ddof=1) from the numbers written.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
import socket
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from conftest import TinyPets, cli_env, smoke_overrides_for
from PIL import Image
from rich.console import Console

from s18exp.paths import CONFIG_DIR
from s18exp.pictures import captioned_grid
from s18exp.report import figures as figs
from s18exp.report import wandb_report as wb
from s18exp.report.__main__ import main
from s18exp.report.build import make_report
from s18exp.report.callback import ReportCallback
from s18exp.report.collect import collect
from s18exp.report.table import build_sections
from s18exp.tasks.segmentation import SegmentationTask
from s18exp.tasks.vae import VAETask

SWEEP = "sweep-x"
CLASSES = ("pet", "background", "border")
IDENTITY = {
    "mp_tr_bce": ("maxpool", "transpose", "bce", "mp", "tr"),
    "mp_tr_dice": ("maxpool", "transpose", "dice", "mp", "tr"),
    "strconv_ups_dice": ("strided", "upsample", "dice", "strconv", "ups"),
}
# combo -> per seed: test mIoU, IoU (pet, background, border), train seconds
NUMBERS = {
    "mp_tr_bce": [(0.60, (0.70, 0.80, 0.30), 100.0), (0.70, (0.75, 0.85, 0.50), 110.0), (0.80, (0.80, 0.90, 0.70), 120.0)],
    "mp_tr_dice": [(0.50, (0.60, 0.70, 0.20), 90.0), (0.54, (0.62, 0.74, 0.26), 80.0)],
    "strconv_ups_dice": [(0.65, (0.70, 0.85, 0.40), 95.0)],
}
TILE = 8


def tile(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (TILE, TILE), colour)


def predictions_png(prediction_colour: tuple[int, int, int]) -> Image.Image:
    """A grid in the real layout of predictions.png: image | ground truth | prediction, 2 rows."""
    rows = [[tile((200, 0, 0)), tile((0, 200, 0)), tile(prediction_colour)] for _ in range(2)]
    return captioned_grid(rows, ["image", "ground truth", "prediction"], [["a", "", ""], ["b", "", ""]])


def write_config(run: Path, combo: str, seed: int, sweep_dir: Path, task: str = "unet", **extra: Any) -> None:
    enc, dec, loss, etag, dtag = IDENTITY.get(combo, ("maxpool", "transpose", "bce", "mp", "tr"))
    hydra_dir = run / ".hydra"
    hydra_dir.mkdir(parents=True)
    config = {
        "seed": seed,
        "combo": "${encoder.tag}_${decoder.tag}_${loss.tag}" if task == "unet" else "vae_${data.name}_${model.condition}_${encoder.tag}_${decoder.tag}",
        "run_name": "${combo}-s${seed}",
        "encoder": {"name": enc, "tag": etag},
        "decoder": {"name": dec, "tag": dtag},
        "loss": {"name": loss, "tag": loss},
        "data": {"name": extra.get("dataset", "pets"), "image_size": 32},
        "model": {"condition": extra.get("condition", None)},
        "trainer": {"max_epochs": 3, "batch_size": 4},
        "wandb": {"mode": "offline", "project": "proj-x", "entity": None, "group": None},
    }
    from omegaconf import OmegaConf

    OmegaConf.save(OmegaConf.create(config), hydra_dir / "config.yaml")
    hydra = {
        "hydra": {
            "mode": "MULTIRUN",
            "sweep": {"dir": str(sweep_dir), "subdir": "${hydra.job.num}_${run_name}"},
            "runtime": {"choices": {"task": task}},
        }
    }
    OmegaConf.save(OmegaConf.create(hydra), hydra_dir / "hydra.yaml")


def write_wandb(run: Path, run_id: str) -> Path:
    folder = run / "wandb" / f"offline-run-20260101_000000-{run_id}"
    (folder / "files").mkdir(parents=True)
    (folder / f"run-{run_id}.wandb").write_bytes(b":W&B")
    return folder


@lru_cache
def report_block(task: str, *overrides: str) -> str:
    """The `report` block that a complete run of `task` writes into summary.json, as JSON text."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"task={task}", *overrides])
    task_class = SegmentationTask if task == "unet" else VAETask
    return json.dumps(task_class(cfg).report_spec().as_dict())


def unet_block(*overrides: str) -> dict[str, Any]:
    return json.loads(report_block("unet", *overrides))


def vae_block() -> dict[str, Any]:
    return json.loads(report_block("vae"))


def unet_summary(combo: str, seed: int, miou: float, ious: tuple, seconds: float) -> dict[str, Any]:
    enc, dec, loss, *_ = IDENTITY[combo]
    return {
        "test/miou": miou, "test/dice": miou + 0.1, "test/pixel_acc": miou + 0.2, "test/loss": 0.3,
        **{f"test/iou_{c}": v for c, v in zip(CLASSES, ious)},
        "best_epoch": 3, "epochs_completed": 3, "train_seconds": seconds, "params": 1234,
        "task": "unet", "encoder": enc, "decoder": dec, "loss": loss, "seed": seed, "combo": combo,
        "run_name": f"{combo}-s{seed}", "status": "complete", "report": unet_block(),
    }


def metrics_lines(seed: int) -> str:
    rows = [
        {"epoch": e, "train/loss": 1.0 / e + seed * 0.01, "val/loss": 1.1 / e, "val/miou": 0.2 * e + seed * 0.01,
         "val/dice": 0.3, "val/pixel_acc": 0.5, "lr": 1e-3, "epoch_seconds": 1.0}
        for e in (1, 2, 3)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


def make_sweep(root: Path) -> Path:
    """Six complete UNet runs over three combos (3 + 2 + 1 seeds) and four broken ones."""
    sweep = root / SWEEP
    job = 0
    colours = {"mp_tr_bce": (0, 0, 250), "mp_tr_dice": (250, 250, 0), "strconv_ups_dice": (0, 250, 250)}
    for combo, seeds in NUMBERS.items():
        for seed, (miou, ious, seconds) in enumerate(seeds):
            run = sweep / f"{job}_{combo}-s{seed}"
            write_config(run, combo, seed, sweep)
            (run / "summary.json").write_text(json.dumps(unet_summary(combo, seed, miou, ious, seconds)))
            (run / "metrics.jsonl").write_text(metrics_lines(seed))
            predictions_png(colours[combo]).save(run / "predictions.png")
            write_wandb(run, f"id{job:04d}")
            job += 1
    # no summary.json: crashed after 2 of 3 epochs
    crashed = sweep / f"{job}_mp_tr_bce-s7"
    write_config(crashed, "mp_tr_bce", 7, sweep)
    (crashed / "metrics.jsonl").write_text("".join(metrics_lines(7).splitlines(keepends=True)[:2]))
    write_wandb(crashed, "crash001")
    # corrupt summary.json
    corrupt = sweep / f"{job + 1}_mp_tr_dice-s8"
    write_config(corrupt, "mp_tr_dice", 8, sweep)
    (corrupt / "summary.json").write_text('{"test/miou": 0.9, ')
    # a run that failed and said so
    failed = sweep / f"{job + 2}_strconv_ups_dice-s9"
    write_config(failed, "strconv_ups_dice", 9, sweep)
    (failed / "summary.json").write_text(json.dumps({"status": "failed", "reason": "loss is NaN", "epochs_completed": 1}))
    # a summary that is a list, not an object
    odd = sweep / f"{job + 3}_mp_tr_bce-s6"
    write_config(odd, "mp_tr_bce", 6, sweep)
    (odd / "summary.json").write_text("[1, 2]")
    return sweep


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return make_sweep(tmp_path)


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No W&B login anywhere: no API key, a HOME without ~/.netrc."""
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_ENTITY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))


def report(sweep: Path, **options: Any) -> tuple[int, str]:
    """make_report with a recording console; returns the exit code and what it printed."""
    console = Console(record=True, width=250, soft_wrap=True)
    code = make_report(sweep, console=console, **options)
    return code, console.export_text()


# --- the table ---------------------------------------------------------------------------------------


def test_means_stds_and_n_match_an_independent_calculation(sweep: Path) -> None:
    (section,) = build_sections(collect(sweep))
    assert section.task == "unet"
    assert [row.label for row in section.rows] == list(NUMBERS)
    for row in section.rows:
        seeds = NUMBERS[row.label]
        expected = {
            "test/miou": [s[0] for s in seeds],
            **{f"test/iou_{c}": [s[1][i] for s in seeds] for i, c in enumerate(CLASSES)},
            "train_seconds": [s[2] for s in seeds],
        }
        for key, values in expected.items():
            cell = row.cells[key]
            assert cell.n == len(values)
            assert cell.mean == pytest.approx(np.mean(values))
            if len(values) > 1:
                assert cell.std == pytest.approx(np.std(values, ddof=1))
            else:
                assert np.isnan(cell.std)


def test_markdown_table_shows_mean_std_n_and_bolds_no_lead_it_cannot_detect(sweep: Path) -> None:
    code, printed = report(sweep)
    assert code == 0
    md = (sweep / "report.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ") and "---" not in line}
    bce, dice, ups = rows["mp_tr_bce"], rows["mp_tr_dice"], rows["strconv_ups_dice"]
    # mIoU 0.6, 0.7, 0.8 -> 0.700 ± 0.100; n = 3
    assert "| 0.700 ± 0.100 |" in bce and "| 3 |" in bce
    assert "0.520 ± 0.028" in dice and "| 2 |" in dice
    assert "| 0.650 |" in ups and "| 1 |" in ups
    # 0.70 ± 0.10 (3 seeds) against 0.52 ± 0.03 (2 seeds): t = 0.18 / 0.061 = 2.9, below Student's 4.0 for
    # Welch's 2.4 degrees of freedom, and a single seed has no spread at all: no lead is detected, nothing bold
    assert "**" not in md.split("| combo |", 1)[1].split("\n\n", 1)[0]
    # the terminal got the same table
    assert "0.700 ± 0.100" in printed and "strconv_ups_dice" in printed


def test_a_lead_is_bold_only_where_it_is_detected(tmp_path: Path) -> None:
    """Two combos, three seeds each, no per-item outcomes (seeds only). mIoU 0.80-0.82 against 0.60-0.62:
    equal variances, so Welch's df is 4, and t = 0.2 / sqrt(2 x 0.0001 / 3) = 24.5 far above 2.776 (the table's
    97.5% point): detected. IoU border: means 0.5 and 0.5: not detected, no bold in that column."""
    sweep = tmp_path / "s"
    border = {"mp_tr_bce": (0.5, 0.2, 0.8), "mp_tr_dice": (0.45, 0.5, 0.55)}
    for job, (combo, base) in enumerate([(c, b) for c, b in (("mp_tr_bce", 0.80), ("mp_tr_dice", 0.60)) for _ in range(3)]):
        seed = job % 3
        run = sweep / f"{job}_{combo}-s{seed}"
        write_config(run, combo, seed, sweep)
        summary = unet_summary(combo, seed, base + 0.01 * seed, (0.7, 0.8, border[combo][seed]), 10.0 + seed)
        (run / "summary.json").write_text(json.dumps(summary))
    code, _ = report(sweep)
    assert code == 0
    (section,) = build_sections(collect(sweep))
    assert [row.cells["test/miou"].best for row in section.rows] == [True, False]
    assert not any(row.cells["test/iou_border"].best for row in section.rows)
    # the row's interval: mean ± t(0.975, 2) s / sqrt(3), t from the table
    low, high = section.rows[0].cells["test/miou"].ci
    assert (low, high) == pytest.approx((0.81 - 4.302653 * 0.01 / np.sqrt(3), 0.81 + 4.302653 * 0.01 / np.sqrt(3)), abs=1e-6)
    md = (sweep / "report.md").read_text()
    assert "| **0.810 ± 0.010** | [0.785, 0.835] |" in md
    line = next(line for line in md.splitlines() if line.startswith("| test mIoU | mp_tr_bce | mp_tr_dice |"))
    assert "| +0.200 |" in line and "| A better |" in line
    assert "seeds only (no usable test_items.npz)" in md


def test_incomplete_runs_are_listed_with_their_reason(sweep: Path) -> None:
    code, printed = report(sweep)
    assert code == 0
    md = (sweep / "report.md").read_text()
    assert "### Incomplete runs (4)" in md
    reasons = {
        "6_mp_tr_bce-s7": "no summary.json (unfinished or crashed: 2 of 3 epochs in metrics.jsonl)",
        "7_mp_tr_dice-s8": "summary.json is not valid JSON",
        "8_strconv_ups_dice-s9": "status 'failed' in summary.json, not 'complete': loss is NaN (after 1 epochs)",
        "9_mp_tr_bce-s6": "summary.json holds a JSON list, not an object",
    }
    for run, reason in reasons.items():
        line = next(line for line in md.splitlines() if line.startswith(f"- `{run}`"))
        assert reason in line, line
        assert run in printed
    # none of them counted in the table: mp_tr_bce still has n = 3
    assert "0.700 ± 0.100" in md
    html = (sweep / "report.html").read_text()
    assert "summary.json is not valid JSON" in html


def test_runs_of_two_tasks_get_one_section_each(sweep: Path) -> None:
    for seed, (condition, follow) in enumerate([("both", 0.9), ("encoder", 0.2)]):
        run = sweep / f"vae/{seed}_vae-s{seed}"
        write_config(run, f"vae_mnist_{condition}_mp_tr", 0, sweep / "vae", task="vae", dataset="mnist", condition=condition)
        summary = {
            "test/elbo": 100.0 + seed, "test/recon": 90.0, "test/kl": 10.0 + seed, "judge/test_acc": 0.99,
            "test/label_follow_acc": follow, "test/input_keep_acc": 1 - follow, "best_epoch": 2, "train_seconds": 5.0,
            "params": 99, "task": "vae", "dataset": "mnist", "condition": condition, "encoder": "maxpool",
            "decoder": "transpose", "loss": "bce", "seed": 0, "combo": f"vae_mnist_{condition}_mp_tr", "status": "complete",
            "report": vae_block(),
        }
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train/loss": 120.0, "val/elbo": 110.0, "val/recon": 100.0, "val/kl": 10.0}) + "\n")
        grid = captioned_grid([[tile((9, 9, 9)), tile((seed * 200, 50, 50))]], captions=[["3", "3 → 5"]])
        grid.save(run / "wrong_labels.png")
    code, _ = report(sweep)
    assert code == 0
    sections = build_sections(collect(sweep))
    assert [s.task for s in sections] == ["unet", "vae"]
    vae = sections[1]
    # the combos differ by model.condition, which the combo's own value interpolates: the combo names the row
    assert [row.label for row in vae.rows] == ["vae_mnist_both_mp_tr", "vae_mnist_encoder_mp_tr"]
    assert vae.varying == ["model.condition"]
    # one seed each: no spread to judge a lead by, so no bold
    assert not any(cell.best for row in vae.rows for cell in row.cells.values())
    md = (sweep / "report.md").read_text()
    assert "## UNet segmentation" in md and "## Label-conditioned VAE" in md
    assert "| combo | dataset | condition | encoder | decoder | loss | n | test -ELBO (nats) |" in md
    assert (sweep / "report-vae-pictures.png").is_file() and (sweep / "report-vae-bars.png").is_file()


def test_a_section_is_what_its_runs_wrote_of_their_task(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    for job, (scheme, ious) in enumerate([("binary", {"background": 0.9, "pet": 0.8}), ("binary", {"background": 0.7, "pet": 0.6})]):
        run = sweep / f"{job}_mp_tr_bce-s{job}"
        write_config(run, "mp_tr_bce", job, sweep)
        summary = {**unet_summary("mp_tr_bce", job, 0.5, (), 1.0), "report": unet_block(f"data.classes={scheme}")}
        summary.update({f"test/iou_{c}": v for c, v in ious.items()})
        (run / "summary.json").write_text(json.dumps(summary))
    (section,) = build_sections(collect(sweep))
    assert [c.label for c in section.columns] == [
        "test mIoU", "IoU background", "IoU pet", "Dice", "pixel acc", "best epoch", "train time (s)", "params",
    ]
    assert section.spec.picture_legend == ("background", "pet")
    (row,) = section.rows
    assert row.cells["test/iou_pet"].mean == pytest.approx(0.7) and row.cells["test/iou_pet"].n == 2


def test_a_run_that_wrote_no_task_spec_gets_the_table_of_its_test_keys(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    for job, block in enumerate([None, {"title": "not a spec"}]):
        run = sweep / f"{job}_mp_tr_bce-s{job}"
        write_config(run, "mp_tr_bce", job, sweep)
        summary = {k: v for k, v in unet_summary("mp_tr_bce", job, 0.5, (0.5, 0.5, 0.5), 1.0).items() if k != "report"}
        (run / "summary.json").write_text(json.dumps(summary if block is None else {**summary, "report": block}))
    (section,) = build_sections(collect(sweep))
    assert section.spec.title == "task unet" and section.spec.identity == ("combo",)
    keys = [c.key for c in section.columns]
    assert keys[-3:] == ["best_epoch", "train_seconds", "params"]
    assert set(keys[:-3]) == {"test/miou", "test/dice", "test/pixel_acc", "test/loss", *(f"test/iou_{c}" for c in CLASSES)}
    assert not any(c.better for c in section.columns[:-3])
    (row,) = section.rows
    assert row.label == "mp_tr_bce" and row.cells["test/miou"].n == 2


def test_no_runs_is_one_clear_message_and_a_non_zero_exit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    (empty / "some" / "folder").mkdir(parents=True)
    assert main([str(empty)]) == 1
    out = capsys.readouterr().out
    assert "no run dirs under" in out and str(empty) in out
    assert len([line for line in out.splitlines() if line.strip()]) == 1
    assert not (empty / "report.md").exists()
    assert main([str(tmp_path / "missing")]) == 2


def test_only_incomplete_runs_still_lists_them_and_exits_non_zero(tmp_path: Path) -> None:
    run = tmp_path / "s" / "0_mp_tr_bce-s0"
    write_config(run, "mp_tr_bce", 0, tmp_path / "s")
    code, printed = report(tmp_path / "s")
    assert code == 1
    assert "none of the 1 run dir(s)" in printed
    assert "crashed before its first epoch ended" in (tmp_path / "s" / "report.md").read_text()


def test_metrics_lines_that_repeat_or_break_are_tolerated(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    run = sweep / "0_mp_tr_bce-s0"
    write_config(run, "mp_tr_bce", 0, sweep)
    (run / "summary.json").write_text(json.dumps(unet_summary("mp_tr_bce", 0, 0.5, (0.5, 0.5, 0.5), 1.0)))
    (run / "metrics.jsonl").write_text(metrics_lines(0) + json.dumps({"epoch": 3, "val/miou": 0.99}) + "\n" + '{"epoch": 4, "val/mi')
    (read,) = collect(sweep)
    assert [m["epoch"] for m in read.metrics] == [1, 2, 3] and read.metrics[-1]["val/miou"] == 0.99


# --- figures and HTML -------------------------------------------------------------------------------


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "poster") or (name == "style" and value and "url(" in value):
                self.refs.append((tag, name, value or ""))


def test_figures_exist_and_the_html_is_self_contained(sweep: Path) -> None:
    report(sweep)
    figures = sorted(p.name for p in sweep.glob("report-*.png"))
    assert figures == [
        "report-unet-bars.png", "report-unet-curves.png", "report-unet-forest.png", "report-unet-pictures.png", "report-unet-time-to-quality.png",
    ]
    for name in figures:
        with Image.open(sweep / name) as image:
            assert image.width > 50 and image.height > 50
    md = (sweep / "report.md").read_text()
    for name in figures:
        assert f"]({name})" in md
    html = (sweep / "report.html").read_text()
    parser = Links()
    parser.feed(html)
    assert parser.refs and all(value.startswith("data:image/png;base64,") for _, _, value in parser.refs), parser.refs
    assert sum(1 for tag, _, _ in parser.refs if tag == "img") == 5
    assert "<link" not in html and "<script" not in html and "@import" not in html


def test_time_to_quality_draws_each_run_against_its_cumulative_training_seconds(sweep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch times that differ per run: each run's line has x = the running sum of its epoch_seconds, y = val/miou."""
    from s18exp.report import figures

    epoch_seconds = {}
    complete = [run.path for run in collect(sweep) if run.complete]
    for k, run_dir in enumerate(complete):
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        for epoch, record in enumerate(records, start=1):
            record["epoch_seconds"] = 2.0 + k + 0.5 * epoch
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        epoch_seconds[run_dir.name] = [r["epoch_seconds"] for r in records]
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    (section,) = build_sections(collect(sweep))
    assert figures.time_to_quality(section, sweep / "t.png") == sweep / "t.png"
    (axes,) = drawn[0].axes
    lines = axes.get_lines()
    runs = [run for row in section.rows for run in row.runs]
    assert len(lines) == len(runs) == 6  # one line per complete run
    for line, run in zip(lines, runs):
        assert np.allclose(line.get_xdata(), np.cumsum(epoch_seconds[run.path.name]))
        assert np.allclose(line.get_ydata(), [m["val/miou"] for m in run.metrics])
    colours = [line.get_color() for line in lines]
    sizes = [len(row.runs) for row in section.rows]  # 3, 2, 1 seeds: one colour per combo
    assert len(set(colours[:3])) == len(set(colours[3:5])) == 1 and len(set(colours)) == 3
    assert sizes == [3, 2, 1]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["mp_tr_bce, n=3", "mp_tr_dice, n=2", "strconv_ups_dice, n=1"]


def test_time_to_quality_is_referenced_in_markdown_and_drawn_only_for_a_task_with_a_time_curve(sweep: Path) -> None:
    report(sweep)
    md = (sweep / "report.md").read_text()
    assert "](report-unet-time-to-quality.png)" in md and "Time to quality: validation mIoU against cumulative training seconds" in md
    assert "Time to quality" in (sweep / "report.html").read_text()
    stale = sweep / "vae" / "report-vae-time-to-quality.png"
    run = sweep / "vae" / "0_vae-s0"
    write_config(run, "vae_mnist_both_mp_tr", 0, sweep / "vae", task="vae", dataset="mnist", condition="both")
    summary = {"task": "vae", "test/elbo": 1.0, "status": "complete", "combo": "vae_mnist_both_mp_tr", "report": vae_block()}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val/elbo": 2.0, "epoch_seconds": 1.0}) + "\n")
    stale.write_bytes(b"an earlier report's figure")
    report(sweep / "vae")
    assert not stale.exists()


def test_settings_line_lists_every_limit_in_force(sweep: Path) -> None:
    from omegaconf import OmegaConf

    for config_file in sweep.glob("*/.hydra/config.yaml"):
        config = OmegaConf.load(config_file)
        config.data.limit_train, config.data.limit_val, config.data.limit_test = 60, 12, 30
        config.augment = {"name": "strong", "crop_size": None}
        OmegaConf.save(config, config_file)
    report(sweep)
    md = (sweep / "report.md").read_text()
    assert "limit train 60 · limit val 12 · limit test 30 · augment strong" in md
    assert "train crop" not in md  # whole images: nothing to say


def test_settings_line_names_the_training_window(sweep: Path) -> None:
    from omegaconf import OmegaConf

    for config_file in sweep.glob("*/.hydra/config.yaml"):
        config = OmegaConf.load(config_file)
        config.augment = {"name": "strong", "crop_size": 96}
        OmegaConf.save(config, config_file)
    report(sweep)
    assert "augment strong · train crop 96" in (sweep / "report.md").read_text()


def test_settings_line_names_the_weight_average_and_a_differing_one_splits_the_rows(sweep: Path) -> None:
    from omegaconf import OmegaConf

    report(sweep)
    assert "weight EMA" not in (sweep / "report.md").read_text()
    for config_file in sweep.glob("*/.hydra/config.yaml"):
        config = OmegaConf.load(config_file)
        config.trainer.ema_decay = 0.998
        OmegaConf.save(config, config_file)
    report(sweep)
    assert "weight EMA 0.998" in (sweep / "report.md").read_text()
    config_file = next(sweep.glob("0_*/.hydra/config.yaml"))  # a run of mp_tr_bce
    config = OmegaConf.load(config_file)
    config.trainer.ema_decay = None
    OmegaConf.save(config, config_file)
    report(sweep)
    md = (sweep / "report.md").read_text()
    assert "weight EMA" not in md.split("| combo |")[0].split("| variant |")[0]  # no longer shared: in the rows
    labels = [row.label for row in build_sections(collect(sweep))[0].rows]
    assert labels == [
        "mp_tr_bce, trainer.ema_decay=null", "mp_tr_bce, trainer.ema_decay=0.998",
        "mp_tr_dice, trainer.ema_decay=0.998", "strconv_ups_dice, trainer.ema_decay=0.998",
    ]
    assert "| variant |" in md


def test_settings_line_names_the_block_and_an_older_run_without_it_gets_its_own_row(sweep: Path) -> None:
    from omegaconf import OmegaConf

    configs = sorted(sweep.glob("*/.hydra/config.yaml"))
    for config_file in configs:
        config = OmegaConf.load(config_file)
        config.model.block = "double"
        OmegaConf.save(config, config_file)
    report(sweep)
    assert "· block double" in (sweep / "report.md").read_text()
    older = OmegaConf.load(configs[0])
    del older.model["block"]  # written before the setting existed: whether it used the plain block is not known
    OmegaConf.save(older, configs[0])
    (section,) = build_sections(collect(sweep))
    assert [row.label for row in section.rows][:2] == ["mp_tr_bce, model.block=unset", "mp_tr_bce, model.block=double"]
    assert "block" not in section.settings


def test_pictures_show_the_shared_columns_once_then_each_combo(sweep: Path) -> None:
    report(sweep)
    with Image.open(sweep / "report-unet-pictures.png") as picture:
        pixels = np.asarray(picture.convert("RGB"))
    colours = {tuple(int(v) for v in p) for p in pixels.reshape(-1, 3)}
    # the image and ground-truth columns once, and each combo's prediction colour
    for colour in [(200, 0, 0), (0, 200, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250)]:
        assert colour in colours
    red_columns = np.where((pixels == (200, 0, 0)).all(axis=2).any(axis=0))[0]
    assert red_columns.max() - red_columns.min() < 3 * TILE  # the input column appears once, not per combo


def test_figure_titles_name_the_sweep_and_its_best_row(sweep: Path) -> None:
    (section,) = build_sections(collect(sweep))
    # test mIoU means: mp_tr_bce (0.6 + 0.7 + 0.8) / 3, mp_tr_dice 0.52, strconv_ups_dice 0.65
    assert figs.headline_text(section) == "best test mIoU 0.700: mp_tr_bce (mean of 3 seeds)"
    assert figs.figure_title(section, "curves") == f"{SWEEP}: curves\nbest test mIoU 0.700: mp_tr_bce (mean of 3 seeds)"


def test_the_curves_legend_covers_no_panel_and_each_seed_band_is_outlined(sweep: Path) -> None:
    (section,) = build_sections(collect(sweep))
    fig = figs.curves_figure(section)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # lays the figure out
    renderer = canvas.get_renderer()
    (legend,) = fig.legends
    assert all(ax.get_legend() is None for ax in fig.axes)
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    seeds = [len(row.runs) for row in section.rows]  # 3, 2, 1
    mious, losses = fig.axes
    # per row: its mean line, and two edge lines of its band when it has more than one seed
    assert len(mious.get_lines()) == sum(1 + 2 * (n > 1) for n in seeds)
    assert len(losses.get_lines()) == 2 * sum(1 + 2 * (n > 1) for n in seeds)  # train and val
    assert mious.get_ylabel() and losses.get_ylabel() == "loss"
    labels = [t.get_text() for t in losses.get_yticklabels(minor=False) + losses.get_yticklabels(minor=True) if t.get_text()]
    assert labels and all(re.fullmatch(r"[0-9.]+", text) for text in labels), labels  # 0.3, not 3x10^-1


# --- W&B ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def spec_of(sweep: Path, entity: str | None = None) -> dict[str, Any]:
    from s18exp.report.render import Document, Figures

    sections = build_sections(runs := collect(sweep))
    doc = Document("Run comparison", sweep, "now", sections, {s.task: Figures() for s in sections})
    return wb.report_spec(doc, runs, entity)


def test_wandb_report_is_built_offline_with_its_blocks_panels_keys_and_filter(sweep: Path, no_network: list[Any]) -> None:
    import wandb_workspaces.reports.v2 as wr

    spec = spec_of(sweep)
    assert spec["project"] == "proj-x" and spec["groups"] == [SWEEP] and spec["entity"] is None
    report = wb.build_report(spec, entity="team-x")
    assert not no_network
    assert (report.entity, report.project) == ("team-x", "proj-x")
    assert [type(b).__name__ for b in report.blocks] == ["H1", "MarkdownBlock", "H2", "MarkdownBlock", "PanelGrid"]
    table = report.blocks[3].text
    assert "| mp_tr_bce |" in table and "| 0.700 ± 0.100 |" in table and "Incomplete runs" in table
    assert "| test mIoU | mp_tr_bce | mp_tr_dice |" in table  # the comparisons come with the table
    grid = report.blocks[4]
    (runset,) = grid.runsets
    assert runset.filters == f"Group = '{SWEEP}' and JobType = 'unet'"
    assert (runset.entity, runset.project, runset.groupby) == ("team-x", "proj-x", ["config.combo"])
    kinds = [type(p).__name__ for p in grid.panels]
    assert kinds == ["LinePlot", "LinePlot", "BarPlot", "BarPlot", "BarPlot", "RunComparer", "MediaBrowser"]
    lines = [p for p in grid.panels if isinstance(p, wr.LinePlot)]
    assert [p.y for p in lines] == [["val/miou"], ["train/loss", "val/loss"]]
    assert all(p.x == "epoch" and p.groupby == wr.Config("combo") and p.groupby_rangefunc == "minmax" for p in lines)
    bars = [p for p in grid.panels if isinstance(p, wr.BarPlot)]
    assert bars[0].metrics == ["test/miou"]
    assert bars[1].metrics == [f"test/iou_{c}" for c in CLASSES]
    assert all(p.groupby == wr.Config("combo") for p in bars)
    media = grid.panels[-1]
    assert media.media_keys == ["test/predictions"]
    assert grid.panels[-2].diff_only == "split"
    # every panel serialises to W&B's own model without a server
    models = [p._to_model().model_dump(by_alias=True, exclude_none=True) for p in grid.panels]
    assert models[0]["config"]["metrics"] == ["val/miou"] and models[0]["config"]["xAxis"] == "epoch"
    assert not no_network


def test_wandb_offline_writes_the_spec_and_the_exact_sync_command(sweep: Path, offline_env: None, no_network: list[Any]) -> None:
    code, printed = report(sweep, wandb=True)
    assert code == 0 and not no_network
    spec = json.loads((sweep / wb.SPEC_FILE).read_text())
    assert spec["format"] == wb.SPEC_FORMAT
    folders = sorted(str(p) for p in sweep.glob("*/wandb/offline-run-*"))
    assert len(folders) == 7
    command = next(line.strip() for line in printed.splitlines() if line.strip().startswith("wandb sync "))
    assert sorted(command.split()[2:]) == folders
    assert f"python -m s18exp.report --from-spec {sweep / wb.SPEC_FILE}" in printed
    assert "not logged in" in printed
    md = (sweep / "report.md").read_text()
    assert "## W&B report" in md and command in md
    # a synced run is left out of the command
    (Path(folders[0]) / f"run-{Path(folders[0]).name.rsplit('-', 1)[1]}.wandb.synced").touch()
    assert len(spec_of(sweep)["unsynced_runs"]) == 6


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_wandb_server_is_a_clear_message_in_bounded_time(sweep: Path, offline_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    code, printed = report(sweep, wandb=True, timeout=20.0)
    assert time.monotonic() - start < 20
    assert code == 3
    assert "is unreachable" in printed and "127.0.0.1" in printed
    assert (sweep / "report.md").is_file() and (sweep / "report.html").is_file() and (sweep / wb.SPEC_FILE).is_file()
    assert "W&B report not created online" in (sweep / "report.md").read_text()


def test_a_server_that_never_answers_is_given_up_after_the_timeout(sweep: Path, offline_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    try:
        start = time.monotonic()
        published = wb.publish(spec_of(sweep, entity="team-x"), timeout=3)
        assert time.monotonic() - start < 10
        assert published.url is None and "did not answer within 3 s" in published.error
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def test_from_spec_needs_a_login_and_a_valid_file(sweep: Path, offline_env: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec_of(sweep)))
    assert main(["--from-spec", str(path)]) == 3
    assert "log in first" in capsys.readouterr().out
    path.write_text("{}")
    assert main(["--from-spec", str(path)]) == 2


# --- the Hydra callback ------------------------------------------------------------------------------


def test_callback_never_fails_the_sweep_and_can_be_turned_off(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from omegaconf import OmegaConf

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nothing")}}})
    ReportCallback().on_multirun_end(config)  # no such folder: a message, no exception
    ReportCallback(enabled=False).on_multirun_end(config)
    assert not (tmp_path / "nothing").exists()


@pytest.mark.slow
def test_a_multirun_ends_with_its_report(tiny_pets: TinyPets, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = smoke_overrides_for(tiny_pets.root, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "s18exp", "--multirun", "experiment=mp_tr_bce,mp_tr_dice", f"hydra.sweep.dir={sweep}", *args],
        cwd=tmp_path, env=cli_env(tmp_path / "wandb-home"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    md = (sweep / "report.md").read_text()
    assert re.search(r"^\| mp_tr_bce \| maxpool \| transpose \| bce \| 1 \|", md, re.M), md
    assert re.search(r"^\| mp_tr_dice \| maxpool \| transpose \| dice \| 1 \|", md, re.M), md
    assert "Incomplete runs" not in md
    assert (sweep / "report.html").is_file() and (sweep / "report-unet-curves.png").is_file()
    assert (sweep / "report-unet-pictures.png").is_file()
    assert "test mIoU" in result.stdout and "mp_tr_dice" in result.stdout  # the table was printed
