"""What the report shows of a task's runs, and how a run hands that to the report.

Each task describes its own section (`TaskSpec`: identity fields, table columns, curves, bars, pictures,
W&B keys; see `report_spec` in s18exp/tasks/), and every complete run writes that description into its
summary.json under `SUMMARY_BLOCK`, so that the report reads a task's metric keys, file names and class names
from the run dirs alone. A run without that block (a task that does not describe itself, a summary.json
written by hand or by an older s18exp) still gets a table of its numeric `test/*` summary keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SUMMARY_BLOCK = "report"  # the key of summary.json that holds the run's TaskSpec


KINDS = ("score", "epoch", "seconds", "count")


@dataclass(frozen=True)
class Column:
    key: str  # key in summary.json
    label: str
    better: str | None  # "max", "min" or None (not ranked)
    kind: str = "score"  # score (3 decimals) | epoch | seconds | count

    def __post_init__(self) -> None:  # a spec read from a summary.json is checked like any foreign data
        _texts(self.key, self.label)
        if self.better not in (None, "max", "min") or self.kind not in KINDS:
            raise ValueError(f"column {self.key}: better {self.better!r} or kind {self.kind!r} is unknown")


def _texts(*values: object) -> None:
    """A TypeError unless every value is a string."""
    if not all(isinstance(value, str) for value in values):
        raise TypeError(f"expected strings, got {[type(value).__name__ for value in values]}")


# How an ItemMetric recomputes a summary score from the per-item arrays of test_items.npz (s18exp/test_items.py):
#   miou      the mean over classes of IoU from the summed (N, C, C) confusion counts of the items, a class absent
#             from both truth and prediction left out (as s18exp.metrics.segmentation_scores)
#   mean      the mean of an (N,) array of booleans or numbers, or of one named column of an (N, R) array
#   min_mean  the smallest of the column means of the named columns of an (N, R) array
ITEM_STATS = ("miou", "mean", "min_mean")


@dataclass(frozen=True)
class ItemMetric:
    """A summary score that test_items.npz can recompute for any subset of the test items: the report's
    statistics resample the items through it."""

    key: str  # the summary.json key it reproduces, e.g. test/miou
    label: str
    better: str  # "max" or "min"
    stat: str  # one of ITEM_STATS
    array: str  # the test_items.npz array it reads
    columns: tuple[str, ...] = ()  # of a 2-D array: the columns it uses, by name (mean: one; min_mean: one or more)
    column_names: str = ""  # the test_items.npz array that names a 2-D array's columns, e.g. readers

    def __post_init__(self) -> None:
        _texts(self.key, self.label, self.array, self.column_names, *self.columns)
        if self.stat not in ITEM_STATS:
            raise ValueError(f"item metric {self.key}: stat {self.stat!r} is not one of {', '.join(ITEM_STATS)}")
        if self.better not in ("max", "min"):
            raise ValueError(f"item metric {self.key}: better {self.better!r} is not max or min")
        allowed = {"miou": (0,), "mean": (0, 1), "min_mean": range(1, 1 << 16)}[self.stat]
        if len(self.columns) not in allowed or bool(self.columns) != bool(self.column_names):
            raise ValueError(f"item metric {self.key}: {len(self.columns)} named columns do not suit {self.stat}, or their names' array is missing")


@dataclass(frozen=True)
class Curve:
    key: str  # key in metrics.jsonl
    label: str
    style: str = "-"  # matplotlib line style


@dataclass(frozen=True)
class CurvePanel:
    title: str
    curves: tuple[Curve, ...]
    log_y: bool = False


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    identity: tuple[str, ...]  # the fields that make a combo: the table's columns beside a row's label
    required: str  # a summary key without which a run is not complete
    columns: tuple[Column, ...]  # the task's own; every section ends with COMMON_TAIL
    curve_panels: tuple[CurvePanel, ...]
    bars_title: str
    bar_keys: tuple[tuple[str, str], ...]  # (summary key, label) of the bar chart
    picture: str  # the run's picture (a file of the run dir) shown side by side, one seed per row
    picture_columns: int  # columns of equal width in that picture (0: show it whole)
    picture_shared: int  # leading columns that are the same for every run (shown once); the rest per row
    picture_scores: tuple[tuple[str, str], ...]  # (summary key, short label) written above each picture
    wandb_lines: tuple[tuple[str, tuple[str, ...]], ...]  # (title, metric keys) of W&B line plots
    wandb_bars: tuple[tuple[str, tuple[str, ...]], ...]  # (title, summary keys) of W&B bar plots
    wandb_media: tuple[str, ...]  # keys of logged images
    notes: tuple[str, ...] = field(default_factory=tuple)
    time_curve: Curve | None = None  # the metric drawn against cumulative training seconds (time to quality)
    # Classes whose colours the picture's legend names (s18exp.pictures.with_legend); the report takes it off
    # each run's picture before splitting it into columns and draws it once under the figure.
    picture_legend: tuple[str, ...] = ()
    # The summary scores that the run's test_items.npz recomputes; the first is the task's headline. The report's
    # intervals and verdicts come from them (an empty tuple: from the seeds alone, for `required`).
    item_metrics: tuple[ItemMetric, ...] = ()
    # (label, config key) of the settings that the line above the task's table names when every run shares them.
    settings: tuple[tuple[str, str], ...] = ()

    def headline(self) -> tuple[str, str] | None:
        """(summary key, label) of the task's headline score: the first score written over its pictures (UNet:
        test mIoU; VAE: label follow), else the required key, labelled as in the task's table."""
        labels = {column.key: column.label for column in self.columns}
        key = self.picture_scores[0][0] if self.picture_scores else self.required
        return (key, labels.get(key, key)) if key else None

    def as_dict(self) -> dict[str, Any]:
        """The spec as plain JSON values, for summary.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, block: dict[str, Any]) -> TaskSpec:
        """The spec that `as_dict` wrote (JSON has turned its tuples into lists); a KeyError, TypeError or
        ValueError when `block` is not one. Specs written before a field existed get its default."""
        time_curve = block.get("time_curve")
        return cls(
            name=str(block["name"]),
            title=str(block["title"]),
            identity=tuple(block["identity"]),
            required=str(block["required"]),
            columns=tuple(Column(**column) for column in block["columns"]),
            curve_panels=tuple(
                CurvePanel(panel["title"], tuple(Curve(**curve) for curve in panel["curves"]), bool(panel.get("log_y", False)))
                for panel in block["curve_panels"]
            ),
            bars_title=str(block["bars_title"]),
            bar_keys=_pairs(block["bar_keys"]),
            picture=str(block["picture"]),
            picture_columns=int(block["picture_columns"]),
            picture_shared=int(block["picture_shared"]),
            picture_scores=_pairs(block["picture_scores"]),
            wandb_lines=_groups(block["wandb_lines"]),
            wandb_bars=_groups(block["wandb_bars"]),
            wandb_media=tuple(block["wandb_media"]),
            notes=tuple(block.get("notes", ())),
            time_curve=Curve(**time_curve) if time_curve is not None else None,
            picture_legend=tuple(block.get("picture_legend", ())),
            item_metrics=tuple(
                ItemMetric(**{**metric, "columns": tuple(metric.get("columns", ()))}) for metric in block.get("item_metrics", ())
            ),
            settings=_pairs(block.get("settings", ())),
        )


def _pairs(items: list[Any]) -> tuple[tuple[str, str], ...]:
    return tuple((str(key), str(label)) for key, label in items)


def _groups(items: list[Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((str(title), tuple(keys)) for title, keys in items)


def spec_in(summary: dict[str, Any] | None) -> TaskSpec | None:
    """The TaskSpec a run wrote into its summary.json; None when there is none or it is not one."""
    block = (summary or {}).get(SUMMARY_BLOCK)
    if not isinstance(block, dict):
        return None
    try:
        return TaskSpec.from_dict(block)
    except (KeyError, TypeError, ValueError):
        return None


# The columns every run has, whatever its task (s18exp.run writes them), after the task's own.
COMMON_TAIL = (
    Column("best_epoch", "best epoch", None, "epoch"),
    Column("train_seconds", "train time (s)", "min", "seconds"),
    Column("params", "params", None, "count"),
)


def generic_spec(task: str) -> TaskSpec:
    """The section of a task whose runs carry no TaskSpec: columns filled in from the summaries."""
    return TaskSpec(
        name=task, title=f"task {task}", identity=("combo",), required="", columns=(),
        curve_panels=(CurvePanel("loss (train solid, val dashed)", (Curve("train/loss", "train"), Curve("val/loss", "val", "--"))),),
        bars_title="", bar_keys=(), picture="", picture_columns=0, picture_shared=0, picture_scores=(), wandb_lines=(("train and validation loss", ("train/loss", "val/loss")),),
        wandb_bars=(), wandb_media=(),
    )
