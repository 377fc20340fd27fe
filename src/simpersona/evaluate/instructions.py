"""`simpersona evaluate instructions`: instruction following on deterministic tasks (§3.4, Table 4, App. J).

Task templates (App. J, Table 10; `nav` counts the navigation actions the instruction names):

    browse3    open a collection, view two of its products, end                          (browse)
    cart3      search one product, view it, add it to the cart, end                       (cart)
    co5        search one product, view it, add it, go to checkout, leave without buying  (checkout)
    co7        search two products, view each, add one, go to checkout, leave             (checkout)
    co10       search three products, view each, add one, view the first again, checkout, leave (checkout)
    buy16      view four products, add one, view two more, add another, check out and buy (purchase)
    buy27      search and view six products, add three, view two again, check out and buy (purchase)

Products (and so queries: product titles) are drawn per shop with a seed, so the task set is
deterministic. Each task runs `repetitions` times. The judge reads the storefront's event log of
the run's session: a task is completed when its event counts reach the required ones (searches,
product views, add-to-carts, checkout start, purchase) and an "abandon" task has no purchase.
Reported per template and per type: runs, steps per run, self-reported goal reached, completion,
and funnel progression (cart tasks → added to cart, checkout tasks → reached checkout, purchase
tasks → reached checkout and purchased), beside the paper's Table 4.

Agents: llm (an SFT checkpoint), endpoint (OpenAI-compatible), script (follows the task's plan
exactly: checks that every task is feasible in the step budget and that the judge accepts it),
policy (the persona policy, which ignores instructions: a floor).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simpersona.agents.base import Decision
from simpersona.agents.llm import EndpointConfig, LLMConfig
from simpersona.agents.policy import CHECKOUT_VALUES, _VALUE, elements, page_type
from simpersona.config import ConfigError, write_meta
from simpersona.storefront.config import StorefrontConfig

PAPER_TABLE4 = {"steps": 14.9, "self_reported": 0.777, "cart->atc": 0.914, "checkout->checkout": 0.769,
                "purchase->checkout": 0.593}
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


def judge(task: Task, counts: dict[str, int]) -> bool:
    """Completed: every required count reached, and no purchase on an abandon task.

    >>> t = Task("t", "s", "cart3", "cart", 3, "", {"add_to_cart": 1}, False, [])
    >>> judge(t, {"add_to_cart": 1}), judge(t, {"product_view": 3})
    (True, False)
    """
    ok = all(counts.get(k, 0) >= n for k, n in task.need.items())
    return ok and not (task.no_purchase and counts.get("purchase", 0) > 0)


class ScriptAgent:
    """Follows a task's plan exactly (the reference the judge must accept)."""

    backend = None

    def __init__(self, plan: list[tuple]):
        self.plan = list(plan)

    def reset(self, goal: str, persona: int | None) -> None:
        self.i = 0

    def act(self, observation: dict[str, Any]) -> Decision:
        els = elements(str(observation.get("page", "")))
        state = page_type(str(observation.get("url", "")))
        while self.i < len(self.plan):
            op = self.plan[self.i]
            if op[0] == "search":
                self.i += 1
                return Decision({"action": "search", "query": op[1][:200]})
            if op[0] == "collection":
                self.i += 1
                return Decision({"action": "click", "element_id": f"collection-{op[1]}"})
            if op[0] in ("view", "view_any"):
                self.i += 1
                prods = [e for e, (k, label) in els.items() if e.startswith("product-")]
                exact = [e for e in prods if op[0] == "view" and els[e][1].strip() == op[1]]
                if exact or prods:
                    return Decision({"action": "click", "element_id": (exact or prods)[0]})
                continue
            if op[0] == "back":
                self.i += 1
                return Decision({"action": "back"})
            if op[0] == "add":
                self.i += 1
                return Decision({"action": "add_to_cart", "quantity": 1})
            if op[0] == "checkout":
                self.i += 1
                return Decision({"action": "checkout"})
            if op[0] == "buy":
                if state != "checkout":
                    return Decision({"action": "checkout"})
                for fid, value in CHECKOUT_VALUES.items():
                    m = _VALUE.search(els.get(fid, ("", ""))[1])
                    if fid in els and not (m and m.group(1)):
                        return Decision({"action": "fill", "element_id": fid, "value": value})
                self.i += 1
                return Decision({"action": "click", "element_id": "place-order"})
            if op[0] == "end":
                self.i += 1
                return Decision({"action": "end_session", "goal_reached": True})
        return Decision({"action": "end_session", "goal_reached": True})


@dataclass
class InstructionsConfig:
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
    # runs of each task (paper: 10)
    repetitions: int = 10
    # llm / endpoint: the model under test; script: the plan itself (a check); policy: persona policy floor
    agent: Literal["llm", "endpoint", "script", "policy"] = "llm"
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


def build_tasks(cfg: InstructionsConfig) -> list[Task]:
    from simpersona.contracts.split import load_split
    from simpersona.storefront.catalog import load_catalog

    shops_obj = load_catalog(Path(cfg.ingest) / "catalog.parquet")
    split = load_split(cfg.split)
    shops = list(cfg.shops) or sorted(s for s in shops_obj if split is None or s in split.eval)[: cfg.max_shops]
    tasks = []
    for i, s in enumerate(shops):
        titles = sorted({p.title for p in shops_obj[s].products.values() if p.title})
        tasks += make_tasks(s, titles, shops_obj[s].collections(24), np.random.default_rng([cfg.seed, i]))
    return tasks


def run(cfg: InstructionsConfig, out_dir: Path) -> dict[str, Any]:
    from simpersona.simulate.logs import episode_stats
    from simpersona.simulate.runner import EpisodeSpec
    from simpersona.simulate.stage import SimulateConfig, episodes_table, simulate, summarise

    if cfg.ingest is None:
        raise ConfigError("evaluate instructions needs --ingest DIR (catalog.parquet)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = build_tasks(cfg)
    by_id = {t.task_id: t for t in tasks}
    mix = None
    if cfg.personas is not None:
        from simpersona.personas.assign import PersonaMix

        mix = PersonaMix(cfg.personas)
    rng = np.random.default_rng(cfg.seed)
    specs = []
    for ti, t in enumerate(tasks):
        for r in range(cfg.repetitions):
            code = int(mix.sample_population(t.shop_id, 1, rng).tokens[0]) if mix is not None and t.shop_id in mix.mix else -1
            specs.append(EpisodeSpec(t.shop_id, f"task{ti:03d}r{r:02d}", f"task{ti:03d}r{r:02d}s", code, "", "task", t.instruction,
                                     int(rng.integers(1 << 31)), persona=code >= 0, tag=t.task_id))
    sim = SimulateConfig(ingest=cfg.ingest, personas=cfg.personas, agent="policy" if cfg.agent == "script" else cfg.agent,
                         concurrency=cfg.concurrency, seed=cfg.seed, storefront=cfg.storefront, llm=cfg.llm, endpoint=cfg.endpoint)
    backend = None
    if cfg.agent == "script":
        make_agent = lambda spec: ScriptAgent(by_id[spec.tag].plan)  # noqa: E731
    elif cfg.agent == "policy":
        from simpersona.agents.policy import PolicyAgent, PolicyModel

        if cfg.policy_model is None:
            raise ConfigError("agent policy needs policy_model (a simulate RUN_DIR/policy.npz)")
        model = PolicyModel.load(cfg.policy_model)
        make_agent = lambda spec: PolicyAgent(model, np.random.default_rng(spec.seed))  # noqa: E731
    else:
        from simpersona.simulate.stage import make_agents

        make_agent, backend, _ = make_agents(sim, out_dir)
    episodes, events, wall = simulate(sim, out_dir, specs, Path(cfg.ingest) / "catalog.parquet", make_agent)
    import pyarrow.parquet as pq
    import shutil

    pq.write_table(events, out_dir / "events.parquet")
    shutil.copyfile(Path(cfg.ingest) / "catalog.parquet", out_dir / "catalog.parquet")
    pq.write_table(episodes_table(episodes), out_dir / "episodes.parquet")
    stats = episode_stats(out_dir)
    rows = stats.to_pylist()
    for r in rows:
        counts = {k: int(r[f"n_{k}"]) for k in REQ_KEYS}
        r["completed"] = judge(by_id[r["tag"]], counts)
    report = {"tasks": len(tasks), "runs": len(rows), "agent": cfg.agent, "templates": {}, "types": {},
              "simulation": summarise(episodes, wall, events.num_rows, backend), "paper": PAPER_TABLE4,
              "task_list": [{"task_id": t.task_id, "kind": t.kind, "nav": t.nav, "instruction": t.instruction} for t in tasks]}
    for group, key in (("templates", lambda t: t.template), ("types", lambda t: t.kind)):
        for name in sorted({key(t) for t in tasks}):
            rs = [r for r in rows if key(by_id[r["tag"]]) == name]
            report[group][name] = _aggregate(rs, by_id)
    report["overall"] = _aggregate(rows, by_id)
    (out_dir / "instructions.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "instructions.md").write_text(format_table(report) + "\n")
    write_meta(out_dir, "evaluate.instructions", cfg, runs=len(rows))
    return report


def _aggregate(rs: list[dict], by_id: dict[str, Task]) -> dict[str, Any]:
    if not rs:
        return {"runs": 0}
    mean = lambda xs: float(np.mean(xs)) if len(xs) else None  # noqa: E731
    claimed = [r for r in rs if r["self_reported_goal"]]
    return {"runs": len(rs), "steps": mean([r["steps"] for r in rs]),
            "self_reported": mean([r["self_reported_goal"] for r in rs]),
            "completed": mean([r["completed"] for r in rs]),
            "completed_when_claimed": mean([r["completed"] for r in claimed]),
            "reached_atc": mean([r["has_atc"] for r in rs]), "reached_checkout": mean([r["has_checkout"] for r in rs]),
            "purchased": mean([r["has_purchase"] for r in rs]),
            "outcomes": {o: sum(r["outcome"] == o for r in rs) for o in sorted({r["outcome"] for r in rs})}}


def format_table(report: dict[str, Any]) -> str:
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    o, t, p = report["overall"], report["types"], report["paper"]
    rows = ["| metric | ours | paper (SimPersona) |", "|---|---|---|",
            f"| avg steps per run | {o['steps']:.1f} | {p['steps']} |",
            f"| self-reported goal reached | {pct(o['self_reported'])} | {pct(p['self_reported'])} |",
            f"| judged completed | {pct(o['completed'])} | – |",
            f"| cart tasks → added to cart | {pct(t.get('cart', {}).get('reached_atc'))} | {pct(p['cart->atc'])} |",
            f"| checkout tasks → reached checkout | {pct(t.get('checkout', {}).get('reached_checkout'))} | {pct(p['checkout->checkout'])} |",
            f"| purchase tasks → reached checkout | {pct(t.get('purchase', {}).get('reached_checkout'))} | {pct(p['purchase->checkout'])} |",
            f"| purchase tasks → purchased | {pct(t.get('purchase', {}).get('purchased'))} | – |"]
    per = ["", "| template | runs | steps | self-reported | completed |", "|---|---|---|---|---|"]
    for name, r in report["templates"].items():
        per.append(f"| {name} | {r['runs']} | {r['steps']:.1f} | {pct(r['self_reported'])} | {pct(r['completed'])} |")
    return (f"Table 4 (instruction following) — {report['tasks']} tasks × repetitions = {report['runs']} runs, agent {report['agent']}\n\n"
            + "\n".join(rows + per))
