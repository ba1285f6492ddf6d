"""The settings that made a run dir, so that a rerun never mixes two runs in one dir.

A run writes `settings.json` into its run dir before training: its resolved config (the settings), less
the keys that may change between a stop and its resume without changing what is trained (`VOLATILE`: where
files are, how progress shows, threads, the device, W&B, `trainer.max_epochs`, ...), and a hash of them.
Skipping a complete job and resuming a stopped one happen only when the command's settings match that
record; otherwise the command stops with one line naming the keys that differ and the ways out, before
anything is written (`check_run_dir`, called by a Hydra callback before Hydra writes the job's `.hydra/`
files, for single runs and for every job of a sweep at once, and again by the run itself).

`settings.json` also keeps the text of the run's `.hydra/` files as they were when the run started, so that
`restore_hydra_files` can put them back when Hydra has rewritten them for a command that is then refused.
A run dir from before this record is compared with the config in its `checkpoints/last.pt`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from s18exp.atomic_files import atomic_write_json, atomic_write_text
from s18exp.errors import UserError

SETTINGS_FILE = "settings.json"
HYDRA_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")
# Keys whose value may differ between a run and its continuation: places on disk, display, speed knobs, the
# device and W&B. Prefixes end with a dot. `trainer.max_epochs` may differ too when there is no lr schedule
# (`differences`): a longer run then continues a shorter one.
VOLATILE = (
    "paths.",
    "wandb.",
    "data.root",
    "data.download",
    "data.cache",
    "trainer.resume",
    "trainer.progress",
    "trainer.num_threads",
    "trainer.device",
    "trainer.compile",
    "trainer.eval_batch_size",
)


ABSENT = object()  # what a key is on the side whose settings do not have it


class RunDirTaken(UserError):
    """The run dir holds a run made with other settings."""


def settings_of(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The resolved config as flat `key: value` pairs, less the VOLATILE keys."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(container, "")
    return {key: value for key, value in flat.items() if not _volatile(key)}


def _volatile(key: str) -> bool:
    return any(key == v or (v.endswith(".") and key.startswith(v)) for v in VOLATILE)


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recorded_settings(run_dir: Path) -> dict[str, Any] | None:
    """The settings that made `run_dir`: its settings.json, else (a run dir of an older s18exp) the config in
    its checkpoints/last.pt, read safely; None when the dir holds no run."""
    try:
        record = json.loads((run_dir / SETTINGS_FILE).read_text())
        if isinstance(record, dict) and isinstance(record.get("settings"), dict):
            return record["settings"]
    except (OSError, ValueError):
        pass
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        from s18exp.checkpoint import read_checkpoint

        return settings_of(read_checkpoint(last)["config"])
    return None


def differences(
    before: dict[str, Any], now: dict[str, Any], lr_auto: bool = False, default_of: Callable[[str], Any] | None = None
) -> list[str]:
    """`key: before there, now now` for every key whose value differs; not the learning rate when
    `trainer.lr=auto` and the recorded run picked a number, nor `trainer.max_epochs` without an lr schedule and
    without a size schedule (whose sides depend on it), nor a key the recorded run predates that the command leaves at its default (`default_of(key)`, the
    default config's value): new settings default to what the project did before they existed."""
    no_schedule = _epochs_free(before) and _epochs_free(now)
    changed = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key, ABSENT), now.get(key, ABSENT)
        if old == new or (lr_auto and key in ("trainer.lr", "trainer.optimizer.lr", "trainer.scheduler.max_lr") and new == "auto"):
            continue
        if key == "trainer.max_epochs" and no_schedule:
            continue
        if old is ABSENT and default_of is not None and new == default_of(key):
            continue
        changed.append(f"{key}: {_text(old)} there, {_text(new)} now")
    return changed


def _epochs_free(settings: dict[str, Any]) -> bool:
    """Whether nothing in these settings depends on `trainer.max_epochs`: no lr schedule and no size schedule."""
    return settings.get("trainer.scheduler", "set") is None and settings.get("trainer.size_schedule.start_size") is None


def default_settings(choices: Any = None) -> Callable[[str], Any]:
    """`key -> its value in the default config of these group choices` (settings_of's flat keys), composed
    once, at the first call."""
    composed: dict[str, Any] = {}

    def lookup(key: str) -> Any:
        if not composed:
            from s18exp.config import default_config

            composed.update(settings_of(default_config(choices)))
        return composed.get(key, ABSENT)

    return lookup


def _text(value: Any) -> str:
    return "absent" if value is ABSENT else "null" if value is None else str(value)


def check_run_dir(cfg: DictConfig, run_dir: Path, where: str = "hydra.run.dir", choices: Any = None) -> None:
    """RunDirTaken when `run_dir` holds a run (complete or stopped) made with other settings than `cfg`'s,
    unless `trainer.resume=never`, which replaces it. `where`: the setting that names the dir, for the message;
    `choices`: the config groups `cfg` was composed from (Hydra's `runtime.choices`; this run's when None), whose
    defaults a key newer than the recorded run may keep."""
    if str(OmegaConf.select(cfg, "trainer.resume", default="auto")) == "never" or not run_dir.is_dir():
        return
    before = recorded_settings(run_dir)
    if before is None:
        return
    lr_auto = OmegaConf.select(cfg, "trainer.lr", default=None) == "auto"
    changed = differences(before, settings_of(cfg), lr_auto, default_settings(choices))
    if changed:
        copies = _interpolated_keys(cfg)  # keys that only repeat another key (optimizer.lr: ${trainer.lr})
        named = [line for line in changed if line.split(":")[0] not in copies] or changed
        shown = "; ".join(named[:3]) + (f"; and {len(named) - 3} more" if len(named) > 3 else "")
        raise RunDirTaken(
            f"{run_dir} holds a run made with other settings ({shown}); rerun with that run's settings to continue "
            f"it, give another {where}, or add trainer.resume=never to replace it"
        )


def _interpolated_keys(cfg: DictConfig) -> set[str]:
    raw = settings_of(OmegaConf.to_container(cfg, resolve=False))
    return {key for key, value in raw.items() if isinstance(value, str) and value.startswith("${")}


def record(cfg: DictConfig, run_dir: Path) -> None:
    """Write settings.json for the run starting in `run_dir`, with the `.hydra/` files as they are now."""
    settings = settings_of(cfg)
    hydra_dir = run_dir / ".hydra"
    files = {name: (hydra_dir / name).read_text() for name in HYDRA_FILES if (hydra_dir / name).is_file()}
    atomic_write_json({"hash": settings_hash(settings), "settings": settings, "hydra_files": files}, run_dir / SETTINGS_FILE)


def restore_hydra_files(run_dir: Path) -> None:
    """Put back the `.hydra/` files that settings.json kept, after Hydra rewrote them for a refused command."""
    try:
        files = json.loads((run_dir / SETTINGS_FILE).read_text()).get("hydra_files") or {}
    except (OSError, ValueError, AttributeError):
        return
    for name, text in files.items():
        if name in HYDRA_FILES and isinstance(text, str):
            atomic_write_text(text, run_dir / ".hydra" / name)


def holds_a_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds anything of a run that started: its settings, summary or checkpoints."""
    return any((run_dir / name).exists() for name in (SETTINGS_FILE, "summary.json", "checkpoints"))


def remove_unstarted(run_dir: Path, log_file: str) -> None:
    """Take back the dir of a single run refused before training (a data root that holds no data set), when
    it holds nothing but what Hydra and the run wrote before the refusal (`.hydra/`, the log file `log_file`,
    settings.json, metrics.jsonl): those files, then every folder from the run dir up that is left empty, up
    to the working directory. A dir that holds anything else stays as it is."""
    written = {".hydra", log_file, SETTINGS_FILE, "metrics.jsonl"}
    hydra_dir = run_dir / ".hydra"
    try:
        if not {p.name for p in run_dir.iterdir()} <= written or (hydra_dir.is_dir() and not {p.name for p in hydra_dir.iterdir()} <= set(HYDRA_FILES)):
            return
    except OSError:
        return
    for name in [*(f".hydra/{file}" for file in HYDRA_FILES), log_file, SETTINGS_FILE, "metrics.jsonl"]:
        (run_dir / name).unlink(missing_ok=True)
    cwd = Path.cwd().resolve()
    folders = [hydra_dir, run_dir.resolve()] + [parent for parent in run_dir.resolve().parents if cwd in parent.parents]
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:  # not empty: not ours alone
            return
