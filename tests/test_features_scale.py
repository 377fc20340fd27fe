"""The features engine stays bounded: the buyer × product pairs query has no fan-out (its
intermediate results stay within a small multiple of the events), the pairs are exactly the
distinct ones, and DuckDB runs with a spill cap."""

from __future__ import annotations

import datetime as dt
import re

import ibis
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simpersona.events.schema import CATALOG_SCHEMA, EVENT_SCHEMA
import pytest

from simpersona.features.stage import (
    EmbeddingConfig,
    FeaturesConfig,
    FeaturesError,
    buyer_product_expr,
    buyer_product_rows,
    connect,
    run,
)

N_BUYERS, N_PRODUCTS = 3000, 400  # one shop: a buyers × products cross product would be 1.2M rows


def _input(d):
    rng = np.random.default_rng(0)
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    kinds = np.array(["product_view", "product_view", "add_to_cart", "purchase", "search"])
    rows = []
    for b in range(N_BUYERS):
        for i in range(3):
            kind = str(kinds[rng.integers(len(kinds))])
            prod = None if kind == "search" else f"p{rng.integers(N_PRODUCTS + 20)}"  # some not in the catalog
            rows.append(dict(shop_id="s1", buyer_id=f"b{b}", session_id="1", ts=t0 + dt.timedelta(seconds=i),
                             event_type=kind, product_id=prod, collection_id=None, query=None, price=1.0, quantity=1))
    d.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), d / "events.parquet")
    keys = sorted({r["buyer_id"] for r in rows})
    pq.write_table(pa.table({"shop_id": ["s1"] * len(keys), "buyer_id": keys, "buyer_row": np.arange(len(keys))}), d / "keys.parquet")
    prods = [f"p{i}" for i in range(N_PRODUCTS)]
    pq.write_table(pa.table({"shop_id": ["s1"] * N_PRODUCTS, "product_id": prods, "row": np.arange(N_PRODUCTS)}), d / "index.parquet")
    pq.write_table(pa.Table.from_pylist([], schema=CATALOG_SCHEMA), d / "catalog.parquet")
    return rows, {k: i for i, k in enumerate(keys)}, {p: i for i, p in enumerate(prods)}


def test_pairs_no_fanout_and_exact(tmp_path):
    rows, brow, prow = _input(tmp_path / "in")
    d = tmp_path / "in"
    con = connect(FeaturesConfig(progress=False), tmp_path / "tmp")
    expr = buyer_product_expr(con, d / "events.parquet", d / "keys.parquet", d / "index.parquet")
    plan = con.con.execute("EXPLAIN ANALYZE " + ibis.to_sql(expr)).fetchall()[0][1]
    biggest = max(int(n.replace(",", "")) for n in re.findall(r"([\d,]+) rows", plan))
    assert biggest <= 2 * len(rows), f"an operator produced {biggest:,} rows from {len(rows):,} events:\n{plan}"

    want = set()
    for r in rows:
        if r["product_id"] not in prow:
            continue
        chans = {"product_view": (0,), "add_to_cart": (1,), "purchase": (1, 2)}[r["event_type"]]
        want |= {(brow[r["buyer_id"]], prow[r["product_id"]], c) for c in chans}
    b, p, c = buyer_product_rows(con, d / "events.parquet", d / "keys.parquet", d / "index.parquet")
    got = list(zip(b.tolist(), p.tolist(), c.tolist(), strict=True))
    assert len(got) == len(set(got)) == len(want)  # one row per distinct (buyer, product, channel)
    assert set(got) == want


def test_duckdb_limits_set(tmp_path):
    con = connect(FeaturesConfig(progress=False, memory_limit="1GB", max_temp_directory_size="3GB"), tmp_path)
    (mem, cap), = con.raw_sql(
        "SELECT current_setting('memory_limit'), current_setting('max_temp_directory_size')").fetchall()
    assert mem.startswith("953") and cap.startswith("2.7"), (mem, cap)  # 1 GB, 3 GB in GiB


def test_out_of_memory_names_the_fields(tmp_path):
    _input(tmp_path / "in")
    cfg = FeaturesConfig(input=tmp_path / "in", progress=False, memory_limit="1MB", max_temp_directory_size="1MB",
                         embedding=EmbeddingConfig(enabled=False))
    with pytest.raises(FeaturesError, match="memory_limit='1MB'.*max_temp_directory_size='1MB'"):
        run(cfg, tmp_path / "out")


def test_pairs_same_without_the_hash_join(tmp_path, monkeypatch):
    """Where the 64-bit key hash is not unique over the buyers, the events are joined to their buyer
    rows on the string keys: the same pairs."""
    from simpersona.features import stage

    _input(tmp_path / "in")
    d = tmp_path / "in"
    con = connect(FeaturesConfig(progress=False), tmp_path / "tmp")
    keys = stage.engine_table(con, "_keys", pq.read_table(d / "keys.parquet"))
    assert stage._keys_hash_unique(con, keys, keys.count().to_pyarrow().as_py())
    by_hash = buyer_product_rows(con, d / "events.parquet", keys, d / "index.parquet")
    monkeypatch.setattr(stage, "_keys_hash_unique", lambda *a: False)
    by_strings = buyer_product_rows(con, d / "events.parquet", d / "keys.parquet", d / "index.parquet")
    for a, b in zip(by_hash, by_strings, strict=True):
        np.testing.assert_array_equal(a, b)  # both ordered by channel, buyer, product
