"""Benchmark of `simpersona synth`: events/s and peak RSS (not a test).

    .venv/bin/python bench/bench_synth.py --shops 20 --buyers 650000 --file-format csv

≈16.5 events per buyer with the default types, so 650k buyers ≈ 10.7M events. The generator runs
in a child process so its peak RSS (ru_maxrss of children) is measured alone.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shops", type=int, default=20)
    ap.add_argument("--buyers", type=int, default=650_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--file-format", default="csv", choices=["csv", "parquet"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one, removed after)")
    a = ap.parse_args()
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="bench_synth_"))
    cmd = [sys.executable, "-m", "simpersona", "synth", "--shops", str(a.shops), "--buyers", str(a.buyers),
           "--seed", str(a.seed), "--file-format", a.file_format, "--out", str(out), "--set", f"threads={a.threads}"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    import json

    summary = json.loads((out / "meta.json").read_text())["summary"]
    size = sum(f.stat().st_size for f in out.glob("events.*")) / 2**20
    print(r.stdout.strip())
    print(
        f"bench_synth: {summary['events']:,} events, {a.shops} shops, {a.buyers:,} buyers, {a.file_format}, "
        f"threads={a.threads}: wall {wall:.1f} s (stage {summary['seconds']:.1f} s), "
        f"{summary['events'] / summary['seconds']:,.0f} events/s, peak RSS {rss_gib:.2f} GiB, events file {size:,.0f} MiB"
    )
    if not a.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
