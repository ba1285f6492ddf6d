"""The comparisons of a section as text, the same in markdown, HTML, the terminal and the W&B report."""

from __future__ import annotations

from s18exp.report import stats
from s18exp.report.table import Section, interval_text

LEGEND = (
    "Mean ± sample std over the seeds of a row (n = its runs); 95% CI: the interval of the row's mean, from its "
    "seeds and, where the runs saved them, its test items (docs/report.md). Bold: a row whose lead over every "
    "other row is detected (its interval of the difference excludes 0 against each); no bold where none is."
)
HEAD = ["metric", "A", "B", "A − B", "95% CI", "P(A beats B)", "verdict", f"seeds per row for {stats.POWER:.0%} power"]
NUMERIC = range(3, 6)  # the columns of HEAD that hold numbers


def rows(section: Section) -> list[list[str]]:
    """One line per comparison of `HEAD`."""
    lines = []
    for comparison in section.stats.comparisons:
        difference = comparison.difference
        seeds = ""
        if difference.verdict == stats.NO_DIFFERENCE:
            seeds = str(comparison.seeds) if comparison.seeds is not None else comparison.seeds_note
        p_better = "–" if difference.p_better is None else f"{difference.p_better:.3f}"
        lines.append([
            comparison.label, comparison.a, comparison.b, f"{difference.diff:+.3f}", interval_text(difference.ci),
            p_better, difference.verdict, seeds,
        ])
    return lines


def notes(section: Section) -> list[str]:
    """How the comparisons were made: the method per headline metric, then why some rows are seeds only."""
    out = []
    against = f"each row against {section.stats.baseline}" if section.stats.against_baseline else "every pair of rows"
    for key, label, better in section.stats.compared:
        items = section.stats.items.get(key, 0)
        how = (
            f"seeds and {items} test items, paired ({stats.RESAMPLES} item resamples, seed {stats.SEED})"
            if items else "seeds only (no usable test_items.npz)"
        )
        out.append(f"{label} ({'higher' if better == 'max' else 'lower'} is better), {against}: {how}.")
    out.append(
        "A better / B better: the 95% interval of A − B excludes 0; P(A beats B): how sure of it the same "
        f"calculation is. Seeds per row: for pairs without a detectable difference, how many seeds each row "
        f"would need to detect a gap the size of the one observed (at least {section.stats.min_effect:g}) in {stats.POWER:.0%} "
        "of tries, from the measured variances; the test items' part does not shrink with seeds."
    )
    return out + section.stats.notes

