"""Each reader on its real sample in ../shared/data, checked against counts computed here with the
csv/json modules (independently of DuckDB and of the readers' SQL)."""

from __future__ import annotations

import csv
import json
from collections import Counter

import duckdb
import pytest

from simpersona.events import ingest

SALT = "ab" * 16


def ingest_sample(tmp_path, fmt, path, **kw):
    cfg = ingest.IngestConfig(format=fmt, input=path, salt=SALT, progress=False, **kw)
    s = ingest.run(cfg, tmp_path / fmt)
    assert s["accepted"] + s["rejected"] == s["read"]
    return s


def events(tmp_path, fmt):
    return duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path / fmt / 'events.parquet'}')")


def test_rees46(tmp_path, shared_data):
    path = shared_data / "rees46-multicategory-2019oct-head" / "2019-Oct_head5000.csv"
    rows = list(csv.DictReader(open(path, newline="")))
    mapping = {"view": "product_view", "cart": "add_to_cart", "purchase": "purchase"}
    keys = [(r["event_time"], r["event_type"], r["product_id"], r["price"], r["user_id"], r["user_session"]) for r in rows]
    n_dup = len(keys) - len(set(keys))
    dup_types = Counter(k[1] for k in keys) - Counter(k[1] for k in set(keys))
    expected = Counter(mapping[r["event_type"]] for r in rows)
    for t, n in dup_types.items():
        expected[mapping[t]] -= n

    s = ingest_sample(tmp_path, "rees46", path, shop_key="brand")
    assert s["read"] == len(rows) == 4999
    assert s["rejected"] == n_dup and s["rejected_by_reason"] == ({"duplicate": n_dup} if n_dup else {})
    assert {k: v for k, v in s["events_by_type"].items() if v} == dict(expected)
    brands = {r["brand"] or "unbranded" for r in rows}
    assert s["shops"] == len(brands)
    assert s["buyer_shop_pairs"] == len({(r["brand"] or "unbranded", r["user_id"]) for r in rows})
    # Catalog text comes from brand + category_code.
    cat = duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path / 'rees46' / 'catalog.parquet'}')")
    assert cat.count("*").fetchall()[0][0] == len({(r["brand"] or "unbranded", r["product_id"]) for r in rows})
    some = next(r for r in rows if r["brand"] and r["category_code"])
    title = duckdb.sql(f"SELECT title FROM cat WHERE product_id = '{some['product_id']}'").fetchall()[0][0]
    assert some["brand"] in title and some["category_code"].split(".")[-1] in title


def test_taobao_sessionised_by_30_minute_gap(tmp_path, shared_data):
    path = shared_data / "taobao-userbehavior-sample" / "UserBehavior_sample.csv"
    rows = list(csv.reader(open(path, newline="")))
    lo, hi = 788_918_400, 2_000_000_000  # 1995-01-01 … 2033
    good = [r for r in rows if lo <= int(r[4]) <= hi]
    counts = Counter({"pv": "product_view", "fav": "product_view", "cart": "add_to_cart", "buy": "purchase"}[r[3]] for r in good)
    # Sessions: per user, a gap over 30 minutes starts a new one.
    by_user: dict[str, list[int]] = {}
    for r in good:
        by_user.setdefault(r[0], []).append(int(r[4]))
    n_sessions = sum(1 + sum(1 for a, b in zip(sorted(t), sorted(t)[1:]) if b - a > 1800) for t in by_user.values())

    s = ingest_sample(tmp_path, "taobao", path)
    assert s["read"] == len(rows) == 96_169
    assert s["rejected_by_reason"].get("timestamp_out_of_range") == len(rows) - len(good) == 1
    dups = s["rejected_by_reason"].get("duplicate", 0)
    assert s["accepted"] == len(good) - dups
    assert dups == 0  # the sample has no exact duplicate events, so the counts below are the raw file's
    assert {k: v for k, v in s["events_by_type"].items() if v} == dict(counts)
    assert s["sessions"] == n_sessions
    assert s["buyer_shop_pairs"] == len(by_user) and s["shops"] == 1


def test_tmall_merchants_are_shops(tmp_path, shared_data):
    path = shared_data / "tmall-double11-dblab-sample" / "user_log.csv"
    rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
    s = ingest_sample(tmp_path, "tmall", path)
    assert s["read"] == len(rows) == 9_999 and s["rejected"] == 0
    assert s["shops"] == len({r["merchant_id"] for r in rows}) == 1_445
    counts = Counter({"0": "product_view", "3": "product_view", "1": "add_to_cart", "2": "purchase"}[r["action"]] for r in rows)
    assert {k: v for k, v in s["events_by_type"].items() if v} == dict(counts)
    assert s["sessions"] == len({(r["user_id"], r["merchant_id"], r["month"], r["day"]) for r in rows})
    # Raw buyer ids never reach the output, not even inside session ids.
    raw_ids = {r["user_id"] for r in rows}
    ev = events(tmp_path, "tmall")
    assert not raw_ids & {x for (x,) in ev.select("buyer_id").fetchall()}
    assert not any(i in sid for (sid,) in ev.select("session_id").distinct().fetchall() for i in list(raw_ids)[:20])


def test_gmerch_action_codes(tmp_path, shared_data):
    path = shared_data / "google-merch-store-ga-sample" / "all_sessions.csv"
    rows = list(csv.DictReader(open(path, newline="", encoding="utf-8")))
    names = {"0": "page_view", "1": "collection_view", "2": "product_view", "3": "add_to_cart",
             "4": "remove_from_cart", "5": "checkout_start", "6": "purchase"}

    def key(r):
        a = r["eCommerceAction_type"]
        product = r["productSKU"] if a not in ("0", "1") else None
        coll = (r["v2ProductCategory"] or "(not set)") if a == "1" else None
        price = float(r["productPrice"]) / 1e6 if product and r["productPrice"] else None
        qty = (r["productQuantity"] or "1") if a in ("3", "4", "6") else None
        return (r["fullVisitorId"], r["visitId"], r["time"], a, product, coll, price, qty)

    first: dict = {}
    for r in rows:
        first.setdefault(key(r), r)
    expected = Counter(names[r["eCommerceAction_type"]] for r in first.values())
    s = ingest_sample(tmp_path, "gmerch", path)
    assert s["read"] == len(rows) == 15_134
    assert s["rejected_by_reason"] == {"duplicate": len(rows) - len(first)}
    assert {k: v for k, v in s["events_by_type"].items() if v} == dict(expected)
    assert s["buyer_shop_pairs"] == len({r["fullVisitorId"] for r in rows})
    # Product names become catalog titles.
    cat = duckdb.sql(f"SELECT title FROM read_parquet('{tmp_path / 'gmerch' / 'catalog.parquet'}')").fetchall()
    assert any("Google" in t for (t,) in cat)


def test_otto_sessions(tmp_path, shared_data):
    path = shared_data / "otto-sample" / "train.jsonl"
    lines = [json.loads(x) for x in open(path)]
    evs = [e for line in lines for e in line["events"]]
    s = ingest_sample(tmp_path, "otto", path)
    assert s["read"] == len(evs) == 862 and s["rejected"] == 0
    assert {k: v for k, v in s["events_by_type"].items() if v} == {
        "product_view": sum(e["type"] == "clicks" for e in evs),
        "add_to_cart": sum(e["type"] == "carts" for e in evs),
        "purchase": sum(e["type"] == "orders" for e in evs),
    }
    assert s["buyer_shop_pairs"] == len(lines) == 20


def test_directory_input_reads_every_file(tmp_path, shared_data):
    src = tmp_path / "in"
    src.mkdir()
    rows = open(shared_data / "rees46-multicategory-2019oct-head" / "2019-Oct_head5000.csv").read().splitlines()
    (src / "a.csv").write_text("\n".join(rows[:1001]) + "\n")
    (src / "b.csv").write_text("\n".join([rows[0]] + rows[1001:]) + "\n")
    s = ingest.run(ingest.IngestConfig(format="rees46", input=src, salt=SALT, progress=False), tmp_path / "o")
    assert s["read"] == 4999 and set(s["files"].values()) == {1000, 3999}
