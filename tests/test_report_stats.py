"""The report's statistics (s18exp/report/stats.py) against independent calculations: Student's t against
published table values, the item scores against hand formulas, the item bootstrap against an exhaustive
enumeration of every resample of a tiny test split, and the verdicts against simulation: two rows drawn from
one distribution are told apart no more often than the 5% the interval allows, and a real gap is found as
often as the power estimate says."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from s18exp.metrics import segmentation_scores
from s18exp.report import stats
from s18exp.report.spec import ItemMetric
from s18exp.report.stats import Difference, Sample

# two-sided 95% and one-sided 80% points of Student's t (any statistics table)
T_TABLE = [(0.975, 1, 12.706205), (0.975, 2, 4.302653), (0.975, 4, 2.776445), (0.975, 10, 2.228139), (0.975, 30, 2.042272), (0.8, 5, 0.919544)]


@pytest.mark.parametrize(("p", "df", "expected"), T_TABLE)
def test_student_t_matches_the_table(p: float, df: int, expected: float) -> None:
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=2e-6)
    assert stats.t_cdf(expected, df) == pytest.approx(p, abs=1e-7)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-expected, abs=2e-6)
    assert stats.t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)


def hand_miou(matrix: np.ndarray) -> float:
    """Mean IoU over the classes present in truth or prediction, written out."""
    ious = []
    for c in range(len(matrix)):
        hits, truth, predicted = matrix[c, c], matrix[c, :].sum(), matrix[:, c].sum()
        if truth + predicted - hits > 0:
            ious.append(hits / (truth + predicted - hits))
    return float(np.mean(ious))


def test_the_three_item_stats_match_hand_calculations() -> None:
    rng = np.random.default_rng(3)
    confusion = rng.integers(0, 50, size=(6, 4, 4))
    confusion[:, 3, :] = 0  # class 3 is in no truth
    confusion[:, :, 3] = 0  # nor in any prediction: left out of the mean, as s18exp.metrics does
    items = {"names": np.array([f"i{k}" for k in range(6)]), "confusion": confusion}
    miou = ItemMetric("test/miou", "mIoU", "max", "miou", "confusion")
    summed = confusion.sum(0)
    assert stats.whole_split("miou", stats.features(miou, items)) == pytest.approx(hand_miou(summed), abs=1e-12)
    assert stats.whole_split("miou", stats.features(miou, items)) == pytest.approx(
        segmentation_scores(torch.from_numpy(summed), ["a", "b", "c", "d"])["miou"], abs=1e-12
    )
    follow = rng.random((50, 3)) < [0.9, 0.6, 0.7]
    arrays = {"follow": follow, "readers": np.array(["judge", "reader_a", "reader_b"]), "flags": follow[:, 0]}
    judge = ItemMetric("test/judge", "judge", "max", "mean", "follow", ("judge",), "readers")
    panel = ItemMetric("test/panel", "panel", "max", "min_mean", "follow", ("reader_a", "reader_b"), "readers")
    flags = ItemMetric("test/flags", "flags", "max", "mean", "flags")
    assert stats.whole_split("mean", stats.features(judge, arrays)) == pytest.approx(follow[:, 0].mean())
    assert stats.whole_split("min_mean", stats.features(panel, arrays)) == pytest.approx(min(follow[:, 1].mean(), follow[:, 2].mean()))
    assert stats.whole_split("mean", stats.features(flags, arrays)) == pytest.approx(follow[:, 0].mean())


@pytest.mark.parametrize(
    ("metric", "arrays", "why"),
    [
        (ItemMetric("k", "l", "max", "miou", "confusion"), {}, "no array 'confusion'"),
        (ItemMetric("k", "l", "max", "miou", "confusion"), {"confusion": np.ones((3, 2, 3), dtype=int)}, "is not (N, C, C) counts"),
        (ItemMetric("k", "l", "max", "miou", "confusion"), {"confusion": np.ones((3, 2, 2))}, "is not (N, C, C) counts"),
        (ItemMetric("k", "l", "max", "mean", "follow"), {"follow": np.ones((3, 2))}, "is not one value per item"),
        (ItemMetric("k", "l", "max", "mean", "follow", ("x",), "readers"), {"follow": np.ones((3, 2)), "readers": np.array(["a", "b"])}, "no columns ['x']"),
        (ItemMetric("k", "l", "max", "mean", "names"), {"names": np.array(["a", "b"])}, "not numbers"),
    ],
)
def test_item_features_that_do_not_fit_say_why(metric: ItemMetric, arrays: dict, why: str) -> None:
    with pytest.raises(ValueError, match=re_escape(why)):
        stats.features(metric, arrays)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_an_item_metric_refuses_what_it_cannot_compute() -> None:
    with pytest.raises(ValueError, match="stat 'median'"):
        ItemMetric("k", "l", "max", "median", "a")
    with pytest.raises(ValueError, match="better 'up'"):
        ItemMetric("k", "l", "up", "mean", "a")
    with pytest.raises(ValueError, match="named columns"):
        ItemMetric("k", "l", "max", "min_mean", "a")  # min_mean needs its columns
    with pytest.raises(ValueError, match="named columns"):
        ItemMetric("k", "l", "max", "mean", "a", ("x", "y"), "readers")  # a mean is of one column


def exhaustive(runs: list[np.ndarray]) -> np.ndarray:
    """Every one of the N**N equally likely resamples of N items, each run's mIoU on it: (runs, N**N)."""
    n_items = len(runs[0])
    scores = []
    for indices in itertools.product(range(n_items), repeat=n_items):
        scores.append([hand_miou(run[list(indices)].sum(0)) for run in runs])
    return np.array(scores).T


def test_the_item_bootstrap_matches_an_exhaustive_enumeration_of_resamples() -> None:
    """Four runs (two rows of two seeds) on the same five test items of a 3-class segmentation: the covariances
    of their resampled mIoUs, drawn 40,000 times, against the exact ones over all 5**5 resamples; then the
    pair's interval against the formula written out."""
    rng = np.random.default_rng(7)
    runs = [rng.integers(0, 30, size=(5, 3, 3)) + np.eye(3, dtype=int) * rng.integers(20, 60) for _ in range(4)]
    exact = exhaustive(runs)
    exact_cov = np.cov(exact, ddof=0)  # each resample equally likely: the population covariance
    drawn = stats.item_replicates("miou", [r.reshape(5, -1).astype(float) for r in runs], resamples=40_000, seed=1)
    assert drawn.mean(axis=1) == pytest.approx(exact.mean(axis=1), abs=2e-3)
    assert np.cov(drawn) == pytest.approx(exact_cov, rel=0.06, abs=2e-5)

    values = np.array([hand_miou(run.sum(0)) for run in runs])
    a, b = Sample(values[:2], drawn[:2], 5), Sample(values[2:], drawn[2:], 5)
    difference = stats.compare(a, b, "max")
    # the items' part: what distinct runs share, A's minus B's
    shared = exact_cov[0, 1] + exact_cov[2, 3] - 2 * exact_cov[:2, 2:].mean()
    assert difference.item_variance == pytest.approx(max(shared, 0.0), rel=0.1, abs=1e-5)
    seed_a, seed_b = np.var(values[:2], ddof=1), np.var(values[2:], ddof=1)
    parts = [(seed_a / 2, 1), (seed_b / 2, 1), (difference.item_variance, 4)]
    se = math.sqrt(sum(v for v, _ in parts))
    df = se**4 / sum(v * v / d for v, d in parts if v > 0)
    half = stats.t_quantile(0.975, df) * se
    diff = values[:2].mean() - values[2:].mean()
    assert difference.diff == pytest.approx(diff)
    assert difference.ci == pytest.approx((diff - half, diff + half))
    assert difference.p_better == pytest.approx(stats.t_cdf(diff / se, df))


def test_verdicts_read_which_row_is_better_for_either_direction() -> None:
    high, low = Sample(np.array([0.80, 0.81, 0.82])), Sample(np.array([0.60, 0.61, 0.62]))
    assert stats.compare(high, low, "max").verdict == stats.A_BETTER
    assert stats.compare(low, high, "max").verdict == stats.B_BETTER
    assert stats.compare(low, high, "min").verdict == stats.A_BETTER  # e.g. a loss: lower wins
    assert stats.compare(high, low, "min").p_better < 0.001
    same = stats.compare(high, Sample(np.array([0.79, 0.81, 0.83])), "max")
    assert same.verdict == stats.NO_DIFFERENCE and same.p_better == pytest.approx(0.5)
    single = stats.compare(high, Sample(np.array([0.2])), "max")  # one seed: its spread is unknown
    assert single.verdict == stats.NO_DIFFERENCE and single.ci is None and single.p_better is None
    assert stats.seeds_needed(single, 0.01) == (None, "needs 2 or more seeds per row to measure how much seeds differ")


def simulate(rng: np.random.Generator, seeds: int, n_items: int, shift: float, seed_sd: float, item_sd: float, noise_sd: float) -> tuple[Sample, Sample]:
    """Two rows of one test split: each item's difficulty shared by both, each row's own way with each item
    (item_sd), each run's luck (seed_sd) and its item-by-item luck (noise_sd); row A shifted by `shift`."""
    difficulty = rng.normal(0, 0.2, n_items)
    runs = []
    for offset in (shift, 0.0):
        own = rng.normal(0, item_sd, n_items)
        runs += [offset + difficulty + own + rng.normal(0, seed_sd) + rng.normal(0, noise_sd, n_items) for _ in range(seeds)]
    replicates = stats.item_replicates("mean", [r[:, None] for r in runs], resamples=400, seed=int(rng.integers(1 << 30)))
    values = np.array([r.mean() for r in runs])
    return Sample(values[:seeds], replicates[:seeds], n_items), Sample(values[seeds:], replicates[seeds:], n_items)


SETTINGS = {"n_items": 60, "seed_sd": 0.02, "item_sd": 0.03, "noise_sd": 0.1}


def test_two_rows_of_one_distribution_are_told_apart_at_most_seven_times_in_a_hundred() -> None:
    """A/A: 500 comparisons of 3 seeds against 3 seeds from the same distribution (the 95% interval allows 5%)."""
    rng = np.random.default_rng(11)
    verdicts = [stats.compare(*simulate(rng, 3, shift=0.0, **SETTINGS), "max").verdict for _ in range(500)]
    assert verdicts.count(stats.NO_DIFFERENCE) / len(verdicts) >= 0.93


def test_a_real_gap_is_found_as_often_as_the_power_estimate_says() -> None:
    """The true variances of `simulate`: a run's score on the split varies with the seed by seed_sd² +
    noise_sd²/N, and the items' part of a difference is 2 item_sd²/N. The seeds that the estimate asks for
    to find a gap of 0.04 with 80% power, then 300 simulated comparisons at that many seeds: found in 80% of
    them, within 0.08 (about three binomial standard errors)."""
    n_items, seed_sd, item_sd, noise_sd = SETTINGS.values()
    seed_variance = seed_sd**2 + noise_sd**2 / n_items
    truth = Difference(0.0, None, None, stats.NO_DIFFERENCE, stats.SEEDS_AND_ITEMS, (seed_variance, seed_variance), 2 * item_sd**2 / n_items, n_items)
    gap = 0.04
    seeds, note = stats.seeds_needed(truth, gap)
    assert note == "" and seeds is not None and 2 < seeds < 20
    predicted = stats.power(gap, truth.seed_variances, truth.item_variance, n_items, seeds)
    assert predicted >= stats.POWER > stats.power(gap, truth.seed_variances, truth.item_variance, n_items, seeds - 1)
    rng = np.random.default_rng(12)
    found = [stats.compare(*simulate(rng, seeds, shift=gap, **SETTINGS), "max").verdict == stats.A_BETTER for _ in range(300)]
    assert np.mean(found) == pytest.approx(predicted, abs=0.08)


def test_a_gap_smaller_than_the_test_splits_own_noise_is_not_detectable_with_any_seeds() -> None:
    noisy_split = Difference(0.0, None, None, stats.NO_DIFFERENCE, stats.SEEDS_AND_ITEMS, (1e-4, 1e-4), 1e-4, 300)
    assert stats.seeds_needed(noisy_split, 0.01) == (None, "not detectable on this test split")  # 0.01 < 2.8 x 0.01
    count, note = stats.seeds_needed(noisy_split, 0.05)
    assert note == "" and count is not None
    seeds_only = Difference(0.0, None, None, stats.NO_DIFFERENCE, stats.SEEDS_ONLY, (1e-4, 1e-4), 0.0, 0)
    # seeds alone: sd of a mean difference sqrt(2e-4 / n); 80% power at 5% needs about (2.8 x 0.01414 / 0.01)^2 = 16
    count, _ = stats.seeds_needed(seeds_only, 0.01)
    assert 16 <= count <= 18
