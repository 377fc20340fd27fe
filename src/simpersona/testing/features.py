"""A small, well-formed FEAT_DIR with planted buyer types, for tests and benchmarks.

It follows the features → persona contract (buyers.parquet, vectors.parquet, buyer_sessions.parquet,
transforms.json) without running the features stage. Six planted types differ in funnel depth,
engagement and product category; each shop mixes them in its own proportions. It also writes
`ingest/summary.json` (the salt id) and `truth/buyers.parquet` (raw ids + type) like the generator + ingest would.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simpersona.events.deid import hash_ids, load_or_create_salt, salt_id
from simpersona.features.layout import CHANNEL_DIM, CHANNEL_SLICES, INPUT_DIM, MASKS, N_SCALARS, SCALAR_NAMES

# type → (stratum, sessions mean, duration scale, category)
TYPES: tuple[tuple[str, float, float, int], ...] = (
    ("A", 6.0, 3000.0, 0),
    ("B", 3.0, 1500.0, 1),
    ("C", 2.5, 900.0, 2),
    ("D", 4.0, 2400.0, 0),
    ("D", 1.2, 120.0, 3),
    ("A", 1.5, 600.0, 3),
)


def _raw_scalars(types: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 16) raw scalars consistent with each type's funnel depth."""
    n = len(types)
    st = np.array([TYPES[t][0] for t in types])
    ns = 1 + rng.poisson(np.array([TYPES[t][1] for t in types]))
    frac = lambda lo, hi: np.clip(np.round(ns * rng.uniform(lo, hi, n)), 1, ns)  # noqa: E731
    view = frac(0.7, 1.0)
    atc = np.where(np.isin(st, ["A", "B", "C"]), frac(0.3, 0.9), 0)
    co = np.where(np.isin(st, ["A", "B"]), np.minimum(atc, frac(0.2, 0.7)), 0)
    pur = np.where(st == "A", np.minimum(co, frac(0.2, 0.6)), 0)
    search = np.round(ns * rng.uniform(0, 0.6, n))
    coll = np.round(ns * rng.uniform(0, 0.8, n))
    dur = np.array([TYPES[t][2] for t in types]) * rng.lognormal(0, 0.4, n)
    pviews = view * (1 + rng.poisson(3, n))
    browse_only = (ns - atc) / ns
    intent = (3 * atc + 5 * co + 8 * pur) / (ns + 3 * atc + 5 * co + 8 * pur)
    cart_v = np.where(atc > 0, rng.lognormal(4, 0.5, n), 0)
    order_v = np.where(pur > 0, rng.lognormal(4.2, 0.5, n), 0)
    days = np.minimum(ns, 1 + rng.poisson(ns / 2))
    cols = [ns, days, view, atc, co, search, coll, pur, dur, pviews, atc / ns, co / ns, browse_only, intent,
            cart_v, order_v]
    return np.stack(cols, axis=1).astype(np.float64)


def _terciles(v: np.ndarray) -> np.ndarray:
    lo, hi = np.quantile(v, [1 / 3, 2 / 3])
    return np.digitize(v, [lo, hi], right=True).astype(np.int8)


def fabricate_features(root: Path, n_shops: int = 5, buyers_per_shop: int = 160, n_holdout: int = 1,
                       seed: int = 0, type_categories: bool = True) -> Path:
    """Write root/feat, root/ingest/summary.json, root/truth/buyers.parquet; returns root/feat.

    Ids are hashed with the installation's salt (`deid.load_or_create_salt`), as an ingest would.
    `type_categories=False`: each buyer's product category is drawn at random, not from its type
    (product text unrelated to behaviour, as in `simpersona synth`): the product channels, which
    dominate the 403-d geometry, then say nothing about the planted types."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    feat = root / "feat"
    for d in (feat, root / "ingest", root / "truth"):
        d.mkdir(parents=True, exist_ok=True)
    salt, _ = load_or_create_salt()
    (root / "ingest" / "summary.json").write_text(json.dumps({"salt_id": salt_id(salt)}) + "\n")

    shop, types = [], []
    for s in range(n_shops):
        mix = rng.dirichlet(np.full(len(TYPES), 1.0))
        shop += [f"shop{s}"] * buyers_per_shop
        types.append(rng.choice(len(TYPES), buyers_per_shop, p=mix))
    types = np.concatenate(types)
    n = len(types)
    raw_ids = [f"raw{i}" for i in range(n)]
    buyer_id = hash_ids(raw_ids, salt)
    raw = _raw_scalars(types, rng)
    strata = np.array([TYPES[t][0] for t in types])

    # normalised scalars: log1p on counts/durations/values, plain on rates; then z-score
    rates = [SCALAR_NAMES.index(c) for c in ("atc_rate", "checkout_rate", "browse_only_rate", "intent_strength")]
    z = np.log1p(raw)
    z[:, rates] = raw[:, rates]
    z = (z - z.mean(0)) / (z.std(0) + 1e-9)
    x = np.zeros((n, INPUT_DIM), np.float32)
    x[:, :N_SCALARS] = z
    centroids = rng.normal(size=(4, 3, CHANNEL_DIM))
    cat = np.array([TYPES[t][3] for t in types]) if type_categories else rng.integers(0, 4, n)
    has = np.stack([raw[:, 2] > 0, raw[:, 3] > 0, raw[:, 7] > 0], axis=1)  # viewed, carted, purchased
    for c, sl in enumerate(CHANNEL_SLICES):
        emb = centroids[cat, c] + 0.5 * rng.normal(size=(n, CHANNEL_DIM))
        x[:, sl] = np.where(has[:, c : c + 1], emb, 0.0)
    x[:, MASKS] = has

    sig = np.where(raw[:, 7] > 0, 3, np.where(raw[:, 3] > 0, 2, np.where(raw[:, 2] > 0, 1, 0))).astype(np.int8)
    s_pur = 8 * raw[:, 4] + 3 * raw[:, 3]
    purchase = np.digitize(s_pur, [1.5, 4.5]).astype(np.int8)
    engage = _terciles(np.log(raw[:, 8]))
    explore = _terciles(np.log1p(raw[:, 2] + raw[:, 5] + raw[:, 6]))
    shop_arr = np.array(shop)
    holdout = np.isin(shop_arr, [f"shop{s}" for s in range(n_shops - n_holdout, n_shops)])
    split = np.where(holdout, "holdout", np.where(rng.random(n) < 0.85, "train", "val"))

    buyers = {"shop_id": shop, "buyer_id": buyer_id}
    buyers |= {name: raw[:, i] for i, name in enumerate(SCALAR_NAMES)}
    buyers |= {"stratum": strata, "engage_label": engage, "explore_label": explore, "purchase_label": purchase,
               "funnel_signature": sig, "split": split}
    pq.write_table(pa.table(buyers), feat / "buyers.parquet")
    xs = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), INPUT_DIM)
    pq.write_table(pa.table({"shop_id": shop, "buyer_id": buyer_id, "x": xs}), feat / "vectors.parquet")

    titles = lambda c, k: [f"cat{c} item{j}" for j in rng.integers(0, 5, k)]  # noqa: E731
    sess = {
        "shop_id": shop, "buyer_id": buyer_id, "session_id": [f"s{i}" for i in range(n)],
        "viewed_titles": [titles(c, 2) for c in cat],
        "carted_titles": [titles(c, 1) if h else [] for c, h in zip(cat, has[:, 1])],
        "purchased_titles": [titles(c, 1) if h else [] for c, h in zip(cat, has[:, 2])],
        "collections": [[f"collection {c}"] for c in cat],
        "queries": [[f"query {c}"] if r[5] > 0 else [] for c, r in zip(cat, raw)],
        "brands": [[f"brand{c}"] for c in cat],
    }
    pq.write_table(pa.table(sess), feat / "buyer_sessions.parquet")
    (feat / "transforms.json").write_text(json.dumps({"fabricated": True}) + "\n")
    truth = {"shop_id": shop, "buyer_id": raw_ids, "type": [f"type{t}" for t in types]}
    pq.write_table(pa.table(truth), root / "truth" / "buyers.parquet")
    return feat
