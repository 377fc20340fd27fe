"""Operator errors at the pipeline and CLI level: one line naming the path and the problem, exit
code 2, no traceback, nothing half-written (issue 10 item 6). Ingest's own errors: test_ingest."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from simpersona import stagedir
from simpersona.cli import main
from simpersona.config import InputError


@dataclass
class _Cfg:
    # a setting
    x: int = 1


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "simpersona", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def one_line_error(p, *needles: str) -> str:
    """The process failed with exit code 2 and one `error:` line holding every needle."""
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_output_path_that_is_a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("not a folder\n")
    one_line_error(cli("run", "--preset", "tiny", "--out", str(f)), str(f), "is a file")
    one_line_error(cli("synth", "--shops", "2", "--buyers", "40", "--out", str(f)), str(f), "is a file")
    one_line_error(cli("synth", "--shops", "2", "--buyers", "40", "--out", str(f / "sub")), str(f), "is a file")
    assert f.read_text() == "not a folder\n"


def test_output_folder_of_something_else_is_not_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    one_line_error(cli("synth", "--shops", "2", "--buyers", "40", "--out", str(mine)), str(mine), "no meta.json")
    assert (mine / "notes.txt").read_text() == "keep me\n"


def test_read_only_disk_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    """The machine runs tests as root (permissions do not stop it): the read-only disk is simulated
    by an EROFS from every mkdir under the output folder."""
    ro = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):
        if str(self).startswith(str(ro)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    res = CliRunner().invoke(main, ["synth", "--shops", "2", "--buyers", "40", "--out", str(ro / "synth")])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert line.startswith("error: ") and "\n" not in line and str(ro) in line and "Read-only file system" in line
    assert not ro.exists()


def test_full_disk_mid_stage_leaves_no_output(tmp_path, monkeypatch):
    """A stage that dies of ENOSPC half-way: one line, exit 2, no output folder, no partial left."""
    import simpersona.synth

    def full(cfg, run_dir):
        (Path(run_dir) / "events.csv").write_text("half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(run_dir) / "events.csv"))

    monkeypatch.setattr(simpersona.synth, "run", full)
    out = tmp_path / "synth"
    res = CliRunner().invoke(main, ["synth", "--shops", "2", "--buyers", "40", "--out", str(out)])
    assert res.exit_code == 2 and "No space left on device" in res.output and "events.csv" in res.output
    assert not out.exists() and not stagedir.partial_dir(out).exists()


@pytest.fixture(scope="module")
def vqvae_run(tmp_path_factory):
    from simpersona.testing.features import fabricate_features

    root = tmp_path_factory.mktemp("vq")
    feat = fabricate_features(root / "feat", n_shops=3, buyers_per_shop=60)
    p = cli("vqvae", "train", "--features", str(feat), "--out", str(root / "model"), "--set", "model.codebook_size=8",
            "--set", "batch_size=64", "--set", "max_epochs=1", "--set", "progress=false")
    assert p.returncode == 0, p.stderr[-3000:]
    return root / "model", feat


def test_truncated_vqvae_model_is_one_line(vqvae_run, tmp_path):
    import shutil

    model, feat = vqvae_run
    bad = tmp_path / "model"
    shutil.copytree(model, bad)
    blob = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    p = cli("personas", "assign", "--model", str(bad), "--features", str(feat), "--out", str(tmp_path / "p"))
    one_line_error(p, str(bad / "model.safetensors"), "truncated or corrupt")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("damage", ["truncated checkpoint", "corrupt state.json", "state.json not an object"])
def test_damaged_training_checkpoint_names_the_file(vqvae_run, tmp_path, damage):
    import shutil

    import torch

    from simpersona.vqvae.checkpoint import load_model, load_training_state
    from simpersona.vqvae.model import VQVAE

    model_dir, _ = vqvae_run
    ck = tmp_path / "checkpoint"
    shutil.copytree(model_dir / "checkpoint", ck)
    if damage == "truncated checkpoint":
        blob = (ck / "last.safetensors").read_bytes()
        (ck / "last.safetensors").write_bytes(blob[:100])
        where = "last.safetensors"
    elif damage == "corrupt state.json":
        (ck / "state.json").write_text('{"step": 3, "best_')
        where = "state.json"
    else:
        (ck / "state.json").write_text("[1, 2]")
        where = "state.json"
    model = VQVAE(load_model(model_dir)[1])  # load_model returns (model, ModelConfig)
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(InputError) as e:
        load_training_state(ck, model, opt, torch.Generator())
    msg = str(e.value)
    assert str(ck / where) in msg and "resume=false" in msg and "\n" not in msg


def test_a_stage_refuses_an_input_stage_that_did_not_finish(tmp_path):
    """The pipeline checks every input stage's completion marker before a stage runs: a folder
    without one (killed, copied half, or written by hand) is an error naming it."""
    from simpersona import pipeline
    from simpersona.layout import RunLayout

    lay = RunLayout(tmp_path / "run")
    features = next(s for s in pipeline.steps(None, "canonical") if s.name == "features")
    lay.ingest.mkdir(parents=True)
    (lay.ingest / "events.parquet").write_bytes(b"half")
    with pytest.raises(InputError, match=r"ingest.*no complete ingest output"):
        pipeline.input_hashes(features, lay, None)
    (lay.ingest / "meta.json").write_text('{"stage": "ingest", "config": {}}')  # a stage's own meta, no marker
    with pytest.raises(InputError, match="no complete ingest output"):
        pipeline.input_hashes(features, lay, None)
    stagedir.commit(stagedir.begin(lay.ingest, "k"), lay.ingest, "ingest", _Cfg())  # an (empty) committed ingest
    lay.split.mkdir()
    with pytest.raises(InputError, match="no complete split output"):
        pipeline.input_hashes(features, lay, None)


def test_commit_replaces_the_old_result_whole(tmp_path):
    out = tmp_path / "stage"
    first = stagedir.begin(out, "a")
    (first / "a.txt").write_text("old")
    stagedir.commit(first, out, "stage", _Cfg())
    second = stagedir.begin(out, "b")
    assert (out / "a.txt").read_text() == "old" and not (second / "a.txt").exists()  # old result stays until commit
    (second / "b.txt").write_text("new")
    (second / "ck").mkdir()  # a checkpoint that records where it was written
    (second / "ck" / "meta.json").write_text(json.dumps({"checkpoint": {"path": str(second / "ck")}}))
    marker = stagedir.commit(second, out, "stage", _Cfg(), note=1, where=str(second / "b.txt"))
    assert sorted(p.name for p in out.iterdir()) == ["b.txt", "ck", "meta.json"] and not (tmp_path / ".partial").exists()
    assert json.loads((out / "ck" / "meta.json").read_text())["checkpoint"]["path"] == str(out / "ck")
    assert marker["complete"] and marker["note"] == 1 and set(marker["outputs"]) == {"b.txt", "ck/meta.json"}
    assert marker["where"] == str(out / "b.txt")
    assert marker["outputs"]["b.txt"]["sha256"] == stagedir.file_hash(out / "b.txt")
    assert set(marker["libraries"]) >= {"torch", "duckdb", "pyarrow", "numpy", "transformers"}



def test_main_job_on_a_read_only_disk(tmp_path, tmpfs):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        one_line_error(cli("run", "--preset", "tiny", "--out", str(ro / "run")), str(ro / "run"), "Read-only file system")
        assert not any(ro.iterdir())


def test_main_job_on_a_full_disk_leaves_no_half_written_stage(tmp_path, tmpfs):
    with tmpfs(tmp_path / "disk", "size=96k") as disk:
        run = disk / "run"
        one_line_error(cli("run", "--preset", "tiny", "--out", str(run)), "No space left on device", str(run))
        assert not (run / "synth").exists() and not (run / ".partial").exists()
