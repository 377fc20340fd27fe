"""Benchmark: persona assignment (encoder 403→256→128→96 + nearest of 256 codes) at scale.

Compares, in one run on the same generated vectors and the same model:
  numpy    plain numpy matmul + ReLU + distance + argmin on each whole batch (the baseline)
  fp32     simpersona.personas.assign.Assigner, preallocated buffers, fp32
  bf16     the same with a bf16 encoder (only where the CPU has native bf16)
Each mode runs in its own subprocess so its peak RSS is its own. Vectors come from a pool of
`--pool-batches` generated batches cycled to `--rows` (generating 8.37M×403 floats would dominate
the timing and memory); the pool is counted in RSS. bf16 agreement = % rows whose code equals fp32.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_assign.py --rows 8370000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def make_model_and_pool(batch_rows: int, pool_batches: int, seed: int):
    import torch

    from simpersona.vqvae.model import ModelConfig, VQVAE

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, 403)).astype(np.float32)
    pool = centers[rng.integers(0, 64, batch_rows * pool_batches)]
    pool += 0.5 * rng.standard_normal(pool.shape, dtype=np.float32)
    model = VQVAE(ModelConfig()).eval()
    with torch.no_grad():
        z = model.encoder(torch.from_numpy(pool[:20000]))
    model.quantizer.init_kmeans_pp(z, torch.Generator().manual_seed(seed), 512)
    return model, pool


def child(mode: str, rows: int, batch_rows: int, kernel_rows: int, pool_batches: int, threads: int, seed: int) -> dict:
    import torch

    from simpersona.personas.assign import Assigner

    torch.set_num_threads(threads)
    model, pool = make_model_and_pool(batch_rows, pool_batches, seed)
    batches = [pool[i * batch_rows : (i + 1) * batch_rows] for i in range(pool_batches)]
    if mode == "numpy":
        lins = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
        ws = [m.weight.detach().numpy().T.copy() for m in lins]
        bs = [m.bias.detach().numpy().copy() for m in lins]
        e = model.quantizer.codebook.numpy()
        e_t, e_sq = (-2 * e).T.copy(), (e * e).sum(1)

        def assign(x):
            h = x
            for i, (w, b) in enumerate(zip(ws, bs)):
                h = h @ w + b
                if i < len(ws) - 1:
                    h = np.maximum(h, 0)
            return np.argmin(h @ e_t + e_sq, axis=1)
    else:
        assign = Assigner(model, kernel_rows, bf16=(mode == "bf16"))
    codes_head = []  # codes of the pool (first pass), to compare modes
    assign(batches[0][:1024])  # warm-up
    import psutil

    rss_setup = psutil.Process().memory_info().rss
    done, i = 0, 0
    t0 = time.perf_counter()
    while done < rows:
        x = batches[i % pool_batches][: min(batch_rows, rows - done)]
        c = assign(x)
        if i < pool_batches:
            codes_head.append(c.astype(np.int16))
        done += len(x)
        i += 1
    wall = time.perf_counter() - t0
    np.save(f"/tmp/bench_assign_{mode}.npy", np.concatenate(codes_head))
    return {"mode": mode, "rows": rows, "wall_s": round(wall, 2), "rows_per_s": round(rows / wall),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_loop_mib": round(rss_setup / 2**20),
            "rss_after_loop_mib": round(psutil.Process().memory_info().rss / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8_370_000)
    ap.add_argument("--batch-rows", type=int, default=65536)
    ap.add_argument("--kernel-rows", type=int, default=4096, help="Assigner chunk (PersonasConfig.kernel_rows)")
    ap.add_argument("--pool-batches", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="numpy,fp32,bf16")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.rows, a.batch_rows, a.kernel_rows, a.pool_batches, a.threads, a.seed)))
        return
    from simpersona.personas.assign import cpu_has_bf16

    modes = [m for m in a.modes.split(",") if m != "bf16" or cpu_has_bf16()]
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    results = []
    for m in modes:
        cmd = [sys.executable, __file__, "--child", m, "--rows", str(a.rows), "--batch-rows", str(a.batch_rows), "--kernel-rows", str(a.kernel_rows),
               "--pool-batches", str(a.pool_batches), "--threads", str(a.threads), "--seed", str(a.seed)]
        results.append(json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout))
    base = next((r for r in results if r["mode"] == "numpy"), results[0])
    ref = np.load("/tmp/bench_assign_fp32.npy") if "fp32" in modes else None
    print(f"assignment of {a.rows:,} rows, batch {a.batch_rows:,} (torch chunks {a.kernel_rows:,}; numpy whole batch), {a.threads} threads, cpu bf16: {cpu_has_bf16()}")
    print(f"{'mode':<6} {'wall s':>8} {'rows/s':>12} {'× numpy':>8} {'peak RSS MiB':>13} {'RSS before/after loop':>22} {'codes = fp32':>13}")
    for r in results:
        same = ""
        if ref is not None:
            codes = np.load("/tmp/bench_assign_" + r["mode"] + ".npy")
            same = f"{100 * np.mean(codes == ref):.2f}%"
        r["codes_equal_fp32_pct"] = same
        print(f"{r['mode']:<6} {r['wall_s']:>8.2f} {r['rows_per_s']:>12,} {r['rows_per_s'] / base['rows_per_s']:>8.2f} "
              f"{r['peak_rss_mib']:>13,} {str(r['rss_before_loop_mib']) + ' / ' + str(r['rss_after_loop_mib']):>22} {same:>13}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
