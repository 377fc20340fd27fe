"""Build the report page from a run folder (`simpersona report --run RUN_DIR`).

Sections, each from the files its stage wrote where the main job writes them (`RunLayout`):
codebook usage and health (vqvae train_log.jsonl, code sizes), persona cards (cards.json),
each shop's persona mix (shop_mix.parquet), real vs recovered stratum mix per shop (buyers ⋈
assignments, code_strata), the R² chart (population.json), Tables 1–4 beside the paper's
(clustering.json, alignment.json, separation.json, instructions.json), ablations, the simulation's
outcomes and simulated vs real funnel rates, fidelity on evaluation shops (fidelity.json: next action,
distributions, per-persona scatter plots), the simulated A/B test (abtest.json: effects with
intervals and corrected p-values, power, per-stratum and per-persona effects, forest.svg). A part whose files are missing reads "not run"; a
part that fails to build says why; the page is always written. No external assets: inline CSS
and SVG only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from simpersona.config import write_meta
from simpersona.contracts.labels import STRATA
from simpersona.layout import RunLayout
from simpersona.report import svg

CSS = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:24px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
h3{font-size:15px}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.notrun{color:#a00;font-style:italic}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.small{font-size:12px;color:#555}
.card{border:1px solid #ddd;border-radius:6px;padding:6px 10px;font-size:12px;width:250px}"""


@dataclass
class ReportConfig:
    # the run folder; its parts are where the main job writes them (`simpersona.layout.RunLayout`)
    run: Path | None = None
    # persona cards shown (the largest codes)
    max_cards: int = 12
    # shops shown in per-shop charts
    max_shops: int = 40
    # file name of the page inside the output folder
    filename: str = "index.html"


def _json(p: Path) -> Any | None:
    return json.loads(p.read_text()) if p.exists() else None


def _rel(lay: RunLayout, path: Path) -> str:
    """`path` relative to the run folder (as the page names it)."""
    return path.relative_to(lay.root).as_posix()


def _notrun(what: str) -> str:
    return f'<p class="notrun">not run: {escape(what)}</p>'


def _num(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, str):
        return escape(v)
    if pct:
        return f"{100 * v:.1f}%"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else (f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3f}")


def _table(head: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{escape(str(x))}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{x if isinstance(x, str) and x.startswith('<') else _num(x) if not isinstance(x, str) else escape(x)}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


# -- sections -----------------------------------------------------------------------------------
def sec_codebook(cfg: ReportConfig, lay: RunLayout) -> str:
    log = lay.vqvae / "train_log.jsonl"
    cards = _json(lay.personas / "cards.json")
    if not log.exists() and cards is None:
        return _notrun(f"no {_rel(lay, lay.vqvae)}/train_log.jsonl or {_rel(lay, lay.personas)}/cards.json")
    out = ['<div class="row">']
    if log.exists():
        recs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        out.append(svg.lines({"usage %": [(r["step"], r.get("usage_pct", 0.0)) for r in recs if "usage_pct" in r]},
                             "Codebook usage per batch (%)", "step"))
        out.append(svg.lines({"perplexity": [(r["step"], r.get("perplexity", 0.0)) for r in recs if "perplexity" in r]},
                             "Code perplexity", "step"))
        resets = sum(int(r.get("dead_reset", 0)) for r in recs)
        summ = _json(lay.vqvae / "summary.json") or {}
        out.append(f'<p class="small">{len(recs)} steps logged; dead-code resets {resets}; '
                   f"val codes used {summ.get('val_codes_used', '–')}; best val loss {_num(summ.get('best_val_loss'))}</p>")
    else:
        out.append(_notrun(f"{_rel(lay, lay.vqvae)}/train_log.jsonl"))
    if cards:
        sizes = sorted((c.get("size", 0) for c in cards), reverse=True)
        tot = sum(sizes) or 1
        out.append(svg.lines({"share of buyers": [(i + 1, s / tot) for i, s in enumerate(sizes)]},
                             f"Code sizes, largest first ({len(sizes)} codes used)", "rank"))
    out.append("</div>")
    return "".join(out)


def sec_cards(cfg: ReportConfig, lay: RunLayout) -> str:
    cards = _json(lay.personas / "cards.json")
    if not cards:
        return _notrun(f"no {_rel(lay, lay.personas)}/cards.json")
    out = ['<div class="row">']
    for c in sorted(cards, key=lambda c: -c.get("size", 0))[: cfg.max_cards]:
        lab = c.get("labels", {})
        mix = " · ".join(f"{s} {100 * p:.0f}%" for s, p in (c.get("strata") or {}).items() if p > 0)
        top = "".join(f"<br>{escape(k)}: " + escape(", ".join(str(i[0]) for i in v[:3])) for k, v in (c.get("top") or {}).items())
        out.append(f'<div class="card"><b>persona {c["code"]}</b> — {c.get("size", 0):,} buyers ({100 * c.get("share", 0):.1f}%)'
                   f"<br>engage <b>{escape(str(lab.get('engage')))}</b>, explore <b>{escape(str(lab.get('explore')))}</b>, "
                   f"purchase <b>{escape(str(lab.get('purchase')))}</b><br>strata {escape(mix)}{top}</div>")
    return "".join(out) + "</div>"


def sec_mix(cfg: ReportConfig, lay: RunLayout) -> str:
    p = lay.personas / "shop_mix.parquet"
    if not p.exists():
        return _notrun(f"no {_rel(lay, lay.personas)}/shop_mix.parquet")
    import pyarrow.parquet as pq

    t = pq.read_table(p).to_pydict()
    shops = sorted(set(t["shop_id"]))[: cfg.max_shops]
    totals: dict[int, float] = {}
    for c, s in zip(t["code"], t["share"]):
        totals[int(c)] = totals.get(int(c), 0.0) + s
    top = [c for c, _ in sorted(totals.items(), key=lambda x: -x[1])[:9]]
    rows = []
    for s in shops:
        sh = {int(c): v for sh_, c, v in zip(t["shop_id"], t["code"], t["share"]) if sh_ == s}
        rows.append((s, [sh.get(c, 0.0) for c in top] + [1.0 - sum(sh.get(c, 0.0) for c in top)]))
    return svg.stacked(rows, [f"k{c}" for c in top] + ["other"], "Persona mix p̂_s(k) per shop (9 largest codes)")


def stratum_mixes(features: Path, personas: Path) -> dict[str, tuple[list[float], list[float]]]:
    """shop → (real stratum shares, recovered Σ_k p̂_s(k) P(stratum | k)) over A–E."""
    import duckdb

    b, a, cs = features / "buyers.parquet", personas / "assignments.parquet", personas / "code_strata.parquet"
    real = duckdb.sql(f"SELECT shop_id, stratum, count(*) FROM read_parquet('{b}') GROUP BY ALL").fetchall()
    rec = duckdb.sql(f"""WITH n AS (SELECT shop_id, code, count(*) AS n FROM read_parquet('{a}') GROUP BY ALL),
                              m AS (SELECT shop_id, code, n / sum(n) OVER (PARTITION BY shop_id) AS p FROM n)
                         SELECT m.shop_id, c.stratum, sum(m.p * c.share) FROM m JOIN read_parquet('{cs}') c USING (code) GROUP BY ALL""").fetchall()
    out: dict[str, tuple[list[float], list[float]]] = {}
    for rows, j in ((real, 0), (rec, 1)):
        for s, st, v in rows:
            out.setdefault(s, ([0.0] * 5, [0.0] * 5))[j][STRATA.index(st)] += float(v)
    return {s: ([x / (sum(r) or 1) for x in r], [x / (sum(p) or 1) for x in p]) for s, (r, p) in sorted(out.items())}


def sec_strata(cfg: ReportConfig, lay: RunLayout) -> str:
    f, p = lay.features, lay.personas
    if not (f / "buyers.parquet").exists() or not (p / "code_strata.parquet").exists():
        return _notrun(f"needs {_rel(lay, lay.features)}/buyers.parquet and {_rel(lay, lay.personas)}/code_strata.parquet")
    mixes = list(stratum_mixes(f, p).items())[: cfg.max_shops]
    rows = []
    for s, (real, rec) in mixes:
        rows += [(f"{s} real", real), (f"{s} recovered", rec)]
    pop = _json(lay.population / "population.json")
    note = ""
    if pop:
        js = pop["stratum_js"]
        note = (f'<p class="small">Stratum JS divergence (population evaluation, splits {escape(", ".join(pop["splits"]))}): '
                f"mean {_num(js['mean'])}, median {_num(js['median'])} — paper mean 0.054, median 0.045.</p>")
    return svg.stacked(rows, list(STRATA), "Stratum mix per shop: real vs recovered from codes") + note


def sec_r2(cfg: ReportConfig, lay: RunLayout) -> str:
    pop = _json(lay.population / "population.json")
    if not pop:
        return _notrun(f"no {_rel(lay, lay.population)}/population.json")
    r2 = pop["feature_r2"]
    paper = (pop.get("paper") or {}).get("r2", {})
    chart = svg.hbars([(k, v) for k, v in r2.items()], "Per-feature R² across shops (black tick: paper)", -0.2, 1.0,
                      {k: v for k, v in paper.items() if isinstance(v, (int, float))})
    return chart + f'<p class="small">{pop["n_buyers"]:,} buyers over {pop["n_shops"]} shops.</p>'


def sec_table1(cfg: ReportConfig, lay: RunLayout) -> str:
    r = _json(lay.clustering / "clustering.json")
    if not r:
        return _notrun(f"no {_rel(lay, lay.clustering)}/clustering.json")
    rows = [[m, r["kmeans"][m], r["vqvae"][m], r["paper"].get(m, {}).get("kmeans"), r["paper"].get(m, {}).get("vqvae")]
            for m in r["vqvae"]]
    return (f'<p class="small">{r["n_buyers"]:,} buyers, K = {escape(str(r["k"]))}</p>'
            + _table(["metric", "k-means (ours)", "VQ-VAE (ours)", "k-means (paper)", "VQ-VAE (paper)"], rows))


def _who(r: dict[str, Any]) -> str:
    """The agent (checkpoint, content hash) and data a figure came from (the agent and data cards its JSON carries)."""
    from simpersona.simulate.cards import agent_label, data_label

    return f'<p class="small">agent {escape(agent_label(r.get("agent")))}; {escape(data_label(r.get("data")))}</p>'


def _populations(lay: RunLayout, part: str) -> list[tuple[str, dict[str, Any] | None, str]]:
    """(agent, its Table 2 or 3 JSON or None, where/why) for the fast policy and each LLM population."""
    name = f"{part}.json"
    out = [("policy (simulate stage)", _json(getattr(lay, part) / name), f"no {_rel(lay, getattr(lay, part))}/{name}")]
    runs = _json(lay.populations / "simulation" / "runs.json") or {}
    for agent, info in runs.items():
        path = lay.populations / agent / part / name
        out.append((agent, _json(path) if info["status"] == "run" else None, info.get("reason") or f"no {_rel(lay, path)}"))
    return out


def _table2(r: dict[str, Any]) -> str:
    rows = []
    for st, row in r["table"].items():
        p = r["paper"].get(st, {})
        ci = row.get("gap_ci")
        rows.append([st, row["cells"], *row["ara"], *(p.get("ara") or [None] * 3), row["atc"][0], row["pur"][0], row.get("gap"),
                     f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "–"])
    chart = svg.grouped([(st, [row["ara"][0], row["ara"][1], row["ara"][2]]) for st, row in r["table"].items()],
                        ["correct", "all-mismatch", "1-random"], "ARA by stratum (ours)", 1.0)
    return (_who(r) + _table(["stratum", "cells", "ARA correct", "all-mis", "1-random", "paper correct", "paper all-mis", "paper 1-R",
                              "ATC align (correct)", "PUR align (correct)", "correct − all-mis", "95% CI"], rows) + chart
            + f'<p class="small">{r["episodes"]:,} simulated episodes.</p>')


def sec_table2(cfg: ReportConfig, lay: RunLayout) -> str:
    parts = _populations(lay, "alignment")
    if not any(r for _, r, _ in parts):
        return _notrun(parts[0][2])
    return "".join(f"<h3>{escape(a)}</h3>" + (_table2(r) if r else _notrun(why)) for a, r, why in parts)


def _table3(r: dict[str, Any]) -> str:
    rows = []
    for h, x in r["heads"].items():
        p = r["paper"][h]
        rows.append([h, *x["means"], x["d"], x["t_p"], x["kw_p"], x["perm_p"], p["d"], str(p["perm_p"])])
    f, pf = r["funnel"], r["paper"]["funnel"]
    frows = [[m, *(f[m]), *(pf[m])] for m in ("atc", "checkout")]
    return (_who(r) + _table(["head", "mean low", "mean med", "mean high", "Cohen's d", "Welch p", "KW p", "perm p", "paper d", "paper perm p"], rows)
            + _table(["purchase bin → rate", "low", "medium", "high", "paper low", "paper medium", "paper high"], frows)
            + f'<p class="small">{r["episodes"]:,} simulated episodes.</p>')


def sec_table3(cfg: ReportConfig, lay: RunLayout) -> str:
    parts = _populations(lay, "separation")
    if not any(r for _, r, _ in parts):
        return _notrun(parts[0][2])
    return "".join(f"<h3>{escape(a)}</h3>" + (_table3(r) if r else _notrun(why)) for a, r, why in parts)


def _checkpoint(path: Path) -> str:
    """A checkpoint as every figure made with it names it: its path and short content hash (the
    `checkpoint` entry its meta.json got from `sft.train.save_checkpoint`)."""
    ident = (_json(path / "meta.json") or {}).get("checkpoint") or {}
    where = str(path.resolve())  # where it is now (a plugged-in checkpoint: the folder the link points at)
    return f"{where} (sha256 {ident['sha256']})" if ident.get("sha256") else f"{where} (no content hash recorded)"


def sec_sft(cfg: ReportConfig, lay: RunLayout) -> str:
    meta = _json(lay.sft / "meta.json")
    if not meta:
        return _notrun(f"no {_rel(lay, lay.sft)}/meta.json")
    s = meta.get("summary", {})
    if "checkpoint" in s:
        return (f'<p class="small">Nothing trained in this run: the agent is the trained checkpoint '
                f'{escape(_checkpoint(lay.stage2))}; on this run\'s stage-2 validation records its loss is '
                f'{_num(s.get("stage2_val_loss"))} and its action accuracy {_num(s.get("stage2_val_action_accuracy"))} '
                f'(always the most common action: {_num(s.get("val_action_majority"))}).</p>')
    rows, curves = [], {}
    for name in ("stage1", "stage2", "single"):
        if name in s:
            st = s[name]
            rows.append([name, st.get("steps"), st.get("examples_per_step"), st.get("precision"), st.get("step_s_median"),
                         _num(st.get("val_loss_before")), _num(st.get("val_loss_after")),
                         _num(st.get("val_action_accuracy_before")), _num(st.get("val_action_accuracy_after")),
                         _num(st.get("val_action_majority")), _num(st.get("val_action_balanced_before")),
                         _num(st.get("val_action_balanced_after")), _checkpoint(lay.sft / name)])
            if st.get("val_curve"):
                curves[name] = [tuple(p) for p in st["val_curve"]]
    note = ('<p class="small">Action accuracy: share of validation records whose action (the answer\'s first '
            'deciding token) is the model\'s top choice given the prompt; majority: always answering the most common '
            'action. Balanced: the mean over the logged actions of the share of their records the model gets (answering '
            'every page with the commonest actions scores high accuracy and low balanced accuracy). The loss averages '
            'every answer token, most of them the reasoning sentence.</p>')
    return (_table(["stage", "steps", "examples/step", "precision", "s/step", "val loss before", "val loss after",
                    "action acc. before", "action acc. after", "majority", "balanced before", "balanced after",
                    "checkpoint"], rows) + note
            + (svg.lines(curves, "Validation loss per evaluation step (held-out shops)", "optimizer step") if curves else ""))


def sec_table4(cfg: ReportConfig, lay: RunLayout) -> str:
    from simpersona.evaluate.instructions import ROWS, rate_text
    from simpersona.simulate.cards import agent_label, data_label

    r = _json(lay.instructions / "instructions.json")
    if not r:
        return _notrun(f"no {_rel(lay, lay.instructions)}/instructions.json")
    ran = {a: x for a, x in r["agents"].items() if x["status"] == "run"}
    p = r["paper"]
    rows = [["runs", *(x["runs"] for x in ran.values()), "–"],
            ["avg steps per run", *(x["overall"].get("steps") for x in ran.values()), p["steps"]]]
    for label, kind, metric, paper in ROWS:
        rows.append([label, *(rate_text(x["overall"] if kind is None else x["types"].get(kind), metric) for x in ran.values()),
                     _num(p[paper], True) if paper else "–"])
    who = "".join(f"<li>{escape(a)}: {escape(agent_label(x['agent']))}</li>" for a, x in ran.items())
    who += "".join(f"<li>{escape(a)}: not run ({escape(x['reason'])})</li>" for a, x in r["agents"].items() if x["status"] != "run")
    data = data_label(next(iter(ran.values()), {}).get("data"))
    return (f'<p class="small">{escape(data)}; {r["tasks"]} tasks; rates with 95% Wilson intervals (k/n).</p><ul class="small">{who}</ul>'
            + _table(["metric", *ran, "paper"], rows))


def sec_ablations(cfg: ReportConfig, lay: RunLayout) -> str:
    r = _json(lay.ablations / "ablations.json")
    if not r:
        return _notrun(f"no {_rel(lay, lay.ablations)}/ablations.json")
    out = []
    p = r["paper"]["table9"]
    for agent, t in (r.get("token") or {}).items():
        out.append(f"<h3>Persona token vs none (neutral intents): {escape(agent)}</h3>")
        if t["status"] != "run":
            out.append(_notrun(t["reason"]))
            continue
        rows = [[m, t["with"][m], t["without"][m], p["with"][m], p["without"][m]] for m in
                ("crash_rate", "goal_reached", "atc_events", "checkout_reached", "actions", "pages", "products")]
        rows += [[f"{m} (95% CI)", *(f"{_num(t[c][m], True)} [{_num(t[c][m + '_ci'][0], True)}, {_num(t[c][m + '_ci'][1], True)}]"
                                     if t[c][m + "_ci"] else "–" for c in ("with", "without")), "–", "–"] for m in ("atc_rate", "checkout_rate")]
        out.append(_who({"agent": t["with"].get("agent"), "data": t.get("data")})
                   + _table(["metric", "with token", "no token", "paper with", "paper without"], rows)
                   + f'<p class="small">{t["with"]["episodes"]} episodes per condition, {t["pairs"]} pairs; with vs without, exact McNemar p: '
                   f'add-to-cart rate {_num(t["atc_rate_p"])}, checkout rate {_num(t["checkout_rate_p"])}.</p>')
    if "stages" in r:
        s = r["stages"]
        if s.get("status") != "run":
            out.append("<h3>Two-stage vs single-stage</h3>" + _notrun(s.get("reason", "")))
        else:
            rows = [[k, s["two_stage"]["shares"][k], s["single_stage"]["shares"][k]] for k in s["two_stage"]["shares"]]
            out.append("<h3>Two-stage vs single-stage</h3>" + _who(s["two_stage"]) + _who(s["single_stage"])
                       + _table(["outcome share", "two-stage", "single-stage"], rows))
    return "".join(out) or _notrun("no ablation in ablations.json")


def sec_simulation(cfg: ReportConfig, lay: RunLayout) -> str:
    s = _json(lay.simulate / "summary.json")
    a = _json(lay.alignment / "alignment.json")
    if s is None and a is None:
        return _notrun(f"no {_rel(lay, lay.simulate)}/summary.json")
    out = []
    if s is not None:
        out.append(_who({"agent": s.get("agent_card"), "data": s.get("data")})
                   + _table(["episodes", "agent", "sessions/s", "mean steps", *s["outcomes"]],
                            [[s["episodes"], s.get("agent"), s.get("sessions_per_s"), s["mean_steps"], *s["outcomes"].values()]]))
    if a and a.get("funnel"):
        rows = []
        for shop, v in list(a["funnel"].items())[: cfg.max_shops]:
            rows.append((shop, [v.get("real", {}).get("atc"), v["sim"]["atc"], v.get("real", {}).get("checkout"), v["sim"]["checkout"]]))
        out.append(svg.grouped(rows, ["ATC real", "ATC sim", "checkout real", "checkout sim"], "Simulated vs real funnel rates per shop (per session)"))
    else:
        out.append(_notrun(f"no funnel rates ({_rel(lay, lay.alignment)}/alignment.json)"))
    return "".join(out)


def _m(m: dict[str, Any] | None, digits: int = 3) -> str:
    """A fidelity figure: value [95% CI], or its note ("n too small …")."""
    if not m or m.get("value") is None:
        return (m or {}).get("note", "–")
    return f"{m['value']:.{digits}f}" + (f" [{m['ci'][0]:.{digits}f}, {m['ci'][1]:.{digits}f}]" if "ci" in m else "")


def _diff(m: dict[str, Any] | None, digits: int = 3) -> str:
    return "–" if not m else f"{m['diff']:+.{digits}f} [{m['ci'][0]:+.{digits}f}, {m['ci'][1]:+.{digits}f}]"


def sec_fidelity(cfg: ReportConfig, lay: RunLayout) -> str:
    r = _json(lay.fidelity / "fidelity.json")
    if not r:
        return _notrun(f"no {_rel(lay, lay.fidelity)}/fidelity.json")
    d, nap, dist, pp = r["data"], r["next_action"], r["distributions"], r["per_persona"]
    out = [f'<p class="small">{"GENERATED data. " if d["generated"] else ""}Evaluation shops {escape(", ".join(d["eval_shops"]))} (from {escape(d["eval_shops_from"])}); '
           f'agent {escape(r["agent"]["name"])} fitted on {len(d["train_shops"])} training shops only '
           f'({escape(r["agent"]["checkpoint"])}); {d["real_sessions"]:,} real sessions, {nap["steps"]:,} prediction steps '
           f'(event level, the page type the policy acts on); intent {escape(d["intent"])}. 95% CIs: bootstrap over sessions '
           f'(a plug-in JS is biased upwards: compare agents by the paired differences).</p>',
           f'<p class="small">Persona codes of the evaluation buyers: {escape(str((d.get("codes") or {}).get("from", "?")))}: '
           f'{escape(str((d.get("codes") or {}).get("note", "")))}; {d["sessions_without_code"]:,} scored sessions without a code.</p>',
           "<h3>Next-action prediction</h3>",
           _table(["agent", "type accuracy", "exact (type + target)", "macro-F1", "session-outcome F1"],
                  [[a, _m(m["type_accuracy"]), _m(m["exact_accuracy"]), _m(m["macro_f1"]), _m(m["outcome_f1"])]
                   for a, m in nap["agents"].items()]),
           _table(["persona − baseline", "type accuracy", "exact", "macro-F1", "outcome F1"],
                  [[b, _diff(m["type_accuracy"]), _diff(m["exact_accuracy"]), _diff(m["macro_f1"]), _diff(m["outcome_f1"])]
                   for b, m in nap["persona_minus"].items()]),
           "<h3>Session distributions (all evaluation shops)</h3>",
           _table(["agent", "bigram JS", "bigram JS within shop × stratum", "W1 length", "W1 distinct products", "classifier AUC",
                   "ATC real", "ATC sim", "purchase real", "purchase sim"],
                  [[a, _m(m["js_bigram"], 4), _m(m.get("js_cells"), 4), _m(m["w_length"]), _m(m["w_products"]), _m(m["auc"]),
                    _m(m["funnel"]["real"]["atc"]),
                    _m(m["funnel"]["sim"]["atc"]), _m(m["funnel"]["real"]["purchase"]), _m(m["funnel"]["sim"]["purchase"])]
                   for a, m in dist["overall"].items()])]
    if dist.get("baseline_minus_persona"):
        out.append(_table(["baseline − persona (positive: persona closer)", "bigram JS", "bigram JS within shop × stratum", "classifier AUC"],
                          [[b, _diff(m["js_bigram"], 4), _diff(m["js_cells"], 4) if "js_cells" in m else "–", _diff(m["auc"])]
                           for b, m in dist["baseline_minus_persona"].items()]))
    agents = list(dist["overall"])
    for key, name in (("by_shop", "shop"), ("by_stratum", "stratum")):
        out.append(f"<h3>Per {name}: bigram JS / classifier AUC</h3>" + _table(
            [name, *agents], [[g, *(f"{_m(per[a]['js_bigram'], 4)} / {_m(per[a]['auc'])}" if a in per else "–" for a in agents)]
                              for g, per in list(dist[key].items())[: cfg.max_shops]]))
    out.append(f"<h3>Per persona ({pp['codes']} codes with ≥ {pp['min_buyers']} real buyers)</h3>")
    out.append(_table(["agent", "r ATC", "r checkout", "r purchase", "mean |Δ| ATC", "mean |Δ| purchase", "per-code bigram JS"],
                      [[a, _m(c["atc"]), _m(c["checkout"]), _m(c["purchase"]), _m(c["mae"]["atc"]), _m(c["mae"]["purchase"]),
                        _m(pp["code_js"].get(a))] for a, c in pp["correlation"].items()]))
    pts = pp["points"]
    out.append('<div class="row">' + "".join(
        svg.scatter([(p["real"][k], p["sim"][k], f"code {p['code']}") for p in pts], f"{label} rate per persona code",
                    "real", "simulated (persona agent)") for k, label in (("atc", "Add-to-cart"), ("purchase", "Purchase"))) + "</div>")
    return "".join(out)


def _ci(lo: float | None, hi: float | None, pct: bool = False) -> str:
    """An interval as the A/B tables print it: `[lo, hi]`, signed (percent when `pct`); – where undefined."""
    if lo is None or hi is None:
        return "–"
    return f"[{100 * lo:+.1f}%, {100 * hi:+.1f}%]" if pct else f"[{lo:+.3g}, {hi:+.3g}]"


def sec_abtest(cfg: ReportConfig, lay: RunLayout) -> str:
    """The simulated A/B test (abtest.json, forest.svg): effects with intervals and corrected p-values,
    power, per-stratum and per-persona effects, the forest plot; the agent and data behind them."""
    s = _json(lay.abtest / "abtest.json")
    if not s:
        return _notrun(f"no {_rel(lay, lay.abtest)}/abtest.json")
    lvl = f"{s['level']:.0%}"
    bs = s["bootstrap"]
    out = [f'<p class="small">Experiment <b>{escape(s["experiment"])}</b>: arm B changes {escape(", ".join(s["changes"]))}. '
           f'{escape(s["agent"]["text"])}. {escape(s["data"])}. Design {escape(s["design"])} (arm seeds {escape(s["arm_seeds"])}'
           f'{", A/A" if s["aa"] else ""}): {s["n_a"]:,} buyers on A, {s["n_b"]:,} on B over {len(s["shops"])} shop(s); '
           f'{lvl} intervals, t/delta and bootstrap ({bs["resamples"]:,} × {escape(bs["method"])}); p-values '
           f'{escape(s["correction"])}-adjusted across {len(s["effects"])} metrics.</p>',
           _who({"agent": s.get("agent_card"), "data": s.get("data_card")})]
    rows = [[e["metric"], e["mean_a"], e["mean_b"], e["diff"], _ci(e["diff_lo"], e["diff_hi"]), _ci(e["diff_boot_lo"], e["diff_boot_hi"]),
             _num(e["lift"], True) if e["lift"] is not None else "–", _ci(e["lift_lo"], e["lift_hi"], True),
             _ci(e["lift_boot_lo"], e["lift_boot_hi"], True), e["p_value"], e["p_adjusted"]] for e in s["effects"]]
    out.append(_table(["metric", "A", "B", "B − A", f"{lvl} CI (t)", f"{lvl} CI (bootstrap)", "lift", f"{lvl} CI (delta)",
                       f"{lvl} CI (bootstrap)", "p", f"p ({s['correction']})"], rows))
    out.append(f'<p class="small">Significant after correction: {escape(", ".join(s["significant"]) or "none")}. '
               "Outcomes per arm: " + escape("; ".join(f"{a}: " + ", ".join(f"{o} {n}" for o, n in oc.items() if n)
                                                        for a, oc in s["outcomes"].items())) + ".</p>")
    forest = lay.abtest / "forest.svg"
    out.append(forest.read_text() if forest.exists() else _notrun(f"no {_rel(lay, forest)}"))
    p = s["power"]
    out.append(f"<h3>Power</h3><p class=\"small\">Buyers needed to detect a {p['mde_relative']:.0%} relative change of arm A's mean "
               f"(two-sided α {p['alpha']:g}, power {p['power']:.0%}), from this experiment's variances.</p>"
               + _table(["metric", "detectable difference", "paired buyers (both arms)", "unpaired, per arm"],
                        [[r["metric"], r["mde_abs"], r.get("paired_buyers", "n/a"), r["unpaired_per_arm"]] for r in p["metrics"]]))
    metrics = [e["metric"] for e in s["effects"]]
    for title, key in (("stratum", "by_stratum"), ("persona code", "by_persona")):
        out.append(f"<h3>Effects by {title}</h3>")
        if not s[key]:
            out.append(_notrun(f"no {title} with enough buyers per arm"))
            continue
        out.append(f'<p class="small">B − A with analytic {lvl} intervals, unadjusted.</p>' + _table(
            [title, "n (A)", *metrics], [[g, effs[0]["n_a"], *(f"{_num(e['diff'])} {_ci(e['diff_lo'], e['diff_hi'])}" for e in effs)]
                                        for g, effs in s[key].items()]))
    return "".join(out)


SECTIONS = (("Codebook usage and health", sec_codebook), ("Persona cards", sec_cards), ("Persona mix per shop", sec_mix),
            ("Real vs recovered stratum mix", sec_strata), ("Feature reconstruction R²", sec_r2),
            ("Table 1 — clustering quality", sec_table1), ("Table 2 — action rate alignment", sec_table2),
            ("Table 3 — behavioural separation", sec_table3),
            ("SFT — the agent's checkpoints and validation curves", sec_sft), ("Table 4 — instruction following", sec_table4),
            ("Ablations (Tables 7–9)", sec_ablations), ("Simulation: outcomes, simulated vs real funnel", sec_simulation),
            ("Fidelity on evaluation shops", sec_fidelity), ("A/B test (simulated)", sec_abtest))


def render(cfg: ReportConfig) -> tuple[str, dict[str, str]]:
    """(html, section → "ok" / "not run" / "error: …")."""
    run = Path(cfg.run)
    lay = RunLayout(run)
    parts, status = [], {}
    for title, fn in SECTIONS:
        try:
            body = fn(cfg, lay)
            status[title] = "not run" if body.startswith('<p class="notrun">') else "ok"
        except Exception as e:  # one broken part never breaks the page
            body = f'<p class="notrun">could not be built: {escape(type(e).__name__)}: {escape(str(e))}</p>'
            status[title] = f"error: {type(e).__name__}: {e}"
        parts.append(f"<h2>{escape(title)}</h2>{body}")
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>SimPersona report</title>'
            f"<style>{CSS}</style></head><body><h1>SimPersona report</h1>"
            f'<p class="small">Run folder {escape(str(run))} · built {when}. Paper figures from arXiv 2605.14205.</p>'
            + "".join(parts) + "</body></html>")
    return page, status


def run(cfg: ReportConfig, out_dir: Path) -> dict[str, Any]:
    if cfg.run is None:
        from simpersona.config import ConfigError

        raise ConfigError("report needs --run RUN_DIR")
    page, status = render(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / cfg.filename
    path.write_text(page, encoding="utf-8")
    summary = {"page": cfg.filename, "bytes": len(page.encode()), "sections": status}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_meta(out_dir, "report", cfg, summary=summary)
    return {**summary, "path": str(path)}


def format_summary(summary: dict[str, Any]) -> str:
    ok = [k for k, v in summary["sections"].items() if v == "ok"]
    return (f"report: {summary['path']} ({summary['bytes']:,} bytes); {len(ok)}/{len(summary['sections'])} parts built; "
            + "; ".join(f"{k}: {v}" for k, v in summary["sections"].items() if v != "ok"))
