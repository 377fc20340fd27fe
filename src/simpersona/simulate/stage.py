"""`simpersona simulate`: simulated buyers of each shop on the storefront; the event log is the output.

For each shop: n buyers draw k ~ p̂_s(k) and a stratum ~ P(stratum | k) (`personas.assign.
PersonaMix.sample_population`); the intent follows the stratum (A–C buy, D–E browse) or is
neutral; the goal (`contracts.goals.goal_text`, the sentences SFT records carry) names a topic
drawn from the shop's collections (weighted by size):

    stratum intents   "You are here to buy {topic}." / "You are here to browse {topic}."   (SFT stage 2)
    neutral intents   "You are interested in {topic}."                                   (SFT stage 1)

Episodes run on one in-process storefront app (`AsgiTransport`, default) or through real HTTP
to the same app served on a loopback port (`transport: http`), `concurrency` at a time.

RUN_DIR/
  events.parquet     the storefront's canonical events of every simulated session (EVENT_SCHEMA)
  catalog.parquet    the catalog served (so RUN_DIR reads like an ingest folder)
  episodes.parquet   shop_id, buyer_id, session_id, code, persona, stratum, intent, goal, outcome,
                     self_reported_goal, steps, invalid_actions, failure, … (one row per episode)
  policy.npz         the fitted persona policy (agent: policy)
  summary.json, meta.json   the summary names the agent (`agent_card`: variant, checkpoint path and
                     content hash, decoding) and the data (`data_card`: ingest, generated or not,
                     shops): `simulate.cards`
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simpersona.agents.llm import EndpointConfig, LLMConfig
from simpersona.config import ConfigError, write_meta
from simpersona.contracts.goals import goal_text
from simpersona.contracts.split import load_split
from simpersona.contracts.storefront import OUTCOMES
from simpersona.storefront.config import StorefrontConfig

from simpersona.simulate.cards import agent_card, agent_label, data_card, data_label
from simpersona.simulate.runner import EpisodeSpec, draw_population, run_episodes, run_in_workers, session_order, worker_count


@dataclass
class PolicyConfig:
    # back-off strength m: pseudo-counts of the population-wide policy added to each code's counts
    strength: float = 5.0
    # additive smoothing α of the population-wide policy (every event stays possible)
    alpha: float = 0.1
    # a fitted policy.npz to reuse (None: fit from ingest events + personas assignments)
    model: Path | None = None
    # most storefront actions spent reaching one sampled event before giving it up
    max_plan_steps: int = 10


@dataclass
class SimulateConfig:
    # ingest folder of the REAL data: catalog.parquet (the shops served), events.parquet (policy fit)
    ingest: Path | None = None
    # personas folder: shop_mix.parquet, code_strata.parquet, assignments.parquet
    personas: Path | None = None
    # shops simulated ([] = the evaluation shops of `split`, else every shop of the persona mix that the catalog has)
    shops: list[str] = field(default_factory=list)
    # at most this many of those shops (the first ones; 0: all)
    max_shops: int = 0
    # the run's shop split (split/shops.json): the policy is fitted on training shops only (None: every shop)
    split: Path | None = None
    # simulated buyers (one session each) per shop
    buyers: int = 100
    # policy: the fast persona policy; llm: a local SFT checkpoint; endpoint: an OpenAI-compatible API
    agent: Literal["policy", "llm", "endpoint"] = "policy"
    # give agents their persona token (false: the no-persona variant, for the ablation)
    persona: bool = True
    # stratum: buy/browse goals from the drawn stratum; neutral: "You are interested in …"
    intent: Literal["stratum", "neutral"] = "stratum"
    # episodes running at once (the LLM batch is at most this)
    concurrency: int = 32
    # asgi: in-process storefront; http: the same app on a loopback port, real HTTP
    transport: Literal["asgi", "http"] = "asgi"
    # processes for the fast policy's episodes on the in-process storefront, each with its own app
    # (0: one per CPU core; the llm/endpoint agents and transport http use one); same output for any
    workers: int = 0
    # master seed (populations, goals, policy sampling)
    seed: int = 0
    # print a progress line every this many finished episodes (0: quiet)
    progress_every: int = 0
    # the storefront and its agent environment (max_steps 30, time_limit_s, obs budget …)
    storefront: StorefrontConfig = field(default_factory=StorefrontConfig)
    # the fast persona policy
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # the LLM agent on a local checkpoint
    llm: LLMConfig = field(default_factory=LLMConfig)
    # the LLM agent on an endpoint
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)


def draw_specs(mix, shops_obj: dict, shops: list[str], n: int, intent_mode: str, persona: bool, seed: int,
               prefix: str = "sim") -> list[EpisodeSpec]:
    """n episode specs per shop: k ~ p̂_s, stratum ~ P(stratum | k), intent, goal topic."""
    specs = []
    for si, shop in enumerate(shops):
        rng = np.random.default_rng([seed, si])
        pop, topics = draw_population(mix, shop, shops_obj[shop], n, rng)
        for i in range(n):
            intent = "neutral" if intent_mode == "neutral" else str(pop.intents[i])
            specs.append(EpisodeSpec(
                shop_id=shop, buyer_id=f"{prefix}{si:03d}b{i:06d}", session_id=f"{prefix}{si:03d}s{i:06d}",
                code=int(pop.codes[i]), stratum=str(pop.strata[i]), intent=intent,
                goal=goal_text(intent, topics[i]), seed=int(rng.integers(1 << 31)), persona=persona))
    return specs


def make_agents(cfg: SimulateConfig, run_dir: Path):
    """(make_agent(spec), backend or None, info dict) for cfg.agent."""
    if cfg.agent == "policy":
        from simpersona.agents.policy import PolicyAgent, PolicyModel, fit_intent_counts

        if cfg.policy.model is not None:
            model = PolicyModel.load(cfg.policy.model)
        else:
            if cfg.ingest is None or cfg.personas is None:
                raise ConfigError("the policy agent is fitted from ingest events + personas assignments (set ingest, personas)")
            split = load_split(cfg.split)
            train = list(split.train) if split is not None else None
            codes, counts = fit_intent_counts(Path(cfg.ingest) / "events.parquet", Path(cfg.personas) / "assignments.parquet", shops=train)
            model = PolicyModel(codes, counts, cfg.policy.strength, cfg.policy.alpha, train or ())
        if cfg.split is not None and model.shops:  # a reused policy.npz too: fitted on training shops only
            load_split(cfg.split).check_training(model.shops, "simulate (policy fit)")
        model.save(run_dir / "policy.npz")
        mk = lambda spec: PolicyAgent(model, np.random.default_rng([cfg.seed, spec.seed]), cfg.policy.max_plan_steps)  # noqa: E731
        return mk, None, {"policy_codes": int(len(model.codes)), "policy_transitions": float(model.counts.sum())}
    from simpersona.agents.llm import EndpointBackend, LLMAgent, TransformersBackend

    backend = TransformersBackend(cfg.llm) if cfg.agent == "llm" else EndpointBackend(cfg.endpoint)
    if cfg.agent == "llm" and cfg.persona and cfg.personas is not None:
        from simpersona.contracts.persona import check_tokenizer

        codes = pq.read_table(Path(cfg.personas) / "shop_mix.parquet", columns=["code"]).column("code").to_numpy()
        check_tokenizer(backend.tok, int(codes.max()) + 1 if len(codes) else 0, cfg.llm.checkpoint)
    return (lambda spec: LLMAgent(backend)), backend, {}


class _LoopbackServer:
    """The app on 127.0.0.1:<free port> in a thread (transport: http)."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=lambda: self.server.run(sockets=[self.sock]), daemon=True)
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started and time.monotonic() - t0 < 20:
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError("the loopback storefront server did not start")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def simulate(cfg: SimulateConfig, run_dir: Path, specs: list[EpisodeSpec], catalog: pa.Table | Path,
             make_agent, echo=print) -> tuple[list[dict], pa.Table, float]:
    """Run `specs` on a fresh storefront logging into run_dir/storefront (run_dir/storefront/worker-K
    with several workers); (episodes in spec order, events by session: `runner.session_order`, wall_s)."""
    from simpersona.storefront.app import create_app, templates
    from simpersona.storefront.env import ShopEnv
    from simpersona.storefront.eventlog import read_parts
    from simpersona.storefront.transports import AsgiTransport, HttpTransport

    log_dir = run_dir / "storefront"
    shutil.rmtree(log_dir, ignore_errors=True)
    sf = dataclasses.replace(cfg.storefront, events_out=log_dir)
    workers = min(worker_count(cfg.workers), len(specs)) if cfg.agent == "policy" and cfg.transport == "asgi" else 1
    if workers > 1:
        def shard(part: list[EpisodeSpec], k: int) -> list[dict]:
            app = create_app(dataclasses.replace(sf, events_out=log_dir / f"worker-{k}"), catalog)
            envs = [ShopEnv(AsgiTransport(app), sf.env) for _ in range(max(1, min(-(-cfg.concurrency // workers), len(part))))]
            try:
                return run_episodes(part, envs, make_agent)
            finally:
                for e in envs:
                    e.close()
                app.state.store.log.close()

        t0 = time.perf_counter()
        templates()  # compiled once here, not in every worker
        episodes = run_in_workers(specs, workers, shard)
        wall = time.perf_counter() - t0
        events = pa.concat_tables([read_parts(log_dir / f"worker-{k}") for k in range(workers)])
        return episodes, session_order(events), wall
    app = create_app(sf, catalog)
    server = _LoopbackServer(app) if cfg.transport == "http" else None
    n_env = max(1, min(cfg.concurrency, len(specs)))
    if server is not None:
        key = app.state.store.cookie_key  # the env signs its visitors' cookies
        envs = [ShopEnv(HttpTransport(f"http://127.0.0.1:{server.port}", cookie_key=key), sf.env) for _ in range(n_env)]
    else:
        envs = [ShopEnv(AsgiTransport(app), sf.env) for _ in range(n_env)]
    done = [0]

    def tick(rec):
        done[0] += 1
        if cfg.progress_every and done[0] % cfg.progress_every == 0:
            echo(f"[simulate] {done[0]:,}/{len(specs):,} episodes")

    t0 = time.perf_counter()
    try:
        episodes = run_episodes(specs, envs, make_agent, tick)
    finally:
        for e in envs:
            e.close()
        if server is not None:
            server.close()
    wall = time.perf_counter() - t0
    events = app.state.store.log.events()  # flushes
    return episodes, session_order(events), wall


def episodes_table(episodes: list[dict]) -> pa.Table:
    cols = list(episodes[0]) if episodes else ["shop_id", "buyer_id", "session_id", "code", "outcome"]
    return pa.table({c: [e[c] for e in episodes] for c in cols})


def run(cfg: SimulateConfig, run_dir: Path, echo=print) -> dict[str, Any]:
    """Simulate cfg.buyers episodes per shop; write events, episodes, summary (see module doc)."""
    from simpersona.personas.assign import PersonaMix
    from simpersona.storefront.catalog import load_catalog

    if cfg.ingest is None or cfg.personas is None:
        raise ConfigError("simulate needs ingest (catalog.parquet, events.parquet) and personas (shop_mix.parquet)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    catalog_path = Path(cfg.ingest) / "catalog.parquet"
    shops_obj = load_catalog(catalog_path)
    mix = PersonaMix(cfg.personas)
    split = load_split(cfg.split)
    shops = list(cfg.shops) or [s for s in mix.mix if s in shops_obj and (split is None or s in split.eval)]
    shops = shops[: cfg.max_shops] if cfg.max_shops > 0 else shops
    missing = [s for s in shops if s not in shops_obj or s not in mix.mix]
    if missing:
        raise ConfigError(f"shops {missing} are not in both the catalog and the persona mix")
    specs = draw_specs(mix, shops_obj, shops, cfg.buyers, cfg.intent, cfg.persona, cfg.seed)
    make_agent, backend, info = make_agents(cfg, run_dir)
    if cfg.agent == "llm" and cfg.persona and specs:  # before any episode: the checkpoint knows the run's personas
        try:
            backend.check_personas(1 + max(s.code for s in specs))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    episodes, events, wall = simulate(cfg, run_dir, specs, catalog_path, make_agent, echo)
    pq.write_table(events, run_dir / "events.parquet")
    shutil.copyfile(catalog_path, run_dir / "catalog.parquet")
    pq.write_table(episodes_table(episodes), run_dir / "episodes.parquet")
    summary = summarise(episodes, wall, events.num_rows, backend)
    card = agent_card(cfg, run_dir / "policy.npz")
    if "checkpoint" in card and cfg.agent == "policy":  # the folder may still be renamed into place: name it relatively
        card["checkpoint"]["path"] = "policy.npz of this simulation"
    summary.update(info, shops=len(shops), agent=cfg.agent, persona=cfg.persona, intent=cfg.intent, transport=cfg.transport,
                   agent_card=card, data=data_card(Path(cfg.ingest), shops, cfg.split))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_meta(run_dir, "simulate", cfg, summary=summary)
    return summary


def summarise(episodes: list[dict], wall: float, n_events: int, backend=None) -> dict[str, Any]:
    """Outcome and failure counts, steps, throughput (and decode throughput of an LLM backend)."""
    n = len(episodes)
    outcomes = {o: sum(e["outcome"] == o for e in episodes) for o in OUTCOMES}
    failures: dict[str, int] = {}
    for e in episodes:
        if e["failure"]:
            failures[e["failure"]] = failures.get(e["failure"], 0) + 1
    steps = sum(e["steps"] for e in episodes)
    out = {"episodes": n, "outcomes": outcomes, "failures": failures, "events": n_events,
           "mean_steps": round(steps / n, 3) if n else 0.0, "invalid_actions": sum(e["invalid_actions"] for e in episodes),
           "repaired_actions": sum(e["repaired_actions"] for e in episodes),
           "wall_s": round(wall, 3), "sessions_per_s": round(n / wall, 2) if wall else None,
           "steps_per_s": round(steps / wall, 1) if wall else None}
    if backend is not None:
        out["tokens_generated"] = backend.tokens_generated
        out["decode_s"] = round(backend.decode_s, 3)
        out["tokens_per_s"] = round(backend.tokens_generated / backend.decode_s, 1) if backend.decode_s else None
    return out


def format_summary(summary: dict[str, Any]) -> str:
    o = summary["outcomes"]
    n = max(summary["episodes"], 1)
    lines = [f"{summary['episodes']:,} episodes ({summary.get('agent')}, persona {summary.get('persona')}, "
             f"intent {summary.get('intent')}) over {summary.get('shops')} shops: {summary['events']:,} events, "
             f"{summary['mean_steps']:.1f} steps/episode, {summary['sessions_per_s']} sessions/s",
             "outcomes " + "  ".join(f"{k} {v} ({v / n:.1%})" for k, v in o.items())]
    if "agent_card" in summary:
        lines.append(f"agent {agent_label(summary['agent_card'])}; {data_label(summary.get('data'))}")
    if summary["failures"]:
        lines.append("failures " + "  ".join(f"{k} {v}" for k, v in summary["failures"].items()))
    if summary.get("tokens_per_s") is not None:
        lines.append(f"decode {summary['tokens_generated']:,} tokens in {summary['decode_s']} s = {summary['tokens_per_s']} tokens/s")
    return "\n".join(lines)
