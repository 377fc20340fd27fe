"""Benchmark: `simpersona features` without text embeddings beside a hand-written DuckDB SQL of the
same scalar aggregation, in the same run; and the per-buyer embedding mean (sparse product).

    .venv/bin/simpersona synth --shops 20 --buyers 1300000 --seed 1 --out /tmp/fs/synth20m
    .venv/bin/simpersona ingest --format canonical --input /tmp/fs/synth20m/events.csv \\
        --catalog /tmp/fs/synth20m/catalog.parquet --out /tmp/fs/ing20m --set progress=false
    .venv/bin/python bench/bench_features.py --input /tmp/fs/ing20m --out /tmp/fs/bench --repeat 3

Sides, each run in its own fresh interpreter (peak RSS = that child's own ru_maxrss), alternated
hand / features / hand / features … so that machine load hits both alike; medians over --repeat:

- hand_sql: hand-written DuckDB SQL doing the aggregation step's work: events ⋈ catalog → the
  session table (same columns and definitions, money as DECIMAL) kept in a temp table and written
  to buyer_sessions.parquet, then the 16 scalars per (shop, buyer) from it, sorted, fetched to Arrow.
- features: `stage.run` with embedding.enabled=false: buyer_sessions.parquet, buyers.parquet,
  strata/labels, buyer × product pairs (masks), transforms, vectors.parquet — the whole stage.
  Its steps_s: aggregate_s, labels_s (strata, sample, labels, the scalar transform's fit), pairs_s
  (from the buyer keys to the product events in memory — b071218: from the product index to the
  distinct pairs; the pairs query runs while the labels are computed, so labels_s lies within it),
  vectors_s, files_wait_s; the rest of the wall time is reading the buyer table into numpy, transforms.json and summary.json. Since feat10 the stage
  writes buyer_sessions.parquet on the engine's thread and buyers.parquet on another while the
  vectors are written: aggregate_s no longer holds the sessions file (b071218's did), labels_s no
  longer holds buyers.parquet, vectors_s shares the cores with both, and files_wait_s is the wait
  for them after the vectors (b071218 reports no files_wait_s).
- features_aggregate: only the stage's aggregation step (`compute_buyers`: sessions written to
  buyer_sessions.parquet + the per-buyer scalars) — the like-for-like part of the comparison.
- vectors_floor: writing as many 403-float vectors (one per buyer, with the ids) to Parquet with the
  stage's writer and schema (`stage.vectors_writer`, `stage.VECTOR_SCHEMA`: since feat10 the vectors
  are declared non-null, which made this floor ≈40% lower) — the floor of the stage's vectors step. The vectors are
  shaped like the features side's (no embeddings: 16 random scalars, zero channels, 0/1 masks).
- embedding_mean: buyer × product pairs from the engine + three sparse (buyer × product) ×
  (product × 384) products with a fake embedding matrix.

Each side reports wall and CPU seconds (user + system, all threads) of its timed part; on a busy
machine the CPU ratio is the steadier one. The machine is shared: the 1-minute load average is printed with every run; with load above the
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
import sys, json, time, resource
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # user + system seconds, all threads
from pathlib import Path
inp, out, mem, threads = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
"""

HAND = SETUP + """
import duckdb
t, c0 = time.perf_counter(), cpu()
con = duckdb.connect(config={"threads": threads, "memory_limit": mem, "temp_directory": str(out / "tmp")})
con.execute("SET TimeZone='UTC'; SET preserve_insertion_order=false; SET enable_progress_bar=false")
n = lambda k: f"count(*) FILTER (event_type='{k}')"
money = lambda k: f"coalesce(sum(amount::DECIMAL(38, 6)) FILTER (event_type='{k}')::DOUBLE, 0)"
con.execute(f'''CREATE TEMP TABLE sessions AS
WITH e AS (SELECT e.shop_id, e.buyer_id, e.session_id, e.ts, e.event_type,
                  coalesce(e.price, c.price, 0) * coalesce(e.quantity, 1) AS amount
           FROM read_parquet('{inp}/events.parquet') e LEFT JOIN read_parquet('{inp}/catalog.parquet') c USING (shop_id, product_id)),
s AS (SELECT shop_id, buyer_id, session_id, {n('page_view')} AS n_page_view, {n('collection_view')} AS n_collection_view,
        {n('search')} AS n_search, {n('product_view')} AS n_product_view, {n('add_to_cart')} AS n_add_to_cart,
        {n('remove_from_cart')} AS n_remove_from_cart, {n('checkout_start')} AS n_checkout_start,
        {n('purchase')} AS n_purchase, count(*) AS n_events, min(ts) AS start_ts, max(ts) AS end_ts,
        {money('add_to_cart')} AS cart_value, {money('purchase')} AS order_value
      FROM e GROUP BY ALL)
SELECT *, (floor(epoch(end_ts)) - floor(epoch(start_ts)))::BIGINT AS duration_s, start_ts::DATE AS start_day,
       n_product_view > 0 AS has_view, n_purchase > 0 OR n_checkout_start > 0 OR n_add_to_cart > 0 AS has_atc,
       n_purchase > 0 OR n_checkout_start > 0 AS has_checkout, n_purchase > 0 AS has_purchase, n_search > 0 AS has_search,
       n_collection_view > 0 AS has_collection,
       (n_product_view > 0 OR n_collection_view > 0 OR n_search > 0)
         AND NOT (n_purchase > 0 OR n_checkout_start > 0 OR n_add_to_cart > 0 OR n_remove_from_cart > 0) AS is_browse_only,
       n_purchase > 0 OR n_checkout_start > 0 OR n_add_to_cart > 0 OR n_remove_from_cart > 0 AS has_cart_activity
FROM s''')
con.execute(f"COPY sessions TO '{out}/buyer_sessions.parquet' (FORMAT parquet)")
flag = lambda c: f"count(*) FILTER ({c})"
tab = con.execute(f'''
WITH b AS (SELECT shop_id, buyer_id, count(*) AS n_sessions, count(DISTINCT start_day) AS active_days,
        {flag('has_view')} AS sessions_with_view, {flag('has_atc')} AS sessions_with_atc,
        {flag('has_checkout')} AS sessions_with_checkout, {flag('has_search')} AS sessions_with_search,
        {flag('has_collection')} AS sessions_with_collection, {flag('has_purchase')} AS sessions_with_purchase,
        sum(duration_s)::BIGINT AS total_duration_s, sum(n_product_view)::BIGINT AS total_product_views,
        {flag('is_browse_only')} AS browse_only_sessions, {flag('has_cart_activity')} AS cart_activity_sessions,
        coalesce(avg(cart_value::DECIMAL(38, 6)) FILTER (n_add_to_cart > 0)::DOUBLE, 0) AS avg_cart_value,
        coalesce(avg(order_value::DECIMAL(38, 6)) FILTER (n_purchase > 0)::DOUBLE, 0) AS avg_order_value
      FROM sessions GROUP BY ALL)
SELECT shop_id, buyer_id, n_sessions, active_days, sessions_with_view, sessions_with_atc, sessions_with_checkout,
       sessions_with_search, sessions_with_collection, sessions_with_purchase, total_duration_s, total_product_views,
       sessions_with_atc / n_sessions AS atc_rate, sessions_with_checkout / n_sessions AS checkout_rate,
       browse_only_sessions / n_sessions AS browse_only_rate,
       (3*sessions_with_atc + 5*sessions_with_checkout + 8*sessions_with_purchase)
         / (n_sessions + 3*sessions_with_atc + 5*sessions_with_checkout + 8*sessions_with_purchase) AS intent_strength,
       avg_cart_value, avg_order_value, browse_only_sessions, cart_activity_sessions
FROM b ORDER BY shop_id, buyer_id''').to_arrow_table()
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": cpu() - c0, "buyers": tab.num_rows}))
"""

FEATURES = SETUP + """
import ibis.backends.duckdb  # imports outside the timing, as the hand side imports duckdb first
from simpersona.features.stage import EmbeddingConfig, FeaturesConfig, run
cfg = FeaturesConfig(input=inp, memory_limit=mem, threads=threads, progress=False, context=sys.argv[5] == "1",
                     embedding=EmbeddingConfig(enabled=False))
t, c0 = time.perf_counter(), cpu()
s = run(cfg, out / "run")
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": cpu() - c0, "buyers": s["buyers"], "steps_s": s["timings_s"]}))
"""

AGGREGATE = SETUP + """
import ibis.backends.duckdb  # imports outside the timing, as the hand side imports duckdb first
from simpersona.features.stage import FeaturesConfig, compute_buyers, connect
cfg = FeaturesConfig(input=inp, memory_limit=mem, threads=threads, progress=False, context=sys.argv[5] == "1")
t, c0 = time.perf_counter(), cpu()
con = connect(cfg, out / "tmp")
b = compute_buyers(con, cfg, inp / "events.parquet", inp / "catalog.parquet", out)
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": cpu() - c0, "buyers": b.num_rows}))
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
t, c0 = time.perf_counter(), cpu()
con = connect(FeaturesConfig(threads=threads, memory_limit=mem, progress=False), out / "tmp")
b, p, c = buyer_product_rows(con, inp / "events.parquet", out / "keys.parquet", out / "index.parquet")
t1 = time.perf_counter()
for ch in range(3):  # the stage's way: a (buyer × product) 1/k matrix, multiplied block by block
    w, mask = channel_weights(b[c == ch], p[c == ch], n_b, n_p)
    for start in range(0, n_b, 200_000):
        m = np.asarray(w[start : start + 200_000] @ emb)  # (block × 384) float32, the PCA's input
t2 = time.perf_counter()
print(json.dumps({"wall_s": t2 - t, "cpu_s": cpu() - c0, "pairs_s": t1 - t, "matmul_s": t2 - t1, "pairs": len(b), "buyers": n_b}))
"""

VECTORS_FLOOR = SETUP + """
import duckdb, numpy as np, pyarrow as pa, pyarrow.parquet as pq
from simpersona.features.layout import INPUT_DIM, MASKS, N_SCALARS
from simpersona.features.stage import VECTOR_SCHEMA, FeaturesConfig, vectors_writer
c = duckdb.connect(config={"threads": threads})
c.execute("SET enable_progress_bar=false")
keys = c.execute(f"SELECT DISTINCT shop_id, buyer_id FROM read_parquet('{inp}/events.parquet') ORDER BY ALL").to_arrow_table()
n, block = keys.num_rows, FeaturesConfig.block_rows
# one block, reused, shaped like the stage's vectors without embeddings (the features side): random
# scalars and 0/1 masks, zero channels — Parquet writes zeros faster than random floats (6.7 s vs
# 9.2 s for 1.3M vectors, one run at load 1)
rng = np.random.default_rng(0)
x = np.zeros((min(n, block), INPUT_DIM), dtype=np.float32)
x[:, :N_SCALARS] = rng.standard_normal((len(x), N_SCALARS), dtype=np.float32)
x[:, MASKS] = rng.integers(0, 2, (len(x), 3))
t, c0 = time.perf_counter(), cpu()
with vectors_writer(out / "vectors.parquet") as wr:  # the stage's writer and settings
    for start in range(0, n, block):
        end = min(n, start + block)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(x[: end - start].ravel(), pa.float32()), type=VECTOR_SCHEMA.field("x").type)
        wr.write_table(pa.table({"shop_id": keys["shop_id"][start:end], "buyer_id": keys["buyer_id"][start:end], "x": arr},
                                schema=VECTOR_SCHEMA))
print(json.dumps({"wall_s": time.perf_counter() - t, "cpu_s": cpu() - c0, "buyers": n}))
"""

SIDES = {"hand_sql": HAND, "features": FEATURES, "features_aggregate": AGGREGATE, "vectors_floor": VECTORS_FLOOR,
         "embedding_mean": MEANS}


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
            "cpu_s_median": round(statistics.median(r["cpu_s"] for r in rs), 3),
            "events_per_s": round(n_events / wall),
            "peak_rss_gib_max": round(max(r["peak_rss_gib"] for r in rs), 3),
            "load1_all": [r["load1"] for r in rs],
            **{k: v for k, v in rs[-1].items() if k not in ("wall_s", "cpu_s", "process_s", "peak_rss_gib", "load1")},
        }
    def ratio(name: str, num: list[float], den: list[float]) -> None:  # per repeat (same conditions), then the median
        rs = [a / b for a, b in zip(num, den, strict=True)]
        res[name] = round(statistics.median(rs), 3)
        res[name + "_all"] = [round(x, 3) for x in rs]

    if "hand_sql" in runs:
        for side in ("features", "features_aggregate"):
            for k in ("wall_s", "cpu_s") if side in runs else ():
                ratio(f"ratio_{side}_over_hand{'_cpu' if k == 'cpu_s' else ''}",
                      [r[k] for r in runs[side]], [r[k] for r in runs["hand_sql"]])
    if "features" in runs and "vectors_floor" in runs:  # the stage's vectors step over writing as many floats
        ratio("ratio_vectors_step_over_floor", [r["steps_s"]["vectors_s"] for r in runs["features"]],
              [r["wall_s"] for r in runs["vectors_floor"]])
    loads = [r["load1"] for rs in runs.values() for r in rs]
    res["load1_max"] = max(loads)
    res["reliable"] = max(loads) <= (os.cpu_count() or 1)
    if not res["reliable"]:
        res["note"] = (f"load average up to {max(loads)} on {os.cpu_count()} cores: absolute times and events/s are "
                       "inflated by other processes; the same-run ratio is the figure to read")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
