"""Readers for real public clickstream formats, each a DuckDB query mapping one file to canonical rows.

Every reader returns a `Source`: the SQL that reads ONE file and yields, per source row,
`_row` (1-based line in the file, header = line 1), the canonical columns as raw text/typed
attempts, product text for the catalog (`_title`, `_collection`, `_brand`), and `_raw` (the
source row as a struct, written as JSON for rejected rows only). Validation happens after, in `validate.py`,
the same for all formats. DuckDB streams the file; nothing here holds a file in memory.

| format    | source                                  | shop_id                     | session_id              | event mapping |
|-----------|-----------------------------------------|-----------------------------|-------------------------|---------------|
| canonical | CSV or Parquet in the canonical schema  | as given                    | as given                | as given |
| rees46    | REES46 multi-category CSV               | store / brand / top category| user_session            | view→product_view, cart→add_to_cart, remove_from_cart, purchase; no checkout_start in the source |
| taobao    | Taobao UserBehavior CSV (no header)     | `taobao`                    | 30-min inactivity gap   | pv→product_view, cart→add_to_cart, buy→purchase, fav→product_view (a favourite is set on the product page) |
| tmall     | Tmall user_log CSV                      | merchant_id                 | buyer × merchant × day  | 0→product_view, 1→add_to_cart, 2→purchase, 3 (favourite)→product_view |
| gmerch    | Google Merchandise Store GA export CSV  | `google_merch`              | visitId                 | eCommerceAction_type 0→page_view, 1→collection_view, 2→product_view, 3→add_to_cart, 4→remove_from_cart, 5→checkout_start, 6→purchase (7, 8 are rejected as unknown) |
| otto      | OTTO sessions JSONL                     | `otto`                      | session (buyer = session)| clicks→product_view, carts→add_to_cart, orders→purchase |

Sources without product text (Taobao, Tmall, OTTO) get catalog titles naming the ids they have
(e.g. "item 123 in category 45"); their text channels carry little meaning.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

FORMATS: tuple[str, ...] = ("canonical", "rees46", "taobao", "tmall", "gmerch", "otto")


class FormatError(ValueError):
    """The file is not the declared format (wrong header, not JSON lines, …)."""


@dataclass(frozen=True)
class Source:
    """How to read one file of one format."""

    path: Path
    # SELECT yielding the mapped columns; reads the file with DuckDB.
    sql: str
    # Lines before the first data row (the CSV header), added to row numbers.
    header_lines: int
    # True when the source has no sessions and they are cut by inactivity gap after validation.
    sessionise: bool
    # True when the reader is a CSV read whose malformed lines DuckDB stores as rejects.
    csv: bool


def _q(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _csv(path: Path, columns: list[str], header: bool, rejects: str) -> str:
    cols = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in columns) + "}"
    return (
        f"read_csv({_q(path)}, columns={cols}, header={str(header).lower()}, auto_detect=false, "
        f"delim=',', quote='\"', escape='\"', store_rejects=true, ignore_errors=true, "
        f"rejects_table='{rejects}', rejects_scan='{rejects}_scan', null_padding=false)"
    )


def _raw(columns: list[str]) -> str:
    """The source row as a struct; serialised to JSON only for rejected rows (it is costly)."""
    return "struct_pack(" + ", ".join(f'"{c}" := "{c}"' for c in columns) + ")"


def _first_line(path: Path) -> str:
    with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
        return f.readline()


def _check_header(path: Path, fmt: str, required: list[str]) -> list[str]:
    """The file's header; raises FormatError naming what is missing."""
    line = _first_line(path)
    if not line.strip():
        raise FormatError(f"{path}: empty file, expected a {fmt} CSV with header {required}")
    header = next(csv.reader([line]))
    header = [h.strip().lstrip("\ufeff") for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise FormatError(
            f"{path}: not a {fmt} file: missing column(s) {missing}; found header {header[:12]}"
        )
    return header


# --- canonical ---------------------------------------------------------------------------------

CANONICAL_COLUMNS = [
    "shop_id", "buyer_id", "session_id", "ts", "event_type",
    "product_id", "collection_id", "query", "price", "quantity",
]


def canonical(path: Path, rejects: str) -> Source:
    """Canonical events as CSV (ts ISO-8601) or Parquet; extra columns are an error."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except Exception as e:  # noqa: BLE001 - any Arrow error means "not Parquet"
            raise FormatError(f"{path}: not a Parquet file ({e})") from None
        missing = [c for c in CANONICAL_COLUMNS if c not in names]
        extra = [c for c in names if c not in CANONICAL_COLUMNS]
        if missing or extra:
            raise FormatError(f"{path}: not canonical events: missing {missing}, unexpected {extra}")
        src = f"read_parquet({_q(path)})"
        header_lines = 0
        is_csv = False
        cols = ", ".join(f'"{c}"::VARCHAR AS "{c}"' for c in CANONICAL_COLUMNS)
        src = f"(SELECT {cols} FROM {src})"
    else:
        header = _check_header(path, "canonical", CANONICAL_COLUMNS)
        extra = [c for c in header if c not in CANONICAL_COLUMNS]
        if extra:
            raise FormatError(f"{path}: not canonical events: unexpected column(s) {extra}")
        src = _csv(path, header, header=True, rejects=rejects)
        header_lines = 1
        is_csv = True
    sql = f"""
    SELECT row_number() OVER () + {header_lines} AS _row,
           shop_id, buyer_id, session_id,
           ts AS _ts_raw, TRY_CAST(ts AS TIMESTAMPTZ) AS ts,
           event_type, product_id, collection_id, query,
           price AS _price_raw, quantity AS _qty_raw,
           NULL::VARCHAR AS _title, NULL::VARCHAR AS _collection, NULL::VARCHAR AS _brand,
           {_raw(CANONICAL_COLUMNS)} AS _raw
    FROM {src}
    """
    return Source(path, sql, header_lines, sessionise=False, csv=is_csv)


# --- REES46 ------------------------------------------------------------------------------------

REES46_COLUMNS = [
    "event_time", "event_type", "product_id", "category_id", "category_code",
    "brand", "price", "user_id", "user_session",
]


def rees46(path: Path, rejects: str, shop_key: str, shop_name: str) -> Source:
    """REES46 multi-category store. `shop_key`: "store" (one shop named `shop_name`),
    "brand" (each brand a storefront; no brand → `unbranded`) or "category" (top level of
    category_code; none → `uncategorized`). Cart and purchase rows are one unit each."""
    _check_header(path, "rees46", REES46_COLUMNS)
    shop = {
        "store": f"'{shop_name}'",
        "brand": "coalesce(nullif(brand, ''), 'unbranded')",
        "category": "coalesce(nullif(split_part(category_code, '.', 1), ''), 'uncategorized')",
    }[shop_key]
    sql = f"""
    SELECT row_number() OVER () + 1 AS _row,
           {shop} AS shop_id, user_id AS buyer_id, user_session AS session_id,
           event_time AS _ts_raw,
           TRY_CAST(regexp_replace(event_time, ' UTC$', '+00') AS TIMESTAMPTZ) AS ts,
           CASE event_type WHEN 'view' THEN 'product_view' WHEN 'cart' THEN 'add_to_cart'
                           ELSE event_type END AS event_type,
           product_id, NULL::VARCHAR AS collection_id, NULL::VARCHAR AS query,
           price AS _price_raw,
           CASE WHEN event_type IN ('cart', 'purchase', 'remove_from_cart') THEN '1' END AS _qty_raw,
           trim(concat_ws(' ', brand, replace(coalesce(nullif(category_code, ''),
                'category ' || category_id), '.', ' '))) AS _title,
           coalesce(nullif(replace(category_code, '.', '/'), ''), 'category/' || category_id) AS _collection,
           nullif(brand, '') AS _brand,
           {_raw(REES46_COLUMNS)} AS _raw
    FROM {_csv(path, REES46_COLUMNS, header=True, rejects=rejects)}
    """
    return Source(path, sql, 1, sessionise=False, csv=True)


# --- Taobao UserBehavior -----------------------------------------------------------------------

TAOBAO_COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]


def taobao(path: Path, rejects: str, shop_name: str) -> Source:
    """Taobao UserBehavior: no header, no price, no sessions (cut later by inactivity gap)."""
    first = next(csv.reader([_first_line(path)]), [])
    if len(first) != 5 or first[3] not in {"pv", "cart", "fav", "buy"}:
        raise FormatError(
            f"{path}: not a taobao UserBehavior file: expected 5 columns "
            f"user_id,item_id,category_id,behavior_type(pv|cart|fav|buy),timestamp without a header; "
            f"first line is {first[:6]}"
        )
    sql = f"""
    SELECT row_number() OVER () AS _row,
           '{shop_name}' AS shop_id, user_id AS buyer_id, NULL::VARCHAR AS session_id,
           "timestamp" AS _ts_raw,
           to_timestamp(TRY_CAST("timestamp" AS BIGINT)) AS ts,
           CASE behavior_type WHEN 'pv' THEN 'product_view' WHEN 'fav' THEN 'product_view'
                WHEN 'cart' THEN 'add_to_cart' WHEN 'buy' THEN 'purchase' ELSE behavior_type END AS event_type,
           item_id AS product_id, NULL::VARCHAR AS collection_id, NULL::VARCHAR AS query,
           NULL::VARCHAR AS _price_raw,
           CASE WHEN behavior_type IN ('cart', 'buy') THEN '1' END AS _qty_raw,
           'item ' || item_id || ' in category ' || category_id AS _title,
           'category/' || category_id AS _collection, NULL::VARCHAR AS _brand,
           {_raw(TAOBAO_COLUMNS)} AS _raw
    FROM {_csv(path, TAOBAO_COLUMNS, header=False, rejects=rejects)}
    """
    return Source(path, sql, 0, sessionise=True, csv=True)


# --- Tmall user log ----------------------------------------------------------------------------

TMALL_COLUMNS = [
    "user_id", "item_id", "cat_id", "merchant_id", "brand_id", "month", "day", "action",
    "age_range", "gender", "province",
]


def tmall(path: Path, rejects: str, year: int) -> Source:
    """Tmall user log: merchant = shop; only the day is known, so a buyer's events on one day keep
    the file's order, one second apart from midnight UTC of `year`-month-day; a session is a
    buyer's visit to one merchant on one day. Demographic columns are ignored (randomised)."""
    _check_header(path, "tmall", TMALL_COLUMNS[:8])
    sql = f"""
    WITH src AS (
        SELECT row_number() OVER () + 1 AS _row, *
        FROM {_csv(path, TMALL_COLUMNS, header=True, rejects=rejects)}
    ), dated AS (
        SELECT *, TRY_CAST(make_timestamp({year}, TRY_CAST(month AS BIGINT), TRY_CAST(day AS BIGINT),
                                          0, 0, 0) AS TIMESTAMP) AS _day
        FROM src
    )
    SELECT _row, merchant_id AS shop_id, user_id AS buyer_id,
           'd' || strftime(_day, '%m%d') AS session_id,
           month || '-' || day AS _ts_raw,
           (_day + to_seconds(row_number() OVER (PARTITION BY user_id, _day ORDER BY _row) - 1))
               AT TIME ZONE 'UTC' AS ts,
           CASE action WHEN '0' THEN 'product_view' WHEN '1' THEN 'add_to_cart' WHEN '2' THEN 'purchase'
                       WHEN '3' THEN 'product_view' ELSE action END AS event_type,
           item_id AS product_id, NULL::VARCHAR AS collection_id, NULL::VARCHAR AS query,
           NULL::VARCHAR AS _price_raw, CASE WHEN action IN ('1', '2') THEN '1' END AS _qty_raw,
           'item ' || item_id || ' in category ' || cat_id || ', brand ' || brand_id AS _title,
           'category/' || cat_id AS _collection, 'brand ' || brand_id AS _brand,
           {_raw(TMALL_COLUMNS)} AS _raw
    FROM dated
    """
    return Source(path, sql, 1, sessionise=False, csv=True)


# --- Google Merchandise Store (GA export) ------------------------------------------------------

GMERCH_REQUIRED = [
    "fullVisitorId", "time", "date", "visitId", "productPrice", "productQuantity", "productSKU",
    "v2ProductName", "v2ProductCategory", "eCommerceAction_type",
]
GMERCH_ACTIONS = {
    "0": "page_view", "1": "collection_view", "2": "product_view", "3": "add_to_cart",
    "4": "remove_from_cart", "5": "checkout_start", "6": "purchase",
}


def gmerch(path: Path, rejects: str, shop_name: str) -> Source:
    """GA360 hits: visitId is the visit's start (unix seconds), `time` the hit's offset in ms;
    productPrice is in micro-units. Only product hits (action ≥ 1) carry a product."""
    header = _check_header(path, "gmerch", GMERCH_REQUIRED)
    actions = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in GMERCH_ACTIONS.items())
    sql = f"""
    SELECT row_number() OVER () + 1 AS _row,
           '{shop_name}' AS shop_id, fullVisitorId AS buyer_id, visitId AS session_id,
           visitId || '+' || "time" || 'ms' AS _ts_raw,
           to_timestamp(TRY_CAST(visitId AS BIGINT) + TRY_CAST("time" AS BIGINT) / 1000.0) AS ts,
           CASE eCommerceAction_type {actions} ELSE 'ga_action_' || eCommerceAction_type END AS event_type,
           CASE WHEN eCommerceAction_type NOT IN ('0', '1') THEN productSKU END AS product_id,
           CASE WHEN eCommerceAction_type = '1' THEN coalesce(nullif(v2ProductCategory, ''), '(not set)') END AS collection_id,
           NULL::VARCHAR AS query,
           CASE WHEN eCommerceAction_type NOT IN ('0', '1') AND productPrice <> ''
                THEN (TRY_CAST(productPrice AS DOUBLE) / 1e6)::VARCHAR END AS _price_raw,
           CASE WHEN eCommerceAction_type IN ('3', '4', '6')
                THEN coalesce(nullif(productQuantity, ''), '1') END AS _qty_raw,
           v2ProductName AS _title, replace(trim(v2ProductCategory, '/'), 'Home/', '') AS _collection,
           'Google' AS _brand,
           {_raw(header)} AS _raw
    FROM {_csv(path, header, header=True, rejects=rejects)}
    """
    return Source(path, sql, 1, sessionise=False, csv=True)


# --- OTTO --------------------------------------------------------------------------------------

OTTO_TYPES = {"clicks": "product_view", "carts": "add_to_cart", "orders": "purchase"}


def otto(path: Path, shop_name: str) -> Source:
    """OTTO sessions JSONL: one line per session with its events; the buyer is the session (its
    one session is `s1`, so the raw id is not repeated). `_row` is the session's line number."""
    line = _first_line(path)
    try:
        obj = json.loads(line)
        ok = isinstance(obj, dict) and "session" in obj and isinstance(obj.get("events"), list)
    except json.JSONDecodeError:
        ok = False
    if not ok:
        raise FormatError(
            f"{path}: not an OTTO JSONL file: each line must be "
            f'{{"session": int, "events": [{{"aid", "ts", "type"}}]}}; first line starts {line[:60]!r}'
        )
    types = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in OTTO_TYPES.items())
    sql = f"""
    WITH src AS (
        SELECT row_number() OVER () AS _row, session, events
        FROM read_json({_q(path)}, format='newline_delimited',
                       columns={{'session': 'VARCHAR', 'events': 'STRUCT(aid VARCHAR, ts VARCHAR, "type" VARCHAR)[]'}})
    ), ev AS (SELECT _row, session, unnest(events) AS e FROM src)
    SELECT _row, '{shop_name}' AS shop_id, session AS buyer_id, 's1' AS session_id,
           e.ts AS _ts_raw, to_timestamp(TRY_CAST(e.ts AS BIGINT) / 1000.0) AS ts,
           CASE e.type {types} ELSE e.type END AS event_type,
           e.aid AS product_id, NULL::VARCHAR AS collection_id, NULL::VARCHAR AS query,
           NULL::VARCHAR AS _price_raw, CASE WHEN e.type IN ('carts', 'orders') THEN '1' END AS _qty_raw,
           'article ' || e.aid AS _title, NULL::VARCHAR AS _collection, NULL::VARCHAR AS _brand,
           struct_pack(session := session, aid := e.aid, ts := e.ts, "type" := e.type) AS _raw
    FROM ev
    """
    return Source(path, sql, 0, sessionise=False, csv=False)
