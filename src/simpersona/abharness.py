"""`simpersona abtest harness`: simulated A/B tests checked against known true effects, on generated
worlds (GENERATED data throughout; nothing here is real).

For each world (its own seed: shops, catalogs, buyer types, type mixes):
  1. `synth.variants` splits the world's buyers between two arms (a hash of the buyer id) and
     generates arm A once — the control log — and, per experiment, arm B under the variant's
     declared true effects (the "real" A/B log, `experiments/<i>/events.parquet` + `arms.parquet`),
     and the true lift per metric on the evaluation shops (`truth.json`: the world with
     `truth_factor` × the buyers, every buyer on both arms).
  2. The main job's stages learn the personas from the CONTROL ARM only: ingest → split (the same
     evaluation shops as the truth) → features → VQ-VAE → personas (the preset's sections, `tiny`
     by default); the policy is fitted on the control arm's training shops.
  3. `abtest` simulates each experiment on the evaluation shops' populations (both arms, paired)
     with the chosen agent; the real log's own estimate (buyers split, unpaired) is computed too.
Then per agent: sign agreement of simulated vs true lift (pairs with |true lift| ≥ min_true_lift),
Pearson r, and CI coverage of the true lift — overall, for the structural variants (page size,
order, search ranking, home order, checkout step) and for banner/price variants.

OUT/harness.json, harness.md, pairs.parquet (one row per world × experiment × metric),
OUT/world_<w>/… (every stage's folder and each experiment's logs and abtest/ output).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from simpersona.abtest.stage import AbtestConfig, analyse
from simpersona.config import ConfigError, read_preset, resolve, write_meta
from simpersona.contracts.experiment import METRICS, VariantConfig, buyer_means, session_metrics
from simpersona.synth.generate import SynthConfig

# Variant kinds the fast policy cannot see (no page element changes its next-event probabilities).
INVISIBLE = ("banner/prices",)
# A price variant's collection: this value picks the evaluation shops' largest top-level collection.
LARGEST = "@largest"


def default_experiments() -> list[VariantConfig]:
    """Ten experiments per world: every kind of change, both directions where it has them."""
    V = VariantConfig
    return [
        V(name="free-shipping", free_shipping_banner=True),
        V(name="price-down-20", price_collection=LARGEST, price_factor=0.8),
        V(name="price-up-25", price_collection=LARGEST, price_factor=1.25),
        V(name="two-step-checkout", extra_checkout_step=True),
        V(name="pages-24", page_size=24),
        V(name="pages-6", page_size=6),
        V(name="sort-cheapest", sort_order="price_asc"),
        V(name="search-cheapest", search_ranking="price_asc"),
        V(name="home-dearest", home_order="price_desc"),
        V(name="dearest-first-24", sort_order="price_desc", search_ranking="price_desc", page_size=24),
    ]


@dataclass
class HarnessConfig:
    # generated worlds; world w uses synth.seed + w
    worlds: int = 2
    # each world's generator (shops, buyers, catalog size; its buyer types carry the declared responses)
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(shops=8, buyers=4000, products_per_shop=150))
    # the experiments run on every world (price_collection "@largest": the evaluation shops' largest collection)
    experiments: list[VariantConfig] = field(default_factory=default_experiments)
    # share of a world's buyers on arm B of its real A/B log
    share_b: float = 0.5
    # the true lift comes from the world with this many times the buyers, each on both arms
    truth_factor: int = 20
    # share of each world's shops held out for evaluation (the experiments' shops; split seed = synth seed)
    eval_fraction: float = 0.25
    # preset whose features/vqvae/personas sections learn the personas from the control arm
    preset: str = "tiny"
    # the simulated experiment (buyers per shop, agent, checkpoint, bootstrap …); paths are set per world
    abtest: AbtestConfig = field(default_factory=lambda: AbtestConfig(buyers=150, bootstrap=500))
    # pairs whose true relative lift is smaller than this (in absolute value) are left out of sign agreement
    min_true_lift: float = 0.02


def kind(v: VariantConfig) -> str:
    """"banner/prices" for a banner or price change alone, else "structural".

    >>> kind(VariantConfig(free_shipping_banner=True)), kind(VariantConfig(page_size=24))
    ('banner/prices', 'structural')
    """
    structural = (v.extra_checkout_step or v.page_size > 0 or v.sort_order != "catalog"
                  or v.search_ranking != "relevance" or v.home_order != "catalog")
    return "structural" if structural else "banner/prices"


def _largest_collection(catalog: pa.Table, shops: list[str]) -> str:
    rows = [c.split("/")[0] for s, c in zip(catalog.column("shop_id").to_pylist(), catalog.column("collection").to_pylist())
            if s in shops and c]
    names, counts = np.unique(rows, return_counts=True)
    return str(names[np.argmax(counts)])


def _learn_personas(world: Path, sections: dict[str, Any], eval_fraction: float, seed: int, echo) -> dict[str, Path]:
    """ingest → split → features → vqvae → personas on the control log in world/control."""
    from simpersona.contracts import split
    from simpersona.events import ingest
    from simpersona.features import stage as features
    from simpersona.personas import assign
    from simpersona.vqvae import train

    d = {k: world / k for k in ("ingest", "split", "features", "vqvae", "personas")}
    src = world / "control"
    steps = [
        ("ingest", ingest.run, resolve(ingest.IngestConfig, sections, "ingest", {
            "format": "canonical", "input": str(src / "events.parquet"), "catalog": str(src / "catalog.parquet"), "progress": False})),
        ("split", split.run, split.SplitConfig(eval_fraction=eval_fraction, seed=seed, ingest=d["ingest"])),
        ("features", features.run, resolve(features.FeaturesConfig, sections, "features", {"input": str(d["ingest"]), "split": str(d["split"])})),
        ("vqvae", train.run, resolve(train.TrainConfig, sections, "vqvae", {"features": str(d["features"]), "split": str(d["split"])})),
        ("personas", assign.run, resolve(assign.PersonasConfig, sections, "personas", {"model": str(d["vqvae"]), "features": str(d["features"])})),
    ]
    for name, fn, cfg in steps:
        t0 = time.perf_counter()
        fn(cfg, d[name])
        echo(f"[harness] {world.name}: {name} on the control arm ({time.perf_counter() - t0:.0f} s)")
    return d


def _write_world(cfg: HarnessConfig, w: int, out: Path, echo) -> tuple[SynthConfig, list[str], list[VariantConfig]]:
    """The control log, the synthetic marker and the world's experiments with their collections resolved."""
    from simpersona.contracts.split import SplitConfig, make_split
    from simpersona.synth.variants import arm_of, select_buyers, world_events

    syn = dataclasses.replace(cfg.synth, seed=cfg.synth.seed + w)
    page_a = cfg.abtest.storefront.page_size
    events, truth, catalog = world_events(syn, syn.types, None, page_a)
    eval_shops = sorted(make_split(sorted(set(catalog.column("shop_id").to_pylist())),
                                   SplitConfig(eval_fraction=cfg.eval_fraction, seed=syn.seed)).eval)
    on_b = arm_of(truth.column("buyer_id"), f"world{syn.seed}", cfg.share_b)
    buyers_b = {b for b, x in zip(truth.column("buyer_id").to_pylist(), on_b) if x}
    buyers_a = set(truth.column("buyer_id").to_pylist()) - buyers_b
    control = out / "control"
    control.mkdir(parents=True, exist_ok=True)
    pq.write_table(select_buyers(events, buyers_a), control / "events.parquet")
    pq.write_table(catalog, control / "catalog.parquet")
    pq.write_table(truth, control / "truth_buyers.parquet")
    pq.write_table(pa.table({"buyer_id": truth.column("buyer_id"), "arm": pa.array(np.where(on_b, "B", "A"))}), out / "arms.parquet")
    (control / "SYNTHETIC.txt").write_text(
        f"SYNTHETIC DATA: the control arm (A) of generated A/B experiments, world seed {syn.seed}; written by\n"
        "`simpersona abtest harness` (synth.variants). No real people, shops or events.\n")
    largest = _largest_collection(catalog, eval_shops)
    variants = [dataclasses.replace(v, price_collection=largest) if v.price_collection == LARGEST else v for v in cfg.experiments]
    echo(f"[harness] world {w}: {len(catalog):,} products, {truth.num_rows:,} buyers ({len(buyers_b):,} on B), "
         f"{events.num_rows:,} control-world events; evaluation shops {eval_shops}")
    return syn, eval_shops, variants


def _experiment(cfg: HarnessConfig, syn: SynthConfig, v: VariantConfig, eval_shops: list[str], world: Path, i: int,
                lay: dict[str, Path], policy: Path | None, echo) -> tuple[list[dict[str, Any]], dict]:
    """One experiment: its real log, truth, simulation; one row per metric."""
    from simpersona.abtest.stage import run as run_abtest
    from simpersona.synth.variants import arm_of, select_buyers, true_effects, world_events

    d = world / "experiments" / f"{i:02d}-{v.name}"
    d.mkdir(parents=True, exist_ok=True)
    page_a = cfg.abtest.storefront.page_size
    ev_b, truth_b, _ = world_events(syn, syn.types, v, page_a)
    on_b = arm_of(truth_b.column("buyer_id"), f"world{syn.seed}", cfg.share_b)
    buyers_b = {b for b, x in zip(truth_b.column("buyer_id").to_pylist(), on_b) if x}
    real = pa.concat_tables([pq.read_table(world / "control" / "events.parquet"), select_buyers(ev_b, buyers_b)])
    pq.write_table(real, d / "events.parquet")
    truth = true_effects(syn, syn.types, v, page_a, set(eval_shops), cfg.truth_factor)
    (d / "truth.json").write_text(json.dumps({"variant": dataclasses.asdict(v), "shops": eval_shops,
                                              "truth_factor": cfg.truth_factor, "true": truth}, indent=2) + "\n")
    # the real log's own estimate: evaluation shops' buyers, per-buyer session means, unpaired
    keys, vals = buyer_means(session_metrics(real.filter(pc.is_in(real.column("shop_id"), value_set=pa.array(eval_shops)))))
    is_b = np.array([b in buyers_b for _, b in keys])
    real_eff = {e.metric: e for e in analyse(vals[~is_b], vals[is_b], paired=False, n_boot=0, correction="none")}
    ab = dataclasses.replace(cfg.abtest, ingest=lay["ingest"], personas=lay["personas"], split=lay["split"], shops=list(eval_shops),
                             spec=None, variant=v, aa=False, seed=cfg.abtest.seed + i,
                             data_note=f"generated data (harness world seed {syn.seed}: personas and policy from the control arm only)",
                             policy=dataclasses.replace(cfg.abtest.policy, model=policy))
    t0 = time.perf_counter()
    s = run_abtest(ab, d / "abtest", echo=lambda _: None)
    sim = {e["metric"]: e for e in s["effects"]}
    echo(f"[harness] {world.name} {v.name}: " + "  ".join(
        f"{m} true {truth[m]['lift']:+.1%} sim {_pct(sim[m]['lift'])}" for m in METRICS) + f" ({time.perf_counter() - t0:.0f} s)")
    rows = []
    for m in METRICS:
        e, r = sim[m], real_eff[m]
        rows.append({"world": syn.seed, "experiment": v.name, "kind": kind(v), "metric": m,
                     "true_lift": truth[m]["lift"], "true_diff": truth[m]["diff"],
                     "sim_lift": _num(e["lift"]), "sim_lo": _num(e["lift_lo"]), "sim_hi": _num(e["lift_hi"]),
                     "sim_boot_lo": _num(e["lift_boot_lo"]), "sim_boot_hi": _num(e["lift_boot_hi"]),
                     "real_lift": r.lift, "real_lo": r.lift_lo, "real_hi": r.lift_hi})
    return rows, s["agent"]


def _num(x) -> float:
    return math.nan if x is None else float(x)


def _pct(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.1%}"


def agreement(rows: list[dict[str, Any]], min_true: float, prefix: str = "sim") -> dict[str, Any]:
    """Sign agreement (pairs with |true lift| ≥ min_true; a lift of exactly 0 has no sign), Pearson r
    of estimated vs true lift, and coverage of the true lift by the estimate's interval(s).

    >>> r = [{"true_lift": 0.1, "sim_lift": 0.05, "sim_lo": 0.0, "sim_hi": 0.2},
    ...      {"true_lift": -0.1, "sim_lift": -0.2, "sim_lo": -0.3, "sim_hi": -0.15}]
    >>> a = agreement(r, 0.01); a["sign_agreement"], a["ci_coverage"]
    (1.0, 0.5)
    """
    from scipy import stats

    t = np.array([r["true_lift"] for r in rows], float)
    s = np.array([r[f"{prefix}_lift"] for r in rows], float)
    ok = np.isfinite(t) & np.isfinite(s)
    signed = ok & (np.abs(t) >= min_true)
    out: dict[str, Any] = {"pairs": int(ok.sum()), "signed_pairs": int(signed.sum()),
                           "sign_agreement": float((np.sign(s[signed]) == np.sign(t[signed])).mean()) if signed.any() else None,
                           "pearson": None, "pearson_p": None}
    if ok.sum() >= 3 and np.ptp(s[ok]) > 0 and np.ptp(t[ok]) > 0:
        res = stats.pearsonr(s[ok], t[ok])
        out["pearson"], out["pearson_p"] = float(res.statistic), float(res.pvalue)
    for name, lo, hi in (("ci_coverage", f"{prefix}_lo", f"{prefix}_hi"), ("boot_coverage", f"{prefix}_boot_lo", f"{prefix}_boot_hi")):
        if rows and lo in rows[0]:
            a = np.array([r[lo] for r in rows], float)
            b = np.array([r[hi] for r in rows], float)
            c = ok & np.isfinite(a) & np.isfinite(b)
            out[name] = float(((a[c] <= t[c]) & (t[c] <= b[c])).mean()) if c.any() else None
    return out


def run(cfg: HarnessConfig, out: Path, echo=print) -> dict[str, Any]:
    """Every world and experiment (see the module doc); harness.json / harness.md / pairs.parquet."""
    if cfg.worlds < 1 or not cfg.experiments or cfg.truth_factor < 1 or not 0 < cfg.share_b < 1:
        raise ConfigError("harness needs worlds ≥ 1, experiments, truth_factor ≥ 1 and share_b in (0, 1)")
    if cfg.abtest.agent == "llm" and cfg.abtest.persona:
        raise ConfigError("harness: an LLM checkpoint's persona tokens belong to the codebook it was trained with, not to a "
                          "world's control-arm personas: run the LLM arm with abtest.persona=false (its population still "
                          "comes from the control arm's p̂_s(k), strata and intents)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = read_preset(cfg.preset)
    rows: list[dict[str, Any]] = []
    agents = []
    t_all = time.perf_counter()
    for w in range(cfg.worlds):
        world = out / f"world_{w}"
        syn, eval_shops, variants = _write_world(cfg, w, world, echo)
        lay = _learn_personas(world, sections, cfg.eval_fraction, syn.seed, echo)
        policy = cfg.abtest.policy.model
        for i, v in enumerate(variants):
            r, agent = _experiment(cfg, syn, v, eval_shops, world, i, lay, policy, echo)
            if cfg.abtest.agent == "policy" and policy is None:
                policy = world / "experiments" / f"{i:02d}-{v.name}" / "abtest" / "policy.npz"  # fitted once per world
            rows += r
            agents.append(agent)
    pq.write_table(pa.Table.from_pylist(rows), out / "pairs.parquet")
    kinds = {"all": rows, **{k: [r for r in rows if r["kind"] == k] for k in ("structural", "banner/prices")}}
    summary = {
        "data": "GENERATED (synth.variants worlds; personas and policy learned from each world's control arm only)",
        "agent": {"kind": cfg.abtest.agent, "text": agents[0]["text"] if agents else "",
                  "checkpoints": sorted({a["checkpoint"] for a in agents})},
        "worlds": cfg.worlds, "experiments": len(rows) // len(METRICS), "metrics": list(METRICS),
        "buyers_per_shop": cfg.abtest.buyers, "truth_factor": cfg.truth_factor, "min_true_lift": cfg.min_true_lift,
        "simulated": {k: agreement(v, cfg.min_true_lift) for k, v in kinds.items()},
        "real_log": {k: agreement(v, cfg.min_true_lift, "real") for k, v in kinds.items()},
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    summary = json.loads(json.dumps(summary).replace(str(out) + "/", ""))  # paths relative to the output folder
    (out / "harness.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "harness.md").write_text(format_markdown(summary, rows) + "\n")
    write_meta(out, "abtest.harness", cfg, summary={k: summary[k] for k in ("data", "agent", "experiments", "simulated")})
    return summary


def _f(x, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def format_markdown(s: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> str:
    lines = [f"# Simulated A/B tests against known true effects ({s['data']})", "",
             f"Agent: {s['agent']['text']} — checkpoint(s): {', '.join(s['agent']['checkpoints'])}.",
             f"{s['experiments']} experiments over {s['worlds']} world(s) × {len(s['metrics'])} metrics; "
             f"{s['buyers_per_shop']} simulated buyers per evaluation shop per arm (paired); true lift from "
             f"{s['truth_factor']}× the world's buyers on both arms; sign agreement over |true lift| ≥ {s['min_true_lift']:.0%}.", "",
             "| estimate | variants | pairs | sign agreement | Pearson r | CI coverage (t/delta) | CI coverage (bootstrap) |",
             "|---|---|---|---|---|---|---|"]
    for who, key in (("simulated", "simulated"), ("real log (unpaired)", "real_log")):
        for k, a in s[key].items():
            lines.append(f"| {who} | {k} | {a['signed_pairs']}/{a['pairs']} | {_f(a['sign_agreement'], '.0%')} | "
                         f"{_f(a['pearson'], '.2f')} | {_f(a.get('ci_coverage'), '.0%')} | {_f(a.get('boot_coverage'), '.0%')} |")
    if rows:
        lines += ["", "| world | experiment | metric | true lift | simulated lift [CI] | real-log lift [CI] |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['world']} | {r['experiment']} | {r['metric']} | {_pct(r['true_lift'])} | {_pct(r['sim_lift'])} "
                         f"[{_pct(r['sim_lo'])}, {_pct(r['sim_hi'])}] | {_pct(r['real_lift'])} [{_pct(r['real_lo'])}, {_pct(r['real_hi'])}] |")
    return "\n".join(lines)


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"harness: {s['experiments']} generated experiments, {s['agent']['text']} ({s['data']}); {s['wall_s']} s"]
    for k, a in s["simulated"].items():
        r = s["real_log"][k]
        lines.append(f"  {k:<14} simulated: sign {_f(a['sign_agreement'], '.0%')} of {a['signed_pairs']}, Pearson "
                     f"{_f(a['pearson'], '.2f')}, CI coverage {_f(a.get('ci_coverage'), '.0%')} | real log: sign "
                     f"{_f(r['sign_agreement'], '.0%')}, Pearson {_f(r['pearson'], '.2f')}, coverage {_f(r.get('ci_coverage'), '.0%')}")
    return "\n".join(lines)
