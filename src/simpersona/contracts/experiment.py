"""An A/B experiment, defined once for the storefront that serves it, the generator that writes
real-looking logs of it (`synth.variants`) and the stage that simulates and tests it (`abtest`):
the variant (`VariantConfig`: what arm B changes) and the metrics, per session, from canonical
events:

    atc        1 when the session added to cart, else 0
    checkout   1 when it started checkout
    purchase   1 when it purchased
    revenue    Σ price × quantity of its purchase rows (a missing price or quantity counts 0 / 1)
    pages      page loads: page_view, collection_view, search, product_view, checkout_start events
    products   distinct products viewed
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

METRICS: tuple[str, ...] = ("atc", "checkout", "purchase", "revenue", "pages", "products")
# Event types that are one page load each.
PAGE_EVENTS: tuple[str, ...] = ("page_view", "collection_view", "search", "product_view", "checkout_start")
KEYS: tuple[str, ...] = ("shop_id", "buyer_id", "session_id")


@dataclass
class VariantConfig:
    """Variant B of a shop = variant A plus these declared changes; empty `name` = no experiment."""

    # Experiment name, logged beside each session; "" serves everyone variant A.
    name: str = ""
    # Share of sessions served variant B (assigned by a hash of the session id).
    share_b: float = 0.5
    # B shows a free-shipping banner and charges no shipping.
    free_shipping_banner: bool = False
    # B changes the prices of this collection (path prefix, e.g. "apparel/women"); "" = none.
    price_collection: str = ""
    # B multiplies the prices of `price_collection` by this factor.
    price_factor: float = 1.0
    # B's order of the home page's featured products.
    home_order: Literal["catalog", "price_asc", "price_desc", "title"] = "catalog"
    # B's checkout asks for the e-mail on a page of its own before the shipping form.
    extra_checkout_step: bool = False
    # B's products per collection or search-results page (0: the shop's `page_size`, as A).
    page_size: int = 0
    # B's order of a collection's products (A: catalog order).
    sort_order: Literal["catalog", "price_asc", "price_desc", "title"] = "catalog"
    # B's order of search matches (A: relevance, `catalog.Shop.search`).
    search_ranking: Literal["relevance", "price_asc", "price_desc", "title"] = "relevance"

    def arm(self, session_id: str) -> str:
        """The arm a session gets without a signed choice: "B" when a hash of (name, session id) falls
        below `share_b`, else "A"; "A" for everyone when `name` is empty. Stable per session.

        >>> v = VariantConfig(name="ship", free_shipping_banner=True)
        >>> v.arm("s1") == v.arm("s1"), VariantConfig().arm("s1")
        (True, 'A')
        """
        if not self.name:
            return "A"
        h = int.from_bytes(hashlib.sha256(f"{self.name}:{session_id}".encode()).digest()[:8], "big") / 2**64
        return "B" if h < self.share_b else "A"


def session_metrics(events: pa.Table) -> pa.Table:
    """shop_id, buyer_id, session_id and the METRICS (float64) of every session in `events`
    (canonical columns), ordered by the keys.

    >>> ev = pa.table({"shop_id": ["s"] * 3, "buyer_id": ["b"] * 3, "session_id": ["x"] * 3,
    ...                "event_type": ["page_view", "add_to_cart", "purchase"], "product_id": [None, "p", "p"],
    ...                "price": [None, 2.0, 2.0], "quantity": [None, 3, 3]})
    >>> {k: v[0] for k, v in session_metrics(ev).select(list(METRICS)).to_pydict().items()}
    {'atc': 1.0, 'checkout': 0.0, 'purchase': 1.0, 'revenue': 6.0, 'pages': 1.0, 'products': 0.0}
    """
    import duckdb

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


def buyer_means(table: pa.Table, buyers: list[tuple[str, str]] | None = None) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Per (shop_id, buyer_id): the mean of each metric over the buyer's sessions, from a
    `session_metrics` table; (keys, (n, len(METRICS)) values), keys sorted unless `buyers` gives
    them (a buyer without sessions: zeros).

    >>> t = pa.table({"shop_id": ["s", "s"], "buyer_id": ["b", "b"], "session_id": ["1", "2"],
    ...               **{m: [1.0, 0.0] for m in METRICS}})
    >>> buyer_means(t)[1].tolist() == [[0.5] * len(METRICS)]
    True
    """
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads=1")
    con.register("t", table)
    cols = ", ".join(f"avg({m})::DOUBLE AS {m}" for m in METRICS)
    per = con.sql(f"SELECT shop_id, buyer_id, {cols} FROM t GROUP BY ALL ORDER BY ALL").to_arrow_table()
    con.close()
    keys = list(zip(per.column("shop_id").to_pylist(), per.column("buyer_id").to_pylist()))
    vals = np.column_stack([per.column(m).to_numpy() for m in METRICS]) if per.num_rows else np.zeros((0, len(METRICS)))
    if buyers is None:
        return keys, vals
    at = {k: i for i, k in enumerate(keys)}
    out = np.zeros((len(buyers), len(METRICS)))
    for j, k in enumerate(buyers):
        if k in at:
            out[j] = vals[at[k]]
    return list(buyers), out
