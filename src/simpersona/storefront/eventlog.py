"""Durable event log for the storefront's canonical events and its sessions sidecar.

Layout of an events folder:

    DIR/events/part-00000.parquet …    EVENT_SCHEMA rows, one per logged request
    DIR/sessions/part-00000.parquet …  SESSION_SCHEMA rows: which variant each session saw
    DIR/journal/part-NNNNN.jsonl       rows logged since the last part was written (write-ahead)
    DIR/meta.json                      the storefront's resolved config (written by `serve`)

Every row is appended to the journal (one `write` to the operating system) before the request
that logged it is answered, so a killed server loses no acknowledged event: the next `EventLog`
on the folder turns leftover journals into parts. Buffered rows become Parquet parts when
`flush_rows` are waiting, at most `flush_interval_s` after the first of them arrived, and on
`close()`; each part is written under a hidden name and renamed into place, so readers never
see half a file. Read back either folder with `pyarrow.parquet.read_table(DIR / "events")`, or
`EventLog.events()`. Without a folder the log keeps everything in memory (simulations, tests).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from simpersona.events.schema import EVENT_SCHEMA, TS_TYPE

SESSION_SCHEMA = pa.schema(
    [
        pa.field("shop_id", pa.string(), nullable=False),
        pa.field("buyer_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("first_ts", TS_TYPE, nullable=False),
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
    ]
)


KINDS = ("events", "sessions")


def _table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows)) if rows else [[] for _ in schema.names]
    return pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(columns, schema)], schema=schema)


def _write_part(table: pa.Table, folder: Path, part: int) -> None:
    """Write `folder/part-NNNNN.parquet` under a hidden name first, then rename it into place."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".part-{part:05d}.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, folder / f"part-{part:05d}.parquet")


def _journal_line(kind: str, row: tuple) -> bytes:
    return (json.dumps([kind[0], *(v.isoformat() if isinstance(v, dt.datetime) else v for v in row)]) + "\n").encode()


def read_parts(out_dir: Path, kind: str = "events") -> pa.Table:
    """Every part of one kind ("events" or "sessions") in an events folder, in part order."""
    schema = EVENT_SCHEMA if kind == "events" else SESSION_SCHEMA
    tables = [pq.read_table(p, schema=schema) for p in sorted((Path(out_dir) / kind).glob("part-*.parquet"))]
    return pa.concat_tables(tables) if tables else _table([], schema)


def recover(out_dir: Path) -> tuple[int, int]:
    """Turn journals left by a killed writer into parts; (rows recovered, torn lines skipped)."""
    recovered = torn = 0
    for journal in sorted((Path(out_dir) / "journal").glob("part-*.jsonl")):
        part = int(journal.stem[5:])
        rows: dict[str, list[tuple]] = {k: [] for k in KINDS}
        for line in journal.read_bytes().splitlines():
            try:
                kind, *row = json.loads(line)
                ts = 3  # the timestamp's position in both schemas
                row[ts] = dt.datetime.fromisoformat(row[ts])
                rows["events" if kind == "e" else "sessions"].append(tuple(row))
            except (ValueError, TypeError, IndexError):  # a line cut short by the kill
                torn += 1
        for kind, schema in zip(KINDS, (EVENT_SCHEMA, SESSION_SCHEMA)):
            target = Path(out_dir) / kind / f"part-{part:05d}.parquet"
            if rows[kind] and not target.exists():  # exists: the kill came after the part was renamed
                _write_part(_table(rows[kind], schema), target.parent, part)
                recovered += len(rows[kind])
        journal.unlink()
    return recovered, torn


class EventLog:
    """Collects events and session rows; with a folder, journals each row at once and writes
    Parquet parts by size and time (see the module doc)."""

    def __init__(self, out_dir: Path | None, flush_rows: int, flush_interval_s: float = 1.0):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self._events: list[tuple] = []
        self._sessions: list[tuple] = []
        self._done: dict[str, list[pa.Table]] = {k: [] for k in KINDS}
        self._journal: tuple[int, Path] | None = None  # the open journal: file descriptor, path
        self._timer: threading.Timer | None = None
        self.recovered = self.torn = 0
        # Part numbers continue after those already in out_dir: a restarted server appends.
        self._parts = 0
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.recovered, self.torn = recover(self.out_dir)
            names = [q.stem for n in KINDS for q in (self.out_dir / n).glob("part-*.parquet")]
            self._parts = 1 + max((int(x[5:]) for x in names if x[5:].isdigit()), default=-1)
        self._lock = threading.Lock()

    def _append(self, kind: str, buffer: list[tuple], row: tuple) -> bool:
        """Buffer (and journal) one row; True when the buffer is full. Call with the lock held."""
        buffer.append(row)
        if self.out_dir is not None:
            if self._journal is None:
                path = self.out_dir / "journal" / f"part-{self._parts:05d}.jsonl"
                path.parent.mkdir(exist_ok=True)
                self._journal = (os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), path)
            os.write(self._journal[0], _journal_line(kind, row))
            if self._timer is None:
                self._timer = threading.Timer(self.flush_interval_s, self._on_timer)
                self._timer.daemon = True
                self._timer.start()
        return len(buffer) >= self.flush_rows

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
        self.flush()

    def event(self, shop_id: str, buyer_id: str, session_id: str, ts: dt.datetime, event_type: str,
              product_id: str | None = None, collection_id: str | None = None, query: str | None = None,
              price: float | None = None, quantity: int | None = None) -> None:
        """Log one canonical event (journaled before this returns when the log has a folder)."""
        row = (shop_id, buyer_id, session_id, ts, event_type, product_id, collection_id, query, price, quantity)
        with self._lock:
            full = self._append("events", self._events, row)
        if full:
            self.flush()

    def session(self, shop_id: str, buyer_id: str, session_id: str, ts: dt.datetime, experiment: str, variant: str) -> None:
        """Log one sessions-sidecar row (once per new session)."""
        with self._lock:
            self._append("sessions", self._sessions, (shop_id, buyer_id, session_id, ts, experiment, variant))

    def flush(self) -> None:
        """Write the buffered events and sessions (a part file each in `out_dir`, else in memory).
        Should writing fail (a full disk), the journal stays and the next start recovers it."""
        with self._lock:
            events, self._events = self._events, []
            sessions, self._sessions = self._sessions, []
            if not events and not sessions:
                return
            part = self._parts
            self._parts += 1
            journal, self._journal = self._journal, None
            if journal is not None:
                os.close(journal[0])
            for name, rows, schema in (("events", events, EVENT_SCHEMA), ("sessions", sessions, SESSION_SCHEMA)):
                if self.out_dir is None:
                    self._done[name].append(_table(rows, schema))
                elif rows:
                    _write_part(_table(rows, schema), self.out_dir / name, part)
            if journal is not None:  # its rows are in the parts now
                journal[1].unlink(missing_ok=True)

    def close(self) -> None:
        """Flush and stop the timer (the app's shutdown calls this)."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush()
        if self.out_dir is not None:
            try:
                (self.out_dir / "journal").rmdir()  # empty after a clean shutdown
            except OSError:
                pass

    def _read(self, name: str, schema: pa.Schema) -> pa.Table:
        self.flush()
        if self.out_dir is not None:
            return read_parts(self.out_dir, name)
        tables = self._done[name]
        return pa.concat_tables(tables) if tables else _table([], schema)

    def events(self) -> pa.Table:
        """Every event logged so far (flushes first), in EVENT_SCHEMA."""
        return self._read("events", EVENT_SCHEMA)

    def sessions(self) -> pa.Table:
        """Every session row logged so far (flushes first), in SESSION_SCHEMA."""
        return self._read("sessions", SESSION_SCHEMA)

    def clear(self) -> None:
        """Forget everything kept in memory (a long in-memory simulation between reads)."""
        with self._lock:
            self._events, self._sessions = [], []
            self._done = {k: [] for k in KINDS}
