"""Kill the tiny main job inside a stage, resume it, and compare every stage's outputs with an
uninterrupted run (issue 10 item 7); the uninterrupted run is also the main job's end-to-end test.

`-m slow` kills it inside every stage and inside each SFT sub-run (stage 1, stage 2, single:
16 kills). The default run kills it in the three places that differ from the rest: the VQ-VAE
(which must resume from its checkpoint, not start over), SFT's stage-2 sub-run, and SFT's
single-stage sub-run right after sft.train wrote a meta.json (the old bug: resumed as "done"
without the single-stage model); every other stage goes through the same `stagedir` code.

A stage is stopped with SIGKILL either right before its completion marker would be written
(`SIMPERSONA_KILL_AT=<stage>`: every output written, nothing committed — the worst moment), or as
soon as a given file appears in its partial folder (the SFT sub-runs, watched from here). After
each kill the stage's folder must not exist (a killed stage leaves the old result or none), the
stages before it must be skipped on resume, and the final outputs must equal the uninterrupted
run's, file by file (see `VOLATILE_KEYS` for what is compared otherwise, and why).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simpersona.layout import STAGES, RunLayout
from simpersona.stagedir import partial_dir

SALT = "5a" * 32
# Smaller than the tiny preset where it does not change what is exercised (fewer SFT validation
# records scored, fewer simulated buyers).
SETS = ("sft.stage1.max_eval_records=2", "sft.stage2.max_eval_records=2", "simulate.buyers=8",
        "evaluate.ablations.simulate.buyers=4", "evaluate.instructions.repetitions=1")
# (stage, file in its partial folder whose appearance triggers the kill; None: right before the marker)
ALL_KILLS = [
    ("synth", None), ("ingest", None), ("split", None), ("features", None),
    ("vqvae", None),  # every checkpoint written: the resumed stage must resume from it, not start over
    ("personas", None), ("evaluate", None), ("traces", None),
    ("sft", "split.json"),  # inside the stage-1 sub-run (records split, training starts)
    ("sft", "stage1/meta.json"),  # inside the stage-2 sub-run (stage 1's checkpoint saved)
    ("sft", "meta.json"),  # inside the single-stage sub-run: sft.train wrote meta.json after stages 1–2
    ("sft", None),
    ("simulate", None), ("behaviour", None), ("abtest", None), ("report", None),
]
FAST_KILLS = [("vqvae", None), ("sft", "stage1/meta.json"), ("sft", "meta.json"), ("report", None)]
# What differs between two uninterrupted runs too, so is compared without it: the run folder's own
# path (in configs and summaries), wall-clock durations and rates (JSON keys, the `wall_s` column;
# SFT's seconds per step and the machine's load average),
# the write time of meta.json, the storefront's event and session timestamps (the simulated
# sessions run on the wall clock), the title-embedding cache's hit counts (cold in the first run,
# warm after), the VQ-VAE's `resumed` flag (checked on its own). The report page shows a wall-clock
# rate (sessions/s), so of the report its summary.json (every part's status) is compared, not the
# page or its size. Tables documented as unordered are compared as sorted rows. Everything else
# must be identical.
VOLATILE_KEYS = ("wall", "runtime", "per_second", "_per_s", "per_min", "written_at", "elapsed", "seconds", "timing",
                 "preparation_time", "cache_hits", "encoded", "resumed", "bytes", "load_average", "_s_median")
UNORDERED = {"buyer_sessions.parquet": ["shop_id", "buyer_id", "session_id"]}
WALL_CLOCK_STAGES = ("simulate", "behaviour", "abtest")


def launch_env(out: Path, kill_at: str | None = None) -> dict[str, str]:
    # one salt for every run (the same hashed ids); never the user's key file
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "SIMPERSONA_SALT": SALT,
           "SIMPERSONA_SALT_FILE": str(out.parent / "salt.key")}
    env.pop("SIMPERSONA_KILL_AT", None)
    if kill_at:
        env["SIMPERSONA_KILL_AT"] = kill_at
    return env


def launch_args(out: Path) -> list[str]:
    args = [sys.executable, "-m", "simpersona", "run", "--preset", "tiny", "--out", str(out)]
    for s in SETS:
        args += ["--set", s]
    return args


def launch(out: Path, kill_at: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(launch_args(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=launch_env(out, kill_at))


def run_killed(out: Path, stage: str, watch: str | None) -> str:
    """Run until killed inside `stage`; returns stdout."""
    if watch is None:
        p = launch(out, kill_at=stage)
        stdout, stderr = p.communicate(timeout=900)
    else:
        target = partial_dir(RunLayout(out).stage(stage)) / watch
        t0 = time.time()
        p = launch(out)
        while p.poll() is None:
            if target.exists() and target.stat().st_mtime >= t0:
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        stdout, stderr = p.communicate(timeout=900)
    assert p.returncode == -signal.SIGKILL, (stage, watch, p.returncode, stderr[-3000:])
    return stdout


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted tiny main job."""
    out = tmp_path_factory.mktemp("resume") / "ref"
    p = launch(out)
    stdout, err = p.communicate(timeout=1200)
    assert p.returncode == 0, err[-3000:]
    assert "main job finished" in stdout
    return out


def kill_and_resume(out: Path, kills: list) -> list[str]:
    """Run the main job in `out`, killed at each of `kills` in turn, then to the end; every run's stdout."""
    log = []
    for i, (stage, watch) in enumerate(kills):
        stdout = run_killed(out, stage, watch)
        log.append(stdout)
        # a killed stage leaves no result; on resume, the stage killed last time runs again and every
        # stage before it is skipped
        assert not RunLayout(out).stage(stage).exists(), (stage, watch)
        if i:
            previous = kills[i - 1][0]
            assert f"{previous}: done already" not in stdout, (stage, watch)
            for s in STAGES[: STAGES.index(previous)]:
                assert f"{s}: done already" in stdout, (stage, watch, s, stdout[-2000:])
    final = launch(out)
    stdout, err = final.communicate(timeout=1200)
    assert final.returncode == 0, err[-3000:]
    assert f"{kills[-1][0]} …" in stdout and "main job finished" in stdout
    return [*log, stdout]


def check_resumed(ref: Path, killed: Path, kills: list, log: list[str]) -> None:
    lay = RunLayout(killed)
    vq = json.loads((lay.vqvae / "meta.json").read_text())
    assert vq["complete"] is True and vq["summary"]["resumed"] is True  # from its checkpoint, not started over
    # the old bug: sft's meta.json was written before the single-stage model; a run killed then
    # resumed with "sft: done already" and no single-stage checkpoint
    after = log[kills.index(("sft", "meta.json")) + 1]
    assert "sft: done already" not in after and "sft …" in after
    for ck in (lay.stage1, lay.stage2, lay.single):
        assert (ck / "model.safetensors").exists(), ck
    assert not (killed / ".partial").exists()
    assert differences(ref, killed) == {}


def test_main_job_killed_in_vqvae_and_sft_resumes_to_the_same_outputs(reference, tmp_path):
    log = kill_and_resume(tmp_path / "killed", FAST_KILLS)
    check_resumed(reference, tmp_path / "killed", FAST_KILLS, log)


@pytest.mark.slow
def test_main_job_killed_in_every_stage_resumes_to_the_same_outputs(reference, tmp_path):
    log = kill_and_resume(tmp_path / "killed", ALL_KILLS)
    check_resumed(reference, tmp_path / "killed", ALL_KILLS, log)


def _strip(obj):
    """A JSON value without its volatile keys."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items()
                if not (k.endswith("_s") or any(t in k.lower() for t in VOLATILE_KEYS))}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _files(folder: Path) -> dict[str, list[Path]]:
    """A stage's output files by name; Parquet parts of one log (`part-*.parquet`, flushed by time
    and size, so their count varies) grouped as one entry `dir/part-*.parquet`."""
    out: dict[str, list[Path]] = {}
    for rel in json.loads((folder / "meta.json").read_text())["outputs"]:
        p = folder / rel
        key = (Path(rel).parent / "part-*.parquet").as_posix() if p.name.startswith("part-") else rel
        out.setdefault(key, []).append(p)
    return out


def _table(paths: list[Path], stage: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.concat_tables([pq.read_table(p) for p in paths])
    drop = {"wall_s"} | ({"ts", "first_ts"} if stage in WALL_CLOCK_STAGES else set())
    t = t.drop_columns([c for c in t.column_names if c in drop])
    keys = UNORDERED.get(paths[0].name)
    return t.sort_by([(k, "ascending") for k in keys]) if keys else t


def _text(p: Path, root: Path) -> str:
    import re

    return re.sub(r"built \d{4}-\d\d-\d\d \d\d:\d\d UTC", "built …", p.read_text().replace(str(root), "RUN"))


def _same(a: list[Path], b: list[Path], ra: Path, rb: Path, stage: str) -> bool:
    if len(a) > 1 or len(b) > 1 or a[0].suffix == ".parquet":
        return _table(a, stage).equals(_table(b, stage))
    a, b = a[0], b[0]
    if a.read_bytes() == b.read_bytes():
        return True
    if a.suffix == ".json":
        return _strip(json.loads(_text(a, ra))) == _strip(json.loads(_text(b, rb)))
    if a.suffix == ".jsonl":
        la, lb = _text(a, ra).splitlines(), _text(b, rb).splitlines()
        return len(la) == len(lb) and all(_strip(json.loads(x)) == _strip(json.loads(y)) for x, y in zip(la, lb))
    if a.suffix in (".html", ".md", ".txt", ".svg"):
        return _text(a, ra) == _text(b, rb)
    if a.suffix == ".safetensors":
        import torch
        from safetensors.torch import load_file

        ta, tb = load_file(str(a)), load_file(str(b))
        return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    return False


def differences(ref: Path, other: Path) -> dict[str, list[str]]:
    """Per stage, the outputs that differ between two run folders (VOLATILE parts aside)."""
    differ = {}
    for stage in STAGES:
        fa, fb = _files(RunLayout(ref).stage(stage)), _files(RunLayout(other).stage(stage))
        if stage == "report":
            fa.pop("index.html"), fb.pop("index.html")
        bad = sorted(set(fa) ^ set(fb))
        bad += [k for k in sorted(set(fa) & set(fb)) if not _same(fa[k], fb[k], ref, other, stage)]
        if bad:
            differ[stage] = bad
    return differ


def test_main_job_end_to_end_skips_finished_stages_and_reruns_changed_ones(reference, tmp_path):
    """The uninterrupted run (last: it re-runs the reference's report)."""
    lay = RunLayout(reference)
    for stage in STAGES:
        marker = json.loads((lay.stage(stage) / "meta.json").read_text())
        assert marker["complete"] is True and marker["input_hashes"] is not None, stage
    assert lay.report_page.stat().st_size > 10_000
    # the A/B test of the tiny preset's variant on the evaluation shop, in the report with the agent and data behind it
    ab = json.loads((lay.abtest / "abtest.json").read_text())
    assert ab["experiment"] == "big-pages" and ab["changes"] == ["page size 12 → 24"] and ab["n_a"] == ab["n_b"] == 60
    assert ab["data_card"]["generated"] and ab["data_card"]["evaluation_shops_only"] and ab["agent_card"]["agent"] == "policy"
    page = lay.report_page.read_text()
    section = page[page.index("<h2>A/B test (simulated)</h2>"):]
    for text in ("big-pages", "fitted on 3 training shop(s)", "GENERATED data", "policy.npz of this A/B test", "p (holm)",
                 "95% CI (bootstrap)", "<h3>Power</h3>", "<h3>Effects by stratum</h3>", "<h3>Effects by persona code</h3>",
                 "A/B test big-pages: lift of B over A"):
        assert text in section, text
    # Regression: `simpersona report --run RUN` on its own finds every part where the main job wrote it
    # (it looked under evaluate/alignment while the main job writes behaviour/alignment).
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "simpersona", "report", "--run", str(reference), "--out",
                        str(tmp_path / "report")], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    sections = json.loads((tmp_path / "report" / "summary.json").read_text())["sections"]
    assert set(sections.values()) == {"ok"}, sections
    again = launch(reference)
    stdout, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert all(f"{s}: done already" in stdout for s in STAGES), stdout
    # A changed setting re-runs that stage (and any after it), nothing before it.
    third = subprocess.run([*launch_args(reference), "--set", "report.max_cards=3"], capture_output=True, text=True,
                           env=launch_env(reference), timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "behaviour: done already" in third.stdout and "report: done already" not in third.stdout
