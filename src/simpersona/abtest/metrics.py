"""The experiment's metrics, per session, from canonical events: one definition for the simulated
storefront log and for a (generated) real A/B log alike.

    atc        1 when the session added to cart, else 0
    checkout   1 when it started checkout
    purchase   1 when it purchased
    revenue    Σ price × quantity of its purchase rows (a missing price or quantity counts 0 / 1)
    pages      page loads: page_view, collection_view, search, product_view, checkout_start events
    products   distinct products viewed
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

METRICS: tuple[str, ...] = ("atc", "checkout", "purchase", "revenue", "pages", "products")
# Event types that are one page load each.
PAGE_EVENTS: tuple[str, ...] = ("page_view", "collection_view", "search", "product_view", "checkout_start")
KEYS: tuple[str, ...] = ("shop_id", "buyer_id", "session_id")


def session_metrics(events: pa.Table) -> pa.Table:
    """shop_id, buyer_id, session_id and the METRICS (float64) of every session in `events`
    (canonical columns), ordered by the keys.

    >>> ev = pa.table({"shop_id": ["s"] * 3, "buyer_id": ["b"] * 3, "session_id": ["x"] * 3,
    ...                "event_type": ["page_view", "add_to_cart", "purchase"], "product_id": [None, "p", "p"],
    ...                "price": [None, 2.0, 2.0], "quantity": [None, 3, 3]})
    >>> {k: v[0] for k, v in session_metrics(ev).select(list(METRICS)).to_pydict().items()}
    {'atc': 1.0, 'checkout': 0.0, 'purchase': 1.0, 'revenue': 6.0, 'pages': 1.0, 'products': 0.0}
    """
    con = duckdb.connect()
    con.execute("SET threads=1")
    con.register("ev", events.select([c for c in (*KEYS, "event_type", "product_id", "price", "quantity")]))
    pages = ", ".join(f"'{e}'" for e in PAGE_EVENTS)
    out = con.sql(f"""
        SELECT shop_id, buyer_id, session_id,
               max(CASE WHEN event_type = 'add_to_cart' THEN 1 ELSE 0 END)::DOUBLE AS atc,
               max(CASE WHEN event_type = 'checkout_start' THEN 1 ELSE 0 END)::DOUBLE AS checkout,
               max(CASE WHEN event_type = 'purchase' THEN 1 ELSE 0 END)::DOUBLE AS purchase,
               coalesce(sum(CASE WHEN event_type = 'purchase' THEN coalesce(price, 0) * coalesce(quantity, 1) END), 0)::DOUBLE AS revenue,
               count(*) FILTER (WHERE event_type IN ({pages}))::DOUBLE AS pages,
               count(DISTINCT product_id) FILTER (WHERE event_type = 'product_view')::DOUBLE AS products
        FROM ev GROUP BY ALL ORDER BY ALL""").to_arrow_table()
    con.close()
    return out


def metric_matrix(table: pa.Table, sessions: list[tuple[str, str, str]]) -> np.ndarray:
    """(n, len(METRICS)) values of `sessions` (keys) from a `session_metrics` table, in the given
    order; a session without events (it crashed before its first page) is all zeros."""
    at = {k: i for i, k in enumerate(zip(*(table.column(c).to_pylist() for c in KEYS)))}
    vals = np.column_stack([table.column(m).to_numpy(zero_copy_only=False) for m in METRICS]) if table.num_rows else np.zeros((0, len(METRICS)))
    out = np.zeros((len(sessions), len(METRICS)))
    for j, key in enumerate(sessions):
        i = at.get(key)
        if i is not None:
            out[j] = vals[i]
    return out
