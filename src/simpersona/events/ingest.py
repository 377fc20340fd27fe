"""The ingest stage: a real or generated event log → canonical `events.parquet` + `catalog.parquet`.

    simpersona ingest --format rees46 --input 2019-Oct.csv --out runs/rees46/ingest

One DuckDB pass per input file maps it to canonical columns and validates every row
(`validate.py`) into a table of the ingest's own database (`staged_i`, spilled to disk under the
memory limit; the raw file is read once); exact duplicates are marked in one pass over the
staged rows; then accepted rows are written
with buyer and session ids replaced by HMAC-SHA256(salt, id) and rejected rows go, with their
reason, field, source file, line and source values (ids hashed unless `keep_raw_rejects`), to
`rejected.parquet`.

Nothing is lost: every data line of a CSV file (see `lines.py`) is one accepted row or one
reject, and this is checked against a byte count of the file's lines made apart from any
parser. DuckDB's parser reads a file first, as byte ranges side by side (one per thread, each
piped to DuckDB by a thread that counts its lines); when its records do not match the file's lines
(a quote left open, a quoted line break, empty lines, stray `\\r`), the file is read again line
by line, each line on its own, so a bad line is quarantined as `malformed_row` and never merges
with or swallows its neighbours. DuckDB runs under a memory limit and spills to `run_dir/.tmp`,
so memory does not grow with the file. Outputs are made in `run_dir/.tmp` and moved into place
at the end (meta.json last), so a failed or killed ingest leaves no new file beside old ones:
events.parquet, catalog.parquet, rejected.parquet, summary.json, meta.json. The salt is not an
output (see `deid.py`).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import duckdb
import pyarrow as pa

from simpersona.config import write_meta
from simpersona.events import lines, readers
from simpersona.events.deid import SESSION_HEX, hash_id, hmac_sql, load_or_create_salt, salt_id
from simpersona.events.readers import FormatError, lit, q
from simpersona.events.schema import EVENT_TYPES, ts_max
from simpersona.events.validate import IngestError, catalog_check_expr, check_expr, quantity_sql

Format = Literal["canonical", "rees46", "taobao", "tmall", "gmerch", "otto"]

DEFAULT_SHOP = {"rees46": "rees46", "taobao": "taobao", "gmerch": "google_merch", "otto": "otto"}
SUFFIXES = {"otto": (".jsonl", ".json"), "canonical": (".csv", ".parquet")}
OUTPUTS = ("events.parquet", "catalog.parquet", "rejected.parquet")


@dataclass
class IngestConfig:
    """Settings of `simpersona ingest`."""

    # Source format: canonical, rees46, taobao, tmall, gmerch, otto.
    format: Format = "canonical"
    # A file, a folder (every file of the format in it and its subfolders, sorted) or a glob pattern.
    input: Path | None = None
    # Catalog file in the canonical catalog schema (canonical format; other formats derive it from events).
    catalog: Path | None = None
    # Fail on the first rejected row, naming file, line and field, and write nothing.
    strict: bool = False
    # HMAC key for ids, hex (default: $SIMPERSONA_SALT, else the user's key file; see README, "The salt").
    salt: str | None = field(default=None, metadata={"secret": True})
    # Keep raw ids in rejected.parquet (default: ids hashed like the events, other fields kept).
    keep_raw_rejects: bool = False
    # REES46 storefront key: the whole store, each brand, or each top-level category.
    shop_key: Literal["store", "brand", "category"] = "store"
    # Shop id for single-shop sources (None: the format's name).
    shop_name: str | None = None
    # Split each shop's buyers into this many pseudo-shops `<shop>~<i>` by a stable hash (MD5) of the raw
    # buyer id, so a single-store log has shops to hold out (held-out buyers of one store); 0 = off.
    shop_shards: int = 0
    # Inactivity gap that starts a new session for sources without sessions (Taobao).
    session_gap_minutes: float = 30.0
    # Year of the Tmall log, whose rows carry only month and day.
    tmall_year: int = 2014
    # DuckDB memory limit; larger inputs spill to disk.
    memory_limit: str = "1500MB"
    # DuckDB worker threads; a CSV file is parsed as up to this many byte ranges side by side.
    threads: int = 2
    # Smallest byte range (MiB) of a CSV file worth parsing beside another one.
    part_mib: float = 64.0
    # Show DuckDB's progress bar.
    progress: bool = True


def resolve_inputs(cfg: IngestConfig) -> tuple[list[Path], list[Path]]:
    """The input files, sorted, and the files of a folder that are not of the format (skipped,
    and listed in the summary); an error naming the path when there is no input file."""
    if cfg.input is None:
        raise IngestError("no input: pass --input FILE|FOLDER|GLOB")
    p = Path(cfg.input)
    skipped: list[Path] = []
    if p.is_file():
        return [p], skipped
    if p.is_dir():
        suffixes = SUFFIXES.get(cfg.format, (".csv",))
        files = []
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            ok = f.suffix.lower() in suffixes and not (cfg.format == "gmerch" and f.name == "products.csv")
            (files if ok else skipped).append(f)
    elif p.exists():
        raise IngestError(f"{p}: not a file or folder")
    else:
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
    if not files:
        raise IngestError(f"{p}: no input file found for format {cfg.format}"
                          + (f" (other files: {[str(f) for f in skipped[:5]]})" if skipped else ""))
    return files, skipped


def _source(cfg: IngestConfig, rows: str) -> readers.Source:
    src = _format_source(cfg, rows)
    if cfg.shop_shards < 0:
        raise IngestError(f"ingest.shop_shards must be ≥ 0, got {cfg.shop_shards}")
    if cfg.shop_shards > 1:
        return readers.Source(shard_sql(src.sql, cfg.shop_shards), src.sub)
    return src


def shard_sql(sql: str, shards: int) -> str:
    """`sql`'s rows with shop_id `<shop>~<i>`, i = MD5(raw buyer id) mod `shards`: the same pseudo-shop for a
    buyer on every run and machine (salt-independent); rows without a buyer keep their shop (rejected later)."""
    shard = f"(md5_number(buyer_id) % {int(shards)})::VARCHAR"
    return f"""SELECT * REPLACE (CASE WHEN buyer_id IS NULL OR buyer_id = '' OR shop_id IS NULL THEN shop_id
                                 ELSE shop_id || '~' || {shard} END AS shop_id) FROM ({sql})"""


def _format_source(cfg: IngestConfig, rows: str) -> readers.Source:
    shop = cfg.shop_name or DEFAULT_SHOP.get(cfg.format, cfg.format)
    if cfg.format == "canonical":
        return readers.canonical(rows)
    if cfg.format == "rees46":
        return readers.rees46(rows, cfg.shop_key, shop)
    if cfg.format == "taobao":
        return readers.taobao(rows, shop)
    if cfg.format == "tmall":
        return readers.tmall(rows, cfg.tmall_year)
    if cfg.format == "gmerch":
        return readers.gmerch(rows, shop)
    if cfg.format == "otto":
        return readers.otto(rows, shop)
    raise IngestError(f"unknown format {cfg.format!r}; one of {readers.FORMATS}")


# Malformed lines, duplicates and catalog rejects (small tables beside the staged files), and
# the lines DuckDB's parser skipped (to put parsed rows back on their line numbers).
SIDE_DDL = """
CREATE TABLE malformed (_file VARCHAR, _row BIGINT, reason VARCHAR, field VARCHAR, _raw VARCHAR);
CREATE TABLE line_shift (_file VARCHAR, t BIGINT);
CREATE VIEW shifts AS SELECT _file, t, count(*) OVER (PARTITION BY _file ORDER BY t) AS k FROM line_shift;
CREATE TABLE dups (_file VARCHAR, _row BIGINT, _sub BIGINT, reason VARCHAR, field VARCHAR, _raw VARCHAR);
CREATE TABLE catalog_rejects (_file VARCHAR, _row BIGINT, reason VARCHAR, field VARCHAR, _raw VARCHAR);
"""


@dataclass
class FileRead:
    """How one input file was read."""

    # Rows it gave: one per data line (OTTO: one per event plus one per malformed line).
    rows: int
    # Non-empty physical lines after the header (None for Parquet).
    lines: int | None
    # Empty lines (not rows).
    empty_lines: int
    # "duckdb", "line by line" or "parquet".
    read_by: str
    # Columns of the file the format does not use.
    extra_columns: tuple[str, ...] = ()
    # Optional columns the file lacks.
    absent_columns: tuple[str, ...] = ()
    # What the staged view adds to the `_row` of a record parsed in part k (k = `_row` >> PART_BITS).
    row_bases: tuple[int, ...] = (0,)


class _Redactor:
    """Source values of a rejected row as JSON text, ids hashed unless raw rows are kept."""

    def __init__(self, fmt: str, key: bytes, keep_raw: bool):
        self.cols, self.key, self.keep_raw = readers.COLUMNS[fmt], key, keep_raw
        self.sessions = self.cols.session is not None

    def sql(self, struct: str) -> str:
        """JSON of the struct `struct` holding the format's columns."""
        def val(c: str) -> str:
            v = f"{struct}.{q(c)}"
            if self.keep_raw or c not in (*self.cols.ids, self.cols.session):
                return v
            h = hmac_sql(v, self.key)
            return f"left({h}, {SESSION_HEX})" if c == self.cols.session else h
        return "to_json(struct_pack(" + ", ".join(f"{q(c)} := {val(c)}" for c in self.cols.names) + "))::VARCHAR"

    def line(self, text: str, names: tuple[str, ...]) -> str:
        """JSON of a malformed line: its fields by column name when they can be bound (ids hashed),
        else only a keyed fingerprint of the line: it cannot be told which field is an id."""
        if self.keep_raw:
            return json.dumps({"line": text}, ensure_ascii=False)
        if names == ("line",):  # a JSON line (OTTO)
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and "session" in obj:
                return json.dumps({**obj, "session": hash_id(str(obj["session"]), self.key)}, ensure_ascii=False)
            return self._withheld(text)
        try:
            fields = next(csv.reader([text]), [])
        except csv.Error:  # e.g. a lone `\r` inside the line
            fields = []
        if len(fields) != len(names):
            return self._withheld(text)
        row = dict(zip(names, fields))
        for c in (*self.cols.ids, self.cols.session):
            if c in row:
                h = hash_id(row[c], self.key)
                row[c] = h[:SESSION_HEX] if c == self.cols.session else h
        return json.dumps(row, ensure_ascii=False)

    def _withheld(self, text: str) -> str:
        return json.dumps({"withheld": "fields cannot be bound to columns (keep_raw_rejects=true keeps the line)",
                           "line_hmac": hash_id(text, self.key)[:SESSION_HEX], "bytes": len(text.encode())})


def _insert_malformed(con: duckdb.DuckDBPyConnection, table: str, file: str,
                      bad: list[tuple[int, str, str]], raw: Callable[[str], str]) -> None:
    if not bad:
        return
    t = pa.table({"_row": [b[0] for b in bad], "field": [b[1] for b in bad], "_raw": [raw(b[2]) for b in bad]})
    con.register("_bad", t)
    con.execute(f"INSERT INTO {table} SELECT {lit(file)}, _row, 'malformed_row', field, _raw FROM _bad")
    con.unregister("_bad")


def _read_csv_sql(path: Path, header: readers.Header, rejects: str) -> str:
    """DuckDB's reader of a range pipe (`_read_csv`): the file's columns as text, no header line (the
    header's bytes are never piped), bad lines into the table `rejects`."""
    cols = "{" + ", ".join(f"{lit(c)}: 'VARCHAR'" for c in header.names) + "}"
    return (
        f"read_csv({lit(path)}, columns={cols}, header=false, auto_detect=false, "
        f"delim=',', quote='\"', escape='\"', store_rejects=true, ignore_errors=true, "
        f"rejects_table='{rejects}', rejects_scan='{rejects}_scan', null_padding=false)"
    )


# `_row` of a record parsed in part k of a file (see _read_csv): k << PART_BITS plus its number in
# the part, so that ordering by `_row` is ordering by line; the staged view adds the part's base.
PART_BITS = 40
PART_MASK = (1 << PART_BITS) - 1


def _read_csv(con: duckdb.DuckDBPyConnection, path: Path, header: readers.Header, tmp: Path, tag: str,
              stage: Callable[[str], int], parts: int = 1) -> tuple[FileRead, list[tuple[int, str, str]]]:
    """Run `stage(rows)` over the file's rows (`_row` + its columns) and return how it went and
    the malformed lines, so that parsed rows + malformed lines == the file's data lines.

    Fast path: DuckDB's parser, over up to `parts` byte ranges of the file side by side. A record
    can only be numbered by a scan that reads its file in order on one thread
    (`row_number() OVER ()`), so each range goes to DuckDB through a named pipe of its own, written
    by a thread that counts the range's lines on the way (`lines.pipe_range`: the file is read once,
    and the count is made apart from the parser). Parsed row r of a part then sits on line
    r + #{malformed lines before it} once the rows of the parts before it are counted in
    (`FileRead.row_bases`, `line_shift`). The result is kept only when the byte count agrees that
    each record was one line; otherwise, and for files with empty lines or mixed line breaks
    (whose line numbers DuckDB counts differently), the file is split line by line
    (`lines.csv_lines_to_parquet`) and staged.
    """
    head_end, ranges = lines.split_ranges(path, header.lines, parts)
    counters = [lines.LineCounter() for _ in ranges]
    with open(path, "rb") as f:
        counters[0].feed(f.read(head_end))  # the header's lines are lines of the file
    fifos = [tmp / f"part_{tag}_{k}.csv" for k in range(len(ranges))]
    rej = [f"rej_{tag}_{k}" for k in range(len(ranges))]
    for fifo in fifos:
        os.mkfifo(fifo)
    parsed, bad, stop = None, [], threading.Event()
    try:
        with ThreadPoolExecutor(max_workers=len(ranges)) as pool:
            feeding = [pool.submit(lines.pipe_range, path, a, b, fifo, c, stop)
                       for (a, b), fifo, c in zip(ranges, fifos, counters, strict=True)]
            inner = "(" + " UNION ALL ".join(
                f"SELECT {(k << PART_BITS) + (header.lines if k == 0 else 0)}::BIGINT + row_number() OVER () AS _row, * "
                f"FROM {_read_csv_sql(fifo, header, rej[k])}"
                for k, fifo in enumerate(fifos)) + ")"
            try:
                con.execute("SET preserve_insertion_order = false")  # the parts side by side; `_row` keeps the order
                parsed = stage(inner)
                bad_by_part = [con.execute(
                    f"""SELECT line, arg_min(lower(replace(error_type, ' ', '_')), column_idx), any_value(csv_line)
                        FROM {r} GROUP BY line ORDER BY line""").fetchall() for r in rej]  # one entry per line
            except duckdb.Error as e:
                if _write_problem(e):
                    raise
                parsed = None  # the parser gave up on the file (e.g. `\r` line breaks): go line by line
            finally:
                con.execute("SET preserve_insertion_order = true")
                stop.set()
                for fifo in fifos:
                    lines.release_pipe(fifo)
            for f in feeding:
                f.result()
    finally:
        for r in rej:
            con.execute(f"DROP TABLE IF EXISTS {r}; DROP TABLE IF EXISTS {r}_scan")
        for fifo in fifos:
            fifo.unlink(missing_ok=True)
    count = lines.LineCounter.total(counters)
    data_lines = max(count.lines - header.lines, 0)
    if count.empty == 0 and count.plain_breaks and parsed is not None:
        # data lines of each part, and its first line's number minus one
        part_lines = [lines.LineCounter.total([c]).lines for c in counters]
        part_lines[0] -= header.lines
        line_base = [header.lines + sum(part_lines[:k]) for k in range(len(part_lines))]
        part_parsed = [n - len(b) for n, b in zip(part_lines, bad_by_part, strict=True)]
        if sum(part_parsed) == parsed:
            bad = [(line + line_base[k], err, text.rstrip("\r\n"))
                   for k, part in enumerate(bad_by_part) for line, err, text in part]
            if bad:
                con.execute(f"INSERT INTO line_shift SELECT {lit(path)}, unnest(?::BIGINT[])",
                            [[line - k for k, (line, _, _) in enumerate(bad)]]).fetchall()
            bases = (0,) + tuple(header.lines + sum(part_parsed[:k]) for k in range(1, len(part_parsed)))
            return FileRead(parsed, data_lines, 0, "duckdb", header.extra, header.absent, bases), bad
    split = tmp / f"lines_{tag}.parquet"
    bad = lines.csv_lines_to_parquet(path, list(header.names), header.lines, split)
    parsed = stage(f"read_parquet({lit(split)})")
    split.unlink()
    if parsed + len(bad) != data_lines:  # the byte count is the reference, whatever the reader did
        raise IngestError(f"internal: {path}: {parsed} rows + {len(bad)} malformed lines != {data_lines} data lines")
    return FileRead(parsed, data_lines, count.empty, "line by line", header.extra, header.absent), bad


def _stage_file(con: duckdb.DuckDBPyConnection, cfg: IngestConfig, path: Path, i: int, chk: str, tmp: Path,
                red: _Redactor) -> FileRead:
    """Map and validate one file into the table `staged_i`; malformed lines go to `malformed`.

    A table of the ingest's own database (spilled under memory_limit), not a Parquet file: the
    stage's one pass over the raw file costs ~40% less CPU when it does not also encode Parquet."""
    table = f"staged_{i}"

    def stage(rows: str) -> int:
        src = _source(cfg, rows)
        return con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {table} AS (
            SELECT *, CASE WHEN reason IS NULL THEN hash({DEDUP_KEY}) END AS _h FROM (
            SELECT _row, {src.sub} AS _sub, shop_id, buyer_id, session_id, ts, event_type,
                   nullif(product_id, '') AS product_id, nullif(collection_id, '') AS collection_id,
                   nullif(query, '') AS query,
                   TRY_CAST(_price_raw AS DOUBLE) AS price, {quantity_sql('_qty_raw')} AS quantity,
                   _title, _collection, _brand,
                   split_part(_chk, ':', 1) AS reason, split_part(_chk, ':', 2) AS field,
                   CASE WHEN _chk IS NOT NULL THEN {red.sql('_raw')} END AS _raw
            FROM (SELECT *, {chk} AS _chk FROM ({src.sql})))
        )
        """).fetchall()[0][0]

    try:
        if cfg.format == "otto":
            read, bad, names = _stage_otto(con, path, tmp, i, stage)
        elif cfg.format == "canonical" and path.suffix.lower() == ".parquet":
            rows, header = readers.parquet_rows(path)
            read, bad, names = FileRead(stage(readers.bind("canonical", header, rows)), None, 0, "parquet",
                                        header.extra, header.absent), [], header.names
        else:
            header = readers.read_header(path, cfg.format)
            parts = max(1, min(cfg.threads, int(path.stat().st_size / (cfg.part_mib * 2**20))))
            read, bad = _read_csv(con, path, header, tmp, str(i),
                                  lambda inner: stage(readers.bind(cfg.format, header, inner)), parts)
            names = header.names
    except FormatError as e:
        raise IngestError(str(e)) from None
    except duckdb.Error as e:
        if _write_problem(e):
            raise
        raise IngestError(f"{path}: cannot be read as {cfg.format}: {str(e).splitlines()[0]}") from None
    _insert_malformed(con, "malformed", str(path), bad, lambda text: red.line(text, names))
    read.rows += len(bad)
    return read


def _stage_otto(con, path: Path, tmp: Path, i: int, stage) -> tuple[FileRead, list, tuple[str, ...]]:
    """OTTO: lines split in Python, parsed as JSON by DuckDB; a line that is not a session with
    events is one malformed row, each event of a good line one row."""
    readers.check_otto(path)
    count = lines.count_lines(path)
    text = tmp / f"lines_{i}.parquet"
    sess = tmp / f"sessions_{i}.parquet"
    bad = lines.text_lines_to_parquet(path, text)
    con.execute(f"COPY (SELECT * FROM {readers.otto_lines(f'read_parquet({lit(text)})')}) TO {lit(sess)} "
                "(FORMAT parquet, COMPRESSION lz4_raw)")
    text.unlink()
    bad += [(r, "not_a_session_with_events", line) for r, line in con.execute(
        f"SELECT _row, line FROM read_parquet({lit(sess)}) WHERE NOT _ok ORDER BY _row").fetchall()]
    n = stage(f"read_parquet({lit(sess)})")
    good_lines = con.execute(f"SELECT count(*) FROM read_parquet({lit(sess)}) WHERE _ok").fetchall()[0][0]
    if good_lines + len(bad) != count.lines:
        raise IngestError(f"internal: {path}: {good_lines} sessions + {len(bad)} malformed lines "
                          f"!= {count.lines} lines")
    return FileRead(n, count.lines, count.empty, "line by line"), sorted(bad), ("line",)


def _create_staged_view(con: duckdb.DuckDBPyConnection, files: list[Path], reads: dict[str, FileRead]) -> None:
    """`staged`: every parsed row of every file (`staged_i`) with its file and `_row`: its line,
    except that on DuckDB's fast path the malformed lines before it are not counted in
    (`REJECTS_SQL` adds them where a line is reported). Ordering by `_row` is ordering by line, and
    no pass over all rows pays for the correction (a per-row count over `line_shift` here made a
    file with 1‰ malformed lines ingest 14× slower: 1M events, 56.5 s vs 4.0 s without them;
    `bench/bench_ingest.py --malformed-per-mille 1`). A file parsed in parts gets each part's
    base added to its rows' number within the part (see _read_csv)."""
    def rows(i: int, f: Path) -> str:
        bases = reads[str(f)].row_bases
        if len(bases) == 1:
            return f"SELECT {lit(f)} AS _file, * FROM staged_{i}"
        row = f"(_row & {PART_MASK}) + {list(bases)}[(_row >> {PART_BITS}) + 1]"
        return f"SELECT {lit(f)} AS _file, * REPLACE ({row} AS _row) FROM staged_{i}"
    con.execute("CREATE VIEW staged AS " + " UNION ALL ".join(rows(i, f) for i, f in enumerate(files)))


DEDUP_KEY = "shop_id, buyer_id, session_id, ts, event_type, product_id, collection_id, query, price, quantity"


def _find_duplicates(con: duckdb.DuckDBPyConnection, red: _Redactor) -> int:
    """Fill `dups` with exact copies of an earlier valid event (earliest file/line kept).

    A hash aggregate on one 64-bit hash of the event (`_h`, computed while staging, NULL on
    rejected rows) finds candidate groups cheaply; only rows
    in those groups go through the exact comparison (a window over the full key), so a hash
    collision can never reject a distinct event. Returns the number of duplicates.
    """
    keys = DEDUP_KEY.split(", ")
    con.execute("""CREATE OR REPLACE TEMP TABLE _duph AS
                    SELECT _h AS h FROM staged WHERE _h IS NOT NULL GROUP BY 1 HAVING count(*) > 1""")
    if con.execute("SELECT count(*) FROM _duph").fetchall()[0][0] == 0:
        return 0
    ids = {"buyer_id": hmac_sql("buyer_id", red.key)}
    if red.sessions:
        ids["session_id"] = f"left({hmac_sql('session_id', red.key)}, {SESSION_HEX})"
    if red.keep_raw:
        ids = {}
    raw = "to_json(struct_pack(" + ", ".join(f"{c} := {ids.get(c, c)}" for c in keys) + "))::VARCHAR"
    con.execute(f"""
    INSERT INTO dups
    SELECT _file, _row, _sub, 'duplicate', NULL, {raw}
    FROM staged WHERE _h IN (SELECT h FROM _duph)
    QUALIFY row_number() OVER (PARTITION BY {DEDUP_KEY} ORDER BY _file, _row, _sub) > 1
    """)
    return con.execute("SELECT count(*) FROM dups").fetchall()[0][0]


def _accepted_sql(has_dups: bool) -> str:
    """Valid, non-duplicate staged rows."""
    if not has_dups:
        return "SELECT * FROM staged WHERE reason IS NULL"
    return ("SELECT * FROM staged s WHERE reason IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM dups d WHERE d._file = s._file AND d._row = s._row AND d._sub = s._sub)")


# Every reject on its line: staged rejects and duplicates get the malformed lines before them
# counted in (`shifts`: k = #{t ≤ row}, the parsed row's shift; see _read_csv).
REJECTS_SQL = """
    SELECT r._file, r._row + coalesce(s.k, 0) AS _row, r.reason, r.field, r._raw
    FROM (SELECT _file, _row, reason, nullif(field, '') AS field, _raw FROM staged WHERE reason IS NOT NULL
          UNION ALL SELECT _file, _row, reason, field, _raw FROM dups) r
    ASOF LEFT JOIN shifts s ON r._file = s._file AND r._row >= s.t
    UNION ALL SELECT * FROM malformed
    UNION ALL SELECT * FROM catalog_rejects
"""


def _strict_error(con: duckdb.DuckDBPyConnection) -> IngestError | None:
    """The first rejected row as file, line, field and reason (no source values: they may hold ids)."""
    row = con.execute(f"SELECT _file, _row, reason, field FROM ({REJECTS_SQL}) ORDER BY _file, _row LIMIT 1").fetchone()
    if row is None:
        return None
    f, r, reason, fld = row
    return IngestError(f"{f}, line {r}, field {fld or '-'}: {reason} (--strict stops at the first rejected row)")


def _write_events(con, cfg: IngestConfig, path: Path, key: bytes, has_dups: bool) -> dict[str, int | None]:
    """Write the accepted events with hashed ids; returns the shop, buyer–shop and session counts
    (sessions None for Taobao, whose sessions are made by this write) for the summary.

    One HMAC per distinct buyer (and session) joined back: ~1/20 of the hashing of a per-row
    expression. The distinct (shop, buyer[, session]) tables it starts from are the summary's
    counts, so the summary need not count distinct 64-character ids in the written file (3.0 s of
    a 36.5 s ingest at 10M events). Valid rows have the same distinct keys as accepted ones (a
    duplicate repeats an accepted row)."""
    accepted = _accepted_sql(has_dups)
    sessions = readers.COLUMNS[cfg.format].session is not None
    keys = "shop_id, buyer_id, session_id" if sessions else "shop_id, buyer_id"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _keys AS SELECT DISTINCT {keys} FROM staged WHERE reason IS NULL")
    counts = dict(zip(("shops", "buyer_shop_pairs", "sessions"), con.execute(
        f"""SELECT count(DISTINCT shop_id), count(DISTINCT (shop_id, buyer_id)),
                   {'count(*)' if sessions else 'NULL'} FROM _keys""").fetchall()[0]))
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _ids AS
                    SELECT buyer_id AS _raw_id, {hmac_sql("buyer_id", key)} AS _hashed
                    FROM (SELECT DISTINCT buyer_id FROM _keys)""")
    session, join = "session_id", ""
    if sessions:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _sids AS
                        SELECT session_id AS _raw_sid, left({hmac_sql("session_id", key)}, {SESSION_HEX}) AS _hsid
                        FROM (SELECT DISTINCT session_id FROM _keys)""")
        session, join = "_hsid", "JOIN _sids ON session_id = _raw_sid"
    # dropped before the events pass, not after: held in memory beside it (3M sessions at 22.2M
    # events), the distinct keys made the staged rows spill more and the write took 10.5–11.2 s
    # instead of 8.7–8.9 s
    con.execute("DROP TABLE _keys")
    if cfg.format == "taobao":
        gap = f"INTERVAL {int(cfg.session_gap_minutes * 60)} SECOND"
        session = f"""'s' || sum(_new) OVER (PARTITION BY shop_id, buyer_id ORDER BY ts, _file, _row
                                           ROWS UNBOUNDED PRECEDING)::VARCHAR"""
        inner = f"""SELECT *, CASE WHEN ts - lag(ts) OVER (PARTITION BY shop_id, buyer_id ORDER BY ts, _file, _row)
                                   <= {gap} THEN 0 ELSE 1 END AS _new
                    FROM ({accepted})"""
    else:
        inner = accepted
    con.execute(f"""
    COPY (
        SELECT shop_id, _hashed AS buyer_id, {session} AS session_id, ts, event_type,
               product_id, collection_id, query, price, quantity
        FROM ({inner}) JOIN _ids ON buyer_id = _raw_id {join}
    ) TO {lit(path)} (FORMAT parquet, COMPRESSION zstd)
    """)
    return counts


def _write_catalog(con, cfg: IngestConfig, path: Path, tmp: Path) -> int:
    """Canonical: the validated catalog file (rejects go to `catalog_rejects`); otherwise derived from events."""
    if cfg.format == "canonical" and cfg.catalog is not None:
        _stage_catalog(con, Path(cfg.catalog), tmp)
        select = """SELECT shop_id, product_id, title, collection, brand, TRY_CAST(price AS DOUBLE) AS price,
                           description FROM cat WHERE reason IS NULL"""
    else:
        select = """SELECT shop_id, product_id, arg_max(_title, ts) AS title,
                           arg_max(_collection, ts) AS collection, arg_max(_brand, ts) AS brand,
                           median(price) AS price, NULL::VARCHAR AS description
                    FROM staged WHERE reason IS NULL AND product_id IS NOT NULL
                    GROUP BY shop_id, product_id"""
    con.execute(f"COPY ({select} ORDER BY shop_id, product_id) TO {lit(path)} (FORMAT parquet)")
    return con.execute(f"SELECT count(*) FROM read_parquet({lit(path)})").fetchall()[0][0]


def _stage_catalog(con, cat: Path, tmp: Path) -> None:
    """`cat`: every catalog row with its reason (NULL when valid); rejects into `catalog_rejects`."""
    if not cat.is_file():
        raise IngestError(f"{cat}: catalog file not found")
    names = readers.COLUMNS["catalog"].names
    try:
        if cat.suffix.lower() == ".parquet":
            rows, header = readers.parquet_rows(cat, "catalog")
            con.execute(f"CREATE TEMP TABLE cat_rows AS SELECT * FROM {readers.bind('catalog', header, rows)}")
            bad: list = []
        else:
            header = readers.read_header(cat, "catalog")

            def stage(inner: str) -> int:
                con.execute(f"CREATE OR REPLACE TEMP TABLE cat_rows AS SELECT * FROM {readers.bind('catalog', header, inner)}")
                return con.execute("SELECT count(*) FROM cat_rows").fetchall()[0][0]

            _, bad = _read_csv(con, cat, header, tmp, "catalog", stage)
    except FormatError as e:
        raise IngestError(str(e)) from None
    except duckdb.Error as e:
        if _write_problem(e):
            raise
        raise IngestError(f"{cat}: cannot be read as a catalog: {str(e).splitlines()[0]}") from None
    if bad:  # parsed rows back on their line numbers (see _read_csv)
        con.execute(f"""UPDATE cat_rows SET _row = _row + (SELECT count(*) FROM line_shift l
                        WHERE l._file = {lit(cat)} AND l.t <= cat_rows._row)""")
    _insert_malformed(con, "catalog_rejects", str(cat), bad, lambda text: json.dumps({"line": text}, ensure_ascii=False))
    raw = "to_json(struct_pack(" + ", ".join(f"{q(c)} := {q(c)}" for c in names) + "))::VARCHAR"
    con.execute(f"""
    CREATE TEMP TABLE cat AS
    SELECT *, split_part(_chk, ':', 1) AS reason, split_part(_chk, ':', 2) AS field
    FROM (SELECT *, {catalog_check_expr()} AS _chk, {raw} AS _raw FROM cat_rows)
    """)
    con.execute("""
    UPDATE cat SET reason = 'duplicate', field = 'product_id'
    WHERE reason IS NULL AND rowid IN (
        SELECT rowid FROM cat WHERE reason IS NULL
        QUALIFY row_number() OVER (PARTITION BY shop_id, product_id ORDER BY _row) > 1)
    """)
    con.execute(f"""
    INSERT INTO catalog_rejects
    SELECT {lit(cat)}, _row, reason, nullif(field, ''), _raw FROM cat WHERE reason IS NOT NULL
    """)


# --- operator errors -----------------------------------------------------------------------------

_WRITE_ERRORS = ("No space left on device", "Read-only file system", "Disk quota exceeded", "File too large")


def _write_problem(e: Exception) -> bool:
    """True when a DuckDB error is about writing (disk full, read-only), not about the input."""
    msg = str(e)
    return any(w in msg for w in _WRITE_ERRORS) or (isinstance(e, duckdb.IOException) and "/.tmp/" in msg)


def _output_error(run_dir: Path, e: Exception) -> IngestError:
    problem = e.strerror if isinstance(e, OSError) and e.strerror else next(
        (w for w in _WRITE_ERRORS if w in str(e)), str(e).splitlines()[0])
    return IngestError(f"{run_dir}: cannot write the ingest output: {problem} (nothing was written)")


def _prepare_output(run_dir: Path) -> Path:
    """`run_dir/.tmp`, fresh; an IngestError naming the path when it cannot be made."""
    if run_dir.exists() and not run_dir.is_dir():
        raise IngestError(f"{run_dir}: output path is a file, not a folder")
    parent = next((p for p in run_dir.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise IngestError(f"{run_dir}: {parent} is a file, not a folder")
    tmp = run_dir / ".tmp"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "out").mkdir(parents=True)
    except OSError as e:
        raise _output_error(run_dir, e) from None
    return tmp


def _publish(run_dir: Path, tmp: Path, summary: dict, cfg: IngestConfig, files: list[Path]) -> None:
    """Move the outputs into place: the old meta.json (the completion mark) goes first, the new one last."""
    try:
        for name in ("meta.json", "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
        for name in OUTPUTS:
            os.replace(tmp / "out" / name, run_dir / name)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_meta(run_dir, "ingest", cfg, inputs=[str(f) for f in files], summary=summary)
    except OSError as e:
        raise _output_error(run_dir, e) from None


# --- the stage -------------------------------------------------------------------------------------

def run(cfg: IngestConfig, run_dir: Path) -> dict[str, Any]:
    """Ingest `cfg.input` into `run_dir`; returns the summary (also written to summary.json)."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    files, skipped = resolve_inputs(cfg)
    key, salt_origin = load_or_create_salt(cfg.salt)
    tmp = _prepare_output(run_dir)
    out = tmp / "out"
    red = _Redactor(cfg.format, key, cfg.keep_raw_rejects)
    try:
        con = duckdb.connect(str(tmp / "ingest.duckdb"))
        try:
            con.execute(f"SET memory_limit = '{cfg.memory_limit}'; SET threads = {cfg.threads}")
            con.execute(f"SET temp_directory = {lit(tmp)}; SET TimeZone = 'UTC'; SET preserve_insertion_order = true")
            con.execute(f"SET enable_progress_bar = {str(cfg.progress).lower()}")
            con.execute(SIDE_DDL)
            chk = check_expr(f"TIMESTAMPTZ '{ts_max().isoformat()}'", check_session=cfg.format != "taobao")
            reads = {str(path): _stage_file(con, cfg, path, i, chk, tmp, red) for i, path in enumerate(files)}
            _create_staged_view(con, files, reads)
            has_dups = _find_duplicates(con, red) > 0
            if cfg.strict and (err := _strict_error(con)) is not None:
                raise err
            n_catalog = _write_catalog(con, cfg, out / "catalog.parquet", tmp)
            if cfg.strict and (err := _strict_error(con)) is not None:
                raise err
            counts = _write_events(con, cfg, out / "events.parquet", key, has_dups)
            con.execute(f"""
            COPY (SELECT _file AS source_file, _row AS "row", reason, field, _raw AS raw
                  FROM ({REJECTS_SQL}) ORDER BY _file, _row)
            TO {lit(out / 'rejected.parquet')} (FORMAT parquet)
            """)
            summary = _summary(con, out, reads, skipped, n_catalog, counts)
        finally:
            con.close()
        summary["salt"] = salt_origin
        summary["salt_id"] = salt_id(key)
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        _publish(run_dir, tmp, summary, cfg, files)
    except duckdb.Error as e:
        if _write_problem(e):
            raise _output_error(run_dir, e) from None
        raise
    except OSError as e:
        raise _output_error(run_dir, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _summary(con, out: Path, reads: dict[str, FileRead], skipped: list[Path], n_catalog: int,
             counts: dict[str, int | None]) -> dict[str, Any]:
    ev = f"read_parquet({lit(out / 'events.parquet')})"
    rej = f"read_parquet({lit(out / 'rejected.parquet')})"
    read = sum(r.rows for r in reads.values())
    accepted = con.execute(f"SELECT count(*) FROM {ev}").fetchall()[0][0]
    rejected_events = con.execute(
        f"SELECT count(*) FROM {rej} WHERE source_file IN (SELECT unnest(?::VARCHAR[]))", [list(reads)]
    ).fetchall()[0][0]
    by_reason = dict(con.execute(f"SELECT reason, count(*) FROM {rej} GROUP BY 1 ORDER BY 2 DESC, 1").fetchall())
    by_type = dict(con.execute(f"SELECT event_type, count(*) FROM {ev} GROUP BY 1").fetchall())
    t_min, t_max = con.execute(f"SELECT min(ts)::VARCHAR, max(ts)::VARCHAR FROM {ev}").fetchall()[0]
    shops, buyers, sessions = counts["shops"], counts["buyer_shop_pairs"], counts["sessions"]
    if sessions is None:  # made by the events write (Taobao)
        sessions = con.execute(f"SELECT count(DISTINCT (shop_id, buyer_id, session_id)) FROM {ev}").fetchall()[0][0]
    if accepted + rejected_events != read:
        raise IngestError(f"internal: accepted {accepted} + rejected {rejected_events} != read {read}")
    return {
        "files": {f: r.rows for f, r in reads.items()},
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
        "empty_lines": sum(r.empty_lines for r in reads.values()),
        "read_line_by_line": [f for f, r in reads.items() if r.read_by == "line by line"],
        "extra_columns": {f: list(r.extra_columns) for f, r in reads.items() if r.extra_columns},
        "absent_columns": {f: list(r.absent_columns) for f, r in reads.items() if r.absent_columns},
        "skipped_files": [str(f) for f in skipped],
    }


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    lines_ = [
        f"read {s['read']:,} rows from {len(s['files'])} file(s): accepted {s['accepted']:,}, "
        f"rejected {s['rejected']:,} (accepted + rejected == read == data lines) in {s['seconds']:.1f}s",
        f"shops {s['shops']:,} · buyer–shop pairs {s['buyer_shop_pairs']:,} · sessions {s['sessions']:,} · "
        f"catalog products {s['catalog_products']:,}",
        "events by type: " + ", ".join(f"{k} {v:,}" for k, v in s["events_by_type"].items()),
    ]
    if s["rejected_by_reason"]:
        lines_.append("rejected by reason: " + ", ".join(f"{k} {v:,}" for k, v in s["rejected_by_reason"].items()))
    for f, cols in s["extra_columns"].items():
        lines_.append(f"ignored column(s) of {f}: {', '.join(cols)}")
    for f, cols in s["absent_columns"].items():
        lines_.append(f"optional column(s) absent from {f}: {', '.join(cols)}")
    if s["read_line_by_line"]:
        lines_.append(f"read line by line (quoting or line breaks did not match the lines): {len(s['read_line_by_line'])} file(s)")
    if s["empty_lines"]:
        lines_.append(f"empty lines (no data, not rows): {s['empty_lines']:,}")
    if s["skipped_files"]:
        lines_.append(f"skipped {len(s['skipped_files'])} file(s) not of the format: "
                      + ", ".join(s["skipped_files"][:5]) + (" …" if len(s["skipped_files"]) > 5 else ""))
    lines_.append(f"time range: {s['time_range'][0]} … {s['time_range'][1]} · salt {s['salt_id']} ({s['salt']})")
    return "\n".join(lines_)
