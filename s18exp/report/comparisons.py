"""The statistics of one task's section (the method: stats.py): each row's interval in every column, the
comparisons of rows on the headline metrics, and the row, if any, whose lead in a column is detected.

The headline metrics are the task's item metrics (TaskSpec `item_metrics`), recomputed from each run's
test_items.npz; a run without a usable file (an older run, a damaged file, other test items than the other
runs', a file that does not give the run's own summary score) leaves its row to the seeds alone, and the
section's notes say which and why. A task without item metrics is compared on its `required` score, from
the seeds. Every other ranked column is compared from the seeds too, for the bold mark only.

Comparisons are every pair of rows (A the earlier row), or each row against `baseline` (A the row, B the
baseline) when it names a row of the section. The forest plot shows each row against the baseline, the first
row when none is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from s18exp.report import stats
from s18exp.report.collect import Run
from s18exp.report.spec import Column, ItemMetric
from s18exp.report.stats import Difference, Estimate, Sample

NAMES = "names"  # the test_items.npz array naming the items, which pairs them between runs
SCORE_TOLERANCE = 1e-6  # between a summary score and the same score recomputed from test_items.npz


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    metric: str  # summary key
    label: str
    difference: Difference
    seeds: int | None = None  # per row, to find a gap of the observed size (or min_effect); no verdict only
    seeds_note: str = ""  # why there is no such number


@dataclass
class SectionStats:
    estimates: dict[str, list[Estimate]] = field(default_factory=dict)  # column key -> one per row
    best: dict[str, int] = field(default_factory=dict)  # column key -> the row whose lead is detected
    comparisons: list[Comparison] = field(default_factory=list)
    forest: dict[str, list[Comparison]] = field(default_factory=dict)  # metric -> each row against the baseline
    baseline: str | None = None  # the forest's B, and the comparisons' when `against_baseline`
    against_baseline: bool = False
    min_effect: float = stats.MIN_EFFECT
    compared: tuple[tuple[str, str, str], ...] = ()  # (key, label, better) of the headline metrics
    items: dict[str, int] = field(default_factory=dict)  # metric key -> paired test items (0: from the seeds alone)
    notes: list[str] = field(default_factory=list)


def _finite(values: list[float]) -> np.ndarray:
    return np.array([v for v in values if math.isfinite(v)], dtype=np.float64)


def _seed_samples(rows: list[list[Run]], key: str) -> list[Sample]:
    return [Sample(_finite([run.value(key) for run in runs])) for runs in rows]


def _features(metric: ItemMetric, run: Run) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(item names, features, "") of a run's test items for `metric`, or (None, None, why not)."""
    if run.items is None:
        return None, None, run.items_problem or "no test_items.npz"
    names = run.items.get(NAMES)
    try:
        features = stats.features(metric, run.items)
    except ValueError as exc:
        return None, None, f"test_items.npz: {exc}"
    if names is None or names.shape != (len(features),):
        return None, None, f"test_items.npz has no {NAMES!r} for its {len(features)} items"
    recomputed, written = stats.whole_split(metric.stat, features), run.value(metric.key)
    if not (abs(recomputed - written) <= SCORE_TOLERANCE):
        return None, None, f"test_items.npz gives {metric.key} {recomputed:.6f}, summary.json {written:.6f}"
    return names.astype(str), features, ""


def _item_samples(metric: ItemMetric, rows: list[list[Run]], notes: list[str]) -> tuple[list[Sample], int]:
    """Samples with item replicates for the rows whose every run has usable items for `metric` (paired: the
    same items, in the order of the first usable run's), from the seeds alone for the other rows; the number
    of paired items (0: none)."""
    usable: dict[int, np.ndarray] = {}
    reference: np.ndarray | None = None
    unusable: dict[str, list[str]] = {}  # why -> the runs
    for run in (run for runs in rows for run in runs):
        names, features, problem = _features(metric, run)
        if names is not None and len(set(names)) < len(names):
            names, problem = None, "test_items.npz names an item twice"
        if names is not None and reference is None:
            reference = names
        if names is not None and (len(names) != len(reference) or set(names) != set(reference)):
            names, problem = None, "other test items than the other runs'"
        if names is None:
            unusable.setdefault(problem, []).append(run.name)
            continue
        order = np.argsort(names)[np.argsort(np.argsort(reference))]  # names[order] is the reference's order
        usable[id(run)] = features[order]
    for problem, names in unusable.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        notes.append(f"{metric.label}: from the seeds alone for the rows of {shown} ({problem})")
    if not usable:
        return _seed_samples(rows, metric.key), 0
    ids = list(usable)
    replicates = dict(zip(ids, stats.item_replicates(metric.stat, [usable[i] for i in ids])))
    samples = []
    for runs in rows:
        if all(id(run) in usable for run in runs):
            values = np.array([stats.whole_split(metric.stat, usable[id(run)]) for run in runs])
            samples.append(Sample(values, np.array([replicates[id(run)] for run in runs]), len(reference)))
        else:
            samples.append(Sample(_finite([run.value(metric.key) for run in runs])))
    return samples, len(reference)


def _estimate(sample: Sample) -> Estimate:
    return stats.estimate(sample) if sample.n else Estimate(math.nan, math.nan, 0, None, stats.SEEDS_ONLY)


def _leader(samples: list[Sample], better: str) -> int | None:
    """The row whose lead over every other row with a value is detected, if any."""
    present = [i for i, s in enumerate(samples) if s.n]
    if len(present) < 2:
        return None
    pick = max if better == "max" else min
    top = pick(present, key=lambda i: float(np.mean(samples[i].values)))
    wins = all(stats.compare(samples[top], samples[i], better).verdict == stats.A_BETTER for i in present if i != top)
    return top if wins else None


def section_stats(
    labels: list[str], rows: list[list[Run]], columns: tuple[Column, ...], item_metrics: tuple[ItemMetric, ...],
    required: str, baseline: str | None, min_effect: float,
) -> SectionStats:
    """The statistics of a section whose rows (labels[i], rows[i]: its complete runs) have these columns."""
    result = SectionStats(min_effect=min_effect)
    samples: dict[str, list[Sample]] = {}
    for metric in item_metrics:
        samples[metric.key], result.items[metric.key] = _item_samples(metric, rows, result.notes)
    result.compared = tuple((m.key, m.label, m.better) for m in item_metrics) or tuple(
        (c.key, c.label, c.better) for c in columns if c.key == required and c.better is not None
    )
    for key in [key for key, _, _ in result.compared] + [column.key for column in columns]:
        if key not in samples:
            samples[key], result.items[key] = _seed_samples(rows, key), 0
    for column in columns:
        column_samples = samples[column.key]
        result.estimates[column.key] = [_estimate(s) for s in column_samples]
        leader = _leader(column_samples, column.better) if column.better is not None else None
        if leader is not None:
            result.best[column.key] = leader
    given = labels.index(baseline) if baseline in labels else None
    base = given if given is not None else 0
    result.baseline = labels[base] if labels else None
    result.against_baseline = given is not None
    pairs = [(i, base) for i in range(len(labels)) if i != base] if given is not None else list(combinations(range(len(labels)), 2))
    for key, label, better in result.compared:
        found = samples[key]
        for i, j in pairs:
            difference = stats.compare(found[i], found[j], better)
            seeds, note = None, ""
            if difference.verdict == stats.NO_DIFFERENCE:
                seeds, note = stats.seeds_needed(difference, max(abs(difference.diff), min_effect))
            result.comparisons.append(Comparison(labels[i], labels[j], key, label, difference, seeds, note))
        result.forest[key] = [
            Comparison(labels[i], labels[base], key, label, stats.compare(found[i], found[base], better)) for i in range(len(labels)) if i != base
        ]
    return result
