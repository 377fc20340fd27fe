"""`simpersona evaluate alignment`: Action Rate Alignment (paper §3.2, Table 2) and funnel rates.

Real side: FEAT_DIR/buyers.parquet (per-buyer session counts, stratum) ⋈ personas
assignments.parquet (code). Simulated side: a simulate RUN_DIR (episodes ⋈ its events through
the features aggregation, `simulate.logs.episode_stats`); episodes whose outcome is in
`exclude_outcomes` are left out.

Rates are per SESSION (a simulated buyer runs one session): in a cell (shop, code, stratum)
    ATC_real = Σ sessions_with_atc / Σ n_sessions over its real buyers,  ATC_agent = share of its
    simulated sessions with an add-to-cart; PUR the same with checkout sessions (checkout start
    or purchase: funnel closure), the paper's "checkout fraction".
ARA = ½(1 − |ATC_real − ATC_agent|) + ½(1 − |PUR_real − PUR_agent|) (`evaluate.stats.ara`).
Pairings, per simulated cell (s, a, stratum): correct (real cell (s, a, stratum)); all-mismatch
(mean over every other code b ≠ a with a real cell (s, b, stratum)); random-mismatch (one b drawn
with `seed`). Only cells with ≥ min_real_buyers real buyers and ≥ min_sim_sessions simulated
sessions, and with at least one mismatch candidate, count. Per stratum: the mean over its cells;
"Stratified": the mean of the per-stratum values (each stratum weighs the same, as the paper's
stratified row is the mean of its A–D rows). `gap` = ARA correct − all-mismatch (what the persona
token buys), per stratum and stratified, with a 95% bootstrap interval (cells resampled within
each stratum, `bootstrap` draws). The report names the simulation's agent (checkpoint and content
hash) and data (its summary's agent and data cards).

Writes alignment.json, alignment.md, meta.json; also per-shop real vs simulated funnel rates
(add-to-cart, checkout, purchase sessions) for the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simpersona.config import ConfigError, write_meta
from simpersona.evaluate.stats import ara, rate_alignment

PAPER_TABLE2: dict[str, dict[str, list[float]]] = {  # stratum → metric → [correct, all-mismatch, 1-random]
    "A": {"atc": [.706, .496, .522], "pur": [.742, .516, .537], "ara": [.724, .506, .530]},
    "B": {"atc": [.736, .465, .429], "pur": [.760, .598, .544], "ara": [.748, .532, .487]},
    "C": {"atc": [.767, .438, .442], "pur": [.674, .755, .720], "ara": [.721, .597, .581]},
    "D": {"atc": [.942, .653, .644], "pur": [.965, .792, .769], "ara": [.954, .723, .707]},
    "Stratified": {"atc": [.788, .513, .509], "pur": [.785, .665, .643], "ara": [.787, .589, .576]},
}
PAIRINGS = ("correct", "all_mismatch", "random_mismatch")


@dataclass
class AlignmentConfig:
    # FEAT_DIR of the REAL data (buyers.parquet)
    features: Path | None = None
    # personas folder (assignments.parquet)
    personas: Path | None = None
    # simulate RUN_DIR (events.parquet, catalog.parquet, episodes.parquet)
    simulation: Path | None = None
    # strata evaluated
    strata: list[str] = field(default_factory=lambda: ["A", "B", "C", "D"])
    # real buyers needed in a (shop, code, stratum) cell
    min_real_buyers: int = 5
    # simulated sessions needed in a cell
    min_sim_sessions: int = 3
    # episode outcomes left out of the simulated rates
    exclude_outcomes: list[str] = field(default_factory=lambda: ["crash"])
    # seed of the random-mismatch draw and of the bootstrap
    seed: int = 0
    # bootstrap draws of the correct − all-mismatch interval (0: no interval)
    bootstrap: int = 2000


def real_cells(features: Path, personas: Path, strata: list[str]) -> dict[tuple[str, int, str], tuple[int, float, float]]:
    """(shop, code, stratum) → (real buyers, ATC per session, checkout per session)."""
    import duckdb

    rows = duckdb.sql(f"""
        SELECT b.shop_id, a.code, b.stratum, count(*), sum(b.sessions_with_atc) / sum(b.n_sessions),
               sum(b.sessions_with_checkout) / sum(b.n_sessions)
        FROM read_parquet('{Path(features) / "buyers.parquet"}') b
        JOIN read_parquet('{Path(personas) / "assignments.parquet"}') a USING (shop_id, buyer_id)
        GROUP BY ALL""").fetchall()
    return {(s, int(k), st): (int(n), float(atc), float(pur)) for s, k, st, n, atc, pur in rows if st in strata}


def sim_cells(stats, exclude: list[str]) -> dict[tuple[str, int, str], tuple[int, float, float]]:
    """(shop, code, stratum) → (simulated sessions, ATC share, checkout share), from episode_stats."""
    import duckdb

    ex = ", ".join(f"'{o}'" for o in exclude) or "''"
    rows = duckdb.sql(f"""SELECT shop_id, code, stratum, count(*), avg(has_atc::DOUBLE), avg(has_checkout::DOUBLE)
                          FROM stats WHERE outcome NOT IN ({ex}) GROUP BY ALL""").fetchall()
    return {(s, int(k), st): (int(n), float(a), float(c)) for s, k, st, n, a, c in rows}


def alignment_table(real: dict, sim: dict, strata: list[str], min_real: int, min_sim: int,
                    rng: np.random.Generator, n_boot: int = 0) -> dict[str, Any]:
    """Per stratum and stratified: mean ATC / purchase alignment and ARA for the three pairings."""
    per: dict[str, dict[str, list[list[float]]]] = {st: {m: [[], [], []] for m in ("atc", "pur", "ara")} for st in strata}
    cells = 0
    for (shop, code, st), (n_sim, atc_a, pur_a) in sorted(sim.items()):
        if st not in per or n_sim < min_sim:
            continue
        ok = lambda key: key in real and real[key][0] >= min_real  # noqa: E731
        if not ok((shop, code, st)):
            continue
        others = sorted(b for (s2, b, st2) in real if s2 == shop and st2 == st and b != code and ok((s2, b, st2)))
        if not others:
            continue
        cells += 1
        pick = others[int(rng.integers(len(others)))]
        for j, refs in enumerate(([code], others, [pick])):
            vals = [(rate_alignment(real[(shop, b, st)][1], atc_a), rate_alignment(real[(shop, b, st)][2], pur_a),
                     ara(real[(shop, b, st)][1], atc_a, real[(shop, b, st)][2], pur_a)) for b in refs]
            for m, v in zip(("atc", "pur", "ara"), np.mean(vals, 0)):
                per[st][m][j].append(float(v))
    table: dict[str, Any] = {}
    gaps = {st: np.array(per[st]["ara"][0]) - np.array(per[st]["ara"][1]) for st in strata}  # (cells,) correct − all-mismatch
    for st in strata:
        n = len(per[st]["ara"][0])
        table[st] = {"cells": n, **{m: [float(np.mean(v)) if v else None for v in per[st][m]] for m in ("atc", "pur", "ara")},
                     "gap": float(gaps[st].mean()) if n else None, "gap_ci": gap_ci({st: gaps[st]}, n_boot, rng)}
    have = [st for st in strata if table[st]["cells"]]
    table["Stratified"] = {"cells": cells, **{m: [float(np.mean([table[st][m][j] for st in have])) if have else None
                                                  for j in range(3)] for m in ("atc", "pur", "ara")},
                           "gap": float(np.mean([table[st]["gap"] for st in have])) if have else None,
                           "gap_ci": gap_ci({st: gaps[st] for st in have}, n_boot, rng)}
    return table


def gap_ci(gaps: dict[str, np.ndarray], n_boot: int, rng: np.random.Generator) -> list[float] | None:
    """95% percentile bootstrap interval of the mean over strata of each stratum's mean cell gap
    (cells resampled within each stratum); None without cells or draws.

    >>> gap_ci({"A": np.array([0.1, 0.1, 0.1])}, 100, np.random.default_rng(0))
    [0.1, 0.1]
    """
    have = [g for g in gaps.values() if len(g)]
    if not have or n_boot <= 0:
        return None
    draws = np.mean([g[rng.integers(len(g), size=(n_boot, len(g)))].mean(1) for g in have], axis=0)  # (n_boot,)
    return [round(float(x), 12) for x in np.percentile(draws, [2.5, 97.5])]


def funnel_rates(features: Path, stats, exclude: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """shop → {"real": …, "sim": …} session shares with an add-to-cart, a checkout, a purchase."""
    import duckdb

    ex = ", ".join(f"'{o}'" for o in exclude) or "''"
    real = duckdb.sql(f"""SELECT shop_id, sum(sessions_with_atc) / sum(n_sessions), sum(sessions_with_checkout) / sum(n_sessions),
                          sum(sessions_with_purchase) / sum(n_sessions), sum(n_sessions)
                          FROM read_parquet('{Path(features) / "buyers.parquet"}') GROUP BY 1""").fetchall()
    sim = duckdb.sql(f"""SELECT shop_id, avg(has_atc::DOUBLE), avg(has_checkout::DOUBLE), avg(has_purchase::DOUBLE), count(*)
                         FROM stats WHERE outcome NOT IN ({ex}) GROUP BY 1""").fetchall()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for side, rows in (("real", real), ("sim", sim)):
        for s, a, c, p, n in rows:
            out.setdefault(s, {})[side] = {"atc": float(a), "checkout": float(c), "purchase": float(p), "sessions": int(n)}
    return {s: v for s, v in sorted(out.items()) if "sim" in v}


def run(cfg: AlignmentConfig, out_dir: Path) -> dict[str, Any]:
    from simpersona.simulate.logs import episode_stats

    if cfg.features is None or cfg.personas is None or cfg.simulation is None:
        raise ConfigError("evaluate alignment needs --features FEAT_DIR, --personas DIR and --simulation SIM_DIR")
    stats = episode_stats(Path(cfg.simulation))  # noqa: F841 (read by DuckDB by name)
    real = real_cells(Path(cfg.features), Path(cfg.personas), cfg.strata)
    sim = sim_cells(stats, cfg.exclude_outcomes)
    table = alignment_table(real, sim, cfg.strata, cfg.min_real_buyers, cfg.min_sim_sessions, np.random.default_rng(cfg.seed),
                            cfg.bootstrap)
    summary = json.loads((Path(cfg.simulation) / "summary.json").read_text())
    report = {"table": table, "pairings": list(PAIRINGS), "paper": PAPER_TABLE2,
              "agent": summary.get("agent_card"), "data": summary.get("data"),
              "episodes": int(stats.num_rows), "sim_cells": len(sim), "real_cells": len(real),
              "funnel": funnel_rates(Path(cfg.features), stats, cfg.exclude_outcomes)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "alignment.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "alignment.md").write_text(format_table(report) + "\n")
    write_meta(out_dir, "evaluate.alignment", cfg, cells=table["Stratified"]["cells"])
    return report


def _f(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def format_table(report: dict[str, Any]) -> str:
    """Table 2, ours beside the paper's (correct / all-mismatch / 1-random), and correct − all-mismatch."""
    from simpersona.simulate.cards import agent_label, data_label

    lines = ["| stratum | cells | ATC ours (C / All-Mis / 1-R) | ATC paper | PUR ours | PUR paper | ARA ours | ARA paper | ARA C − All-Mis [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|"]
    for st, row in report["table"].items():
        p = report["paper"].get(st)
        cols = []
        for m in ("atc", "pur", "ara"):
            cols.append(" / ".join(_f(v) for v in row[m]))
            cols.append(" / ".join(f"{v:.3f}" for v in p[m]) if p else "–")
        ci = row.get("gap_ci")
        cols.append(_f(row.get("gap")) + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""))
        lines.append(f"| {st} | {row['cells']} | " + " | ".join(cols) + " |")
    return (f"Table 2 (ARA by funnel stratum) over {report['episodes']:,} simulated episodes; agent {agent_label(report.get('agent'))}; "
            f"{data_label(report.get('data'))}\n\n" + "\n".join(lines))
