"""The fast simulation path (issue 15 item 4) logs what the path it replaced logs.

Fast path: the direct ASGI transport, the lean route handler, the rendered-page and snapshot
caches, the episodes split over worker processes. Reference path, rebuilt here as it was: httpx's
ASGITransport as the client, FastAPI's own request handling (dependency injection), every page
rendered and every snapshot parsed, one process. The same seed on both must give the same
storefront events (every field but the wall-clock `ts`, the same rows in the same order after the
project's total event order), the same sessions sidecar and the same episode records.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import duckdb
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simpersona.agents.policy import EVENT_ORDER_SQL
from simpersona.events.schema import CATALOG_SCHEMA
from simpersona.storefront.config import StorefrontConfig, VariantConfig
from simpersona.storefront.eventlog import read_parts
from simpersona.storefront.transports import _HttpxTransport


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from simpersona.testing.world import make_toy_world

    return make_toy_world(tmp_path_factory.mktemp("toy"), shops=2, codes=4, buyers=100)


class ReferenceTransport(_HttpxTransport):
    """The in-process transport as it was: httpx's ASGITransport on a private event loop."""

    def __init__(self, app, base_url: str = "http://storefront.local"):
        self.app = app
        self.cookie_key = app.state.store.cookie_key
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url=base_url, follow_redirects=True
        )

    def _send(self, method, url, body):
        return self._loop.run_until_complete(self._client.request(method, url, content=body, headers=self._headers(body)))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()


def catalog() -> pa.Table:
    rows = [("s1", "p1", "Blue denim skirt", "apparel/women/skirts", "Acme", 19.99, "A short skirt."),
            ("s1", "p2", "<b>Red</b> wool hat", "accessories/hats", None, 12.5, None),
            *[("s1", f"t{i:02d}", f"Plain tee {i}", "apparel/men/tees", "Basic", 10.0 + i, None) for i in range(25)]]
    return pa.Table.from_pylist([dict(zip(CATALOG_SCHEMA.names, r)) for r in rows], schema=CATALOG_SCHEMA)


@pytest.fixture(autouse=True)
def ticking_clock(monkeypatch):
    """Each app stamps its events 1 ms apart, strictly increasing (the wall clock may repeat a
    microsecond, and the total event order then sorts same-time events by content)."""
    from simpersona.storefront import app

    make = app.create_app

    def create_app(config, catalog, clock=None):
        t = [dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)]

        def tick():
            t[0] += dt.timedelta(milliseconds=1)
            return t[0]

        return make(config, catalog, clock or tick)

    monkeypatch.setattr(app, "create_app", create_app)


def reference_path(monkeypatch) -> None:
    """Swap every part of the fast path for what it replaced (undone by monkeypatch)."""
    from fastapi.routing import APIRoute

    from simpersona.storefront import app, env, snapshot, transports

    monkeypatch.setattr(transports, "AsgiTransport", ReferenceTransport)
    monkeypatch.setattr(app._LeanRoute, "get_route_handler", APIRoute.get_route_handler)
    monkeypatch.setattr(app, "PAGE_CACHE", 0)
    monkeypatch.setattr(env, "parse_cached", snapshot.parse)


def simulate(world, out, workers: int):
    from simpersona.simulate import stage

    sf = StorefrontConfig(variant=VariantConfig(name="exp", free_shipping_banner=True, home_order="price_asc"))
    cfg = stage.SimulateConfig(ingest=world["ingest"], personas=world["personas"], buyers=40, concurrency=8,
                               workers=workers, seed=3, storefront=sf)
    summary = stage.run(cfg, out, echo=lambda line: None)
    folders = [out / "storefront"] if workers == 1 else [out / "storefront" / f"worker-{k}" for k in range(workers)]
    sessions = pa.concat_tables([read_parts(f, "sessions") for f in folders])
    return summary, pq.read_table(out / "events.parquet"), sessions, pq.read_table(out / "episodes.parquet")


def total_order(events: pa.Table) -> list[dict]:
    """Rows in the project's total event order (per session: `EVENT_ORDER_SQL`), without `ts`."""
    rows = duckdb.sql(f"SELECT * FROM events ORDER BY shop_id, buyer_id, session_id, {EVENT_ORDER_SQL}").to_arrow_table()
    return rows.drop_columns(["ts"]).to_pylist()


def test_fast_path_logs_the_same_events_as_the_reference_path(world, tmp_path, monkeypatch):
    fast = simulate(world, tmp_path / "fast", workers=2)
    with monkeypatch.context() as m:
        reference_path(m)
        ref = simulate(world, tmp_path / "ref", workers=1)
    (s_fast, ev_fast, se_fast, ep_fast), (s_ref, ev_ref, se_ref, ep_ref) = fast, ref
    assert s_fast["episodes"] == s_ref["episodes"] == 80 and s_fast["outcomes"] == s_ref["outcomes"]
    types = set(ev_ref.column("event_type").to_pylist())
    assert {"page_view", "product_view", "add_to_cart", "checkout_start", "purchase"} <= types  # the policy went everywhere
    assert ev_fast.num_rows == ev_ref.num_rows > 200
    # the written log: the same rows in the same order (by session, each in logged order), ts aside
    assert ev_fast.drop_columns(["ts"]).equals(ev_ref.drop_columns(["ts"]))
    assert total_order(ev_fast) == total_order(ev_ref) == ev_ref.drop_columns(["ts"]).to_pylist()
    key = [(c, "ascending") for c in ("shop_id", "buyer_id", "session_id")]
    assert se_fast.sort_by(key).drop_columns(["first_ts"]).equals(se_ref.sort_by(key).drop_columns(["first_ts"]))
    assert set(se_ref.column("variant").to_pylist()) == {"A", "B"}
    assert ep_fast.drop_columns(["wall_s"]).equals(ep_ref.drop_columns(["wall_s"]))


def test_worker_count_changes_nothing(world, tmp_path):
    runs = [simulate(world, tmp_path / f"w{w}", workers=w) for w in (1, 3)]
    (_, ev1, _, ep1), (_, ev3, _, ep3) = runs
    assert ev1.drop_columns(["ts"]).equals(ev3.drop_columns(["ts"]))
    assert ep1.drop_columns(["wall_s"]).equals(ep3.drop_columns(["wall_s"]))


def test_a_failing_worker_fails_the_run_with_its_traceback():
    from simpersona.simulate.runner import EpisodeSpec, run_in_workers

    specs = [EpisodeSpec("s", f"b{i}", f"s{i}", 0, "A", "buy", "", i) for i in range(4)]

    def shard(part, k):
        if k == 1:
            raise ValueError("boom in worker one")
        return [{"buyer_id": s.buyer_id} for s in part]

    with pytest.raises(RuntimeError, match="(?s)worker 1/2.*boom in worker one"):
        run_in_workers(specs, 2, shard)
    assert [r["buyer_id"] for r in run_in_workers(specs, 2, lambda part, k: [{"buyer_id": s.buyer_id} for s in part])] == \
        ["b0", "b1", "b2", "b3"]


def test_page_cache_serves_what_rendering_serves(monkeypatch):
    """Page by page, an app keeping rendered pages answers what an app rendering every page does;
    values that differ only in type (True vs 1) never share a page."""
    from fastapi.testclient import TestClient

    from simpersona.storefront import app as app_module

    assert app_module._frozen({"a": True}) != app_module._frozen({"a": 1})
    assert app_module._frozen([1.0]) != app_module._frozen([1])
    requests = [("GET", "/s/s1/", None), ("GET", "/s/s1/products/p1", None), ("GET", "/s/s1/", None),
                ("POST", "/s/s1/cart/add", {"product_id": "p1", "quantity": "2"}), ("GET", "/s/s1/", None),
                ("GET", "/s/s1/collections/apparel?page=2", None), ("GET", "/s/s1/collections/apparel?page=2", None),
                ("GET", "/s/s1/checkout", None), ("POST", "/s/s1/checkout", {"email": "x"}),
                ("POST", "/s/s1/checkout", {"email": "a@b.co", "name": "A", "address": "B", "city": "C",
                                            "postal_code": "123", "country": "US"}), ("GET", "/s/s1/cart", None)]

    def pages(cache: int) -> list[tuple[int, str]]:
        monkeypatch.setattr(app_module, "PAGE_CACHE", cache)
        c = TestClient(app_module.create_app(StorefrontConfig(), catalog()), follow_redirects=True)
        out = [(r.status_code, r.text) for r in
               (c.get(url) if method == "GET" else c.post(url, data=data) for method, url, data in requests)]
        assert bool(c.app.state.store.pages) == bool(cache)
        return out

    cached, fresh = pages(2048), pages(0)
    assert cached == fresh
    assert cached[0] == cached[2] and "Cart (2)" in cached[4][1] and cached[9][0] == 200


def test_direct_asgi_transport_cookies_and_redirects():
    """The client side of AsgiTransport: a fresh visitor is issued cookies and keeps them, a POST
    answered 303 becomes a GET of the cart, and an app error is a 500 page."""
    from simpersona.storefront.app import create_app
    from simpersona.storefront.transports import AsgiTransport

    app = create_app(StorefrontConfig(), catalog())
    t = AsgiTransport(app)
    t.start({})
    home = t.get("/s/s1/")
    assert home.status == 200 and {"sp_buyer", "sp_session"} <= set(t.cookies)
    ids = dict(t.cookies)
    cart = t._page("POST", "/s/s1/cart/add", "product_id=p1&quantity=3")
    assert cart.status == 200 and cart.url == "/s/s1/cart" and "Cart (3)" in cart.html and t.cookies == ids
    assert t.get("/s/s1/products/p%31").url == "/s/s1/products/p1"
    assert t.get("/s/s1/search?q=blue+skirt").url == "/s/s1/search?q=blue+skirt"

    async def broken(scope, receive, send):
        raise RuntimeError("app bug")

    bad = AsgiTransport(app)
    bad.app = broken
    assert bad.get("/").status == 500
    t.close()
    bad.close()
    events = [r["event_type"] for r in app.state.store.log.events().to_pylist()]
    assert events == ["page_view", "add_to_cart", "page_view", "product_view", "search"]


def test_snapshot_cache_is_shared_and_read_only(monkeypatch):
    from simpersona.storefront.snapshot import parse, parse_cached

    html = '<title>T</title><a href="/x" data-sp-id="a">A</a><form data-sp-id="f"><input name="q" data-sp-id="q"></form>'
    s1, s2 = parse_cached(html, "/u"), parse_cached(html, "/u")
    assert s1 is s2 and dataclasses.asdict(s1) == dataclasses.asdict(parse(html, "/u"))
    plain = s1.render(100)
    assert s1.render(100) is plain and "= 'typed'" in s1.render(100, values={"q": "typed"}) and s1.render(100) == plain


def test_remembered_cookies_still_refuse_forgeries():
    """A valid visitor cookie is checked once and remembered; a forged tag, another cookie's name
    or another key's cookie is still refused."""
    from simpersona.storefront.app import create_app
    from simpersona.storefront.cookies import BUYER, SESSION, new_key, sign

    store = create_app(StorefrontConfig(max_sessions=2), catalog()).state.store
    good = sign(store.cookie_key, BUYER, "b1")
    assert store.cookie_id(BUYER, good) == "b1" == store.cookie_id(BUYER, good) and (BUYER, good) in store.verified
    forged = good[:-1] + ("B" if good[-1] == "A" else "A")
    assert store.cookie_id(BUYER, forged) is None and store.cookie_id(SESSION, good) is None
    assert store.cookie_id(BUYER, sign(new_key(), BUYER, "b1")) is None and store.cookie_id(BUYER, None) is None
    for i in range(10):  # bounded: at most 2 × max_sessions remembered
        store.cookie_id(BUYER, sign(store.cookie_key, BUYER, f"b{i}"))
    assert len(store.verified) <= 4
