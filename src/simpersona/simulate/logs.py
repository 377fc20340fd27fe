"""Simulated (or real) event logs through the features stage's own aggregation.

`session_stats(events, catalog)` runs `features.aggregate.session_table` (the enrichment pass the
real data went through) on DuckDB and returns one row per session with the event counts and
funnel flags (funnel closure: a purchase session is a checkout session is an add-to-cart session).
`episode_stats(sim_dir)` joins those to the episodes table: one row per episode, zeros where an
episode logged nothing (a reset that crashed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa

STAT_COLUMNS: tuple[str, ...] = (
    "n_events", "n_page_view", "n_collection_view", "n_search", "n_product_view", "n_add_to_cart",
    "n_remove_from_cart", "n_checkout_start", "n_purchase", "has_atc", "has_checkout", "has_purchase",
    "has_view", "has_search", "has_collection", "is_browse_only", "duration_s",
)


def session_stats(events_path: Path, catalog_path: Path, threads: int = 2) -> pa.Table:
    """One row per (shop_id, buyer_id, session_id): STAT_COLUMNS, from the features aggregation."""
    from simpersona.features import aggregate as agg
    from simpersona.features.engine import connect

    with tempfile.TemporaryDirectory() as tmp:
        con = connect("duckdb", threads, "1GB", Path(tmp))
        s = agg.session_table(con.read_parquet(str(events_path)), con.read_parquet(str(catalog_path)), context=False)
        out = s.select(*agg.SESSION_KEYS, *STAT_COLUMNS).to_pyarrow()
        con.disconnect()
    return out


def episode_stats(sim_dir: Path, threads: int = 2) -> pa.Table:
    """episodes.parquet ⋈ session_stats of events.parquet: one row per episode (zeros if no events)."""
    import duckdb

    sim_dir = Path(sim_dir)
    import pyarrow.parquet as pq

    stats = session_stats(sim_dir / "events.parquet", sim_dir / "catalog.parquet", threads)  # noqa: F841
    episodes = pq.read_table(sim_dir / "episodes.parquet")  # noqa: F841
    cols = ", ".join(f"coalesce(s.{c}, {'false' if c.startswith(('has_', 'is_')) else '0'}) AS {c}" for c in STAT_COLUMNS)
    con = duckdb.connect()
    return con.sql(f"""SELECT e.*, {cols} FROM episodes e LEFT JOIN stats s
                           USING (shop_id, buyer_id, session_id) ORDER BY e.shop_id, e.buyer_id""").to_arrow_table()
