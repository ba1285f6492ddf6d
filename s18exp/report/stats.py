"""How sure the report is of a row's score and of the difference between two rows.

A row's score is the mean, over its runs (seeds), of each run's score on the test split. Two kinds of chance
move it, and the standard error adds both:

- which seeds ran: the runs' sample variance s² (n - 1) gives s²/n for the mean. This is what resampling the
  seeds of a row with replacement converges to, corrected by n / (n - 1), computed exactly rather than drawn.
- which test items the split holds: the items are resampled with replacement (RESAMPLES times, seeded, the
  same resampled items for every run of every row: the comparison is paired), and each run's dataset-level
  score is recomputed from the summed per-item counts of the resampled items. A run's own item-by-item luck
  is already in s² (it is part of how seeds differ on this split), so the items' part is what different
  runs share: the covariance between two runs' resampled scores, averaged over pairs of runs (and, for a
  difference, the shared part of A minus B: cov(A, A') + cov(B, B') - 2 cov(A, B)). Nothing counts twice.

The 95% interval is the estimate ± t × standard error, t from Student's distribution with the
Welch-Satterthwaite degrees of freedom (with 3 seeds a row, t is near 2.8 to 4.3, not 1.96: a percentile
bootstrap of 3 seeds would be far too narrow). P(A beats B) is the share of that t distribution on A's side;
the verdict is `A better` or `B better` when the interval excludes 0 (P above 0.975), else
`no detectable difference`. A row with a single run has no measurable seed variance: no interval, no verdict.
Without per-item outcomes the items' part is left out and the method says "seeds only".

scipy is not a dependency: Student's t comes from the regularised incomplete beta function below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from s18exp.report.spec import ItemMetric

LEVEL = 0.95  # of every interval
POWER = 0.8  # of the seeds-needed estimate
RESAMPLES = 2000  # item resamples; the Monte Carlo error of a variance from them is about 3%
SEED = 0  # of the item resamples: the same report twice gives the same numbers
MAX_SEEDS = 1000  # the seeds-needed search stops here
MIN_EFFECT = 0.01  # the smallest gap worth seeds, in a headline metric's units (--min-effect)
CHUNK = 1 << 21  # resample weights held at a time (items x resamples), about 16 MB

SEEDS_AND_ITEMS = "seeds and test items"
SEEDS_ONLY = "seeds only"
A_BETTER, B_BETTER, NO_DIFFERENCE = "A better", "B better", "no detectable difference"


# --- Student's t --------------------------------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 400):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)), -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return result


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1 - front * _beta_fraction(b, a, 1 - x) / b


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with `df` degrees of freedom (any positive real; infinity: the normal)."""
    if math.isinf(df) or df > 1e7:
        return NormalDist().cdf(x)
    tail = 0.5 * regularized_beta(df / (df + x * x), df / 2, 0.5)
    return 1 - tail if x > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The x with t_cdf(x, df) = p, by bisection."""
    if math.isinf(df) or df > 1e7:
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1 - p, df)
    high = 1.0
    while t_cdf(high, df) < p:
        high *= 2
    low = 0.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def welch_df(parts: list[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance estimates, each (variance, its df)."""
    total = sum(variance for variance, _ in parts)
    spread = sum(variance * variance / df for variance, df in parts if variance > 0 and df > 0)
    return math.inf if spread == 0 else total * total / spread


# --- scores of resampled items -------------------------------------------------------------------------


def features(metric: ItemMetric, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The (N, K) numbers per item whose sums over any items give `metric` (see `score`); a ValueError
    saying what is wrong when `arrays` (a test_items.npz) do not hold them."""
    if metric.array not in arrays:
        raise ValueError(f"no array {metric.array!r}")
    array = arrays[metric.array]
    if array.dtype.kind not in "biuf" or array.ndim == 0:
        raise ValueError(f"{metric.array!r} holds {array.dtype} values, not numbers")
    if metric.stat == "miou":
        if array.ndim != 3 or array.shape[1] != array.shape[2] or array.dtype.kind == "f" or (array < 0).any():
            raise ValueError(f"{metric.array!r} of shape {array.shape} is not (N, C, C) counts")
        return array.reshape(len(array), -1).astype(np.float64)
    if not metric.columns:
        if array.ndim != 1:
            raise ValueError(f"{metric.array!r} of shape {array.shape} is not one value per item")
        return array.astype(np.float64)[:, None]
    names = [str(name) for name in arrays.get(metric.column_names, np.array([]))]
    missing = [c for c in metric.columns if c not in names]
    if array.ndim != 2 or len(names) != array.shape[1] or missing:
        raise ValueError(f"{metric.array!r} of shape {array.shape} has no columns {missing or list(metric.columns)} named by {metric.column_names!r}")
    return array[:, [names.index(c) for c in metric.columns]].astype(np.float64)


def score(stat: str, sums: np.ndarray, n_items: int) -> np.ndarray:
    """`stat` of item resamples from the (B, K) sums of their items' features (B resamples of n_items items)."""
    if stat == "miou":
        classes = math.isqrt(sums.shape[1])
        matrix = sums.reshape(len(sums), classes, classes)  # (true, predicted), as s18exp.metrics
        hits = np.diagonal(matrix, axis1=1, axis2=2)
        union = matrix.sum(axis=1) + matrix.sum(axis=2) - hits
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, hits / union, np.nan)  # a class absent from truth and prediction is left out
            present = (union > 0).sum(axis=1)
            return np.where(present > 0, np.nansum(iou, axis=1) / np.maximum(present, 1), np.nan)
    means = sums / n_items
    return means.min(axis=1) if stat == "min_mean" else means[:, 0]


def item_replicates(stat: str, runs: list[np.ndarray], resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(len(runs), resamples): each run's score on the same `resamples` resamples (with replacement) of its
    (N, K) item features; every run must have the same N items in the same order."""
    n_items = len(runs[0])
    rng = np.random.default_rng(seed)
    out = np.empty((len(runs), resamples))
    step = max(1, CHUNK // max(n_items, 1))
    for start in range(0, resamples, step):
        count = min(step, resamples - start)
        drawn = rng.integers(0, n_items, size=(count, n_items))
        offsets = (np.arange(count)[:, None] * n_items + drawn).ravel()
        weights = np.bincount(offsets, minlength=count * n_items).reshape(count, n_items).astype(np.float64)
        for r, run in enumerate(runs):
            out[r, start : start + count] = score(stat, weights @ run, n_items)
    return out


def whole_split(stat: str, run: np.ndarray) -> float:
    """`stat` of all the items once: the score the run's summary holds."""
    return float(score(stat, run.sum(axis=0, keepdims=True), len(run))[0])


# --- rows and differences ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One row's runs for one metric: each run's score on the whole split, and its score on each item
    resample (None without per-item outcomes), the same resamples in every Sample that is compared."""

    values: np.ndarray  # (n,)
    replicates: np.ndarray | None = None  # (n, RESAMPLES)
    n_items: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def seed_variance(self) -> float:
        return float(np.var(self.values, ddof=1)) if self.n > 1 else math.nan


@dataclass(frozen=True)
class Estimate:
    mean: float
    std: float  # sample standard deviation over the runs; NaN for one run
    n: int
    ci: tuple[float, float] | None  # None: not measurable (a single run)
    method: str


@dataclass(frozen=True)
class Difference:
    """A minus B, for a metric where `better` ("max" or "min") wins."""

    diff: float
    ci: tuple[float, float] | None
    p_better: float | None  # P(A beats B)
    verdict: str
    method: str
    seed_variances: tuple[float, float]  # s² of A's runs and of B's
    item_variance: float  # the shared items' part of the difference's variance
    n_items: int


def _shared_item_variance(a: np.ndarray, b: np.ndarray | None) -> float:
    """The variance of the items' part shared by a row's runs (b None), or of A's shared part minus B's."""
    stacked = a if b is None else np.vstack([a, b])
    cov = np.atleast_2d(np.cov(stacked))
    n_a = len(a)

    def between(block: np.ndarray) -> float:  # mean covariance of distinct runs
        return float((block.sum() - np.trace(block)) / (len(block) * (len(block) - 1)))

    variance = between(cov[:n_a, :n_a])
    if b is not None:
        variance += between(cov[n_a:, n_a:]) - 2 * float(cov[:n_a, n_a:].mean())
    return max(variance, 0.0)


def _interval(centre: float, parts: list[tuple[float, float]]) -> tuple[tuple[float, float], float, float]:
    """(interval, standard error, df) of `centre` with the variance parts (variance, df)."""
    se = math.sqrt(sum(variance for variance, _ in parts))
    df = welch_df(parts)
    half = t_quantile(0.5 + LEVEL / 2, df) * se if se > 0 else 0.0
    return (centre - half, centre + half), se, df


def estimate(sample: Sample) -> Estimate:
    """A row's mean over its runs, with its interval."""
    mean = float(np.mean(sample.values))
    method = SEEDS_ONLY if sample.replicates is None else SEEDS_AND_ITEMS
    if sample.n < 2:
        return Estimate(mean, math.nan, sample.n, None, method)
    parts = [(sample.seed_variance / sample.n, sample.n - 1)]
    if sample.replicates is not None:
        parts.append((_shared_item_variance(sample.replicates, None), sample.n_items - 1))
    ci, _, _ = _interval(mean, parts)
    return Estimate(mean, math.sqrt(sample.seed_variance), sample.n, ci if all(map(math.isfinite, ci)) else None, method)


def compare(a: Sample, b: Sample, better: str) -> Difference:
    """A minus B: interval, P(A beats B) and verdict; from the seeds alone unless both have item replicates."""
    diff = float(np.mean(a.values) - np.mean(b.values))
    paired = a.replicates is not None and b.replicates is not None
    method = SEEDS_AND_ITEMS if paired else SEEDS_ONLY
    item_variance = _shared_item_variance(a.replicates, b.replicates) if paired and a.n > 1 and b.n > 1 else 0.0
    seeds = (a.seed_variance, b.seed_variance)
    unmeasured = Difference(diff, None, None, NO_DIFFERENCE, method, seeds, item_variance, a.n_items)
    if a.n < 2 or b.n < 2:
        return unmeasured
    parts = [(seeds[0] / a.n, a.n - 1), (seeds[1] / b.n, b.n - 1), (item_variance, a.n_items - 1)]
    ci, se, df = _interval(diff, parts)
    if not all(map(math.isfinite, (*ci, se))):
        return unmeasured
    ahead = diff if better == "max" else -diff  # > 0 when A is the better one
    p_better = (0.5 + math.copysign(0.5, ahead) if ahead else 0.5) if se == 0 else t_cdf(ahead / se, df)
    verdict = NO_DIFFERENCE
    if ci[0] > 0 or ci[1] < 0:
        verdict = A_BETTER if (ci[0] > 0) == (better == "max") else B_BETTER
    return Difference(diff, ci, p_better, verdict, method, seeds, item_variance, a.n_items)


def power(delta: float, seed_variances: tuple[float, float], item_variance: float, n_items: int, seeds: float) -> float:
    """The chance that `compare` finds a true gap `delta` with `seeds` runs per row, given these variances."""
    parts = [(v / seeds, seeds - 1) for v in seed_variances] + [(item_variance, n_items - 1)]
    se = math.sqrt(sum(v for v, _ in parts))
    if se == 0:
        return 1.0
    df = welch_df(parts)
    critical = t_quantile(0.5 + LEVEL / 2, df)
    return 1 - t_cdf(critical - delta / se, df) + t_cdf(-critical - delta / se, df)


def seeds_needed(difference: Difference, delta: float) -> tuple[int | None, str]:
    """The fewest seeds per row that find a true gap `delta` with probability POWER, from the measured
    variances; (None, why) when no number of seeds does: the items' part does not shrink with seeds."""
    seed_variances, item_variance, n_items = difference.seed_variances, difference.item_variance, difference.n_items
    if not all(map(math.isfinite, seed_variances)):
        return None, "needs 2 or more seeds per row to measure how much seeds differ"
    if item_variance > 0 and power(delta, (0.0, 0.0), item_variance, n_items, 2) < POWER:
        return None, "not detectable on this test split"
    if power(delta, seed_variances, item_variance, n_items, MAX_SEEDS) < POWER:
        return None, f"more than {MAX_SEEDS} seeds per row"
    low, high = 2, MAX_SEEDS  # power grows with seeds: the smallest count that reaches POWER
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if power(delta, seed_variances, item_variance, n_items, middle) >= POWER else (middle + 1, high)
    return low, ""
