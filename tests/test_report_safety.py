"""`python -m s18exp.report` on hostile run dirs: whatever a summary.json, an optuna.db or a metrics.jsonl
says, nothing is written or removed outside the report's folder, and the files it reads stay as they were."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import optuna
import pytest
from PIL import Image
from rich.console import Console

from s18exp.report.build import make_report, slug
from test_report import metrics_lines, unet_summary, write_config

HOSTILE_TASKS = ["x/../../victim/x", "../../victim/y", "/tmp/victim-absolute", "a\\..\\b", "\u0000nul", "." * 300, "ok name with spaces"]
FIGURE = re.compile(r"report-[A-Za-z0-9_-]+-(curves|time-to-quality|bars|pictures|forest)\.png")


def tree(root: Path) -> dict[str, str]:
    """Every file under `root`: path -> hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def hostile_sweep(root: Path, task: str) -> Path:
    """Two complete runs whose summary.json names `task`, and a `report-x/` folder shipped beside them, so
    that a figure path built from the task would lead out of the folder."""
    sweep = root / "sweep"
    for seed in (0, 1):
        run = sweep / f"{seed}_run"
        write_config(run, "mp_tr_bce", seed, sweep)
        (run / "summary.json").write_text(json.dumps({**unet_summary("mp_tr_bce", seed, 0.5 + seed / 10, (0.5, 0.5, 0.5), 1.0), "task": task}))
        (run / "metrics.jsonl").write_text(metrics_lines(seed))
    (sweep / "report-x").mkdir()
    return sweep


@pytest.mark.parametrize("task", HOSTILE_TASKS)
def test_a_hostile_task_name_writes_and_removes_nothing_outside_the_report_folder(tmp_path: Path, task: str) -> None:
    """The report goes into the sweep dir itself (the default), which ships a `report-x/` folder: a figure
    named from the task `x/../../victim/x` would have been written to, or on a failed drawing removed from,
    tmp_path/victim/."""
    sweep = hostile_sweep(tmp_path, task)
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("x-curves.png", "x-forest.png", "y-curves.png"):
        (victim / name).write_bytes(b"the victim's file")
    before = tree(tmp_path)
    assert make_report(sweep, console=Console(record=True, width=200)) == 0
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed or removed
    added = sorted(set(after) - set(before))
    assert all(Path(name).parent == Path("sweep") for name in added), added  # written into the report's folder only
    names = [Path(name).name for name in added]
    assert all(FIGURE.fullmatch(name) or name in ("report.md", "report.html", "report.json") for name in names), names
    assert f"report-{slug(task)}-curves.png" in names
    out = tmp_path / "elsewhere"  # and with --out, into that folder alone
    assert make_report(sweep, out_dir=out, console=Console(record=True, width=200)) == 0
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("elsewhere/")} == after


def test_a_slug_keeps_a_plain_name_and_makes_any_other_safe_and_distinct() -> None:
    assert slug("unet") == "unet" and slug("vae") == "vae"
    made = {slug(task) for task in HOSTILE_TASKS}
    assert len(made) == len(HOSTILE_TASKS)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,49}", name) for name in made)
    assert slug("a/b") != slug("a_b")  # a changed name carries a hash of the original


def test_a_picture_name_that_leaves_the_run_dir_is_not_read(tmp_path: Path) -> None:
    sweep = hostile_sweep(tmp_path, "unet")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (40, 40), (1, 254, 3)).save(secret)
    for summary_file in sweep.glob("*/summary.json"):
        summary = json.loads(summary_file.read_text())
        summary["report"]["picture"] = "../../secret.png"
        summary_file.write_text(json.dumps(summary))
    (sweep / "report-unet-pictures.png").write_bytes(b"an earlier report's figure")
    assert make_report(sweep, console=Console(record=True, width=200)) == 0
    assert not (sweep / "report-unet-pictures.png").exists()  # nothing drawn, the stale figure gone


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_optuna_db_is_read_as_data_and_left_as_it_was(tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    sweep.mkdir()
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{sweep / 'optuna.db'}", direction="maximize")
    study.set_user_attr("objective", "best_val/miou")
    for value in (0.5, 0.7):
        trial = study.ask({"trainer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        study.tell(trial, value)
    del study
    before = sha(sweep / "optuna.db")
    make_report(sweep, console=Console(record=True, width=200))
    assert sha(sweep / "optuna.db") == before
    assert sorted(p.name for p in sweep.iterdir() if p.name.startswith("optuna")) == ["optuna.db"]
    assert "Best trial: 1, best_val/miou = 0.7" in (sweep / "report.md").read_text()


def test_a_foreign_sqlite_file_is_not_turned_into_a_study(tmp_path: Path) -> None:
    """Optuna's storage creates its tables in a database it opens; the report opens a copy, without them."""
    sweep = tmp_path / "search"
    sweep.mkdir()
    with sqlite3.connect(sweep / "optuna.db") as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    db.close()
    before = sha(sweep / "optuna.db")
    make_report(sweep, console=Console(record=True, width=200))
    assert sha(sweep / "optuna.db") == before
    assert "could not be read" in (sweep / "report.md").read_text()


def test_metrics_lines_that_are_not_epochs_are_skipped(tmp_path: Path) -> None:
    sweep = hostile_sweep(tmp_path, "unet")
    lines = [{"epoch": True, "val/miou": 0.9}, {"epoch": 10**12, "val/miou": 0.9}, {"epoch": -1}, {"epoch": "1"}, [1, 2], {"epoch": 1, "val/miou": "high"}]
    for run in sweep.glob("*_run"):
        (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert make_report(sweep, console=Console(record=True, width=200)) == 0
    from s18exp.report.collect import collect

    assert [[m["epoch"] for m in run.metrics] for run in collect(sweep)] == [[1], [1]]
