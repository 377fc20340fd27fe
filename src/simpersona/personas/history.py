"""Persona codes from a buyer's EARLIER sessions only, so that the later ones can be scored.

`personas assign` codes a buyer from all of the buyer's sessions. Scoring an evaluation buyer's
sessions against predictions conditioned on that code lets the scored sessions choose their own
condition (a buyer who purchased gets a purchasing code). Here, per buyer of `shops`, the sessions
are ordered by start (ties: session id); the first ⌊f·n⌋ of the buyer's n sessions are its
history, the rest are scored (f = `fraction`; a one-session buyer has no history and no code).
The history events go through the features stage's own vectors (`features.vectors.buyer_vectors`:
the run's aggregation, fitted scalar transform, channel PCA and product embeddings, nothing
refitted) and the trained VQ-VAE's encoder and nearest code (`personas.assign.Assigner`). The
buyer's stratum, and with it the intent, comes from the history too.

Writes into out_dir:
  scored_sessions.parquet   shop_id, buyer_id, session_id      the sessions that may be scored
  history_codes.parquet     shop_id, buyer_id, code, stratum, history_sessions   (buyers with a history)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def model_of(personas: Path) -> Path:
    """The VQ-VAE run folder a personas folder was assigned with (its meta.json's config.model)."""
    meta = Path(personas) / "meta.json"
    model = json.loads(meta.read_text()).get("config", {}).get("model") if meta.exists() else None
    if not model:
        raise FileNotFoundError(f"{meta}: no config.model (the VQ-VAE run that assigned the codes); give the VQ-VAE folder")
    return Path(model)


def split_history(events_path: Path, shops: list[str], fraction: float, out_dir: Path, threads: int = 2) -> dict[str, int]:
    """out_dir/history_events.parquet (the events of every buyer's first ⌊fraction·n⌋ sessions) and
    out_dir/scored_sessions.parquet (the other sessions' keys); returns counts."""
    import duckdb

    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"history fraction {fraction} is not in [0, 1)")
    out_dir = Path(out_dir)
    con = duckdb.connect()
    con.execute(f"SET threads={int(threads)}")
    con.execute("CREATE TEMP TABLE keep AS SELECT unnest($1::VARCHAR[]) AS shop_id", [list(shops)])
    con.execute(f"""CREATE TEMP TABLE s AS
        WITH s AS (SELECT shop_id, buyer_id, session_id, min(ts) AS start FROM read_parquet('{events_path}')
                   WHERE shop_id IN (SELECT shop_id FROM keep) GROUP BY ALL)
        SELECT shop_id, buyer_id, session_id,
               row_number() OVER (PARTITION BY shop_id, buyer_id ORDER BY start, session_id)
                 <= floor(count(*) OVER (PARTITION BY shop_id, buyer_id) * {float(fraction)}) AS history
        FROM s""")
    con.execute(f"""COPY (SELECT e.* FROM read_parquet('{events_path}') e JOIN s USING (shop_id, buyer_id, session_id)
                          WHERE s.history) TO '{out_dir / 'history_events.parquet'}' (FORMAT parquet)""")
    con.execute(f"""COPY (SELECT shop_id, buyer_id, session_id FROM s WHERE NOT history ORDER BY ALL)
                    TO '{out_dir / 'scored_sessions.parquet'}' (FORMAT parquet)""")
    n_hist, n_scored = con.execute("SELECT count(*) FILTER (WHERE history), count(*) FILTER (WHERE NOT history) FROM s").fetchone()
    con.close()
    return {"history_sessions": int(n_hist), "scored_sessions": int(n_scored)}


def history_codes(events_path: Path, catalog_path: Path, features: Path, model: Path, shops: list[str], fraction: float,
                  out_dir: Path, threads: int = 2, precision: Literal["auto", "bf16", "fp32"] = "auto") -> dict[str, Any]:
    """Split the buyers of `shops` into history and scored sessions and code each buyer from its
    history (module docstring); writes scored_sessions.parquet and history_codes.parquet."""
    import duckdb
    import torch

    from simpersona.features.vectors import buyer_vectors
    from simpersona.personas.assign import Assigner, cpu_has_bf16
    from simpersona.vqvae.checkpoint import load_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="history_", dir=out_dir))
    try:
        counts = split_history(events_path, shops, fraction, tmp, threads)
        hist_events = tmp / "history_events.parquet"
        shutil.move(tmp / "scored_sessions.parquet", out_dir / "scored_sessions.parquet")
        if counts["history_sessions"]:
            table, x = buyer_vectors(hist_events, catalog_path, features, tmp, threads)
            torch.set_num_threads(threads)
            net, _ = load_model(model)
            bf16 = cpu_has_bf16() if precision == "auto" else precision == "bf16"
            codes = Assigner(net, 4096, bf16)(x)
            n_sess = dict(((s, b), int(n)) for s, b, n in duckdb.sql(
                f"SELECT shop_id, buyer_id, count(DISTINCT session_id) FROM read_parquet('{hist_events}') GROUP BY ALL").fetchall())
        else:
            table, codes, n_sess = pa.table({"shop_id": pa.array([], pa.string()), "buyer_id": pa.array([], pa.string()),
                                             "stratum": pa.array([], pa.string())}), np.zeros(0, np.int64), {}
        keys = list(zip(table["shop_id"].to_pylist(), table["buyer_id"].to_pylist()))
        pq.write_table(pa.table({"shop_id": table["shop_id"], "buyer_id": table["buyer_id"], "code": pa.array(codes.astype(np.int16)),
                                 "stratum": table["stratum"], "history_sessions": pa.array([n_sess[k] for k in keys], pa.int32())}),
                       out_dir / "history_codes.parquet")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**counts, "buyers_with_history": len(codes), "model": str(model), "fraction": fraction,
            "codes_used": int(len(np.unique(codes)))}
