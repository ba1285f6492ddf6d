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
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.tree import Tree

log = logging.getLogger("s18exp")
# Without a handler of its own, a command that configures no logging (predict, generate) would have Python
# print every warning and error a second time on stderr; Hydra's handlers still get every line.
log.addHandler(logging.NullHandler())
console = Console(highlight=False, soft_wrap=True)
PLAIN_LINE_EVERY_S = 30.0
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence the terminal (the log file still gets every line): for ranks other than 0 under torchrun."""
    global _quiet
    _quiet = quiet


def show_config(cfg: DictConfig, on_terminal: bool = True) -> None:
    """The resolved config as a tree on the terminal when `on_terminal`; the log file always gets it as YAML."""
    container = OmegaConf.to_container(cfg, resolve=True)
    tree = Tree("[bold]config")
    _add_branches(tree, container)
    if on_terminal and not _quiet:
        console.print(tree)
    log.info("resolved config:\n%s", OmegaConf.to_yaml(container))


def _add_branches(tree: Tree, node: Any) -> None:
    for key, value in node.items():
        if isinstance(value, dict):
            _add_branches(tree.add(f"[bold]{key}"), value)
        else:
            tree.add(f"{key}: [cyan]{value}")


def info(message: str, markup: bool = True) -> None:
    """One line on the terminal and in the log file; `markup=False`: square brackets are text, not rich styles."""
    if not _quiet:
        console.print(message, markup=markup)
    log.info(message)


def warn(message: str) -> None:
    if not _quiet:
        console.print(f"[yellow]warning:[/] {message}")
    log.warning(message)


class Progress:
    """Progress over `total_items`: a rich bar on a terminal, else a plain line every PLAIN_LINE_EVERY_S
    seconds; nothing with style "off"."""

    def __init__(self, title: str, total_items: int, style: str = "auto") -> None:
        self.title = title
        self.total = total_items
        self.bar = style == "bar" or (style == "auto" and console.is_terminal)
        self.silent = style == "off" or _quiet
        self.done = 0
        self.start = time.perf_counter()
        self.last_line = self.start

    def _columns(self) -> list[Any]:
        return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} img/s"), TimeRemainingColumn()]

    def _fields(self) -> dict[str, Any]:
        return {"rate": self.images_per_second()}

    def _plain_line(self) -> str:
        return f"{self.title}  {self.done}/{self.total}  {self.images_per_second():.1f} img/s"

    def __enter__(self) -> "Progress":
        if self.bar:
            self.progress = RichProgress(*self._columns(), console=console, transient=True)
            self.progress.start()
            self.task = self.progress.add_task(self.title, total=self.total, **self._fields())
        return self

    def images_per_second(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def advance(self, items: int) -> None:
        self.done += items
        if self.bar:
            self.progress.update(self.task, advance=items, **self._fields())
        elif not self.silent and time.perf_counter() - self.last_line > PLAIN_LINE_EVERY_S:
            self.last_line = time.perf_counter()
            info(self._plain_line())

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.progress.stop()


class EpochProgress(Progress):
    """Progress of one epoch, with the running train loss."""

    def __init__(self, epoch: int, max_epochs: int, total_items: int, style: str = "auto") -> None:
        super().__init__(f"epoch {epoch}/{max_epochs}", total_items, style)
        self.loss = math.nan

    def _columns(self) -> list[Any]:
        return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} img/s  loss {task.fields[loss]:.4f}"), TimeRemainingColumn()]

    def _fields(self) -> dict[str, Any]:
        return {"rate": self.images_per_second(), "loss": self.loss}

    def _plain_line(self) -> str:
        return f"{super()._plain_line()}  loss {self.loss:.4f}"

    def advance(self, items: int, loss: float | None = None) -> None:
        """Count `items` more; `loss`, when given, is the running train loss to show."""
        if loss is not None:
            self.loss = loss
        super().advance(items)


def format_metrics(metrics: dict[str, Any], keys: list[str]) -> str:
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float)))


def show_metrics(title: str, metrics: dict[str, float], one_line: bool = False) -> None:
    """A two-column table of metric name and value, or with `one_line` the title and the values on one line."""
    log.info("%s: %s", title, metrics)
    if _quiet:
        return
    if one_line:
        console.print(f"{title}: {format_metrics(metrics, list(metrics))}")
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
