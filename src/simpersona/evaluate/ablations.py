"""`simpersona evaluate ablations`: persona token vs none (App. I, Table 9) and two-stage vs
single-stage SFT (App. F, Tables 7–8).

- token: the same population (same codes, goals, seeds) simulated twice under NEUTRAL intents
  ("You are interested in …"), with and without the persona token (`simulate.persona`), with the
  configured agent. Reported per condition: crashes (and context-length errors), goal reached,
  add-to-cart events, sessions reaching checkout, and on goal-reached episodes the mean actions,
  pages visited (logged page events) and products viewed; shops with a higher crash rate without
  the token.
- stages: the LLM agent on SFT_DIR/stage2 (two-stage) and SFT_DIR/single (single-stage) on the
  same population (stratum intents): outcome counts and the spread of per-shop error rates
  (error = not goal reached). Needs both checkpoints: otherwise reported "not run" with the reason.
Writes ablations.json / .md, meta.json; each condition's simulation under its own subfolder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simpersona.config import write_meta
from simpersona.simulate.stage import SimulateConfig

PAPER_TABLE9 = {"with": {"crash_rate": 0.053, "goal_reached": 0.787, "atc_events": 16132, "checkout_reached": 7823,
                         "actions": 11.1, "pages": 3.9, "products": 1.39},
                "without": {"crash_rate": 0.156, "goal_reached": 0.753, "atc_events": 13698, "checkout_reached": 6664,
                            "actions": 9.1, "pages": 3.6, "products": 1.29}}
PAPER_TABLE7 = {"two_stage": {"goal_reached": 0.835, "steps_limit": 0.131, "time_limit": 0.012, "other": 0.022},
                "single_stage": {"goal_reached": 0.828, "steps_limit": 0.126, "time_limit": 0.0, "other": 0.046}}


@dataclass
class AblationsConfig:
    # the simulation both conditions share (ingest, personas, buyers, agent …)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    # SFT run folder holding stage2/ and single/ checkpoints (for the stages ablation)
    sft: Path | None = None
    # ablations to run: token, stages
    which: list[str] = field(default_factory=lambda: ["token", "stages"])


def token_metrics(stats) -> dict[str, Any]:
    """Table 9's rows for one condition (an episode_stats table)."""
    r = stats.to_pylist()
    n = max(len(r), 1)
    ok = [x for x in r if x["outcome"] == "goal_reached"]
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {"episodes": len(r), "crashes": sum(x["outcome"] == "crash" for x in r),
            "crash_rate": sum(x["outcome"] == "crash" for x in r) / n,
            "context_length": sum(x["failure"] == "context_length" for x in r),
            "malformed": sum(x["outcome"] == "malformed" for x in r),
            "goal_reached": len(ok) / n, "atc_events": int(sum(x["n_add_to_cart"] for x in r)),
            "checkout_reached": int(sum(bool(x["has_checkout"]) for x in r)),
            "actions": mean([x["steps"] for x in ok]), "pages": mean([x["n_events"] for x in ok]),
            "products": mean([x["n_product_view"] for x in ok])}


def per_shop_rate(stats, bad) -> dict[str, float]:
    out: dict[str, list[bool]] = {}
    for x in stats.to_pylist():
        out.setdefault(x["shop_id"], []).append(bad(x))
    return {s: float(np.mean(v)) for s, v in sorted(out.items())}


def _simulate(cfg: SimulateConfig, out: Path):
    from simpersona.simulate import stage
    from simpersona.simulate.logs import episode_stats

    summary = stage.run(cfg, out, echo=lambda s: None)
    return summary, episode_stats(out)


def run(cfg: AblationsConfig, out_dir: Path) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"paper": {"table9": PAPER_TABLE9, "table7": PAPER_TABLE7}}
    if "token" in cfg.which:
        res = {}
        for name, persona in (("with", True), ("without", False)):
            sim = dataclasses.replace(cfg.simulate, intent="neutral", persona=persona)
            _, st = _simulate(sim, out_dir / f"token_{name}")
            res[name] = token_metrics(st)
            res[name]["crash_by_shop"] = per_shop_rate(st, lambda x: x["outcome"] == "crash")
        shops = set(res["with"]["crash_by_shop"]) & set(res["without"]["crash_by_shop"])
        res["shops_higher_crash_without"] = sum(res["without"]["crash_by_shop"][s] > res["with"]["crash_by_shop"][s] for s in shops)
        res["shops"] = len(shops)
        res["agent"] = cfg.simulate.agent
        report["token"] = res
    if "stages" in cfg.which:
        ckpts = {"two_stage": Path(cfg.sft or "") / "stage2", "single_stage": Path(cfg.sft or "") / "single"}
        missing = [str(p) for p in ckpts.values() if not (p / "config.json").exists()]
        if cfg.sft is None or missing:
            why = "no SFT folder given (sft)" if cfg.sft is None else f"missing checkpoint(s) {missing}"
            report["stages"] = {"status": "not run", "reason": f"needs the two-stage and single-stage SFT checkpoints: {why}"}
        else:
            res = {"status": "run"}
            for name, path in ckpts.items():
                sim = dataclasses.replace(cfg.simulate, agent="llm", llm=dataclasses.replace(cfg.simulate.llm, checkpoint=path))
                summary, st = _simulate(sim, out_dir / name)
                n = max(summary["episodes"], 1)
                err = per_shop_rate(st, lambda x: x["outcome"] != "goal_reached")
                v = np.array(list(err.values())) if err else np.zeros(1)
                res[name] = {"outcomes": summary["outcomes"], "shares": {k: c / n for k, c in summary["outcomes"].items()},
                             "error_rate_by_shop": err, "error_std_pp": float(100 * v.std()), "error_min": float(v.min()),
                             "error_max": float(v.max()), "shops_below_10pct": int((v < 0.10).sum()),
                             "shops_above_30pct": int((v > 0.30).sum()), "shops_above_50pct": int((v > 0.50).sum())}
            report["stages"] = res
    (out_dir / "ablations.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "ablations.md").write_text(format_report(report) + "\n")
    write_meta(out_dir, "evaluate.ablations", cfg)
    return report


def format_report(report: dict[str, Any]) -> str:
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    num = lambda v: "–" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = []
    if "token" in report:
        t, p = report["token"], report["paper"]["table9"]
        lines += [f"Table 9 (persona token vs none, neutral intents; agent {t['agent']})", "",
                  "| metric | with token | no token | paper with | paper without |", "|---|---|---|---|---|"]
        for m in ("crash_rate", "goal_reached"):
            lines.append(f"| {m} | {pct(t['with'][m])} | {pct(t['without'][m])} | {pct(p['with'][m])} | {pct(p['without'][m])} |")
        for m in ("atc_events", "checkout_reached", "actions", "pages", "products"):
            lines.append(f"| {m} | {num(t['with'][m])} | {num(t['without'][m])} | {p['with'][m]} | {p['without'][m]} |")
        lines.append(f"\nShops with a higher crash rate without the token: {t['shops_higher_crash_without']}/{t['shops']} (paper 38/42).")
    if "stages" in report:
        s = report["stages"]
        lines += ["", "Table 7–8 (two-stage vs single-stage SFT)", ""]
        if s.get("status") != "run":
            lines.append(f"not run: {s['reason']}")
        else:
            lines += ["| | two-stage | single-stage |", "|---|---|---|"]
            for k in s["two_stage"]["shares"]:
                lines.append(f"| {k} | {pct(s['two_stage']['shares'][k])} | {pct(s['single_stage']['shares'][k])} |")
            for k in ("error_std_pp", "error_min", "error_max", "shops_below_10pct", "shops_above_30pct", "shops_above_50pct"):
                lines.append(f"| {k} | {num(s['two_stage'][k])} | {num(s['single_stage'][k])} |")
    return "\n".join(lines)
