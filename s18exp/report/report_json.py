"""report.json: the report's numbers for notebooks and CI, beside report.md.

    {"format": "s18exp-report/1", "title", "folder", "generated",
     "method": {"level", "resamples", "seed", "power", "min_effect"},
     "sections": [{"task", "title", "settings", "varying", "baseline", "notes",
                   "rows": [{"label", "settings", "n", "runs",
                             "metrics": {KEY: {"label", "mean", "std", "ci", "n", "method", "best"}}}],
                   "comparisons": [{"a", "b", "metric", "label", "diff", "ci", "p_better", "verdict", "method",
                                    "seeds_per_row", "seeds_note"}],
                   "incomplete": [{"run", "problem"}]}]}

`settings` of a section: what every run shares (label -> value); of a row: its values of the `varying` config
keys. `ci` is [low, high] or null (a single seed); `std` null for one run; `verdict` is exactly `A better`,
`B better` or `no detectable difference`, of row `a` against row `b`; `seeds_per_row` (null when detected or
when no number of seeds would do, then `seeds_note` says why) is stats.seeds_needed's. Run paths are relative
to the report's folder when they lie under it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from s18exp.report import stats
from s18exp.report.render import Document
from s18exp.report.table import Row, Section

FORMAT = "s18exp-report/1"


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _interval(ci: tuple[float, float] | None) -> list[float | None] | None:
    return None if ci is None else [_number(ci[0]), _number(ci[1])]


def _path(path: Path, out_dir: Path) -> str:
    relative = os.path.relpath(path, out_dir)
    return str(path) if relative.startswith("..") else relative


def _row(section: Section, row: Row, index: int, out_dir: Path) -> dict[str, Any]:
    metrics = {}
    for column in section.columns:
        cell, estimate = row.cells[column.key], section.stats.estimates[column.key][index]
        metrics[column.key] = {
            "label": column.label, "mean": _number(cell.mean), "std": _number(cell.std), "ci": _interval(cell.ci),
            "n": cell.n, "method": estimate.method, "best": cell.best,
        }
    return {"label": row.label, "settings": row.settings, "n": len(row.runs), "runs": [_path(r.path, out_dir) for r in row.runs], "metrics": metrics}


def _section(section: Section, out_dir: Path) -> dict[str, Any]:
    comparisons = [
        {
            "a": c.a, "b": c.b, "metric": c.metric, "label": c.label, "diff": _number(c.difference.diff),
            "ci": _interval(c.difference.ci), "p_better": _number(c.difference.p_better), "verdict": c.difference.verdict,
            "method": c.difference.method, "seeds_per_row": c.seeds, "seeds_note": c.seeds_note or None,
        }
        for c in section.stats.comparisons
    ]
    return {
        "task": section.task, "title": section.spec.title, "settings": section.settings, "varying": section.varying,
        "baseline": section.stats.baseline if section.stats.against_baseline else None, "notes": section.stats.notes,
        "rows": [_row(section, row, i, out_dir) for i, row in enumerate(section.rows)],
        "comparisons": comparisons,
        "incomplete": [{"run": _path(run.path, out_dir), "problem": run.problem} for run in section.incomplete],
    }


def document_json(doc: Document, out_dir: Path) -> dict[str, Any]:
    return {
        "format": FORMAT, "title": doc.title, "folder": str(doc.root), "generated": doc.generated,
        "method": {
            "level": stats.LEVEL, "resamples": stats.RESAMPLES, "seed": stats.SEED, "power": stats.POWER,
            "min_effect": doc.sections[0].stats.min_effect if doc.sections else stats.MIN_EFFECT,
        },
        "sections": [_section(section, out_dir) for section in doc.sections],
    }
