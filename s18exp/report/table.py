"""Runs -> one section per task -> one row per combo, each column a mean ± std over seeds, the best marked.

The std is the sample standard deviation (n - 1) over the seeds of a combo, shown when n > 1; n counts
the runs with a value. The best mean of each ranked column is marked when at least two rows compete
(ties all marked); columns whose `better` is None (best epoch, parameters, diagnostics) are not ranked.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from s18exp.report.collect import Run, config_value
from s18exp.report.spec import COMMON_TAIL, Column, TaskSpec, generic_spec

# Settings shown above each table, read from the runs' configs (values that differ show as "mixed").
SETTINGS = (
    ("data", "data.name"),
    ("image size", "data.image_size"),
    ("epochs", "trainer.max_epochs"),
    ("batch", "trainer.batch_size"),
    ("lr", "trainer.lr"),
    ("width", "model.width"),
    ("depth", "model.depth"),
    ("block", "model.block"),
    ("latent", "model.latent_dim"),
    ("limit train", "data.limit_train"),
    ("limit val", "data.limit_val"),
    ("limit test", "data.limit_test"),
    ("augment", "augment.name"),
    ("train crop", "augment.crop_size"),
    ("weight EMA", "trainer.ema_decay"),
)
# What a run whose config lacks the key used, where other runs of the section set it ("off" for other keys):
# runs from before `model.block` existed used the plain block.
UNSET_MEANS = {"model.block": "double"}


@dataclass
class Cell:
    mean: float
    std: float  # NaN when n < 2
    n: int
    best: bool = False

    @classmethod
    def of(cls, values: list[float]) -> "Cell":
        present = [v for v in values if not math.isnan(v)]
        if not present:
            return cls(math.nan, math.nan, 0)
        std = statistics.stdev(present) if len(present) > 1 else math.nan
        return cls(statistics.fmean(present), std, len(present))

    def text(self, kind: str) -> str:
        if self.n == 0:
            return "–"
        digits = {"score": 3, "epoch": 1, "seconds": 0, "count": 0}[kind]
        if kind == "epoch" and (self.n == 1 or self.std == 0) and float(self.mean).is_integer():
            digits = 0
        main = f"{self.mean:,.{digits}f}"
        if self.n > 1 and not math.isnan(self.std) and not (kind in ("count", "epoch") and self.std == 0):
            return f"{main} ± {self.std:,.{digits}f}"
        return main


@dataclass
class Row:
    label: str
    identity: dict[str, Any]
    runs: list[Run]
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def seeds(self) -> list[Any]:
        return [r.identity.get("seed") for r in self.runs]


@dataclass
class Section:
    task: str
    spec: TaskSpec
    columns: tuple[Column, ...]
    rows: list[Row]
    incomplete: list[Run]
    settings: dict[str, str]

    @property
    def complete_runs(self) -> list[Run]:
        return [run for row in self.rows for run in row.runs]


def _name_rows(spec: TaskSpec, rows: list[Row]) -> None:
    """A row's name is its runs' combo (mp_tr_bce, vae_mnist_both_mp_tr); where two rows share a combo, or
    it is missing, the identity fields joined."""
    combos = [str(row.runs[0].identity.get("combo") or "") for row in rows]
    for row, combo in zip(rows, combos):
        if combo and combos.count(combo) == 1:
            row.label = combo
        else:
            row.label = "-".join(str(row.identity.get(k)) for k in spec.identity)


def build_sections(runs: list[Run]) -> list[Section]:
    """One section per task, in order of first appearance; rows in order of first appearance."""
    tasks: list[str] = []
    for run in runs:
        if run.task not in tasks:
            tasks.append(run.task)
    return [_section(task, [r for r in runs if r.task == task]) for task in tasks]


def _section(task: str, runs: list[Run]) -> Section:
    """The section of one task's runs, as the TaskSpec that its first complete run wrote describes it (any run's, when no complete run wrote one)."""
    complete = [r for r in runs if r.complete]
    written = next((r.spec for r in [*complete, *runs] if r.spec is not None), None)
    spec = written or generic_spec(task)
    rows: dict[tuple, Row] = {}
    for run in complete:
        key = tuple(str(run.identity.get(k)) for k in spec.identity)
        if key not in rows:
            rows[key] = Row("", {k: run.identity.get(k) for k in spec.identity}, [])
        rows[key].runs.append(run)
    columns = (*(spec.columns if written else _test_columns(complete)), *COMMON_TAIL)
    for row in rows.values():
        row.runs.sort(key=lambda r: (str(r.identity.get("seed")), str(r.path)))
        row.cells = {c.key: Cell.of([r.value(c.key) for r in row.runs]) for c in columns}
    ordered = list(rows.values())
    _name_rows(spec, ordered)
    _mark_best(ordered, columns)
    return Section(task, spec, columns, ordered, [r for r in runs if not r.complete], _settings(complete or runs))


def _test_columns(runs: list[Run]) -> tuple[Column, ...]:
    """One unranked column per numeric `test/*` key of the summaries, for runs that wrote no TaskSpec."""
    keys: list[str] = []
    for run in runs:
        for key, value in (run.summary or {}).items():
            if key.startswith("test/") and isinstance(value, (int, float)) and key not in keys:
                keys.append(key)
    return tuple(Column(k, k.removeprefix("test/"), None) for k in keys)


def _mark_best(rows: list[Row], columns: tuple[Column, ...]) -> None:
    for column in columns:
        if column.better is None:
            continue
        candidates = [row.cells[column.key] for row in rows if row.cells[column.key].n > 0]
        if len(candidates) < 2:
            continue
        pick = max if column.better == "max" else min
        best = pick(cell.mean for cell in candidates)
        for cell in candidates:
            cell.best = cell.mean == best


def _settings(runs: list[Run]) -> dict[str, str]:
    settings: dict[str, str] = {}
    for label, key in SETTINGS:
        values = Counter(str(config_value(r.config, key)) for r in runs if r.config is not None)
        unset = values.pop("None", 0)
        if values and unset:  # some runs use the setting and some do not
            values[UNSET_MEANS.get(key, "off")] += unset
        if values:
            settings[label] = next(iter(values)) if len(values) == 1 else "mixed (" + ", ".join(sorted(values)) + ")"
    return settings


def header(section: Section) -> list[str]:
    """Column titles of the table: the combo, its identity fields, n, then the metric columns."""
    return ["combo", *_identity_fields(section), "n", *(c.label for c in section.columns)]


def cells(section: Section, row: Row) -> list[tuple[str, bool]]:
    """(text, is best) for every column of `header`, for one row."""
    out: list[tuple[str, bool]] = [(row.label, False)]
    out += [(str(row.identity.get(k)), False) for k in _identity_fields(section)]
    out.append((str(len(row.runs)), False))
    out += [(row.cells[c.key].text(c.kind), row.cells[c.key].best) for c in section.columns]
    return out


def _identity_fields(section: Section) -> tuple[str, ...]:
    return tuple(k for k in section.spec.identity if k != "combo")
