"""The run's one shop split (contracts.split): stable, name-agnostic, written once, and a guard that
fails when an evaluation shop's data reaches a training input."""

from __future__ import annotations

import json
import uuid

import pytest

from simpersona.contracts.split import ShopSplit, SplitConfig, SplitLeakError, make_split, stable_rank

SHOPS = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(20)]  # no "shop_NN" names assumed


def test_split_is_stable_order_free_and_sized():
    a = make_split(SHOPS, SplitConfig(eval_fraction=0.25))
    assert len(a.eval) == 5 and len(a.train) == 15 and not set(a.eval) & set(a.train)
    assert make_split(list(reversed(SHOPS)), SplitConfig(eval_fraction=0.25)) == a
    # keyed by each shop's hash: the lowest ranks evaluate, whatever the names
    assert set(a.eval) == set(sorted(SHOPS, key=lambda s: stable_rank(0, s))[:5])
    assert make_split(SHOPS, SplitConfig(eval_fraction=0.25, seed=1)) != a
    assert make_split(SHOPS, SplitConfig(eval_fraction=0.0)).eval == ()
    assert make_split(["only"], SplitConfig(eval_fraction=0.5)).train == ("only",)  # never everything held out


def test_explicit_evaluation_shops_and_errors():
    s = make_split(SHOPS, SplitConfig(eval_shops=[SHOPS[3]]))
    assert s.eval == (SHOPS[3],) and SHOPS[3] not in s.train
    with pytest.raises(ValueError, match="not shops of the data"):
        make_split(SHOPS, SplitConfig(eval_shops=["nope"]))
    with pytest.raises(ValueError, match="eval_fraction"):
        make_split(SHOPS, SplitConfig(eval_fraction=1.0))
    with pytest.raises(ValueError, match="every shop"):
        make_split(SHOPS[:2], SplitConfig(eval_shops=SHOPS[:2]))


def test_file_round_trip_and_the_guard_names_shop_and_stage(tmp_path):
    s = make_split(SHOPS, SplitConfig(eval_fraction=0.25))
    s.save(tmp_path / "split" / "shops.json", {"eval_fraction": 0.25})
    assert ShopSplit.load(tmp_path / "split") == s
    s.check_training(s.train, "traces")  # training shops only: fine
    with pytest.raises(SplitLeakError, match=rf"^vqvae: .*{s.eval[0]}"):
        s.check_training([s.train[0], s.eval[0]], "vqvae")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["a", "b"], "eval": ["b"]}))
    with pytest.raises(ValueError, match="both"):
        ShopSplit.load(bad)
    with pytest.raises(FileNotFoundError, match="split step"):
        ShopSplit.load(tmp_path / "none")


def test_vqvae_refuses_features_whose_sample_holds_an_evaluation_shop(tmp_path):
    """Stale features (sampled under another split) must not train the VQ-VAE."""
    from simpersona.testing.features import fabricate_features
    from simpersona.vqvae.train import check_sample_shops

    feat = fabricate_features(tmp_path, n_shops=3, buyers_per_shop=20, n_holdout=1)  # shop2 held out
    ShopSplit(("shop0", "shop1"), ("shop2",)).save(tmp_path / "ok" / "shops.json")
    check_sample_shops(feat, tmp_path / "ok")
    ShopSplit(("shop1", "shop2"), ("shop0",)).save(tmp_path / "leak" / "shops.json")
    with pytest.raises(SplitLeakError, match=r"vqvae .*'shop0'"):
        check_sample_shops(feat, tmp_path / "leak")


def test_split_step_writes_the_file_later_stages_read(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from simpersona.contracts.split import run

    (tmp_path / "ingest").mkdir()
    pq.write_table(pa.table({"shop_id": SHOPS * 3, "buyer_id": ["b"] * 60}), tmp_path / "ingest" / "events.parquet")
    summary = run(SplitConfig(eval_fraction=0.1, ingest=tmp_path / "ingest"), tmp_path / "split")
    s = ShopSplit.load(tmp_path / "split" / "shops.json")
    assert summary["eval_shops"] == len(s.eval) == 2 and len(s.train) == 18
    assert json.loads((tmp_path / "split" / "meta.json").read_text())["stage"] == "split"
