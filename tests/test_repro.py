"""Same seed, same result (issue 17): the tiny main job run twice in fresh folders — the first with
a cold title-embedding cache, the second with the cache the first one filled — writes the same
outputs in every stage; another seed gives other results.

Every file both runs wrote is compared by content: Parquet as tables (rows in order), JSON and
JSONL as values, safetensors / npy / npz as arrays (bit for bit), text as text. Tolerance: NONE
on any result. Left out of the comparison, because they are facts about the run and not results:
  - timings, throughputs and the machine's load (RUN_FACT), completion-marker file hashes and
    times (META_KEYS), the embedding cache's hit counts, where the salt came from (its salt_id is
    compared), and the run folder's own path inside configs and reports;
  - the HTML report (RENDERED) and its size: built from the JSON compared here, it also shows its
    build time and the simulation's sessions/s;
  - the row order of the tables written unordered by design (UNORDERED: compared sorted);
  - the simulated storefront's wall-clock stamps (WALL_CLOCK_COLUMNS: the time a simulated event
    was logged; no figure reads them) and how its journal is cut into part files (by time; the
    same events are compared in events.parquet).
The HMAC salt comes from the installation's key file (`$SIMPERSONA_SALT_FILE`, pointed into
tmp_path): the first run creates it, the second reuses it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from simpersona.features.layout import SCALAR_NAMES

# JSON keys that hold facts about the run, not results: durations (`*_s`, `*_s_median`, `*_time`),
# rates (`*_per_s`, `*_per_second`, `*_per_min`), clock times (`*_at`), the machine's load, cache hits,
# and where the salt came from ("new key file …" in the first run, "key file …" after; salt_id is compared).
# The 16 scalar names (e.g. total_duration_s, keys of App. B's R²) are results.
RUN_FACT = re.compile(r"(_s|_s_median|_s_mean|_time|_runtime|_per_s|_per_second|_per_min|_at)$"
                      r"|^(seconds|train_runtime|load_average.*|embedding_cache|salt)$")
# completion-marker entries that hash files (differ where bytes differ but content does not: UNORDERED, timings)
META_KEYS = frozenset({"outputs", "outputs_digest", "input_hashes"})
# tables written in engine order by design; compared sorted
UNORDERED = frozenset({"features/buyer_sessions.parquet", "ingest/events.parquet", "ingest/rejected.parquet"})
# pages rendered from the JSON compared here (test_report checks each number against it), plus a build time
RENDERED = frozenset({"report/index.html"})
# the simulated storefront's clock: when an event was logged, how long an episode took
WALL_CLOCK_COLUMNS = frozenset({"ts", "first_ts", "wall_s"})


def run_job(out: Path, env: dict[str, str], *sets: str) -> None:
    args = [sys.executable, "-m", "simpersona", "run", "--preset", "tiny", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    p = subprocess.run(args, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]


def _json_diff(a, b, where: str, paths: tuple[str, str]) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        a = {k.replace(paths[0], "RUN"): v for k, v in a.items()}
        b = {k.replace(paths[1], "RUN"): v for k, v in b.items()}
        out = []
        for k in sorted(set(a) | set(b)):
            skip = (where.endswith("meta.json") and k in META_KEYS) or (where.startswith("report/") and k == "bytes")
            if (k in SCALAR_NAMES or not RUN_FACT.search(k)) and not skip:
                out += _json_diff(a.get(k), b.get(k), f"{where}.{k}", paths)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _json_diff(x, y, f"{where}[{i}]", paths)]
    if isinstance(a, str) and isinstance(b, str):
        a, b = a.replace(paths[0], "RUN"), b.replace(paths[1], "RUN")
    return [] if a == b else [f"{where}: {str(a)[:80]!r} != {str(b)[:80]!r}"]


def _parquet_diff(fa: Path, fb: Path, rel: str) -> list[str]:
    ta, tb = pq.read_table(fa), pq.read_table(fb)
    if not rel.startswith(("synth/", "ingest/")):
        ta = ta.drop_columns([c for c in ta.column_names if c in WALL_CLOCK_COLUMNS])
        tb = tb.drop_columns([c for c in tb.column_names if c in WALL_CLOCK_COLUMNS])
    if rel in UNORDERED:
        keys = [(c, "ascending") for c in ta.column_names if not str(ta.schema.field(c).type).startswith(("list", "large_list"))]
        ta, tb = ta.sort_by(keys), tb.sort_by(keys)
    if ta.equals(tb):
        return []
    if ta.schema != tb.schema or ta.num_rows != tb.num_rows:
        return [f"{rel}: schema or rows differ ({ta.num_rows} vs {tb.num_rows} rows)"]
    return [f"{rel}: column {c} differs" for c in ta.column_names if not ta[c].equals(tb[c])]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except TypeError:  # bf16 tensors have no numpy dtype: compare their bits
            from safetensors.torch import load_file as load_torch

            return {k: v.view(dtype=__import__("torch").int16).numpy() if v.dtype.itemsize == 2 else v.numpy()
                    for k, v in load_torch(path).items()}
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    return {"": np.load(path)}


def compare_runs(a: Path, b: Path) -> list[str]:
    """Differences between two run folders (empty: the same results); see the module docstring."""
    diffs = []
    files_a = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()}
    journal = re.compile(r"(^|/)storefront/(worker-\d+/)?(events|sessions|journal)/")
    for rel in sorted(files_a | files_b):
        if journal.search(rel) or rel in RENDERED:
            continue
        if rel not in files_a or rel not in files_b:
            diffs.append(f"{rel}: only in {'the first' if rel in files_a else 'the second'} run")
            continue
        fa, fb = a / rel, b / rel
        if fa.read_bytes() == fb.read_bytes():
            continue
        suffix = fa.suffix
        if suffix == ".parquet":
            diffs += _parquet_diff(fa, fb, rel)
        elif suffix == ".json":
            diffs += _json_diff(json.loads(fa.read_text()), json.loads(fb.read_text()), rel, (str(a), str(b)))
        elif suffix == ".jsonl":
            la, lb = fa.read_text().splitlines(), fb.read_text().splitlines()
            diffs += [f"{rel}: {len(la)} vs {len(lb)} lines"] if len(la) != len(lb) else [
                d for i, (x, y) in enumerate(zip(la, lb)) for d in _json_diff(json.loads(x), json.loads(y), f"{rel}[{i}]", (str(a), str(b)))]
        elif suffix in (".safetensors", ".npy", ".npz"):
            xa, xb = _arrays(fa), _arrays(fb)
            diffs += [f"{rel}: {k} differs" for k in sorted(set(xa) | set(xb))
                      if k not in xa or k not in xb or not np.array_equal(xa[k], xb[k], equal_nan=True)]
        else:
            ta, tb = fa.read_text().replace(str(a), "RUN"), fb.read_text().replace(str(b), "RUN")
            if ta != tb:
                diffs.append(f"{rel}: text differs")
    return diffs


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The tiny main job twice: cold embedding cache, then warm; one installation key file."""
    tmp = tmp_path_factory.mktemp("repro")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "SIMPERSONA_SALT_FILE": str(tmp / "key" / "salt.hex")}
    env.pop("SIMPERSONA_SALT", None)
    cache = f"features.embedding.cache_dir={tmp / 'cache'}"
    run_job(tmp / "a", env, cache)
    run_job(tmp / "b", env, cache)
    return tmp, env


def test_two_runs_same_outputs(two_runs):
    tmp, _ = two_runs
    a, b = tmp / "a", tmp / "b"
    # the salt lives in the installation's key file, not in either run folder
    assert (tmp / "key" / "salt.hex").exists() and not list(a.rglob("salt.hex"))
    ingest = [json.loads((r / "ingest" / "summary.json").read_text()) for r in (a, b)]
    assert ingest[0]["salt_id"] == ingest[1]["salt_id"]
    # cold, then warm: the second run encoded no title
    cold, warm = (json.loads((r / "features" / "summary.json").read_text())["embedding_cache"] for r in (a, b))
    assert cold["cache_hits"] == 0 and cold["encoded"] > 0 and warm == {"cache_hits": cold["encoded"], "encoded": 0}
    assert compare_runs(a, b) == []
    # and the comparison is not blind: it sees a figure moved in its last bit
    t1 = b / "evaluate" / "clustering" / "clustering.json"
    text = t1.read_text()
    try:
        report = json.loads(text)
        report["vqvae"]["mean_stratum_purity_pct"] = float(np.nextafter(report["vqvae"]["mean_stratum_purity_pct"], 200))
        t1.write_text(json.dumps(report))
        diffs = compare_runs(a, b)
        assert len(diffs) == 1 and diffs[0].startswith("evaluate/clustering/clustering.json.vqvae.mean_stratum_purity_pct:")
    finally:
        t1.write_text(text)


def _rerun(stage_dir: Path, out: Path, cls, run, **changes):
    """Re-run a stage from its completion marker's resolved config with `changes` (e.g. a seed)."""
    from simpersona.config import from_dict, merge

    cfg = json.loads((stage_dir / "meta.json").read_text())["config"]
    run(from_dict(cls, merge(cfg, changes)), out)
    return out


def test_another_seed_other_results(two_runs, monkeypatch):
    tmp, env = two_runs
    monkeypatch.setenv("SIMPERSONA_SALT_FILE", env["SIMPERSONA_SALT_FILE"])
    b = tmp / "b"
    from simpersona.features import stage as features
    from simpersona.simulate import stage as simulate
    from simpersona.vqvae import train as vqvae

    f = _rerun(b / "features", tmp / "f1", features.FeaturesConfig, features.run, sample={"seed": 1}, progress=False)
    split0 = pq.read_table(b / "features" / "buyers.parquet")["split"]
    split1 = pq.read_table(f / "buyers.parquet")["split"]
    assert split0.to_pylist() != split1.to_pylist()  # another §1.6 sample
    assert pq.read_table(f / "vectors.parquet")["buyer_id"].equals(pq.read_table(b / "features" / "vectors.parquet")["buyer_id"])

    v = _rerun(b / "vqvae", tmp / "v1", vqvae.TrainConfig, vqvae.run, seed=1)
    assert [d for d in compare_runs(b / "vqvae", v) if "model.safetensors" in d]  # other weights

    s = _rerun(b / "simulate", tmp / "s1", simulate.SimulateConfig, lambda c, o: simulate.run(c, o, echo=lambda _: None), seed=1)
    assert [d for d in compare_runs(b / "simulate", s) if d.startswith("episodes.parquet")]  # other episodes
