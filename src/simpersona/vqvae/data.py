"""Reading the features stage's output (FEAT_DIR) for training and assignment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simpersona.features.layout import INPUT_DIM

LABEL_COLUMNS: tuple[str, ...] = ("engage_label", "explore_label", "purchase_label")


def fixed_list_to_numpy(col: pa.ChunkedArray | pa.Array, width: int = INPUT_DIM) -> np.ndarray:
    """A fixed_size_list<float32>[width] column → (N, width) float32 (zero-copy for one chunk)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    flat = col.flatten()  # respects the array's offset
    return flat.to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32, copy=False)


def read_vectors(feat_dir: Path, keep: np.ndarray, batch_rows: int = 65536) -> np.ndarray:
    """Rows of vectors.parquet where the boolean `keep` (one per row) is set, streamed in batches
    so that a FEAT_DIR with millions of buyers never sits in memory whole. → (keep.sum(), 403)"""
    out = np.empty((int(keep.sum()), INPUT_DIM), np.float32)
    start = filled = 0
    for batch in pq.ParquetFile(Path(feat_dir) / "vectors.parquet").iter_batches(batch_size=batch_rows, columns=["x"]):
        sel = keep[start : start + batch.num_rows]
        if sel.any():
            x = fixed_list_to_numpy(batch.column("x"))[sel]
            out[filled : filled + len(x)] = x
            filled += len(x)
        start += batch.num_rows
    if start != len(keep):
        raise ValueError(f"{feat_dir}: vectors.parquet has {start} rows, buyers.parquet {len(keep)}")
    return out


@dataclass
class Sample:
    """One split of the §1.6 sample: vectors, funnel signatures, aux labels (HEADS order)."""

    x: np.ndarray  # (N, 403) float32
    signature: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N, 3) int64


def load_sample(feat_dir: Path) -> dict[str, Sample]:
    """The train and val splits from FEAT_DIR (buyers.parquet and vectors.parquet share row order)."""
    feat_dir = Path(feat_dir)
    buyers = pq.read_table(
        feat_dir / "buyers.parquet",
        columns=["shop_id", "buyer_id", "split", "funnel_signature", *LABEL_COLUMNS],
    )
    ids = pq.read_table(feat_dir / "vectors.parquet", columns=["shop_id", "buyer_id"])
    if not (buyers.column("buyer_id").equals(ids.column("buyer_id")) and buyers.column("shop_id").equals(ids.column("shop_id"))):
        raise ValueError(f"{feat_dir}: buyers.parquet and vectors.parquet rows are not aligned")
    split = buyers.column("split").to_numpy(zero_copy_only=False)
    sig = buyers.column("funnel_signature").to_numpy().astype(np.int64)
    labels = np.stack([buyers.column(c).to_numpy().astype(np.int64) for c in LABEL_COLUMNS], axis=1)
    sampled = np.isin(split, ["train", "val"])
    x = read_vectors(feat_dir, sampled)
    split = split[sampled]
    out = {}
    for name in ("train", "val"):
        rows = np.flatnonzero(split == name)
        if name == "train" and rows.size == 0:
            raise ValueError(f"{feat_dir}: no buyers with split == 'train'")
        out[name] = Sample(np.ascontiguousarray(x[rows]), sig[sampled][rows], labels[sampled][rows])
    return out
