"""Persona assignment on Spark (personas.engine = pyspark, or "auto" on a features folder made on Spark).

The trained encoder (`assign.Assigner`, the local kernel) runs in a `mapInArrow` over batches of
vectors.parquet rows on the executors (batches of rows → codes, torch at one thread a task);
the per-shop mix, P(stratum | code) and the per-code scalar sums are Spark aggregations over
the codes joined to buyers.parquet. The driver receives only those (shops × K), (K × strata) and
(K × 16) tables, and joins the executors' sorted part files into assignments.parquet
(`features.spark.write_one_parquet`), in the features' (shop_id, buyer_id) order.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from simpersona.contracts.labels import STRATA
from simpersona.features.layout import SCALAR_NAMES


def code_batch(b: pa.RecordBatch, assigner) -> pa.RecordBatch:
    """(shop_id, buyer_id, x list<float>[403]) → (shop_id, buyer_id, code int16)."""
    import pyarrow.compute as pc

    from simpersona.features.layout import INPUT_DIM

    x = pc.list_flatten(b.column("x")).to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, INPUT_DIM)
    codes = assigner(np.ascontiguousarray(x))
    return pa.RecordBatch.from_arrays([b.column("shop_id"), b.column("buyer_id"), pa.array(codes.astype(np.int16))],
                                      ["shop_id", "buyer_id", "code"])


def _code_batches(batches, assigner):
    """mapInArrow body (runs on the executors): the encoder at one torch thread per Spark task."""
    import torch

    torch.set_num_threads(1)
    for b in batches:
        yield code_batch(b, assigner)


def assign(cfg, feat: Path, assigner, k: int, out_path: Path):
    """Codes for every row of FEAT_DIR/vectors.parquet → out_path (shop_id, buyer_id, code int16);
    returns (shop_index {shop: row}, shop_counts [(K,) per shop], strata_counts (K, strata),
    raw_sums (K, 16), rows, seconds of the codes job) as the local pass accumulates them."""
    from pyspark.sql import functions as F

    from simpersona.features.engine import spark_session
    from simpersona.features.spark import write_one_parquet

    spark = spark_session(cfg.threads)
    t = time.perf_counter()
    vec = spark.read.parquet(str(feat / "vectors.parquet"))
    codes = vec.mapInArrow(lambda it: _code_batches(it, assigner), "shop_id string, buyer_id string, code smallint").persist()
    try:
        n_rows = write_one_parquet(codes.orderBy("shop_id", "buyer_id"), out_path, out_path.parent / f"_{out_path.stem}.spark")
        seconds = time.perf_counter() - t
        buyers = spark.read.parquet(str(feat / "buyers.parquet")).select("shop_id", "buyer_id", "stratum", *SCALAR_NAMES)
        j = codes.join(buyers, ["shop_id", "buyer_id"])
        mix = j.groupBy("shop_id", "code").count().toArrow()
        per_stratum = j.groupBy("code", "stratum").count().toArrow()
        sums = j.groupBy("code").agg(*[F.sum(F.col(c).cast("double")).alias(c) for c in SCALAR_NAMES]).toArrow()
    finally:
        codes.unpersist()

    shops = sorted(set(mix["shop_id"].to_pylist()))  # the local pass meets the shops in this order
    shop_index = {s: i for i, s in enumerate(shops)}
    shop_counts = [np.zeros(k, np.int64) for _ in shops]
    for s, c, n in zip(mix["shop_id"].to_pylist(), mix["code"].to_pylist(), mix["count"].to_pylist(), strict=True):
        shop_counts[shop_index[s]][c] = n
    strata_counts = np.zeros((k, len(STRATA)), np.int64)
    st = {s: i for i, s in enumerate(STRATA)}
    for c, s, n in zip(per_stratum["code"].to_pylist(), per_stratum["stratum"].to_pylist(), per_stratum["count"].to_pylist(), strict=True):
        strata_counts[c, st[s]] = n
    raw_sums = np.zeros((k, len(SCALAR_NAMES)))
    at = sums["code"].to_numpy()
    for j_, c in enumerate(SCALAR_NAMES):
        raw_sums[at, j_] = sums[c].to_numpy()
    if strata_counts.sum() != n_rows:
        raise ValueError(f"{feat}: vectors.parquet has {n_rows} rows, {int(strata_counts.sum())} of them match buyers.parquet")
    return shop_index, shop_counts, strata_counts, raw_sums, n_rows, seconds
