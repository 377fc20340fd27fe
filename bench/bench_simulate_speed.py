"""Benchmark of policy simulation through the storefront (not a test; issue 15 item 4): sessions/s of
the fast persona policy on the real storefront app, the current path against the path it replaced,
beside the policy alone, all in one run.

    .venv/bin/python bench/bench_simulate_speed.py                          # 2,000 sessions, 3 rounds
    .venv/bin/python bench/bench_simulate_speed.py --shops 4 --products 300 --sessions 4000 --rounds 5

World: `testing.world.make_toy_world` (default 2 shops × 48 products, bench_simulate.py's; 4 persona
codes, FABRICATED sessions fit the policy); `simulate` stage, concurrency 32, seed 0, its
sessions/s (wall of the episodes, storefront apps included) and CPU-ms per session (CPU time of the
episodes, workers included: the figure a loaded, shared machine distorts least). Variants, each in a fresh process, alternating per round so
drift on a shared machine hits all alike; medians of the rounds; the load average before each:
  - before:  the storefront and simulation code of `--baseline` (a git revision of this
             repository, default the commit before the fast path: httpx's ASGITransport as the
             client, FastAPI's dependency injection, every page rendered and parsed, one process)
  - now, 1 worker / now, N workers (`simulate.workers`; N = this machine's CPUs, `--workers`)
  - policy alone: `agents.policy.rollout` on the same fitted model (vectorised numpy, no storefront)
Also checked once: the event log of `now, N workers` equals `before`'s (every field but the
wall-clock ts, sessions in the same order, each session's events in logged order).
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

REPO = Path(__file__).resolve().parents[1]
DRIVER = """
import json, resource, sys, time
from pathlib import Path
from simpersona.simulate import stage
a = json.loads(sys.argv[1])
cfg = stage.SimulateConfig(ingest=Path(a["ingest"]), personas=Path(a["personas"]), buyers=a["buyers"], concurrency=32,
                           seed=0, **a["extra"])
inner, cpu = stage.simulate, {}

def cpu_s():
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime

def timed(*args, **kw):  # CPU seconds of the episodes, this process and its workers together
    t = cpu_s()
    out = inner(*args, **kw)
    cpu["s"] = cpu_s() - t
    return out

stage.simulate = timed
s = stage.run(cfg, Path(a["out"]), echo=lambda line: None)
print(json.dumps({**s, "cpu_s": cpu["s"]}))
"""


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_sim(src: Path, world: dict, out: Path, buyers: int, extra: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_WAIT_POLICY": "PASSIVE"}
    arg = json.dumps({"ingest": str(world["ingest"]), "personas": str(world["personas"]), "out": str(out), "buyers": buyers,
                      "extra": extra})
    p = subprocess.run([sys.executable, "-c", DRIVER, arg], env=env, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def same_log(a: Path, b: Path) -> tuple[bool, int]:
    """(events equal but for ts, rows) of two simulate folders, both in `runner.session_order`."""
    import pyarrow.parquet as pq

    from simpersona.simulate.runner import session_order

    ta, tb = (session_order(pq.read_table(x / "events.parquet")).drop_columns(["ts"]) for x in (a, b))
    return ta.equals(tb), ta.num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=2000, help="simulated sessions per measurement (over all shops)")
    ap.add_argument("--shops", type=int, default=2, help="shops of the toy world")
    ap.add_argument("--products", type=int, default=48, help="products per shop")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every variant (medians reported)")
    ap.add_argument("--baseline", default="1c8d1c7", help="git revision of the path before (its src/ is used)")
    ap.add_argument("--workers", type=int, default=0, help="workers of the parallel variant (0: one per CPU)")
    ap.add_argument("--rollout", type=int, default=1_000_000, help="sessions of the policy-alone rollout")
    a = ap.parse_args()
    import numpy as np

    from simpersona.agents.policy import PolicyModel, fit_counts, rollout
    from simpersona.simulate.runner import worker_count
    from simpersona.testing.world import make_toy_world

    tmp = Path(tempfile.mkdtemp(prefix="bench_simspeed_"))
    world = make_toy_world(tmp / "world", shops=a.shops, codes=4, buyers=200, products=a.products)
    base_src = tmp / "baseline"
    base_src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", a.baseline, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
    workers = worker_count(a.workers)
    buyers = a.sessions // a.shops
    # name: (src folder, extra simulate settings, output folder prefix)
    variants = {"before": (base_src / "src", {}, "before"), "now, 1 worker": (REPO / "src", {"workers": 1}, "now1"),
                f"now, {workers} workers": (REPO / "src", {"workers": workers}, f"now{workers}")}
    print(f"world: {a.shops} shops x {a.products} products (fabricated), {buyers * a.shops:,} sessions per measurement; baseline {a.baseline}; "
          f"{os.cpu_count()} CPUs; load average at start {load()}")
    rates: dict[str, list[float]] = {k: [] for k in variants}
    cpu_ms: dict[str, list[float]] = {k: [] for k in variants}
    rates["policy alone"] = []
    codes, counts = fit_counts(world["ingest"] / "events.parquet", world["personas"] / "assignments.parquet")
    model = PolicyModel(codes, counts)
    for r in range(a.rounds):
        for name, (src, extra, slug) in variants.items():
            before = load()
            s = run_sim(src, world, tmp / f"{slug}-{r}", buyers, extra)
            rates[name].append(s["sessions_per_s"])
            cpu_ms[name].append(s["cpu_s"] / s["episodes"] * 1000)
            print(f"round {r + 1} {name:16s}: {s['episodes']:,} sessions, {s['events']:,} events, {s['mean_steps']:.2f} steps/session "
                  f"in {s['wall_s']:.2f} s = {s['sessions_per_s']:,.0f} sessions/s, {cpu_ms[name][-1]:.2f} CPU-ms/session (load {before})")
        rng = np.random.default_rng(r)
        rows = rng.integers(0, len(model.probs), a.rollout)
        before = load()
        t = time.perf_counter()
        rollout(model.probs, rows, 30, rng)
        rates["policy alone"].append(a.rollout / (time.perf_counter() - t))
        print(f"round {r + 1} policy alone    : {a.rollout:,} sessions = {rates['policy alone'][-1]:,.0f} sessions/s (load {before})")
    ok, rows = same_log(tmp / "before-0", tmp / f"now{workers}-0")
    print(f"event log of 'now, {workers} workers' equals the one before (ts aside, {rows:,} rows): {ok}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\nmedians of {a.rounds} (load average at end {load()}):")
    for k, v in med.items():
        cpu = f"   {statistics.median(cpu_ms[k]):6.2f} CPU-ms/session ({statistics.median(cpu_ms['before']) / statistics.median(cpu_ms[k]):.2f}x less)" if k in cpu_ms else ""
        print(f"  {k:18s} {v:>14,.0f} sessions/s   {v / med['before']:8.2f}x before{cpu}")
    print(f"  policy alone / now, {workers} workers: {med['policy alone'] / med[f'now, {workers} workers']:,.0f}x")


if __name__ == "__main__":
    main()
