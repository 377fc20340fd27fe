"""Benchmark of the traces stage (not a test): replayed sessions per minute on generated shops.

    .venv/bin/python bench/bench_traces.py                          # 8 shops, 4,000 buyers, 600 sessions
    .venv/bin/python bench/bench_traces.py --shops 12 --buyers 20000 --sessions 2000

Data: the synthetic generator → ingest → features (embeddings off: the replay does not use them),
then persona codes drawn from the hashed buyer ids (K = 16; the replay's
speed does not depend on what the codes mean). The stage then samples `--sessions` sessions
(every code represented), builds goals, replays them on the in-process storefront (ASGI, no
sockets), judges them and writes the JSONL. Reported in the same run: replayed sessions per
minute of replay time and of the whole stage, env steps per second, records per second, the
kept share and the drop reasons.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shops", type=int, default=8)
    ap.add_argument("--buyers", type=int, default=4000)
    ap.add_argument("--sessions", type=int, default=600, help="target sessions to replay")
    ap.add_argument("--k", type=int, default=16, help="persona codes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from simpersona.config import load_config
    from simpersona.events import ingest
    from simpersona.features import stage as features
    from simpersona.synth import generate
    from simpersona.traces import stage

    work = args.out or Path(tempfile.mkdtemp(prefix="bench_traces_"))
    t = time.perf_counter()
    sc = load_config(generate.SynthConfig, "tiny", [f"shops={args.shops}", f"buyers={args.buyers}", f"seed={args.seed}",
                                                    "products_per_shop=300", "file_format=parquet"], section="synth")
    generate.run(sc, work / "synth")
    ic = load_config(ingest.IngestConfig, "tiny", ["progress=false"], section="ingest", values={
        "format": "canonical", "input": str(work / "synth" / "events.parquet"), "catalog": str(work / "synth" / "catalog.parquet")})
    ingest.run(ic, work / "ingest")
    fc = load_config(features.FeaturesConfig, "tiny", ["embedding.enabled=false"], section="features", values={"input": str(work / "ingest")})
    features.run(fc, work / "features")
    prep_s = time.perf_counter() - t
    buyers = pq.read_table(work / "features" / "buyers.parquet", columns=["shop_id", "buyer_id"])
    codes = pa.array([int(b[:8], 16) % args.k for b in buyers.column("buyer_id").to_pylist()], pa.int16())
    (work / "personas").mkdir(exist_ok=True)
    pq.write_table(buyers.append_column("code", codes), work / "personas" / "assignments.parquet")

    cfg = stage.TracesConfig(ingest=work / "ingest", features=work / "features", personas=work / "personas")
    cfg.sample.target_sessions = args.sessions
    cfg.sample.max_sessions_per_code = 0
    cfg.sample.min_sessions_per_code = 1
    cfg.sample.seed = args.seed
    t = time.perf_counter()
    s = stage.run(cfg, work / "traces")
    stage_s = time.perf_counter() - t
    steps = sum(r["steps"] for r in pq.read_table(work / "traces" / "sessions.parquet", columns=["steps"]).to_pylist())
    result = {
        "data": f"{args.shops} generated shops, {args.buyers} buyers (prepared in {prep_s:.1f}s)",
        "replayed": s["replayed"], "kept": s["kept"], "kept_share": round(s["kept"] / max(s["replayed"], 1), 3),
        "dropped_by_reason": s["dropped_by_reason"], "records": s["records_total"],
        "replay_s": s["replay_s"], "stage_s": round(stage_s, 2),
        "traces_per_min_replay": s["traces_per_min"],
        "traces_per_min_stage": round(60 * s["replayed"] / stage_s, 1),
        "env_steps_per_s": round(steps / s["replay_s"], 1) if s["replay_s"] else 0.0,
        "records_per_s_stage": round(s["records_total"] / stage_s, 1),
        "mean_steps_per_session": round(steps / max(s["replayed"], 1), 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible (2 shared with other engineers)",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
