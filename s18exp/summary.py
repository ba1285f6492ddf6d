"""summary.json, a run dir's record of its run: written once when the run is complete (`complete_summary`), or
when it stops early with its `status` and `reason` (`record_stop`; `record_failure` for a sweep job that failed
before training started); read to skip a finished run (`read_summary`, `is_complete`) and to tell whether a job
wrote it (`summary_stamp`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from s18exp.atomic_files import atomic_write_json
from s18exp.checkpoint import TrainState, read_last_state
from s18exp.report.spec import SUMMARY_BLOCK
from s18exp.tasks import Task

SUMMARY = "summary.json"


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def is_complete(summary: dict[str, Any] | None, max_epochs: int) -> bool:
    """Whether a run dir's summary says its run is done for `max_epochs` epochs (a longer schedule continues it)."""
    if not summary or summary.get("status") != "complete":
        return False
    done = summary.get("epochs_completed")
    return not isinstance(done, int) or done >= max_epochs


def summary_stamp(run_dir: Path) -> tuple[int, int] | None:
    """(inode, mtime) of summary.json, None when absent: tells whether a job wrote it (writes are atomic
    renames, so each write makes a new file)."""
    try:
        stat = (run_dir / SUMMARY).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def record_failure(run_dir: Path, cfg: DictConfig, reason: str) -> None:
    """summary.json of a sweep job that failed before training started (bad input, missing data), so that
    the sweep's report and exit status name it; training failures write theirs with `record_stop`."""
    name = OmegaConf.select(cfg, "run_name", default=None, throw_on_resolution_failure=False)
    atomic_write_json({"run_name": name or run_dir.name, "status": "failed", "reason": reason, "epochs_completed": 0}, run_dir / SUMMARY)


def record_stop(run_dir: Path, identity: dict[str, Any], run_name: str, status: str, reason: str) -> None:
    """summary.json of a run that stopped early (`status` interrupted or failed, and why), with the progress its
    last.pt recorded."""
    atomic_write_json({**identity, "run_name": run_name, "status": status, "reason": reason, **read_last_state(run_dir)}, run_dir / SUMMARY)


def complete_summary(
    cfg: DictConfig, task: Task, scores: dict[str, Any], extra: dict[str, Any], test_epoch: int, state: TrainState, facts: dict[str, Any],
) -> dict[str, Any]:
    """The summary of a complete run: the test split's `scores` (as test/*), the task's `extra` entries, the
    epochs that were tested and were best, the progress `state`, the run's `facts` (time, size, precision,
    device...), its identity and how the report shows its task."""
    return {
        **{f"test/{k}": v for k, v in scores.items()},
        **extra,
        "test_weights": cfg.eval.weights,
        "test_epoch": test_epoch,
        "best_epoch": state.best_epoch,
        f"best_val/{task.monitor}": state.best_value,
        "epochs_completed": state.epochs_completed,
        "train_seconds": state.train_seconds,
        **facts,
        "run_name": cfg.run_name,
        **task.describe(),
        "status": "complete",
        SUMMARY_BLOCK: task.report_spec().as_dict(),
    }


def shown_metrics(summary: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """The scores the console shows at the end of a run: the summary's keys that start with one of the task's
    `prefixes` (`Task.shown_scores`)."""
    return {k: v for k, v in summary.items() if k.startswith(prefixes)}
