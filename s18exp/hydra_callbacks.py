"""Hydra callbacks of s18exp (registered in conf/hydra/default.yaml)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def unwritable_reason(folder: str | Path) -> str | None:
    """Why `folder` could not be created or written, or None when it can (nothing is created to find out)."""
    path = Path(folder).expanduser().absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


class OutputDirCheck(Callback):
    """Stops with one line, before Hydra creates anything, when the run or sweep dir cannot be written."""

    def _check(self, key: str, folder: str) -> None:
        reason = unwritable_reason(folder)
        if reason:
            print(f"error: cannot write the output dir {folder}: {reason}; set {key} to a writable folder", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)


def summary_files(sweep_dir: Path) -> dict[Path, tuple[int, int]]:
    """Every job's summary.json under the sweep dir, with (inode, mtime): an atomic write changes both."""
    found = {}
    for file in sweep_dir.rglob("summary.json"):
        if "wandb" in file.relative_to(sweep_dir).parts:
            continue
        stat = file.stat()
        found[file] = (stat.st_ino, stat.st_mtime_ns)
    return found


def failed_jobs(sweep_dir: Path, before: dict[Path, tuple[int, int]]) -> list[tuple[str, str]]:
    """(job dir, reason) of each job whose summary.json this sweep wrote with a status other than complete
    (a job skipped as already complete writes nothing). Works for every launcher: jobs in this process, in
    joblib workers or on Slurm nodes all leave their summary.json in the sweep dir."""
    failed = []
    for file, stamp in sorted(summary_files(sweep_dir).items()):
        if before.get(file) == stamp:
            continue
        try:
            summary = json.loads(file.read_text())
        except (OSError, ValueError):
            summary = {"status": "unreadable", "reason": "summary.json could not be read"}
        if not isinstance(summary, dict) or summary.get("status") != "complete":
            reason = summary.get("reason") if isinstance(summary, dict) else None
            failed.append((str(file.parent.relative_to(sweep_dir)), " ".join(str(reason or "no reason recorded").split())))
    return failed


class SweepOutcome(Callback):
    """Ends a sweep whose jobs did not all complete with exit status 1 and one line naming the failed jobs
    (each job's summary.json holds the whole reason; the report lists them). Every job has run by then: a
    failed job does not stop the others (s18exp.__main__). A search (a sweeper with an `objective`) is left
    alone: a failed trial is one of its results, kept in the study and the report.

    Registered before the report callback in conf/hydra/default.yaml: Hydra calls `on_multirun_end` in the
    reverse order, so the report is written before the sweep exits."""

    def __init__(self) -> None:
        self.before: dict[Path, tuple[int, int]] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        self.before = summary_files(sweep_dir) if sweep_dir.is_dir() else {}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper.get("objective"):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        failed = failed_jobs(sweep_dir, self.before) if sweep_dir.is_dir() else []
        if failed:
            names = "; ".join(f"{job} ({reason[:120]})" for job, reason in failed)
            where = f"{sweep_dir / 'report.md'}" if (sweep_dir / "report.md").is_file() else "each job's summary.json"
            print(f"error: {len(failed)} job(s) of the sweep failed: {names}; see {where}", file=sys.stderr)
            sys.exit(1)
