"""The features stage end to end and persona assignment on Spark (local session) equal DuckDB's:
same buyers, same vectors within float tolerance, same codes, same shop mixes.

Fast (default suite, no Spark): the executors' batch functions (`features.spark.vector_batch`,
`fit_transforms`, `personas.spark.code_batch`) on Arrow batches reproduce the local stage's
vectors, transforms and codes. Slow (`-m slow`, Java needed): one small world (2 shops, 300
buyers, 91 products, fake 8-d title embeddings) through both engines end to end; a cold Spark
session and its jobs take ≈ 2–3 minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from simpersona.config import load_config
from simpersona.features.layout import INPUT_DIM
from simpersona.features.stage import EmbeddingConfig, FeaturesConfig, load_transforms, run
from simpersona.vqvae.data import fixed_list_to_numpy
from test_features import FakeEncoder


def _world(root):
    from simpersona.testing.world import make_toy_world

    return make_toy_world(root / "world", shops=2, codes=4, buyers=150, seed=3)["ingest"]


def _features_cfg(ingest, engine, root):
    cfg = FeaturesConfig(input=ingest, engine=engine, progress=False, block_rows=64,
                         embedding=EmbeddingConfig(cache_dir=root / "cache"))
    cfg.sample.per_shop = 60  # the transforms are fitted on a sample, not on every buyer
    return cfg


def test_batch_functions_equal_local_stage(tmp_path):
    """vector_batch / fit_transforms / code_batch (what mapInArrow runs) against the DuckDB stage."""
    import pyarrow as pa
    from simpersona.features import spark
    from simpersona.features.engine import connect
    from simpersona.features.layout import CHANNELS, SCALAR_NAMES
    from simpersona.features.stage import buyer_product_rows
    from simpersona.personas.assign import Assigner
    from simpersona.personas.spark import code_batch
    from simpersona.vqvae.model import VQVAE, ModelConfig

    ingest = _world(tmp_path)
    feat = tmp_path / "feat"
    cfg = _features_cfg(ingest, "duckdb", tmp_path)
    run(cfg, feat, encoder=FakeEncoder())
    buyers = pq.read_table(feat / "buyers.parquet")
    n = buyers.num_rows
    pq.write_table(pa.table({"shop_id": buyers["shop_id"], "buyer_id": buyers["buyer_id"], "buyer_row": np.arange(n)}),
                   tmp_path / "keys.parquet")
    b, p, c = buyer_product_rows(connect("duckdb"), ingest / "events.parquet", tmp_path / "keys.parquet",
                                 feat / "product_index.parquet")
    emb = np.load(feat / "product_embeddings.npy")
    train = buyers["split"].to_numpy(zero_copy_only=False) == "train"
    raw = np.column_stack([buyers[name].to_numpy().astype(np.float64) for name in SCALAR_NAMES])
    scalar_t, pcas = spark.fit_transforms(cfg, raw, train, emb, b, p, c, True)
    want = load_transforms(feat)
    np.testing.assert_allclose(scalar_t.scale_, want["scalars"].scale_, rtol=1e-12)
    for got, ref in zip(pcas, want["channels"], strict=True):
        np.testing.assert_allclose(got.components_, ref.components_, rtol=1e-6, atol=1e-9)
    # one batch of buyers as the executors see it: raw scalars and per-channel product lists
    lists = {name: pa.array([sorted(p[(b == i) & (c == ch)].tolist()) or None for i in range(n)], pa.list_(pa.int32()))
             for ch, name in enumerate(spark.LISTS)}
    batch = pa.RecordBatch.from_pydict({"buyer_row": pa.array(np.arange(n)), **{k: buyers[k].combine_chunks() for k in SCALAR_NAMES}, **lists})
    out = spark.vector_batch(batch, scalar_t, pcas, emb)
    x = pc_flat(out.column("x"))
    np.testing.assert_allclose(x, fixed_list_to_numpy(pq.read_table(feat / "vectors.parquet")["x"]), rtol=1e-5, atol=1e-6)
    assert len(CHANNELS) == len(spark.LISTS)
    # embeddings disabled: the stage's zero matrix (one column per title), channels zero, masks kept
    off = pc_flat(spark.vector_batch(batch, scalar_t, pcas, np.zeros((emb.shape[0], 1), np.float32), enabled=False).column("x"))
    np.testing.assert_array_equal(off[:, 16:400], 0.0)
    np.testing.assert_array_equal(off[:, :16], x[:, :16])
    np.testing.assert_array_equal(off[:, 400:], x[:, 400:])
    # the encoder batch function gives the kernel's codes
    model = VQVAE(ModelConfig(codebook_size=8, dropout=0.0)).eval()
    assigner = Assigner(model, 64, bf16=False)
    coded = code_batch(pa.RecordBatch.from_pydict({"shop_id": buyers["shop_id"].combine_chunks(), "buyer_id": buyers["buyer_id"].combine_chunks(), "x": out.column("x")}),
                       assigner)
    assert coded.column("code").to_numpy().tolist() == assigner(x).tolist()


def pc_flat(col):
    import pyarrow.compute as pc

    return pc.list_flatten(col).to_numpy().reshape(len(col), INPUT_DIM)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("PySpark needs Java 17 (apt-get install -y openjdk-17-jre-headless)")
    root = tmp_path_factory.mktemp("spark")
    ingest = _world(root)
    out = {}
    for engine in ("duckdb", "pyspark"):
        out[engine] = (root / engine, run(_features_cfg(ingest, engine, root), root / engine, encoder=FakeEncoder()))
    return root, out


@pytest.mark.slow
def test_features_vectors_equal(both):
    _, out = both
    (d, sd), (s, ss) = out["duckdb"], out["pyspark"]
    assert ss["engine"] == "pyspark" and ss["buyers"] == sd["buyers"] > 100
    for key in ("sessions", "strata_shares", "split_counts", "label_shares", "mask_shares", "pca_components_fitted"):
        assert ss[key] == sd[key], key
    assert pq.read_table(s / "buyers.parquet").equals(pq.read_table(d / "buyers.parquet"))
    vd, vs = pq.read_table(d / "vectors.parquet"), pq.read_table(s / "vectors.parquet")
    assert vs.schema == vd.schema and vs.select(["shop_id", "buyer_id"]).equals(vd.select(["shop_id", "buyer_id"]))
    xd, xs = fixed_list_to_numpy(vd["x"]), fixed_list_to_numpy(vs["x"])
    assert xd.shape == xs.shape == (sd["buyers"], INPUT_DIM)
    assert np.abs(xd[:, 16:]).max() > 0.1  # the product channels carry embeddings, not zeros
    np.testing.assert_allclose(xs, xd, rtol=1e-5, atol=1e-5)
    td, ts = (load_transforms(p) for p in (d, s))  # fitted on the same training buyers
    np.testing.assert_allclose(ts["scalars"].center_, td["scalars"].center_, rtol=1e-12)
    for a, b in zip(ts["channels"], td["channels"], strict=True):
        np.testing.assert_allclose(a.components_, b.components_, rtol=1e-6, atol=1e-9)
    sess = [pq.read_table(p / "buyer_sessions.parquet").sort_by([("shop_id", "ascending"), ("buyer_id", "ascending"),
                                                                ("session_id", "ascending")]) for p in (d, s)]
    assert sess[1].num_rows == sess[0].num_rows and sess[1].column_names == sess[0].column_names
    assert sess[1]["n_events"].equals(sess[0]["n_events"]) and sess[1]["start_ts"].cast("int64").equals(sess[0]["start_ts"].cast("int64"))
    assert not (s / "_tmp").exists()


@pytest.mark.slow
def test_assignment_codes_and_mixes_equal(both):
    from simpersona.personas import assign
    from simpersona.vqvae import train

    root, out = both
    feat = out["duckdb"][0]
    cfg = load_config(train.TrainConfig, values={"features": str(feat)},
                      overrides=["model.codebook_size=8", "batch_size=64", "progress=false", "max_epochs=2"])
    train.run(cfg, root / "vq")
    res = {}
    for engine in ("duckdb", "pyspark"):
        pc = load_config(assign.PersonasConfig, values={"model": str(root / "vq"), "features": str(feat)},
                         overrides=["precision=fp32", "cards=false", f"engine={engine}", "kernel_rows=64"])
        res[engine] = assign.run(pc, root / f"pers-{engine}")
    assert res["pyspark"]["engine"] == "pyspark" and res["pyspark"]["rows"] == res["duckdb"]["rows"]
    for f in ("assignments.parquet", "shop_mix.parquet", "code_strata.parquet"):
        a, b = pq.read_table(root / "pers-duckdb" / f), pq.read_table(root / "pers-pyspark" / f)
        assert b.equals(a), f
    a, b = pq.read_table(root / "pers-duckdb" / "code_means.parquet"), pq.read_table(root / "pers-pyspark" / "code_means.parquet")
    assert a.column_names == b.column_names
    for c in a.column_names:
        np.testing.assert_allclose(b[c].to_numpy(), a[c].to_numpy(), rtol=1e-9, err_msg=c)
    # "auto" follows the features folder's engine
    assert assign.engine(assign.PersonasConfig(features=out["pyspark"][0])) == "pyspark"
    assert assign.engine(assign.PersonasConfig(features=feat)) == "duckdb"
