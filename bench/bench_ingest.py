"""Ingest throughput and peak memory against a bare DuckDB copy of the same file, in one run.

    .venv/bin/python bench/bench_ingest.py --events 10000000
    git worktree add --detach /tmp/old <commit> && \
        .venv/bin/python bench/bench_ingest.py --events 2000000 --repeat 3 --compare-src /tmp/old/src

Generates a canonical CSV with `simpersona synth` (cached under --work), then runs, each in its
own process so peak RSS is its own:
  1. baseline: DuckDB `COPY (SELECT * FROM read_csv(file)) TO parquet` — no validation;
  2. `simpersona ingest --format canonical` — mapping, validation, duplicates, HMAC, catalog;
  3. with --compare-src, the same ingest from another checkout's `src/` (e.g. the code before a
     change), so a change's cost is a ratio measured in the same run;
  4. with --malformed-per-mille N, ingest of a copy of the file in which N‰ of the lines (seeded)
     carry an extra field (malformed rows every real log has), by both checkouts: malformed lines
     once made every later pass over the staged rows pay a per-row correction (171 s vs 8.6 s at
     1M lines).
  5. with --profile, the floor any ingest with these guarantees pays on DuckDB, in its own processes:
     the parse alone (every column of the CSV read, nothing written), the write alone of the ingest's
     own events.parquet (its rows from memory to zstd Parquet: the HMAC ids are what is written) and
     one more ingest whose queries are timed one by one; the work no ingest can skip beyond parse and
     write (duplicates, distinct keys, HMAC of ids, catalog) is summed from those timings. parse +
     write + that work, over the bare COPY, is the best ratio this design of ingest could reach.
Sides alternate within each repeat (medians reported). Also times the line count alone
(`events.lines.count_lines`, the check that every data line is accounted for).
Prints events/s, wall time, peak RSS and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

EVENTS_PER_BUYER = 17.0  # what the default generator gives, measured on the tiny preset

CHILD_BASELINE = """
import duckdb, json, resource, sys, time
src, out, threads, mem = sys.argv[1:5]
con = duckdb.connect()
con.execute(f"SET threads={threads}; SET memory_limit='{mem}'")
t = time.perf_counter()
con.execute(f"COPY (SELECT * FROM read_csv('{src}')) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
r = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": r.ru_utime + r.ru_stime, "rss_mb": r.ru_maxrss / 1024}))
"""

CHILD_INGEST = """
import json, resource, sys, time
from pathlib import Path
from simpersona.events import ingest
src, cat, out, threads, mem = sys.argv[1:6]
cfg = ingest.IngestConfig(format="canonical", input=Path(src), catalog=Path(cat), threads=int(threads),
                          memory_limit=mem, salt="00" * 16, progress=False)
t = time.perf_counter()
s = ingest.run(cfg, Path(out))
r = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": r.ru_utime + r.ru_stime, "rss_mb": r.ru_maxrss / 1024,
                  "read": s["read"], "accepted": s["accepted"], "rejected": s["rejected"]}))
"""


CHILD_PARSE = """
import duckdb, json, sys, time
src, threads, mem = sys.argv[1:4]
con = duckdb.connect()
con.execute(f"SET threads={threads}; SET memory_limit='{mem}'")
cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_csv('{src}')").fetchall()]
t = time.perf_counter()
con.execute(f"SELECT count(*), " + ", ".join(f'max("{c}")::VARCHAR' for c in cols) + f" FROM read_csv('{src}')").fetchall()
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

CHILD_WRITE = """
import duckdb, json, sys, time
events, out, threads, mem = sys.argv[1:5]
con = duckdb.connect()
con.execute(f"SET threads={threads}; SET memory_limit='{mem}'")
con.execute(f"CREATE TEMP TABLE ev AS SELECT * FROM read_parquet('{events}')")
t = time.perf_counter()
con.execute(f"COPY ev TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

# ingest with each DuckDB query timed (a proxy around the connection); prints the slowest queries
CHILD_PROFILE = """
import duckdb, json, sys, time
from pathlib import Path
from simpersona.events import ingest
src, cat, out, threads, mem = sys.argv[1:6]
connect, times = duckdb.connect, []
class Timed:
    def __init__(self, con):
        self._con = con
    def execute(self, q, *a, **k):
        t = time.perf_counter()
        r = self._con.execute(q, *a, **k)
        times.append([time.perf_counter() - t, " ".join(q.split())])
        return r
    def __getattr__(self, name):
        return getattr(self._con, name)
ingest.duckdb.connect = lambda *a, **k: Timed(connect(*a, **k))
cfg = ingest.IngestConfig(format="canonical", input=Path(src), catalog=Path(cat), threads=int(threads),
                          memory_limit=mem, salt="00" * 16, progress=False)
t = time.perf_counter()
ingest.run(cfg, Path(out))
print(json.dumps({"seconds": time.perf_counter() - t, "queries": times}))
"""

# the queries of the work beyond parse and write, by how their SQL starts
REQUIRED_WORK = {
    "duplicates": ("CREATE OR REPLACE TEMP TABLE _duph",),
    "distinct keys": ("CREATE OR REPLACE TEMP TABLE _keys",),
    "HMAC of buyer ids": ("CREATE OR REPLACE TEMP TABLE _ids",),
    "HMAC of session ids": ("CREATE OR REPLACE TEMP TABLE _sids",),
    "catalog": ("CREATE OR REPLACE TEMP TABLE cat_rows", "CREATE TEMP TABLE cat", "UPDATE cat",
                "INSERT INTO catalog_rejects", "COPY (SELECT shop_id, product_id"),
}


def child(code: str, *args: str, src: Path | None = None) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(Path(src).resolve())
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def write_malformed(src: Path, out: Path, share: float, seed: int = 0) -> None:
    """A copy of `src` in which each data line, with probability `share`, gets an extra field."""
    import random

    rng = random.Random(seed)
    with open(src, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
        g.write(f.readline())
        for line in f:
            g.write(line[:-1] + ",extra\n" if rng.random() < share and line.endswith("\n") else line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000, help="approximate number of events to generate")
    ap.add_argument("--work", type=Path, default=Path("bench/results/ingest"), help="scratch folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", default="1500MB", help="DuckDB memory limit for both runs")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side; the median is reported")
    ap.add_argument("--compare-src", type=Path, default=None, help="another checkout's src/ to time against")
    ap.add_argument("--profile", action="store_true",
                    help="also measure the floor: parse alone, write of the output alone, and the ingest's queries one by one")
    ap.add_argument("--malformed-per-mille", type=float, default=0.0,
                    help="also ingest a copy with this many malformed lines per 1,000 (0 = off)")
    args = ap.parse_args()

    buyers = max(100, int(args.events / EVENTS_PER_BUYER))
    data = args.work / f"synth_{buyers}"
    if not (data / "meta.json").exists():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "simpersona", "synth", "--shops", "20", "--buyers", str(buyers),
                        "--seed", "1", "--out", str(data)], check=True, stdout=subprocess.DEVNULL)
        print(f"generated {data} in {time.perf_counter() - t:.1f}s")
    src, cat = data / "events.csv", data / "catalog.parquet"
    size_mb = src.stat().st_size / 2**20
    dirty = args.work / f"malformed_{args.malformed_per_mille:g}.csv"
    if args.malformed_per_mille and not dirty.exists():
        write_malformed(src, dirty, args.malformed_per_mille / 1000)

    base, ing, old, bad, bad_old = [], [], [], [], []
    for _ in range(args.repeat):
        base.append(child(CHILD_BASELINE, src, args.work / "baseline.parquet", args.threads, args.memory_limit))
        ing.append(child(CHILD_INGEST, src, cat, args.work / "ingest_out", args.threads, args.memory_limit))
        if args.compare_src:
            old.append(child(CHILD_INGEST, src, cat, args.work / "ingest_old", args.threads, args.memory_limit,
                             src=args.compare_src))
        if args.malformed_per_mille:
            bad.append(child(CHILD_INGEST, dirty, cat, args.work / "ingest_bad", args.threads, args.memory_limit))
            if args.compare_src:
                bad_old.append(child(CHILD_INGEST, dirty, cat, args.work / "ingest_bad_old", args.threads,
                                     args.memory_limit, src=args.compare_src))
    med = lambda xs, k: sorted(x[k] for x in xs)[len(xs) // 2]  # noqa: E731
    from simpersona.events.lines import count_lines

    t = time.perf_counter()
    count = count_lines(src)
    t_count = time.perf_counter() - t
    n = ing[0]["read"]
    b_s, i_s = med(base, "seconds"), med(ing, "seconds")
    b_c, i_c = med(base, "cpu"), med(ing, "cpu")
    print(f"input: {src} ({size_mb:,.0f} MiB, {n:,} events), threads={args.threads}, memory_limit={args.memory_limit}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (CPU seconds are the steadier figure on a busy machine)")
    print(f"{'':28}{'wall s':>9}{'CPU s':>9}{'events/s':>14}{'peak RSS MiB':>15}")
    print(f"{'bare DuckDB COPY → parquet':28}{b_s:9.2f}{b_c:9.2f}{n / b_s:14,.0f}{med(base, 'rss_mb'):15,.0f}")
    print(f"{'simpersona ingest':28}{i_s:9.2f}{i_c:9.2f}{n / i_s:14,.0f}{med(ing, 'rss_mb'):15,.0f}")
    print(f"ratio ingest / bare copy: wall {i_s / b_s:.2f}×, CPU {i_c / b_c:.2f}×  "
          f"(accepted {ing[0]['accepted']:,}, rejected {ing[0]['rejected']:,})")
    print(f"line count alone (count_lines, {count.lines:,} lines): {t_count:.2f}s = {t_count / i_s:.1%} of the ingest wall")
    if old:
        o_s, o_c = med(old, "seconds"), med(old, "cpu")
        print(f"{'ingest from --compare-src':28}{o_s:9.2f}{o_c:9.2f}{n / o_s:14,.0f}{med(old, 'rss_mb'):15,.0f}")
        print(f"ratio ingest / --compare-src ({args.compare_src}): wall {i_s / o_s:.2f}×, CPU {i_c / o_c:.2f}×  "
              f"(its accepted {old[0]['accepted']:,}, rejected {old[0]['rejected']:,})")
    if args.profile:
        profile(args, src, cat, b_s, i_s)
    if bad:
        d_s = med(bad, "seconds")
        print(f"with {args.malformed_per_mille:g}‰ malformed lines ({dirty}): ingest {d_s:.2f} s "
              f"({d_s / i_s:.2f}× the clean file; rejected {bad[0]['rejected']:,})")
        if bad_old:
            print(f"  from --compare-src: {med(bad_old, 'seconds'):.2f} s "
                  f"(rejected {bad_old[0]['rejected']:,}); ratio {d_s / med(bad_old, 'seconds'):.2f}×")


def profile(args, src: Path, cat: Path, b_s: float, i_s: float) -> None:
    """The --profile figures: medians over --repeat of parse alone, write alone and each ingest query."""
    parse, write, prof = [], [], []
    for _ in range(args.repeat):
        parse.append(child(CHILD_PARSE, src, args.threads, args.memory_limit)["seconds"])
        write.append(child(CHILD_WRITE, args.work / "ingest_out" / "events.parquet", args.work / "write_floor.parquet",
                           args.threads, args.memory_limit)["seconds"])
        prof.append(child(CHILD_PROFILE, src, cat, args.work / "ingest_prof", args.threads, args.memory_limit))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    by_query: dict[str, list[float]] = {}
    for run in prof:
        seen: dict[str, float] = {}
        for dt, q in run["queries"]:
            q = re.sub(r"'\d{4}-\d\d-\d\dT[^']*'", "'<ts>'", q)  # the check's "now + 1 day" differs run to run
            seen[q] = seen.get(q, 0.0) + dt
        for q, dt in seen.items():
            by_query.setdefault(q, []).append(dt)
    queries = sorted(((med(v), q) for q, v in by_query.items()), reverse=True)
    required = {name: sum(dt for dt, q in queries if q.startswith(starts)) for name, starts in REQUIRED_WORK.items()}
    unmatched = [name for name, starts in REQUIRED_WORK.items() if not any(q.startswith(starts) for _, q in queries)]
    if unmatched:  # ingest's SQL changed: a silent 0 would understate the floor
        raise SystemExit(f"--profile: no ingest query matched {unmatched}; update REQUIRED_WORK")
    p_s, w_s, r_s = med(parse), med(write), sum(required.values())
    print(f"\nprofile (medians of {args.repeat}; one more ingest with its queries timed: "
          f"{med([r['seconds'] for r in prof]):.2f} s):")
    for dt, q in queries[:8]:
        print(f"  {dt:7.2f} s  {q[:100]}")
    print(f"floor: parse alone {p_s:.2f} s, write of the output alone {w_s:.2f} s (events.parquet from memory), "
          "work beyond them " + ", ".join(f"{k} {v:.2f}" for k, v in required.items()) + f" = {r_s:.2f} s")
    print(f"  parse + write + that work = {p_s + w_s + r_s:.2f} s = {(p_s + w_s + r_s) / b_s:.2f}× the bare COPY "
          f"(the ingest: {i_s / b_s:.2f}×); the work beyond parse and write alone is {r_s / b_s:.2f}× it")


if __name__ == "__main__":
    main()
