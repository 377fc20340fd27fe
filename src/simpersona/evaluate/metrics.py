"""Clustering and population metrics as small pure functions over numpy arrays.

Definitions written down (the paper leaves them open):
- stratum purity of a code = share of its most common stratum; `mean_purity` averages over
  non-empty codes (each code counts once), `weighted_purity` weights codes by size.
- incompatible mixing: a code with ≥ `min_size` buyers where strata A–C together AND stratum D
  each hold ≥ `threshold` (default 20%) of its buyers.
- a code spans non-adjacent bins on a head when both its low (0) and high (2) bins each hold
  ≥ `threshold` (default 10%) of its buyers; we report the % of buyers in such codes.
- mean pairwise cosine within codes: for each code with ≥ 2 buyers, the mean cosine over its
  distinct pairs (closed form from the sum of unit vectors), averaged over codes.
- JS divergence in base 2 (in [0, 1]); R² = 1 − SS_res / SS_tot across shops.
"""

from __future__ import annotations

import numpy as np


def contingency(codes: np.ndarray, labels: np.ndarray, n_codes: int, n_labels: int) -> np.ndarray:
    """(n_codes, n_labels) counts.

    >>> contingency(np.array([0, 0, 1]), np.array([1, 1, 0]), 2, 2).tolist()
    [[0, 2], [1, 0]]
    """
    return np.bincount(codes * n_labels + labels, minlength=n_codes * n_labels).reshape(n_codes, n_labels)


def mean_purity(table: np.ndarray) -> float:
    """Mean over non-empty codes of the majority label's share.

    >>> mean_purity(np.array([[3, 1], [0, 2], [0, 0]]))
    0.875
    """
    size = table.sum(1)
    keep = size > 0
    return float((table[keep].max(1) / size[keep]).mean())


def weighted_purity(table: np.ndarray) -> float:
    """Share of buyers whose code's majority label is theirs.

    >>> weighted_purity(np.array([[3, 1], [0, 2]]))
    0.8333333333333334
    """
    return float(table.max(1).sum() / table.sum())


def incompatible_codes(strata_table: np.ndarray, threshold: float = 0.2, min_size: int = 10) -> int:
    """Codes mixing buyers of strata A–C (columns 0–2) and D (column 3), each ≥ threshold.

    >>> incompatible_codes(np.array([[5, 0, 0, 5, 0], [9, 0, 0, 1, 0], [0, 0, 0, 10, 0]]))
    1
    """
    size = strata_table.sum(1)
    ok = size >= max(min_size, 1)
    buy = strata_table[ok, :3].sum(1) / size[ok]
    browse = strata_table[ok, 3] / size[ok]
    return int(((buy >= threshold) & (browse >= threshold)).sum())


def pct_nonadjacent(bin_table: np.ndarray, threshold: float = 0.1) -> float:
    """% of buyers in codes whose low and high bins each hold ≥ threshold of the code.

    >>> pct_nonadjacent(np.array([[5, 0, 5], [0, 10, 0], [19, 0, 1]]))
    25.0
    """
    size = bin_table.sum(1)
    share = bin_table / np.maximum(size, 1)[:, None]
    spans = (share[:, 0] >= threshold) & (share[:, 2] >= threshold)
    return float(100.0 * size[spans].sum() / size.sum())


def mean_within_cosine(x: np.ndarray, codes: np.ndarray, n_codes: int) -> float:
    """Mean over codes (≥ 2 members) of the mean cosine between distinct members' vectors.

    >>> x = np.array([[1.0, 0], [1, 0], [1, 0], [0, 1]]); mean_within_cosine(x, np.array([0, 0, 1, 1]), 2)
    0.5
    """
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    s = np.zeros((n_codes, x.shape[1]))
    np.add.at(s, codes, u)
    n = np.bincount(codes, minlength=n_codes).astype(float)
    keep = n >= 2
    pair_sum = (s[keep] ** 2).sum(1) - n[keep]  # Σ_{i≠j} cos(u_i, u_j)
    return float((pair_sum / (n[keep] * (n[keep] - 1))).mean())


def calinski_harabasz(x: np.ndarray, codes: np.ndarray) -> float:
    """CH = (SS_between / (K−1)) / (SS_within / (N−K)) over the K non-empty clusters (App. H).

    >>> calinski_harabasz(np.array([[0.0], [1], [10], [11]]), np.array([0, 0, 1, 1]))
    200.0
    """
    x = np.asarray(x, dtype=np.float64)
    labels, inv = np.unique(codes, return_inverse=True)
    k, n = len(labels), len(x)
    n_k = np.bincount(inv).astype(float)
    means = np.zeros((k, x.shape[1]))
    np.add.at(means, inv, x)
    means /= n_k[:, None]
    between = float((n_k * ((means - x.mean(0)) ** 2).sum(1)).sum())
    within = float(((x - means[inv]) ** 2).sum())
    return 1.0 if within == 0 else between * (n - k) / (within * (k - 1))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence, base 2, in [0, 1].

    >>> js_divergence(np.array([1.0, 0]), np.array([0.0, 1]))
    1.0
    >>> js_divergence(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    0.0
    """
    p = np.asarray(p, float) / np.sum(p)
    q = np.asarray(q, float) / np.sum(q)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def r_squared(y: np.ndarray, y_hat: np.ndarray) -> float:
    """1 − Σ(y − ŷ)² / Σ(y − ȳ)² (nan when y is constant).

    >>> r_squared(np.array([1.0, 2, 3]), np.array([1.0, 2, 4]))
    0.5
    """
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return float("nan") if ss_tot == 0 else 1.0 - float(((y - y_hat) ** 2).sum()) / ss_tot


def mixture_recovery(shop_code: np.ndarray, code_profile: np.ndarray) -> np.ndarray:
    """P̂_s = Σ_k p̂_s(k) P(· | k): (shops, K) counts or shares × (K, L) profiles → (shops, L).

    >>> mixture_recovery(np.array([[3, 1]]), np.array([[1.0, 0], [0, 1]])).tolist()
    [[0.75, 0.25]]
    """
    p = shop_code / np.maximum(shop_code.sum(1, keepdims=True), 1e-12)
    return p @ code_profile


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """½ Σ |p − q| (the share of mass in the wrong place).

    >>> total_variation(np.array([0.5, 0.5, 0]), np.array([0.25, 0.5, 0.25]))
    0.25
    """
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())
