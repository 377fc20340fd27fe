"""Ingestion of canonical files: every validation reason, strict mode, de-identification, no loss."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simpersona.events import deid, ingest
from simpersona.events.deid import hash_id
from simpersona.events.schema import CATALOG_SCHEMA, EVENT_SCHEMA
from simpersona.events.validate import IngestError

HEADER = "shop_id,buyer_id,session_id,ts,event_type,product_id,collection_id,query,price,quantity"
GOOD = "s1,b1,x1,2024-05-01T10:00:00Z,product_view,p1,,,9.5,"
SALT = "00" * 16


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def run(tmp_path: Path, src: Path, **kw) -> dict:
    cfg = ingest.IngestConfig(format=kw.pop("format", "canonical"), input=src, salt=SALT, progress=False, **kw)
    return ingest.run(cfg, tmp_path / "out")


# One crafted line per reason; the expected (reason, field) and the line number in the file.
BAD_ROWS = [
    (",b1,x1,2024-05-01T10:00:00Z,page_view,,,,,", "empty_id", "shop_id"),
    ("s1,,x1,2024-05-01T10:00:00Z,page_view,,,,,", "empty_id", "buyer_id"),
    ("s1,b1,,2024-05-01T10:00:00Z,page_view,,,,,", "empty_id", "session_id"),
    ("s1,b1,x1,yesterday,page_view,,,,,", "bad_timestamp", "ts"),
    ("s1,b1,x1,1970-01-02T00:00:00Z,page_view,,,,,", "timestamp_out_of_range", "ts"),
    ("s1,b1,x1,2999-01-01T00:00:00Z,page_view,,,,,", "timestamp_out_of_range", "ts"),
    ("s1,b1,x1,2024-05-01T10:00:00Z,wishlist,,,,,", "unknown_event_type", "event_type"),
    ("s1,b1,x1,2024-05-01T10:00:00Z,product_view,p1,,,cheap,", "bad_price", "price"),
    ("s1,b1,x1,2024-05-01T10:00:00Z,product_view,p1,,,NaN,", "nan_price", "price"),
    ("s1,b1,x1,2024-05-01T10:00:00Z,product_view,p1,,,-1,", "negative_price", "price"),
    ("s1,b1,x1,2024-05-01T10:00:00Z,add_to_cart,p1,,,5,two", "bad_quantity", "quantity"),
    ("s1,b1,x1,2024-05-01T10:00:00Z,add_to_cart,p1,,,5,0", "quantity_out_of_range", "quantity"),
    ("s1,b1,x1,2024-05-01T10:00:00Z,add_to_cart,,,,5,1", "missing_product_id", "product_id"),
    ("s1,b1,x1,2024-05-01T10:00:00Z,collection_view,,,,,", "missing_collection_id", "collection_id"),
    ("s1,b1,x1,2024-05-01T10:00:00Z,search,,,,,", "missing_query", "query"),
    ("s1,b1,x1,2024-05-01T10:00:00Z,page_view", "malformed_row", "missing_columns"),
    ("s1,b1,x1,2024-05-01T10:00:00Z,page_view,,,,,,extra", "malformed_row", "too_many_columns"),
    (GOOD, "duplicate", None),
]


def test_every_reason_is_rejected_with_its_field_and_line(tmp_path):
    lines = [HEADER, GOOD] + [row for row, _, _ in BAD_ROWS] + ["s1,b1,x1,2024-05-01T10:00:01Z,search,,,red skirt,,"]
    src = write(tmp_path / "events.csv", lines)
    s = run(tmp_path, src)
    assert s["read"] == len(lines) - 1
    assert s["accepted"] == 2 and s["rejected"] == len(BAD_ROWS)
    rej = pq.read_table(tmp_path / "out" / "rejected.parquet").to_pylist()
    got = {r["row"]: (r["reason"], r["field"]) for r in rej}
    for i, (_, reason, field) in enumerate(BAD_ROWS):
        line = i + 3  # header is line 1, the good row line 2
        assert got[line] == (reason, field), (line, got.get(line))
    assert all(r["source_file"] == str(src) and r["raw"] for r in rej)
    assert s["rejected_by_reason"]["empty_id"] == 3


def test_outputs_follow_the_canonical_schemas_and_ids_are_hashed(tmp_path):
    src = write(tmp_path / "e.csv", [HEADER, GOOD, "s1,b2,x9,2024-05-01T10:05:00+02:00,purchase,p1,,,9.5,2"])
    run(tmp_path, src)
    ev = pq.read_table(tmp_path / "out" / "events.parquet")
    assert ev.schema.names == EVENT_SCHEMA.names
    for f in EVENT_SCHEMA:
        assert ev.schema.field(f.name).type == f.type, f.name
    ids = set(ev.column("buyer_id").to_pylist())
    assert ids == {hash_id("b1", bytes(16)), hash_id("b2", bytes(16))}
    assert set(ev.column("session_id").to_pylist()) == {deid.hash_session("x1", bytes(16)), deid.hash_session("x9", bytes(16))}
    rows = sorted(ev.to_pylist(), key=lambda r: r["ts"])
    assert rows[0]["ts"].isoformat() == "2024-05-01T08:05:00+00:00"  # offsets normalised to UTC
    assert rows[0]["quantity"] == 2 and rows[0]["price"] == 9.5
    cat = pq.read_table(tmp_path / "out" / "catalog.parquet")
    assert cat.schema.names == CATALOG_SCHEMA.names


def test_salt_lives_outside_the_output_and_is_reused_run_after_run(tmp_path, monkeypatch):
    src = write(tmp_path / "e.csv", [HEADER, GOOD])
    key_file = tmp_path / "config" / "salt.hex"
    monkeypatch.setenv(deid.SALT_FILE_ENV, str(key_file))
    cfg = ingest.IngestConfig(input=src, progress=False)
    first_run = ingest.run(cfg, tmp_path / "o")
    assert first_run["salt"] == f"new key file {key_file}"
    assert key_file.stat().st_mode & 0o777 == 0o600
    first = pq.read_table(tmp_path / "o" / "events.parquet").column("buyer_id").to_pylist()
    # A fresh output folder, same installation: same ids; no key anywhere in the output.
    again = ingest.run(cfg, tmp_path / "o2")
    assert again["salt"] == f"key file {key_file}" and again["salt_id"] == first_run["salt_id"]
    assert pq.read_table(tmp_path / "o2" / "events.parquet").column("buyer_id").to_pylist() == first
    key_hex = key_file.read_text().strip()
    for f in (tmp_path / "o").rglob("*"):
        assert key_hex.encode() not in f.read_bytes(), f
    assert not (tmp_path / "o" / "salt.hex").exists()
    # The env var wins over the key file; --salt over both.
    monkeypatch.setenv(deid.SALT_ENV, "22" * 16)
    env = ingest.run(cfg, tmp_path / "e")
    assert env["salt"] == "$SIMPERSONA_SALT" and env["salt_id"] == deid.salt_id(bytes([0x22]) * 16)
    other = ingest.run(ingest.IngestConfig(input=src, progress=False, salt="11" * 16), tmp_path / "p")
    assert other["salt"] == "given (--salt)"
    assert pq.read_table(tmp_path / "p" / "events.parquet").column("buyer_id").to_pylist() != first
    meta = (tmp_path / "p" / "meta.json").read_text()
    assert "11" * 16 not in meta and "<secret sha256:" in meta  # a given salt is recorded as a fingerprint
    # Rotation: the ingest folder remembers which key made it; a different current key is an error.
    assert deid.ingest_key(tmp_path / "e") == bytes([0x22]) * 16
    with pytest.raises(deid.SaltError, match="was keyed with salt"):
        deid.ingest_key(tmp_path / "o")


def test_hmac_stable_for_a_salt_and_different_across_salts():
    k1, k2 = bytes(16), bytes([1]) * 16
    assert hash_id("buyer-7", k1) == hash_id("buyer-7", k1)
    assert hash_id("buyer-7", k1) != hash_id("buyer-7", k2)
    assert hash_id("buyer-7", k1) != hash_id("buyer-8", k1)


def test_strict_names_file_row_and_field_and_writes_no_events(tmp_path):
    src = write(tmp_path / "e.csv", [HEADER, GOOD, "s1,b1,x1,2024-05-01T10:00:00Z,product_view,p1,,,-3,"])
    with pytest.raises(IngestError, match=r"e\.csv, line 3, field price: negative_price"):
        run(tmp_path, src, strict=True)
    assert not (tmp_path / "out" / "events.parquet").exists()


def test_catalog_rows_are_validated_too(tmp_path):
    src = write(tmp_path / "e.csv", [HEADER, GOOD])
    cat = write(
        tmp_path / "c.csv",
        ["shop_id,product_id,title,collection,brand,price", "s1,p1,Red skirt,apparel/skirts,acme,9.5",
         "s1,p1,Red skirt again,apparel/skirts,acme,9.5", "s1,p2,,apparel,acme,3", "s1,p3,Cap,hats,acme,-2"],
    )
    s = run(tmp_path, src, catalog=cat)
    assert s["catalog_products"] == 1 and s["rejected_catalog_rows"] == 3
    rej = pq.read_table(tmp_path / "out" / "rejected.parquet").to_pylist()
    assert {(r["row"], r["reason"]) for r in rej} == {(3, "duplicate"), (4, "missing_title"), (5, "negative_price")}


def test_wrong_format_fails_at_once_with_a_message(tmp_path):
    src = write(tmp_path / "e.csv", ["a,b,c", "1,2,3"])
    with pytest.raises(IngestError, match="not a rees46 file: missing column"):
        run(tmp_path, src, format="rees46")
    with pytest.raises(IngestError, match="not an OTTO JSONL"):
        run(tmp_path, src, format="otto")
    with pytest.raises(IngestError, match="not a taobao"):
        run(tmp_path, src, format="taobao")


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    src = write(tmp_path / "e.csv", ["a,b,c", "1,2,3"])
    p = subprocess.run(
        [sys.executable, "-m", "simpersona", "ingest", "--format", "gmerch", "--input", str(src),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert p.returncode == 2
    assert "not a gmerch file" in p.stderr and "Traceback" not in p.stderr


# --- property: nothing is lost ------------------------------------------------------------------

cell = st.sampled_from(["", "s1", "b2", "x", "p1", "1", "-1", "NaN", "2.5", "0", "a,b", 'q"t'])
ts = st.sampled_from(["2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z", "bad", "1960-01-01T00:00:00Z", ""])
etype = st.sampled_from(["page_view", "search", "product_view", "add_to_cart", "purchase", "oops", ""])
row = st.tuples(cell, cell, cell, ts, etype, cell, cell, cell, cell, cell)
ragged = st.lists(cell, min_size=0, max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(row, row, row, ragged), min_size=1, max_size=30))
def test_accepted_plus_rejected_equals_read(tmp_path_factory, rows):
    d = tmp_path_factory.mktemp("prop")
    src = d / "e.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER.split(","))
        for r in rows:
            w.writerow(r)
    # Non-blank lines the CSV module wrote (no cell holds a newline; blank lines are not rows).
    n_lines = sum(1 for line in src.read_text().splitlines() if line.strip()) - 1
    s = ingest.run(ingest.IngestConfig(input=src, salt=SALT, progress=False), d / "out")
    assert s["read"] == n_lines
    assert s["accepted"] + s["rejected"] == s["read"]
    assert pq.read_metadata(d / "out" / "events.parquet").num_rows == s["accepted"]
    assert pq.read_metadata(d / "out" / "rejected.parquet").num_rows == s["rejected"]


def test_tests_never_use_the_users_salt_key_file():
    assert deid.SALT_ENV not in os.environ
    assert Path(tempfile.gettempdir()) in deid.salt_file().parents  # set in conftest.pytest_configure


@pytest.mark.parametrize("value", ["", " ", "   ", "a", " a", "a ", "\t", "\x01", "!", "~", "\x7f", "é", "\u00a0",
                                   "\u2003", "\u2003\u2003", "\u3000", "\u3000x", "\u0085", None])
def test_blank_check_agrees_with_trim(value):
    """validate._empty tests the first byte before trimming; it must call blank exactly what trim() does
    (trim strips Unicode spaces too, so only printable ASCII may skip it)."""
    from simpersona.events.validate import _empty

    con = duckdb.connect()
    fast, slow = con.execute(f"SELECT {_empty('$1')}, ($1 IS NULL OR trim($1) = '')", [value]).fetchone()
    assert fast == slow


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_rejects_after_malformed_lines_keep_their_lines_in_every_file(tmp_path, parts):
    """DuckDB's parser skips malformed lines; the rows after them are put back on their lines only
    where they are reported (staged rejects, duplicates). Two files, malformed lines before bad rows
    and before duplicates (one of them a copy of the other file's row): every reject on its line,
    whether a file is parsed whole or in byte ranges side by side (`parts`)."""
    good = [f"s1,b{i},x{i},2024-05-01T10:00:{i:02d}Z,page_view,,,,," for i in range(30)]
    a = [HEADER, *good[:10], "s1,b1,x1,2024-05-01T10:00:00Z,page_view", good[3], "a,b", "s1,b9,x9,yesterday,page_view,,,,,",
         *good[10:20], "s1,b2,x2,2024-05-01T10:00:00Z,page_view,,,,,,x", good[15]]
    b = [HEADER, *good[20:25], "x,y,z", good[0], *good[25:30], "s1,b3,x3,2024-05-01T10:00:00Z,wishlist,,,,,", "q"]
    d = tmp_path / "in"
    d.mkdir()
    fa, fb = write(d / "a.csv", a), write(d / "b.csv", b)
    s = run(tmp_path, d, threads=parts, part_mib=1e-6 if parts > 1 else 64)
    assert s["read_line_by_line"] == []  # the fast path, with line shifts
    rej = pq.read_table(tmp_path / "out" / "rejected.parquet").to_pylist()
    got = {(r["source_file"], r["row"]): r["reason"] for r in rej}
    want = {(str(fa), 12): "malformed_row", (str(fa), 13): "duplicate", (str(fa), 14): "malformed_row",
            (str(fa), 15): "bad_timestamp", (str(fa), 26): "malformed_row", (str(fa), 27): "duplicate",
            (str(fb), 7): "malformed_row", (str(fb), 8): "duplicate", (str(fb), 14): "unknown_event_type",
            (str(fb), 15): "malformed_row"}
    assert got == want
    assert s["accepted"] == 30 and s["accepted"] + s["rejected"] == s["read"] == len(a) + len(b) - 2
