"""`simpersona evaluate instructions`: instruction following (§3.4, Table 4, App. J), judged from
the storefront's event log of a `simulate.instructions` run (the tasks and their runs).

A task run is completed when the session's event counts reach the task's required ones
(searches, product views, add-to-carts, checkout start, purchase) and an "abandon" task has no
purchase. Reported per template and per type: runs, steps per run, self-reported goal reached,
completion, and funnel progression (cart tasks → added to cart, checkout tasks → reached
checkout, purchase tasks → reached checkout and purchased), beside the paper's Table 4; one
column per agent of the simulation (the LLM agent, without its persona token, the fast policy's
floor, the script's check), each naming its agent and checkpoint. Every rate carries its 95%
Wilson interval; `completed_when_claimed` is the precision of the agent's self-reported
goal_reached against the judge (`claimed_when_completed` its recall).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simpersona.config import ConfigError, write_meta
from simpersona.evaluate.stats import wilson_ci
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
    """Judge every run of every agent of the simulation; write instructions.json / .md and meta.json."""
    if cfg.simulation is None:
        raise ConfigError("evaluate instructions needs simulation DIR (a simulate.instructions output)")
    sim_dir = Path(cfg.simulation)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks, runs = load_tasks(sim_dir)
    report: dict[str, Any] = {"tasks": len(tasks), "paper": PAPER_TABLE4, "agents": {},
                              "task_list": [{"task_id": t.task_id, "kind": t.kind, "nav": t.nav, "instruction": t.instruction} for t in tasks]}
    for name, info in runs.items():
        report["agents"][name] = judge_agent(sim_dir / info["dir"], tasks) if info["status"] == "run" else dict(info)
    (out_dir / "instructions.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "instructions.md").write_text(format_table(report) + "\n")
    write_meta(out_dir, "evaluate.instructions", cfg, runs={a: r.get("runs", 0) for a, r in report["agents"].items()})
    return report


def judge_agent(agent_dir: Path, tasks: list[Task]) -> dict[str, Any]:
    """One agent's runs judged: per template, per task type and overall (`_aggregate`), with its agent and data cards."""
    from simpersona.simulate.logs import episode_stats

    by_id = {t.task_id: t for t in tasks}
    rows = episode_stats(agent_dir).to_pylist()
    for r in rows:
        r["completed"] = judge(by_id[r["tag"]], {k: int(r[f"n_{k}"]) for k in REQ_KEYS})
    summary = json.loads((agent_dir / "summary.json").read_text())
    out: dict[str, Any] = {"status": "run", "agent": summary.get("agent_card"), "data": summary.get("data"), "runs": len(rows),
                           "templates": {}, "types": {}, "simulation": summary}
    for group, key in (("templates", lambda t: t.template), ("types", lambda t: t.kind)):
        for name in sorted({key(t) for t in tasks}):
            out[group][name] = _aggregate([r for r in rows if key(by_id[r["tag"]]) == name])
    out["overall"] = _aggregate(rows)
    return out


# The rates `_aggregate` reports, each as (numerator flag, rows it is taken over: all / claimed / completed).
RATES = {"self_reported": ("self_reported_goal", None), "completed": ("completed", None),
         "completed_when_claimed": ("completed", "self_reported_goal"), "claimed_when_completed": ("self_reported_goal", "completed"),
         "reached_atc": ("has_atc", None), "reached_checkout": ("has_checkout", None), "purchased": ("has_purchase", None)}


def _aggregate(rs: list[dict]) -> dict[str, Any]:
    """Runs, mean steps, every rate of RATES with its count, base and 95% Wilson interval, outcome counts."""
    if not rs:
        return {"runs": 0}
    out: dict[str, Any] = {"runs": len(rs), "steps": float(np.mean([r["steps"] for r in rs])), "n": {}, "ci": {}}
    for name, (flag, over) in RATES.items():
        base = [r for r in rs if over is None or r[over]]
        k = sum(bool(r[flag]) for r in base)
        out[name] = k / len(base) if base else None
        out["n"][name] = [k, len(base)]
        out["ci"][name] = wilson_ci(k, len(base))
    out["outcomes"] = {o: sum(r["outcome"] == o for r in rs) for o in sorted({r["outcome"] for r in rs})}
    return out


# Table 4's rows: (label, task type or None = overall, metric, paper key or None)
ROWS = (("self-reported goal reached", None, "self_reported", "self_reported"), ("judged completed", None, "completed", None),
        ("precision of self-reported goal_reached (judged completed | claimed)", None, "completed_when_claimed", None),
        ("cart tasks → added to cart", "cart", "reached_atc", "cart->atc"),
        ("checkout tasks → reached checkout", "checkout", "reached_checkout", "checkout->checkout"),
        ("purchase tasks → reached checkout", "purchase", "reached_checkout", "purchase->checkout"),
        ("purchase tasks → purchased", "purchase", "purchased", None))


def rate_text(agg: dict[str, Any] | None, metric: str) -> str:
    """`62.5% [30.6, 86.3] (5/8)`: a rate with its Wilson interval and counts; – without runs."""
    if not agg or agg.get(metric) is None:
        return "–"
    lo, hi = agg["ci"][metric]
    k, n = agg["n"][metric]
    return f"{100 * agg[metric]:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({k}/{n})"


def format_table(report: dict[str, Any]) -> str:
    """Table 4: one column per agent beside the paper's, then the agents (checkpoint, data) and per-template rows."""
    from simpersona.simulate.cards import agent_label, data_label

    pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    ran = {a: r for a, r in report["agents"].items() if r["status"] == "run"}
    p = report["paper"]
    head = "| metric | " + " | ".join(ran) + " | paper (SimPersona) |"
    rows = [head, "|" + "---|" * (len(ran) + 2), "| runs | " + " | ".join(str(r["runs"]) for r in ran.values()) + " | – |",
            "| avg steps per run | " + " | ".join(f"{r['overall']['steps']:.1f}" if r["runs"] else "–" for r in ran.values())
            + f" | {p['steps']} |"]
    for label, kind, metric, paper in ROWS:
        cells = [rate_text(r["overall"] if kind is None else r["types"].get(kind), metric) for r in ran.values()]
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {pct(p[paper]) if paper else '–'} |")
    who = [f"- {a}: {agent_label(r['agent'])}" for a, r in ran.items()]
    who += [f"- {a}: not run ({r['reason']})" for a, r in report["agents"].items() if r["status"] != "run"]
    data = next((data_label(r["data"]) for r in ran.values()), "")
    per = ["", "| agent | template | runs | steps | self-reported | completed |", "|---|---|---|---|---|---|"]
    for a, r in ran.items():
        for name, t in r["templates"].items():
            if t["runs"]:
                per.append(f"| {a} | {name} | {t['runs']} | {t['steps']:.1f} | {pct(t['self_reported'])} | {pct(t['completed'])} |")
    return (f"Table 4 (instruction following) — {report['tasks']} tasks; {data}; rates with 95% Wilson intervals (k/n)\n\n"
            + "\n".join(rows) + "\n\nAgents:\n" + "\n".join(who) + "\n" + "\n".join(per))
