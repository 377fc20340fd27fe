"""Benchmark: `simpersona features` without text embeddings beside a hand-written DuckDB SQL of the
same scalar aggregation, in the same run; and the per-buyer embedding mean (sparse product).

    .venv/bin/simpersona synth --shops 20 --buyers 1300000 --seed 1 --out /tmp/fs/synth20m
    .venv/bin/simpersona ingest --format canonical --input /tmp/fs/synth20m/events.csv \\
        --catalog /tmp/fs/synth20m/catalog.parquet --out /tmp/fs/ing20m --set progress=false
    .venv/bin/python bench/bench_features.py --input /tmp/fs/ing20m --out /tmp/fs/bench --repeat 3

Sides, each run in its own fresh interpreter (peak RSS = that child's own ru_maxrss), alternated
hand / features / hand / features … so that machine load hits both alike; medians over --repeat:

- hand_sql: one DuckDB query, events ⋈ catalog → sessions → the 16 scalars per (shop, buyer),
  sorted, fetched to Arrow (it writes nothing).
- features: `stage.run` with embedding.enabled=false: buyer_sessions.parquet, buyers.parquet,
  strata/labels, buyer × product pairs (masks), transforms, vectors.parquet — the whole stage.
- features_aggregate: only the stage's aggregation step (`compute_buyers`: sessions written to
  buyer_sessions.parquet + the per-buyer scalars) — the like-for-like part of the comparison.
- embedding_mean: buyer × product pairs from the engine + three sparse (buyer × product) ×
  (product × 384) products with a fake embedding matrix.

The machine is shared: the 1-minute load average is printed with every run; with load above the
core count the absolute figures are unreliable and only the same-run ratio means something.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUP = """
import sys, json, time
from pathlib import Path
inp, out, mem, threads = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
"""

HAND = SETUP + """
import duckdb
t = time.perf_counter()
con = duckdb.connect(config={"threads": threads, "memory_limit": mem, "temp_directory": str(out / "tmp")})
con.execute("SET TimeZone='UTC'; SET preserve_insertion_order=false; SET enable_progress_bar=false")
q = f'''
WITH e AS (SELECT e.*, coalesce(e.price, c.price, 0) * coalesce(e.quantity, 1) AS amount
           FROM read_parquet('{inp}/events.parquet') e LEFT JOIN read_parquet('{inp}/catalog.parquet') c USING (shop_id, product_id)),
s AS (SELECT shop_id, buyer_id, session_id,
        count(*) FILTER (event_type='product_view') AS pv, count(*) FILTER (event_type='add_to_cart') AS atc,
        count(*) FILTER (event_type='remove_from_cart') AS rm, count(*) FILTER (event_type='checkout_start') AS co,
        count(*) FILTER (event_type='purchase') AS pur, count(*) FILTER (event_type='search') AS se,
        count(*) FILTER (event_type='collection_view') AS cv,
        floor(epoch(max(ts))) - floor(epoch(min(ts))) AS dur, min(ts)::DATE AS day,
        coalesce(sum(amount) FILTER (event_type='add_to_cart'), 0) AS cart_value,
        coalesce(sum(amount) FILTER (event_type='purchase'), 0) AS order_value
      FROM e GROUP BY ALL),
f AS (SELECT *, pur > 0 AS h_pur, pur > 0 OR co > 0 AS h_co, pur > 0 OR co > 0 OR atc > 0 AS h_atc,
        (pv > 0 OR cv > 0 OR se > 0) AND NOT (pur > 0 OR co > 0 OR atc > 0 OR rm > 0) AS h_bo,
        pur > 0 OR co > 0 OR atc > 0 OR rm > 0 AS h_cart FROM s),
b AS (SELECT shop_id, buyer_id, count(*) AS n_sessions, count(DISTINCT day) AS active_days,
        count(*) FILTER (pv > 0) AS sessions_with_view, count(*) FILTER (h_atc) AS sessions_with_atc,
        count(*) FILTER (h_co) AS sessions_with_checkout, count(*) FILTER (se > 0) AS sessions_with_search,
        count(*) FILTER (cv > 0) AS sessions_with_collection, count(*) FILTER (h_pur) AS sessions_with_purchase,
        sum(dur)::BIGINT AS total_duration_s, sum(pv) AS total_product_views, count(*) FILTER (h_bo) AS bo,
        count(*) FILTER (h_cart) AS cart_activity_sessions,
        coalesce(avg(cart_value) FILTER (atc > 0), 0) AS avg_cart_value, coalesce(avg(order_value) FILTER (pur > 0), 0) AS avg_order_value
      FROM f GROUP BY ALL)
SELECT *, sessions_with_atc / n_sessions AS atc_rate, sessions_with_checkout / n_sessions AS checkout_rate,
       bo / n_sessions AS browse_only_rate,
       (3*sessions_with_atc + 5*sessions_with_checkout + 8*sessions_with_purchase)
         / (n_sessions + 3*sessions_with_atc + 5*sessions_with_checkout + 8*sessions_with_purchase) AS intent_strength
FROM b ORDER BY shop_id, buyer_id'''
tab = con.execute(q).to_arrow_table()
print(json.dumps({"wall_s": time.perf_counter() - t, "buyers": tab.num_rows}))
"""

FEATURES = SETUP + """
import ibis.backends.duckdb  # imports outside the timing, as the hand side imports duckdb first
from simpersona.features.stage import EmbeddingConfig, FeaturesConfig, run
cfg = FeaturesConfig(input=inp, memory_limit=mem, threads=threads, progress=False, context=sys.argv[5] == "1",
                     embedding=EmbeddingConfig(enabled=False))
t = time.perf_counter()
s = run(cfg, out / "run")
print(json.dumps({"wall_s": time.perf_counter() - t, "buyers": s["buyers"], "steps_s": s["timings_s"]}))
"""

AGGREGATE = SETUP + """
import ibis.backends.duckdb  # imports outside the timing, as the hand side imports duckdb first
from simpersona.features.stage import FeaturesConfig, compute_buyers, connect
cfg = FeaturesConfig(input=inp, memory_limit=mem, threads=threads, progress=False, context=sys.argv[5] == "1")
t = time.perf_counter()
con = connect(cfg, out / "tmp")
b = compute_buyers(con, cfg, inp / "events.parquet", inp / "catalog.parquet", out)
print(json.dumps({"wall_s": time.perf_counter() - t, "buyers": b.num_rows}))
"""

MEANS = SETUP + """
import duckdb, numpy as np
import ibis.backends.duckdb
from simpersona.features.embed import channel_weights
from simpersona.features.stage import FeaturesConfig, buyer_product_rows, connect
c0 = duckdb.connect(config={"threads": threads, "memory_limit": mem})
c0.execute(f"COPY (SELECT shop_id, buyer_id, (row_number() OVER (ORDER BY shop_id, buyer_id)) - 1 AS buyer_row FROM (SELECT DISTINCT shop_id, buyer_id FROM read_parquet('{inp}/events.parquet'))) TO '{out}/keys.parquet'")
c0.execute(f"COPY (SELECT shop_id, product_id, (row_number() OVER (ORDER BY shop_id, product_id)) - 1 AS row FROM read_parquet('{inp}/catalog.parquet')) TO '{out}/index.parquet'")
n_b = c0.execute(f"SELECT count(*) FROM '{out}/keys.parquet'").fetchone()[0]
n_p = c0.execute(f"SELECT count(*) FROM '{out}/index.parquet'").fetchone()[0]
c0.close()
emb = np.random.default_rng(0).normal(size=(n_p, 384)).astype(np.float32)  # stands in for the cached embeddings
t = time.perf_counter()
con = connect(FeaturesConfig(threads=threads, memory_limit=mem, progress=False), out / "tmp")
b, p, c = buyer_product_rows(con, inp / "events.parquet", out / "keys.parquet", out / "index.parquet")
t1 = time.perf_counter()
for ch in range(3):  # the stage's way: a (buyer × product) 1/k matrix, multiplied block by block
    w, mask = channel_weights(b[c == ch], p[c == ch], n_b, n_p)
    for start in range(0, n_b, 200_000):
        m = np.asarray(w[start : start + 200_000] @ emb)  # (block × 384) float32, the PCA's input
t2 = time.perf_counter()
print(json.dumps({"wall_s": t2 - t, "pairs_s": t1 - t, "matmul_s": t2 - t1, "pairs": len(b), "buyers": n_b}))
"""

SIDES = {"hand_sql": HAND, "features": FEATURES, "features_aggregate": AGGREGATE, "embedding_mean": MEANS}


def measure(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter: the wall time it reports, its own peak RSS, load average."""
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as errf:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=errf, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # reap it ourselves to get this child's own rusage
        if os.waitstatus_to_exitcode(status) != 0:
            errf.seek(0)
            raise SystemExit(errf.read()[-3000:])
    res = json.loads(out.strip().splitlines()[-1])  # the child's last line is its JSON
    res["process_s"] = time.perf_counter() - t
    res["peak_rss_gib"] = usage.ru_maxrss / 2**20
    res["load1"] = round((load0 + os.getloadavg()[0]) / 2, 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, required=True, help="ingest folder (events.parquet, catalog.parquet)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_features"), help="scratch folder (deleted per run)")
    ap.add_argument("--memory-limit", default="2GB", help="DuckDB memory_limit for every side")
    ap.add_argument("--threads", type=int, default=2, help="engine threads for every side")
    ap.add_argument("--repeat", type=int, default=3, help="runs per side; medians are reported")
    ap.add_argument("--context", action="store_true", help="features sides also build the semantic list columns")
    ap.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ",".join(SIDES))
    a = ap.parse_args()
    import pyarrow.parquet as pq
    import shutil

    n_events = pq.read_metadata(a.input / "events.parquet").num_rows
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    unknown = set(sides) - set(SIDES)
    if unknown:
        raise SystemExit(f"--sides: unknown {sorted(unknown)}; choose from {sorted(SIDES)}")
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for i in range(a.repeat):
        for side in sides:  # alternate the sides within each repeat
            scratch = a.out / side
            shutil.rmtree(scratch, ignore_errors=True)
            r = measure(SIDES[side], str(a.input), str(scratch), a.memory_limit, str(a.threads), "1" if a.context else "0")
            shutil.rmtree(scratch, ignore_errors=True)
            runs[side].append(r)
            print(f"# repeat {i + 1} {side}: {r['wall_s']:.2f} s, peak RSS {r['peak_rss_gib']:.2f} GiB, load {r['load1']}",
                  file=sys.stderr, flush=True)
    res: dict = {"events": n_events, "threads": a.threads, "memory_limit": a.memory_limit, "context": a.context,
                 "cores": os.cpu_count(), "repeat": a.repeat}
    for side, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        res[side] = {
            "wall_s_median": round(wall, 3),
            "wall_s_all": [round(r["wall_s"], 3) for r in rs],
            "events_per_s": round(n_events / wall),
            "peak_rss_gib_max": round(max(r["peak_rss_gib"] for r in rs), 3),
            "load1_all": [r["load1"] for r in rs],
            **{k: v for k, v in rs[-1].items() if k not in ("wall_s", "process_s", "peak_rss_gib", "load1")},
        }
    if "hand_sql" in runs:
        h = [r["wall_s"] for r in runs["hand_sql"]]
        for side in ("features", "features_aggregate"):
            if side in runs:  # ratio per repeat (same conditions), then the median
                ratios = [f["wall_s"] / hh for f, hh in zip(runs[side], h, strict=True)]
                res[f"ratio_{side}_over_hand"] = round(statistics.median(ratios), 3)
                res[f"ratio_{side}_over_hand_all"] = [round(x, 3) for x in ratios]
    loads = [r["load1"] for rs in runs.values() for r in rs]
    res["load1_max"] = max(loads)
    res["reliable"] = max(loads) <= (os.cpu_count() or 1)
    if not res["reliable"]:
        res["note"] = (f"load average up to {max(loads)} on {os.cpu_count()} cores: absolute times and events/s are "
                       "inflated by other processes; the same-run ratio is the figure to read")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
