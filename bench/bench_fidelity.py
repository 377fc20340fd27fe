"""Benchmark: `evaluate fidelity` on 1,000 evaluation sessions with the fast policy (target ≤ 2 min on 2 cores).

    .venv/bin/python bench/bench_fidelity.py                        # a FABRICATED toy world (testing.world)
    .venv/bin/python bench/bench_fidelity.py --run runs/demo        # a main-job run folder (its split's evaluation shops)

Prints the machine's load average (before and after: the machine may be shared), the wall time of
each part (load + fit, next-action prediction, distributions + per persona) and, as the baseline
measured in the same run, the storefront's cost per agent step (policy episodes on the in-process
storefront): what replaying the same prediction steps on the storefront would cost instead of the
event-level prediction, per agent.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000, help="real evaluation sessions scored")
    ap.add_argument("--run", type=Path, default=None, help="a main-job run folder (ingest/, features/, personas/)")
    ap.add_argument("--storefront-episodes", type=int, default=40, help="policy episodes for the storefront baseline")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from simpersona.evaluate import fidelity as F

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    tmp = Path(tempfile.mkdtemp(prefix="bench_fidelity_"))
    if args.run is None:
        from simpersona.testing.world import make_toy_world

        t = time.perf_counter()
        world = make_toy_world(tmp / "world", shops=6, codes=16, buyers=400, seed=1)
        eval_shops = ["shop4", "shop5"]
        print(f"data: FABRICATED toy world (6 shops × 400 buyers, 16 codes; evaluation shops {eval_shops}), "
              f"made in {time.perf_counter() - t:.1f} s")
    else:
        world = {k: args.run / k for k in ("ingest", "features", "personas")}
        eval_shops = []
        print(f"data: {args.run} (evaluation shops: its split's, else its held-out shops)")
    cfg = F.FidelityConfig(ingest=world["ingest"], features=world["features"], personas=world["personas"],
                           eval_shops=eval_shops, max_sessions=args.sessions, threads=args.threads,
                           split=args.run / "split" if args.run is not None and (args.run / "split").exists() else None)
    t = time.perf_counter()
    r = F.run(cfg, tmp / "fidelity")
    wall = time.perf_counter() - t
    steps = r["next_action"]["steps"]
    tm = r["timing_s"]
    print(f"fidelity: {r['data']['real_sessions']:,} real sessions ({steps:,} prediction steps, "
          f"{r['data']['sim_sessions_per_agent']:,} simulated sessions × 4 agents) in {wall:.1f} s "
          f"(load+fit {tm['load_fit']} s, next action {tm['next_action']} s, distributions+per persona {tm['distributions']} s); "
          f"target ≤ 120 s: {'met' if wall <= 120 else 'NOT met'}")
    print(F.format_summary(r))

    # baseline: the storefront's cost per agent step (what per-step storefront replay would cost)
    from simpersona.simulate.stage import SimulateConfig
    from simpersona.simulate.stage import run as simulate

    shop = r["data"]["eval_shops"][0]
    t = time.perf_counter()
    s = simulate(SimulateConfig(ingest=world["ingest"], personas=world["personas"], shops=[shop], buyers=args.storefront_episodes,
                                concurrency=8), tmp / "sim", echo=lambda _: None)
    sf_wall = time.perf_counter() - t
    sf_steps = max(1, round(s["mean_steps"] * s["episodes"]))
    per_step = s["wall_s"] / sf_steps
    nap_per_step = tm["next_action"] / max(steps, 1)
    print(f"baseline (same run): {s['episodes']} policy episodes on the storefront, {sf_steps:,} agent steps in {s['wall_s']:.1f} s "
          f"= {1000 * per_step:.1f} ms/step ({sf_wall:.1f} s with the policy fit)")
    print(f"event-level next-action part (5 predictors + bootstrap CIs): {1000 * nap_per_step:.3f} ms/step "
          f"= {per_step / max(nap_per_step, 1e-9):,.0f}x cheaper than one storefront step; one storefront replay of the {steps:,} "
          f"steps (every agent predicting on the same pages) would add ≈ {steps * per_step:.0f} s, one per agent ≈ {4 * steps * per_step:.0f} s")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
