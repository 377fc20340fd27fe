"""The synthetic multi-shop generator: determinism, mixes, plausible sessions, schema, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from simpersona.config import ConfigError, load_config
from simpersona.events.schema import CATALOG_SCHEMA, EVENT_COLUMNS, EVENT_SCHEMA, EVENT_TYPES
from simpersona.synth import SynthConfig, run
from simpersona.synth.generate import format_ts

FILES = ("events.csv", "catalog.parquet", "truth/buyers.parquet", "truth/shops.parquet", "truth/types.json")


def _read(d: Path) -> dict[str, bytes]:
    return {f: (d / f).read_bytes() for f in FILES}


@pytest.fixture(scope="module")
def pq_run(tmp_path_factory) -> Path:
    """Parquet output of a small 3-shop run, small chunks so several chunks per shop."""
    d = tmp_path_factory.mktemp("synth_pq")
    run(SynthConfig(shops=3, buyers=3000, seed=7, file_format="parquet", chunk_buyers=400), d)
    return d


@pytest.fixture(scope="module")
def events(pq_run) -> dict[str, np.ndarray]:
    t = pq.read_table(pq_run / "events.parquet")
    cols = {c: t.column(c).to_numpy(zero_copy_only=False) for c in EVENT_COLUMNS if c != "ts"}
    cols["ts"] = t.column("ts").cast(pa.int64()).to_numpy()
    return cols


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    small = dict(shops=3, buyers=500, chunk_buyers=90)
    run(SynthConfig(seed=1, **small), tmp_path / "a")
    run(SynthConfig(seed=1, threads=2, **small), tmp_path / "b")  # threads must not matter
    run(SynthConfig(seed=2, **small), tmp_path / "c")
    a, b, c = _read(tmp_path / "a"), _read(tmp_path / "b"), _read(tmp_path / "c")
    assert a == b
    assert a["events.csv"] != c["events.csv"] and a["truth/buyers.parquet"] != c["truth/buyers.parquet"]


def test_shop_mixes_follow_config_and_differ(pq_run):
    shops = pq.read_table(pq_run / "truth" / "shops.parquet").to_pylist()
    mix: dict[str, dict[str, tuple[float, float]]] = {}
    for r in shops:
        mix.setdefault(r["shop_id"], {})[r["type"]] = (r["configured_share"], r["realized_share"])
    assert len(mix) == 3
    for m in mix.values():
        assert abs(sum(c for c, _ in m.values()) - 1) < 1e-9 and abs(sum(r for _, r in m.values()) - 1) < 1e-9
    buyers = pq.read_table(pq_run / "truth" / "buyers.parquet")
    counts = buyers.group_by(["shop_id", "type"]).aggregate([("buyer_id", "count")]).to_pylist()
    n_shop = {s: sum(r["buyer_id_count"] for r in counts if r["shop_id"] == s) for s in mix}
    for r in counts:
        configured, realized = mix[r["shop_id"]][r["type"]]
        assert realized == pytest.approx(r["buyer_id_count"] / n_shop[r["shop_id"]])
        # multinomial noise: 4 standard errors, shops have a few hundred buyers at least
        assert abs(realized - configured) < 4 * np.sqrt(configured * (1 - configured) / n_shop[r["shop_id"]]) + 0.01
    names = sorted(next(iter(mix.values())))
    vecs = [np.array([m[t][0] for t in names]) for m in mix.values()]
    assert max(np.abs(vecs[i] - vecs[j]).max() for i in range(3) for j in range(i + 1, 3)) > 0.05
    assert buyers.num_rows == 3000 and len(set(buyers.column("buyer_id").to_pylist())) == 3000


def test_every_event_type_and_every_stratum(events):
    et = events["event_type"]
    assert set(et) == set(EVENT_TYPES)
    key = np.char.add(events["shop_id"].astype(str), events["buyer_id"].astype(str))
    strata = {}
    for name, letter in (("purchase", "A"), ("checkout_start", "B"), ("add_to_cart", "C"), ("product_view", "D")):
        for k in np.unique(key[et == name]):
            strata.setdefault(k, letter)
    counts = {s: list(strata.values()).count(s) for s in "ABCD"}
    counts["E"] = len(np.unique(key)) - len(strata)
    share = {s: n / len(np.unique(key)) for s, n in counts.items()}
    assert all(0.03 < v < 0.6 for v in share.values()), share


def test_sessions_are_plausible(events):
    e = events
    n = len(e["ts"])
    sess = np.char.add(e["buyer_id"].astype(str), np.char.add("|", e["session_id"].astype(str)))
    new = np.ones(n, dtype=bool)
    new[1:] = sess[1:] != sess[:-1]
    sid = np.cumsum(new) - 1
    # sessions are contiguous in the file; each begins with the landing page view
    assert len(np.unique(sess)) == sid[-1] + 1
    assert (e["event_type"][new] == "page_view").all()
    # timestamps increase within a session; gaps below the 30-minute rule
    gap = np.diff(e["ts"])
    within = ~new[1:]
    assert (gap[within] > 0).all() and (gap[within] < 30 * 60 * 1_000_000).all()
    # sessions of one buyer: later sessions start at least 30 minutes after the previous one ends
    same_buyer = e["buyer_id"][1:] == e["buyer_id"][:-1]
    assert (gap[new[1:] & same_buyer] >= 30 * 60 * 1_000_000).all()
    # purchase only after a checkout_start in the same session, checkout only with a cart
    et = e["event_type"]
    first_idx = np.full(sid[-1] + 1, n)
    for name in ("add_to_cart", "checkout_start", "purchase"):
        pos = np.flatnonzero(et == name)
        f = np.full(sid[-1] + 1, n)
        np.minimum.at(f, sid[pos], pos)
        if name == "checkout_start":
            assert (f[f < n] > first_idx[f < n]).all()  # an add_to_cart came first
        if name == "purchase":
            assert (f[f < n] > first_idx[f < n]).all()  # a checkout_start came first
        first_idx = f
    # product events name a product with a positive price; quantities only where they belong
    prod = np.isin(et, ["product_view", "add_to_cart", "remove_from_cart", "purchase"])
    assert all(p is not None for p in e["product_id"][prod]) and all(p is None for p in e["product_id"][~prod])
    price = e["price"].astype(float)
    assert (price[prod] > 0).all() and np.isnan(price[~prod]).all()
    qty = e["quantity"].astype(float)
    has_q = np.isin(et, ["add_to_cart", "remove_from_cart", "purchase"])
    assert (qty[has_q] >= 1).all() and np.isnan(qty[~has_q]).all()
    assert all(c is not None for c in e["collection_id"][et == "collection_view"])
    assert all(q for q in e["query"][et == "search"])


def test_files_match_canonical_schema(pq_run, tmp_path):
    assert pq.read_schema(pq_run / "events.parquet").equals(EVENT_SCHEMA)
    cat = pq.read_table(pq_run / "catalog.parquet")
    assert cat.schema.equals(CATALOG_SCHEMA)
    assert (np.array(cat.column("price").to_pylist()) > 0).all()
    keys = list(zip(cat.column("shop_id").to_pylist(), cat.column("product_id").to_pylist()))
    assert len(set(keys)) == len(keys)
    ev = pq.read_table(pq_run / "events.parquet", columns=["shop_id", "product_id"])
    used = set(zip(ev.column("shop_id").to_pylist(), ev.column("product_id").to_pylist()))
    assert {k for k in used if k[1] is not None} <= set(keys)
    types = json.loads((pq_run / "truth" / "types.json").read_text())
    assert len(types) == 8 and len({t["name"] for t in types}) == 8
    assert "SYNTHETIC" in (pq_run / "SYNTHETIC.txt").read_text()
    assert json.loads((pq_run / "meta.json").read_text())["stage"] == "simpersona.synth"
    # CSV: exact header, ISO-8601 UTC with milliseconds and Z, empty nulls, same rows as parquet
    run(SynthConfig(shops=3, buyers=3000, seed=7, chunk_buyers=400), tmp_path)
    lines = (tmp_path / "events.csv").read_text().splitlines()
    assert lines[0] == ",".join(EVENT_COLUMNS)
    assert re.fullmatch(r"shop_\d\d,b\d{6},b\d{6}-\d\d,\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z,page_view,,,,,", lines[1])
    opts = pacsv.ConvertOptions(column_types=EVENT_SCHEMA, strings_can_be_null=True)
    csv_t = pacsv.read_csv(tmp_path / "events.csv", convert_options=opts)
    pq_t = pq.read_table(pq_run / "events.parquet")
    assert csv_t.num_rows == pq_t.num_rows
    assert csv_t.column("ts").cast(pa.int64()).equals(pq_t.column("ts").cast(pa.int64()))
    assert csv_t.column("price").equals(pq_t.column("price")) and csv_t.column("query").equals(pq_t.column("query"))


def test_format_ts_matches_numpy():
    ms = np.array([0, 1_772_359_203_250, 1_772_445_599_999, 4_102_444_800_001], dtype=np.int64)
    want = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms", timezone="UTC").tolist()
    assert format_ts(ms).to_pylist() == want


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ConfigError, match="unknown"):
        load_config(SynthConfig, overrides=["shopz=3"])
    with pytest.raises(ConfigError):
        run(SynthConfig(shops=5, buyers=2), Path("/nonexistent/never-written"))


def test_cli_synth(tmp_path):
    out = tmp_path / "syn"
    r = subprocess.run(
        [sys.executable, "-m", "simpersona", "synth", "--preset", "tiny", "--shops", "2", "--buyers", "150",
         "--seed", "3", "--out", str(out), "--file-format", "csv", "--set", "days=7"],
        capture_output=True, text=True, check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "SYNTHETIC events" in r.stdout and "2 shops" in r.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["days"] == 7 and meta["config"]["buyers"] == 150
    assert all((out / f).exists() for f in FILES) and (out / "SYNTHETIC.txt").exists()
    bad = subprocess.run([sys.executable, "-m", "simpersona", "synth", "--set", "nope=1", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_events_fall_in_the_observation_window_and_buyers_span_days(events):
    t0 = np.datetime64("2026-03-01T00:00:00", "us").astype(np.int64)
    assert events["ts"].min() >= t0 and events["ts"].max() < t0 + 31 * 86_400_000_000  # a last session may run past midnight
    days = events["ts"] // 86_400_000_000
    per_buyer = {}
    for b, d in zip(events["buyer_id"], days):
        per_buyer.setdefault(b, set()).add(d)
    n_days = np.array([len(v) for v in per_buyer.values()])
    assert len(per_buyer) == 3000  # every buyer has at least its first session
    assert 0.15 < (n_days > 1).mean() < 0.9
