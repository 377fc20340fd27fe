"""`simpersona evaluate population`: App. B population recovery on held-out shops, and, on
generated data, recovery of the known buyer types.

Buyers evaluated: buyers.split in `splits` (whole held-out shops) and stratum in `strata` (A–D).
Without held-out shops (e.g. a one-shop real log) it falls back to `fallback_splits` and marks the
report `held_out: false` (in-sample figures).
- p̂_s(k) = share of shop s's evaluated buyers with code k;
- P(stratum | k) over all evaluated buyers of k; P̂_s(stratum) = Σ_k p̂_s(k) P(stratum | k);
  JS divergence (base 2) to the shop's real stratum mix: per shop, mean, median, count < js_good;
- x̄_k = mean raw scalars of k's evaluated buyers; x̂_s = Σ_k p̂_s(k) x̄_k; per-feature R² across
  shops against the real shop means x_s;
- with a truth table (shop_id, buyer_id, type): AMI(codes, types) over the evaluated buyers found
  in the truth, and each shop's recovered type mix Σ_k p̂_s(k) P(type | k) against its true mix
  (total variation and JS). Raw truth ids are hashed with the ingest folder's salt (HMAC-SHA256,
  inside DuckDB) when `ingest` is given.
Aggregations run in DuckDB over the Parquet files, so memory stays small for millions of buyers;
on one thread, so the float means (and every figure) are the same run to run.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np

from simpersona.config import ConfigError, write_meta
from simpersona.evaluate import metrics as M
from simpersona.evaluate.config import PopulationConfig
from simpersona.features.layout import SCALAR_NAMES

PAPER = {"js_mean": 0.054, "js_median": 0.045, "js_below_0.10": "36/42",
         "r2": {"intent_strength": 0.96, "atc_rate": 0.95, "checkout_rate": 0.90, "browse_only_rate": 0.87}}


def _sql_list(values: list[str]) -> str:
    """A SQL list of string literals.

    >>> _sql_list(["a", "b'c"])
    "'a', 'b''c'"
    """
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _evaluated_view(con: duckdb.DuckDBPyConnection, buyers: Path, assign: Path, splits: list[str],
                    strata: list[str]) -> int:
    """(Re)create view `ev` (buyers.parquet ⋈ assignments on the evaluated rows); its row count."""
    con.execute(f"""CREATE OR REPLACE TEMP VIEW ev AS
        SELECT b.*, a.code FROM read_parquet('{buyers}') b JOIN read_parquet('{assign}') a USING (shop_id, buyer_id)
        WHERE b.split IN ({_sql_list(splits)}) AND b.stratum IN ({_sql_list(strata)})""")
    return con.execute("SELECT count(*) FROM ev").fetchone()[0]


def _pivot(rows: list[tuple], row_keys: list, col_keys: list) -> np.ndarray:
    """[(row, col, value)] → dense (len(row_keys), len(col_keys)) array."""
    ri = {r: i for i, r in enumerate(row_keys)}
    ci = {c: i for i, c in enumerate(col_keys)}
    out = np.zeros((len(row_keys), len(col_keys)))
    for r, c, v in rows:
        out[ri[r], ci[c]] = v
    return out


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "median": float(np.median(values)), "max": float(np.max(values))}


def run(cfg: PopulationConfig, out_dir: Path) -> dict:
    if cfg.personas is None or cfg.features is None:
        raise ConfigError("evaluate population needs --personas DIR and --features FEAT_DIR")
    out_dir = Path(out_dir)
    assign = Path(cfg.personas) / "assignments.parquet"
    buyers = Path(cfg.features) / "buyers.parquet"
    # one thread: a parallel avg() adds the rows in a varying order, and the R² would move in the last bits
    con = duckdb.connect(config={"threads": 1})
    splits = cfg.splits
    n = _evaluated_view(con, buyers, assign, splits, cfg.strata)
    if n == 0 and cfg.fallback_splits:
        splits = cfg.fallback_splits
        n = _evaluated_view(con, buyers, assign, splits, cfg.strata)
    if n == 0:
        raise ConfigError(f"no assigned buyers with split in {splits} and stratum in {cfg.strata}")
    shops = [r[0] for r in con.execute("SELECT DISTINCT shop_id FROM ev ORDER BY 1").fetchall()]
    codes = [r[0] for r in con.execute("SELECT DISTINCT code FROM ev ORDER BY 1").fetchall()]
    shop_code = _pivot(con.execute("SELECT shop_id, code, count(*) FROM ev GROUP BY ALL").fetchall(), shops, codes)

    # stratum recovery
    code_strat = _pivot(con.execute("SELECT code, stratum, count(*) FROM ev GROUP BY ALL").fetchall(), codes, cfg.strata)
    shop_strat = _pivot(con.execute("SELECT shop_id, stratum, count(*) FROM ev GROUP BY ALL").fetchall(), shops, cfg.strata)
    pred = M.mixture_recovery(shop_code, code_strat / code_strat.sum(1, keepdims=True))
    js = np.array([M.js_divergence(p, q) for p, q in zip(shop_strat, pred)])

    # feature reconstruction
    avg = ", ".join(f'avg("{c}")' for c in SCALAR_NAMES)
    code_mean = np.array([r[1:] for r in con.execute(f"SELECT code, {avg} FROM ev GROUP BY code ORDER BY code").fetchall()], float)
    shop_mean = np.array([r[1:] for r in con.execute(f"SELECT shop_id, {avg} FROM ev GROUP BY shop_id ORDER BY shop_id").fetchall()], float)
    x_hat = M.mixture_recovery(shop_code, code_mean)
    r2 = {c: M.r_squared(shop_mean[:, j], x_hat[:, j]) for j, c in enumerate(SCALAR_NAMES)}
    r2 = {c: (None if np.isnan(v) else v) for c, v in r2.items()}  # None: constant across shops

    report = {
        "n_buyers": int(n), "n_shops": len(shops), "codes_used": len(codes), "splits": splits, "strata": cfg.strata,
        "held_out": splits == cfg.splits,
        "stratum_js": {**_summary(js), f"count_below_{cfg.js_good}": int((js < cfg.js_good).sum()),
                       "per_shop": {s: float(v) for s, v in zip(shops, js)}},
        "feature_r2": r2,
        "paper": PAPER,
    }
    if cfg.truth is not None:
        report["truth"] = _truth(con, cfg, shops, shop_code, codes)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "population.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "population.md").write_text(format_report(report) + "\n")
    write_meta(out_dir, "evaluate.population", cfg, n_buyers=int(n), n_shops=len(shops))
    return report


def _truth(con: duckdb.DuckDBPyConnection, cfg: PopulationConfig, shops: list, shop_code: np.ndarray,
           codes: list) -> dict:
    """AMI between codes and true types; per-shop recovered type-mix error."""
    from sklearn.metrics import adjusted_mutual_info_score

    key = "buyer_id"
    if cfg.ingest is not None:
        from simpersona.events.deid import hmac_sql, ingest_key

        key = hmac_sql("CAST(buyer_id AS VARCHAR)", ingest_key(Path(cfg.ingest)))
    con.execute(f"""CREATE TEMP VIEW tr AS
        SELECT ev.shop_id, ev.code, t.type FROM ev JOIN
          (SELECT shop_id, {key} AS buyer_id, CAST(type AS VARCHAR) AS type FROM read_parquet('{cfg.truth}')) t
        USING (shop_id, buyer_id)""")
    pairs = con.execute("SELECT code, type FROM tr").fetchnumpy()
    if len(pairs["code"]) == 0:
        raise ConfigError(f"no evaluated buyer found in {cfg.truth} (raw ids need --ingest for the salt)")
    ami = adjusted_mutual_info_score(pairs["type"].astype(str), pairs["code"])
    types = sorted({str(t) for t in pairs["type"]})
    code_type = _pivot(con.execute("SELECT code, type, count(*) FROM tr GROUP BY ALL").fetchall(), codes, types)
    shop_type = _pivot(con.execute("SELECT shop_id, type, count(*) FROM tr GROUP BY ALL").fetchall(), shops, types)
    profile = code_type / np.maximum(code_type.sum(1, keepdims=True), 1)
    pred = M.mixture_recovery(shop_code, profile)
    has = shop_type.sum(1) > 0
    true = shop_type[has] / shop_type[has].sum(1, keepdims=True)
    tv = np.array([M.total_variation(p, q) for p, q in zip(true, pred[has])])
    js = np.array([M.js_divergence(p, q) for p, q in zip(true, pred[has])])
    return {
        "n_matched": int(len(pairs["code"])), "types": types, "ami": float(ami),
        "type_mix_tv": {**_summary(tv), "per_shop": {s: float(v) for s, v in zip(np.array(shops)[has], tv)}},
        "type_mix_js": _summary(js),
    }


def format_report(r: dict) -> str:
    js = r["stratum_js"]
    below = next(k for k in js if k.startswith("count_below_"))
    lines = [f"# Population recovery (App. B): {r['n_buyers']:,} buyers, {r['n_shops']} shops (splits {', '.join(r['splits'])})",
             ""]
    if not r["held_out"]:
        lines += [f"**No buyer in the held-out splits: these figures are IN-SAMPLE (splits {', '.join(r['splits'])}).**", ""]
    lines += ["| | ours | paper |", "|---|---|---|",
             f"| stratum JS mean | {js['mean']:.3f} | {PAPER['js_mean']} |",
             f"| stratum JS median | {js['median']:.3f} | {PAPER['js_median']} |",
             f"| shops with JS < {below[12:]} | {js[below]}/{r['n_shops']} | {PAPER['js_below_0.10']} |"]
    for f, v in r["feature_r2"].items():
        lines.append(f"| R² {f} | {'–' if v is None else f'{v:.3f}'} | {PAPER['r2'].get(f, '–')} |")
    if "truth" in r:
        t = r["truth"]
        lines += ["", f"Truth recovery on {t['n_matched']:,} buyers with known type ({len(t['types'])} types): "
                  f"AMI(codes, types) = {t['ami']:.3f}; shop type-mix error (total variation) mean "
                  f"{t['type_mix_tv']['mean']:.3f}, median {t['type_mix_tv']['median']:.3f}, max {t['type_mix_tv']['max']:.3f}; "
                  f"JS mean {t['type_mix_js']['mean']:.3f}."]
    return "\n".join(lines)
