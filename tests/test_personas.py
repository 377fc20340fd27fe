"""Assignment (batched = one go, bf16 ≈ fp32), shop mixes, population sampling, persona cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from simpersona.config import load_config
from simpersona.personas import assign as assign_mod
from simpersona.vqvae import train as train_mod
from simpersona.vqvae.checkpoint import load_model
from simpersona.vqvae.data import fixed_list_to_numpy
from simpersona.testing.features import fabricate_features


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pers")
    feat = fabricate_features(root, n_shops=5, buyers_per_shop=160)
    cfg = load_config(train_mod.TrainConfig, values={"features": str(feat)},
                      overrides=["model.codebook_size=16", "batch_size=128", "progress=false", "max_epochs=4"])
    train_mod.run(cfg, root / "run")
    return feat, root / "run"


def _assign(feat, run, out, *sets):
    cfg = load_config(assign_mod.PersonasConfig, values={"model": str(run), "features": str(feat)}, overrides=list(sets))
    return assign_mod.run(cfg, out)


def test_batched_assignment_equals_one_go(trained, tmp_path):
    feat, run = trained
    _assign(feat, run, tmp_path / "small", "batch_rows=37", "precision=fp32", "cards=false")
    _assign(feat, run, tmp_path / "big", "batch_rows=100000", "precision=fp32", "cards=false")
    a = pq.read_table(tmp_path / "small" / "assignments.parquet")
    b = pq.read_table(tmp_path / "big" / "assignments.parquet")
    assert a.equals(b)
    model, _ = load_model(run)
    x = fixed_list_to_numpy(pq.read_table(feat / "vectors.parquet").column("x"))
    ref = model.encode_codes(torch.from_numpy(x)).numpy()
    assert np.array_equal(a.column("code").to_numpy(), ref)
    for f in ("shop_mix.parquet", "code_strata.parquet"):
        assert pq.read_table(tmp_path / "small" / f).equals(pq.read_table(tmp_path / "big" / f))


def test_bf16_codes_mostly_equal_fp32(trained):
    feat, run = trained
    model, _ = load_model(run)
    x = fixed_list_to_numpy(pq.read_table(feat / "vectors.parquet").column("x"))
    fp32 = assign_mod.Assigner(model, 256, bf16=False)
    bf16 = assign_mod.Assigner(model, 256, bf16=True)
    same = np.mean([np.mean(fp32(x[i:i + 256]) == bf16(x[i:i + 256])) for i in range(0, len(x), 256)])
    assert same >= 0.95  # tiny model, 800 rows; the benchmark measures the ≥ 99.5% target at scale


def test_shop_mix_and_sampling(trained, tmp_path):
    feat, run = trained
    _assign(feat, run, tmp_path, "cards=false")
    mix = pq.read_table(tmp_path / "shop_mix.parquet").to_pydict()
    for s in set(mix["shop_id"]):
        assert sum(p for sh, p in zip(mix["shop_id"], mix["share"]) if sh == s) == pytest.approx(1.0)
    pm = assign_mod.PersonaMix(tmp_path)
    pop = pm.sample_population("shop0", 2000, np.random.default_rng(0))
    again = pm.sample_population("shop0", 2000, np.random.default_rng(0))
    assert np.array_equal(pop.codes, again.codes)
    codes, p = pm.mix["shop0"]
    freq = np.array([(pop.codes == c).mean() for c in codes])
    assert np.abs(freq - p).max() < 0.05
    assert set(pop.intents[np.isin(pop.strata, ["A", "B", "C"])]) <= {"buy"}
    assert set(pop.intents[pop.strata == "D"]) <= {"browse"}


def test_persona_cards(trained, tmp_path):
    feat, run = trained
    summary = _assign(feat, run, tmp_path)
    cards = json.loads((tmp_path / "cards.json").read_text())
    assert len(cards) == summary["cards"] == summary["codes_used"]
    assert sum(c["size"] for c in cards) == summary["rows"]
    c = cards[0]
    assert set(c["labels"].values()) <= {"low", "medium", "high"}
    assert sum(c["strata"].values()) == pytest.approx(1.0)
    assert "atc_rate" in c["centroid"] and c["top"]["collections"]
    # a code's raw average order value is positive exactly when some of its buyers purchased (stratum A)
    assert [c["centroid"]["avg_order_value"] > 0 for c in cards] == [c["strata"].get("A", 0) > 0 for c in cards]
    assert any(c["strata"].get("A", 0) > 0 for c in cards) and any(c["strata"].get("A", 0) == 0 for c in cards)
    assert "# Persona cards" in (tmp_path / "cards.md").read_text()
