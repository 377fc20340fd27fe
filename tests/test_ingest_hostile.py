"""Ingestion under hostile input (issue 10): nothing lost, nothing leaked, clear operator errors.

Every data line is one accepted row or one reject, counted apart from the parser; columns are
bound by header name; non-finite numbers are rejects; one bad row never aborts a file; no raw
buyer or session id reaches any output file, rejects included.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simpersona.events import ingest, lines
from simpersona.events.validate import IngestError

SALT = "cd" * 16


def write(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def run(src: Path, out: Path, fmt: str = "canonical", **kw) -> dict:
    s = ingest.run(ingest.IngestConfig(format=fmt, input=src, salt=SALT, progress=False, **kw), out)
    assert s["accepted"] + s["rejected"] == s["read"]
    return s


def data_lines(text: str, header: int = 1) -> list[int]:
    """Line numbers (1-based) of the non-empty lines after the header, counted by splitting on \\n."""
    parts = text.split("\n")
    if text.endswith("\n"):
        parts = parts[:-1]
    return [i + 1 for i, p in enumerate(parts) if i >= header and p not in ("", "\r")]


def rejects(out: Path) -> list[dict]:
    return pq.read_table(out / "rejected.parquet").to_pylist()


# --- formats: one good file each, with a line to corrupt --------------------------------------

CANON_H = "shop_id,buyer_id,session_id,ts,event_type,product_id,collection_id,query,price,quantity"
REES_H = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
TMALL_H = "user_id,item_id,cat_id,merchant_id,brand_id,month,day,action,age_range,gender,province"
GM_H = ("fullVisitorId,channelGrouping,time,date,visitId,productPrice,productQuantity,productSKU,v2ProductName,"
        "v2ProductCategory,eCommerceAction_type")


def canon_row(i: int) -> str:
    return f"s1,RAWBUYER{i % 7},RAWBUYER{i % 7}-0{i % 3},2024-05-01T10:{i % 60:02d}:00Z,product_view,p{i},,,9.5,"


def rees_row(i: int) -> str:
    return (f"2019-10-01 00:{i % 60:02d}:00 UTC,view,{1000 + i},2103807459595387724,electronics.phone,acme,"
            f"12.50,5551000{i % 7},RAWSESS-{i % 11}")


def taobao_row(i: int) -> str:
    return f"77700000{i % 7}12,{2000 + i},4,pv,{1511658000 + i}"


def tmall_row(i: int) -> str:
    return f"66600000{i % 7}21,{3000 + i},5,{10 + i % 3},7,11,11,0,3,1,north"


def gm_row(i: int) -> str:
    return (f"99881{i % 7}776655,Direct,{i * 1000},20160913,{1473757371 + i % 5},2990000,,GGOE{i},"
            f'"Google Bottle, {i} oz",Home/Drinkware/,2')


FORMATS = {
    "canonical": (CANON_H, canon_row),
    "rees46": (REES_H, rees_row),
    "taobao": (None, taobao_row),
    "tmall": (TMALL_H, tmall_row),
    "gmerch": (GM_H, gm_row),
}


def make(fmt: str, n: int = 20) -> list[str]:
    header, row = FORMATS[fmt]
    return ([header] if header else []) + [row(i) for i in range(n)]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_one_unbalanced_quote_quarantines_one_line_not_the_rest_of_the_file(tmp_path, fmt):
    rows = make(fmt)
    h = 1 if FORMATS[fmt][0] else 0
    rows[h + 5] = rows[h + 5].replace(",", ',"', 1)  # an opening quote that never closes
    src = write(tmp_path / "in.csv", rows)
    s = run(src, tmp_path / "o", fmt)
    assert s["read"] == 20 and s["accepted"] == 19 and s["rejected"] == 1
    [r] = rejects(tmp_path / "o")
    assert (r["reason"], r["row"]) == ("malformed_row", h + 6)


def test_a_quote_closed_four_lines_later_never_merges_rows(tmp_path):
    rows = make("rees46")
    rows[3] = rows[3].replace("acme", '"acme')
    rows[7] = rows[7].replace("acme", 'acme"')
    src = write(tmp_path / "in.csv", rows)
    s = run(src, tmp_path / "o", "rees46")
    # Line 4 opens a quote it never closes: quarantined alone. Line 8 alone is a valid line (a
    # quote inside an unquoted field is a character, as in DuckDB and Python's csv).
    assert s["read"] == 20 and s["accepted"] == 19 and s["read_line_by_line"] == [str(src)]
    assert [r["row"] for r in rejects(tmp_path / "o")] == [4]
    titles = pq.read_table(tmp_path / "o" / "catalog.parquet").column("title").to_pylist()
    assert not any("5551000" in t or "RAWSESS" in t for t in titles)
    assert len(titles) == 19


def test_an_embedded_newline_quarantines_both_lines_and_keeps_later_line_numbers(tmp_path):
    rows = make("canonical") + ["s1,b,x,2024-05-01T10:00:00Z,search,,,,,"]
    rows[4] = rows[4].replace(",product_view,", ',"product\nview",')  # a quoted field spanning a line break
    src = write(tmp_path / "in.csv", rows)
    text = src.read_text()
    s = run(src, tmp_path / "o")
    assert s["read"] == len(data_lines(text)) == 22
    got = {r["row"]: r["reason"] for r in rejects(tmp_path / "o")}
    assert got == {5: "malformed_row", 6: "malformed_row", 23: "missing_query"}


def test_empty_lines_and_crlf_are_not_rows_and_line_numbers_hold(tmp_path):
    rows = make("canonical", 6)
    text = "\r\n".join(rows[:3]) + "\r\n\r\n\n" + "\r\n".join(rows[3:]) + "\r\ns1,b,x,2024-05-01T10:00:00Z,oops,,,,,\r\n"
    src = tmp_path / "in.csv"
    src.write_bytes(text.encode())
    s = run(src, tmp_path / "o")
    assert s["read"] == 7 and s["accepted"] == 6 and s["empty_lines"] == 2
    assert [(r["row"], r["reason"]) for r in rejects(tmp_path / "o")] == [(10, "unknown_event_type")]


def test_lone_cr_inside_a_line_is_one_malformed_line(tmp_path):
    rows = make("canonical", 5)
    rows[2] = rows[2].replace("product_view", "product\rview")
    src = write(tmp_path / "in.csv", rows)
    s = run(src, tmp_path / "o")
    assert s["read"] == 5 and s["accepted"] == 4
    assert [(r["row"], r["reason"]) for r in rejects(tmp_path / "o")] == [(3, "malformed_row")]


# --- columns by header name --------------------------------------------------------------------

def _reorder(rows: list[str], order: list[int]) -> list[str]:
    out = []
    for r in csv.reader(rows):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow([r[i] for i in order])
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("fmt", ["rees46", "tmall", "gmerch", "canonical"])
def test_reordered_headers_give_the_same_events(tmp_path, fmt):
    rows = make(fmt)
    width = len(rows[0].split(","))
    order = list(reversed(range(width)))
    a = run(write(tmp_path / "a.csv", rows), tmp_path / "a", fmt)
    b = run(write(tmp_path / "b.csv", _reorder(rows, order)), tmp_path / "b", fmt)
    assert a["accepted"] == b["accepted"] == 20
    ev_a = sorted(pq.read_table(tmp_path / "a" / "events.parquet").to_pylist(), key=repr)
    ev_b = sorted(pq.read_table(tmp_path / "b" / "events.parquet").to_pylist(), key=repr)
    assert ev_a == ev_b


def test_missing_required_column_is_an_error_naming_it(tmp_path):
    rows = [",".join(c for c in r.split(",")[:7]) + "," + r.split(",")[8] for r in make("rees46")]  # no user_id
    with pytest.raises(IngestError, match=r"missing column\(s\) \['user_id'\]"):
        run(write(tmp_path / "in.csv", rows), tmp_path / "o", "rees46")


def test_extra_columns_are_ignored_and_listed(tmp_path):
    rows = [r + (",extra_a,extra_b" if i == 0 else ",1,2") for i, r in enumerate(make("rees46"))]
    src = write(tmp_path / "in.csv", rows)
    s = run(src, tmp_path / "o", "rees46")
    assert s["accepted"] == 20 and s["extra_columns"] == {str(src): ["extra_a", "extra_b"]}


def test_tmall_without_demographic_columns(tmp_path):
    rows = [",".join(r.split(",")[:8]) for r in make("tmall")]
    src = write(tmp_path / "in.csv", rows)
    s = run(src, tmp_path / "o", "tmall")
    assert s["accepted"] == 20 and s["rejected"] == 0
    assert s["absent_columns"] == {str(src): ["age_range", "gender", "province"]}


def test_catalog_lines_are_accounted_for_too(tmp_path):
    cat = write(tmp_path / "cat.csv", ["title,product_id,shop_id,price", "Cap,p1,s1,3", '"Hat,p2,s1,4', "Scarf,p3,s1,5",
                                       "Cap again,p1,s1,3"])
    s = run(write(tmp_path / "e.csv", make("canonical", 3)), tmp_path / "o", catalog=cat)
    assert s["catalog_products"] == 2 and s["rejected_catalog_rows"] == 2
    got = {(r["row"], r["reason"]) for r in rejects(tmp_path / "o")}
    assert got == {(3, "malformed_row"), (5, "duplicate")}


# --- numbers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("price, reason", [("inf", "infinite_price"), ("Infinity", "infinite_price"),
                                           ("-inf", "infinite_price"), ("1e400", "infinite_price"),
                                           ("NaN", "nan_price"), ("ten", "bad_price")])
def test_non_finite_and_unparseable_prices_are_rejects(tmp_path, price, reason):
    rows = make("canonical", 3) + [f"s1,b1,x1,2024-05-01T10:00:00Z,purchase,p1,,,{price},1"]
    s = run(write(tmp_path / "c.csv", rows), tmp_path / "c")
    assert s["rejected_by_reason"] == {reason: 1}
    rees = make("rees46", 3) + [rees_row(9).replace("12.50", price)]
    assert run(write(tmp_path / "r.csv", rees), tmp_path / "r", "rees46")["rejected_by_reason"] == {reason: 1}
    gm_price = {"inf": "inf", "Infinity": "Infinity", "-inf": "-inf", "1e400": "1e400", "NaN": "NaN", "ten": "ten"}[price]
    gm = make("gmerch", 3) + [gm_row(9).replace("2990000", gm_price)]
    assert run(write(tmp_path / "g.csv", gm), tmp_path / "g", "gmerch")["rejected_by_reason"] == {reason: 1}
    cat = write(tmp_path / "cat.csv", ["shop_id,product_id,title,price", "s1,p1,Cap,3", f"s1,p2,Hat,{price}"])
    s = run(write(tmp_path / "c2.csv", make("canonical", 3)), tmp_path / "c2", catalog=cat)
    assert s["catalog_products"] == 1 and s["rejected_by_reason"] == {reason: 1}


def test_fractional_quantity_is_a_reject_not_rounded(tmp_path):
    rows = make("canonical", 2) + ["s1,b1,x1,2024-05-01T10:00:00Z,add_to_cart,p1,,,5,1.5",
                                   "s1,b1,x1,2024-05-01T10:00:01Z,add_to_cart,p1,,,5,2.0",
                                   "s1,b1,x1,2024-05-01T10:00:02Z,add_to_cart,p1,,,5,1e400"]
    s = run(write(tmp_path / "in.csv", rows), tmp_path / "o")
    assert s["accepted"] == 3 and s["rejected_by_reason"] == {"bad_quantity": 2}
    qty = pq.read_table(tmp_path / "o" / "events.parquet").column("quantity").to_pylist()
    assert sorted(q for q in qty if q) == [2]


# --- one bad row never aborts a file ----------------------------------------------------------------

def test_unrepresentable_timestamps_and_dates_are_rejects(tmp_path):
    tb = make("taobao", 5) + ["77700000112,1,4,pv,99999999999999999"]
    s = run(write(tmp_path / "t.csv", tb), tmp_path / "t", "taobao")
    assert s["accepted"] == 5 and s["rejected_by_reason"] == {"bad_timestamp": 1}
    tm = make("tmall", 5) + ["66600000121,1,5,10,7,13,11,0,3,1,north", "66600000121,1,5,10,7,02,30,0,3,1,north"]
    s = run(write(tmp_path / "m.csv", tm), tmp_path / "m", "tmall")
    assert s["accepted"] == 5 and s["rejected_by_reason"] == {"bad_timestamp": 2}
    gm = make("gmerch", 5) + [gm_row(1).replace("1473757372", "99999999999999999")]
    s = run(write(tmp_path / "g.csv", gm), tmp_path / "g", "gmerch")
    assert s["accepted"] == 5 and s["rejected_by_reason"] == {"bad_timestamp": 1}


def test_one_malformed_otto_line_is_quarantined(tmp_path):
    good = [json.dumps({"session": 98765400 + i, "events": [{"aid": 5, "ts": 1659304800025 + i, "type": "clicks"},
                                                          {"aid": 6, "ts": 1659304900025 + i, "type": "carts"}]})
            for i in range(4)]
    rows = good[:2] + ['{"session": 98765499, "events": [{"aid": 1,'] + good[2:] + ['{"session": 98765498, "events": []}']
    src = write(tmp_path / "train.jsonl", rows)
    s = run(src, tmp_path / "o", "otto")
    assert s["accepted"] == 8 and s["rejected_by_reason"] == {"malformed_row": 2} and s["read"] == 10
    assert sorted(r["row"] for r in rejects(tmp_path / "o")) == [3, 6]
    with pytest.raises(IngestError, match=r"train\.jsonl, line 3, field not_a_session_with_events: malformed_row"):
        run(src, tmp_path / "s", "otto", strict=True)


def test_a_bad_first_line_of_a_header_less_file_is_only_a_reject(tmp_path):
    tb = ['77700000112,"1,4,pv,1511658000'] + make("taobao", 5)
    s = run(write(tmp_path / "t.csv", tb), tmp_path / "t", "taobao")
    assert s["accepted"] == 5 and [r["row"] for r in rejects(tmp_path / "t")] == [1]
    ot = ['{"session": 98765499, "events": [', json.dumps({"session": 1, "events": [{"aid": 5, "ts": 1659304800025,
                                                                                     "type": "clicks"}]})]
    s = run(write(tmp_path / "o.jsonl", ot), tmp_path / "o", "otto")
    assert s["accepted"] == 1 and [r["row"] for r in rejects(tmp_path / "o")] == [1]
    with pytest.raises(IngestError, match="not a taobao"):
        run(write(tmp_path / "x.csv", ["a,b,c"] * 3), tmp_path / "x", "taobao")


def test_strict_still_stops_at_the_first_bad_row(tmp_path):
    tb = make("taobao", 5) + ["77700000112,1,4,pv,99999999999999999"]
    with pytest.raises(IngestError, match=r"t\.csv, line 6, field ts: bad_timestamp"):
        run(write(tmp_path / "t.csv", tb), tmp_path / "t", "taobao", strict=True)
    assert not (tmp_path / "t" / "events.parquet").exists()


# --- input folders --------------------------------------------------------------------------------

def test_folder_reads_upper_case_suffixes_and_subfolders_and_lists_the_rest(tmp_path):
    rows = make("rees46")
    write(tmp_path / "in" / "a.CSV", rows[:6])
    write(tmp_path / "in" / "sub" / "b.csv", [rows[0]] + rows[6:])
    write(tmp_path / "in" / "notes.txt", ["hello"])
    s = run(tmp_path / "in", tmp_path / "o", "rees46")
    assert s["read"] == 20 and len(s["files"]) == 2
    assert s["skipped_files"] == [str(tmp_path / "in" / "notes.txt")]


# --- de-identification ---------------------------------------------------------------------------

RAW_IDS = {
    "canonical": ["RAWBUYER", "b000001"],
    "rees46": ["5551000", "RAWSESS"],
    "taobao": [f"77700000{k}12" for k in range(7)],
    "tmall": [f"66600000{k}21" for k in range(7)],
    "gmerch": ["998810776655", "998811776655", "1473757371", "1473757372"],
    "otto": ["98765"],
}


def hostile(fmt: str) -> list[str]:
    """Good rows, a duplicate, an invalid row, and malformed lines, all carrying raw ids."""
    if fmt == "otto":
        ev = [{"aid": 5, "ts": 1659304800025, "type": "clicks"}, {"aid": 5, "ts": 1659304800025, "type": "clicks"},
              {"aid": 6, "ts": "x", "type": "carts"}]
        return [json.dumps({"session": 98765400 + i, "events": ev}) for i in range(4)] + [
            '{"session": 98765499, "events": [', '{"session": 98765498, "events": []}', "98765497"]
    rows = make(fmt, 30)
    h = 1 if FORMATS[fmt][0] else 0
    rows.append(rows[h + 1])  # duplicate (not for Tmall, whose timestamps follow the file order)
    rows.append({"canonical": rows[h + 5].replace("product_view", "wishlist"),
                 "rees46": rows[h + 5].replace(",view,", ",wish,"), "taobao": rows[h + 5].replace(",pv,", ",zz,"),
                 "tmall": rows[h + 5][:-len(",0,3,1,north")] + ",9,3,1,north",
                 "gmerch": rows[h + 5][:-1] + "8"}[fmt])  # an invalid event
    rows[h + 2] = rows[h + 2] + ",surplus"  # too many columns
    rows[h + 3] = rows[h + 3].replace(",", ',"', 1)  # unterminated quote
    if fmt == "canonical":
        rows[h + 4] = "s1,b000001,b000001-00,2024-05-01T10:00:00Z,wishlist,,,,,"
    return rows


def all_text(out: Path) -> list[str]:
    """Every value of every output file as text (Parquet decoded, other files as they are)."""
    texts = []
    for f in sorted(out.rglob("*")):
        if not f.is_file():
            continue
        texts.append(f.read_bytes().decode("utf-8", "replace"))
        if f.suffix == ".parquet":
            for col in pq.read_table(f).columns:
                texts += [str(v) for v in col.to_pylist()]
    return texts


@pytest.mark.parametrize("fmt", list(RAW_IDS))
def test_no_raw_id_in_any_output_file_of_any_reader(tmp_path, fmt):
    src = write(tmp_path / ("in.jsonl" if fmt == "otto" else "in.csv"), hostile(fmt))
    s = run(src, tmp_path / "o", fmt)
    assert s["rejected"] >= (3 if fmt == "tmall" else 4), s["rejected_by_reason"]
    assert {"malformed_row"} < set(s["rejected_by_reason"])
    texts = all_text(tmp_path / "o")
    for raw in RAW_IDS[fmt]:
        assert not any(raw in t for t in texts), (fmt, raw)
    # The strict message names file, line and field, never a raw id.
    with pytest.raises(IngestError) as e:
        run(src, tmp_path / "s", fmt, strict=True)
    assert "line" in str(e.value) and not any(raw in str(e.value) for raw in RAW_IDS[fmt])
    # Raw rows are kept only when asked for.
    run(src, tmp_path / "k", fmt, keep_raw_rejects=True)
    kept = " ".join(pq.read_table(tmp_path / "k" / "rejected.parquet").column("raw").to_pylist())
    assert any(raw in kept for raw in RAW_IDS[fmt])


SAMPLES = {
    "rees46": ("rees46-multicategory-2019oct-head/2019-Oct_head5000.csv", ("user_id", "user_session")),
    "taobao": ("taobao-userbehavior-sample/UserBehavior_sample.csv", (0,)),
    "tmall": ("tmall-double11-dblab-sample/user_log.csv", ("user_id",)),
    "gmerch": ("google-merch-store-ga-sample/all_sessions.csv", ("fullVisitorId", "visitId")),
}


@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_real_samples_leak_no_raw_id(tmp_path, shared_data, fmt):
    rel, cols = SAMPLES[fmt]
    path = shared_data / rel
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f)) if fmt == "taobao" else list(csv.DictReader(f))
    raw = {r[c] for r in rows[:300] for c in cols if len(r[c]) >= 6}
    run(path, tmp_path / "o", fmt)
    cells = set()
    for f in (tmp_path / "o").glob("*.parquet"):
        t = pq.read_table(f)
        for name in set(t.column_names) - {"product_id", "title", "collection", "brand"}:  # item ids are numbers too
            cells |= {str(v) for v in t.column(name).to_pylist()}
    assert not raw & cells  # (short numeric ids would match inside hex hashes: cells are compared whole)


# --- property: nothing is lost, whatever the corruption -----------------------------------------------

corruption = st.tuples(st.sampled_from(['"', "\n", ",", ";", "\r", '""', "\n\n", "\r\n"]),
                       st.integers(0, 10_000), st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(list(FORMATS)), n=st.integers(1, 25), cuts=st.lists(corruption, max_size=6),
       parts=st.integers(1, 3))
def test_accepted_plus_rejected_equals_physical_data_lines(tmp_path_factory, fmt, n, cuts, parts):
    """Whatever the corruption and however many byte ranges a file is parsed in side by side."""
    d = tmp_path_factory.mktemp("prop")
    rows = make(fmt, n)
    h = 1 if FORMATS[fmt][0] else 0
    header, body = "".join(r + "\n" for r in rows[:h]), "\n".join(rows[h:]) + "\n"
    for text, at, delete in cuts:  # insert (or delete one character) at a random place in the data
        i = at % max(len(body), 1)
        body = body[:i] + body[i + 1:] if delete and text == "," else body[:i] + text + body[i:]
    src = d / "in.csv"
    src.write_bytes((header + body).encode())
    expected = data_lines(header + body, h)
    try:
        s = run(src, d / "o", fmt, threads=parts, part_mib=1e-6)
    except IngestError as e:  # a header-less file with no good row in its first ten lines is refused
        assert fmt == "taobao" and "not a taobao" in str(e)
        return
    assert s["read"] == len(expected)
    assert lines.count_lines(src).lines - h == len(expected)
    rej = rejects(d / "o")
    assert pq.read_metadata(d / "o" / "events.parquet").num_rows == s["accepted"]
    assert len(rej) == s["rejected"]
    rows_ = [r["row"] for r in rej]
    assert len(set(rows_)) == len(rows_) and set(rows_) <= set(expected)  # one reject per line, on a real line


# --- operator errors -------------------------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simpersona", "ingest", *args, "--set", "progress=false"],
                          capture_output=True, text=True)


def test_bad_salt_and_output_that_is_a_file_are_one_clear_line(tmp_path):
    src = write(tmp_path / "in.csv", make("canonical", 3))
    p = cli("--input", str(src), "--out", str(tmp_path / "o"), "--salt", "zz")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == ["error: --salt: salt must be hex digits (e.g. 64 of them), got 'zz'"]
    assert not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        p = cli("--input", str(src), "--out", str(out))
        assert p.returncode == 2 and "Traceback" not in p.stderr
        [line] = p.stderr.strip().splitlines()
        assert line.startswith(f"error: {tmp_path / 'file'}: ") and "is a file, not a folder" in line
        # ingest.run called directly (tests, notebooks) says the same
        with pytest.raises(IngestError, match="is a file, not a folder"):
            run(src, out)



def test_full_disk_is_an_output_error_not_a_bad_input(tmp_path, tmpfs):
    src = write(tmp_path / "in.csv", make("canonical", 20_000))
    with tmpfs(tmp_path / "disk", "size=96k") as disk:
        out = disk / "o"
        p = cli("--input", str(src), "--out", str(out))
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        [line] = p.stderr.strip().splitlines()
        assert line.startswith(f"error: {disk}") and "No space left on device" in line and "cannot be read" not in line
        assert sorted(disk.iterdir()) == []  # nothing half-written
        with pytest.raises(IngestError, match=f"^{out}: cannot write the ingest output: No space left on device"):
            run(src, out)
        assert sorted(x.name for x in out.iterdir()) == []


def test_read_only_output_is_one_clear_line(tmp_path, tmpfs):
    src = write(tmp_path / "in.csv", make("canonical", 3))
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        p = cli("--input", str(src), "--out", str(ro / "o"))
        assert p.returncode == 2 and "Traceback" not in p.stderr
        [line] = p.stderr.strip().splitlines()
        assert line.startswith(f"error: {ro}") and "Read-only file system" in line
        with pytest.raises(IngestError, match=f"^{ro / 'o'}: cannot write the ingest output: Read-only file system"):
            run(src, ro / "o")


def test_a_failed_ingest_leaves_the_previous_outputs_whole(tmp_path):
    src = write(tmp_path / "in.csv", make("canonical", 5))
    run(src, tmp_path / "o")
    before = {f.name: f.read_bytes() for f in (tmp_path / "o").iterdir()}
    bad = write(tmp_path / "bad.csv", make("canonical", 5) + ["s1,b,x,2024-05-01T10:00:00Z,oops,,,,,"])
    with pytest.raises(IngestError):
        run(bad, tmp_path / "o", strict=True)
    assert {f.name: f.read_bytes() for f in (tmp_path / "o").iterdir()} == before


def _reference_count(data: bytes) -> lines.LineCount:
    """lines.py's definitions on the whole file at once: lines end at `\\n`, a final run without one
    counts, an empty line holds no bytes or only `\\r`."""
    parts = data.split(b"\n")
    if parts[-1] == b"":
        parts.pop()  # the last line break ends the last line
    empty = sum(p in (b"", b"\r") for p in parts)
    cr, crlf, breaks = data.count(b"\r"), data.count(b"\r\n"), data.count(b"\n")
    return lines.LineCount(len(parts) - empty, empty, cr == 0 or cr == crlf == breaks)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=30).map(lambda b: bytes(b"a,\n\r"[x % 4] for x in b)),
       chunk=st.integers(1, 8))
def test_count_lines_matches_its_definition_at_any_chunk_size(tmp_path, monkeypatch, data, chunk):
    """The chunked byte scan (which searches a chunk for empty lines and `\\r` before joining it to
    the last one's tail) counts what the definition says, whatever the chunk seams cut."""
    monkeypatch.setattr(lines, "CHUNK", chunk)
    p = tmp_path / "f.csv"
    p.write_bytes(data)
    assert lines.count_lines(p) == _reference_count(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=30).map(lambda b: bytes(b"a,\n\r"[x % 4] for x in b)),
       skip=st.integers(0, 2), parts=st.integers(1, 4), chunk=st.integers(1, 8))
def test_lines_counted_by_ranges_add_up_to_the_whole_count(tmp_path, monkeypatch, data, skip, parts, chunk):
    """A file parsed in byte ranges is counted range by range while it is piped (the header with the
    first range): the counts add up to the whole file's, and the ranges start at line starts."""
    monkeypatch.setattr(lines, "CHUNK", chunk)
    p = tmp_path / "f.csv"
    p.write_bytes(data)
    head_end, ranges = lines.split_ranges(p, skip, parts)
    assert ranges[0][0] == head_end and ranges[-1][1] == len(data) and len(ranges) <= parts
    assert all(a < b for a, b in ranges[1:]) and all(e == a for (_, e), (a, _) in zip(ranges, ranges[1:]))
    assert all(data[a - 1:a] == b"\n" for a, _ in ranges[1:])
    counters = []
    for k, (a, b) in enumerate(ranges):
        c = lines.LineCounter()
        for i in range(0 if k == 0 else a, b, chunk):
            c.feed(data[i:min(i + chunk, b)])
        counters.append(c)
    assert lines.LineCounter.total(counters) == _reference_count(data)
