"""Hostile actions: any JSON value in any field is an invalid action with a bounded reason, never a crash."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simpersona.events.schema import CATALOG_SCHEMA
from simpersona.storefront import actions as A
from simpersona.storefront.app import create_app
from simpersona.storefront.config import EnvConfig, StorefrontConfig
from simpersona.storefront.env import ShopEnv
from simpersona.storefront.transports import AsgiTransport

OPTS = {"shop": "s1", "goal": "Buy a skirt"}
HUGE = "x" * 600_000
# Text with every code point, lone surrogates included (the default strategy leaves them out).
TEXT = st.text(st.characters(exclude_categories=()), max_size=300) | st.sampled_from([HUGE, "\ud800", "a\udfffb", ""])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
    max_leaves=16,
)
# Values an agent plausibly sends, so that some generated actions pass parsing and execute.
PLAUSIBLE = {
    "query": st.sampled_from(["skirt", "hat", "zebra"]),
    "element_id": st.sampled_from(["product-p1", "search-q", "nav-cart", "nav-home", "field-email", "add-to-cart", "nope"]),
    "product_id": st.sampled_from(["p1", "p3", "zz"]),
    "value": st.sampled_from(["a@b.co", "Germany", ""]),
    "quantity": st.integers(1, 3),
    "goal_reached": st.booleans(),
}


def catalog() -> pa.Table:
    rows = [
        ("s1", "p1", "Blue denim skirt", "apparel/women/skirts", "Acme", 19.99, None),
        ("s1", "p3", "Red wool hat", "accessories/hats", "Acme", 12.5, None),
    ]
    return pa.Table.from_pylist([dict(zip(CATALOG_SCHEMA.names, r)) for r in rows], schema=CATALOG_SCHEMA)


@pytest.fixture(scope="module")
def env():
    e = ShopEnv(AsgiTransport(create_app(StorefrontConfig(), catalog())), EnvConfig(max_steps=10**9))
    e.reset(seed=0, options=OPTS)
    yield e
    e.close()


def check_step(env: ShopEnv, action) -> dict:
    """Step `action`; the episode never crashes, errors are bounded and echoed, an invalid action keeps the page."""
    if env.done:
        env.reset(seed=0, options=OPTS)
    before = env.page.url
    invalid = env.invalid
    obs, reward, term, trunc, info = env.step(action)
    assert info["outcome"] != "crash", info["error"]
    assert obs["status"] < 500
    assert obs["error"] == info["error"]
    if info["error"] is not None:
        assert len(info["error"]) <= A.MAX_ERROR_CHARS
        assert info["invalid_actions"] == invalid + 1 and obs["url"] == before and not trunc
    return info


@st.composite
def hostile_actions(draw):
    """An action of a random type with plausible fields, one of them (or a field of its own) set to any JSON value."""
    name = draw(st.sampled_from([*A.NAMES, "nope"]))
    fields = A.FIELDS.get(name, {})
    action = {"action": name, **{f: draw(PLAUSIBLE[f]) for f in fields}}
    target = draw(st.sampled_from(["action", "reasoning", "extra", *fields]))
    action[target] = draw(JSON)
    return action


@given(action=hostile_actions(), as_text=st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_json_value_in_any_field_is_never_a_crash(env, action, as_text):
    check_step(env, json.dumps(action) if as_text else action)


@given(value=JSON)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_json_value_as_the_whole_action_is_never_a_crash(env, value):
    check_step(env, value)
    check_step(env, json.dumps(value))


HOSTILE = [
    {"action": ["click"]},
    {"action": {"x": 1}},
    {"action": "search", "query": "red \ud800 hat"},
    '{"action": "search", "query": "red \\ud800 hat"}',
    {"action": "fill", "element_id": "field-email", "value": "\udfff"},
    {"action": "click", "element_id": HUGE},
    {"action": "search", "query": HUGE},
    {"action": "back", HUGE: 1},
    {"action": "back", 1: 2, (1, 2): 3},
    {"action": "search", "query": [[[[[[[[[["deep"]]]]]]]]]] * 1000},
    {"action": "add_to_cart", "quantity": 10**400},
    {"action": "add_to_cart", "quantity": float("nan")},
    {"action": "end_session", "goal_reached": "yes"},
    "[" * 100_000 + "]" * 100_000,
    json.dumps({"action": "back", "reasoning": {"k": HUGE}}),
    HUGE,
    b"\xff\xfe{",
    None, 7, 1.5, [], [{"action": "back"}],
]


@pytest.mark.parametrize("action", HOSTILE, ids=[A.short(a)[:40] for a in HOSTILE])
def test_hostile_action_regressions(env, action):
    """The cases of issue 10 (list / object as the action name, lone surrogate, unbounded echo) and their kin."""
    info = check_step(env, action)
    assert info["error"], action


def test_error_echo_is_bounded_and_still_useful():
    with pytest.raises(A.ActionError) as e:
        A.parse_action({"action": "click", "element_id": 5, "reasoning": HUGE})
    assert str(e.value) == "click: element_id must be a string, got 5"
    with pytest.raises(A.ActionError) as e:
        A.parse_action({"action": HUGE})
    assert len(str(e.value)) <= A.MAX_ERROR_CHARS and str(e.value).startswith("unknown action 'xxx")
    assert A.bounded("y" * 10_000).endswith(" …") and len(A.bounded("y" * 10_000)) == A.MAX_ERROR_CHARS


def test_valid_actions_still_work_after_hostile_ones(env):
    env.reset(seed=0, options=OPTS)
    check_step(env, {"action": ["click"]})
    info = check_step(env, {"action": "search", "query": "skirt"})
    assert info["error"] is None and "product-p1" in env.snap.elements
