"""A/B tests: the intervals cover a known difference at the nominal rate, A/A experiments find
nothing at the stated rate, the variant assignment is stable per session, bad variant specs fail
before any episode, the new variants are served, and `simpersona abtest` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from simpersona.abtest.stats import adjust, buyers_needed, effect, holm
from simpersona.config import ConfigError
from simpersona.storefront.config import StorefrontConfig, VariantConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from simpersona.testing.world import make_toy_world

    return make_toy_world(tmp_path_factory.mktemp("toy"), shops=2, codes=4, buyers=80)


def catalog():
    import pyarrow as pa

    from simpersona.events.schema import CATALOG_SCHEMA

    rows = [("s1", "p1", "Blue denim skirt", "apparel/women/skirts", "Acme", 19.99, None),
            *[("s1", f"t{i:02d}", f"Plain tee {i}", "apparel/men/tees", "Basic", 10.0 + (7 * i) % 13, None) for i in range(15)]]
    return pa.Table.from_pylist([dict(zip(CATALOG_SCHEMA.names, r)) for r in rows], schema=CATALOG_SCHEMA)


def _revenue_like(rng, n, p_buy, sigma=1.0):
    """Zero-inflated, skewed per-buyer values (most buy nothing)."""
    return (rng.random(n) < p_buy) * rng.lognormal(3.0, sigma, n)


# -- statistics -----------------------------------------------------------------------------------
def test_paired_intervals_cover_a_known_difference_at_the_nominal_rate():
    """Simulation test: 250 paired experiments of 500 buyers with a known true difference (a binary
    metric, 0.30 → 0.36) and a known true lift (a zero-inflated, skewed revenue, ×1.2); the t,
    delta-method and bootstrap 95% intervals each cover the truth in 95% ± 3.5 pp of them. (Rare
    events — a difference carried by a dozen buyers — make Wald intervals under-cover: see the
    harness's coverage on generated experiments.)"""
    rng = np.random.default_rng(0)
    reps, n = 250, 500
    hits = {k: 0 for k in ("diff_t", "diff_boot", "lift_delta", "lift_boot")}
    for _ in range(reps):
        a = (rng.random(n) < 0.30).astype(float)
        b = np.where(rng.random(n) < 0.5, a, (rng.random(n) < 0.42).astype(float))  # same buyer: correlated, mean 0.36
        e = effect("atc", a, b, paired=True, n_boot=300, rng=rng)
        hits["diff_t"] += e.diff_lo <= 0.06 <= e.diff_hi
        hits["diff_boot"] += e.diff_boot_lo <= 0.06 <= e.diff_boot_hi
        base = _revenue_like(rng, n, 0.4, sigma=0.7)
        noise = rng.lognormal(0.0, 0.3, n)
        rb = base * 1.2 * noise / np.exp(0.045)  # E[noise] = exp(0.3²/2): true lift exactly +20%
        e = effect("revenue", base, rb, paired=True, n_boot=300, rng=rng)
        hits["lift_delta"] += e.lift_lo <= 0.2 <= e.lift_hi
        hits["lift_boot"] += e.lift_boot_lo <= 0.2 <= e.lift_boot_hi
    rates = {k: v / reps for k, v in hits.items()}
    assert all(0.915 <= r <= 0.985 for r in rates.values()), rates


def test_aa_false_positive_rate_is_the_stated_one():
    """400 A/A experiments (same distribution on both arms; binary and skewed metrics; paired with
    independent draws and unpaired): the analytic test rejects at 5% ± 2 pp; Holm across the two
    metrics keeps the family-wise rate at or below 5% (+2 pp)."""
    rng = np.random.default_rng(1)
    reps, n = 400, 400
    rej = {"paired": 0, "unpaired": 0}
    family = 0
    tests = 0
    for _ in range(reps):
        for design in ("paired", "unpaired"):
            a = np.column_stack([(rng.random(n) < 0.2).astype(float), _revenue_like(rng, n, 0.15)])
            b = np.column_stack([(rng.random(n) < 0.2).astype(float), _revenue_like(rng, n, 0.15)])
            p = [effect(m, a[:, j], b[:, j], design == "paired", n_boot=0).p_value for j, m in enumerate(("x", "y"))]
            rej[design] += sum(x < 0.05 for x in p)
            family += bool((holm(p) < 0.05).any())
            tests += 1
    rates = {k: v / (2 * reps) for k, v in rej.items()}
    assert all(0.03 <= r <= 0.07 for r in rates.values()), rates
    assert family / tests <= 0.07


def test_effect_edges_and_power():
    same = np.ones(10)
    e = effect("x", same, same, paired=True, n_boot=100)
    assert e.diff == 0 and e.p_value == 1.0 and e.diff_boot_lo == e.diff_boot_hi == 0.0
    e = effect("x", np.zeros(10), np.r_[np.ones(5), np.zeros(5)], paired=False, n_boot=0)
    assert np.isnan(e.lift) and e.to_dict()["lift"] is None and e.diff == 0.5
    with pytest.raises(ValueError, match="as many B values"):
        effect("x", np.ones(3), np.ones(4), paired=True)
    assert np.isnan(holm([np.nan, 0.01])[0]) and adjust([0.2, 0.01], "none").tolist() == [0.2, 0.01]
    assert buyers_needed(1.0, 0.2) == pytest.approx(buyers_needed(1.0, 0.1) / 4)
    assert buyers_needed(1.0, 0.0) == float("inf")


# -- variant spec and assignment ------------------------------------------------------------------
def test_variant_assignment_is_stable_per_session():
    from simpersona.storefront.app import create_app
    from fastapi.testclient import TestClient
    from simpersona.storefront import cookies as C


    v = VariantConfig(name="big", page_size=3, share_b=0.3)
    arms = [v.arm(f"s{i}") for i in range(4000)]
    assert arms == [v.arm(f"s{i}") for i in range(4000)]  # same session id, same arm
    assert 0.27 < arms.count("B") / 4000 < 0.33
    assert VariantConfig(name="other", page_size=3, share_b=0.3).arm("s1") in ("A", "B")
    app = create_app(StorefrontConfig(variant=v), catalog())
    store = app.state.store
    for i in range(40):
        sid = f"s{i}"
        with TestClient(app) as c:
            c.cookies.update(C.visitor_cookies(store.cookie_key, "b", sid))
            for _ in range(3):  # every request of the session: the same variant
                c.get("/s/s1/")
        assert store.variant_of(sid) == v.arm(sid)
    served = app.state.store.log.sessions().to_pylist()
    assert all(r["variant"] == v.arm(r["session_id"]) for r in served) and len(served) == 40


def test_variant_spec_unknown_field_and_bad_specs_are_errors(tmp_path, world):
    from simpersona.abtest.spec import check_variant, read_spec
    from simpersona.storefront.catalog import load_catalog

    spec = tmp_path / "v.yaml"
    spec.write_text("name: x\npage_size: 24\npage_sise: 6\n")
    with pytest.raises(ConfigError, match=r"v\.yaml.*page_sise"):
        read_spec(spec)
    spec.write_text("name: x\nsort_order: cheapest\n")
    with pytest.raises(ConfigError, match="sort_order"):
        read_spec(spec)
    spec.write_text("name: x\nsort_order: price_asc\nshare_b: 0.2\n")
    assert read_spec(spec) == VariantConfig(name="x", sort_order="price_asc", share_b=0.2)
    shops = load_catalog(world["ingest"] / "catalog.parquet")
    some = next(iter(next(iter(shops.values())).leaves))
    for bad, msg in ((VariantConfig(name="x"), "changes nothing"),
                     (VariantConfig(name="x", page_size=12), "changes nothing"),  # A's page size already
                     (VariantConfig(name="x", page_size=6, share_b=1.0), r"share_b must lie in \(0, 1\)"),
                     (VariantConfig(name="x", page_size=6, share_b=0.0), r"share_b must lie in \(0, 1\)"),
                     (VariantConfig(name="x", price_collection="no/such", price_factor=0.8), "no/such.*none of the shops"),
                     (VariantConfig(name="x", price_factor=0.8), "needs variant.price_collection"),
                     (VariantConfig(name="x", price_collection=some, price_factor=-1.0), "price_factor must be > 0")):
        with pytest.raises(ConfigError, match=msg):
            check_variant(bad, shops, page_size=12)
    assert check_variant(VariantConfig(name="x"), shops, 12, aa=True) == []
    assert check_variant(VariantConfig(name="x", price_collection=some, price_factor=0.8), shops, 12) == [f"prices ×0.8 in {some}"]


def test_shipped_spec_by_name_and_the_main_job_default(tmp_path):
    """`spec: big-pages` names the file shipped in presets/variants/; the main job's `abtest` step uses it when
    the preset names no variant, on the run's folders (evaluation shops of its split)."""
    from simpersona.abtest.spec import VARIANT_DIR, read_spec
    from simpersona.layout import RunLayout
    from simpersona.pipeline import DEFAULT_VARIANT, _abtest

    assert read_spec("big-pages") == VariantConfig(name="big-pages", page_size=24)
    with pytest.raises(ConfigError, match=r"no-such.*cannot read it.*shipped specs \['big-pages'"):
        read_spec("no-such")
    assert (VARIANT_DIR / f"{DEFAULT_VARIANT}.yaml").exists()
    lay = RunLayout(tmp_path)
    cfg = _abtest().make_config({}, lay)
    assert cfg.spec == Path(DEFAULT_VARIANT) and cfg.split == lay.split and cfg.ingest == lay.ingest and cfg.agent == "policy"
    own = _abtest().make_config({"abtest": {"variant": {"sort_order": "price_asc"}, "agent": "llm"}}, lay)
    assert own.spec is None and own.variant.sort_order == "price_asc" and own.llm.checkpoint == lay.stage2


def test_bad_spec_fails_before_any_episode(tmp_path, world, monkeypatch):
    """The CLI: a spec with an unknown field, one changing nothing, an unknown collection, a share
    outside (0, 1) — each one line, exit code 2, and no episode ran."""
    from simpersona.abtest import arms
    from simpersona.cli import main

    def boom(*a, **k):
        raise AssertionError("an episode ran")

    monkeypatch.setattr(arms, "run_arms", boom)
    for i, (text, msg) in enumerate((("page_sise: 6", "page_sise"), ("name: x", "changes nothing"),
                                     ("price_collection: nope\nprice_factor: 0.9", "'nope' is a collection of none"),
                                     ("page_size: 6\nshare_b: 1.5", "share_b must lie in"))):
        spec = tmp_path / f"s{i}.yaml"
        spec.write_text(text + "\n")
        res = CliRunner().invoke(main, ["abtest", "--ingest", str(world["ingest"]), "--personas", str(world["personas"]),
                                        "--spec", str(spec), "--buyers", "4", "--out", str(tmp_path / f"o{i}")])
        assert res.exit_code == 2 and msg in res.output, res.output
        assert not (tmp_path / f"o{i}").exists()


# -- the new variants on the storefront -------------------------------------------------------------
def test_page_size_sort_order_and_search_ranking_are_served():
    from simpersona.storefront.app import create_app
    from simpersona.storefront.env import ShopEnv
    from simpersona.storefront.transports import AsgiTransport


    cat = catalog()
    v = VariantConfig(name="x", page_size=1, sort_order="price_desc", search_ranking="price_asc")
    app = create_app(StorefrontConfig(variant=v), cat)
    env = ShopEnv(AsgiTransport(app))
    shop = app.state.store.shops["s1"]
    coll = max(shop.collection_sizes, key=lambda c: (shop.collection_sizes[c], c))
    assert shop.collection_sizes[coll] >= 2
    pages = {}
    for arm in ("A", "B"):
        env.reset(seed=0, options={"shop": "s1", "variant": arm, "session_id": f"x{arm}", "start_path": f"/collections/{coll}"})
        pages[arm] = env.snap
    listed = {arm: [i for i in p.elements if i.startswith("product-")] for arm, p in pages.items()}
    assert len(listed["B"]) == 1 < len(listed["A"])  # B: one product per page
    prices = sorted(((p.price or 0.0), pid) for pid, p in shop.products.items() if p in shop.in_collection(coll))
    assert listed["B"][0] == "product-" + prices[-1][1]  # the dearest first


# -- the stage --------------------------------------------------------------------------------------
def test_abtest_cli_end_to_end_paired(tmp_path, world):
    from simpersona.cli import main

    spec = tmp_path / "checkout.yaml"
    spec.write_text("name: two-step\nextra_checkout_step: true\npage_size: 4\n")
    out = tmp_path / "ab"
    res = CliRunner().invoke(main, ["abtest", "--ingest", str(world["ingest"]), "--personas", str(world["personas"]),
                                    "--spec", str(spec), "--buyers", "30", "--set", "bootstrap=200", "--out", str(out)])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "abtest.json").read_text())
    assert s["experiment"] == "two-step" and s["changes"] == ["extra checkout step", "page size 12 → 4"]
    assert s["agent"]["kind"] == "policy" and s["agent"]["checkpoint"] == "policy.npz" and s["data"]
    assert {e["metric"] for e in s["effects"]} == {"atc", "checkout", "purchase", "revenue", "pages", "products"}
    assert s["n_a"] == s["n_b"] == 60 and all(r["paired_buyers"] is None or r["paired_buyers"] >= 2 for r in s["power"]["metrics"])
    for f in ("abtest.md", "forest.svg", "sessions.parquet", "events.parquet", "variants.parquet", "meta.json"):
        assert (out / f).exists(), f
    import pyarrow.parquet as pq

    served = {r["session_id"]: r["variant"] for r in pq.read_table(out / "variants.parquet").to_pylist()}
    assert served and all(v == sid[-1] for sid, v in served.items())  # session <buyer>-A saw A, <buyer>-B saw B
    md = (out / "abtest.md").read_text()
    assert "Checkpoint:" in md and "fast persona policy" in md and "Power:" in md


def test_aa_experiment_finds_no_effect(tmp_path, world):
    """An A/A experiment end to end (both arms served A, independent agent draws): both arms are
    logged as A and no metric is significant after Holm."""
    from simpersona.abtest.stage import AbtestConfig, run

    cfg = AbtestConfig(ingest=world["ingest"], personas=world["personas"], buyers=40, aa=True, arm_seeds="independent",
                       variant=VariantConfig(name="aa"), bootstrap=200, seed=3)
    s = run(cfg, tmp_path / "aa")
    import pyarrow.parquet as pq

    assert set(pq.read_table(tmp_path / "aa" / "variants.parquet").column("variant").to_pylist()) == {"A"}
    assert s["significant"] == [] and s["changes"] == ["none (A/A)"]
    assert all(e["p_adjusted"] is None or e["p_adjusted"] >= 0.05 for e in s["effects"])


# -- the generator's variant-aware buyer types and the harness ----------------------------------------
def test_generated_arms_share_buyers_and_show_the_declared_effects():
    """Arm B of the same world keeps the buyers and their first sessions' starts (later ones follow
    the earlier sessions' lengths); the declared effects show
    with the declared sign on a large sample (checkout step: fewer purchases; banner: more; bigger
    pages: more products viewed; a 20% price cut on a collection: those products' purchase prices
    ×0.8); the plain generator's events are unchanged by the new fields (arm A = `synth`)."""
    import pyarrow.compute as pc

    from simpersona.contracts.experiment import METRICS
    from simpersona.synth.buyers import default_types
    from simpersona.synth.generate import SynthConfig
    from simpersona.synth.variants import arm_of, price_factors, true_effects, world_events

    cfg = SynthConfig(shops=2, buyers=600, products_per_shop=80, seed=4)
    types = default_types()
    a, truth_a, cat = world_events(cfg, types, None, 12)
    b, truth_b, _ = world_events(cfg, types, VariantConfig(name="x", page_size=24), 12)
    assert truth_a.equals(truth_b)
    first = lambda t: t.filter(pc.ends_with(t.column("session_id"), "-00")).group_by("session_id").aggregate([("ts", "min")]).sort_by("session_id")  # noqa: E731
    assert first(a).equals(first(b))  # every buyer's first session starts at the same time on both arms
    shops = set(cat.column("shop_id").to_pylist())
    lift = {}
    for name, v in (("step", VariantConfig(name="x", extra_checkout_step=True)), ("ship", VariantConfig(name="x", free_shipping_banner=True)),
                    ("big", VariantConfig(name="x", page_size=24))):
        lift[name] = {m: d["lift"] for m, d in true_effects(cfg, types, v, 12, shops, truth_factor=6).items()}
    assert lift["step"]["purchase"] < -0.02 and lift["ship"]["purchase"] > 0.05 and lift["big"]["products"] > 0.03, lift
    assert set(lift["big"]) == set(METRICS)
    top = cat.column("collection").to_pylist()[0].split("/")[0]
    cut = VariantConfig(name="x", price_collection=top, price_factor=0.8)
    ev, _, _ = world_events(cfg, types, cut, 12)
    key = list(zip(cat.column("shop_id").to_pylist(), cat.column("product_id").to_pylist()))
    price = dict(zip(key, cat.column("price").to_pylist()))
    coll = dict(zip(key, cat.column("collection").to_pylist()))
    bought = ev.filter(pc.equal(ev.column("event_type"), "purchase")).select(["shop_id", "product_id", "price"]).to_pylist()
    want = lambda k: price[k] * (0.8 if coll[k].startswith(top + "/") else 1.0)  # noqa: E731
    assert bought and all(abs(r["price"] - want((r["shop_id"], r["product_id"]))) < 0.011 for r in bought)
    assert any(coll[(r["shop_id"], r["product_id"])].startswith(top + "/") for r in bought)
    assert price_factors(["a/b"], np.array([0, 3]), VariantConfig(price_collection="c", price_factor=0.5)) is None
    on_b = arm_of([f"b{i}" for i in range(2000)], "w", 0.5)
    assert 0.45 < on_b.mean() < 0.55 and (on_b == arm_of([f"b{i}" for i in range(2000)], "w", 0.5)).all()


def test_synth_output_is_unchanged_by_the_response_fields(tmp_path):
    """`simpersona synth` (arm A) writes the same events as a world_events call without a variant."""
    import pyarrow.parquet as pq

    from simpersona.synth.generate import SynthConfig, run
    from simpersona.synth.variants import world_events

    cfg = SynthConfig(shops=2, buyers=200, products_per_shop=40, seed=2, file_format="parquet")
    run(cfg, tmp_path)
    ev, _, _ = world_events(cfg, cfg.types, None, 12)
    assert pq.read_table(tmp_path / "events.parquet").equals(ev)


def test_harness_end_to_end_small(tmp_path):
    """One small generated world, three experiments: personas learned from the control arm (its
    ingest holds no arm-B buyer), real logs of both arms with truth, the simulated experiments and
    the agreement figures, each naming the agent and checkpoint and saying the data are generated."""
    import pyarrow.parquet as pq

    from simpersona.abharness import HarnessConfig, run
    from simpersona.abtest.stage import AbtestConfig
    from simpersona.synth.generate import SynthConfig

    preset = tmp_path / "p.yaml"
    preset.write_text("extends: tiny\nfeatures: {embedding: {enabled: false}}\nvqvae: {max_epochs: 1}\n")
    cfg = HarnessConfig(worlds=1, synth=SynthConfig(shops=4, buyers=500, products_per_shop=60), truth_factor=2, preset=str(preset),
                        experiments=[VariantConfig(name="ship", free_shipping_banner=True), VariantConfig(name="cheap", sort_order="price_asc"),
                                     VariantConfig(name="cut", price_collection="@largest", price_factor=0.7)],
                        abtest=AbtestConfig(buyers=12, bootstrap=50, concurrency=8))
    s = run(cfg, tmp_path / "h", echo=lambda _: None)
    w = tmp_path / "h" / "world_0"
    arms = {r["buyer_id"]: r["arm"] for r in pq.read_table(w / "arms.parquet").to_pylist()}
    control = set(pq.read_table(w / "control" / "events.parquet").column("buyer_id").to_pylist())
    assert control and all(arms[b] == "A" for b in control)
    real = set(pq.read_table(w / "experiments" / "01-cheap" / "events.parquet").column("buyer_id").to_pylist())
    assert {arms[b] for b in real} == {"A", "B"}
    truth = json.loads((w / "experiments" / "02-cut" / "truth.json").read_text())
    assert truth["variant"]["price_collection"] != "@largest" and set(truth["true"]) >= {"purchase", "revenue"}
    assert s["experiments"] == 3 and "GENERATED" in s["data"] and s["agent"]["kind"] == "policy"
    assert s["agent"]["checkpoints"] and all(c.endswith("policy.npz") for c in s["agent"]["checkpoints"])
    assert set(s["simulated"]) == {"all", "structural", "banner/prices"} and s["simulated"]["all"]["pairs"] > 0
    md = (tmp_path / "h" / "harness.md").read_text()
    assert "GENERATED" in md and "checkpoint" in md
    assert len(pq.read_table(tmp_path / "h" / "pairs.parquet")) == 3 * 6


def test_abtest_with_an_llm_agent_backend(tmp_path, world, monkeypatch):
    """Any agent: the LLM agent (its prompt, output parsing and batched act) on a scripted backend
    standing in for an endpoint — both arms run, and the report names the endpoint and model."""
    import re

    from simpersona.abtest.stage import AbtestConfig, run
    from simpersona.agents import llm
    from simpersona.contracts import storefront as V

    class Scripted:
        """Adds the first product it sees to the cart, then ends."""

        def __init__(self, cfg):
            self.calls = 0

        def generate(self, prompts):
            self.calls += len(prompts)
            out = []
            for p in prompts:
                page = p[-1]["content"]
                ids = re.findall(r"\[(" + re.escape(V.PRODUCT_PREFIX) + r"[^\]]+)\]", page)
                if f"[{V.ADD_BUTTON}]" in page:
                    out.append('{"action": "add_to_cart", "quantity": 1, "reasoning": "want it"}')
                elif ids and "/cart" not in page.split("\n", 1)[0]:
                    out.append(json.dumps({"action": "click", "element_id": ids[0], "reasoning": "look"}))
                else:
                    out.append('{"action": "end_session", "goal_reached": true, "reasoning": "done"}')
            return out

    monkeypatch.setattr(llm, "EndpointBackend", Scripted)
    cfg = AbtestConfig(ingest=world["ingest"], personas=world["personas"], buyers=6, agent="endpoint", bootstrap=50,
                       variant=VariantConfig(name="pp", sort_order="price_asc"))
    cfg.endpoint.url = "http://127.0.0.1:9/v1"
    s = run(cfg, tmp_path / "llm")
    assert s["agent"]["kind"] == "endpoint" and "127.0.0.1:9" in s["agent"]["checkpoint"] and "model" in s["agent"]["checkpoint"]
    assert s["episodes"] == 24 and s["outcomes"]["A"].get("crash", 0) == 0 and s["outcomes"]["B"].get("crash", 0) == 0
    assert next(e for e in s["effects"] if e["metric"] == "atc")["mean_a"] > 0  # the scripted agent carted on A


def test_worker_processes_give_the_same_experiment(tmp_path, world):
    """The fast policy's episodes over 2 processes: the same sessions, metrics and effects as one."""
    import pyarrow.parquet as pq

    from simpersona.abtest.stage import AbtestConfig, run

    out = {}
    for w in (1, 2):
        cfg = AbtestConfig(ingest=world["ingest"], personas=world["personas"], buyers=10, workers=w, bootstrap=0,
                           variant=VariantConfig(name="w", page_size=3, sort_order="price_desc"))
        s = run(cfg, tmp_path / f"w{w}")
        out[w] = (pq.read_table(tmp_path / f"w{w}" / "sessions.parquet").drop_columns([]), s["effects"])
    assert out[1][0].equals(out[2][0]) and out[1][1] == out[2][1]
