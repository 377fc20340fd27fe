"""`simpersona abtest`: a simulated A/B test of a storefront change on each evaluation shop's persona
population, with effects, intervals, p-values, heterogeneous effects and a power calculation.

    simpersona abtest --ingest runs/demo/ingest --personas runs/demo/personas --split runs/demo/split \\
        --spec big-pages.yaml --buyers 2000 --out runs/abtest

The variant (`--spec FILE`, VariantConfig fields; see `abtest.spec`) is checked before any episode
runs. Each shop's population is drawn from p̂_s(k) (`abtest.arms`); every buyer runs on both arms
with the same goal and seed (paired; `design: unpaired` splits buyers by a hash instead), with any
agent: the fast persona policy (fitted on the split's training shops), an SFT checkpoint (`llm`) or
an endpoint. Metrics per session (`contracts.experiment`); effects (`abtest.stats`): difference and
relative lift with the analytic and the bootstrap interval, p-values corrected across metrics,
per stratum and per persona, buyers needed for a relative minimal detectable effect `mde`.

RUN_DIR/
  abtest.json        experiment, agent + checkpoint, data, effects, breakdowns, power
  abtest.md          the same as tables; forest.svg: lifts with intervals
  sessions.parquet   one row per episode: arm, buyer, code, stratum, outcome and the metrics
  events.parquet     the storefront's canonical events of both arms; variants.parquet: its session → variant log
  policy.npz         the fitted policy (agent: policy); meta.json
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simpersona.abtest.stats import Effect, adjust, buyers_needed, effect
from simpersona.agents.llm import EndpointConfig, LLMConfig
from simpersona.config import ConfigError, write_meta
from simpersona.contracts.experiment import METRICS, VariantConfig, metric_matrix, session_metrics
from simpersona.contracts.split import load_split
from simpersona.storefront.config import StorefrontConfig


@dataclass
class PolicyAgentConfig:
    # a fitted policy.npz to reuse (None: fit from ingest events + personas assignments of the training shops)
    model: Path | None = None
    # back-off strength m: pseudo-counts of the population-wide policy added to each code's counts
    strength: float = 5.0
    # additive smoothing α of the population-wide policy
    alpha: float = 0.1
    # most storefront actions spent reaching one sampled event before giving it up
    max_plan_steps: int = 10


@dataclass
class AbtestConfig:
    # ingest folder: catalog.parquet (the shops served) and events.parquet (the policy's fit)
    ingest: Path | None = None
    # personas folder: shop_mix.parquet, code_strata.parquet, assignments.parquet
    personas: Path | None = None
    # the run's shop split (split/shops.json): populations of its evaluation shops, the policy fitted on its training shops
    split: Path | None = None
    # shops experimented on ([] = the split's evaluation shops, else every shop of both catalog and persona mix)
    shops: list[str] = field(default_factory=list)
    # at most this many of those shops, the first in the persona mix's order (0 = all)
    max_shops: int = 0
    # YAML file of the variant (VariantConfig fields, see abtest.spec); its keys replace `variant`'s
    spec: Path | None = None
    # arm B's changes (the storefront section's own `variant` is not used here)
    variant: VariantConfig = field(default_factory=VariantConfig)
    # simulated buyers per shop
    buyers: int = 500
    # paired: every buyer on both arms; unpaired: each buyer on the arm a hash of its id picks (variant.share_b)
    design: Literal["paired", "unpaired"] = "paired"
    # same: a buyer's agent draws the same random numbers on both arms (common random numbers); independent: fresh on B
    arm_seeds: Literal["same", "independent"] = "same"
    # an A/A test: both arms are served A (the spec may change nothing): what the false-positive rate is measured on
    aa: bool = False
    # policy: the fast persona policy; llm: a local SFT checkpoint; endpoint: an OpenAI-compatible API
    agent: Literal["policy", "llm", "endpoint"] = "policy"
    # give agents their persona token (false: the no-persona agent)
    persona: bool = True
    # episodes running at once per arm (the LLM batch is at most this)
    concurrency: int = 32
    # processes for the fast policy's episodes, each with its own storefront app (0: one per CPU core;
    # the llm/endpoint agents use one); the same output for any number
    workers: int = 0
    # master seed (populations, goals, agent sampling, bootstrap)
    seed: int = 0
    # confidence level of every interval
    level: float = 0.95
    # bootstrap resamples per metric (0: the analytic intervals only)
    bootstrap: int = 2000
    # scipy.stats.bootstrap's interval method
    bootstrap_method: Literal["percentile", "basic", "BCa"] = "percentile"
    # correction of the p-values across the metrics: holm (family-wise), bh (false discovery rate), none
    correction: Literal["holm", "bh", "none"] = "holm"
    # minimal detectable effect of the power calculation, relative to arm A's mean (0.05 = 5%)
    mde: float = 0.05
    # power of the calculation (two-sided test at 1 − level)
    power: float = 0.8
    # strata and personas with fewer buyers (per arm) get no effect of their own
    min_group: int = 30
    # per-persona effects for at most this many codes (the largest)
    max_personas: int = 8
    # what the data are, named beside every figure ("" = read from the ingest folder: generated when the
    # log it ingested has SYNTHETIC.txt beside it)
    data_note: str = ""
    # the storefront (page size, env max_steps …); its `variant` is replaced by the experiment's
    storefront: StorefrontConfig = field(default_factory=StorefrontConfig)
    # the fast persona policy
    policy: PolicyAgentConfig = field(default_factory=PolicyAgentConfig)
    # the LLM agent on a local checkpoint
    llm: LLMConfig = field(default_factory=LLMConfig)
    # the LLM agent on an endpoint
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)


def data_note(ingest: Path) -> str:
    """"generated data (…)" when the log `ingest` read has SYNTHETIC.txt beside it (or in it), else
    the ingest folder's input path."""
    try:
        source = Path(json.loads((Path(ingest) / "meta.json").read_text())["config"]["input"])
    except (OSError, KeyError, TypeError, ValueError):
        return f"data: {ingest} (not marked generated)"
    for d in (source, source.parent):
        if (d / "SYNTHETIC.txt").exists():
            return f"generated data (SYNTHETIC, {d})"
    return f"data: {source}"


def make_agent(cfg: AbtestConfig, run_dir: Path, max_code: int):
    """(make_agent(spec), backend or None, agent description {kind, checkpoint, text})."""
    if cfg.agent == "policy":
        from simpersona.agents.policy import PolicyAgent, PolicyModel, fit_intent_counts

        split = load_split(cfg.split)
        if cfg.policy.model is not None:
            model = PolicyModel.load(cfg.policy.model)
        else:
            train = list(split.train) if split is not None else None
            codes, counts = fit_intent_counts(Path(cfg.ingest) / "events.parquet", Path(cfg.personas) / "assignments.parquet",
                                              shops=train)
            model = PolicyModel(codes, counts, cfg.policy.strength, cfg.policy.alpha, train or ())
        if split is not None and model.shops:
            split.check_training(model.shops, "abtest (policy fit)")
        model.save(run_dir / "policy.npz")
        where = str(cfg.policy.model) if cfg.policy.model is not None else "policy.npz"  # fitted: in the output folder
        text = (f"fast persona policy ({where}: {len(model.codes)} codes, fitted on "
                f"{len(model.shops) or 'all'} training shop(s) of {cfg.ingest})")
        mk = lambda spec: PolicyAgent(model, np.random.default_rng([cfg.seed, spec.seed]), cfg.policy.max_plan_steps)  # noqa: E731
        return mk, None, {"kind": "policy", "checkpoint": str(where), "text": text}
    from simpersona.agents.llm import EndpointBackend, LLMAgent, TransformersBackend

    if cfg.agent == "llm":
        if cfg.llm.checkpoint is None:
            raise ConfigError("agent llm needs llm.checkpoint (an SFT checkpoint folder, e.g. RUN/sft/stage2)")
        backend = TransformersBackend(cfg.llm)
        if cfg.persona:
            try:
                backend.check_personas(max_code + 1)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        desc = {"kind": "llm", "checkpoint": str(cfg.llm.checkpoint),
                "text": f"LLM agent (checkpoint {cfg.llm.checkpoint}, {cfg.llm.decoding} decoding, T={cfg.llm.temperature:g})"}
    else:
        if not cfg.endpoint.url:
            raise ConfigError("agent endpoint needs endpoint.url")
        backend = EndpointBackend(cfg.endpoint)
        desc = {"kind": "endpoint", "checkpoint": f"{cfg.endpoint.url} model {cfg.endpoint.model}",
                "text": f"LLM agent on endpoint {cfg.endpoint.url} (model {cfg.endpoint.model})"}
    return (lambda spec: LLMAgent(backend)), backend, desc


def analyse(a: np.ndarray, b: np.ndarray, paired: bool, level: float = 0.95, n_boot: int = 2000,
            method: str = "percentile", correction: str = "holm", rng: np.random.Generator | None = None,
            metrics: tuple[str, ...] = METRICS) -> list[Effect]:
    """Effects of every metric: a, b (n, M) values per buyer (paired, row i = the same buyer) or per
    session of each arm; p-values adjusted across the M metrics."""
    effs = [effect(m, a[:, j], b[:, j], paired, level, n_boot, rng, method) for j, m in enumerate(metrics)]
    p_adj = adjust([e.p_value for e in effs], correction)
    return [Effect(**{**e.__dict__, "p_adjusted": float(p)}) for e, p in zip(effs, p_adj)]


def power_table(a: np.ndarray, b: np.ndarray, paired: bool, mde: float, level: float, power: float) -> list[dict[str, Any]]:
    """Per metric: the minimal detectable difference (mde × arm A's mean) and the buyers needed to
    detect it — paired (each buyer on both arms, the sd of the simulated differences) and, as a
    real split test needs, per arm of an unpaired test (the pooled sd of the arms)."""
    out = []
    for j, m in enumerate(METRICS):
        delta = mde * float(a[:, j].mean())
        sd_pool = math.sqrt((float(a[:, j].var(ddof=1)) + float(b[:, j].var(ddof=1))) / 2)
        row = {"metric": m, "mde_abs": delta,
               "unpaired_per_arm": _ceil(buyers_needed(sd_pool * math.sqrt(2), delta, 1 - level, power))}
        if paired:
            row["paired_buyers"] = _ceil(buyers_needed(float((b[:, j] - a[:, j]).std(ddof=1)), delta, 1 - level, power))
        out.append(row)
    return out


def _ceil(x: float) -> int | None:
    """Whole buyers (at least the 2 an interval needs); None when no number suffices (mde of 0)."""
    return max(2, int(math.ceil(x))) if math.isfinite(x) else None


def breakdown(a: np.ndarray, b: np.ndarray, groups_a: np.ndarray, groups_b: np.ndarray, paired: bool, level: float,
              min_group: int, keep: list | None = None) -> dict[str, list[dict[str, Any]]]:
    """Analytic effects per group (stratum or persona code) with ≥ min_group buyers per arm."""
    out: dict[str, list[dict[str, Any]]] = {}
    for g in (keep if keep is not None else sorted(set(groups_a.tolist()) | set(groups_b.tolist()))):
        ia, ib = groups_a == g, groups_b == g
        if ia.sum() < min_group or ib.sum() < min_group:
            continue
        effs = analyse(a[ia], b[ib], paired, level, n_boot=0, correction="none")
        out[str(g)] = [e.to_dict() for e in effs]
    return out


def run(cfg: AbtestConfig, run_dir: Path, echo=print) -> dict[str, Any]:
    """Check the variant, simulate both arms, analyse, write (see the module doc)."""
    import dataclasses

    from simpersona.abtest.arms import draw_buyers, run_arms
    from simpersona.abtest.forest import forest_svg
    from simpersona.abtest.spec import check_variant, read_spec
    from simpersona.personas.assign import PersonaMix
    from simpersona.simulate.cards import agent_card, data_card
    from simpersona.simulate.runner import worker_count
    from simpersona.storefront.catalog import load_catalog

    if cfg.ingest is None or cfg.personas is None:
        raise ConfigError("abtest needs ingest (catalog.parquet, events.parquet) and personas (shop_mix.parquet)")
    if cfg.buyers < 2 or not 0 < cfg.level < 1 or not cfg.mde > 0 or not 0 < cfg.power < 1:
        raise ConfigError(f"abtest needs buyers ≥ 2, level and power in (0, 1), mde > 0 (got buyers={cfg.buyers}, "
                          f"level={cfg.level}, power={cfg.power}, mde={cfg.mde})")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    variant = read_spec(cfg.spec, cfg.variant) if cfg.spec is not None else cfg.variant
    if not variant.name:
        variant = dataclasses.replace(variant, name=Path(cfg.spec).stem if cfg.spec is not None else "abtest")
    catalog_path = Path(cfg.ingest) / "catalog.parquet"
    shops_obj = load_catalog(catalog_path)
    mix = PersonaMix(cfg.personas)
    split = load_split(cfg.split)
    shops = list(cfg.shops) or [s for s in mix.mix if s in shops_obj and (split is None or s in split.eval)]
    shops = shops[: cfg.max_shops] if cfg.max_shops > 0 else shops
    missing = [s for s in shops if s not in shops_obj or s not in mix.mix]
    if missing or not shops:
        raise ConfigError(f"abtest: shops {missing or '[]'} are not in both the catalog and the persona mix")
    changed = check_variant(variant, {s: shops_obj[s] for s in shops}, cfg.storefront.page_size, cfg.aa)

    buyers = draw_buyers(mix, shops_obj, shops, cfg.buyers, cfg.seed, cfg.arm_seeds == "same", cfg.persona)
    if cfg.design == "paired":
        arms = {"A": [u for u in buyers], "B": [u for u in buyers]}
    else:
        arms = {arm: [u for u in buyers if variant.arm(u.buyer_id) == arm] for arm in ("A", "B")}
        if len(arms["A"]) < 2 or len(arms["B"]) < 2:
            raise ConfigError(f"abtest: the unpaired split left {len(arms['A'])} / {len(arms['B'])} buyers on A / B (need ≥ 2 each)")
    make, backend, agent = make_agent(cfg, run_dir, max(u.code for u in buyers))
    sf = dataclasses.replace(cfg.storefront, variant=variant)
    episodes = {arm: [u.episode(arm) for u in us] for arm, us in arms.items()}
    workers = worker_count(cfg.workers) if cfg.agent == "policy" else 1
    records, events, variants, wall = run_arms(sf, catalog_path, episodes, make, run_dir / "storefront", cfg.concurrency, cfg.aa, workers)
    note = cfg.data_note or data_note(Path(cfg.ingest))

    per_session = session_metrics(events)
    keys = {arm: [(s.shop_id, s.buyer_id, s.session_id) for s in episodes[arm]] for arm in ("A", "B")}
    va, vb = metric_matrix(per_session, keys["A"]), metric_matrix(per_session, keys["B"])
    paired = cfg.design == "paired"
    rng = np.random.default_rng([cfg.seed, 7])
    effects = analyse(va, vb, paired, cfg.level, cfg.bootstrap, cfg.bootstrap_method, cfg.correction, rng)
    ga = {k: np.array([getattr(u, k) for u in arms["A"]]) for k in ("stratum", "code")}
    gb = {k: np.array([getattr(u, k) for u in arms["B"]]) for k in ("stratum", "code")}
    codes, sizes = np.unique(ga["code"], return_counts=True)
    top = [int(c) for c in codes[np.argsort(-sizes, kind="stable")][: cfg.max_personas]]
    outcome = {r["session_id"]: r for r in records}

    rows = []
    for arm in ("A", "B"):
        vals = va if arm == "A" else vb
        for u, s, v in zip(arms[arm], episodes[arm], vals):
            r = outcome.get(s.session_id, {})
            rows.append({"arm": arm, "shop_id": u.shop_id, "buyer_id": u.buyer_id, "session_id": s.session_id, "code": u.code,
                         "stratum": u.stratum, "intent": u.intent, "goal": u.goal, "outcome": r.get("outcome", "crash"),
                         "steps": r.get("steps", 0), **{m: float(x) for m, x in zip(METRICS, v)}})
    pq.write_table(pa.Table.from_pylist(rows), run_dir / "sessions.parquet")
    pq.write_table(events, run_dir / "events.parquet")
    pq.write_table(variants, run_dir / "variants.parquet")

    card = agent_card(cfg, cfg.policy.model or run_dir / "policy.npz")
    if cfg.agent == "policy" and cfg.policy.model is None and "checkpoint" in card:  # the folder may still be renamed into place
        card["checkpoint"]["path"] = "policy.npz of this A/B test"
    dcard = data_card(Path(cfg.ingest), shops, cfg.split)
    summary: dict[str, Any] = {
        "experiment": variant.name, "changes": changed or ["none (A/A)"], "variant": dataclasses.asdict(variant), "aa": cfg.aa,
        "agent": agent, "data": note, "agent_card": card, "data_card": dcard,
        "design": cfg.design, "arm_seeds": cfg.arm_seeds, "shops": shops, "buyers_per_shop": cfg.buyers,
        "n_a": len(arms["A"]), "n_b": len(arms["B"]), "level": cfg.level, "correction": cfg.correction,
        "bootstrap": {"resamples": cfg.bootstrap, "method": cfg.bootstrap_method},
        "effects": [e.to_dict() for e in effects],
        "significant": [e.metric for e in effects if math.isfinite(e.p_adjusted) and e.p_adjusted < 1 - cfg.level],
        "by_stratum": breakdown(va, vb, ga["stratum"], gb["stratum"], paired, cfg.level, cfg.min_group),
        "by_persona": breakdown(va, vb, ga["code"], gb["code"], paired, cfg.level, cfg.min_group, top),
        "power": {"mde_relative": cfg.mde, "power": cfg.power, "alpha": round(1 - cfg.level, 6),
                  "metrics": power_table(va, vb, paired, cfg.mde, cfg.level, cfg.power)},
        "outcomes": {arm: {o: sum(r["outcome"] == o for r in records if r["arm"] == arm)
                           for o in sorted({r["outcome"] for r in records})} for arm in ("A", "B")},
        "episodes": len(records), "wall_s": round(wall, 3), "sessions_per_s": round(len(records) / wall, 1) if wall else None,
    }
    if backend is not None and hasattr(backend, "tokens_generated"):
        summary["tokens_generated"] = backend.tokens_generated
    (run_dir / "abtest.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (run_dir / "abtest.md").write_text(format_markdown(summary) + "\n")
    (run_dir / "forest.svg").write_text(forest_svg(
        [(e.metric, e.lift, e.lift_lo, e.lift_hi, e.lift_boot_lo, e.lift_boot_hi) for e in effects],
        f"A/B test {variant.name}: lift of B over A ({cfg.level:.0%} intervals)", forest_note(card, dcard)))
    write_meta(run_dir, "abtest", cfg, summary={k: summary[k] for k in ("experiment", "changes", "agent", "data", "n_a", "n_b", "significant")})
    return summary


def forest_note(card: dict[str, Any], dcard: dict[str, Any]) -> str:
    """The forest plot's subtitle: the agent, its checkpoint's content hash and the data, without paths.

    >>> forest_note({"name": "policy", "checkpoint": {"sha256": "5ad86b2b68e2"}}, {"generated": True, "shops": ["s1"]})
    'agent policy (checkpoint sha256 5ad86b2b68e2); GENERATED data, 1 shop(s)'
    """
    ck = card.get("checkpoint") or {}
    where = f" (checkpoint sha256 {ck['sha256']})" if ck.get("sha256") else (f" ({card['endpoint']['model']})" if card.get("endpoint") else "")
    return f"agent {card['name']}{where}; {'GENERATED data' if dcard['generated'] else 'data'}, {len(dcard['shops'])} shop(s)"


def _f(x: float | None, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def format_markdown(s: dict[str, Any]) -> str:
    """abtest.md: the experiment, its agent, checkpoint and data, the effects table and the power table."""
    lvl = f"{s['level']:.0%}"
    lines = [f"# A/B test `{s['experiment']}`: {', '.join(s['changes'])}", "",
             f"Agent: {s['agent']['text']}. Checkpoint: `{s['agent']['checkpoint']}`. {s['data'][:1].upper() + s['data'][1:]}.",
             f"Design: {s['design']} (arm seeds {s['arm_seeds']}{', A/A' if s['aa'] else ''}); {s['n_a']:,} buyers on A, "
             f"{s['n_b']:,} on B over {len(s['shops'])} shop(s) ({', '.join(s['shops'][:6])}); p-values {s['correction']}-adjusted "
             f"across {len(s['effects'])} metrics; bootstrap {s['bootstrap']['resamples']} × {s['bootstrap']['method']}.", "",
             f"| metric | A | B | diff | {lvl} CI (t) | {lvl} CI (bootstrap) | lift | {lvl} CI (delta) | {lvl} CI (bootstrap) | p | p adj. |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in s["effects"]:
        lines.append(f"| {e['metric']} | {_f(e['mean_a'], '.4g')} | {_f(e['mean_b'], '.4g')} | {_f(e['diff'], '+.4g')} | "
                     f"[{_f(e['diff_lo'], '+.4g')}, {_f(e['diff_hi'], '+.4g')}] | [{_f(e['diff_boot_lo'], '+.4g')}, {_f(e['diff_boot_hi'], '+.4g')}] | "
                     f"{_f(e['lift'], '+.1%')} | [{_f(e['lift_lo'], '+.1%')}, {_f(e['lift_hi'], '+.1%')}] | "
                     f"[{_f(e['lift_boot_lo'], '+.1%')}, {_f(e['lift_boot_hi'], '+.1%')}] | {_f(e['p_value'], '.3g')} | {_f(e['p_adjusted'], '.3g')} |")
    p = s["power"]
    lines += ["", f"Power: buyers needed to detect a {p['mde_relative']:.0%} relative change of arm A's mean "
              f"(two-sided α {p['alpha']:g}, power {p['power']:.0%}), from this experiment's variances:", "",
              "| metric | detectable difference | paired buyers (both arms) | unpaired, per arm |", "|---|---|---|---|"]
    for r in p["metrics"]:
        lines.append(f"| {r['metric']} | {_f(r['mde_abs'], '.4g')} | {r.get('paired_buyers', 'n/a')} | {r['unpaired_per_arm']} |")
    for title, key in (("stratum", "by_stratum"), ("persona code", "by_persona")):
        if s[key]:
            lines += ["", f"Effects by {title} (analytic {lvl} intervals, unadjusted):", "",
                      f"| {title} | n (A) | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
            for g, effs in s[key].items():
                lines.append(f"| {g} | {effs[0]['n_a']} | " + " | ".join(
                    f"{_f(e['diff'], '+.3g')} [{_f(e['diff_lo'], '+.3g')}, {_f(e['diff_hi'], '+.3g')}]" for e in effs) + " |")
    return "\n".join(lines)


def format_summary(s: dict[str, Any]) -> str:
    """The console lines: the experiment, agent, and each metric's lift with its interval."""
    head = (f"abtest {s['experiment']} ({', '.join(s['changes'])}): {s['n_a']:,} / {s['n_b']:,} buyers, {s['design']}, "
            f"{s['episodes']:,} episodes in {s['wall_s']} s — {s['agent']['text']}; {s['data']}")
    rows = [f"  {e['metric']:<9} A {_f(e['mean_a'], '.4g'):>8}  B {_f(e['mean_b'], '.4g'):>8}  lift {_f(e['lift'], '+.1%'):>7} "
            f"[{_f(e['lift_lo'], '+.1%')}, {_f(e['lift_hi'], '+.1%')}]  p_adj {_f(e['p_adjusted'], '.3g')}" for e in s["effects"]]
    return "\n".join([head, *rows])
