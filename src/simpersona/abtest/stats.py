"""Effects of one experiment's metric: difference and relative lift of arm B over arm A with 95%
intervals (the analytic t / delta-method interval and scipy's bootstrap), p-values with a
multiple-testing correction across metrics, and the buyers needed for a minimal detectable effect.
Pure functions on per-buyer (paired) or per-session (unpaired) values.

Paired design: buyer i gives a_i (arm A) and b_i (arm B); d_i = b_i − a_i are independent across
buyers, so the difference's interval is the one-sample t interval of d (`scipy.stats.ttest_rel`)
and the bootstrap resamples buyers, keeping each buyer's pair (`scipy.stats.bootstrap(paired=True)`).
Unpaired: Welch's t (`ttest_ind(equal_var=False)`) and the two-sample bootstrap. The relative
lift r = mean(b)/mean(a) − 1 has the delta-method interval
    var(r) ≈ (var(b̄) − 2 r' cov(ā, b̄) + r'² var(ā)) / ā²,   r' = b̄/ā
(cov = 0 unpaired) and the same bootstrap resamples as the difference.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Effect:
    """One metric's effect of B over A (intervals at `level`; NaN where undefined, e.g. the lift of a
    metric that is 0 in arm A)."""

    metric: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float
    diff_lo: float
    diff_hi: float
    diff_boot_lo: float
    diff_boot_hi: float
    lift: float
    lift_lo: float
    lift_hi: float
    lift_boot_lo: float
    lift_boot_hi: float
    p_value: float
    # p-value after the correction across the experiment's metrics (set by `adjust`)
    p_adjusted: float = math.nan

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def holm(p: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control; NaN stays NaN, counts as
    no test).

    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def adjust(p: list[float] | np.ndarray, method: Literal["holm", "bh", "none"]) -> np.ndarray:
    """p-values adjusted across one experiment's metrics: Holm (family-wise), Benjamini–Hochberg
    (`scipy.stats.false_discovery_control`, false discovery rate) or none.

    >>> adjust([0.01, 0.02, 0.5], "bh").round(3).tolist()
    [0.03, 0.03, 0.5]
    """
    p = np.asarray(p, dtype=float)
    if method == "none":
        return p.copy()
    if method == "holm":
        return holm(p)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok])
    return out


def _t_interval(mean: float, se: float, df: float, level: float) -> tuple[float, float, float]:
    """(lo, hi, two-sided p of mean = 0) of a t statistic; a zero standard error gives the point
    (p 1 when the mean is 0, else 0)."""
    if not math.isfinite(se) or se == 0.0:
        return mean, mean, (1.0 if mean == 0.0 else 0.0)
    q = float(stats.t.ppf(0.5 + level / 2, df))
    return mean - q * se, mean + q * se, float(2 * stats.t.sf(abs(mean / se), df))


def _lift_interval(ma: float, mb: float, var_a: float, var_b: float, cov: float, level: float) -> tuple[float, float, float]:
    """(lift, lo, hi): the delta-method normal interval of mean_b/mean_a − 1 (var_*, cov: of the means)."""
    if ma == 0.0:
        return math.nan, math.nan, math.nan
    r = mb / ma
    var = (var_b - 2 * r * cov + r * r * var_a) / (ma * ma)
    se = math.sqrt(max(var, 0.0))
    z = float(stats.norm.ppf(0.5 + level / 2))
    return r - 1, r - 1 - z * se, r - 1 + z * se


def _boot_stat(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    ma, mb = a.mean(axis), b.mean(axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([mb - ma, mb / ma - 1])


def effect(metric: str, a: np.ndarray, b: np.ndarray, paired: bool, level: float = 0.95, n_boot: int = 2000,
           rng: np.random.Generator | None = None, method: str = "percentile") -> Effect:
    """The effect of B over A on one metric: a, b per buyer (paired: same length, b[i] and a[i]
    the same buyer) or per session of each arm (unpaired). n_boot 0 skips the bootstrap (NaN).

    >>> e = effect("x", np.array([0.0, 1, 0, 1]), np.array([1.0, 1, 1, 1]), paired=True, n_boot=0)
    >>> round(e.diff, 2), round(e.lift, 2), e.diff_lo < e.diff < e.diff_hi
    (0.5, 1.0, True)
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired and len(a) != len(b):
        raise ValueError(f"{metric}: a paired effect needs as many B values as A values ({len(b)} vs {len(a)})")
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        raise ValueError(f"{metric}: need at least 2 values per arm, got {na} and {nb}")
    ma, mb = float(a.mean()), float(b.mean())
    if paired:
        d = b - a
        se = float(d.std(ddof=1)) / math.sqrt(na)
        lo, hi, p = _t_interval(mb - ma, se, na - 1, level)
        cov = float(np.cov(a, b, ddof=1)[0, 1]) / na
    else:
        va, vb = float(a.var(ddof=1)) / na, float(b.var(ddof=1)) / nb
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1)) if va + vb > 0 else 1.0  # Welch–Satterthwaite
        lo, hi, p = _t_interval(mb - ma, se, df, level)
        cov = 0.0
    lift, llo, lhi = _lift_interval(ma, mb, float(a.var(ddof=1)) / na, float(b.var(ddof=1)) / nb, cov, level)
    blo = bhi = rlo = rhi = math.nan
    if n_boot > 0:
        if (np.ptp(a) == 0 and np.ptp(b) == 0) or (paired and np.ptp(b - a) == 0):  # no spread: the point itself
            blo = bhi = mb - ma
            rlo = rhi = lift
        else:
            with warnings.catch_warnings():  # a resample distribution without spread (rare events) is expected here
                warnings.simplefilter("ignore", stats.DegenerateDataWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                res = stats.bootstrap((a, b), _boot_stat, paired=paired, vectorized=True, n_resamples=n_boot,
                                      confidence_level=level, method=method, rng=rng)
            (blo, rlo), (bhi, rhi) = (float(x) for x in res.confidence_interval.low), (float(x) for x in res.confidence_interval.high)
    return Effect(metric, na, nb, ma, mb, mb - ma, lo, hi, blo, bhi, lift, llo, lhi, rlo, rhi, p)


def buyers_needed(sd: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Units needed to detect a difference `mde` with a two-sided test at `alpha` and the given
    power, for values with standard deviation `sd` (normal approximation):
    n = ((z_{1−α/2} + z_power) · sd / mde)². Paired: sd of the per-buyer differences → buyers
    (each on both arms); unpaired: sd·√2 of one arm's values → sessions per arm. inf when mde is 0.

    >>> round(buyers_needed(sd=1.0, mde=0.1))
    785
    """
    if mde == 0.0 or not math.isfinite(mde):
        return math.inf
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    return (z * sd / mde) ** 2
