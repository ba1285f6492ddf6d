"""What a training run shows on the terminal besides its epochs: the header before it starts and the closing
line after it ends (s18exp/run.py calls both; s18exp/console.py draws them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from s18exp import console
from s18exp.model_summary import Totals
from s18exp.report.spec import TaskSpec
from s18exp.runtime import Runtime


def show_header(
    cfg: DictConfig, identity: dict[str, Any], combo_keys: tuple[str, ...], sizes: Totals, data: Any, runtime: Runtime,
    run_dir: Path, sweep_job: str | None,
) -> None:
    """What the run is, before it starts: a few lines for a single run, one line for a job of a sweep."""
    items = f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test items"
    threads = torch.get_num_threads()
    where = f"{runtime.device} {runtime.precision}" + (f", {threads} thread{'s' if threads > 1 else ''}" if runtime.device.type == "cpu" else "")
    where += f", {runtime.dist.world_size} ranks" if runtime.dist.enabled else ""
    if sweep_job is not None:
        console.info(f"{sweep_job}{cfg.run_name}: {sizes.params:,} parameters, {items}, {where}, run dir {run_dir}", markup=False)
        return
    combo = ", ".join(f"{key} {identity[key]}" for key in combo_keys)
    console.show_header(
        f"{identity['task']} {cfg.run_name} ({combo}, seed {identity['seed']})",
        [f"model: {sizes.line()}", f"data: {items}, {cfg.trainer.max_epochs} epochs", f"device: {where}", f"run dir: {run_dir}"],
    )


def closing_line(summary: dict[str, Any], spec: TaskSpec, run_dir: Path, seconds: float) -> str:
    """The last line of a run: how long it took, its headline score and where everything is."""
    headline = spec.headline()
    value = summary.get(headline[0]) if headline else None
    score = f"{headline[1]} {value:.3f}, " if isinstance(value, (int, float)) else ""
    return f"done in {console.duration(seconds)}: {score}run dir {run_dir}"
