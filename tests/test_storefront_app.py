"""The web shop page by page (FastAPI TestClient): pages, event log, variants, bounds, XSS."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from simpersona.cli import main
from simpersona.events.schema import CATALOG_SCHEMA, EVENT_SCHEMA
from simpersona.storefront.app import create_app
from simpersona.storefront.config import StorefrontConfig, VariantConfig
from simpersona.storefront.cookies import visitor_cookies
from simpersona.storefront.eventlog import SESSION_SCHEMA

XSS = "<script>alert(1)</script>"


def catalog() -> pa.Table:
    rows = [
        ("s1", "p1", "Blue denim skirt", "apparel/women/skirts", "Acme", 19.99, "A short skirt."),
        ("s1", "p2", XSS, "apparel/women/tops", XSS, 5.0, XSS),
        ("s1", "p3", "Red wool hat", "accessories/hats", "Acme", 12.5, None),
        *[("s1", f"t{i:02d}", f"Plain tee {i}", "apparel/men/tees", "Basic", 10.0 + i, None) for i in range(25)],
        ("s2", "q1", "Mug", "home/kitchen", None, None, None),
    ]
    return pa.Table.from_pylist([dict(zip(CATALOG_SCHEMA.names, r)) for r in rows], schema=CATALOG_SCHEMA)


class Clock:
    """Deterministic event timestamps: one second per call."""

    def __init__(self):
        self.t = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)

    def __call__(self):
        self.t += dt.timedelta(seconds=1)
        return self.t


def client(**cfg) -> TestClient:
    return TestClient(create_app(StorefrontConfig(**cfg), catalog(), clock=Clock()), follow_redirects=True)


def events(c: TestClient) -> list[tuple]:
    t = c.app.state.store.log.events()
    return [(r["event_type"], r["product_id"], r["collection_id"], r["query"], r["price"], r["quantity"]) for r in t.to_pylist()]


def test_pages_home_collection_search_product():
    c = client()
    r = c.get("/")
    assert r.status_code == 200 and "/s/s1/" in r.text and "/s/s2/" in r.text
    home = c.get("/s/s1/")
    assert home.status_code == 200 and "Blue denim skirt" in home.text and 'data-sp-id="collection-apparel/men/tees"' in home.text
    assert "sp_buyer" in home.cookies and "sp_session" in home.cookies
    coll = c.get("/s/s1/collections/apparel/men/tees")
    assert "Page 1 of 3" in coll.text and 'data-sp-id="page-next"' in coll.text and "page-prev" not in coll.text
    assert "Page 3 of 3" in c.get("/s/s1/collections/apparel/men/tees?page=3").text
    parent = c.get("/s/s1/collections/apparel")  # a prefix lists everything under it
    assert parent.status_code == 200 and 'data-sp-id="collection-apparel/women"' in parent.text and "Blue denim skirt" in parent.text
    assert c.get("/s/s1/collections/apparel/men/tees?page=9").status_code == 404
    assert c.get("/s/s1/collections/apparel/men/tees?page=abc").status_code == 400
    assert c.get("/s/s1/collections/nope").status_code == 404
    s = c.get("/s/s1/search", params={"q": "acme skirt"}).text
    assert s.index("Blue denim skirt") < s.index("Red wool hat")  # ranked: title+brand beats brand only
    assert "No products found" in c.get("/s/s1/search", params={"q": "zebra"}).text
    assert "Type what you are looking for" in c.get("/s/s1/search").text
    p = c.get("/s/s1/products/p1").text
    assert all(x in p for x in ("Blue denim skirt", "$19.99", "Brand: Acme", "apparel/women/skirts", 'name="quantity"'))
    s2 = c.get("/s/s2/products/q1")
    assert s2.status_code == 200 and "price on request" in s2.text
    assert c.get("/s/s1/products/q1").status_code == 404  # other shop's product
    assert c.get("/s/zzz/").status_code == 404


def test_cart_checkout_and_order():
    c = client()
    c.post("/s/s1/cart/add", data={"product_id": "p1", "quantity": "2"})
    c.post("/s/s1/cart/add", data={"product_id": "p3"})
    cart = c.get("/s/s1/cart").text
    assert "$19.99 × 2" in cart and "Subtotal: $52.48" in cart and "Cart (3)" in cart
    c.post("/s/s1/cart/update", data={"product_id": "p1", "quantity": "1"})
    r = c.post("/s/s1/cart/remove", data={"product_id": "p3"})
    assert "Red wool hat" not in r.text and "Cart (1)" in r.text
    bad = c.post("/s/s1/checkout", data={"email": "nope", "name": "", "country": "XX"})
    assert bad.status_code == 422 and "E-mail: enter an e-mail address" in bad.text and "Country: choose a country" in bad.text
    form = {"email": "a@b.co", "name": "Ann", "address": "Main 1", "city": "Oslo", "postal_code": "0150", "country": "US"}
    done = c.post("/s/s1/checkout", data=form)
    assert done.status_code == 200 and done.url.path == "/s/s1/orders/1" and "Order 1 is confirmed" in done.text
    assert "Total $24.94" in done.text and "Cart (0)" in done.text
    assert "cart is empty" in c.get("/s/s1/checkout").text
    assert c.post("/s/s1/checkout", data=form).status_code == 400
    assert TestClient(c.app).get("/s/s1/orders/1").status_code == 404  # another visitor cannot see order 1


def test_scripted_session_event_log(tmp_path):
    c = TestClient(create_app(StorefrontConfig(events_out=tmp_path), catalog(), clock=Clock()))
    c.cookies.update(visitor_cookies(c.app.state.store.cookie_key, "buyer-1", "sess-1"))
    c.get("/s/s1/")
    c.get("/s/s1/collections/apparel/women/skirts")
    c.get("/s/s1/search", params={"q": "  Blue   skirt "})
    c.get("/s/s1/products/p1")
    c.post("/s/s1/cart/add", data={"product_id": "p1", "quantity": "3"})  # → cart page
    c.post("/s/s1/cart/update", data={"product_id": "p1", "quantity": "2"})  # → cart page
    c.get("/s/s1/products/p3")
    c.post("/s/s1/cart/add", data={"product_id": "p3"})
    c.post("/s/s1/cart/remove", data={"product_id": "p3"})
    c.get("/s/s1/checkout")
    c.post("/s/s1/checkout", data={"email": "a@b.co", "name": "A", "address": "x", "city": "y", "postal_code": "12345", "country": "DE"})
    c.get("/s/s1/products/nope")  # a 404 logs nothing
    expected = [
        ("page_view", None, None, None, None, None),
        ("collection_view", None, "apparel/women/skirts", None, None, None),
        ("search", None, None, "Blue skirt", None, None),
        ("product_view", "p1", None, None, 19.99, None),
        ("add_to_cart", "p1", None, None, 19.99, 3),
        ("page_view", None, None, None, None, None),
        ("remove_from_cart", "p1", None, None, 19.99, 1),
        ("page_view", None, None, None, None, None),
        ("product_view", "p3", None, None, 12.5, None),
        ("add_to_cart", "p3", None, None, 12.5, 1),
        ("page_view", None, None, None, None, None),
        ("remove_from_cart", "p3", None, None, 12.5, 1),
        ("page_view", None, None, None, None, None),
        ("checkout_start", None, None, None, None, None),
        ("purchase", "p1", None, None, 19.99, 2),
        ("page_view", None, None, None, None, None),
    ]
    assert events(c) == expected
    c.app.state.store.log.flush()
    table = pq.read_table(tmp_path / "events")
    assert table.schema.equals(EVENT_SCHEMA, check_metadata=False) and table.num_rows == len(expected)
    assert set(table.column("buyer_id").to_pylist()) == {"buyer-1"} and set(table.column("session_id").to_pylist()) == {"sess-1"}
    ts = table.column("ts").to_pylist()
    assert ts == sorted(ts)
    sessions = pq.read_table(tmp_path / "sessions")
    assert sessions.schema.equals(SESSION_SCHEMA, check_metadata=False)
    assert sessions.select(["shop_id", "buyer_id", "session_id", "variant"]).to_pylist() == [
        {"shop_id": "s1", "buyer_id": "buyer-1", "session_id": "sess-1", "variant": "A"}
    ]


def test_lifespan_shutdown_flushes(tmp_path):
    app = create_app(StorefrontConfig(events_out=tmp_path), catalog())
    with TestClient(app) as c:
        c.get("/s/s1/")
        assert not (tmp_path / "events").exists()  # buffered
    assert pq.read_table(tmp_path / "events").num_rows == 1
    with TestClient(create_app(StorefrontConfig(events_out=tmp_path), catalog())) as c:  # a restart appends
        c.get("/s/s1/cart")
    assert pq.read_table(tmp_path / "events").column("event_type").to_pylist() == ["page_view", "page_view"]


def test_variants_served_per_session_and_logged():
    v = VariantConfig(name="exp1", free_shipping_banner=True, price_collection="apparel/women", price_factor=0.8,
                      home_order="price_desc", extra_checkout_step=True)
    app = create_app(StorefrontConfig(variant=v), catalog())
    a, b = TestClient(app), TestClient(app)
    a.cookies.update(visitor_cookies(app.state.store.cookie_key, "ba", "sa", "A"))  # a key holder (the env) picks
    b.cookies.update(visitor_cookies(app.state.store.cookie_key, "bb", "sb", "B"))
    ha, hb = a.get("/s/s1/").text, b.get("/s/s1/").text
    assert "Free shipping" not in ha and "Free shipping" in hb
    assert "Blue denim skirt" in ha and "Plain tee 24" not in ha  # A: catalog order
    assert hb.index("Plain tee 24") < hb.index("Plain tee 23") and "Blue denim skirt" not in hb  # B: dearest first
    assert "$19.99" in a.get("/s/s1/products/p1").text and "$15.99" in b.get("/s/s1/products/p1").text
    assert "$12.50" in b.get("/s/s1/products/p3").text  # other collections keep their price
    for c in (a, b):
        c.post("/s/s1/cart/add", data={"product_id": "p1"})
    assert 'data-sp-id="field-name"' in a.get("/s/s1/checkout").text
    step1 = b.get("/s/s1/checkout").text
    assert 'data-sp-id="field-email"' in step1 and 'data-sp-id="field-name"' not in step1
    step2 = b.post("/s/s1/checkout", data={"step": "contact", "email": "b@c.de"})
    assert step2.url.query == b"step=shipping" and 'data-sp-id="field-name"' in step2.text and "Shipping $0.00" in step2.text
    done = b.post("/s/s1/checkout", data={"step": "shipping", "name": "B", "address": "x", "city": "y", "postal_code": "123", "country": "FR"})
    assert "Order 1 is confirmed" in done.text
    purchase = [e for e in app.state.store.log.events().to_pylist() if e["event_type"] == "purchase"]
    assert [(e["product_id"], e["price"]) for e in purchase] == [("p1", 15.99)]
    assert sorted(app.state.store.log.sessions().column("variant").to_pylist()) == ["A", "B"]
    # Without the cookie, the session id's hash decides, about share_b of sessions.
    store = app.state.store
    share = sum(store.variant_of(f"s{i}") == "B" for i in range(2000)) / 2000
    assert 0.45 < share < 0.55 and store.variant_of("s1") == store.variant_of("s1")


def test_xss_title_renders_as_text():
    c = client()
    pages = [c.get(u).text for u in ("/s/s1/", "/s/s1/products/p2", "/s/s1/collections/apparel/women/tops")]
    pages.append(c.get("/s/s1/search", params={"q": XSS}).text)
    c.post("/s/s1/cart/add", data={"product_id": "p2"})
    pages += [c.get("/s/s1/cart").text, c.get("/s/s1/checkout").text]
    for html in pages:
        assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_bad_input_is_4xx_with_a_message():
    c = client(max_quantity=5, max_cart_lines=2, max_body_bytes=2000)
    for q in ("0", "6", "-1", "abc", "1e3", "9" * 40, " "):
        r = c.post("/s/s1/cart/add", data={"product_id": "p1", "quantity": q})
        assert r.status_code == 400 and "quantity" in r.text, q
    c.post("/s/s1/cart/add", data={"product_id": "p1", "quantity": "5"})
    assert "at most 5" in c.post("/s/s1/cart/add", data={"product_id": "p1"}).text
    c.post("/s/s1/cart/add", data={"product_id": "p3"})
    assert c.post("/s/s1/cart/add", data={"product_id": "t01"}).status_code == 400
    assert c.post("/s/s1/cart/add", data={"quantity": "1"}).status_code == 422  # product_id missing
    assert c.post("/s/s1/cart/remove", data={"product_id": "t02"}).status_code == 400  # not in cart
    assert c.get("/s/s1/search", params={"q": "x" * 201}).status_code == 400
    assert c.post("/s/s1/checkout", content=b"a=" + b"x" * 5000, headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 413
    chunked = c.post("/s/s1/checkout", content=iter([b"a=" + b"x" * 1500, b"x" * 1500]),
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert chunked.status_code == 413
    ok = c.post("/s/s1/cart/remove", content=iter([b"product_id=", b"p3"]), headers={"content-type": "application/x-www-form-urlencoded"})
    assert ok.status_code == 200 and "Red wool hat" not in ok.text  # a small chunked body is read as usual
    long = c.post("/s/s1/checkout", data={"email": "a@b.co", "name": "x" * 300})
    assert long.status_code == 422 and "at most 200 characters" in long.text
    for r in (c.get("/s/s1/orders/abc"), c.get("/s/s1/orders/0"), c.get("/nope")):
        assert 400 <= r.status_code < 500 and "<h1" in r.text


@pytest.mark.parametrize("path", [
    "/s/s1/../../etc/passwd", "/s/s1/collections/../../../etc/passwd", "/s/s1/collections/..%2F..%2Fetc%2Fpasswd",
    "/s/..%2F..%2Fetc/", "/s/s1/products/..%2F..%2Fpyproject.toml", "/templates/base.html", "/s/s1/%00",
])
def test_no_path_traversal(path):
    r = client().get(path)
    assert r.status_code in (400, 404) and "root:" not in r.text and "{% block" not in r.text


def test_bad_cookies_get_fresh_ids():
    c = client()
    c.cookies.set("sp_buyer", "x" * 100)
    c.cookies.set("sp_session", "bad!id")
    r = c.get("/s/s1/")
    assert r.status_code == 200 and len(r.cookies["sp_buyer"].split(".")[0]) == 16 and r.cookies["sp_session"] != "bad!id"


def test_serve_command_errors_cleanly(tmp_path):
    r = CliRunner().invoke(main, ["storefront", "serve", "--catalog", str(tmp_path / "missing.parquet")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(main, ["storefront", "serve", "--set", "nope=1"])
    assert r.exit_code == 2 and "unknown config key" in r.output


def test_a_catalog_file_is_built_once_per_content(tmp_path):
    """The same file gives the same shops (a behaviour stage's dozen simulations build them once);
    a file rewritten in place with other content is read again (the key is the content, not a time)."""
    from simpersona.storefront.catalog import load_catalog

    path = tmp_path / "catalog.parquet"
    pq.write_table(catalog(), path)
    first = load_catalog(path)
    assert load_catalog(path) is first and load_catalog(str(path)) is first
    assert [p.product_id for p in first["s1"].search("denim skirt")] == ["p1"]  # the lazily built index
    renamed = catalog().set_column(2, "title", pa.array(["Blue denim skort"] + catalog().column("title").to_pylist()[1:]))
    pq.write_table(renamed, path)
    again = load_catalog(path)
    assert again is not first and again["s1"].products["p1"].title == "Blue denim skort"
    assert load_catalog(catalog())["s1"] is not load_catalog(catalog())["s1"]  # a table is never cached
