"""Benchmark: persona assignment (encoder 403→256→128→96 + nearest of 256 codes) against the matmul
roofline of this CPU, measured in the same run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_assign.py --rows 2000000 --repeat 3
    .venv/bin/python bench/bench_assign.py --model runs/demo/vqvae --features runs/demo/features

Modes, on the same vectors and the same TRAINED model (a small VQ-VAE trained here for --train-steps
steps on the vectors — reconstruction + commitment loss, EMA codebook, dead-code resets — or a
checkpoint given with --model):
  chain_fp32 / chain_bf16  the roofline: a bare chain of the same four GEMMs (403×256, 256×128,
           128×96 encoder, 96×256 distances) into preallocated buffers, input already in the
           GEMM's precision, --kernel-rows rows per call — nothing but matmuls. chain_bf16 runs the
           encoder GEMMs in bf16 and the distances in fp32, as the bf16 assigner does.
  numpy    plain numpy: matmul + ReLU + distance + argmin on each whole batch (the old baseline)
  chain_bf16_split  the bf16 chain with the rows split over --threads threads, each running
           single-threaded GEMMs (one GEMM per core instead of two cores per GEMM): informative,
           to show whether the other way of using the cores would raise the roofline
  fp32     simpersona.personas.assign.Assigner, fp32
  bf16     the same with a bf16 encoder (only where the CPU has native bf16; distances in fp32)
Timing: modes interleaved batch by batch in one process, each mode's time summed, the whole pass
repeated --repeat times (medians reported), so on a shared machine all modes see the same load.
"% roofline" = the mode's rows/s over its chain's rows/s (fp32, numpy → chain_fp32, bf16 → chain_bf16);
"% roof CPU" the same with CPU seconds (user + system, all threads), the steadier figure on a busy machine.
Codes are compared with the fp32 assigner on every row. Peak RSS: each assigner mode alone in a
subprocess over --rss-rows rows. Prints the CPU's model, flags and torch's kernel capability.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SHAPES = ((403, 256), (256, 128), (128, 96), (96, 256))  # (in, out) of the four GEMMs per row
FLOPS_PER_ROW = 2 * sum(a * b for a, b in SHAPES)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_features() -> str:
    """Model name, the matmul-relevant flags, cores and torch's kernel capability."""
    import torch

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    have = [f for f in CPU_FLAGS if f in flags]
    return (f"cpu: {model}, {os.cpu_count()} cores; flags: {' '.join(have) or '-'}; torch {torch.__version__} "
            f"kernels {torch.backends.cpu.get_cpu_capability()}, mkldnn {torch.backends.mkldnn.is_available()}")


def make_pool(rows: int, seed: int) -> np.ndarray:
    """(rows, 403) float32 shaped like feature vectors: 16 scalars, three 128-d channels zeroed where
    their mask is 0 (masks on for 90% / 30% / 10% of buyers), the 3 masks; 64 behaviour clusters."""
    from simpersona.features.layout import CHANNEL_SLICES, MASKS, N_SCALARS

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, 403)).astype(np.float32)
    x = centers[rng.integers(0, 64, rows)]
    x += 0.5 * rng.standard_normal(x.shape, dtype=np.float32)
    masks = (rng.random((rows, 3)) < np.array([0.9, 0.3, 0.1])).astype(np.float32)
    for c, sl in enumerate(CHANNEL_SLICES):
        x[:, sl] *= masks[:, c : c + 1]
    x[:, MASKS] = masks
    x[:, :N_SCALARS] *= 1.0  # scalars are z-scored in the real vectors: unit scale already
    return x


def train_small(x: np.ndarray, steps: int, seed: int):
    """A VQ-VAE trained on x for `steps` Adam steps (reconstruction + β·commitment, EMA codebook,
    dead-code resets) — a trained model, so that codes sit where real ones do (not a random init)."""
    import torch
    import torch.nn.functional as F

    from simpersona.vqvae.model import ModelConfig, VQVAE

    torch.manual_seed(seed)
    model = VQVAE(ModelConfig())
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        model.eval()
        model.quantizer.init_kmeans_pp(model.encoder(xt[:20000]), gen, 512)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    for step in range(1, steps + 1):
        b = xt[torch.from_numpy(rng.integers(0, len(x), 512))]
        out = model(b)
        loss = F.mse_loss(out.x_hat, b) + 0.75 * F.mse_loss(out.z_e, out.z_q.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.quantizer.ema_update(out.z_e.detach(), out.codes)
        if model.quantizer.due_for_reset(step):
            model.quantizer.reset_dead(out.z_e.detach(), out.codes, gen)
    return model.eval(), float(loss.detach())


def load_pool(feat_dir: Path, rows: int) -> np.ndarray:
    """The first `rows` vectors of FEAT_DIR/vectors.parquet."""
    import pyarrow.parquet as pq

    from simpersona.vqvae.data import fixed_list_to_numpy

    parts, n = [], 0
    for b in pq.ParquetFile(Path(feat_dir) / "vectors.parquet").iter_batches(batch_size=65536, columns=["x"]):
        parts.append(fixed_list_to_numpy(b.column("x")))
        n += len(parts[-1])
        if n >= rows:
            break
    return np.concatenate(parts)[:rows]


def setup(a):
    """(model, batches, what the model is)."""
    import torch

    torch.set_num_threads(a.threads)
    want = a.batch_rows * a.pool_batches
    pool = load_pool(a.features, want) if a.features else make_pool(want, a.seed)
    if a.model:
        from simpersona.vqvae.checkpoint import load_model

        model, _ = load_model(a.model)
        what = f"checkpoint {a.model}"
    else:
        model, loss = train_small(pool, a.train_steps, a.seed)
        what = f"trained here: {a.train_steps} steps, final loss {loss:.3f}"
    n = len(pool) // a.batch_rows or 1
    return model, [pool[i * a.batch_rows : (i + 1) * a.batch_rows] for i in range(n)], what


def make_chain(bf16: bool, chunk: int, workers: int):
    """The roofline: the four GEMMs only, on input already in the encoder's precision. `workers` > 1
    splits the rows over that many threads, each running single-threaded GEMMs; 1: one thread
    issuing GEMMs on torch's intra-op threads, as the assigner does."""
    import torch

    dt = torch.bfloat16 if bf16 else torch.float32
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(i, o, generator=g).to(dt if k < 3 else torch.float32) for k, (i, o) in enumerate(SHAPES)]
    bufs = [([torch.empty(chunk, o, dtype=w.dtype) for w, (_, o) in zip(ws, SHAPES)],
             torch.empty(chunk, SHAPES[3][0])) for _ in range(workers)]  # outputs; fp32 input of the distances
    pool = ThreadPoolExecutor(workers) if workers > 1 else None

    @torch.inference_mode()
    def rows(xt, buf):
        outs, last_in = buf
        for i in range(0, xt.shape[0], chunk):
            h = xt[i : i + chunk]
            n = h.shape[0]
            for k in range(3):
                h = torch.mm(h, ws[k], out=outs[k][:n])
            torch.mm(last_in[:n], ws[3], out=outs[3][:n])

    def chain(xt):
        if pool is None:
            return rows(xt, bufs[0])
        part = -(-xt.shape[0] // workers)
        for j in [pool.submit(rows, xt[i : i + part], b) for i, b in zip(range(0, xt.shape[0], part), bufs)]:
            j.result()

    return chain, dt


def make_assign(mode: str, model, kernel_rows: int):
    import torch

    from simpersona.personas.assign import Assigner

    if mode in ("fp32", "bf16"):
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


def one_pass(modes: list[str], fns: dict, chain_inputs: dict, batches: list, rows: int, batch_rows: int,
             threads: int) -> tuple[dict, dict]:
    """Seconds per mode over `rows` rows (interleaved batch by batch) and rows whose codes equal fp32's."""
    import torch

    secs = dict.fromkeys(modes, 0.0)
    cpus = dict.fromkeys(modes, 0.0)
    equal = dict.fromkeys(modes, 0)
    done, i = 0, 0
    while done < rows:
        j = i % len(batches)
        x = batches[j][: min(batch_rows, rows - done)]
        codes = {}
        for m in modes:
            torch.set_num_threads(1 if m.endswith("_split") else threads)
            t, c = time.perf_counter(), cpu_seconds()
            if m.startswith("chain"):
                fns[m](chain_inputs[m][j][: len(x)])
            else:
                codes[m] = fns[m](x)
            secs[m] += time.perf_counter() - t
            cpus[m] += cpu_seconds() - c
        ref = codes.get("fp32")
        if ref is not None:
            for m, c in codes.items():
                equal[m] += int((c == ref).sum())
        done += len(x)
        i += 1
    return secs, cpus, equal


def timed(modes: list[str], a) -> tuple[dict, str]:
    import torch

    model, batches, what = setup(a)
    fns, chain_inputs = {}, {}
    for m in modes:
        if m.startswith("chain"):
            fns[m], dt = make_chain(m.startswith("chain_bf16"), a.kernel_rows, a.threads if m.endswith("_split") else 1)
            chain_inputs[m] = [torch.from_numpy(b).to(dt) for b in batches]
        else:
            fns[m] = make_assign(m, model, a.kernel_rows)
    one_pass(modes, fns, chain_inputs, batches, min(a.rows, 4 * a.kernel_rows), a.batch_rows, a.threads)  # warm-up
    runs, cpu_runs = [], []
    for r in range(a.repeat):
        secs, cpus, equal = one_pass(modes, fns, chain_inputs, batches, a.rows, a.batch_rows, a.threads)
        runs.append(secs)
        cpu_runs.append(cpus)
        print(f"# repeat {r + 1}: " + ", ".join(f"{m} {s:.2f}s" for m, s in secs.items())
              + f", load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    res = {}
    for m in modes:
        wall = statistics.median(s[m] for s in runs)
        cpu = statistics.median(s[m] for s in cpu_runs)
        res[m] = {"wall_s": round(wall, 3), "wall_s_all": [round(s[m], 3) for s in runs], "rows_per_s": round(a.rows / wall),
                  "cpu_s": round(cpu, 3), "gflop_per_cpu_s": round(a.rows * FLOPS_PER_ROW / cpu / 1e9, 1),
                  "gflops": round(a.rows * FLOPS_PER_ROW / wall / 1e9, 1),
                  "codes_equal_fp32_pct": (round(100 * equal[m] / a.rows, 3) if "fp32" in modes and m in equal
                                           and not m.startswith("chain") else None)}
    return res, what


def rss_child(mode: str, a) -> dict:
    """One assigner mode alone over --rss-rows rows: RSS after setup, the most seen after any batch, the peak, MiB."""
    import psutil

    import torch

    model, batches, _ = setup(a)
    torch.set_num_threads(a.threads)
    f = make_assign(mode, model, a.kernel_rows)
    proc = psutil.Process()
    setup_rss = loop_max = proc.memory_info().rss
    for i in range(0, a.rss_rows, a.batch_rows):
        f(batches[(i // a.batch_rows) % len(batches)])
        loop_max = max(loop_max, proc.memory_info().rss)
    return {"rss_setup_mib": round(setup_rss / 2**20), "rss_loop_max_mib": round(loop_max / 2**20),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows per timed pass")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes; medians reported")
    ap.add_argument("--batch-rows", type=int, default=65536, help="streamed batch (PersonasConfig.batch_rows)")
    ap.add_argument("--kernel-rows", type=int, default=None, help="Assigner chunk (default: PersonasConfig.kernel_rows)")
    ap.add_argument("--pool-batches", type=int, default=2, help="distinct batches cycled to --rows")
    ap.add_argument("--rss-rows", type=int, default=300_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-steps", type=int, default=300, help="steps of the small model trained here")
    ap.add_argument("--model", type=Path, default=None, help="a VQ-VAE run folder instead of training one")
    ap.add_argument("--features", type=Path, default=None, help="FEAT_DIR whose vectors to use instead of generated ones")
    ap.add_argument("--project-rows", type=int, default=8_370_000, help="rows to project each mode's time to")
    ap.add_argument("--modes", default="chain_fp32,chain_bf16,chain_bf16_split,numpy,fp32,bf16")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    from simpersona.personas.assign import PersonasConfig, cpu_has_bf16

    a.kernel_rows = a.kernel_rows or PersonasConfig.kernel_rows
    if a.rss_child:
        print(json.dumps(rss_child(a.rss_child, a)))
        return
    print(cpu_features())
    modes = [m for m in a.modes.split(",") if "bf16" not in m or cpu_has_bf16()]
    res, what = timed(modes, a)
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    for m in (m for m in modes if not m.startswith("chain")):
        cmd = [sys.executable, __file__, "--rss-child", m, "--rss-rows", str(a.rss_rows), "--batch-rows", str(a.batch_rows),
               "--kernel-rows", str(a.kernel_rows), "--pool-batches", str(a.pool_batches), "--threads", str(a.threads),
               "--seed", str(a.seed), "--train-steps", "1"]  # RSS does not depend on the training
        cmd += ["--model", str(a.model)] if a.model else []
        cmd += ["--features", str(a.features)] if a.features else []
        res[m] |= json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    base = res["numpy"]["rows_per_s"] if "numpy" in res else None
    print(f"assignment of {a.rows:,} rows × {a.repeat} passes (modes interleaved per batch, medians), batch "
          f"{a.batch_rows:,}, kernel chunks {a.kernel_rows:,}, {a.threads} threads, {FLOPS_PER_ROW:,} FLOP/row; "
          f"model: {what}; load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'mode':<16} {'time s':>7} {'rows/s':>11} {'GFLOP/s':>8} {'% roofline':>10} {'CPU s':>7} {'% roof CPU':>10} {'× numpy':>8} "
          f"{f'{a.project_rows / 1e6:.2f}M rows s':>14} {'RSS setup→loop MiB':>19} {'codes = fp32':>12}")
    for m in modes:
        r = res[m]
        chain = res.get("chain_bf16" if m == "bf16" else "chain_fp32" if m in ("fp32", "numpy") else m)
        roof = f"{100 * r['rows_per_s'] / chain['rows_per_s']:.0f}%" if chain else "-"
        roof_cpu = f"{100 * chain['cpu_s'] / r['cpu_s']:.0f}%" if chain else "-"
        rss = f"{r['rss_setup_mib']} → {r['rss_loop_max_mib']}" if "rss_setup_mib" in r else "-"
        eq = f"{r['codes_equal_fp32_pct']}%" if r["codes_equal_fp32_pct"] is not None else "-"
        vs_numpy = f"{r['rows_per_s'] / base:.2f}" if base else "-"
        print(f"{m:<16} {r['wall_s']:>7.2f} {r['rows_per_s']:>11,} {r['gflops']:>8.1f} {roof:>10} {r['cpu_s']:>7.2f} {roof_cpu:>10} "
              f"{vs_numpy:>8} {a.project_rows / r['rows_per_s']:>14.2f} "
              f"{rss:>19} {eq:>12}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
