"""The event aggregations, written once with Ibis; they run on DuckDB (default) or PySpark.

Three expressions over the canonical events (+ catalog):

- `session_table`: one row per (shop_id, buyer_id, session_id) — per-event-type counts, funnel
  flags, start/end, duration, cart/order value, and (optionally) the semantic context as sorted
  distinct list<string> columns. This is the enrichment pass: events ⋈ catalog, once.
- `buyer_table`: one row per (shop_id, buyer_id) — the 16 raw scalars (layout.SCALAR_NAMES)
  plus the two helper counts the labels need; computed from the session table.
- `product_events`: (buyer_row, product_row, event type) per product event, for the embedding means;
  `buyer_product_pairs`: the same made distinct per (buyer_row, product_row), with channel flags.

Definitions (written down because the paper leaves them open):

- Funnel closure: a session with a purchase counts as a checkout session, a session with a
  checkout (start or purchase) counts as an add-to-cart session. Sources without a checkout-start
  event (REES46, Taobao, Tmall, OTTO) then still reach the "checkout" level when they buy, and an
  all-purchase buyer has intent 16/17 ≈ 0.94 as the paper says.
- 8th volume count: `sessions_with_purchase` (sessions containing a purchase).
- active_days: distinct UTC calendar days on which a session started.
- duration_s: floor(epoch(end)) − floor(epoch(start)) of a session, in whole seconds.
- browse-only session: one with a product view, collection view or search and no cart activity
  (add/remove-from-cart, checkout start, purchase). Bounce sessions (page views only) are neither
  browse-only nor cart sessions.
- cart_value: Σ price·quantity over add_to_cart events of the session; order_value: the same over
  purchase events. price = event price, else catalog price, else 0; quantity defaults to 1.
  avg_cart_value = mean cart_value over sessions with an add_to_cart event (0 if none);
  avg_order_value = mean order_value over sessions with a purchase (0 for non-buyers).
  Money is summed and averaged as DECIMAL(38, 6) (exact): a float sum depends on the order in
  which the engine's threads add the rows, and with it the last bits of every run.
"""

from __future__ import annotations

import ibis
import ibis.expr.datatypes as dt
from ibis import _

KEYS = ("shop_id", "buyer_id")
SESSION_KEYS = ("shop_id", "buyer_id", "session_id")
COUNT_COLUMNS = {
    "n_page_view": "page_view",
    "n_collection_view": "collection_view",
    "n_search": "search",
    "n_product_view": "product_view",
    "n_add_to_cart": "add_to_cart",
    "n_remove_from_cart": "remove_from_cart",
    "n_checkout_start": "checkout_start",
    "n_purchase": "purchase",
}
# exact money arithmetic (order-independent sums; 6 decimals hold any source's unit prices)
MONEY = "decimal(38, 6)"


def _enriched(events: ibis.Table, catalog: ibis.Table) -> ibis.Table:
    """Events left-joined with the catalog: title, collection, brand, unit price (event first)."""
    cat = catalog.select(
        "shop_id",
        "product_id",
        cat_title=_.title,
        cat_collection=_.collection,
        cat_brand=_.brand,
        cat_price=_.price,
    )
    j = events.left_join(cat, ["shop_id", "product_id"])
    return j.select(
        "shop_id",
        "buyer_id",
        "session_id",
        "ts",
        "event_type",
        "query",
        "collection_id",
        title=_.cat_title,
        collection=_.cat_collection,
        brand=_.cat_brand,
        amount=(_.price.coalesce(_.cat_price).coalesce(0.0) * _.quantity.coalesce(1).cast("float64")),
    )


def session_table(events: ibis.Table, catalog: ibis.Table, context: bool = True) -> ibis.Table:
    """One row per (shop_id, buyer_id, session_id); see the module docstring for definitions."""
    e = _enriched(events, catalog)
    et = e.event_type
    aggs = {name: e.count(where=et == kind) for name, kind in COUNT_COLUMNS.items()}
    aggs.update(
        n_events=e.count(),
        start_ts=e.ts.min(),
        end_ts=e.ts.max(),
        cart_value=e.amount.cast(MONEY).sum(where=et == "add_to_cart").cast("float64").coalesce(0.0),
        order_value=e.amount.cast(MONEY).sum(where=et == "purchase").cast("float64").coalesce(0.0),
    )
    if context:
        # sorted distinct lists; an empty list (not null) when the session has none. Collected whole,
        # then made distinct per list (list_distinct / array_distinct): a DISTINCT aggregate takes the
        # engines' slow path (DuckDB: 120.4 s vs 33.4 s for the aggregation step at 22.2M events,
        # bench/bench_features.py --context --sides features_aggregate)
        empty = ibis.literal([], type="array<string>")

        def lst(col, where=None):
            return col.collect(where=where).unique().sort().coalesce(empty)

        aggs.update(
            viewed_titles=lst(e.title, et == "product_view"),
            carted_titles=lst(e.title, et == "add_to_cart"),
            purchased_titles=lst(e.title, et == "purchase"),
            collections=lst(e.collection.coalesce(e.collection_id), et.isin(["collection_view", "product_view"])),
            queries=lst(e.query, et == "search"),
            brands=lst(e.brand),
        )
    s = e.group_by(list(SESSION_KEYS)).aggregate(**aggs)
    has_purchase = s.n_purchase > 0
    has_checkout = has_purchase | (s.n_checkout_start > 0)
    has_atc = has_checkout | (s.n_add_to_cart > 0)
    has_cart_activity = has_atc | (s.n_remove_from_cart > 0)
    has_browse = (s.n_product_view > 0) | (s.n_collection_view > 0) | (s.n_search > 0)
    return s.mutate(
        duration_s=(s.end_ts.epoch_seconds().floor() - s.start_ts.epoch_seconds().floor()).cast("int64"),
        start_day=s.start_ts.date(),
        has_view=s.n_product_view > 0,
        has_atc=has_atc,
        has_checkout=has_checkout,
        has_purchase=has_purchase,
        has_search=s.n_search > 0,
        has_collection=s.n_collection_view > 0,
        is_browse_only=has_browse & ~has_cart_activity,
        has_cart_activity=has_cart_activity,
    )


def buyer_table(sessions: ibis.Table) -> ibis.Table:
    """The 16 raw scalars per (shop_id, buyer_id), plus `n_add_to_cart_events`/`n_remove_events`."""
    s = sessions
    # sessions where the flag holds: COUNT … FILTER is BIGINT on every engine (DuckDB's SUM of a cast flag
    # is HUGEINT, which Ibis took for int64 and left uncast: decimal128 columns in buyers.parquet)
    i = lambda b: s.count(where=b)  # noqa: E731
    b = s.group_by(list(KEYS)).aggregate(
        n_sessions=s.count(),
        active_days=s.start_day.nunique(),
        sessions_with_view=i(s.has_view),
        sessions_with_atc=i(s.has_atc),
        sessions_with_checkout=i(s.has_checkout),
        sessions_with_search=i(s.has_search),
        sessions_with_collection=i(s.has_collection),
        sessions_with_purchase=i(s.has_purchase),
        # "!int64": a cast Ibis emits (a plain int64 cast of an int64 sum is dropped, and DuckDB sums to HUGEINT)
        total_duration_s=s.duration_s.sum().cast("!int64"),
        total_product_views=s.n_product_view.sum().cast("!int64"),
        browse_only_sessions=i(s.is_browse_only),
        cart_activity_sessions=i(s.has_cart_activity),
        avg_cart_value=s.cart_value.cast(MONEY).mean(where=s.n_add_to_cart > 0).cast("float64").coalesce(0.0),
        avg_order_value=s.order_value.cast(MONEY).mean(where=s.n_purchase > 0).cast("float64").coalesce(0.0),
    )
    n = b.n_sessions.cast("float64")
    w = 3.0 * b.sessions_with_atc + 5.0 * b.sessions_with_checkout + 8.0 * b.sessions_with_purchase
    b = b.mutate(
        atc_rate=b.sessions_with_atc / n,
        checkout_rate=b.sessions_with_checkout / n,
        browse_only_rate=b.browse_only_sessions / n,
        intent_strength=w / (n + w),
    )
    from simpersona.features.layout import SCALAR_NAMES

    return b.select(*KEYS, *SCALAR_NAMES, "browse_only_sessions", "cart_activity_sessions")


# the product events' type as a small int: 0 viewed, 1 added to cart, 2 purchased
EVENT_CODES = {"product_view": 0, "add_to_cart": 1, "purchase": 2}


@ibis.udf.scalar.builtin(name="hash")
def key_hash(shop_id: str, buyer_id: str) -> dt.uint64:
    """DuckDB's 64-bit hash of the two buyer key columns (a DuckDB builtin; not on Spark)."""


def product_events(events: ibis.Table, index: ibis.Table, keys: ibis.Table, by_hash: bool = False) -> ibis.Table:
    """One row per product event of a product in `index`: (buyer_row, product_row, event) with event
    the EVENT_CODES int8 — not made distinct (`buyer_product_pairs` does that in the engine; the
    local path does it in numpy, `stage.buyer_product_rows`).

    `keys` holds (shop_id, buyer_id, buyer_row) for every buyer of `events`; `index` holds
    (shop_id, product_id, row), and events of products not in it are dropped. The buyer keys are
    LEFT-joined on purpose: inner-joined in the same join tree as the index, DuckDB's join-order
    optimizer paired keys and index on the implied `shop_id = shop_id` first — a per-shop buyers ×
    products cross product (25M rows at 1M events, 62 GB of spill at 2M). `by_hash` (DuckDB only,
    and only where `key_hash` is unique over `keys`, which the caller checks): join on that one
    64-bit integer instead of the two strings (64-character buyer ids): at 22.2M events the join
    took 1.3 s instead of 4.0 s (2 threads, quiet machine).
    """
    e = events.filter(_.product_id.notnull(), _.event_type.isin(list(EVENT_CODES)))
    idx = index.select("shop_id", "product_id", product_row=_.row)
    if by_hash:
        e = e.select(h=key_hash(_.shop_id, _.buyer_id), shop_id=_.shop_id, product_id=_.product_id, event_type=_.event_type)
        j = e.left_join(keys.select(h=key_hash(_.shop_id, _.buyer_id), buyer_row=_.buyer_row), "h")
    else:
        e = e.select("shop_id", "buyer_id", "product_id", "event_type")
        j = e.left_join(keys.select("shop_id", "buyer_id", "buyer_row"), ["shop_id", "buyer_id"])
    j = j.join(idx, ["shop_id", "product_id"])
    code = ibis.cases((j.event_type == "product_view", 0), (j.event_type == "add_to_cart", 1), else_=2).cast("int8")
    return j.select(j.buyer_row, j.product_row, event=code)


def buyer_product_pairs(events: ibis.Table, index: ibis.Table, keys: ibis.Table) -> ibis.Table:
    """One row per distinct (buyer_row, product_row) with channel flags `viewed`, `carted` (added or
    bought: funnel closure) and `purchased`, from `product_events`.

    Each event gets its two row numbers first, so the GROUP BY is over two integers (over the string
    keys, 64-character buyer ids, the query took 36% more CPU at 22.2M events: 13.1 s vs 9.6 s).
    """
    pe = product_events(events, index, keys)
    return pe.group_by(["buyer_row", "product_row"]).aggregate(
        viewed=(pe.event == 0).any(),
        carted=(pe.event >= 1).any(),
        purchased=(pe.event == 2).any(),
    )
