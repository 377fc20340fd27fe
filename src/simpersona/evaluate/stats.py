"""Alignment and separation statistics as small pure functions (numpy / scipy.stats).

- `rate_alignment(real, agent)` = 1 − |real − agent|; `ara` = ½ ATC alignment + ½ purchase alignment.
- `cohens_d(low, high)`: (mean_high − mean_low) / pooled SD (sample variances, ddof 1).
- `welch_p`: scipy.stats.ttest_ind(equal_var=False) two-sided p; `kruskal_p`: scipy.stats.kruskal p.
- `trend_permutation_p`: scipy.stats.permutation_test, bin labels shuffled against the scores
  (`pairings`), statistic = Pearson correlation of bin index (0/1/2) and score, i.e. the
  least-squares gradient up to a constant; two-sided; n_resamples shuffles.
- `wilson_ci(k, n)`: the 95% Wilson score interval of a rate k/n (the CI every rate of Tables 4, 9 carries).
- `mcnemar_p(a, b)`: exact McNemar p of two paired yes/no outcomes (the same episodes run two ways:
  Table 9's with vs without the persona token), a two-sided binomial test on the discordant pairs.
- `fisher_p(k1, n1, k2, n2)`: two-sided Fisher exact p of two independent rates.
Degenerate inputs (too few values, zero variance) give NaN rather than an exception.
"""

from __future__ import annotations

import math

import numpy as np


def rate_alignment(real: float, agent: float) -> float:
    """1 − |real − agent| for two rates in [0, 1].

    >>> round(rate_alignment(0.30, 0.25), 3)
    0.95
    """
    return 1.0 - abs(float(real) - float(agent))


def ara(atc_real: float, atc_agent: float, pur_real: float, pur_agent: float) -> float:
    """Action Rate Alignment: ½ ATC alignment + ½ purchase alignment.

    >>> round(ara(0.5, 0.4, 0.2, 0.2), 3)
    0.95
    """
    return 0.5 * rate_alignment(atc_real, atc_agent) + 0.5 * rate_alignment(pur_real, pur_agent)


def cohens_d(low: np.ndarray, high: np.ndarray) -> float:
    """Standardised mean difference high − low with the pooled sample SD.

    >>> cohens_d(np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, 5.0]))
    2.0
    """
    a, b = np.asarray(low, float), np.asarray(high, float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    return float((b.mean() - a.mean()) / math.sqrt(pooled)) if pooled > 0 else math.nan


def welch_p(low: np.ndarray, high: np.ndarray) -> float:
    """Two-sided p of Welch's t-test (scipy.stats.ttest_ind, equal_var=False).

    >>> round(welch_p(np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, 5.0])), 4)
    0.0705
    """
    from scipy import stats

    a, b = np.asarray(low, float), np.asarray(high, float)
    if len(a) < 2 or len(b) < 2 or (a.var() == 0 and b.var() == 0):
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def kruskal_p(*groups: np.ndarray) -> float:
    """p of the Kruskal–Wallis H test over the non-empty groups (scipy.stats.kruskal).

    >>> round(kruskal_p(np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])), 4)
    0.1017
    """
    from scipy import stats

    gs = [np.asarray(g, float) for g in groups if len(g) > 0]
    if len(gs) < 2 or np.ptp(np.concatenate(gs)) == 0:
        return math.nan
    return float(stats.kruskal(*gs).pvalue)


def trend_permutation_p(bins: np.ndarray, scores: np.ndarray, n_resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided permutation p of the correlation between bin index and score (scipy.stats.permutation_test).

    >>> round(trend_permutation_p(np.array([0, 0, 1, 1, 2, 2]), np.array([1.0, 2, 3, 4, 5, 6])), 4)  # exact: 16/720
    0.0222
    """
    from scipy import stats

    x, y = np.asarray(bins, float), np.asarray(scores, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan

    def corr(xs, axis=-1):  # xs (..., n) permuted bins; y fixed
        xc = xs - xs.mean(axis=axis, keepdims=True)
        yc = y - y.mean()
        return (xc * yc).sum(axis=axis) / np.sqrt((xc**2).sum(axis=axis) * (yc**2).sum())

    res = stats.permutation_test((x,), corr, permutation_type="pairings", n_resamples=n_resamples,
                                 vectorized=True, alternative="two-sided", random_state=np.random.default_rng(seed),
                                 batch=max(1, min(n_resamples, 2_000_000 // max(len(x), 1))))
    return float(res.pvalue)


def wilson_ci(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """95% Wilson score interval of the rate k / n (None when n = 0).

    >>> [round(x, 3) for x in wilson_ci(8, 10)]
    [0.49, 0.943]
    """
    if n <= 0:
        return None
    p, z2 = k / n, z * z
    mid = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, mid - half), min(1.0, mid + half)


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p of paired yes/no outcomes a[i], b[i] (NaN without discordant pairs).

    >>> round(mcnemar_p(np.array([1] * 10 + [0] * 5), np.array([0] * 10 + [0] * 5)), 4)
    0.002
    """
    from scipy import stats

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    if only_a + only_b == 0:
        return math.nan
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def fisher_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact p that two independent rates k1/n1 and k2/n2 differ.

    >>> round(fisher_p(9, 10, 1, 10), 4)
    0.0011
    """
    from scipy import stats

    if n1 <= 0 or n2 <= 0:
        return math.nan
    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)
