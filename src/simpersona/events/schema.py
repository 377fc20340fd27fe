"""The canonical event and catalog schemas every stage reads (Arrow / Parquet).

Events: one row per buyer action on a shop.

| column        | type                 | null? | meaning                                                  |
|---------------|----------------------|-------|----------------------------------------------------------|
| shop_id       | string               | no    | the storefront                                           |
| buyer_id      | string               | no    | keyed hash (HMAC-SHA256) of the source's buyer id        |
| session_id    | string               | no    | the visit, unique within (shop_id, buyer_id); never a raw id |
| ts            | timestamp[us, UTC]   | no    | when it happened                                         |
| event_type    | string               | no    | one of EVENT_TYPES                                       |
| product_id    | string               | yes   | required for product_view, add/remove_from_cart, purchase |
| collection_id | string               | yes   | required for collection_view                             |
| query         | string               | yes   | required for search                                      |
| price         | float64              | yes   | unit price; finite, never negative                       |
| quantity      | int32                | yes   | units; ≥ 1 when present                                  |

Catalog: one row per (shop_id, product_id): title, collection (a category path such as
`apparel/women/skirts`), brand, price, and an optional description.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from simpersona.contracts.labels import EVENT_TYPES  # noqa: F401  (the one event order, imported from here too)

# Event types that must name a product / collection / query.
NEEDS_PRODUCT: frozenset[str] = frozenset({"product_view", "add_to_cart", "remove_from_cart", "purchase"})
NEEDS_COLLECTION: frozenset[str] = frozenset({"collection_view"})
NEEDS_QUERY: frozenset[str] = frozenset({"search"})

TS_TYPE = pa.timestamp("us", tz="UTC")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("shop_id", pa.string(), nullable=False),
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("product_id", pa.string()),
        pa.field("collection_id", pa.string()),
        pa.field("query", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("quantity", pa.int32()),
    ]
)
EVENT_COLUMNS: tuple[str, ...] = tuple(EVENT_SCHEMA.names)

CATALOG_SCHEMA = pa.schema(
    [
        pa.field("shop_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("collection", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("description", pa.string()),
    ]
)
CATALOG_COLUMNS: tuple[str, ...] = tuple(CATALOG_SCHEMA.names)

# Timestamps outside this window are rejected as out of range (web commerce did not exist
# before 1995; a timestamp more than a day in the future is a clock or unit error).
TS_MIN = dt.datetime(1995, 1, 1, tzinfo=dt.timezone.utc)


def ts_max() -> dt.datetime:
    """The latest accepted timestamp: one day after now."""
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
