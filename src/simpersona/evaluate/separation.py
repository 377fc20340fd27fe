"""`simpersona evaluate separation`: behavioural separation by auxiliary-head bin (paper §3.3, Table 3).

Each simulated episode gets its code's head labels from the persona cards (cards.json: low /
medium / high engagement, exploration, purchase intensity at the code vector). Scores per
simulated session (from the events through the features aggregation, `simulate.logs`):

    purchase     8·[checkout session] + 3·[add-to-cart session]  (features.labels.purchase_score
                 on the one session: the head's own definition)
    engagement   actions taken in the episode (env steps): the paper's proxy, as simulated
                 sessions have no real dwell time
    exploration  search + collection-view + product-view events

Per head: mean score per bin; Cohen's d (low vs high), Welch's t p (low vs high), Kruskal–Wallis
p (three bins), permutation p (10,000 shuffles of the bin labels; statistic the bin–score
correlation); plus ATC and checkout rates per purchase bin. Episodes without a drawn persona code
or with an outcome in `exclude_outcomes` are left out; a no-persona simulation (the same drawn
codes, no token given) is kept, grouped by the code it would have had: the control row. The report
names the simulation's agent (checkpoint, content hash) and data. Writes separation.json / .md, meta.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simpersona.config import ConfigError, write_meta
from simpersona.contracts.labels import HEADS, LEVELS
from simpersona.evaluate import stats as S

PAPER_TABLE3: dict[str, dict[str, Any]] = {
    "purchase": {"means": [0.06, 2.94, 7.25], "d": 2.80, "t_p": 5.5e-22, "kw_p": 4.5e-14, "perm_p": "<0.0001"},
    "engage": {"means": [1.55, 2.00, 2.41], "d": 0.76, "t_p": 4.1e-3, "kw_p": 1.2e-2, "perm_p": 0.003},
    "explore": {"means": [1.34, 1.29, 1.39], "d": 0.10, "t_p": 0.81, "kw_p": 0.78, "perm_p": 0.48},
    "funnel": {"atc": [0.010, 0.294, 0.720], "checkout": [0.003, 0.137, 0.433]},
}


@dataclass
class SeparationConfig:
    # simulate RUN_DIR (events.parquet, catalog.parquet, episodes.parquet)
    simulation: Path | None = None
    # personas folder (cards.json with each code's head labels)
    personas: Path | None = None
    # shuffles of the permutation test
    n_resamples: int = 10_000
    # seed of the permutation test
    seed: int = 0
    # episode outcomes left out
    exclude_outcomes: list[str] = field(default_factory=lambda: ["crash"])


def head_scores(stats) -> dict[str, np.ndarray]:
    """Per-episode scores of each head from an episode_stats table."""
    from simpersona.features.labels import purchase_score

    col = lambda c: stats.column(c).to_numpy(zero_copy_only=False).astype(np.float64)  # noqa: E731
    return {"purchase": purchase_score(col("has_checkout"), col("has_atc")),
            "engage": col("steps"),
            "explore": col("n_search") + col("n_collection_view") + col("n_product_view")}


def separation(bins: np.ndarray, scores: np.ndarray, n_resamples: int, seed: int) -> dict[str, Any]:
    """Means per bin and the four statistics for one head (bins 0/1/2 per episode)."""
    groups = [scores[bins == b] for b in range(3)]
    nan = lambda v: None if v is None or math.isnan(v) else float(v)  # noqa: E731
    return {"n": [int(len(g)) for g in groups], "means": [nan(g.mean()) if len(g) else None for g in groups],
            "d": nan(S.cohens_d(groups[0], groups[2])), "t_p": nan(S.welch_p(groups[0], groups[2])),
            "kw_p": nan(S.kruskal_p(*groups)), "perm_p": nan(S.trend_permutation_p(bins, scores, n_resamples, seed))}


def run(cfg: SeparationConfig, out_dir: Path) -> dict[str, Any]:
    from simpersona.simulate.logs import episode_stats

    if cfg.simulation is None or cfg.personas is None:
        raise ConfigError("evaluate separation needs --simulation SIM_DIR and --personas DIR (cards.json)")
    cards = {int(c["code"]): c["labels"] for c in json.loads((Path(cfg.personas) / "cards.json").read_text())}
    stats = episode_stats(Path(cfg.simulation))
    keep = np.array([o not in cfg.exclude_outcomes and k is not None and int(k) in cards for o, k in zip(
        stats["outcome"].to_pylist(), stats["code"].to_pylist())], dtype=bool)
    stats = stats.filter(keep) if len(keep) else stats
    codes = stats["code"].to_pylist()
    scores = head_scores(stats)
    summary = json.loads((Path(cfg.simulation) / "summary.json").read_text())
    report: dict[str, Any] = {"episodes": int(stats.num_rows), "heads": {}, "paper": PAPER_TABLE3,
                              "agent": summary.get("agent_card"), "data": summary.get("data")}
    for h in HEADS:
        bins = np.array([LEVELS.index(cards[int(k)][h]) for k in codes], dtype=np.int64)
        report["heads"][h] = separation(bins, scores[h], cfg.n_resamples, cfg.seed)
    pbins = np.array([LEVELS.index(cards[int(k)]["purchase"]) for k in codes], dtype=np.int64)
    atc = stats["has_atc"].to_numpy(zero_copy_only=False).astype(float)
    co = stats["has_checkout"].to_numpy(zero_copy_only=False).astype(float)
    report["funnel"] = {"atc": [float(atc[pbins == b].mean()) if (pbins == b).any() else None for b in range(3)],
                        "checkout": [float(co[pbins == b].mean()) if (pbins == b).any() else None for b in range(3)]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "separation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "separation.md").write_text(format_table(report) + "\n")
    write_meta(out_dir, "evaluate.separation", cfg, episodes=report["episodes"])
    return report


def _g(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return f"{v:.2g}" if abs(v) < 0.01 and v != 0 else f"{v:.2f}"


def format_table(report: dict[str, Any]) -> str:
    """Table 3, ours beside the paper's."""
    rows = ["| head | n (L/M/H) | mean L / M / H | paper | Cohen's d | paper | t p | paper | KW p | paper | perm p | paper |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for h, r in report["heads"].items():
        p = report["paper"][h]
        rows.append(f"| {h} | {'/'.join(map(str, r['n']))} | {' / '.join(_g(v) for v in r['means'])} | "
                    f"{' / '.join(_g(v) for v in p['means'])} | {_g(r['d'])} | {_g(p['d'])} | {_g(r['t_p'])} | {_g(p['t_p'])} | "
                    f"{_g(r['kw_p'])} | {_g(p['kw_p'])} | {_g(r['perm_p'])} | {_g(p['perm_p'])} |")
    f, pf = report["funnel"], report["paper"]["funnel"]
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    rows += ["", "| purchase bin | low | medium | high | paper low / medium / high |", "|---|---|---|---|---|"]
    for m in ("atc", "checkout"):
        rows.append(f"| {m} | " + " | ".join(pct(v) for v in f[m]) + " | " + " / ".join(pct(v) for v in pf[m]) + " |")
    from simpersona.simulate.cards import agent_label, data_label

    return (f"Table 3 (separation by head bin) over {report['episodes']:,} simulated episodes; agent {agent_label(report.get('agent'))}; "
            f"{data_label(report.get('data'))}\n\n" + "\n".join(rows))
