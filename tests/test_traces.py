"""Traces (spec §5): goals from crafted sessions, replay on the storefront, the judge, records,
the LLM client against fake endpoints, and the stage end to end on a small generated dataset."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simpersona.contracts.goals import goal_text, parse_goal, stratum_intent
from simpersona.events.schema import CATALOG_SCHEMA
from simpersona.contracts.records import read_records, records_from_trajectory, validate_record
from simpersona.traces.goals import Event, Session, make_goals, navigation_template
from simpersona.traces.judge import rule_verdict
from simpersona.chat import EndpointConfig
from simpersona.traces.llm import LLMClient, LLMError
from simpersona.traces.replay import Replayer, stage_steps

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
PRODUCTS = [  # shop s1: skirts and shoes
    ("p1", "Blue denim mini skirt", "apparel/women/skirts", 30.0),
    ("p2", "Red pleated midi skirt", "apparel/women/skirts", 45.0),
    ("p3", "Black leather pencil skirt", "apparel/women/skirts", 80.0),
    ("p4", "Trail running shoes", "shoes/running", 120.0),
    ("p5", "Road running shoes", "shoes/running", 90.0),
]


def catalog(drop: tuple[str, ...] = ()) -> pa.Table:
    rows = [{"shop_id": "s1", "product_id": p, "title": t, "collection": c, "brand": "Acme", "price": pr, "description": None}
            for p, t, c, pr in PRODUCTS if p not in drop]
    rows.append({"shop_id": "s2", "product_id": "q1", "title": "Green tea", "collection": "food/tea", "brand": None, "price": 5.0, "description": None})
    return pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA)


def ev(i: int, kind: str, pid: str | None = None, **kw) -> Event:
    info = {p: (t, c, pr) for p, t, c, pr in PRODUCTS}
    t, c, pr = info.get(pid, (None, None, None))
    return Event(kind, T0 + dt.timedelta(seconds=10 * i), pid, kw.get("collection_id"), kw.get("query"),
                 kw.get("price", pr), kw.get("quantity"), t, c)


def session(stratum: str, events: list[Event], sid: str = "x1") -> Session:
    return Session("s1", "b" * 8, sid, events, code=3, stratum=stratum)


PURCHASE = [ev(0, "page_view"), ev(1, "search", query="skirt"), ev(2, "product_view", "p1"), ev(3, "product_view", "p2"),
            ev(4, "add_to_cart", "p1", quantity=2), ev(5, "checkout_start"), ev(6, "purchase", "p1", quantity=2)]
ABANDON = [ev(0, "page_view"), ev(1, "collection_view", collection_id="shoes/running"), ev(2, "product_view", "p4"),
           ev(3, "add_to_cart", "p4", quantity=1), ev(4, "checkout_start")]
CART = [ev(0, "page_view"), ev(1, "product_view", "p3"), ev(2, "add_to_cart", "p3", quantity=1),
        ev(3, "product_view", "p2"), ev(4, "add_to_cart", "p2", quantity=1), ev(5, "remove_from_cart", "p3", quantity=1)]
BROWSE = [ev(0, "page_view"), ev(1, "search", query="running shoes"), ev(2, "product_view", "p4"), ev(3, "product_view", "p5"),
          ev(4, "product_view", "p1")]


@pytest.fixture(scope="module")
def replayer():
    r = Replayer(catalog())
    yield r
    r.close()


# -- goals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stratum, events, intent, navigation", [
    ("A", PURCHASE, "You are here to buy skirts.",
     "Search for 'skirt', open 'Blue denim mini skirt' and 'Red pleated midi skirt', add the cheaper one to the cart (two units), "
     "start checkout, place the order and leave."),
    ("B", ABANDON, "You are here to buy running.",
     "Browse the running collection, open 'Trail running shoes', add it to the cart, start checkout and leave."),
    ("C", CART, "You are here to buy skirts.",
     "Open 'Black leather pencil skirt', add it to the cart, open 'Red pleated midi skirt', add it to the cart, "
     "remove 'Black leather pencil skirt' from the cart and leave."),
    ("D", BROWSE, "You are here to browse running.", "Search for 'running shoes', open three products and leave."),
])
def test_goals_keep_the_structure_and_the_strata_intent(stratum, events, intent, navigation):
    g = make_goals(session(stratum, events))
    assert g.intent == intent
    assert g.navigation == navigation
    # the record goal of stage 2 is the intent alone (paper §2.3): the plan only drives the replay
    assert g.for_stage(2) == intent and parse_goal(intent) == (stratum_intent(stratum), g.category)
    # stage 1 is intent-neutral: the category only, no buy/browse/cart/checkout
    assert g.for_stage(1) == f"You are interested in {g.category}."
    assert not any(w in g.for_stage(1) for w in ("buy", "browse", "cart", "checkout", "order"))


def test_goal_category_falls_back_to_history_never_to_the_query_and_bounces_leave():
    s = session("E", [ev(0, "page_view")])
    assert navigation_template(s.events) == "Look at the home page and leave."
    assert make_goals(s).neutral == "You are interested in products."
    s.history = ["home/kitchen/tea_kettles"]
    g = make_goals(s)
    assert g.neutral == "You are interested in tea kettles." and g.intent == "You are here to browse tea kettles."
    q = session("D", [ev(0, "search", query="wool socks")])
    assert make_goals(q).category == "products"  # a goal never hands the agent its session's query


def test_goal_text_round_trips_and_a_plan_is_not_a_goal():
    for intent in ("neutral", "buy", "browse"):
        assert parse_goal(goal_text(intent, "tea kettles")) == (intent, "tea kettles")
    assert parse_goal(goal_text("buy", "U.S. maps")) == ("buy", "U S maps")
    g = make_goals(session("A", PURCHASE))
    assert parse_goal(f"{g.intent} {g.navigation}") is None  # the old stage-2 goal (intent + plan)
    with pytest.raises(ValueError):
        goal_text("shop", "skirts")


# -- replay and judge -----------------------------------------------------------------------------
def test_replay_reproduces_a_purchase_session_in_the_storefront_log(replayer):
    s = session("A", PURCHASE)
    traj = replayer.replay(s)
    assert traj.outcome == "goal_reached" and traj.error is None and not traj.skipped
    logged = [(x["event_type"], x["product_id"], x["quantity"]) for x in traj.logged]
    assert ("search", None, None) in logged
    assert {p for t, p, _ in logged if t == "product_view"} >= {"p1", "p2"}
    assert ("add_to_cart", "p1", 2) in logged and ("purchase", "p1", 2) in logged
    assert [t for t, _, _ in logged].count("purchase") == 1
    assert "checkout_start" in [t for t, _, _ in logged]
    assert rule_verdict(s, traj) == (True, "ok")
    actions = [st.action["action"] for st in traj.steps]
    assert actions[0] == "search" and actions[-1] == "end_session" and "submit" in actions and actions.count("fill") == 6
    # another session's episode does not leak into this one's log
    other = replayer.replay(session("D", BROWSE, sid="x2"))
    assert {x["event_type"] for x in other.logged} <= {"page_view", "search", "product_view"}


@pytest.mark.parametrize("events", [ABANDON, CART, BROWSE])
def test_replay_of_other_strata_is_kept(replayer, events):
    s = session("C", events)
    traj = replayer.replay(s)
    assert rule_verdict(s, traj) == (True, "ok"), (traj.skipped, traj.error, traj.logged)


def test_judge_rejects_a_replay_that_misses_the_purchase():
    s = session("A", PURCHASE)
    gone = Replayer(catalog(drop=("p1",)))  # the purchased product is no longer sold
    try:
        traj = gone.replay(s)
    finally:
        gone.close()
    assert traj.outcome == "goal_reached"  # the replay ran to its end …
    assert any("not in the catalog" in x for x in traj.skipped)
    assert rule_verdict(s, traj) == (False, "purchase_missing")  # … but the store's log has no purchase


def test_judge_rejects_tampered_logs(replayer):
    s = session("A", PURCHASE)
    traj = replayer.replay(s)
    no_buy = replace(traj, logged=[x for x in traj.logged if x["event_type"] != "purchase"])
    assert rule_verdict(s, no_buy) == (False, "purchase_missing")
    more = replace(traj, logged=traj.logged + [{"event_type": "purchase", "product_id": "p2", "quantity": 1}])
    assert rule_verdict(s, more) == (False, "purchase_extra")
    fewer = replace(traj, logged=[{**x, "quantity": 1} if x["event_type"] == "purchase" else x for x in traj.logged])
    assert rule_verdict(s, fewer) == (False, "purchase_quantity")
    no_view = replace(traj, logged=[x for x in traj.logged if x["product_id"] != "p2"])
    assert rule_verdict(s, no_view) == (False, "view_missing")
    assert rule_verdict(s, replace(traj, outcome="steps_limit")) == (False, "steps_limit")


def test_step_budget_truncates_and_the_judge_drops_it():
    from simpersona.storefront.config import EnvConfig, StorefrontConfig

    small = Replayer(catalog(), StorefrontConfig(env=EnvConfig(max_steps=4)))
    try:
        s = session("A", PURCHASE)
        assert rule_verdict(s, small.replay(s)) == (False, "steps_limit")
    finally:
        small.close()


def test_records_validate_for_both_stages(replayer):
    s = session("A", PURCHASE)
    g = make_goals(s)
    traj = replayer.replay(s, g.intent)
    for stage in (1, 2):
        recs = records_from_trajectory(g.for_stage(stage), s.code, stage_steps(traj, stage, g),
                                       {"shop_id": s.shop_id, "session_key": s.key, "stratum": s.stratum, "stage": stage})
        assert len(recs) == len(traj.steps)
        for r in recs:
            validate_record(r, num_personas=8)
            assert "Buyer profile: <|persona_3|>" in r["messages"][1]["content"]
        if stage == 1:  # neither goal nor reasoning reveals the intent in stage 1
            assert all("buy" not in json.loads(r["messages"][2]["content"])["reasoning"] for r in recs[:-1])
            assert "Goal: You are interested in skirts." in recs[0]["messages"][1]["content"]


# -- the LLM client -------------------------------------------------------------------------------
def fake_endpoint(answer: str | None, seen: list | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append((str(request.url), request.headers.get("authorization"), json.loads(request.content)))
        if answer is None:
            return httpx.Response(500, json={"error": "boom"})
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": answer}}]})

    return httpx.MockTransport(handle)


def test_llm_rewriter_and_judge_against_a_fake_endpoint(monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    cfg = EndpointConfig(url="http://llm.local/v1", model="m", api_key_env="FAKE_KEY")
    s = session("A", PURCHASE)
    g = make_goals(s)
    seen: list = []
    c = LLMClient(cfg, transport=fake_endpoint("Look for a skirt, compare two, buy two of the cheaper one.", seen))
    text = c.rewrite_goal(s, g)
    assert text.startswith("Look for a skirt")
    url, auth, body = seen[0]
    assert url == "http://llm.local/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "m"
    assert g.navigation in body["messages"][1]["content"]
    assert make_goals(s, text).navigation == text and make_goals(s, text).for_stage(2) == g.intent
    ok = LLMClient(cfg, transport=fake_endpoint('Sure: {"success": false, "reason": "no purchase"}'))
    assert ok.judge(g.navigation, s, ["page_view"]) == (False, "no purchase")
    for bad in (None, "", "x" * 5000):  # HTTP 500, empty answer, too long a goal
        with pytest.raises(LLMError):
            LLMClient(cfg, transport=fake_endpoint(bad)).rewrite_goal(s, g)
    with pytest.raises(LLMError):
        LLMClient(cfg, transport=fake_endpoint("yes")).judge(g.navigation, s, [])


# -- the stage ------------------------------------------------------------------------------------
def generated_run(out: Path, shops: int, buyers: int, seed: int = 0) -> Path:
    """synth → ingest → features (no embeddings: the replay does not use them) in `out`."""
    from simpersona.config import load_config
    from simpersona.events import ingest
    from simpersona.features import stage as features
    from simpersona.synth import generate

    sc = load_config(generate.SynthConfig, "tiny", [f"shops={shops}", f"buyers={buyers}", f"seed={seed}", "file_format=parquet"], section="synth")
    generate.run(sc, out / "synth")
    ic = load_config(ingest.IngestConfig, "tiny", ["progress=false"], section="ingest", values={
        "format": "canonical", "input": str(out / "synth" / "events.parquet"), "catalog": str(out / "synth" / "catalog.parquet")})
    ingest.run(ic, out / "ingest")
    fc = load_config(features.FeaturesConfig, "tiny", ["embedding.enabled=false"], section="features", values={"input": str(out / "ingest")})
    features.run(fc, out / "features")
    return out


def assert_goals_carry_no_plan(recs: list[dict], run: Path) -> None:
    """Paper §2.3: a record's goal is the intent alone — stage 1 "You are interested in X", stage 2
    "You are here to buy X" (A–C) / "browse X" (D) — and never names a product title or a search
    query of its own session (the navigation plan drives the replay only)."""
    events = pq.read_table(run / "ingest" / "events.parquet", columns=["shop_id", "buyer_id", "session_id", "product_id", "query"])
    cat = pq.read_table(run / "ingest" / "catalog.parquet", columns=["shop_id", "product_id", "title"]).to_pylist()
    titles = {(c["shop_id"], c["product_id"]): c["title"] for c in cat if c["title"]}
    mentions: dict[str, set] = {}
    for e in events.to_pylist():
        key = f"{e['shop_id']}:{e['buyer_id']}:{e['session_id']}"
        mentions.setdefault(key, set()).update(
            x.lower() for x in (titles.get((e["shop_id"], e["product_id"])), e["query"]) if x)
    for r in recs:
        goal = r["messages"][1]["content"].split("\n", 1)[0].removeprefix("Goal: ")
        parsed = parse_goal(goal)
        assert parsed is not None, goal
        want = "neutral" if r["stage"] == 1 else ("buy" if r["stratum"] in "ABC" else "browse")
        assert parsed[0] == want, (r["session_key"], goal)
        leaked = [m for m in mentions[r["session_key"]] if m in goal.lower() and m != parsed[1].lower()]
        assert not leaked, (r["session_key"], goal, leaked)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A small generated dataset, plus crafted persona assignments (6 codes)."""
    out = generated_run(tmp_path_factory.mktemp("tiny"), shops=3, buyers=160)
    buyers = pq.read_table(out / "features" / "buyers.parquet", columns=["shop_id", "buyer_id"])
    codes = [int(b, 16) % 6 for b in buyers.column("buyer_id").to_pylist()]  # 6 codes from the hashed ids
    (out / "personas").mkdir()
    pq.write_table(buyers.append_column("code", pa.array(codes, pa.int16())), out / "personas" / "assignments.parquet")
    return out


def test_stage_end_to_end_on_a_tiny_generated_dataset(tiny_run, tmp_path):
    from click.testing import CliRunner

    from simpersona.cli import main

    out = tmp_path / "traces"
    args = ["traces", "--ingest", str(tiny_run / "ingest"), "--features", str(tiny_run / "features"),
            "--personas", str(tiny_run / "personas"), "--out", str(out), "--preset", "tiny",
            "--set", "sample.max_sessions_per_code=6", "--set", "sample.target_sessions=30"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replayed"] == summary["kept"] + summary["dropped"] - summary["dropped_by_reason"].get("no_events_or_shop", 0)
    assert summary["kept"] > 0 and summary["codes"]["covered"] == summary["codes"]["with_candidates"] == 6
    assert sum(summary["dropped_by_reason"].values()) == summary["dropped"]
    recs = read_records(out, num_personas=6)  # traces.jsonl: what `simpersona sft --data` reads
    assert {r["stage"] for r in recs} == {1, 2} and len(recs) == summary["records_total"]
    for stage in (1, 2):
        train = read_records(out / f"stage{stage}" / "train.jsonl")
        val = read_records(out / f"stage{stage}" / "val.jsonl")
        assert {r["stage"] for r in train + val} == {stage}
        assert not {r["shop_id"] for r in train} & {r["shop_id"] for r in val}
        assert summary["records"][f"stage{stage}"] == {"train": len(train), "val": len(val)}
    table = pq.read_table(out / "sessions.parquet").to_pylist()
    assert sum(r["kept"] for r in table) == summary["kept"]
    assert all(r["goal_stage1"].startswith("You are interested in ") for r in table)
    assert_goals_carry_no_plan(recs, tiny_run)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stage"] == "traces" and meta["config"]["sample"]["target_sessions"] == 30


def test_evaluation_shops_never_reach_traces_or_the_policy(tiny_run, tmp_path):
    """With the run's split, traces and the fast policy's counts come from training shops only."""
    from simpersona.contracts.split import ShopSplit
    from simpersona.simulate.stage import SimulateConfig, make_agents
    from simpersona.traces import stage

    shops = sorted(set(pq.read_table(tiny_run / "features" / "buyers.parquet", columns=["shop_id"]).column("shop_id").to_pylist()))
    split = ShopSplit(tuple(shops[1:]), (shops[0],))
    split.save(tmp_path / "split" / "shops.json")
    cfg = stage.TracesConfig(ingest=tiny_run / "ingest", features=tiny_run / "features", personas=tiny_run / "personas",
                             split=tmp_path / "split")
    cfg.sample.target_sessions, cfg.sample.max_sessions_per_code, cfg.sample.min_sessions_per_code = 12, 2, 1
    s = stage.run(cfg, tmp_path / "t")
    recs = read_records(tmp_path / "t" / "traces.jsonl")
    assert recs and shops[0] not in {r["shop_id"] for r in recs} and shops[0] not in s["shops"]["train"] + s["shops"]["val"]
    sim = SimulateConfig(ingest=tiny_run / "ingest", personas=tiny_run / "personas", split=tmp_path / "split")
    (tmp_path / "sim").mkdir()
    make_agents(sim, tmp_path / "sim")
    from simpersona.agents.policy import PolicyModel

    assert PolicyModel.load(tmp_path / "sim" / "policy.npz").shops == tuple(shops[1:])


def test_stage_falls_back_to_templates_when_the_endpoint_fails(tiny_run, tmp_path):
    from simpersona.traces import stage

    cfg = stage.TracesConfig(ingest=tiny_run / "ingest", features=tiny_run / "features", personas=tiny_run / "personas",
                             rewrite_goals=True, llm_judge=True,
                             llm=EndpointConfig(url="http://127.0.0.1:9/v1", model="m", timeout_s=2.0))  # nothing listens
    cfg.sample.target_sessions, cfg.sample.max_sessions_per_code, cfg.sample.min_sessions_per_code = 6, 1, 1
    s = stage.run(cfg, tmp_path / "t")
    assert s["goals"]["rewritten"] == 0 and s["goals"]["rewrite_fallbacks"] == s["replayed"] > 0
    assert s["llm_judge"]["failures"] == s["kept"]  # the rule verdict stands when the LLM judge fails


def test_stage_config_errors(tiny_run, tmp_path):
    from simpersona.config import ConfigError, load_config
    from simpersona.traces import stage

    with pytest.raises(ConfigError, match="sample.nope"):
        load_config(stage.TracesConfig, "tiny", ["sample.nope=1"], section="traces")
    with pytest.raises(ConfigError, match="--features"):
        stage.run(stage.TracesConfig(ingest=tiny_run / "ingest"), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="assignments.parquet"):
        stage.run(stage.TracesConfig(ingest=tiny_run / "ingest", features=tiny_run / "features", personas=tmp_path), tmp_path / "x")
    with pytest.raises(ConfigError, match="traces.llm.url"):
        stage.run(stage.TracesConfig(rewrite_goals=True), tmp_path / "x")


def test_replay_pages_through_results_for_a_shared_title():
    rows = [{"shop_id": "s1", "product_id": f"z{i:02d}", "title": "Plain white tee", "collection": "apparel/tees",
             "brand": None, "price": 10.0 + i, "description": None} for i in range(20)]  # 12 per results page
    r = Replayer(pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA))
    try:
        s = session("D", [ev(0, "product_view", "z17", price=27.0)])
        traj = r.replay(s)
    finally:
        r.close()
    assert [st.action.get("element_id") for st in traj.steps][:3] == [None, "page-next", "product-z17"]
    assert rule_verdict(s, traj) == (True, "ok")
