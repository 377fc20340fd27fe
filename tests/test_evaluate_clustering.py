"""Metrics on tiny hand examples, CH against scikit-learn, and both evaluation commands end to end."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from sklearn.metrics import calinski_harabasz_score

from simpersona.config import load_config
from simpersona.evaluate import metrics as M
from simpersona.evaluate import population as pop_mod
from simpersona.vqvae import losses


def test_doctests():
    from simpersona.evaluate import clustering

    for mod in (M, pop_mod, losses, clustering):
        assert doctest.testmod(mod).failed == 0


def test_purity_and_mixing_by_hand():
    codes = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    strata = np.array([0, 0, 0, 3, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3])  # code 0: 3A 1D; code 1: 5A 5D
    t = M.contingency(codes, strata, 2, 5)
    assert M.mean_purity(t) == pytest.approx((0.75 + 0.5) / 2)
    assert M.weighted_purity(t) == pytest.approx(8 / 14)
    assert M.incompatible_codes(t, threshold=0.2, min_size=1) == 2
    assert M.incompatible_codes(t, threshold=0.3, min_size=1) == 1


def test_js_by_hand():
    p, q = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    # JS = ½ KL(p‖m) + ½ KL(q‖m), m = (.75, .25)
    expect = 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25)) + 0.5 * np.log2(1 / 0.75)
    assert M.js_divergence(p, q) == pytest.approx(expect)
    assert M.js_divergence(q, p) == pytest.approx(expect)


def test_r2_by_hand():
    y = np.array([0.1, 0.2, 0.3, 0.4])
    assert M.r_squared(y, y) == 1.0
    assert M.r_squared(y, np.full(4, y.mean())) == pytest.approx(0.0)


def test_calinski_harabasz_equals_sklearn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 7)) + np.repeat(rng.normal(scale=3, size=(6, 7)), 50, axis=0)
    labels = np.repeat(np.arange(6), 50)
    labels[::7] = rng.integers(0, 6, size=len(labels[::7]))
    assert M.calinski_harabasz(x, labels) == pytest.approx(calinski_harabasz_score(x, labels), rel=1e-10)


def test_within_cosine_by_hand():
    x = np.array([[1.0, 0], [0, 1], [1, 1], [1, 1]])
    # code 0: cos([1,0],[0,1]) = 0 ; code 1: identical → 1
    assert M.mean_within_cosine(x, np.array([0, 0, 1, 1]), 2) == pytest.approx(0.5)


def test_evaluations_end_to_end(tmp_path):
    from simpersona.evaluate import clustering
    from simpersona.evaluate.config import EvaluateConfig
    from simpersona.personas import assign
    from simpersona.vqvae import train
    from simpersona.testing.features import fabricate_features

    feat = fabricate_features(tmp_path, n_shops=8, buyers_per_shop=120, n_holdout=4)
    cfg = load_config(train.TrainConfig, values={"features": str(feat)},
                      overrides=["model.codebook_size=16", "batch_size=128", "progress=false", "max_epochs=4"])
    train.run(cfg, tmp_path / "run")
    pcfg = load_config(assign.PersonasConfig, values={"model": str(tmp_path / "run"), "features": str(feat)})
    assign.run(pcfg, tmp_path / "pers")
    ecfg = load_config(EvaluateConfig, overrides=[
        f"clustering.model={tmp_path / 'run'}", f"clustering.features={feat}", "clustering.kmeans_k=16",
        f"population.personas={tmp_path / 'pers'}", f"population.features={feat}",
        f"population.truth={tmp_path / 'truth' / 'buyers.parquet'}", f"population.ingest={tmp_path / 'ingest'}"])
    rep = clustering.run(ecfg.clustering, tmp_path / "evc")
    assert set(rep["kmeans"]) == set(rep["vqvae"]) == set(rep["kmeans_equal_codes"])
    # values, not ranges (fabricated buyers of six planted types whose product category follows the
    # type: both methods find the strata; the VQ-VAE's codes hold one type each, k-means splits them)
    vq, km, eq = rep["vqvae"], rep["kmeans"], rep["kmeans_equal_codes"]
    assert rep["k"]["kmeans_equal_codes"] == vq["codes_used"] == eq["codes_used"] >= 6
    assert vq["mean_stratum_purity_pct"] >= 95 and vq["incompatible_mixing_codes"] == 0
    assert vq["mean_stratum_purity_pct"] >= eq["mean_stratum_purity_pct"]
    assert vq["calinski_harabasz_scalars"] > km["calinski_harabasz_scalars"]
    assert rep["min_code_size"]["vqvae"]["buyers_pct"] > 95 and rep["suggested_k"] == 16  # 574 buyers / 25 per code
    text = (tmp_path / "evc" / "clustering.md").read_text()
    assert "| mean_stratum_purity_pct ↑ |" in text and "Suggested K" in text
    pop = pop_mod.run(ecfg.population, tmp_path / "evp")
    assert pop["n_shops"] == 4 and pop["stratum_js"]["mean"] < 0.05  # per-shop strata recovered from the codes
    assert pop["truth"]["n_matched"] == pop["n_buyers"]  # raw truth ids hashed with the ingest salt
    assert pop["truth"]["ami"] > 0.8  # the held-out shops' codes recover the planted types (measured 1.0)
    assert pop["truth"]["type_mix_tv"]["max"] < 0.05  # and each shop's type mix
    json.loads((tmp_path / "evp" / "population.json").read_text())
    assert pop["held_out"]
    # no held-out buyers: in-sample fallback, said so; or an error when the fallback is switched off
    ecfg.population.splits = ["no-such-split"]
    again = pop_mod.run(ecfg.population, tmp_path / "evp2")
    assert not again["held_out"] and "IN-SAMPLE" in (tmp_path / "evp2" / "population.md").read_text()
    ecfg.population.fallback_splits = []
    from simpersona.config import ConfigError

    with pytest.raises(ConfigError):
        pop_mod.run(ecfg.population, tmp_path / "evp3")
