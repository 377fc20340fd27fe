"""Benchmark: persona assignment (encoder 403→256→128→96 + nearest of 256 codes) at scale.

Compares, on the same generated vectors and the same model:
  numpy    plain numpy: matmul + ReLU + distance + argmin on each whole batch (the baseline)
  fp32     simpersona.personas.assign.Assigner: preallocated buffers, chunks of --kernel-rows, fp32
  bf16     the same with a bf16 encoder (only where the CPU has native bf16; distances in fp32)
Timing: the modes are interleaved batch by batch in one process and each mode's time is summed,
so on a shared machine they see the same load and the ratios stay fair. Peak RSS: each mode
alone in a subprocess over --rss-rows rows (RSS is bounded by the batch, not the row count).
Vectors come from a pool of --pool-batches generated batches cycled to --rows (generating
8.37M×403 floats would dominate time and memory); the pool counts in RSS.

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


def make_assign(mode: str, model, kernel_rows: int):
    import torch

    from simpersona.personas.assign import Assigner

    if mode != "numpy":
        return Assigner(model, kernel_rows, bf16=(mode == "bf16"))
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

    return assign


def timed(modes: list[str], a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    model, pool = make_model_and_pool(a.batch_rows, a.pool_batches, a.seed)
    batches = [pool[i * a.batch_rows : (i + 1) * a.batch_rows] for i in range(a.pool_batches)]
    fns = {m: make_assign(m, model, a.kernel_rows) for m in modes}
    secs = dict.fromkeys(modes, 0.0)
    equal = dict.fromkeys(modes, 0)
    for f in fns.values():
        f(batches[0][:1024])  # warm-up
    done, i = 0, 0
    while done < a.rows:
        x = batches[i % a.pool_batches][: min(a.batch_rows, a.rows - done)]
        codes = {}
        for m, f in fns.items():
            t = time.perf_counter()
            codes[m] = f(x)
            secs[m] += time.perf_counter() - t
        ref = codes.get("fp32")
        if ref is not None:
            for m in modes:
                equal[m] += int((codes[m] == ref).sum())
        done += len(x)
        i += 1
    return {m: {"wall_s": round(secs[m], 2), "rows_per_s": round(a.rows / secs[m]),
                "codes_equal_fp32_pct": round(100 * equal[m] / a.rows, 3) if "fp32" in modes else None}
            for m in modes}


def rss_child(mode: str, a) -> dict:
    """One mode alone over --rss-rows rows: RSS after setup (model, pool, torch), the most RSS
    seen after any batch, and the process's peak (setup's temporaries included), in MiB."""
    import psutil
    import torch

    torch.set_num_threads(a.threads)
    model, pool = make_model_and_pool(a.batch_rows, a.pool_batches, a.seed)
    f = make_assign(mode, model, a.kernel_rows)
    proc = psutil.Process()
    setup = loop_max = proc.memory_info().rss
    for i in range(0, a.rss_rows, a.batch_rows):
        f(pool[(i // a.batch_rows % a.pool_batches) * a.batch_rows :][: a.batch_rows])
        loop_max = max(loop_max, proc.memory_info().rss)
    return {"rss_setup_mib": round(setup / 2**20), "rss_loop_max_mib": round(loop_max / 2**20),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8_370_000)
    ap.add_argument("--batch-rows", type=int, default=65536, help="streamed batch (PersonasConfig.batch_rows)")
    ap.add_argument("--kernel-rows", type=int, default=4096, help="Assigner chunk (PersonasConfig.kernel_rows)")
    ap.add_argument("--pool-batches", type=int, default=2)
    ap.add_argument("--rss-rows", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="numpy,fp32,bf16")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child:
        print(json.dumps(rss_child(a.rss_child, a)))
        return
    from simpersona.personas.assign import cpu_has_bf16

    modes = [m for m in a.modes.split(",") if m != "bf16" or cpu_has_bf16()]
    res = timed(modes, a)
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    for m in modes:
        cmd = [sys.executable, __file__, "--rss-child", m, "--rss-rows", str(a.rss_rows), "--batch-rows",
               str(a.batch_rows), "--kernel-rows", str(a.kernel_rows), "--pool-batches", str(a.pool_batches),
               "--threads", str(a.threads), "--seed", str(a.seed)]
        res[m] |= json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    base = res.get("numpy", res[modes[0]])["rows_per_s"]
    print(f"assignment of {a.rows:,} rows (modes interleaved per batch), batch {a.batch_rows:,}, torch chunks "
          f"{a.kernel_rows:,}, {a.threads} threads, cpu bf16: {cpu_has_bf16()}, load avg {os.getloadavg()[0]:.1f}")
    print(f"{'mode':<6} {'time s':>8} {'rows/s':>12} {'× numpy':>8} {'RSS setup→loop max MiB':>23} {'codes = fp32':>13}")
    for m in modes:
        r = res[m]
        print(f"{m:<6} {r['wall_s']:>8.2f} {r['rows_per_s']:>12,} {r['rows_per_s'] / base:>8.2f} "
              f"{str(r['rss_setup_mib']) + ' → ' + str(r['rss_loop_max_mib']):>23} {str(r['codes_equal_fp32_pct']) + '%':>13}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
