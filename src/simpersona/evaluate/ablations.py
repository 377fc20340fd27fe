"""`simpersona evaluate ablations`: persona token vs none (App. I, Table 9) and two-stage vs
single-stage SFT (App. F, Tables 7–8), read from a `simulate.ablations` run folder.

- token (per agent: token_<agent>_with/ vs token_<agent>_without/): per condition crashes (and
  context-length errors), goal reached, add-to-cart events, sessions reaching checkout, and on
  goal-reached episodes the mean actions, pages visited (logged page events) and products viewed;
  shops with a higher crash rate without the token. The add-to-cart and checkout session rates
  carry 95% Wilson intervals, and with vs without is tested by the exact McNemar test on the
  paired episodes (the same buyer, goal and seed run both ways). Each agent names its checkpoint.
- stages (two_stage/ vs single_stage/): outcome counts and the spread of per-shop error rates
  (error = not goal reached); "not run" with the simulation's reason when it did not run.
Writes ablations.json / .md, meta.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simpersona.config import ConfigError, write_meta
from simpersona.evaluate.stats import mcnemar_p, wilson_ci

PAPER_TABLE9 = {"with": {"crash_rate": 0.053, "goal_reached": 0.787, "atc_events": 16132, "checkout_reached": 7823,
                         "actions": 11.1, "pages": 3.9, "products": 1.39},
                "without": {"crash_rate": 0.156, "goal_reached": 0.753, "atc_events": 13698, "checkout_reached": 6664,
                            "actions": 9.1, "pages": 3.6, "products": 1.29}}
PAPER_TABLE7 = {"two_stage": {"goal_reached": 0.835, "steps_limit": 0.131, "time_limit": 0.012, "other": 0.022},
                "single_stage": {"goal_reached": 0.828, "steps_limit": 0.126, "time_limit": 0.0, "other": 0.046}}


@dataclass
class AblationsConfig:
    # output folder of the ablations' simulations (`simulate.ablations`: runs.json and one folder per condition)
    simulation: Path | None = None


def token_metrics(stats) -> dict[str, Any]:
    """Table 9's rows for one condition (an episode_stats table)."""
    r = stats.to_pylist()
    n = max(len(r), 1)
    ok = [x for x in r if x["outcome"] == "goal_reached"]
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    atc, co = sum(bool(x["has_atc"]) for x in r), sum(bool(x["has_checkout"]) for x in r)
    return {"episodes": len(r), "crashes": sum(x["outcome"] == "crash" for x in r),
            "atc_rate": atc / n, "atc_rate_ci": wilson_ci(atc, len(r)),
            "checkout_rate": co / n, "checkout_rate_ci": wilson_ci(co, len(r)),
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


def token_agent(sim_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Table 9 for one agent: both conditions' metrics, paired McNemar p of the ATC and checkout rates, agent and data."""
    from simpersona.simulate.logs import episode_stats

    res: dict[str, Any] = {"status": "run"}
    stats = {}
    for name in ("with", "without"):
        st = episode_stats(sim_dir / info[name])
        stats[name] = {(x["shop_id"], x["buyer_id"]): x for x in st.to_pylist()}
        res[name] = token_metrics(st)
        res[name]["crash_by_shop"] = per_shop_rate(st, lambda x: x["outcome"] == "crash")
        summary = json.loads((sim_dir / info[name] / "summary.json").read_text())
        res[name]["agent"] = summary.get("agent_card")
        res["data"] = summary.get("data")
    shops = set(res["with"]["crash_by_shop"]) & set(res["without"]["crash_by_shop"])
    res["shops_higher_crash_without"] = sum(res["without"]["crash_by_shop"][s] > res["with"]["crash_by_shop"][s] for s in shops)
    res["shops"] = len(shops)
    pairs = sorted(set(stats["with"]) & set(stats["without"]))
    res["pairs"] = len(pairs)
    for m, col in (("atc_rate", "has_atc"), ("checkout_rate", "has_checkout")):
        a = np.array([bool(stats["with"][k][col]) for k in pairs], bool)
        b = np.array([bool(stats["without"][k][col]) for k in pairs], bool)
        p = mcnemar_p(a, b)
        res[f"{m}_p"] = None if np.isnan(p) else p
    return res


def run(cfg: AblationsConfig, out_dir: Path) -> dict[str, Any]:
    """Tables 9 and 7–8 from the ablations' simulations; write ablations.json / .md and meta.json."""
    from simpersona.simulate.logs import episode_stats

    if cfg.simulation is None:
        raise ConfigError("evaluate ablations needs simulation DIR (a simulate.ablations output)")
    sim_dir = Path(cfg.simulation)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = json.loads((sim_dir / "runs.json").read_text())
    report: dict[str, Any] = {"paper": {"table9": PAPER_TABLE9, "table7": PAPER_TABLE7}}
    if "token" in runs:
        report["token"] = {agent: token_agent(sim_dir, info) if info["status"] == "run" else dict(info)
                           for agent, info in runs["token"].items()}
    if "stages" in runs:
        if runs["stages"]["status"] != "run":
            report["stages"] = dict(runs["stages"])
        else:
            res = {"status": "run", "decoding": runs["stages"].get("decoding", "constrained")}
            for name in ("two_stage", "single_stage"):
                sub = sim_dir / runs["stages"][name]
                summary = json.loads((sub / "summary.json").read_text())
                st = episode_stats(sub)
                n = max(summary["episodes"], 1)
                err = per_shop_rate(st, lambda x: x["outcome"] != "goal_reached")
                v = np.array(list(err.values())) if err else np.zeros(1)
                res[name] = {"agent": summary.get("agent_card"), "data": summary.get("data"), "episodes": summary["episodes"],
                             "outcomes": summary["outcomes"], "shares": {k: c / n for k, c in summary["outcomes"].items()},
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
    from simpersona.simulate.cards import agent_label, data_label

    pval = lambda v: "–" if v is None else f"{v:.2g}"  # noqa: E731
    lines = []
    for agent, t in (report.get("token") or {}).items():
        if t["status"] != "run":
            lines += [f"Table 9 ({agent}): not run: {t['reason']}", ""]
            continue
        p = report["paper"]["table9"]
        ci = lambda m, c: f"{pct(t[c][m])} [{pct(t[c][m + '_ci'][0])}, {pct(t[c][m + '_ci'][1])}]" if t[c][m + "_ci"] else "–"  # noqa: E731
        lines += [f"Table 9 (persona token vs none, neutral intents; agent {agent_label(t['with']['agent'])}; {data_label(t.get('data'))})", "",
                  "| metric | with token | no token | paper with | paper without |", "|---|---|---|---|---|"]
        for m in ("crash_rate", "goal_reached"):
            lines.append(f"| {m} | {pct(t['with'][m])} | {pct(t['without'][m])} | {pct(p['with'][m])} | {pct(p['without'][m])} |")
        for m in ("atc_rate", "checkout_rate"):
            lines.append(f"| {m} (McNemar p {pval(t[m + '_p'])}) | {ci(m, 'with')} | {ci(m, 'without')} | – | – |")
        for m in ("atc_events", "checkout_reached", "actions", "pages", "products"):
            lines.append(f"| {m} | {num(t['with'][m])} | {num(t['without'][m])} | {p['with'][m]} | {p['without'][m]} |")
        lines += [f"\nEpisodes {t['with']['episodes']} per condition ({t['pairs']} pairs). Shops with a higher crash rate without "
                  f"the token: {t['shops_higher_crash_without']}/{t['shops']} (paper 38/42).", ""]
    if "stages" in report:
        s = report["stages"]
        how = f", {s['decoding']} decoding" if "decoding" in s else ""
        lines += ["", f"Table 7–8 (two-stage vs single-stage SFT{how})", ""]
        if s.get("status") != "run":
            lines.append(f"not run: {s['reason']}")
        else:
            lines += [f"two-stage: {agent_label(s['two_stage'].get('agent'))}", f"single-stage: {agent_label(s['single_stage'].get('agent'))}",
                      f"{s['two_stage']['episodes']} episodes each; {data_label(s['two_stage'].get('data'))}", "",
                      "| | two-stage | single-stage |", "|---|---|---|"]
            for k in s["two_stage"]["shares"]:
                lines.append(f"| {k} | {pct(s['two_stage']['shares'][k])} | {pct(s['single_stage']['shares'][k])} |")
            for k in ("error_std_pp", "error_min", "error_max", "shops_below_10pct", "shops_above_30pct", "shops_above_50pct"):
                lines.append(f"| {k} | {num(s['two_stage'][k])} | {num(s['single_stage'][k])} |")
    return "\n".join(lines)
