"""How a stopped run is continued, as its user sees it: the exact command that continues a run stopped by a
signal, and, when the same command is run again without naming a dir, the interrupted run it could continue.

A rerun of a plain `python -m s18exp ...` gets a new timestamped run dir, so it cannot continue by itself;
continuing needs `hydra.run.dir=<the stopped run's dir>` (`hydra.sweep.dir=` for a sweep or a search). So an
interrupted command prints that command, and a fresh single run whose settings match an interrupted run dir
under `outputs/` names that dir and its command in one line, then trains afresh as asked: starting
over is what was typed, and continuing is one copy and paste away.
"""

from __future__ import annotations

import json
import os
import shlex
from glob import escape
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from s18exp.run_settings import SETTINGS_FILE, differences, settings_of


def resume_command(argv: list[str], dir_key: str, run_dir: Path) -> str:
    """The command line that continues a stopped command: its own arguments `argv` (as typed, less any
    `dir_key=`), then `dir_key=run_dir` (relative to the working directory when inside it); quoted for a
    POSIX shell."""
    if Path.cwd().resolve() in run_dir.resolve().parents:
        run_dir = run_dir.resolve().relative_to(Path.cwd().resolve())
    kept = [arg for arg in argv if not arg.startswith(f"{dir_key}=")]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = ["torchrun", f"--nproc_per_node={world}", "-m", "s18exp"] if world > 1 else ["python", "-m", "s18exp"]
    return shlex.join([*launcher, *kept, f"{dir_key}={run_dir}"])


def interrupted_twin(cfg: DictConfig, outputs: Path) -> tuple[Path, object] | None:
    """The latest run dir `outputs/<date>/<time>_<run name>` of `cfg`'s run name whose summary.json says it
    was interrupted and whose settings.json holds the same settings as `cfg` (a job config without its
    `hydra` node), with the epochs it completed; None when there is none."""
    name = str(OmegaConf.select(cfg, "run_name"))
    found = []
    for run_dir in outputs.glob(f"*/*_{escape(name)}"):
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
            recorded = json.loads((run_dir / SETTINGS_FILE).read_text())["settings"]
            stamp = (run_dir / "summary.json").stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(summary, dict) and summary.get("status") == "interrupted" and isinstance(recorded, dict):
            found.append((stamp, run_dir, recorded, summary.get("epochs_completed", "?")))
    lr_auto = OmegaConf.select(cfg, "trainer.lr") == "auto"
    now = settings_of(cfg)
    for _, run_dir, recorded, epochs in sorted(found, key=lambda item: item[0], reverse=True):
        if not differences(recorded, now, lr_auto):
            return run_dir, epochs
    return None
