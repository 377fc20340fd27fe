"""`simpersona evaluate instructions`: instruction following (§3.4, Table 4, App. J), judged from
the storefront's event log of a `simulate.instructions` run (the tasks and their runs).

A task run is completed when the session's event counts reach the task's required ones
(searches, product views, add-to-carts, checkout start, purchase) and an "abandon" task has no
purchase. Reported per template and per type: runs, steps per run, self-reported goal reached,
completion, and funnel progression (cart tasks → added to cart, checkout tasks → reached
checkout, purchase tasks → reached checkout and purchased), beside the paper's Table 4.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simpersona.config import ConfigError, write_meta
from simpersona.simulate.instructions import REQ_KEYS, Task, load_tasks

PAPER_TABLE4 = {"steps": 14.9, "self_reported": 0.777, "cart->atc": 0.914, "checkout->checkout": 0.769,
                "purchase->checkout": 0.593}


@dataclass
class InstructionsConfig:
    # output folder of the instruction tasks' simulation (`simulate.instructions`: tasks.json, episodes, events)
    simulation: Path | None = None


def judge(task: Task, counts: dict[str, int]) -> bool:
    """Completed: every required count reached, and no purchase on an abandon task.

    >>> t = Task("t", "s", "cart3", "cart", 3, "", {"add_to_cart": 1}, False, [])
    >>> judge(t, {"add_to_cart": 1}), judge(t, {"product_view": 3})
    (True, False)
    """
    ok = all(counts.get(k, 0) >= n for k, n in task.need.items())
    return ok and not (task.no_purchase and counts.get("purchase", 0) > 0)


def run(cfg: InstructionsConfig, out_dir: Path) -> dict[str, Any]:
    """Judge every run of the simulation's tasks; write instructions.json / .md and meta.json."""
    from simpersona.simulate.logs import episode_stats

    if cfg.simulation is None:
        raise ConfigError("evaluate instructions needs simulation DIR (a simulate.instructions output)")
    sim_dir = Path(cfg.simulation)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks, agent = load_tasks(sim_dir)
    by_id = {t.task_id: t for t in tasks}
    rows = episode_stats(sim_dir).to_pylist()
    for r in rows:
        counts = {k: int(r[f"n_{k}"]) for k in REQ_KEYS}
        r["completed"] = judge(by_id[r["tag"]], counts)
    report = {"tasks": len(tasks), "runs": len(rows), "agent": agent, "templates": {}, "types": {},
              "simulation": json.loads((sim_dir / "summary.json").read_text()), "paper": PAPER_TABLE4,
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
