"""Cost of the completion marker's output hashes (SHA-256 of every output file, `stagedir.manifest`).

The demo run's largest files are the SFT checkpoints: SmolLM2-135M in float32 is a 538 MB
model.safetensors, written three times (stage1/, stage2/, single/). The baseline, measured in the
same run, is writing that file (what the stage itself must do); the figure is hash time / write time.

    python bench/bench_stagedir.py              # 538 MB, like one SmolLM2 checkpoint
    python bench/bench_stagedir.py --mb 64
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from simpersona.stagedir import manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=538, help="file size in MB")
    a = ap.parse_args()
    block = os.urandom(1 << 20)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "stage"
        folder.mkdir()
        t0 = time.perf_counter()
        with open(folder / "model.safetensors", "wb") as f:
            for _ in range(a.mb):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        m = manifest(folder)
        hash_s = time.perf_counter() - t0
    print(f"file {a.mb} MB: write+fsync {write_s:.2f} s, SHA-256 manifest {hash_s:.2f} s "
          f"({a.mb / hash_s:,.0f} MB/s); hash / write = {hash_s / write_s:.2f}")
    assert m["model.safetensors"]["bytes"] == a.mb << 20


if __name__ == "__main__":
    main()
