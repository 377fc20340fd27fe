"""Fitted normalisation (App. A, Table 5) and the per-channel z → PCA, scikit-learn style.

`ScalarTransform` maps the 16 raw scalars (layout.SCALAR_NAMES order) to normalised values:

- counts, durations, dollar values: log1p, then robust z = (x − median) / IQR, falling back to
  MAD × 1.4826 when IQR = 0, and to 1 when both are 0 (a constant feature maps to 0);
- rates (atc, checkout, browse-only): p̃ = (n + α) / (N + α + β), α = β = 1, with n = rate · N and
  N = n_sessions, then logit, then robust z;
- intent strength: logit of the value clipped to [ε, 1 − ε], then robust z.

`inverse_transform` maps back to raw units exactly (rates are un-smoothed with the recovered
n_sessions), so a decoded vector or a codebook mean can be read in sessions, seconds and dollars.

`ChannelPCA` is fitted per product channel on the observed (mask 1) training buyers: per-dimension
z-score, then PCA to `n_components` by SVD; when fewer rows or dims than that exist, the missing
components are zero rows (the output stays `n_components` wide) and `n_fitted_` says how many.
Both save to / load from plain JSON dicts.
"""

from __future__ import annotations

import numpy as np

from simpersona.features.layout import SCALAR_NAMES

RATES = ("atc_rate", "checkout_rate", "browse_only_rate")
INTENT = "intent_strength"
# counts, durations and dollar values: log1p then robust z
LOG_Z = tuple(n for n in SCALAR_NAMES if n not in RATES and n != INTENT)
MAD_SCALE = 1.4826


def robust_scale(x: np.ndarray) -> tuple[float, float, str]:
    """(median, scale, rule): scale = IQR, else MAD·1.4826, else 1."""
    med = float(np.median(x))
    q1, q3 = np.percentile(x, [25, 75])
    iqr = float(q3 - q1)
    if iqr > 0:
        return med, iqr, "iqr"
    mad = float(np.median(np.abs(x - med))) * MAD_SCALE
    if mad > 0:
        return med, mad, "mad"
    return med, 1.0, "constant"


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class ScalarTransform:
    """Normalise the 16 raw scalars; fit on the training split only."""

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, intent_eps: float = 1e-3):
        self.alpha = alpha
        self.beta = beta
        self.intent_eps = intent_eps

    def _pre(self, raw: np.ndarray) -> np.ndarray:
        """Columns before the robust z: log1p / smoothed logit / clipped logit."""
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != len(SCALAR_NAMES):
            raise ValueError(f"expected an (n, {len(SCALAR_NAMES)}) array of raw scalars, got {raw.shape}")
        out = np.empty_like(raw)
        idx = {name: i for i, name in enumerate(SCALAR_NAMES)}
        n_sessions = raw[:, idx["n_sessions"]]
        for name in LOG_Z:
            out[:, idx[name]] = np.log1p(np.maximum(raw[:, idx[name]], 0.0))
        for name in RATES:
            n = np.rint(raw[:, idx[name]] * n_sessions)
            out[:, idx[name]] = _logit((n + self.alpha) / (n_sessions + self.alpha + self.beta))
        eps = self.intent_eps
        out[:, idx[INTENT]] = _logit(np.clip(raw[:, idx[INTENT]], eps, 1 - eps))
        return out

    def fit(self, raw: np.ndarray) -> ScalarTransform:
        pre = self._pre(raw)
        if len(pre) == 0:
            raise ValueError("ScalarTransform.fit: no training rows")
        stats = [robust_scale(pre[:, j]) for j in range(pre.shape[1])]
        self.center_ = np.array([s[0] for s in stats])
        self.scale_ = np.array([s[1] for s in stats])
        self.rule_ = [s[2] for s in stats]
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return ((self._pre(raw) - self.center_) / self.scale_).astype(np.float32)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Normalised scalars → raw units (counts, seconds, dollars, rates in [0, 1])."""
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        pre = z * self.scale_ + self.center_
        idx = {name: i for i, name in enumerate(SCALAR_NAMES)}
        raw = np.empty_like(pre)
        for name in LOG_Z:
            raw[:, idx[name]] = np.expm1(pre[:, idx[name]])
        n_sessions = raw[:, idx["n_sessions"]]
        for name in RATES:
            p = _sigmoid(pre[:, idx[name]])
            n = p * (n_sessions + self.alpha + self.beta) - self.alpha
            raw[:, idx[name]] = np.clip(n / np.maximum(n_sessions, 1e-12), 0.0, 1.0)
        intent = _sigmoid(pre[:, idx[INTENT]])
        # the clip at ε is lossy: a clipped 0 (pure window shopper) comes back as 0
        raw[:, idx[INTENT]] = np.where(intent <= self.intent_eps * (1 + 1e-4), 0.0, intent)
        return raw

    def to_dict(self) -> dict:
        return {
            "names": list(SCALAR_NAMES),
            "alpha": self.alpha,
            "beta": self.beta,
            "intent_eps": self.intent_eps,
            "center": self.center_.tolist(),
            "scale": self.scale_.tolist(),
            "rule": list(self.rule_),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ScalarTransform:
        if list(d["names"]) != list(SCALAR_NAMES):
            raise ValueError(f"transforms.json: scalar names {d['names']} differ from {list(SCALAR_NAMES)}")
        t = cls(alpha=d["alpha"], beta=d["beta"], intent_eps=d["intent_eps"])
        t.center_ = np.array(d["center"], dtype=np.float64)
        t.scale_ = np.array(d["scale"], dtype=np.float64)
        t.rule_ = list(d["rule"])
        return t


class ChannelPCA:
    """Per-dimension z-score then PCA to `n_components` (zero-padded), fit on observed rows."""

    def __init__(self, n_components: int = 128):
        self.n_components = n_components

    def fit(self, x: np.ndarray) -> ChannelPCA:
        x = np.asarray(x, dtype=np.float64)
        d = x.shape[1]
        self.mean_ = x.mean(axis=0) if len(x) else np.zeros(d)
        std = x.std(axis=0) if len(x) else np.ones(d)
        self.std_ = np.where(std > 0, std, 1.0)
        z = (x - self.mean_) / self.std_
        k = min(self.n_components, d, len(x))
        self.components_ = np.zeros((self.n_components, d))
        self.explained_variance_ratio_ = np.zeros(self.n_components)
        if k > 0:
            zc = z - z.mean(axis=0)
            _, s, vt = np.linalg.svd(zc, full_matrices=False)
            # a deterministic sign: the largest-magnitude loading of each component is positive
            signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
            vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
            var = s**2
            total = var.sum()
            self.components_[:k] = vt[:k]
            if total > 0:
                self.explained_variance_ratio_[:k] = var[:k] / total
        self.n_fitted_ = int(k)
        self.variance_kept_ = float(self.explained_variance_ratio_.sum())
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean_) / self.std_
        return (z @ self.components_.T).astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "n_components": self.n_components,
            "n_fitted": self.n_fitted_,
            "variance_kept": self.variance_kept_,
            "mean": self.mean_.tolist(),
            "std": self.std_.tolist(),
            "components": self.components_[: self.n_fitted_].tolist(),
            "explained_variance_ratio": self.explained_variance_ratio_[: self.n_fitted_].tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ChannelPCA:
        t = cls(n_components=d["n_components"])
        t.mean_ = np.array(d["mean"], dtype=np.float64)
        t.std_ = np.array(d["std"], dtype=np.float64)
        t.n_fitted_ = int(d["n_fitted"])
        t.components_ = np.zeros((t.n_components, len(t.mean_)))
        t.explained_variance_ratio_ = np.zeros(t.n_components)
        if t.n_fitted_:
            t.components_[: t.n_fitted_] = np.array(d["components"], dtype=np.float64)
            t.explained_variance_ratio_[: t.n_fitted_] = d["explained_variance_ratio"]
        t.variance_kept_ = float(d["variance_kept"])
        return t
