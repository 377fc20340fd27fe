"""Readers for real public clickstream formats, each a DuckDB query mapping one file to canonical rows.

A reader gets `rows`, a SQL relation over one file with `_row` (the 1-based physical line, header
= line 1) and one VARCHAR column per name in the format's `COLUMNS` (bound by header name; an
optional column the file lacks is NULL), and yields per row the canonical columns as raw
text/typed attempts, product text for the catalog (`_title`, `_collection`, `_brand`), and
`_raw` (the format's columns as a struct, written as JSON for rejected rows only, ids hashed).
How `rows` is read (DuckDB's parser, or line by line when quoting does not match the lines) is
`ingest.py`'s business; validation happens after, in `validate.py`, the same for all formats.

| format    | source                                  | shop_id                     | session_id              | event mapping |
|-----------|-----------------------------------------|-----------------------------|-------------------------|---------------|
| canonical | CSV or Parquet in the canonical schema  | as given                    | as given (hashed)       | as given |
| rees46    | REES46 multi-category CSV               | store / brand / top category| user_session (hashed)   | view→product_view, cart→add_to_cart, remove_from_cart, purchase; no checkout_start in the source |
| taobao    | Taobao UserBehavior CSV (no header)     | `taobao`                    | 30-min inactivity gap   | pv→product_view, cart→add_to_cart, buy→purchase, fav→product_view (a favourite is set on the product page) |
| tmall     | Tmall user_log CSV                      | merchant_id                 | buyer × merchant × day  | 0→product_view, 1→add_to_cart, 2→purchase, 3 (favourite)→product_view |
| gmerch    | Google Merchandise Store GA export CSV  | `google_merch`              | visitId (hashed)        | eCommerceAction_type 0→page_view, 1→collection_view, 2→product_view, 3→add_to_cart, 4→remove_from_cart, 5→checkout_start, 6→purchase (7, 8 are rejected as unknown) |
| otto      | OTTO sessions JSONL                     | `otto`                      | session (buyer = session)| clicks→product_view, carts→add_to_cart, orders→purchase |

Sources without product text (Taobao, Tmall, OTTO) get catalog titles naming the ids they have
(e.g. "item 123 in category 45"); their text channels carry little meaning. Timestamps that
cannot be represented (a unix time of 10¹⁷, month 13) are NULL, so the row is rejected as
`bad_timestamp` instead of aborting the file.
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
class Columns:
    """The source columns a format reads."""

    # Columns the file must have (an error naming the missing ones otherwise).
    required: tuple[str, ...]
    # Columns used when present (NULL when absent).
    optional: tuple[str, ...] = ()
    # Columns holding buyer ids: hashed wherever a source row is kept (rejects).
    ids: tuple[str, ...] = ()
    # The column holding the source's session id (hashed, shortened), if the format has one.
    session: str | None = None
    # False for header-less files: the columns are `required`, in that order.
    header: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        return self.required + self.optional


COLUMNS: dict[str, Columns] = {
    "canonical": Columns(("shop_id", "buyer_id", "session_id", "ts", "event_type"),
                         ("product_id", "collection_id", "query", "price", "quantity"),
                         ids=("buyer_id",), session="session_id"),
    "rees46": Columns(("event_time", "event_type", "product_id", "category_id", "category_code", "brand",
                       "price", "user_id", "user_session"), ids=("user_id",), session="user_session"),
    "taobao": Columns(("user_id", "item_id", "category_id", "behavior_type", "timestamp"), ids=("user_id",),
                      header=False),
    "tmall": Columns(("user_id", "item_id", "cat_id", "merchant_id", "brand_id", "month", "day", "action"),
                     ("age_range", "gender", "province"), ids=("user_id",)),
    "gmerch": Columns(("fullVisitorId", "time", "date", "visitId", "productPrice", "productQuantity", "productSKU",
                       "v2ProductName", "v2ProductCategory", "eCommerceAction_type"),
                      ids=("fullVisitorId",), session="visitId"),
    "otto": Columns(("session", "aid", "ts", "type"), ids=("session",), header=False),
    "catalog": Columns(("shop_id", "product_id", "title"), ("collection", "brand", "price", "description")),
}


@dataclass(frozen=True)
class Header:
    """A CSV file's columns as found on its first line."""

    # Every column of the file, in file order (unnamed ones become `column_<i>`).
    names: tuple[str, ...]
    # Lines before the first data row: 1 with a header, 0 without.
    lines: int
    # Columns the format does not read (ignored; listed in the summary).
    extra: tuple[str, ...]
    # Optional columns the file lacks (read as NULL).
    absent: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """One reader's mapping of `rows`."""

    # SELECT over `rows` yielding the mapped columns.
    sql: str
    # The row's index among the rows of its line (OTTO: the event's place in its session line).
    sub: str = "0"


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def lit(text: str | Path) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def first_line(path: Path) -> str:
    with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
        return f.readline()


def read_header(path: Path, fmt: str) -> Header:
    """Bind the format's columns to the file's header by name; FormatError naming what is missing."""
    cols = COLUMNS[fmt]
    line = first_line(path)
    if not cols.header:
        if fmt == "taobao":  # one good row among the first ten lines (a bad first row is only a reject)
            rows = [next(csv.reader([h.replace("\r", "")]), []) for h in head_lines(path)]
            first = rows[0] if rows else []
            if not any(len(r) == 5 and r[3] in {"pv", "cart", "fav", "buy"} for r in rows):
                raise FormatError(
                    f"{path}: not a taobao UserBehavior file: expected 5 columns "
                    f"user_id,item_id,category_id,behavior_type(pv|cart|fav|buy),timestamp without a header; "
                    f"first line is {first[:6]}"
                )
        return Header(cols.required, 0, (), ())
    if not line.strip():
        raise FormatError(f"{path}: empty file, expected a {fmt} CSV with header {list(cols.required)}")
    found = [h.strip().lstrip("\ufeff") for h in next(csv.reader([line.rstrip("\r\n")]))]
    names: tuple[str, ...] = ()
    for i, h in enumerate(found):  # unnamed and repeated unused columns get a name of their own
        h = h or f"column_{i + 1}"
        names += (h if h not in names or h in cols.names else f"{h}_{i + 1}",)
    missing = [c for c in cols.required if c not in names]
    if missing:
        raise FormatError(f"{path}: not a {fmt} file: missing column(s) {missing}; found header {list(names[:12])}")
    dup = sorted({n for n in names if names.count(n) > 1 and n in cols.names})
    if dup:
        raise FormatError(f"{path}: column(s) {dup} appear more than once in the header")
    extra = tuple(n for n in names if n not in cols.names)
    absent = tuple(c for c in cols.optional if c not in names)
    return Header(names, 1, extra, absent)


def bind(fmt: str, header: Header, inner: str) -> str:
    """`rows` for a reader: `inner` (yielding `_row` and the file's columns) narrowed to the format's
    columns, absent optional ones as NULL."""
    cols = ", ".join(q(c) if c not in header.absent else f"NULL::VARCHAR AS {q(c)}" for c in COLUMNS[fmt].names)
    return f"(SELECT _row, {cols} FROM {inner})"


def _raw(fmt: str) -> str:
    """The source row as a struct; serialised to JSON only for rejected rows (it is costly)."""
    return "struct_pack(" + ", ".join(f"{q(c)} := {q(c)}" for c in COLUMNS[fmt].names) + ")"


def _unix(seconds: str) -> str:
    """A unix-seconds expression as TIMESTAMPTZ, NULL when it cannot be represented."""
    return f"try(to_timestamp({seconds}))"


# --- canonical ---------------------------------------------------------------------------------

def canonical(rows: str) -> Source:
    """Canonical events as CSV (ts ISO-8601) or Parquet."""
    sql = f"""
    SELECT _row, shop_id, buyer_id, session_id,
           ts AS _ts_raw, TRY_CAST(ts AS TIMESTAMPTZ) AS ts,
           event_type, product_id, collection_id, query,
           price AS _price_raw, quantity AS _qty_raw,
           NULL::VARCHAR AS _title, NULL::VARCHAR AS _collection, NULL::VARCHAR AS _brand,
           {_raw("canonical")} AS _raw
    FROM {rows}
    """
    return Source(sql)


def parquet_rows(path: Path, fmt: str = "canonical") -> tuple[str, Header]:
    """`rows` (before `bind`) for canonical events or a catalog stored as Parquet; `_row` is the row number."""
    import pyarrow.parquet as pq

    try:
        names = tuple(pq.read_schema(path).names)
    except Exception as e:  # noqa: BLE001 - any Arrow error means "not Parquet"
        raise FormatError(f"{path}: not a Parquet file ({e})") from None
    cols = COLUMNS[fmt]
    missing = [c for c in cols.required if c not in names]
    if missing:
        raise FormatError(f"{path}: not a {fmt} file: missing column(s) {missing}; found {list(names[:12])}")
    header = Header(names, 0, tuple(n for n in names if n not in cols.names),
                    tuple(c for c in cols.optional if c not in names))
    present = ", ".join(f"{q(c)}::VARCHAR AS {q(c)}" for c in cols.names if c in names)
    return f"(SELECT row_number() OVER () AS _row, {present} FROM read_parquet({lit(path)}))", header


# --- REES46 ------------------------------------------------------------------------------------

def rees46(rows: str, shop_key: str, shop_name: str) -> Source:
    """REES46 multi-category store. `shop_key`: "store" (one shop named `shop_name`),
    "brand" (each brand a storefront; no brand → `unbranded`) or "category" (top level of
    category_code; none → `uncategorized`). Cart and purchase rows are one unit each."""
    shop = {
        "store": lit(shop_name),
        "brand": "coalesce(nullif(brand, ''), 'unbranded')",
        "category": "coalesce(nullif(split_part(category_code, '.', 1), ''), 'uncategorized')",
    }[shop_key]
    sql = f"""
    SELECT _row,
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
           {_raw("rees46")} AS _raw
    FROM {rows}
    """
    return Source(sql)


# --- Taobao UserBehavior -----------------------------------------------------------------------

def taobao(rows: str, shop_name: str) -> Source:
    """Taobao UserBehavior: no header, no price, no sessions (cut later by inactivity gap)."""
    sql = f"""
    SELECT _row,
           {lit(shop_name)} AS shop_id, user_id AS buyer_id, NULL::VARCHAR AS session_id,
           "timestamp" AS _ts_raw,
           {_unix('TRY_CAST("timestamp" AS BIGINT)')} AS ts,
           CASE behavior_type WHEN 'pv' THEN 'product_view' WHEN 'fav' THEN 'product_view'
                WHEN 'cart' THEN 'add_to_cart' WHEN 'buy' THEN 'purchase' ELSE behavior_type END AS event_type,
           item_id AS product_id, NULL::VARCHAR AS collection_id, NULL::VARCHAR AS query,
           NULL::VARCHAR AS _price_raw,
           CASE WHEN behavior_type IN ('cart', 'buy') THEN '1' END AS _qty_raw,
           'item ' || item_id || ' in category ' || category_id AS _title,
           'category/' || category_id AS _collection, NULL::VARCHAR AS _brand,
           {_raw("taobao")} AS _raw
    FROM {rows}
    """
    return Source(sql)


# --- Tmall user log ----------------------------------------------------------------------------

def tmall(rows: str, year: int) -> Source:
    """Tmall user log: merchant = shop; only the day is known, so a buyer's events on one day keep
    the file's order, one second apart from midnight UTC of `year`-month-day; a session is a
    buyer's visit to one merchant on one day. Demographic columns are optional and ignored
    (randomised in the public sample)."""
    sql = f"""
    WITH dated AS (
        SELECT *, try(make_timestamp({year}, TRY_CAST(month AS BIGINT), TRY_CAST(day AS BIGINT), 0, 0, 0)) AS _day
        FROM {rows}
    )
    SELECT _row, merchant_id AS shop_id, user_id AS buyer_id,
           'd' || coalesce(strftime(_day, '%m%d'), '?') AS session_id,
           month || '-' || day AS _ts_raw,
           (_day + to_seconds(row_number() OVER (PARTITION BY user_id, _day ORDER BY _row) - 1))
               AT TIME ZONE 'UTC' AS ts,
           CASE action WHEN '0' THEN 'product_view' WHEN '1' THEN 'add_to_cart' WHEN '2' THEN 'purchase'
                       WHEN '3' THEN 'product_view' ELSE action END AS event_type,
           item_id AS product_id, NULL::VARCHAR AS collection_id, NULL::VARCHAR AS query,
           NULL::VARCHAR AS _price_raw, CASE WHEN action IN ('1', '2') THEN '1' END AS _qty_raw,
           'item ' || item_id || ' in category ' || cat_id || ', brand ' || brand_id AS _title,
           'category/' || cat_id AS _collection, 'brand ' || brand_id AS _brand,
           {_raw("tmall")} AS _raw
    FROM dated
    """
    return Source(sql)


# --- Google Merchandise Store (GA export) ------------------------------------------------------

GMERCH_ACTIONS = {
    "0": "page_view", "1": "collection_view", "2": "product_view", "3": "add_to_cart",
    "4": "remove_from_cart", "5": "checkout_start", "6": "purchase",
}


def gmerch(rows: str, shop_name: str) -> Source:
    """GA360 hits: visitId is the visit's start (unix seconds), `time` the hit's offset in ms;
    productPrice is in micro-units (a price that is not a number stays as text, to be rejected).
    Only product hits (action ≥ 1) carry a product."""
    actions = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in GMERCH_ACTIONS.items())
    sql = f"""
    SELECT _row,
           {lit(shop_name)} AS shop_id, fullVisitorId AS buyer_id, visitId AS session_id,
           visitId || '+' || "time" || 'ms' AS _ts_raw,
           {_unix('TRY_CAST(visitId AS BIGINT) + TRY_CAST("time" AS BIGINT) / 1000.0')} AS ts,
           CASE eCommerceAction_type {actions} ELSE 'ga_action_' || eCommerceAction_type END AS event_type,
           CASE WHEN eCommerceAction_type NOT IN ('0', '1') THEN productSKU END AS product_id,
           CASE WHEN eCommerceAction_type = '1' THEN coalesce(nullif(v2ProductCategory, ''), '(not set)') END AS collection_id,
           NULL::VARCHAR AS query,
           CASE WHEN eCommerceAction_type NOT IN ('0', '1') AND productPrice <> ''
                THEN coalesce((TRY_CAST(productPrice AS DOUBLE) / 1e6)::VARCHAR, productPrice) END AS _price_raw,
           CASE WHEN eCommerceAction_type IN ('3', '4', '6')
                THEN coalesce(nullif(productQuantity, ''), '1') END AS _qty_raw,
           v2ProductName AS _title, replace(trim(v2ProductCategory, '/'), 'Home/', '') AS _collection,
           'Google' AS _brand,
           {_raw("gmerch")} AS _raw
    FROM {rows}
    """
    return Source(sql)


# --- OTTO --------------------------------------------------------------------------------------

OTTO_TYPES = {"clicks": "product_view", "carts": "add_to_cart", "orders": "purchase"}
OTTO_LINE = '{"session": "VARCHAR", "events": [{"aid": "VARCHAR", "ts": "VARCHAR", "type": "VARCHAR"}]}'


def head_lines(path: Path, n: int = 10) -> list[str]:
    """The first `n` non-empty lines (a bad first row alone must not refuse a header-less file)."""
    with open(path, "r", encoding="utf-8", errors="replace", newline="") as f:
        return [h for h in (f.readline() for _ in range(n)) if h.strip()]


def _is_session(line: str) -> bool:
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and "session" in obj and isinstance(obj.get("events"), list)


def check_otto(path: Path) -> None:
    """FormatError unless one of the first ten lines is an OTTO session."""
    line = first_line(path)
    if not any(_is_session(h) for h in head_lines(path)):
        raise FormatError(
            f"{path}: not an OTTO JSONL file: each line must be "
            f'{{"session": int, "events": [{{"aid", "ts", "type"}}]}}; first line starts {line[:60]!r}'
        )


def otto_lines(lines: str) -> str:
    """Sessions of `lines` (`_row`, `line`): `_ok` false for a line that is not a session object
    with a non-empty events list (quarantined whole as malformed_row)."""
    return f"""(
        SELECT _row, line, j.session AS session, j.events AS events,
               j IS NOT NULL AND j.session IS NOT NULL AND len(j.events) > 0 AS _ok
        FROM (SELECT _row, line, try(from_json(line, '{OTTO_LINE}')) AS j FROM {lines})
    )"""


def otto(sessions: str, shop_name: str) -> Source:
    """OTTO sessions JSONL: one line per session with its events; the buyer is the session (its
    one session is `s1`, so the raw id is not repeated). `_row` is the session's line number."""
    types = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in OTTO_TYPES.items())
    sql = f"""
    WITH ev AS (SELECT _row, session, unnest(events) AS e, generate_subscripts(events, 1) AS _sub
                FROM {sessions} WHERE _ok)
    SELECT _row, _sub, {lit(shop_name)} AS shop_id, session AS buyer_id, 's1' AS session_id,
           e.ts AS _ts_raw, {_unix('TRY_CAST(e.ts AS BIGINT) / 1000.0')} AS ts,
           CASE e.type {types} ELSE e.type END AS event_type,
           e.aid AS product_id, NULL::VARCHAR AS collection_id, NULL::VARCHAR AS query,
           NULL::VARCHAR AS _price_raw, CASE WHEN e.type IN ('carts', 'orders') THEN '1' END AS _qty_raw,
           'article ' || e.aid AS _title, NULL::VARCHAR AS _collection, NULL::VARCHAR AS _brand,
           struct_pack(session := session, aid := e.aid, ts := e.ts, "type" := e.type) AS _raw
    FROM ev
    """
    return Source(sql, sub="_sub")
