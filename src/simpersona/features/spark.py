"""The features stage past the aggregation on Spark (features.engine = pyspark).

The buyer × product pairs never leave Spark: they are grouped per buyer into three product lists
(viewed, carted, purchased), joined to the buyers' raw scalars, range-partitioned by buyer row, and
a `mapInArrow` over those buyer batches computes channel means, applies the fitted transforms and
assembles the 403-d vectors with the local path's own numpy functions (`embed.channel_weights`,
`ScalarTransform`, `ChannelPCA`, `stage.assemble`). The product embeddings reach the executors
as a broadcast (products are few), the fitted transforms in the task closure.

The driver fits the transforms on the training buyers only (their pairs are collected: at most
`sample.per_shop` buyers a shop) and joins the executors' part files, in buyer-row order, into the
single vectors.parquet of the features → personas contract (`write_one_parquet`). On a cluster the
run folder must therefore be on storage that the driver and every executor see (README).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from simpersona.features.layout import CHANNEL_DIM, CHANNELS, INPUT_DIM, MASKS, SCALAR_NAMES
from simpersona.features.transforms import ChannelPCA, ScalarTransform

# the per-buyer product-list columns, one per channel (layout.CHANNELS order)
LISTS = tuple(f"{c}_products" for c in CHANNELS)


def frame(con, expr):
    """The Spark DataFrame of an Ibis expression on an Ibis pyspark connection."""
    return con._session.sql(con.compile(expr))


def utc_schema(schema: pa.Schema) -> pa.Schema:
    """Spark's timestamps (session time zone UTC) marked UTC, as DuckDB writes them."""
    return pa.schema([f.with_type(pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(f.type) else f for f in schema])


def write_one_parquet(df, path: Path, parts_dir: Path, batch=None, **writer_kw) -> int:
    """Spark writes `df` as part files into `parts_dir` (executors, in parallel); the driver joins
    them into the one Parquet file `path` in part order — the frame's order when it was sorted or
    range-partitioned — streaming one row group at a time. `batch(record_batch) -> record_batch`
    reshapes each batch on the way (default: timestamps marked UTC). Returns the row count."""
    df.write.mode("overwrite").parquet(str(parts_dir))
    parts = sorted(Path(parts_dir).glob("part-*.parquet"))
    if batch is None:
        def batch(b):
            s = utc_schema(b.schema)
            return pa.RecordBatch.from_arrays([c.cast(f.type) for c, f in zip(b.columns, s, strict=True)], schema=s)
    n, writer = 0, None
    try:
        for part in parts:
            for b in pq.ParquetFile(part).iter_batches(batch_size=65536):
                b = batch(b)
                if writer is None:
                    writer = pq.ParquetWriter(path, b.schema, **writer_kw)
                writer.write_batch(b)
                n += b.num_rows
        if writer is None:  # no rows: an empty file with Spark's schema
            writer = pq.ParquetWriter(path, utc_schema(pq.read_schema(parts[0]) if parts else pa.schema([])), **writer_kw)
    finally:
        if writer is not None:
            writer.close()
    shutil.rmtree(parts_dir, ignore_errors=True)
    return n


def pair_rows(t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(b, p, v, k, u) pairs → (buyer_row, product_row, channel) int32/int32/int8, one per pair and channel."""
    b, p = t["b"].to_numpy().astype(np.int32), t["p"].to_numpy().astype(np.int32)
    flags = [t[c].to_numpy(zero_copy_only=False).astype(bool) for c in ("v", "k", "u")]
    return (
        np.concatenate([b[f] for f in flags]),
        np.concatenate([p[f] for f in flags]),
        np.concatenate([np.full(int(f.sum()), c, dtype=np.int8) for c, f in enumerate(flags)]),
    )


def fit_transforms(cfg, raw_scalars: np.ndarray, train: np.ndarray, emb: np.ndarray, b_rows, p_rows, chan, enabled: bool):
    """ScalarTransform and one ChannelPCA per channel fitted on the training rows, as the local path
    does; the pairs need only cover the training buyers."""
    from simpersona.features.embed import channel_weights

    n = len(raw_scalars)
    scalar_t = ScalarTransform(cfg.rate_alpha, cfg.rate_beta, cfg.intent_eps).fit(raw_scalars[train])
    train_idx = np.flatnonzero(train)
    pcas = []
    for c in range(len(CHANNELS)):
        sel = chan == c
        w, mask = channel_weights(b_rows[sel], p_rows[sel], n, emb.shape[0])
        rows = train_idx[mask[train_idx] > 0]
        pcas.append(ChannelPCA(CHANNEL_DIM).fit(np.asarray(w[rows] @ emb) if enabled else np.zeros((0, emb.shape[1]))))
    return scalar_t, pcas


def vector_batch(b: pa.RecordBatch, scalar_t: ScalarTransform, pcas: list[ChannelPCA], emb: np.ndarray,
                 enabled: bool = True) -> pa.RecordBatch:
    """One batch of buyers (buyer_row, 16 raw scalars, 3 product lists) → (buyer_row, x list<float>[403]).
    `emb`: (products, dim); `enabled` false: embeddings disabled (channels zero, masks still set)."""
    from simpersona.features.embed import channel_weights
    from simpersona.features.stage import assemble

    n = b.num_rows
    raw = np.column_stack([b.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in SCALAR_NAMES])
    masks = np.zeros((n, len(CHANNELS)), np.float32)
    chans = []
    for c, name in enumerate(LISTS):
        lists = b.column(name)  # list<int32>, null for a buyer without pairs
        k = pc.fill_null(pc.list_value_length(lists), 0).to_numpy()
        products = pc.list_flatten(lists).to_numpy().astype(np.int32)
        w, masks[:, c] = channel_weights(np.repeat(np.arange(n, dtype=np.int32), k), products, n, emb.shape[0])
        chans.append(pcas[c].transform(np.asarray(w @ emb)) if enabled else np.zeros((n, CHANNEL_DIM), np.float32))
    x = assemble(scalar_t.transform(raw), chans, masks)
    offsets = pa.array(np.arange(0, (n + 1) * INPUT_DIM, INPUT_DIM, dtype=np.int32))
    return pa.RecordBatch.from_arrays(
        [b.column("buyer_row"), pa.ListArray.from_arrays(offsets, pa.array(x.ravel(), pa.float32()))], ["buyer_row", "x"]
    )


def _vector_batches(batches, scalar_t, pcas, emb_bc, enabled):
    """mapInArrow body (runs on the executors)."""
    emb = emb_bc.value
    for b in batches:
        yield vector_batch(b, scalar_t, pcas, emb, enabled)


def channels_and_vectors(cfg, con, run_dir: Path, tmp: Path, raw: pa.Table, col: dict, train: np.ndarray,
                         emb: np.ndarray, pairs_expr, enabled: bool):
    """Fit the transforms on the training buyers, then vectors.parquet from Spark; returns
    (scalar_t, pcas, masks (n, 3)) like the local path."""
    from pyspark.sql import functions as F

    spark = con._session
    n = raw.num_rows
    pairs = frame(con, pairs_expr).persist()
    try:
        # the transforms: fitted on the driver from the training buyers' pairs
        train_rows = spark.createDataFrame(pa.table({"b": pa.array(np.flatnonzero(train), pa.int64())}).to_pandas())
        b_rows, p_rows, chan = pair_rows(pairs.join(F.broadcast(train_rows), "b").toArrow())
        raw_scalars = np.column_stack([col[name].astype(np.float64) for name in SCALAR_NAMES])
        scalar_t, pcas = fit_transforms(cfg, raw_scalars, train, emb, b_rows, p_rows, chan, enabled)
        if cfg.progress:
            print("[features] fitted transforms (Spark); PCA variance kept " + ", ".join(f"{p.variance_kept_:.3f}" for p in pcas))

        # every buyer's raw scalars, read by the executors; the product lists grouped per buyer
        buyers_path = tmp / "spark_buyers.parquet"
        pq.write_table(pa.table({"buyer_row": pa.array(np.arange(n), pa.int64()), **{c: raw[c] for c in SCALAR_NAMES}}), buyers_path)
        lists = pairs.groupBy("b").agg(
            *[F.collect_list(F.when(F.col(f), F.col("p").cast("int"))).alias(name) for f, name in zip(("v", "k", "u"), LISTS, strict=True)]
        )
        buyers = spark.read.parquet(str(buyers_path))
        j = buyers.join(lists, buyers.buyer_row == lists.b, "left").select("buyer_row", *SCALAR_NAMES, *LISTS)
        n_parts = max(cfg.threads, -(-n // cfg.block_rows))
        emb_bc = spark.sparkContext.broadcast(np.ascontiguousarray(emb, dtype=np.float32))
        out_schema = "buyer_row bigint, x array<float>"
        vec = j.repartitionByRange(n_parts, "buyer_row").sortWithinPartitions("buyer_row").mapInArrow(
            lambda it: _vector_batches(it, scalar_t, pcas, emb_bc, enabled), out_schema
        )
        masks = np.zeros((n, len(CHANNELS)), np.float32)
        from simpersona.features.stage import VECTOR_SCHEMA, VECTOR_TYPE
        at = [0]  # the next buyer row expected: part files arrive in buyer-row order, every buyer once

        def batch(b: pa.RecordBatch) -> pa.RecordBatch:
            start, m = at[0], b.num_rows
            rows = b.column("buyer_row").to_numpy()
            if not np.array_equal(rows, np.arange(start, start + m)):
                raise RuntimeError(f"features (Spark): vector rows {rows[:1]}… arrived out of order (expected {start})")
            flat = pc.list_flatten(b.column("x"))
            masks[start : start + m] = flat.to_numpy().reshape(m, INPUT_DIM)[:, MASKS]
            at[0] += m
            return pa.RecordBatch.from_arrays(
                [raw["shop_id"].slice(start, m).combine_chunks(), raw["buyer_id"].slice(start, m).combine_chunks(),
                 pa.FixedSizeListArray.from_arrays(flat, type=VECTOR_TYPE)], schema=VECTOR_SCHEMA)

        # no dictionary and no min/max statistics for the float vectors (as the local path writes them)
        got = write_one_parquet(vec, run_dir / "vectors.parquet", tmp / "vectors.spark", batch,
                                use_dictionary=["shop_id"], write_statistics=["shop_id", "buyer_id"])
        if got != n:
            raise RuntimeError(f"features (Spark): {got} vectors for {n} buyers")
        emb_bc.unpersist()
    finally:
        pairs.unpersist()
    return scalar_t, pcas, masks
