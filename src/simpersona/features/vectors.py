"""Buyer vectors of other events with a finished features stage's fitted state: the stage's outputs
(transforms.json, product_index.parquet, product_embeddings.npy) applied to any subset of a run's
events — e.g. evaluation buyers' earlier sessions (`personas.history`) — with nothing refitted. The
public, read-the-outputs side of the features stage for later stages (its entry module `stage`
is not imported by them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simpersona.features import aggregate as agg
from simpersona.features import labels as lab
from simpersona.features.layout import CHANNEL_DIM, SCALAR_NAMES
from simpersona.features.stage import assemble, buyer_product_rows, load_transforms


def buyer_vectors(events_path: Path, catalog_path: Path, feat_dir: Path, tmp_dir: Path,
                  threads: int = 2) -> tuple[pa.Table, np.ndarray]:
    """The stage's buyer vectors for the events of `events_path` (any subset of a run's events, e.g.
    evaluation buyers' earlier sessions), with FEAT_DIR's fitted transforms, product index and
    product embeddings (nothing refitted): the same aggregation (`aggregate`), strata, channel
    means and `assemble` as `run`. → (table shop_id, buyer_id, the 16 raw scalars, stratum, sorted
    by the keys; x (n, 403) float32 in the table's row order)."""
    from simpersona.features import engine
    from simpersona.features.embed import channel_weights

    feat_dir, tmp_dir = Path(feat_dir), Path(tmp_dir)
    con = engine.connect("duckdb", threads, "1GB", tmp_dir / "duckdb")
    try:
        sessions = agg.session_table(con.read_parquet(str(events_path)), con.read_parquet(str(catalog_path)), context=False)
        raw = agg.buyer_table(sessions).order_by(list(agg.KEYS)).to_pyarrow()
        n = raw.num_rows
        keys = tmp_dir / "buyer_keys.parquet"
        pq.write_table(pa.table({"shop_id": raw["shop_id"], "buyer_id": raw["buyer_id"], "buyer_row": pa.array(np.arange(n))}), keys)
        b_rows, p_rows, chan = buyer_product_rows(con, events_path, keys, feat_dir / "product_index.parquet")
    finally:
        con.disconnect()
    col = {c: raw[c].to_numpy(zero_copy_only=False) for c in raw.column_names if c not in agg.KEYS}
    stratum = lab.strata(col["sessions_with_purchase"], col["sessions_with_checkout"], col["sessions_with_atc"],
                         col["cart_activity_sessions"], col["sessions_with_view"], col["sessions_with_search"],
                         col["sessions_with_collection"])
    t = load_transforms(feat_dir)
    emb = np.load(feat_dir / "product_embeddings.npy")
    enabled = bool(t["embedding"]["enabled"])
    channels, masks = [], np.zeros((n, 3), dtype=np.float32)
    for c in range(3):
        sel = chan == c
        w, masks[:, c] = channel_weights(b_rows[sel], p_rows[sel], n, emb.shape[0])
        channels.append(t["channels"][c].transform(np.asarray(w @ emb)) if enabled else np.zeros((n, CHANNEL_DIM), np.float32))
    raw_scalars = np.column_stack([col[name].astype(np.float64) for name in SCALAR_NAMES])
    x = assemble(t["scalars"].transform(raw_scalars), channels, masks)
    table = pa.table({"shop_id": raw["shop_id"], "buyer_id": raw["buyer_id"], **{name: raw[name] for name in SCALAR_NAMES},
                      "stratum": pa.array(stratum.astype(str))})
    return table, x
