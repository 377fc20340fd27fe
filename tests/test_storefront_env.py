"""The agent environment: actions, observations, budgets, and the three transports agreeing."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pyarrow as pa
import pytest

from simpersona.events.schema import CATALOG_SCHEMA
from simpersona.storefront import actions as A
from simpersona.storefront.app import create_app
from simpersona.storefront.config import EnvConfig, StorefrontConfig
from simpersona.storefront.env import ShopEnv
from simpersona.storefront.transports import CHROMIUM, AsgiTransport, HttpTransport

OPTS = {"shop": "s1", "persona_token": "<|persona_7|>", "goal": "Buy a skirt"}
# A purchase using every action type, with mistakes an agent makes on the way.
SCRIPT = [
    {"action": "search", "query": "skirt"},
    {"action": "click", "element_id": "product-p1"},
    {"action": "add_to_cart", "quantity": 2},
    {"action": "back"},
    {"action": "click", "element_id": "nav-home"},
    {"action": "click", "element_id": "product-p3"},
    {"action": "add_to_cart"},
    {"action": "remove_from_cart", "product_id": "p3"},
    {"action": "view_cart"},
    {"action": "checkout"},
    {"action": "fill", "element_id": "field-email", "value": "ann@example.com"},
    {"action": "submit"},  # name, address … missing: the form comes back with messages
    {"action": "fill", "element_id": "field-name", "value": "Ann"},
    {"action": "fill", "element_id": "field-address", "value": "Main 1"},
    {"action": "fill", "element_id": "field-city", "value": "Oslo"},
    {"action": "fill", "element_id": "field-postal_code", "value": "0150"},
    {"action": "fill", "element_id": "field-country", "value": "Germany"},
    {"action": "click", "element_id": "place-order"},
    {"action": "end_session", "goal_reached": True},
]
SCRIPT_EVENTS = [
    "page_view", "search", "product_view", "add_to_cart", "page_view", "product_view", "page_view", "product_view",
    "add_to_cart", "page_view", "remove_from_cart", "page_view", "page_view", "checkout_start", "purchase", "page_view",
]


def catalog() -> pa.Table:
    rows = [
        ("s1", "p1", "Blue denim skirt", "apparel/women/skirts", "Acme", 19.99, "A short skirt."),
        ("s1", "p2", "<script>alert(1)</script>", "apparel/women/tops", "Evil", 5.0, None),
        ("s1", "p3", "Red wool hat", "accessories/hats", "Acme", 12.5, None),
        *[("s1", f"t{i:02d}", f"Plain tee {i}", "apparel/men/tees", "Basic", 10.0 + i, None) for i in range(25)],
    ]
    return pa.Table.from_pylist([dict(zip(CATALOG_SCHEMA.names, r)) for r in rows], schema=CATALOG_SCHEMA)


def make_env(config: EnvConfig | None = None, **kw) -> ShopEnv:
    return ShopEnv(AsgiTransport(create_app(StorefrontConfig(), catalog())), config, **kw)


def run(env: ShopEnv, script, seed=0, options=OPTS):
    obs, info = env.reset(seed=seed, options=options)
    out = [(obs, 0.0, False, False, info)]
    for a in script:
        out.append(env.step(a))
    return out


def canonical_events(app) -> list[tuple]:
    return [(e["event_type"], e["product_id"], e["query"], e["price"], e["quantity"]) for e in app.state.store.log.events().to_pylist()]


def test_parse_action_every_type_and_errors():
    assert A.parse_action('{"action": "search", "query": "red hat", "reasoning": "look"}') == A.Search("red hat")
    assert A.parse_action("```json\n{\"action\": \"back\"}\n```") == A.Back()
    assert A.parse_action({"action": "add_to_cart"}) == A.AddToCart(1)
    assert A.parse_action({"action": "submit"}) == A.Submit(None)
    for a in SCRIPT:
        assert A.action_to_dict(A.parse_action(a)) == {"quantity": 1, **a} if a["action"] == "add_to_cart" and "quantity" not in a else a
    bad = ["", "not json", "[1]", '{"query": "x"}', '{"action": "fly"}', '{"action": "search"}',
           '{"action": "search", "query": ""}', '{"action": "search", "query": 3}', '{"action": "back", "x": 1}',
           '{"action": "add_to_cart", "quantity": 0}', '{"action": "add_to_cart", "quantity": true}',
           '{"action": "end_session", "goal_reached": "yes"}', '{"action": "search", "query": "' + "x" * 201 + '"}',
           "[" * 100000]
    for raw in bad:
        with pytest.raises(A.ActionError):
            A.parse_action(raw)
    schema = json.loads(json.dumps(A.ACTION_SCHEMA))
    assert [s["properties"]["action"]["const"] for s in schema["oneOf"]] == list(A.NAMES)


def test_scripted_purchase_uses_every_action_and_logs_events():
    env = make_env()
    steps = run(env, SCRIPT)
    errors = [info["error"] for *_, info in steps]
    assert errors == [None] * len(steps)
    assert steps[4][0]["url"] == "/s/s1/products/p1"  # back from the cart
    assert steps[9][0]["url"] == "/s/s1/cart" and "Blue denim skirt" in steps[9][0]["page"] and "Red wool hat" not in steps[9][0]["page"]
    assert steps[12][0]["status"] == 422 and "Full name: required" in steps[12][0]["page"]
    assert "[field-name] input Full name = 'Ann'" in steps[13][0]["page"]  # typed values show
    obs, reward, term, trunc, info = steps[-1]
    assert obs["url"] == "/s/s1/orders/1" and "Order 1 is confirmed" in obs["page"]
    assert (reward, term, trunc, info["outcome"], info["invalid_actions"]) == (1.0, True, False, "goal_reached", 0)
    assert obs["goal"] == "Buy a skirt" and obs["persona_token"] == "<|persona_7|>"
    app = env.transport.app
    assert [e[0] for e in canonical_events(app)] == SCRIPT_EVENTS
    assert ("purchase", "p1", None, 19.99, 2) in canonical_events(app)
    t = app.state.store.log.events()
    assert set(t.column("buyer_id").to_pylist()) == {info["buyer_id"]} and set(t.column("session_id").to_pylist()) == {info["session_id"]}


def test_invalid_actions_are_reported_counted_and_the_episode_goes_on():
    env = make_env()
    obs0, _ = env.reset(seed=1, options=OPTS)
    bad = ["{oops", {"action": "click", "element_id": "no-such-id"}, {"action": "add_to_cart"},
           {"action": "remove_from_cart", "product_id": "p1"}, {"action": "fill", "element_id": "nav-cart", "value": "x"},
           {"action": "click", "element_id": "search-q"}, {"action": "submit"}, {"action": "fill", "element_id": "search-q"}]
    for i, a in enumerate(bad, 1):
        obs, reward, term, trunc, info = env.step(a)
        assert info["error"] and obs["error"] == info["error"] and info["invalid_actions"] == i
        assert (reward, term, trunc) == (0.0, False, False) and obs["page"] == obs0["page"]
    assert "no element 'no-such-id' on this page" in env.step({"action": "click", "element_id": "no-such-id"})[4]["error"]
    env.step({"action": "checkout"})
    info = env.step({"action": "fill", "element_id": "field-country", "value": "Mars"})[4]  # empty cart: no form
    assert "no element" in info["error"]
    obs, *_ , info = env.step({"action": "search", "query": "hat"})
    assert info["error"] is None and "Red wool hat" in obs["page"]
    env.step({"action": "end_session", "goal_reached": False})
    obs, reward, term, trunc, info = env.step({"action": "back"})
    assert "call reset()" in info["error"] and term and info["outcome"] == "ended"


def test_determinism_same_seed_same_observations():
    a, b = make_env(), make_env()
    ra, rb = run(a, SCRIPT, seed=5), run(b, SCRIPT, seed=5)
    assert [x[0] for x in ra] == [x[0] for x in rb]
    assert [x[1:4] for x in ra] == [x[1:4] for x in rb]
    # Same env, same seed again (a fresh session on the same server) → the same observations too.
    assert [x[0] for x in run(a, SCRIPT, seed=5)] == [x[0] for x in ra]
    assert ra[0][4]["buyer_id"] == rb[0][4]["buyer_id"] and ra[0][4]["session_id"] != rb[0][4]["session_id"]


def test_variant_option_and_seeded_draw():
    from simpersona.storefront.config import VariantConfig

    app = create_app(StorefrontConfig(variant=VariantConfig(name="ship", free_shipping_banner=True)), catalog())
    env = ShopEnv(AsgiTransport(app))
    assert "Free shipping" in env.reset(seed=0, options={**OPTS, "variant": "B"})[0]["page"]
    assert "Free shipping" not in env.reset(seed=0, options={**OPTS, "variant": "A"})[0]["page"]
    drawn = {env.reset(seed=s, options=OPTS)[1]["variant"] for s in range(20)}
    assert drawn == {"A", "B"} and env.reset(seed=3, options=OPTS)[1]["variant"] == env.reset(seed=3, options=OPTS)[1]["variant"]
    with pytest.raises(ValueError):
        env.reset(seed=0, options={"shop": "s1", "colour": "red"})
    with pytest.raises(ValueError, match="no shop 'zz'"):
        env.reset(seed=0, options={"shop": "zz"})


def test_step_budget_and_time_limit():
    env = make_env(EnvConfig(max_steps=3))
    env.reset(seed=0, options=OPTS)
    assert env.step({"action": "view_cart"})[3] is False
    assert env.step("garbage")[3] is False  # invalid actions use steps too
    obs, reward, term, trunc, info = env.step({"action": "view_cart"})
    assert (term, trunc, info["outcome"], info["step"]) == (False, True, "steps_limit", 3)
    now = [0.0]
    env = make_env(EnvConfig(time_limit_s=10.0), clock=lambda: now[0])
    env.reset(seed=0, options=OPTS)
    now[0] = 5.0
    assert env.step({"action": "view_cart"})[3] is False
    now[0] = 10.5
    obs, reward, term, trunc, info = env.step({"action": "view_cart"})
    assert trunc and info["outcome"] == "time_limit"
    # 0: no wall-clock limit (the main job's presets: outcomes must not depend on the machine's load)
    env = make_env(EnvConfig(time_limit_s=0), clock=lambda: now[0])
    env.reset(seed=0, options=OPTS)
    now[0] = 1e9
    assert env.step({"action": "view_cart"})[3] is False


def test_transport_failure_is_a_crash_not_an_exception():
    env = make_env()
    env.reset(seed=0, options=OPTS)

    def boom(*a, **k):
        raise ConnectionError("server gone")

    env.transport.get = boom
    obs, reward, term, trunc, info = env.step({"action": "view_cart"})
    assert trunc and info["outcome"] == "crash" and "server gone" in info["error"]


def test_observation_token_budget():
    env = make_env(EnvConfig(obs_token_budget=60))
    obs, _ = env.reset(seed=0, options=OPTS)
    assert len(obs["page"]) <= 60 * 4 + 40 and "more lines not shown" in obs["page"] and obs["page"].startswith("URL: /s/s1/")
    full = make_env().reset(seed=0, options=OPTS)[0]["page"]
    assert "[product-p1] link: Blue denim skirt" in full and "more lines not shown" not in full
    assert "&lt;" not in full and "<script>alert(1)</script>" in full  # text, decoded once, never markup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server():
    """A storefront served by uvicorn on 127.0.0.1 in a thread; yields (base_url, app)."""
    import uvicorn

    app = create_app(StorefrontConfig(), catalog())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.config.port}", app
    server.should_exit = True
    thread.join(10)


def test_http_and_in_process_transports_agree(live_server):
    base_url, http_app = live_server
    local = make_env()
    remote = ShopEnv(HttpTransport(base_url, cookie_key=http_app.state.store.cookie_key))
    try:
        rl, rr = run(local, SCRIPT, seed=9), run(remote, SCRIPT, seed=9)
    finally:
        remote.close()
    assert [x[0] for x in rl] == [x[0] for x in rr]
    assert [x[1:4] for x in rl] == [x[1:4] for x in rr]
    assert canonical_events(local.transport.app) == canonical_events(http_app)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Chromium not installed at {CHROMIUM} (apt-get install chromium)")
def test_headless_chromium_purchase_matches_in_process(live_server):
    from simpersona.storefront.transports import BrowserTransport

    base_url, http_app = live_server
    browser = ShopEnv(BrowserTransport(base_url, cookie_key=http_app.state.store.cookie_key))
    try:
        rb = run(browser, SCRIPT, seed=9)
        page, dialogs = browser.transport._page, []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(base_url + "/s/s1/products/p2")  # the XSS title: shown as text, never run
        assert page.locator("h1").inner_text() == "<script>alert(1)</script>" and dialogs == []
    finally:
        browser.close()
    rl = run(make_env(), SCRIPT, seed=9)
    assert [x[4]["error"] for x in rb] == [None] * len(rb)
    assert rb[-1][0]["url"] == "/s/s1/orders/1" and rb[-1][4]["outcome"] == "goal_reached"
    assert [x[0] for x in rb] == [x[0] for x in rl]
    assert [e[0] for e in canonical_events(http_app)] == SCRIPT_EVENTS + ["product_view"]  # + the XSS page
