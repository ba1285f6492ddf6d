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


def log_config(cfg: DictConfig) -> None:
    """The resolved config as YAML into the log file only: the terminal shows the run's header instead
    (`python -m s18exp --cfg job` prints the whole config without running)."""
    log.info("resolved config:\n%s", OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))


def show_header(title: str, details: list[str]) -> None:
    """What a run is, before it starts: `title` on one line, then each of `details` indented under it."""
    info(title, markup=False)
    for line in details:
        info(f"  {line}", markup=False)  # paths and overrides may hold brackets: text, not rich styles


def duration(seconds: float) -> str:
    """Seconds as a person reads them: `42s`, `8m03s`, `1h05m`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class RunClock:
    """The time a run has taken and what is left of it, from the share of its epochs done since it started
    (this process's epochs only: a resumed run estimates from its own pace, not from the stopped run's).
    Validation and checkpoints fall between epochs, so the pace of whole epochs includes them."""

    def __init__(self, epochs_before: float, max_epochs: int) -> None:
        self.start = time.perf_counter()
        self.before = epochs_before
        self.total = max_epochs

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self, epochs_done: float) -> float | None:
        """Seconds left until `max_epochs` at the pace so far; None before any progress."""
        progress = epochs_done - self.before
        if progress <= 0:
            return None
        return self.elapsed() / progress * max(self.total - epochs_done, 0.0)

    def text(self, epochs_done: float) -> str:
        left = self.remaining(epochs_done)
        return f"run {duration(self.elapsed())}, ETA {duration(left) if left is not None else '?'}"


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
    """Progress of one epoch, with the running train loss once there is one and, given the run's `clock`, the
    run's elapsed time and the ETA of the whole run (else the epoch's own time left)."""

    def __init__(self, epoch: int, max_epochs: int, total_items: int, style: str = "auto", clock: RunClock | None = None) -> None:
        super().__init__(f"epoch {epoch}/{max_epochs}", total_items, style)
        self.epoch = epoch
        self.clock = clock
        self.loss = math.nan

    def _columns(self) -> list[Any]:
        timing = TextColumn("{task.fields[clock]}") if self.clock else TimeRemainingColumn()
        return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} img/s{task.fields[loss]}"), timing]

    def _fields(self) -> dict[str, Any]:
        return {"rate": self.images_per_second(), "loss": self._loss_text(), "clock": self._clock_text()}

    def _loss_text(self) -> str:
        return "" if math.isnan(self.loss) else f"  loss {self.loss:.4f}"

    def _clock_text(self) -> str:
        if self.clock is None:
            return ""
        return self.clock.text(self.epoch - 1 + self.done / max(self.total, 1))

    def _plain_line(self) -> str:
        clock = self._clock_text()
        return f"{super()._plain_line()}{self._loss_text()}" + (f"  {clock}" if clock else "")

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
