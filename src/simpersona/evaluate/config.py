"""Config of `simpersona evaluate …`: one sub-config per evaluation (preset section `evaluate:`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ClusteringConfig:
    # VQ-VAE run folder
    model: Path | None = None
    # FEAT_DIR (vectors.parquet, buyers.parquet)
    features: Path | None = None
    # buyers compared: these values of buyers.split (the §1.6 sample by default)
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    # k of the MiniBatchKMeans baseline (0: the model's codebook size)
    kmeans_k: int = 0
    # MiniBatchKMeans random_state
    kmeans_seed: int = 0
    # MiniBatchKMeans batch size
    kmeans_batch_size: int = 1024
    # incompatible mixing: A–C and D each hold at least this share of a code
    mix_threshold: float = 0.2
    # incompatible mixing is only judged on codes with at least this many buyers
    mix_min_size: int = 10
    # a code spans non-adjacent bins when its low and high bins each hold at least this share
    span_threshold: float = 0.1
    # Table 1 again over the codes with at least this many buyers (both methods; near-singletons are trivially pure)
    min_code_size: int = 10
    # buyers per code a log needs for a K to suit it (the suggested K: the largest power of two ≤ buyers / this)
    buyers_per_code: int = 25
    # torch / BLAS threads
    threads: int = 2


@dataclass
class PopulationConfig:
    # output folder of `simpersona personas assign` (assignments.parquet)
    personas: Path | None = None
    # FEAT_DIR (buyers.parquet with split, stratum and raw scalars)
    features: Path | None = None
    # buyers evaluated: these values of buyers.split (whole held-out shops by default)
    splits: list[str] = field(default_factory=lambda: ["holdout"])
    # used instead (and the report says so) when no buyer is in `splits`; empty: that is an error
    fallback_splits: list[str] = field(default_factory=lambda: ["train", "val", "holdout", "excluded"])
    # strata kept (the paper's App. B uses A–D)
    strata: list[str] = field(default_factory=lambda: ["A", "B", "C", "D"])
    # a shop's stratum mix counts as recovered when its JS divergence is below this
    js_good: float = 0.10
    # generator truth: a parquet with shop_id, buyer_id, type (optional)
    truth: Path | None = None
    # ingest folder whose salt (checked by its salt_id) hashes the truth's raw buyer ids (None: truth ids are already hashed)
    ingest: Path | None = None


@dataclass
class EvaluateConfig:
    # Table 1: VQ-VAE codes vs MiniBatchKMeans
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    # App. B population recovery (+ truth recovery on generated data)
    population: PopulationConfig = field(default_factory=PopulationConfig)
