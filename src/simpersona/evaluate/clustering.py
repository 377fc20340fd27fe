"""`simpersona evaluate clustering`: Table 1 — VQ-VAE codes vs MiniBatchKMeans on the same vectors.

Both partitions are computed on the same buyers (by default the §1.6 sample, split train + val)
and the same 403-d vectors; metrics are defined in `evaluate/metrics.py`. Writes
clustering.json, clustering.md, meta.json.
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
from simpersona.features.layout import SCALARS, STRATA
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
HIGHER_IS_BETTER = {"mean_stratum_purity_pct", "weighted_stratum_purity_pct", "mean_within_cosine", "calinski_harabasz",
                    "mean_within_cosine_scalars", "calinski_harabasz_scalars"}


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
    out["mean_within_cosine"] = M.mean_within_cosine(x, codes, k)
    out["calinski_harabasz"] = M.calinski_harabasz(x, codes)
    out["mean_within_cosine_scalars"] = M.mean_within_cosine(x[:, SCALARS], codes, k)
    out["calinski_harabasz_scalars"] = M.calinski_harabasz(x[:, SCALARS], codes)
    out["codes_used"] = int(np.unique(codes).size)
    return out


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
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

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
    # one OpenMP/BLAS thread: sklearn's threaded inertia sums (which drive early stopping) add the
    # threads' partial sums in arrival order, so more threads could end the fit at another step
    with threadpool_limits(limits=1):
        km = MiniBatchKMeans(n_clusters=min(k_km, len(x)), random_state=cfg.kmeans_seed,
                             batch_size=cfg.kmeans_batch_size).fit_predict(x)
    report = {
        "n_buyers": len(x), "splits": cfg.splits, "k": {"kmeans": k_km, "vqvae": k_vq},
        "definitions": {
            "mean_stratum_purity_pct": "mean over non-empty codes of the majority stratum's share",
            "incompatible_mixing_codes": f"codes (≥{cfg.mix_min_size} buyers) where A–C and D each ≥ {cfg.mix_threshold:.0%}",
            "nonadjacent_*_pct": f"% buyers in codes whose low and high bins each hold ≥ {cfg.span_threshold:.0%}",
            "mean_within_cosine": "mean over codes (≥2 buyers) of the mean pairwise cosine of their 403-d vectors",
            "calinski_harabasz": "CH on the 403-d vectors (App. H)",
            "*_scalars": "the same two on the 16 normalised behavioural scalars only (not in the paper)",
        },
        "kmeans": partition_metrics(x, km, strata, labels, k_km, cfg),
        "vqvae": partition_metrics(x, vq, strata, labels, k_vq, cfg),
        "paper": {m: {"kmeans": a, "vqvae": b} for m, (a, b) in PAPER.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "clustering.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "clustering.md").write_text(format_table(report) + "\n")
    write_meta(out_dir, "evaluate.clustering", cfg, n_buyers=len(x))
    return report


def format_table(report: dict) -> str:
    """Markdown table: ours (k-means, VQ-VAE) beside the paper's figures."""
    rows = ["| metric | k-means (ours) | VQ-VAE (ours) | k-means (paper) | VQ-VAE (paper) |",
            "|---|---|---|---|---|"]
    for m in report["vqvae"]:
        arrow = " ↑" if m in HIGHER_IS_BETTER else (" ↓" if m != "codes_used" else "")
        paper = report["paper"].get(m, {"kmeans": "–", "vqvae": "–"})
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
        rows.append(f"| {m}{arrow} | {fmt(report['kmeans'][m])} | {fmt(report['vqvae'][m])} | "
                    f"{fmt(paper['kmeans'])} | {fmt(paper['vqvae'])} |")
    head = f"Table 1 on {report['n_buyers']:,} buyers (splits {', '.join(report['splits'])}); K = {report['k']}"
    return head + "\n\n" + "\n".join(rows)
