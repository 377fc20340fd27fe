"""The ingest stage: a real or generated event log → canonical `events.parquet` + `catalog.parquet`.

    simpersona ingest --format rees46 --input 2019-Oct.csv --out runs/rees46/ingest

One DuckDB pass per input file maps it to canonical columns and validates every row
(`validate.py`); exact duplicates are marked in one more pass; then accepted rows are written
with buyer ids replaced by HMAC-SHA256(salt, id) and rejected rows go, with their reason, field,
source file, line and raw values, to `rejected.parquet`. `accepted + rejected == read` always.
DuckDB runs under a memory limit and spills to `run_dir/.tmp`, so memory does not grow with
the file. Outputs: events.parquet, catalog.parquet, rejected.parquet, summary.json, meta.json,
salt.hex (when generated).
"""

from __future__ import annotations

import glob
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from simpersona.config import write_meta
from simpersona.events import readers
from simpersona.events.deid import hmac_sql, load_or_create_salt
from simpersona.events.readers import FormatError
from simpersona.events.schema import CATALOG_SCHEMA, EVENT_SCHEMA, EVENT_TYPES, ts_max
from simpersona.events.validate import IngestError, catalog_check_expr, check_expr

Format = Literal["canonical", "rees46", "taobao", "tmall", "gmerch", "otto"]

DEFAULT_SHOP = {"rees46": "rees46", "taobao": "taobao", "gmerch": "google_merch", "otto": "otto"}
SUFFIXES = {"otto": (".jsonl", ".json"), "canonical": (".csv", ".parquet")}


@dataclass
class IngestConfig:
    """Settings of `simpersona ingest`."""

    # Source format: canonical, rees46, taobao, tmall, gmerch, otto.
    format: Format = "canonical"
    # A file, a folder (every file of the format in it, sorted) or a glob pattern.
    input: Path | None = None
    # Catalog file in the canonical catalog schema (canonical format; other formats derive it from events).
    catalog: Path | None = None
    # Fail on the first rejected row, naming file, row and field, and write nothing.
    strict: bool = False
    # HMAC key for buyer ids as hex; None reuses `out/salt.hex` or generates and stores one.
    salt: str | None = None
    # REES46 storefront key: the whole store, each brand, or each top-level category.
    shop_key: Literal["store", "brand", "category"] = "store"
    # Shop id for single-shop sources (None: the format's name).
    shop_name: str | None = None
    # Inactivity gap that starts a new session for sources without sessions (Taobao).
    session_gap_minutes: float = 30.0
    # Year of the Tmall log, whose rows carry only month and day.
    tmall_year: int = 2014
    # DuckDB memory limit; larger inputs spill to disk.
    memory_limit: str = "1500MB"
    # DuckDB worker threads.
    threads: int = 2
    # Show DuckDB's progress bar.
    progress: bool = True


def resolve_inputs(cfg: IngestConfig) -> list[Path]:
    """The input files, sorted; an error naming the path when there are none."""
    if cfg.input is None:
        raise IngestError("no input: pass --input FILE|FOLDER|GLOB")
    p = Path(cfg.input)
    if p.is_file():
        return [p]
    if p.is_dir():
        suffixes = SUFFIXES.get(cfg.format, (".csv",))
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in suffixes)
        if cfg.format == "gmerch":
            files = [f for f in files if f.name != "products.csv"]
    else:
        files = sorted(Path(f) for f in glob.glob(str(p)))
    if not files:
        raise IngestError(f"{p}: no input file found for format {cfg.format}")
    return files


def _source(cfg: IngestConfig, path: Path, rejects: str) -> readers.Source:
    shop = cfg.shop_name or DEFAULT_SHOP.get(cfg.format, cfg.format)
    if cfg.format == "canonical":
        return readers.canonical(path, rejects)
    if cfg.format == "rees46":
        return readers.rees46(path, rejects, cfg.shop_key, shop)
    if cfg.format == "taobao":
        return readers.taobao(path, rejects, shop)
    if cfg.format == "tmall":
        return readers.tmall(path, rejects, cfg.tmall_year)
    if cfg.format == "gmerch":
        return readers.gmerch(path, rejects, shop)
    if cfg.format == "otto":
        return readers.otto(path, shop)
    raise IngestError(f"unknown format {cfg.format!r}; one of {readers.FORMATS}")


# Rows of malformed CSV lines, duplicates and catalog rejects (small tables beside the staged files).
SIDE_DDL = """
CREATE TABLE malformed (_file VARCHAR, _row BIGINT, reason VARCHAR, field VARCHAR, _raw VARCHAR);
CREATE TABLE line_shift (_file VARCHAR, t BIGINT);
CREATE TABLE dups (_file VARCHAR, _row BIGINT, reason VARCHAR, field VARCHAR, _raw VARCHAR);
CREATE TABLE catalog_rejects (_file VARCHAR, _row BIGINT, reason VARCHAR, field VARCHAR, _raw VARCHAR);
"""


def _stage_file(con: duckdb.DuckDBPyConnection, cfg: IngestConfig, path: Path, i: int, ts_max_sql: str,
                tmp: Path) -> int:
    """Map and validate one file into `tmp/staged_i.parquet`; malformed CSV lines go to `malformed`.

    Returns the rows read from the file (parsed + malformed).
    """
    rejects = f"rej_{i}"
    try:
        src = _source(cfg, path, rejects)
    except FormatError as e:
        raise IngestError(str(e)) from None
    chk = check_expr(ts_max_sql, check_session=not src.sessionise)
    file_lit = _lit(path)
    out = tmp / f"staged_{i}.parquet"
    try:
        con.execute(f"""
        COPY (
            SELECT {file_lit} AS _file, _row, shop_id, buyer_id, session_id, ts, event_type,
                   nullif(product_id, '') AS product_id, nullif(collection_id, '') AS collection_id,
                   nullif(query, '') AS query,
                   TRY_CAST(_price_raw AS DOUBLE) AS price, TRY_CAST(_qty_raw AS INTEGER) AS quantity,
                   _title, _collection, _brand,
                   split_part(_chk, ':', 1) AS reason, split_part(_chk, ':', 2) AS field,
                   CASE WHEN _chk IS NOT NULL THEN to_json(_raw)::VARCHAR END AS _raw
            FROM (SELECT *, {chk} AS _chk FROM ({src.sql}))
        ) TO '{out}' (FORMAT parquet, COMPRESSION lz4_raw)
        """)
    except duckdb.Error as e:
        raise IngestError(f"{path}: cannot be read as {cfg.format}: {str(e).splitlines()[0]}") from None
    n_bad = 0
    if src.csv:
        bad = con.execute(
            f"""SELECT line, arg_min(lower(replace(error_type, ' ', '_')), column_idx), any_value(csv_line)
                FROM {rejects} GROUP BY line ORDER BY line"""  # one entry per line (DuckDB lists each missing column)
        ).fetchall()
        if bad:
            # DuckDB numbers parsed rows without the malformed lines: a parsed row r sits on line
            # r + #{k : line_k − k ≤ r}; `staged` adds that shift, `malformed` holds the lines.
            con.executemany(f"INSERT INTO line_shift VALUES ({file_lit}, ?)",
                            [(line - k,) for k, (line, _, _) in enumerate(bad)])
            con.executemany(f"INSERT INTO malformed VALUES ({file_lit}, ?, 'malformed_row', ?, ?)", bad)
            n_bad = len(bad)
        con.execute(f"DROP TABLE IF EXISTS {rejects}; DROP TABLE IF EXISTS {rejects}_scan")
    return con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0] + n_bad


def _lit(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _create_staged_view(con: duckdb.DuckDBPyConnection, tmp: Path, n_files: int) -> None:
    """`staged`: every parsed row of every file, on its physical line number."""
    files = "[" + ", ".join(_lit(tmp / f"staged_{i}.parquet") for i in range(n_files)) + "]"
    row = "_row"
    if con.execute("SELECT count(*) FROM line_shift").fetchone()[0]:
        row = "_row + (SELECT count(*) FROM line_shift l WHERE l._file = p._file AND l.t <= p._row)"
    con.execute(f"""CREATE VIEW staged AS
                    SELECT * REPLACE ({row} AS _row) FROM read_parquet({files}) p""")


DEDUP_KEY = "shop_id, buyer_id, session_id, ts, event_type, product_id, collection_id, query, price, quantity"


def _find_duplicates(con: duckdb.DuckDBPyConnection) -> int:
    """Fill `dups` with exact copies of an earlier valid event (earliest file/line kept).

    A hash aggregate on one 64-bit hash of the event finds candidate groups cheaply; only rows
    in those groups go through the exact comparison (a window over the full key), so a hash
    collision can never reject a distinct event. Returns the number of duplicates.
    """
    keys = DEDUP_KEY.split(", ")
    h = f"hash({DEDUP_KEY})"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _duph AS
                    SELECT {h} AS h FROM staged WHERE reason IS NULL GROUP BY 1 HAVING count(*) > 1""")
    if con.execute("SELECT count(*) FROM _duph").fetchone()[0] == 0:
        return 0
    raw = "to_json(struct_pack(" + ", ".join(f"{c} := {c}" for c in keys) + "))::VARCHAR"
    con.execute(f"""
    INSERT INTO dups
    SELECT _file, _row, 'duplicate', NULL, {raw}
    FROM staged WHERE reason IS NULL AND {h} IN (SELECT h FROM _duph)
    QUALIFY row_number() OVER (PARTITION BY {DEDUP_KEY} ORDER BY _file, _row) > 1
    """)
    return con.execute("SELECT count(*) FROM dups").fetchone()[0]


def _accepted_sql(has_dups: bool) -> str:
    """Valid, non-duplicate staged rows."""
    if not has_dups:
        return "SELECT * FROM staged WHERE reason IS NULL"
    return "SELECT * FROM staged s WHERE reason IS NULL AND NOT EXISTS (SELECT 1 FROM dups d WHERE d._file = s._file AND d._row = s._row)"


REJECTS_SQL = """
    SELECT _file, _row, reason, nullif(field, '') AS field, _raw FROM staged WHERE reason IS NOT NULL
    UNION ALL SELECT * FROM malformed
    UNION ALL SELECT * FROM dups
    UNION ALL SELECT * FROM catalog_rejects
"""


def _strict_error(con: duckdb.DuckDBPyConnection) -> IngestError | None:
    row = con.execute(f"SELECT * FROM ({REJECTS_SQL}) ORDER BY _file, _row LIMIT 1").fetchone()
    if row is None:
        return None
    f, r, reason, field, raw = row
    return IngestError(f"{f}, row {r}, field {field or '-'}: {reason} (raw: {raw[:200]})")


def _write_events(con, cfg: IngestConfig, path: Path, key: bytes, sessionise: bool, has_dups: bool) -> None:
    accepted = _accepted_sql(has_dups)
    # One HMAC per distinct buyer, joined back: ~1/20 of the hashing of a per-row expression.
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _ids AS
                    SELECT buyer_id AS _raw_id, {hmac_sql("buyer_id", key)} AS _hashed
                    FROM (SELECT DISTINCT buyer_id FROM ({accepted}))""")
    if sessionise:
        gap = f"INTERVAL {int(cfg.session_gap_minutes * 60)} SECOND"
        session = f"""'s' || sum(_new) OVER (PARTITION BY shop_id, buyer_id ORDER BY ts, _file, _row
                                           ROWS UNBOUNDED PRECEDING)::VARCHAR"""
        inner = f"""SELECT *, CASE WHEN ts - lag(ts) OVER (PARTITION BY shop_id, buyer_id ORDER BY ts, _file, _row)
                                   <= {gap} THEN 0 ELSE 1 END AS _new
                    FROM ({accepted})"""
    else:
        session, inner = "session_id", accepted
    con.execute(f"""
    COPY (
        SELECT shop_id, _hashed AS buyer_id, {session} AS session_id, ts, event_type,
               product_id, collection_id, query, price, quantity
        FROM ({inner}) JOIN _ids ON buyer_id = _raw_id
    ) TO '{path}' (FORMAT parquet, COMPRESSION zstd)
    """)


def _write_catalog(con, cfg: IngestConfig, path: Path) -> int:
    """Canonical: the validated catalog file (rejects go to `staged`); otherwise derived from events."""
    if cfg.format == "canonical" and cfg.catalog is not None:
        cat = Path(cfg.catalog)
        if not cat.exists():
            raise IngestError(f"{cat}: catalog file not found")
        reader = f"read_parquet('{cat}')" if cat.suffix == ".parquet" else f"read_csv('{cat}', all_varchar=true, header=true)"
        try:
            names = [d[0] for d in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
        except duckdb.Error as e:
            raise IngestError(f"{cat}: cannot be read as a catalog: {str(e).splitlines()[0]}") from None
        missing = [c for c in ("shop_id", "product_id", "title") if c not in names]
        if missing:
            raise IngestError(f"{cat}: not a catalog: missing column(s) {missing}; found {names}")
        cols = ", ".join(
            f'"{c}"::VARCHAR AS "{c}"' if c in names else f'NULL::VARCHAR AS "{c}"'
            for c in CATALOG_SCHEMA.names
        )
        raw = "to_json(struct_pack(" + ", ".join(f'"{c}" := "{c}"' for c in names) + "))::VARCHAR"
        con.execute(f"""
        CREATE TEMP TABLE cat AS
        SELECT *, split_part(_chk, ':', 1) AS reason, split_part(_chk, ':', 2) AS field
        FROM (SELECT *, {catalog_check_expr()} AS _chk
              FROM (SELECT row_number() OVER () + {0 if cat.suffix == '.parquet' else 1} AS _row, {cols},
                           {raw} AS _raw
                    FROM {reader}))
        """)
        con.execute("""
        UPDATE cat SET reason = 'duplicate', field = 'product_id'
        WHERE reason IS NULL AND rowid IN (
            SELECT rowid FROM cat WHERE reason IS NULL
            QUALIFY row_number() OVER (PARTITION BY shop_id, product_id ORDER BY _row) > 1)
        """)
        con.execute(f"""
        INSERT INTO catalog_rejects
        SELECT {_lit(cat)}, _row, reason, nullif(field, ''), _raw FROM cat WHERE reason IS NOT NULL
        """)
        select = """SELECT shop_id, product_id, title, collection, brand, TRY_CAST(price AS DOUBLE) AS price,
                           description FROM cat WHERE reason IS NULL"""
    else:
        select = """SELECT shop_id, product_id, arg_max(_title, ts) AS title,
                           arg_max(_collection, ts) AS collection, arg_max(_brand, ts) AS brand,
                           median(price) AS price, NULL::VARCHAR AS description
                    FROM staged WHERE reason IS NULL AND product_id IS NOT NULL
                    GROUP BY shop_id, product_id"""
    con.execute(f"COPY ({select} ORDER BY shop_id, product_id) TO '{path}' (FORMAT parquet)")
    return con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]


def run(cfg: IngestConfig, run_dir: Path) -> dict[str, Any]:
    """Ingest `cfg.input` into `run_dir`; returns the summary (also written to summary.json)."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    files = resolve_inputs(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    key, salt_origin = load_or_create_salt(run_dir, cfg.salt)
    tmp = run_dir / ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    con = duckdb.connect(str(tmp / "ingest.duckdb"))
    try:
        con.execute(f"SET memory_limit = '{cfg.memory_limit}'; SET threads = {cfg.threads}")
        con.execute(f"SET temp_directory = '{tmp}'; SET TimeZone = 'UTC'; SET preserve_insertion_order = true")
        con.execute(f"SET enable_progress_bar = {str(cfg.progress).lower()}")
        con.execute(SIDE_DDL)
        ts_max_sql = f"TIMESTAMPTZ '{ts_max().isoformat()}'"
        read_per_file = {str(path): _stage_file(con, cfg, path, i, ts_max_sql, tmp) for i, path in enumerate(files)}
        _create_staged_view(con, tmp, len(files))
        has_dups = _find_duplicates(con) > 0
        if cfg.strict and (err := _strict_error(con)) is not None:
            raise err
        n_catalog = _write_catalog(con, cfg, run_dir / "catalog.parquet")
        if cfg.strict and (err := _strict_error(con)) is not None:
            raise err
        _write_events(con, cfg, run_dir / "events.parquet", key, sessionise=cfg.format == "taobao", has_dups=has_dups)
        con.execute(f"""
        COPY (SELECT _file AS source_file, _row AS "row", reason, field, _raw AS raw
              FROM ({REJECTS_SQL}) ORDER BY _file, _row)
        TO '{run_dir / 'rejected.parquet'}' (FORMAT parquet)
        """)
        summary = _summary(con, run_dir, files, read_per_file, n_catalog)
    finally:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)
    summary["salt"] = salt_origin
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_meta(run_dir, "ingest", cfg, inputs=[str(f) for f in files], summary=summary)
    return summary


def _summary(con, run_dir: Path, files: list[Path], read_per_file: dict, n_catalog: int) -> dict[str, Any]:
    ev = f"read_parquet('{run_dir / 'events.parquet'}')"
    rej = f"read_parquet('{run_dir / 'rejected.parquet'}')"
    read = sum(read_per_file.values())
    accepted = con.execute(f"SELECT count(*) FROM {ev}").fetchone()[0]
    rejected_events = con.execute(
        f"SELECT count(*) FROM {rej} WHERE source_file IN (SELECT unnest(?::VARCHAR[]))", [[str(f) for f in files]]
    ).fetchone()[0]
    by_reason = dict(con.execute(f"SELECT reason, count(*) FROM {rej} GROUP BY 1 ORDER BY 2 DESC").fetchall())
    by_type = dict(con.execute(f"SELECT event_type, count(*) FROM {ev} GROUP BY 1").fetchall())
    shops, buyers, sessions, t_min, t_max = con.execute(f"""
        SELECT count(DISTINCT shop_id), count(DISTINCT (shop_id, buyer_id)),
               count(DISTINCT (shop_id, buyer_id, session_id)), min(ts)::VARCHAR, max(ts)::VARCHAR FROM {ev}
    """).fetchone()
    if accepted + rejected_events != read:
        raise IngestError(f"internal: accepted {accepted} + rejected {rejected_events} != read {read}")
    return {
        "files": {k: v for k, v in read_per_file.items()},
        "read": read,
        "accepted": accepted,
        "rejected": rejected_events,
        "rejected_catalog_rows": sum(by_reason.values()) - rejected_events,
        "rejected_by_reason": by_reason,
        "events_by_type": {t: by_type.get(t, 0) for t in EVENT_TYPES},
        "shops": shops,
        "buyer_shop_pairs": buyers,
        "sessions": sessions,
        "catalog_products": n_catalog,
        "time_range": [t_min, t_max],
    }


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    lines = [
        f"read {s['read']:,} events from {len(s['files'])} file(s): accepted {s['accepted']:,}, "
        f"rejected {s['rejected']:,} (accepted + rejected == read) in {s['seconds']:.1f}s",
        f"shops {s['shops']:,} · buyer–shop pairs {s['buyer_shop_pairs']:,} · sessions {s['sessions']:,} · "
        f"catalog products {s['catalog_products']:,}",
        "events by type: " + ", ".join(f"{k} {v:,}" for k, v in s["events_by_type"].items()),
    ]
    if s["rejected_by_reason"]:
        lines.append("rejected by reason: " + ", ".join(f"{k} {v:,}" for k, v in s["rejected_by_reason"].items()))
    lines.append(f"time range: {s['time_range'][0]} … {s['time_range'][1]} · salt {s['salt']}")
    return "\n".join(lines)
