"""`simpersona evaluate clustering`: Table 1 — VQ-VAE codes vs MiniBatchKMeans on the same vectors.

Both partitions are computed on the same buyers (by default the §1.6 sample, split train + val)
and the same 403-d vectors; metrics are defined in `evaluate/metrics.py`. The geometric metrics
(within-code cosine, Calinski–Harabasz) are reported in three spaces: the paper's 403-d vector,
the 16 behavioural scalars (`*_scalars`) and the three product-text channels (`*_products`): after
the per-dimension z-score + PCA of §1.3 the product channels hold ~99% of the 403-d variance, so
the 403-d figures measure product-text tightness, which k-means optimises directly.

Three comparisons, so neither method wins by the number of codes it uses:
- `kmeans` / `vqvae`: K = `kmeans_k` (default the codebook size) for both, as in the paper;
- `kmeans_equal_codes`: k-means with K = the codes the VQ-VAE actually uses on these buyers;
- `min_code_size`: every metric again over the buyers of codes with ≥ `min_code_size` buyers
  (near-singleton codes are trivially pure and tight), with the share of buyers they hold.
`suggested_k`: the largest power of two ≤ buyers / `buyers_per_code`, the K that suits a log of
that size. Writes clustering.json, clustering.md, meta.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from simpersona.config import ConfigError, write_meta
from simpersona.contracts.labels import HEADS
from simpersona.evaluate import metrics as M
from simpersona.evaluate.config import ClusteringConfig
from simpersona.features.layout import CHANNEL_SLICES, SCALARS, STRATA
from simpersona.vqvae.checkpoint import load_model
from simpersona.vqvae.data import LABEL_COLUMNS, read_vectors

# the paper's Table 1 (k-means, VQ-VAE)
PAPER: dict[str, tuple[float, float]] = {
    "mean_stratum_purity_pct": (78.9, 84.5),
    "incompatible_mixing_codes": (6, 0),
    "nonadjacent_engage_pct": (66.7, 0.5),
    "nonadjacent_explore_pct": (4.6, 0.0),
    "nonadjacent_purchase_pct": (5.4, 0.0),
    "mean_within_cosine": (0.722, 0.774),
    "calinski_harabasz": (173.8, 206.5),
}
# the spaces of the geometric metrics: suffix → columns of the 403-d vector
SPACES: dict[str, slice] = {"": slice(None), "_scalars": SCALARS, "_products": slice(CHANNEL_SLICES[0].start, CHANNEL_SLICES[-1].stop)}
HIGHER_IS_BETTER = {"mean_stratum_purity_pct", "weighted_stratum_purity_pct",
                    *(f"{m}{sp}" for m in ("mean_within_cosine", "calinski_harabasz") for sp in SPACES)}


def partition_metrics(x: np.ndarray, codes: np.ndarray, strata: np.ndarray, labels: np.ndarray, k: int,
                      cfg: ClusteringConfig) -> dict[str, float]:
    """All Table 1 metrics of one partition. strata (N,) ints into STRATA; labels (N, 3)."""
    st = M.contingency(codes, strata, k, len(STRATA))
    out = {
        "mean_stratum_purity_pct": 100 * M.mean_purity(st),
        "weighted_stratum_purity_pct": 100 * M.weighted_purity(st),
        "incompatible_mixing_codes": M.incompatible_codes(st, cfg.mix_threshold, cfg.mix_min_size),
    }
    for i, name in enumerate(HEADS):
        bins = M.contingency(codes, labels[:, i], k, 3)
        out[f"nonadjacent_{name}_pct"] = M.pct_nonadjacent(bins, cfg.span_threshold)
    for sp, cols in SPACES.items():
        out[f"mean_within_cosine{sp}"] = M.mean_within_cosine(x[:, cols], codes, k)
        out[f"calinski_harabasz{sp}"] = M.calinski_harabasz(x[:, cols], codes)
    out["codes_used"] = int(np.unique(codes).size)
    return out


def large_codes(codes: np.ndarray, min_size: int) -> np.ndarray:
    """(N,) bool: the buyers whose code holds at least `min_size` buyers.

    >>> large_codes(np.array([0, 0, 1, 2, 2, 2]), 2).tolist()
    [True, True, False, True, True, True]
    """
    return np.bincount(codes)[codes] >= min_size


def suggested_k(n_buyers: int, buyers_per_code: int) -> int:
    """The largest power of two ≤ n_buyers / buyers_per_code (at least 2): a K whose codes can
    each hold `buyers_per_code` buyers.

    >>> suggested_k(893, 25), suggested_k(8045, 25), suggested_k(10, 25)
    (32, 256, 2)
    """
    return 2 ** max(1, int(np.floor(np.log2(max(n_buyers / buyers_per_code, 2)))))


def kmeans_codes(x: np.ndarray, k: int, cfg: ClusteringConfig) -> np.ndarray:
    """MiniBatchKMeans labels with k clusters (at most one per buyer)."""
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    # one OpenMP/BLAS thread: sklearn's threaded inertia sums (which drive early stopping) add the
    # threads' partial sums in arrival order, so more threads could end the fit at another step
    with threadpool_limits(limits=1):
        return MiniBatchKMeans(n_clusters=min(k, len(x)), random_state=cfg.kmeans_seed,
                               batch_size=cfg.kmeans_batch_size).fit_predict(x)


def load_eval_buyers(feat_dir: Path, splits: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (N, 403), stratum index (N,), aux labels (N, 3) of the buyers whose split is in `splits`."""
    b = pq.read_table(feat_dir / "buyers.parquet", columns=["split", "stratum", *LABEL_COLUMNS])
    keep = np.isin(b.column("split").to_numpy(zero_copy_only=False), splits)
    rows = np.flatnonzero(keep)
    x = read_vectors(feat_dir, keep)
    st = np.searchsorted(np.array(STRATA), b.column("stratum").to_numpy(zero_copy_only=False)[rows])
    labels = np.stack([b.column(c).to_numpy()[rows].astype(np.int64) for c in LABEL_COLUMNS], 1)
    return np.ascontiguousarray(x), st, labels


def run(cfg: ClusteringConfig, out_dir: Path) -> dict:
    if cfg.model is None or cfg.features is None:
        raise ConfigError("evaluate clustering needs --model RUN_DIR and --features FEAT_DIR")
    out_dir = Path(out_dir)
    torch.set_num_threads(cfg.threads)
    model, _ = load_model(cfg.model)
    x, strata, labels = load_eval_buyers(Path(cfg.features), cfg.splits)
    if len(x) == 0:
        raise ConfigError(f"no buyers with split in {cfg.splits}")
    k_vq = model.cfg.codebook_size
    k_km = cfg.kmeans_k or k_vq
    vq = np.concatenate([model.encode_codes(torch.from_numpy(x[i : i + 65536])).numpy()
                         for i in range(0, len(x), 65536)])
    km = kmeans_codes(x, k_km, cfg)
    k_eq = int(np.unique(vq).size)
    km_eq = km if k_eq == k_km else kmeans_codes(x, k_eq, cfg)
    parts = {"kmeans": (km, k_km), "kmeans_equal_codes": (km_eq, k_eq), "vqvae": (vq, k_vq)}
    small: dict = {"min_code_size": cfg.min_code_size}
    for name, (c, k) in parts.items():
        keep = large_codes(c, cfg.min_code_size)
        small[name] = ({**partition_metrics(x[keep], c[keep], strata[keep], labels[keep], k, cfg),
                        "buyers_pct": 100 * float(keep.mean())} if keep.sum() >= 2 else {"value": None, "note": "n too small"})
    report = {
        "n_buyers": len(x), "splits": cfg.splits, "k": {"kmeans": k_km, "kmeans_equal_codes": k_eq, "vqvae": k_vq},
        "suggested_k": suggested_k(len(x), cfg.buyers_per_code), "buyers_per_code": cfg.buyers_per_code,
        "definitions": {
            "mean_stratum_purity_pct": "mean over non-empty codes of the majority stratum's share",
            "incompatible_mixing_codes": f"codes (≥{cfg.mix_min_size} buyers) where A–C and D each ≥ {cfg.mix_threshold:.0%}",
            "nonadjacent_*_pct": f"% buyers in codes whose low and high bins each hold ≥ {cfg.span_threshold:.0%}",
            "mean_within_cosine": "mean over codes (≥2 buyers) of the mean pairwise cosine of their 403-d vectors",
            "calinski_harabasz": "CH on the 403-d vectors (App. H)",
            "*_scalars": "the same two on the 16 normalised behavioural scalars only (not in the paper)",
            "*_products": "the same two on the three product-text channels only (384 dims, ~99% of the 403-d variance)",
            "kmeans_equal_codes": "k-means with K = the codes the VQ-VAE uses on these buyers",
            "min_code_size": f"every metric over the buyers of codes with ≥ {cfg.min_code_size} buyers (buyers_pct: their share)",
            "suggested_k": f"largest power of two ≤ buyers / {cfg.buyers_per_code}",
        },
        **{name: partition_metrics(x, c, strata, labels, k, cfg) for name, (c, k) in parts.items()},
        "min_code_size": small,
        "paper": {m: {"kmeans": a, "vqvae": b} for m, (a, b) in PAPER.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "clustering.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "clustering.md").write_text(format_table(report) + "\n")
    write_meta(out_dir, "evaluate.clustering", cfg, n_buyers=len(x))
    return report


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.1f}" if isinstance(v, float) else str(v))


def format_table(report: dict) -> str:
    """Markdown tables: ours (k-means at K and at the VQ-VAE's used codes, VQ-VAE) beside the
    paper's figures; the same over codes with ≥ min_code_size buyers; the suggested K."""
    k = report["k"]
    rows = [f"| metric | k-means (K = {k['kmeans']}) | k-means (K = {k['kmeans_equal_codes']}, the VQ-VAE's used codes) | "
            "VQ-VAE (ours) | k-means (paper) | VQ-VAE (paper) |", "|---|---|---|---|---|---|"]
    for m in report["vqvae"]:
        arrow = " ↑" if m in HIGHER_IS_BETTER else (" ↓" if m != "codes_used" else "")
        paper = report["paper"].get(m, {"kmeans": "–", "vqvae": "–"})
        rows.append(f"| {m}{arrow} | {_fmt(report['kmeans'][m])} | {_fmt(report['kmeans_equal_codes'][m])} | "
                    f"{_fmt(report['vqvae'][m])} | {_fmt(paper['kmeans'])} | {_fmt(paper['vqvae'])} |")
    head = f"Table 1 on {report['n_buyers']:,} buyers (splits {', '.join(report['splits'])}); K = {k}"
    sm = report["min_code_size"]
    small = [f"Over codes with ≥ {sm['min_code_size']} buyers:", "",
             "| metric | k-means (K) | k-means (equal codes) | VQ-VAE |", "|---|---|---|---|"]
    if all("note" not in sm[n] for n in ("kmeans", "kmeans_equal_codes", "vqvae")):
        for m in ("buyers_pct", *report["vqvae"]):
            small.append(f"| {m} | " + " | ".join(_fmt(sm[n][m]) for n in ("kmeans", "kmeans_equal_codes", "vqvae")) + " |")
    else:
        small.append("| (n too small) | – | – | – |")
    tail = (f"Suggested K for {report['n_buyers']:,} buyers: {report['suggested_k']} "
            f"(≥ {report['buyers_per_code']} buyers per code)")
    return head + "\n\n" + "\n".join(rows) + "\n\n" + "\n".join(small) + "\n\n" + tail
