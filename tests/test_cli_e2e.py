"""End-to-end runs of the command line in subprocesses: synth → ingest (the main job: test_pipeline_resume)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq

from simpersona.events.deid import hash_ids, ingest_key


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    p = subprocess.run([sys.executable, "-m", "simpersona", *args], capture_output=True, text=True, cwd=cwd, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_synth_then_ingest(tmp_path):
    cli("synth", "--shops", "3", "--buyers", "300", "--seed", "5", "--out", str(tmp_path / "raw"))
    p = cli("ingest", "--format", "canonical", "--input", str(tmp_path / "raw" / "events.csv"),
            "--catalog", str(tmp_path / "raw" / "catalog.parquet"), "--out", str(tmp_path / "ing"), "--set", "progress=false")
    assert "accepted + rejected == read" in p.stdout
    summary = json.loads((tmp_path / "ing" / "summary.json").read_text())
    raw_rows = pq.read_metadata(tmp_path / "raw" / "catalog.parquet").num_rows
    assert summary["rejected"] == 0 and summary["accepted"] == summary["read"] > 1000
    assert summary["shops"] == 3 and summary["catalog_products"] == raw_rows
    # The generator's truth maps onto the ingested (hashed) ids with the installation's salt.
    key = ingest_key(tmp_path / "ing")
    truth = pq.read_table(tmp_path / "raw" / "truth" / "buyers.parquet")
    hashed = set(hash_ids(truth.column("buyer_id").to_pylist(), key))
    ingested = set(pq.read_table(tmp_path / "ing" / "events.parquet", columns=["buyer_id"]).column("buyer_id").to_pylist())
    assert ingested == hashed
    meta = json.loads((tmp_path / "ing" / "meta.json").read_text())
    assert meta["stage"] == "ingest" and meta["config"]["format"] == "canonical"
