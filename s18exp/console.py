"""What a run shows on the terminal (rich) and writes to Hydra's log file in the run dir.

Every line shown is also sent to the `s18exp` logger, which Hydra routes to `<run dir>/<job>.log`.
On a terminal an epoch is a live progress bar; elsewhere (CI logs, pipes) it is plain lines.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.tree import Tree

log = logging.getLogger("s18exp")
console = Console(highlight=False, soft_wrap=True)
PLAIN_LINE_EVERY_S = 30.0
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence the terminal (the log file still gets every line): for ranks other than 0 under torchrun."""
    global _quiet
    _quiet = quiet


def show_config(cfg: DictConfig) -> None:
    """The resolved config as a tree (the log file gets it as YAML)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    tree = Tree("[bold]config")
    _add_branches(tree, container)
    if not _quiet:
        console.print(tree)
    log.info("resolved config:\n%s", OmegaConf.to_yaml(container))


def _add_branches(tree: Tree, node: Any) -> None:
    for key, value in node.items():
        if isinstance(value, dict):
            _add_branches(tree.add(f"[bold]{key}"), value)
        else:
            tree.add(f"{key}: [cyan]{value}")


def info(message: str) -> None:
    """One line on the terminal and in the log file."""
    if not _quiet:
        console.print(message)
    log.info(message)


def warn(message: str) -> None:
    if not _quiet:
        console.print(f"[yellow]warning:[/] {message}")
    log.warning(message)


class EpochProgress:
    """Progress of one epoch: a rich bar on a terminal, else a plain line every PLAIN_LINE_EVERY_S seconds;
    nothing with style "off"."""

    def __init__(self, epoch: int, max_epochs: int, total_items: int, style: str = "auto") -> None:
        self.title = f"epoch {epoch}/{max_epochs}"
        self.total = total_items
        self.bar = style == "bar" or (style == "auto" and console.is_terminal)
        self.silent = style == "off" or _quiet
        self.done = 0
        self.start = time.perf_counter()
        self.last_line = self.start
        self.loss = math.nan

    def __enter__(self) -> "EpochProgress":
        if self.bar:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} img/s  loss {task.fields[loss]:.4f}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.title, total=self.total, rate=0.0, loss=math.nan)
        return self

    def images_per_second(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def advance(self, items: int, loss: float | None = None) -> None:
        """Count `items` more; `loss`, when given, is the running train loss to show."""
        self.done += items
        if loss is not None:
            self.loss = loss
        if self.bar:
            self.progress.update(self.task, advance=items, rate=self.images_per_second(), loss=self.loss)
        elif not self.silent and time.perf_counter() - self.last_line > PLAIN_LINE_EVERY_S:
            self.last_line = time.perf_counter()
            info(f"{self.title}  {self.done}/{self.total}  {self.images_per_second():.1f} img/s  loss {self.loss:.4f}")

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.progress.stop()


def format_metrics(metrics: dict[str, Any], keys: list[str]) -> str:
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float)))


def show_metrics(title: str, metrics: dict[str, float]) -> None:
    """A two-column table of metric name and value."""
    log.info("%s: %s", title, metrics)
    if _quiet:
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def error(message: str) -> None:
    """A one-line error on stderr and in the log file."""
    print(f"error: {message}", file=sys.stderr)
    log.error(message)
