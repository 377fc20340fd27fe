"""A toy world for tests and benchmarks: a catalog, FABRICATED real-looking sessions of buyers
with known persona codes, and the folders the simulation and metrics read.

    make_toy_world(root, shops=2, codes=4, buyers=150, seed=0) → {"ingest", "personas", "features"}

Code c has purchase propensity q_c = c / (K−1) and browsing depth 1 + c mod 3: each session opens
the home page, views `depth` products, and with probability q_c adds to cart, with q_c again
starts checkout, with q_c again buys. Each shop has its own Dirichlet mix over codes. Written:
ingest/{events,catalog}.parquet, personas/{assignments,shop_mix,code_strata}.parquet + cards.json
(labels from q_c and depth), features/buyers.parquet (the 16 raw scalars, stratum, aux labels)
computed with the features stage's own aggregation and label functions. Nothing is real.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simpersona.contracts.labels import LEVELS
from simpersona.events.schema import EVENT_SCHEMA


def make_toy_world(root: Path, shops: int = 2, codes: int = 4, buyers: int = 150, seed: int = 0,
                   products: int = 48) -> dict[str, Path]:
    from simpersona.synth.catalog import build_catalog

    root = Path(root)
    rng = np.random.default_rng(seed)
    dirs = {k: root / k for k in ("ingest", "personas", "features")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    shop_ids = [f"shop{i}" for i in range(shops)]
    cat = pa.concat_tables([build_catalog(s, products, 6, np.random.default_rng([seed, i])).table for i, s in enumerate(shop_ids)])
    pq.write_table(cat, dirs["ingest"] / "catalog.parquet")
    pids = {s: [p for sh, p in zip(cat["shop_id"].to_pylist(), cat["product_id"].to_pylist()) if sh == s] for s in shop_ids}
    q = np.linspace(0.0, 1.0, codes) if codes > 1 else np.array([0.5])
    depth = 1 + np.arange(codes) % 3
    rows, assign = [], []
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    for si, s in enumerate(shop_ids):
        mix = rng.dirichlet(np.full(codes, 1.0))
        for b in range(buyers):
            k = int(rng.choice(codes, p=mix))
            bid = f"{s}-b{b:05d}"
            assign.append((s, bid, k))
            for n in range(int(rng.integers(1, 4))):
                sid, t = f"{bid}-s{n}", t0 + dt.timedelta(days=int(rng.integers(0, 60)), seconds=int(rng.integers(0, 86400)))

                def ev(kind, pid=None, price=None, qty=None):
                    nonlocal t
                    t += dt.timedelta(seconds=int(rng.integers(5, 90)))
                    rows.append((s, bid, sid, t, kind, pid, None, None, price, qty))

                ev("page_view")
                seen = [pids[s][int(i)] for i in rng.integers(0, len(pids[s]), depth[k])]
                for p in seen:
                    ev("product_view", p, 10.0)
                if rng.random() < q[k]:
                    ev("add_to_cart", seen[-1], 10.0, 1)
                    if rng.random() < q[k]:
                        ev("checkout_start")
                        if rng.random() < q[k]:
                            ev("purchase", seen[-1], 10.0, 1)
    events = pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(zip(*rows), EVENT_SCHEMA)], schema=EVENT_SCHEMA)
    pq.write_table(events, dirs["ingest"] / "events.parquet")
    a = pa.table({"shop_id": [x[0] for x in assign], "buyer_id": [x[1] for x in assign],
                  "code": pa.array([x[2] for x in assign], pa.int16())})
    pq.write_table(a, dirs["personas"] / "assignments.parquet")
    buyers_t = _buyers(dirs["ingest"])
    pq.write_table(buyers_t, dirs["features"] / "buyers.parquet")
    _mixes(dirs["personas"], a, buyers_t, codes)
    cards = [{"code": k, "labels": {"engage": LEVELS[min(2, int(depth[k]) - 1)], "explore": LEVELS[min(2, int(depth[k]) - 1)],
                                    "purchase": LEVELS[min(2, int(round(2 * q[k])))]}} for k in range(codes)]
    (dirs["personas"] / "cards.json").write_text(json.dumps(cards, indent=2) + "\n")
    return dirs


def _buyers(ingest: Path) -> pa.Table:
    """buyers.parquet as the features stage writes it (raw scalars, stratum, labels; split 'train')."""
    from simpersona.features import aggregate as agg
    from simpersona.features import labels as lab
    from simpersona.features.layout import SCALAR_NAMES
    from simpersona.features.engine import connect
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        con = connect("duckdb", 2, "1GB", Path(tmp))
        s = agg.session_table(con.read_parquet(str(ingest / "events.parquet")), con.read_parquet(str(ingest / "catalog.parquet")), context=False)
        raw = agg.buyer_table(s).order_by(list(agg.KEYS)).to_pyarrow()
        con.disconnect()
    c = {n: raw[n].to_numpy() for n in raw.column_names if n not in agg.KEYS}
    st = lab.strata(c["sessions_with_purchase"], c["sessions_with_checkout"], c["sessions_with_atc"],
                    c["cart_activity_sessions"], c["sessions_with_view"], c["sessions_with_search"], c["sessions_with_collection"])
    engage = c["total_duration_s"]
    explore = c["sessions_with_search"] + c["sessions_with_collection"] + c["sessions_with_view"]
    score = lab.purchase_score(c["sessions_with_checkout"], c["sessions_with_atc"])
    return pa.table({"shop_id": raw["shop_id"], "buyer_id": raw["buyer_id"], **{n: raw[n] for n in SCALAR_NAMES},
                     "stratum": pa.array(st.astype(str)),
                     "engage_label": lab.tercile_label(engage, lab.tercile_edges(engage)),
                     "explore_label": lab.tercile_label(explore, lab.tercile_edges(explore)),
                     "purchase_label": lab.purchase_label(score), "split": pa.array(["train"] * raw.num_rows)})


def _mixes(personas: Path, assign: pa.Table, buyers: pa.Table, k: int) -> None:
    import duckdb

    con = duckdb.connect()
    con.register("a", assign)
    con.register("b", buyers)
    mix = con.sql("""WITH c AS (SELECT shop_id, code, count(*) AS n FROM a GROUP BY ALL)
                         SELECT shop_id, code, n, n / sum(n) OVER (PARTITION BY shop_id) AS share FROM c ORDER BY 1, 2""").to_arrow_table()
    pq.write_table(mix, personas / "shop_mix.parquet")
    cs = con.sql("""WITH c AS (SELECT a.code, b.stratum, count(*) AS n FROM a JOIN b USING (shop_id, buyer_id) GROUP BY ALL)
                        SELECT code, stratum, n, n / sum(n) OVER (PARTITION BY code) AS share FROM c ORDER BY 1, 2""").to_arrow_table()
    pq.write_table(cs, personas / "code_strata.parquet")
