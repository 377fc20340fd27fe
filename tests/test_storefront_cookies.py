"""Signed visitor cookies: nobody reads another visitor's cart or orders, nobody picks their own variant."""

from __future__ import annotations

import os
import stat

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from simpersona.events.schema import CATALOG_SCHEMA
from simpersona.storefront import cookies as C
from simpersona.storefront.app import create_app
from simpersona.storefront.config import EnvConfig, StorefrontConfig, StorefrontError, VariantConfig
from simpersona.storefront.env import ShopEnv
from simpersona.storefront.transports import AsgiTransport, HttpTransport

FORM = {"email": "a@b.co", "name": "Ann", "address": "Main 1", "city": "Oslo", "postal_code": "0150", "country": "US"}


def catalog() -> pa.Table:
    rows = [("s1", "p1", "Blue denim skirt", "apparel/skirts", "Acme", 19.99, None),
            ("s1", "p3", "Red wool hat", "accessories/hats", "Acme", 12.5, None)]
    return pa.Table.from_pylist([dict(zip(CATALOG_SCHEMA.names, r)) for r in rows], schema=CATALOG_SCHEMA)


def shopped(app) -> TestClient:
    """A visitor with one order placed and a product left in the cart."""
    victim = TestClient(app, follow_redirects=True)
    victim.post("/s/s1/cart/add", data={"product_id": "p1"})
    assert victim.post("/s/s1/checkout", data=FORM).url.path == "/s/s1/orders/1"
    victim.post("/s/s1/cart/add", data={"product_id": "p3"})
    assert "Red wool hat" in victim.get("/s/s1/cart").text
    return victim


def test_replayed_ids_with_forged_tags_see_nothing():
    app = create_app(StorefrontConfig(), catalog())
    victim = shopped(app)
    # The victim's raw ids are in the event log; an attacker replays them with forged tags.
    row = app.state.store.log.events().to_pylist()[0]
    buyer, session = row["buyer_id"], row["session_id"]
    own = TestClient(app).get("/s/s1/").cookies  # the attacker's own validly signed cookies
    other_key = os.urandom(32)
    forgeries = [
        {"sp_buyer": buyer, "sp_session": session},  # unsigned
        {"sp_buyer": f"{buyer}.AAAAAAAAAAAAAAAAAAAAAA", "sp_session": f"{session}.AAAAAAAAAAAAAAAAAAAAAA"},
        {"sp_buyer": buyer + "." + own["sp_buyer"].split(".")[1], "sp_session": session + "." + own["sp_session"].split(".")[1]},
        C.visitor_cookies(other_key, buyer, session),  # signed, with the wrong key
        {"sp_buyer": C.sign(app.state.store.cookie_key, "sp_session", buyer),  # a tag made for the other cookie
         "sp_session": C.sign(app.state.store.cookie_key, "sp_buyer", session)},
    ]
    for cookies in forgeries:
        attacker = TestClient(app, follow_redirects=True)
        attacker.cookies.update(cookies)
        cart = attacker.get("/s/s1/cart")
        assert cart.status_code == 200 and "Red wool hat" not in cart.text and "Cart (0)" in cart.text, cookies
        assert attacker.get("/s/s1/orders/1").status_code == 404, cookies
        issued = {k: C.verify(app.state.store.cookie_key, k, v) for k, v in cart.cookies.items()}
        assert issued.keys() == {"sp_buyer", "sp_session"} and buyer not in issued.values()  # fresh ids
    # The victim's own signed cookies still work.
    assert "Red wool hat" in victim.get("/s/s1/cart").text and victim.get("/s/s1/orders/1").status_code == 200


def test_the_variant_is_the_servers():
    app = create_app(StorefrontConfig(variant=VariantConfig(name="ship", free_shipping_banner=True)), catalog())
    store = app.state.store
    sessions = [f"s{i}" for i in range(40)]
    for sid in sessions:
        served = store.variant_of(sid)
        flipped = "A" if served == "B" else "B"
        for forged in (flipped, C.sign(store.cookie_key, "sp_variant", flipped),  # unsigned; signed for no session
                       C.sign(store.cookie_key, "sp_variant", flipped, "another-session"),
                       C.sign(os.urandom(32), "sp_variant", flipped, sid)):
            c = TestClient(app)
            c.cookies.update({**C.visitor_cookies(store.cookie_key, "b", sid), "sp_variant": forged})
            assert ("Free shipping" in c.get("/s/s1/").text) == (served == "B"), (sid, forged)
            store.sessions.clear()  # the next request starts the session afresh
    assert {store.variant_of(s) for s in sessions} == {"A", "B"}
    # A key holder (the agent environment) chooses.
    env = ShopEnv(AsgiTransport(app), EnvConfig())
    assert "Free shipping" in env.reset(seed=0, options={"shop": "s1", "variant": "B", "session_id": "s0"})[0]["page"]
    assert "Free shipping" not in env.reset(seed=0, options={"shop": "s1", "variant": "A", "session_id": "s1"})[0]["page"]


def test_verify_takes_any_string():
    key = os.urandom(32)
    for junk in ("", ".", "..", "a.b.c", "é.ü", "\x00.\x00", "\ud800.x", "x" * 10_000 + ".y", None):
        assert C.verify(key, "sp_buyer", junk) is None
    assert C.verify(key, "sp_buyer", C.sign(key, "sp_buyer", "a.b:c_d-e")) == "a.b:c_d-e"


def test_key_file_created_private_reused_and_checked(tmp_path):
    path = tmp_path / "cfg" / "simpersona" / "storefront.key"
    key, created = C.load_or_create_key(path)
    assert created and len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert C.load_or_create_key(path) == (key, False)
    # Same key file, a restarted server: the visitor is still the same buyer with the same cart.
    cfg = StorefrontConfig(cookie_key_file=path)
    first = TestClient(create_app(cfg, catalog()))
    first.get("/s/s1/")
    again = TestClient(create_app(cfg, catalog()))
    again.cookies.update(first.cookies)
    r = again.get("/s/s1/")
    assert "sp_buyer" not in r.cookies and "sp_session" not in r.cookies  # accepted as they were
    for text, problem in (("zz", "must hold hex digits"), ("abcd", "holds 2 bytes")):
        bad = tmp_path / f"bad-{text}.key"
        bad.write_text(text)
        with pytest.raises(StorefrontError, match=f"{bad}.*{problem}|{problem}") as e:
            C.load_or_create_key(bad)
        assert str(bad) in str(e.value)


def test_default_key_file_is_user_level(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert C.default_key_file() == tmp_path / "simpersona" / "storefront.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert C.default_key_file() == C.Path.home() / ".config" / "simpersona" / "storefront.key"


def test_an_env_without_the_key_refuses_clearly():
    env = ShopEnv(HttpTransport("http://127.0.0.1:9"))
    with pytest.raises(ValueError, match="no cookie key"):
        env.reset(seed=0, options={"shop": "s1"})
    env.close()
