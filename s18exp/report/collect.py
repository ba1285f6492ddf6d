"""Find run dirs under a folder and read what each run left on disk (never the training code's state).

A run dir is a folder holding `.hydra/config.yaml`, `summary.json` or `metrics.jsonl`; the search does
not descend into a run dir once found. A run is complete when `summary.json` is a valid JSON object with
`status: complete` and the main test metric its TaskSpec names; every other run is kept, with the reason it
is not. Everything is read as data: JSON and YAML parsed, configs without resolvers (configs.py), the
per-item test outcomes with `allow_pickle=False` (s18exp/test_items.py).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s18exp import test_items
from s18exp.errors import UserError
from s18exp.report import configs
from s18exp.report.spec import TaskSpec, spec_in

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
HYDRA_DIR = ".hydra"
CONFIG = f"{HYDRA_DIR}/config.yaml"
HYDRA = f"{HYDRA_DIR}/hydra.yaml"
OVERRIDES = f"{HYDRA_DIR}/overrides.yaml"
MARKERS = (CONFIG, SUMMARY, METRICS)
SKIP_DIRS = {"wandb", "checkpoints", "__pycache__"}
MAX_EPOCH = 10**6  # an epoch number beyond this in metrics.jsonl is not one
# What names every run, in summary.json and, where that lacks it (or is missing), at the same key of the config.
NAMING = ("seed", "combo", "run_name")


@dataclass
class Run:
    path: Path
    summary: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    config: configs.Config | None  # None when .hydra/config.yaml is missing or unreadable
    task: str
    identity: dict[str, Any]
    spec: TaskSpec | None  # what the run wrote of its task for the report; None when it wrote nothing
    problem: str | None = None  # why the run is not complete; None when it is
    wandb_group: str | None = None
    wandb_project: str | None = None
    wandb_entity: str | None = None
    wandb_runs: list[Path] = field(default_factory=list)  # W&B run folders (offline-run-* or run-*)
    choices: dict[str, Any] = field(default_factory=dict)  # config group -> option (Hydra's runtime choices)
    overrides: list[str] = field(default_factory=list)  # the job's command-line overrides
    items: dict[str, Any] | None = None  # the arrays of test_items.npz; None when absent or unreadable
    items_problem: str | None = None  # why a test_items.npz that is there could not be read

    @property
    def complete(self) -> bool:
        return self.problem is None

    @property
    def name(self) -> str:
        return str(self.identity.get("run_name") or self.path.name)

    def value(self, key: str) -> float:
        """A numeric summary value, NaN when absent or not a number."""
        value = (self.summary or {}).get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return math.nan
        return float(value)

    def unsynced_wandb_runs(self) -> list[Path]:
        """Offline W&B run folders that `wandb sync` has not marked as synced."""
        return [d for d in self.wandb_runs if d.name.startswith("offline-run-") and not any(d.glob("*.wandb.synced"))]


def natural_key(path: Path) -> list[Any]:
    """Sort key that puts 2_x before 10_x."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_run_dirs(root: Path) -> list[Path]:
    """Every run dir under `root` (root itself included), in natural order."""
    found: list[Path] = []
    for current, dirs, _files in os.walk(root):
        here = Path(current)
        if any((here / marker).is_file() for marker in MARKERS):
            found.append(here)
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
    return sorted(found, key=natural_key)


def collect(root: Path) -> list[Run]:
    """Read every run dir under `root`."""
    return [read_run(path) for path in find_run_dirs(Path(root))]


def read_run(path: Path) -> Run:
    config, _ = configs.read(path / CONFIG)  # optional: the summary alone is enough for the table
    hydra, _ = configs.read(path / HYDRA)
    overrides, _ = configs.read_list(path / OVERRIDES)
    summary, problem = _read_summary(path)
    choices = config_value(hydra, "hydra.runtime.choices")
    choices = choices if isinstance(choices, dict) else {}
    task = str((summary or {}).get("task") or choices.get("task") or "unknown")
    spec = spec_in(summary)
    identity = {key: summary.get(key) for key in spec.identity} if spec else {}
    for key in NAMING:
        value = (summary or {}).get(key)
        identity[key] = value if value is not None else config_value(config, key)
    if problem is None:
        status = summary.get("status")
        if status != "complete":
            problem = f"status {status!r} in summary.json, not 'complete'"
            if summary.get("reason"):
                problem += f": {str(summary['reason'])[:200]}"
            if isinstance(summary.get("epochs_completed"), int):
                problem += f" (after {summary['epochs_completed']} epochs)"
        elif spec is not None and spec.required and not isinstance(summary.get(spec.required), (int, float)):
            problem = f"summary.json has no number for {spec.required}"
    metrics = _read_metrics(path / METRICS)
    if problem is not None and "no summary.json" in problem:
        problem += _progress_note(metrics, config) + _last_error(path)
    run = Run(path, summary, metrics, config, task, identity, spec, problem, choices=choices, overrides=[str(o) for o in overrides or []])
    if (path / test_items.TEST_ITEMS).is_file():
        try:
            run.items = test_items.load(path / test_items.TEST_ITEMS)
        except UserError as exc:
            run.items_problem = str(exc)
    run.wandb_group = _wandb_group(config, hydra, path, identity)
    run.wandb_project = _text(config_value(config, "wandb.project"))
    run.wandb_entity = _text(config_value(config, "wandb.entity"))
    wandb_dir = path / "wandb"
    if wandb_dir.is_dir():
        run.wandb_runs = sorted(d for d in wandb_dir.iterdir() if d.is_dir() and re.match(r"(offline-)?run-", d.name))
    return run


def _read_summary(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    file = path / SUMMARY
    if not file.is_file():
        return None, "no summary.json"
    try:
        summary = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        return None, f"summary.json is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"summary.json could not be read ({exc})"
    if not isinstance(summary, dict):
        return None, f"summary.json holds a JSON {type(summary).__name__}, not an object"
    return summary, None


def _read_metrics(file: Path) -> list[dict[str, Any]]:
    """Epoch records, the last one kept when an epoch appears twice; lines that do not parse (e.g. one
    half-written by a run that is still going) are skipped."""
    if not file.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in file.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if type(epoch) is int and 0 <= epoch <= MAX_EPOCH:  # bool is an int too, and not an epoch
            by_epoch[epoch] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _progress_note(metrics: list[dict[str, Any]], config: Any) -> str:
    planned = config_value(config, "trainer.max_epochs")
    of = f" of {planned}" if planned is not None else ""
    if metrics:
        return f" (unfinished or crashed: {len(metrics)}{of} epochs in metrics.jsonl)"
    return " (unfinished or crashed before its first epoch ended)"


def _last_error(path: Path) -> str:
    """The last ERROR line of the run's Hydra log file, if any."""
    for log in sorted(path.glob("*.log")):
        try:
            errors = [line for line in log.read_text(errors="replace").splitlines() if "[ERROR]" in line]
        except OSError:
            continue
        if errors:
            message = errors[-1].split(" - ", 1)[-1].strip()
            return f"; last error in {log.name}: {message[:200]}"
    return ""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def config_value(config: configs.Config | None, key: str) -> Any:
    """A value of a run's config (plain interpolations resolved, resolvers never), None when absent."""
    return None if config is None else configs.lookup(config.values, key)


def _wandb_group(config: configs.Config | None, hydra: configs.Config | None, path: Path, identity: dict[str, Any]) -> str | None:
    """The group s18exp.tracking.wandb_group gave the run: explicit, else the sweep dir's name, else the run's name."""
    explicit = config_value(config, "wandb.group")
    if explicit:
        return str(explicit)
    if config_value(hydra, "hydra.mode") == "MULTIRUN":
        raw = config_value(hydra, "hydra.sweep.dir")  # never resolved: a ${now:...} would give today's time
        if isinstance(raw, str) and "${" not in raw:
            return Path(raw).name
        return path.parent.name  # the sweep dir held a ${now:...} that cannot be resolved again; subdir is one level
    return str(identity.get("run_name")) if identity.get("run_name") else None
