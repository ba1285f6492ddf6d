"""Runs -> one section per task -> one row per variant (variants.py), each column a mean ± std over seeds,
each row's 95% interval, the comparisons of rows, and the best marked only where its lead is detected
(comparisons.py).

The std is the sample standard deviation (n - 1) over the seeds of a row, shown when n > 1; n counts the
runs with a value. A row is bold in a ranked column only when its lead over every other row is detected
(`A better` against each); columns whose `better` is None (best epoch, parameters, diagnostics) are not ranked.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from s18exp.report import comparisons, variants
from s18exp.report.collect import Run
from s18exp.report.spec import COMMON_TAIL, Column, TaskSpec, generic_spec
from s18exp.report.stats import MIN_EFFECT


@dataclass
class Cell:
    mean: float
    std: float  # NaN when n < 2
    n: int
    best: bool = False
    ci: tuple[float, float] | None = None  # the 95% interval of the mean (comparisons.py); None: not measurable

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
    settings: dict[str, str] = field(default_factory=dict)  # the differing config keys -> this row's values


@dataclass
class Section:
    task: str
    spec: TaskSpec
    columns: tuple[Column, ...]
    rows: list[Row]
    incomplete: list[Run]
    settings: dict[str, str]  # what every run shares: label -> value
    varying: list[str] = field(default_factory=list)  # the config keys the rows differ in
    stats: comparisons.SectionStats = field(default_factory=comparisons.SectionStats)

    @property
    def complete_runs(self) -> list[Run]:
        return [run for row in self.rows for run in row.runs]

    @property
    def named_by_combo(self) -> bool:
        """Whether the rows' labels are their combos alone."""
        return all(row.label == str(row.runs[0].identity.get("combo")) for row in self.rows)


def build_sections(runs: list[Run], baseline: str | None = None, min_effect: float = MIN_EFFECT) -> list[Section]:
    """One section per task, in order of first appearance; rows in order of first appearance."""
    tasks: list[str] = []
    for run in runs:
        if run.task not in tasks:
            tasks.append(run.task)
    return [_section(task, [r for r in runs if r.task == task], baseline, min_effect) for task in tasks]


def _section(task: str, runs: list[Run], baseline: str | None, min_effect: float) -> Section:
    """The section of one task's runs, as the TaskSpec that its first complete run wrote describes it (any run's, when no complete run wrote one)."""
    complete = [r for r in runs if r.complete]
    written = next((r.spec for r in [*complete, *runs] if r.spec is not None), None)
    spec = written or generic_spec(task)
    found, varying = variants.variants(complete, spec)
    columns = (*(spec.columns if written else _test_columns(complete)), *COMMON_TAIL)
    rows = []
    for variant in found:
        variant.runs.sort(key=lambda r: (str(r.identity.get("seed")), str(r.path)))
        row = Row(variant.label, {k: variant.runs[0].identity.get(k) for k in spec.identity}, variant.runs, settings=variant.settings)
        row.cells = {c.key: Cell.of([r.value(c.key) for r in row.runs]) for c in columns}
        rows.append(row)
    stats = comparisons.section_stats(
        [row.label for row in rows], [row.runs for row in rows], columns, spec.item_metrics, spec.required, baseline, min_effect
    )
    for column in columns:
        for i, (row, estimate) in enumerate(zip(rows, stats.estimates[column.key])):
            row.cells[column.key].ci = estimate.ci
            row.cells[column.key].best = stats.best.get(column.key) == i
    settings = variants.common_settings(complete or runs, spec, varying)
    return Section(task, spec, columns, rows, [r for r in runs if not r.complete], settings, varying, stats)


def _test_columns(runs: list[Run]) -> tuple[Column, ...]:
    """One unranked column per numeric `test/*` key of the summaries, for runs that wrote no TaskSpec."""
    keys: list[str] = []
    for run in runs:
        for key, value in (run.summary or {}).items():
            if key.startswith("test/") and isinstance(value, (int, float)) and key not in keys:
                keys.append(key)
    return tuple(Column(k, k.removeprefix("test/"), None) for k in keys)


def header(section: Section) -> list[str]:
    """Column titles of the table: the row's label, its identity fields, n, the metric columns (and after each
    headline metric, its 95% interval)."""
    first = "combo" if section.named_by_combo else "variant"
    metrics = []
    for column in section.columns:
        metrics.append(column.label)
        if _headline(section, column):
            metrics.append("95% CI")
    return [first, *_identity_fields(section), "n", *metrics]


def cells(section: Section, row: Row) -> list[tuple[str, bool]]:
    """(text, is best) for every column of `header`, for one row."""
    out: list[tuple[str, bool]] = [(row.label, False)]
    out += [(str(row.identity.get(k)), False) for k in _identity_fields(section)]
    out.append((str(len(row.runs)), False))
    for column in section.columns:
        cell = row.cells[column.key]
        out.append((cell.text(column.kind), cell.best))
        if _headline(section, column):
            out.append((interval_text(cell.ci), False))
    return out


def metric_columns(section: Section) -> int:
    """How many columns of `header` hold numbers after `n` (for alignment)."""
    return len(header(section)) - len(_identity_fields(section)) - 2


def interval_text(ci: tuple[float, float] | None, digits: int = 3) -> str:
    return "–" if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _headline(section: Section, column: Column) -> bool:
    return any(key == column.key for key, _, _ in section.stats.compared)


def _identity_fields(section: Section) -> tuple[str, ...]:
    return tuple(k for k in section.spec.identity if k != "combo")
