"""Benchmark: the features stage end to end and persona assignment on DuckDB (local) and on Spark
(local[threads] session), in one run, with the parity of their outputs.

    .venv/bin/simpersona synth --shops 20 --buyers 1300000 --seed 1 --file-format parquet --out /tmp/sp/synth20m
    .venv/bin/simpersona ingest --format canonical --input /tmp/sp/synth20m/events.parquet \\
        --catalog /tmp/sp/synth20m/catalog.parquet --out /tmp/sp/ing20m --set progress=false
    .venv/bin/python bench/bench_spark.py --input /tmp/sp/ing20m --out /tmp/sp/bench --memory-limit 4GB

Every step runs in a fresh interpreter (peak RSS: the interpreter's own plus, for Spark, its JVM,
sampled every 0.5 s), alternated duckdb / pyspark per repeat so that machine load hits both alike:

- features: `stage.run` with title embeddings from a fake 384-d encoder (deterministic vectors per
  title; the sentence encoder's cost is the same on both engines and not what is measured), so the
  channel means and the three PCAs run at the real width;
- assign: `personas assign` (fp32) of every buyer with one VQ-VAE trained (untimed, 1 epoch, K=32)
  on the first DuckDB features; the Spark side assigns the Spark features (end to end on Spark).

Parity of the last repeat: max |x_spark − x_duckdb| over all vectors, share of equal codes,
shop mixes equal. `memory_limit` is DuckDB's memory limit and the Spark driver's JVM heap.
The machine is shared: the 1-minute load average is printed per step; read the same-run ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SETUP = """
import sys, json, time
from pathlib import Path
engine, inp, out, mem, threads = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
"""

FEATURES = SETUP + """
import hashlib
import numpy as np
import ibis.backends.duckdb  # imports outside the timing
from simpersona.features.stage import EmbeddingConfig, FeaturesConfig, run


class FakeEncoder:  # deterministic 384-d vectors per title (the encoder is not what is measured)
    model_id, dim = "bench-fake-384", 384

    def encode(self, texts):
        return np.stack([np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=384)
                         for t in texts]).astype(np.float32)


cfg = FeaturesConfig(input=inp, engine=engine, memory_limit=mem, threads=threads, progress=False,
                     embedding=EmbeddingConfig(cache_dir=out.parent / f"{out.name}-cache"))  # cold on both sides
t = time.perf_counter()
s = run(cfg, out, encoder=FakeEncoder())
print(json.dumps({"wall_s": time.perf_counter() - t, "buyers": s["buyers"], "steps_s": s["timings_s"]}))
"""

ASSIGN = SETUP + """
import torch
from simpersona.config import load_config
from simpersona.personas import assign
model = sys.argv[6]
cfg = load_config(assign.PersonasConfig, values={"model": model, "features": str(inp)},
                  overrides=["precision=fp32", "cards=false", f"engine={engine}", f"threads={threads}"])
t = time.perf_counter()
s = assign.run(cfg, out)
print(json.dumps({"wall_s": time.perf_counter() - t, "rows": s["rows"]}))
"""

TRAIN = """
import sys
from simpersona.config import load_config
from simpersona.vqvae import train
cfg = load_config(train.TrainConfig, values={"features": sys.argv[1]},
                  overrides=["model.codebook_size=32", "max_epochs=1", "progress=false"])
train.run(cfg, sys.argv[2])
"""

PARITY = """
import sys, json
import numpy as np, pyarrow.parquet as pq
from simpersona.vqvae.data import fixed_list_to_numpy
fd, fs, pd_, ps = sys.argv[1:5]
worst, n = 0.0, 0
for a, b in zip(pq.ParquetFile(f"{fd}/vectors.parquet").iter_batches(65536), pq.ParquetFile(f"{fs}/vectors.parquet").iter_batches(65536), strict=True):
    assert a.column("buyer_id").equals(b.column("buyer_id"))
    worst = max(worst, float(np.abs(fixed_list_to_numpy(a.column("x")) - fixed_list_to_numpy(b.column("x"))).max()))
    n += a.num_rows
ca, cb = (pq.read_table(f"{p}/assignments.parquet") for p in (pd_, ps))
assert ca.select(["shop_id", "buyer_id"]).equals(cb.select(["shop_id", "buyer_id"]))
same = float(np.mean(ca["code"].to_numpy() == cb["code"].to_numpy()))
ma, mb = (pq.read_table(f"{p}/shop_mix.parquet") for p in (pd_, ps))
print(json.dumps({"vectors": n, "max_abs_diff_x": worst, "codes_equal_share": same, "shop_mix_equal": ma.equals(mb),
                  "shop_mix_max_share_diff": float(np.abs(ma["share"].to_numpy() - mb["share"].to_numpy()).max()) if ma.num_rows == mb.num_rows else None}))
"""


def _tree_rss(pid: int) -> int:
    """RSS bytes of a process and all its descendants (the Spark JVM included)."""
    import psutil

    try:
        p = psutil.Process(pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
    except psutil.Error:
        return 0


def measure(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter: its reported wall time, the peak RSS of its process tree, load."""
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    peak = [0]
    with tempfile.TemporaryFile(mode="w+") as errf:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=errf, text=True)
        done = threading.Event()

        def sample():
            while not done.wait(0.5):
                peak[0] = max(peak[0], _tree_rss(proc.pid))

        threading.Thread(target=sample, daemon=True).start()
        out = proc.stdout.read()
        rc = proc.wait()
        done.set()
        if rc != 0:
            errf.seek(0)
            raise SystemExit(errf.read()[-3000:])
    res = json.loads(out.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t
    res["peak_rss_gib"] = peak[0] / 2**30
    res["load1"] = round((load0 + os.getloadavg()[0]) / 2, 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, required=True, help="ingest folder (events.parquet, catalog.parquet)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_spark"), help="scratch folder (emptied first)")
    ap.add_argument("--memory-limit", default="4GB", help="DuckDB memory_limit and the Spark driver heap")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads, Spark local[N], torch threads")
    ap.add_argument("--repeat", type=int, default=1, help="runs per engine; medians are reported")
    a = ap.parse_args()
    import pyarrow.parquet as pq

    n_events = pq.read_metadata(a.input / "events.parquet").num_rows
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    common = (str(a.memory_limit), str(a.threads))
    runs: dict[str, list[dict]] = {f"{e}_{s}": [] for e in ("duckdb", "pyspark") for s in ("features", "assign")}
    model = a.out / "vqvae"
    for i in range(a.repeat):
        for engine in ("duckdb", "pyspark"):
            feat, pers = a.out / f"{engine}-features", a.out / f"{engine}-personas"
            for d in (feat, pers, a.out / f"{feat.name}-cache"):
                shutil.rmtree(d, ignore_errors=True)
            r = measure(FEATURES, engine, str(a.input), str(feat), *common)
            runs[f"{engine}_features"].append(r)
            print(f"# repeat {i + 1} {engine} features: {r['wall_s']:.1f} s {r['steps_s']}, peak RSS {r['peak_rss_gib']:.2f} GiB, "
                  f"load {r['load1']}", file=sys.stderr, flush=True)
            if not model.exists():  # one model for every assignment, trained on the first features (untimed)
                subprocess.run([sys.executable, "-c", TRAIN, str(feat), str(model)], check=True, capture_output=True)
            r = measure(ASSIGN, engine, str(feat), str(pers), *common, str(model))
            runs[f"{engine}_assign"].append(r)
            print(f"# repeat {i + 1} {engine} assign: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB, load {r['load1']}",
                  file=sys.stderr, flush=True)
    parity = json.loads(subprocess.run(
        [sys.executable, "-c", PARITY, *(str(a.out / f"{e}-{s}") for s in ("features", "personas") for e in ("duckdb", "pyspark"))],
        check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    res: dict = {"events": n_events, "threads": a.threads, "memory_limit": a.memory_limit, "cores": os.cpu_count(),
                 "repeat": a.repeat, "embeddings": "fake 384-d (deterministic per title)", "parity": parity}
    for side, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        res[side] = {"wall_s_median": round(wall, 2), "wall_s_all": [round(r["wall_s"], 2) for r in rs],
                     "events_per_s": round(n_events / wall), "peak_rss_gib_max": round(max(r["peak_rss_gib"] for r in rs), 2),
                     "load1_all": [r["load1"] for r in rs],
                     **{k: v for k, v in rs[-1].items() if k not in ("wall_s", "process_s", "peak_rss_gib", "load1")}}
    for step in ("features", "assign"):  # ratio per repeat (same conditions), then the median
        ratios = [s["wall_s"] / d["wall_s"] for d, s in zip(runs[f"duckdb_{step}"], runs[f"pyspark_{step}"], strict=True)]
        res[f"ratio_pyspark_over_duckdb_{step}"] = round(statistics.median(ratios), 2)
    loads = [r["load1"] for rs in runs.values() for r in rs]
    res["load1_max"] = max(loads)
    res["reliable"] = max(loads) <= (os.cpu_count() or 1)
    if not res["reliable"]:
        res["note"] = (f"load average up to {max(loads)} on {os.cpu_count()} cores: absolute times are inflated by other "
                       "processes; the same-run ratio is the figure to read")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
