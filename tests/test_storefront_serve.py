"""`storefront serve` as an operator meets it: durable event log (SIGKILL), default log folder, clear errors."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from simpersona.cli import main
from simpersona.events.schema import CATALOG_SCHEMA
from simpersona.storefront.eventlog import EventLog

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def catalog_table() -> pa.Table:
    rows = [("s1", f"p{i}", f"Thing {i}", "home/things", "Acme", 1.0 + i, None) for i in range(20)]
    return pa.Table.from_pylist([dict(zip(CATALOG_SCHEMA.names, r)) for r in rows], schema=CATALOG_SCHEMA)


def log_rows(log: EventLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        if i % 10 == 0:
            log.session("s1", "b", f"s{i // 10}", T0, "", "A")
        log.event("s1", "b", f"s{i // 10}", T0 + dt.timedelta(seconds=i), "product_view", product_id=f"p{i}", price=1.5)


# -- the event log ---------------------------------------------------------------------------------
def test_parts_are_written_by_time_as_well_as_size(tmp_path):
    log = EventLog(tmp_path, flush_rows=1000, flush_interval_s=0.2)
    log_rows(log, 5)
    assert not (tmp_path / "events").exists() and (tmp_path / "journal").exists()  # journaled, not yet a part
    deadline = time.monotonic() + 10
    while not list((tmp_path / "events").glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pq.read_table(tmp_path / "events").num_rows == 5  # no flush() called: the interval wrote it
    assert not list((tmp_path / "journal").glob("*.jsonl"))  # its journal is gone with it
    big = EventLog(tmp_path / "big", flush_rows=7, flush_interval_s=60)
    log_rows(big, 15)
    assert pq.read_table(tmp_path / "big" / "events").num_rows == 14  # two full parts at once
    big.close()
    assert pq.read_table(tmp_path / "big" / "events").num_rows == 15


def test_a_killed_writer_loses_nothing_journaled(tmp_path):
    log = EventLog(tmp_path, flush_rows=4, flush_interval_s=60)
    log_rows(log, 10)  # two parts written, two rows only in the journal: then the process "dies"
    log._timer.cancel()  # (dead processes flush nothing)
    with open(next((tmp_path / "journal").glob("*.jsonl")), "ab") as f:
        f.write(b'["e", "s1", "b", "s9", "2025-01-0')  # a line cut short by the kill
    again = EventLog(tmp_path, flush_rows=4, flush_interval_s=60)
    assert (again.recovered, again.torn) == (2, 1)
    events = pq.read_table(tmp_path / "events").sort_by("ts")
    assert events.column("product_id").to_pylist() == [f"p{i}" for i in range(10)]
    assert events.column("price").to_pylist() == [1.5] * 10 and events.column("ts").to_pylist()[9] == T0 + dt.timedelta(seconds=9)
    assert pq.read_table(tmp_path / "sessions").num_rows == 1
    log_rows(again, 3, start=10)  # the restarted log appends after the recovered parts
    assert again.events().num_rows == 13 and len(list((tmp_path / "events").glob("part-*.parquet"))) == 4


def test_a_failed_part_write_keeps_the_journal(tmp_path):
    log = EventLog(tmp_path, flush_rows=1000, flush_interval_s=60)
    log_rows(log, 3)
    (tmp_path / "events").write_text("in the way")  # writing the part fails, as on a full disk
    with pytest.raises(OSError):
        log.close()
    (tmp_path / "events").unlink()
    again = EventLog(tmp_path, flush_rows=1000)
    assert again.recovered == 3 + 1 and again.events().num_rows == 3 and again.sessions().num_rows == 1


def test_in_memory_log_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = EventLog(None, flush_rows=3)
    log_rows(log, 7)
    assert log.events().num_rows == 7 and list(tmp_path.iterdir()) == []


# -- operator errors at serve ----------------------------------------------------------------------
@pytest.fixture(autouse=True)
def user_config(tmp_path, monkeypatch):
    """The cookie key file goes to a temporary user config folder, never the real one."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def bad_catalogs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    csv = tmp_path / "catalog.csv"
    csv.write_text("shop_id,product_id,title\ns1,p1,Hat\n")
    no_title = tmp_path / "no_title.parquet"
    pq.write_table(catalog_table().drop(["title"]), no_title)
    bad_price = tmp_path / "bad_price.parquet"
    pq.write_table(catalog_table().set_column(5, "price", pa.array(["cheap"] * 20)), bad_price)
    empty = tmp_path / "empty.parquet"
    pq.write_table(catalog_table().slice(0, 0), empty)
    renamed = tmp_path / "csv_named.parquet"
    renamed.write_text("shop_id,product_id,title\n")
    return {
        "missing": (tmp_path / "nope.parquet", "does not exist"),
        "csv": (csv, "is not a readable Parquet file (a CSV?"),
        "csv named .parquet": (renamed, "is not a readable Parquet file"),
        "no title column": (no_title, "lacks column(s) ['title']"),
        "text prices": (bad_price, "column price holds string"),
        "no rows": (empty, "holds no products"),
    }


def test_bad_catalog_is_one_clear_line_and_exit_2(tmp_path):
    for case, (path, problem) in bad_catalogs(tmp_path).items():
        r = CliRunner().invoke(main, ["storefront", "serve", "--catalog", str(path), "--events-out", str(tmp_path / "ev")])
        assert r.exit_code == 2, (case, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and problem in lines[0], (case, r.output)
        assert "Traceback" not in r.output


def test_non_finite_or_negative_prices_show_as_price_on_request():
    from fastapi.testclient import TestClient

    from simpersona.storefront.app import create_app
    from simpersona.storefront.catalog import load_catalog
    from simpersona.storefront.config import StorefrontConfig

    prices = [float("inf"), float("-inf"), float("nan"), -1.0, 2.5]
    table = catalog_table().slice(0, 5).set_column(5, "price", pa.array(prices))
    assert [p.price for p in load_catalog(table)["s1"].products.values()] == [None, None, None, None, 2.5]
    page = TestClient(create_app(StorefrontConfig(), table)).get("/s/s1/products/p0").text
    assert "price on request" in page and "inf" not in page


def test_unwritable_events_folder_is_one_clear_line(tmp_path):
    cat = tmp_path / "catalog.parquet"
    pq.write_table(catalog_table(), cat)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = CliRunner().invoke(main, ["storefront", "serve", "--catalog", str(cat), "--events-out", str(a_file)])
    assert r.exit_code == 2 and str(a_file) in r.output and "cannot write" in r.output and len(r.output.strip().splitlines()) == 1


# -- a real server, killed ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigkill_keeps_acknowledged_events_in_the_default_folder(tmp_path):
    """A real `simpersona storefront serve` without --events-out, under load, killed with SIGKILL:
    every acknowledged event is on disk (the issue asks for >= 99%)."""
    cat = tmp_path / "catalog.parquet"
    pq.write_table(catalog_table(), cat)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    proc = subprocess.Popen([sys.executable, "-m", "simpersona", "storefront", "serve", "--catalog", str(cat), "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(base + "/", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        acked, lock, stop = [0], threading.Lock(), threading.Event()

        def buyer(w: int) -> None:
            with httpx.Client(base_url=base, timeout=5) as c:  # keeps its cookies: one visitor
                i = 0
                while not stop.is_set():
                    url = ("/s/s1/", f"/s/s1/products/p{i % 20}", "/s/s1/search?q=thing", "/s/s1/collections/home")[i % 4]
                    try:
                        r = c.get(url)
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 200:
                        with lock:
                            acked[0] += 1  # each of these pages logs exactly one event
                    i += 1

        threads = [threading.Thread(target=buyer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.5)
        proc.send_signal(signal.SIGKILL)  # mid-load, no grace
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = proc.stdout.read()
    folder = tmp_path / "storefront-events"
    assert f"events → {folder.resolve()}" in out, out  # the default folder, announced at start
    assert f"cookies signed with the key in {tmp_path / 'config' / 'simpersona' / 'storefront.key'}" in out
    found = EventLog(folder, flush_rows=50_000).events()  # recovers what the journal holds
    assert acked[0] > 50
    assert found.num_rows >= 0.99 * acked[0], (found.num_rows, acked[0])
    assert found.num_rows <= acked[0] + 4  # at most the requests in flight at the kill
    assert pq.read_table(folder / "events").num_rows == found.num_rows  # plain Parquet readers see them all now
