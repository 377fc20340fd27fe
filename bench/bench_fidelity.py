"""Benchmark: `evaluate fidelity` on 1,000 evaluation sessions with the fast policy (target ≤ 2 min on 2 cores).

    .venv/bin/python bench/bench_fidelity.py                        # a FABRICATED toy world (testing.world)
    .venv/bin/python bench/bench_fidelity.py --run runs/demo        # a main-job run folder (its split's evaluation shops)
    .venv/bin/python bench/bench_fidelity.py --run runs/agent --llm-checkpoint runs/agent/sft/stage2 --llm-sessions 8
                                                                    # + the LLM agent's next action on the storefront

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
    ap.add_argument("--llm-checkpoint", type=Path, default=None, help="an SFT stage folder: also the LLM agent's next action")
    ap.add_argument("--llm-sessions", type=int, default=8, help="real sessions the LLM agent predicts step by step")
    ap.add_argument("--llm-engine", default="transformers", help="transformers or onnx")
    ap.add_argument("--llm-engine-cache", type=Path, default=None, help="onnx: where converted engines are kept (llm.engine_cache)")
    ap.add_argument("--llm-conditions", default="persona,no_persona", help="comma-separated: persona, no_persona, random_persona")
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
                           codes="assigned" if args.run is None else "history",  # the toy world's codes are planted
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
    print(f"load average after the fidelity run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

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
    # last: the LLM agent (slow on CPU), after the figures above are printed
    if args.llm_checkpoint is not None:
        from simpersona.evaluate.nextaction import llm_next_action

        cfg.llm_agent, cfg.llm_sessions, cfg.llm_conditions = "llm", args.llm_sessions, args.llm_conditions.split(",")
        cfg.llm.checkpoint, cfg.llm.threads, cfg.llm.engine = args.llm_checkpoint, args.threads, args.llm_engine
        if args.llm_engine_cache is not None:
            cfg.llm.engine_cache = args.llm_engine_cache
        labels = F.buyer_labels(cfg, r["data"]["eval_shops"], tmp / "llm_labels")  # the same history codes as the run's
        t = time.perf_counter()
        m = llm_next_action(cfg, r["data"]["eval_shops"], labels)
        llm_wall = time.perf_counter() - t
        if m.get("value", 0) is None:
            print(f"LLM agent: {m['note']}")
        else:
            print(f"LLM agent ({m['agent']['checkpoint_id'] or m['agent']['checkpoint']}, {cfg.llm.decoding} decoding, "
                  f"{cfg.llm.engine} engine): {m['sessions']} sessions, {m['steps']} steps × "
                  f"{len(cfg.llm_conditions)} conditions = {m['decisions']} decisions in {llm_wall:.1f} s "
                  f"({m['decisions'] / max(m['timing_s']['predict'], 1e-9):.3f} decisions/s; replay {m['timing_s']['replay']} s)")
            print("\n".join(F.format_llm(m)))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
