"""Instruction-following scenarios (§3.4, Table 4, App. J): deterministic tasks run on the storefront.

Task templates (App. J, Table 10; `nav` counts the navigation actions the instruction names):

    browse3    open a collection, view two of its products, end                          (browse)
    cart3      search one product, view it, add it to the cart, end                       (cart)
    co5        search one product, view it, add it, go to checkout, leave without buying  (checkout)
    co7        search two products, view each, add one, go to checkout, leave             (checkout)
    co10       search three products, view each, add one, view the first again, checkout, leave (checkout)
    buy16      view four products, add one, view two more, add another, check out and buy (purchase)
    buy27      search and view six products, add three, view two again, check out and buy (purchase)

Products (and so queries: product titles) are drawn per shop with a seed, so the task set is
deterministic. Each agent of `agents` runs every task `repetitions` times (LLM / endpoint agents) or
`fast_repetitions` times (policy, script); a run's persona code is drawn from the shop's p̂_s when
a personas folder is given, the same draws for every agent (paired runs). Agents
(`simulate.cards.variant` names, plus script): llm (an SFT checkpoint with its persona token),
llm_no_persona (the same checkpoint, no token), endpoint (OpenAI-compatible), script
(`agents.script.ScriptAgent` follows the task's plan exactly: checks that every task is feasible
in the step budget), policy (the persona policy, which ignores instructions: a floor). An agent that
cannot run (no checkpoint, no policy model) is "not run" with the reason. With greedy decoding
(llm.temperature 0, as for Table 4) the runs of one task differ only by the persona drawn, so an
llm_no_persona run repeats itself: size Table 4 by shops (`max_shops`) rather than repetitions.
`evaluate.instructions` judges the runs from the event log.

RUN_DIR/
  tasks.json         the tasks: id, shop, template, kind, nav, instruction, required event counts
                     (`need`), `no_purchase`, the scripted plan
  runs.json          agent → its folder, or {"status": "not run", "reason": …}
  <agent>/           events.parquet, catalog.parquet, episodes.parquet (tag = task id), summary.json
                     (agent and data cards), meta.json
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from simpersona.agents.llm import EndpointConfig, LLMConfig
from simpersona.config import ConfigError, write_meta
from simpersona.simulate.runner import EpisodeSpec
from simpersona.storefront.config import StorefrontConfig

# The event counts a task can require (the judge compares the session's counts with `need`).
REQ_KEYS = ("search", "product_view", "add_to_cart", "checkout_start", "purchase")


@dataclass
class Task:
    task_id: str
    shop_id: str
    template: str
    # cart / checkout / purchase / browse
    kind: str
    nav: int
    instruction: str
    # minimum event counts (REQ_KEYS) the session must reach
    need: dict[str, int]
    # the session must not purchase (abandon tasks)
    no_purchase: bool
    # the scripted plan: ("search", q) ("view", q) ("collection", path) ("add",) ("checkout",) ("buy",) ("end",)
    plan: list[tuple]


# distinct product titles a shop needs for the seven templates (buy16 and buy27 name six)
MIN_TITLES = 6


def make_tasks(shop_id: str, titles: list[str], collections: list[str], rng: np.random.Generator) -> list[Task]:
    """The seven templates on one shop's products (titles: distinct product titles)."""
    pick = lambda n: [titles[int(i)] for i in rng.choice(len(titles), size=min(n, len(titles)), replace=False)]  # noqa: E731
    out = []

    def add(name, kind, nav, text, need, no_purchase, plan):
        out.append(Task(f"{shop_id}:{name}", shop_id, name, kind, nav, text, need, no_purchase, plan))

    c = collections[int(rng.integers(len(collections)))] if collections else ""
    if c:
        add("browse3", "browse", 3, f"Open the '{c}' collection, view two of its products, then end the session.",
            {"product_view": 2}, True, [("collection", c), ("view_any",), ("back",), ("view_any",), ("end",)])
    (a,) = pick(1)
    add("cart3", "cart", 3, f"Search for '{a}', view it, add it to the cart, then end the session.",
        {"search": 1, "product_view": 1, "add_to_cart": 1}, False, [("search", a), ("view", a), ("add",), ("end",)])
    (a,) = pick(1)
    add("co5", "checkout", 5, f"Search for '{a}', view it, add it to the cart, go to checkout, and leave without buying.",
        {"search": 1, "product_view": 1, "add_to_cart": 1, "checkout_start": 1}, True,
        [("search", a), ("view", a), ("add",), ("checkout",), ("end",)])
    a, b = pick(2)
    add("co7", "checkout", 7, f"Search for '{a}' and for '{b}', view each, add '{b}' to the cart, go to checkout, and leave without buying.",
        {"search": 2, "product_view": 2, "add_to_cart": 1, "checkout_start": 1}, True,
        [("search", a), ("view", a), ("search", b), ("view", b), ("add",), ("checkout",), ("end",)])
    a, b, d = pick(3)
    add("co10", "checkout", 10, f"Search for '{a}', '{b}' and '{d}', view each, add '{d}' to the cart, view '{a}' again, "
        "then go to checkout and leave without buying.", {"search": 3, "product_view": 4, "add_to_cart": 1, "checkout_start": 1}, True,
        [("search", a), ("view", a), ("search", b), ("view", b), ("search", d), ("view", d), ("add",), ("search", a), ("view", a),
         ("checkout",), ("end",)])
    ps = pick(6)
    add("buy16", "purchase", 16, f"View the products '{ps[0]}', '{ps[1]}', '{ps[2]}' and '{ps[3]}', add '{ps[3]}' to the cart, "
        f"view '{ps[4]}' and '{ps[5]}', add '{ps[5]}' too, then check out and place the order.",
        {"product_view": 6, "add_to_cart": 2, "checkout_start": 1, "purchase": 1}, False,
        [*(x for p in ps[:4] for x in (("search", p), ("view", p))), ("add",),
         *(x for p in ps[4:] for x in (("search", p), ("view", p))), ("add",), ("checkout",), ("buy",), ("end",)])
    ps = pick(6)
    add("buy27", "purchase", 27, "Search for and view these six products: " + ", ".join(f"'{p}'" for p in ps)
        + f"; add '{ps[1]}', '{ps[3]}' and '{ps[5]}' to the cart; view '{ps[0]}' and '{ps[2]}' again; then check out and place the order.",
        {"search": 6, "product_view": 8, "add_to_cart": 3, "checkout_start": 1, "purchase": 1}, False,
        [*(x for i, p in enumerate(ps) for x in (("search", p), ("view", p)) + ((("add",),) if i % 2 else ())),
         ("search", ps[0]), ("view", ps[0]), ("search", ps[2]), ("view", ps[2]), ("checkout",), ("buy",), ("end",)])
    return out



@dataclass
class TasksConfig:
    # ingest folder (catalog.parquet: the shops and products the tasks use)
    ingest: Path | None = None
    # personas folder: each run's persona token is drawn from the shop's p̂_s (None: no token)
    personas: Path | None = None
    # shops with tasks ([] = the first `max_shops` evaluation shops of `split`, else of the catalog)
    shops: list[str] = field(default_factory=list)
    # the run's shop split (split/shops.json): tasks run on its evaluation shops (None: any shop)
    split: Path | None = None
    # shops used when `shops` is empty
    max_shops: int = 10
    # templates run ([] = all seven: browse3 cart3 co5 co7 co10 buy16 buy27)
    templates: list[str] = field(default_factory=list)
    # runs of each task by an LLM / endpoint agent (paper: 10)
    repetitions: int = 10
    # runs of each task by the policy and script agents (cheap)
    fast_repetitions: int = 10
    # agents run side by side: llm, llm_no_persona, endpoint[_no_persona] (models under test); script (the plan
    # itself: a check); policy[_no_persona] (the persona policy, which ignores instructions: a floor)
    agents: list[str] = field(default_factory=lambda: ["llm", "llm_no_persona", "policy", "script"])
    # simulate RUN_DIR whose policy.npz the policy agent uses (agent: policy)
    policy_model: Path | None = None
    # episodes at once
    concurrency: int = 16
    # seed of the task set and persona draws
    seed: int = 0
    # the storefront and its agent environment (30-step budget …)
    storefront: StorefrontConfig = field(default_factory=StorefrontConfig)
    # the LLM agent on a local checkpoint
    llm: LLMConfig = field(default_factory=LLMConfig)
    # the LLM agent on an endpoint
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)


def build_tasks(cfg: TasksConfig) -> list[Task]:
    from simpersona.contracts.split import load_split
    from simpersona.storefront.catalog import load_catalog

    shops_obj = load_catalog(Path(cfg.ingest) / "catalog.parquet")
    split = load_split(cfg.split)
    titles_of = {s: sorted({p.title for p in shop.products.values() if p.title}) for s, shop in shops_obj.items()}
    if cfg.shops:
        few = [s for s in cfg.shops if len(titles_of.get(s, ())) < MIN_TITLES]
        if few:
            raise ConfigError(f"evaluate.instructions.shops {few}: not in the catalog or fewer than {MIN_TITLES} product titles "
                              "(the tasks name up to six distinct products)")
    # small real shops (a brand with two products) cannot hold the six-product tasks: the first shops that can
    shops = list(cfg.shops) or sorted(s for s in shops_obj if (split is None or s in split.eval)
                                      and len(titles_of[s]) >= MIN_TITLES)[: cfg.max_shops]
    tasks = []
    for i, s in enumerate(shops):
        titles = titles_of[s]
        tasks += make_tasks(s, titles, shops_obj[s].collections(24), np.random.default_rng([cfg.seed, i]))
    unknown = set(cfg.templates) - {t.template for t in tasks}
    if unknown and tasks:
        raise ConfigError(f"evaluate.instructions.templates: unknown template(s) {sorted(unknown)}")
    return [t for t in tasks if not cfg.templates or t.template in cfg.templates]


def run(cfg: TasksConfig, run_dir: Path) -> dict[str, Any]:
    """Run every task with every agent of cfg.agents; write the tasks, one simulation per agent, runs.json."""
    from simpersona.simulate import cards, stage

    if cfg.ingest is None:
        raise ConfigError("the instruction tasks need ingest DIR (catalog.parquet)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tasks = build_tasks(cfg)
    (run_dir / "tasks.json").write_text(json.dumps({"tasks": [asdict(t) for t in tasks]}, indent=1) + "\n")
    mix = None
    if cfg.personas is not None:
        from simpersona.personas.assign import PersonaMix

        mix = PersonaMix(cfg.personas)
    rng = np.random.default_rng(cfg.seed)
    draws = []  # (task index, repetition, code, seed): the same for every agent
    for ti, t in enumerate(tasks):
        for r in range(max(cfg.repetitions, cfg.fast_repetitions)):
            code = int(mix.sample_population(t.shop_id, 1, rng).codes[0]) if mix is not None and t.shop_id in mix.mix else None
            draws.append((ti, r, code, int(rng.integers(1 << 31))))
    base = stage.SimulateConfig(ingest=cfg.ingest, personas=cfg.personas, split=cfg.split, concurrency=cfg.concurrency,
                                seed=cfg.seed, storefront=cfg.storefront, llm=cfg.llm, endpoint=cfg.endpoint)
    runs: dict[str, Any] = {}
    for name in cfg.agents:
        sim = cards.variant(base, "policy") if name == "script" else cards.variant(base, name)
        out = run_dir / name
        why = cards.unavailable(sim) if name != "script" else None
        if sim.agent == "policy" and name != "script" and cfg.policy_model is None:
            why = "no policy_model (a simulate RUN_DIR/policy.npz)"
        if why is not None:
            runs[name] = {"status": "not run", "reason": why}
            continue
        out.mkdir(parents=True, exist_ok=True)
        reps = cfg.repetitions if sim.agent in ("llm", "endpoint") else cfg.fast_repetitions
        specs = [EpisodeSpec(tasks[ti].shop_id, f"task{ti:03d}r{r:02d}", f"task{ti:03d}r{r:02d}s", code, "", "task", tasks[ti].instruction,
                             seed, persona=sim.persona and code is not None, tag=tasks[ti].task_id)
                 for ti, r, code, seed in draws if r < reps]
        backend, card = None, {"name": "script", "agent": "script", "persona_token": False}
        if name == "script":
            from simpersona.agents.script import ScriptAgent

            by_id = {t.task_id: t for t in tasks}
            make_agent = lambda spec: ScriptAgent(by_id[spec.tag].plan)  # noqa: E731
        elif sim.agent == "policy":
            from simpersona.agents.policy import PolicyAgent, PolicyModel

            model = PolicyModel.load(cfg.policy_model)
            make_agent = lambda spec: PolicyAgent(model, np.random.default_rng(spec.seed))  # noqa: E731
            card = cards.agent_card(sim, cfg.policy_model)
        else:
            make_agent, backend, _ = stage.make_agents(sim, out)
            card = cards.agent_card(sim)
        episodes, events, wall = stage.simulate(sim, out, specs, Path(cfg.ingest) / "catalog.parquet", make_agent)
        pq.write_table(events, out / "events.parquet")
        shutil.copyfile(Path(cfg.ingest) / "catalog.parquet", out / "catalog.parquet")
        pq.write_table(stage.episodes_table(episodes), out / "episodes.parquet")
        summary = stage.summarise(episodes, wall, events.num_rows, backend)
        summary.update(tasks=len(tasks), repetitions=reps, agent=name, agent_card=card,
                       data=cards.data_card(Path(cfg.ingest), sorted({t.shop_id for t in tasks}), cfg.split))
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        runs[name] = {"status": "run", "dir": name, "episodes": summary["episodes"], "wall_s": summary["wall_s"]}
    (run_dir / "runs.json").write_text(json.dumps(runs, indent=2) + "\n")
    write_meta(run_dir, "simulate.instructions", cfg, runs=runs)
    return runs


def load_tasks(run_dir: Path) -> tuple[list[Task], dict[str, Any]]:
    """(tasks, runs: agent → folder or "not run" reason) of a RUN_DIR written by `run`."""
    data = json.loads((Path(run_dir) / "tasks.json").read_text())
    runs = json.loads((Path(run_dir) / "runs.json").read_text())
    return [Task(**{**t, "plan": [tuple(op) for op in t["plan"]]}) for t in data["tasks"]], runs
