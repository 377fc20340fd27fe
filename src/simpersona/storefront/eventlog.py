"""Buffered Parquet writer for the storefront's canonical events and its sessions sidecar.

Layout of an events folder:

    DIR/events/part-00000.parquet …    EVENT_SCHEMA rows, one per logged request
    DIR/sessions/part-00000.parquet …  SESSION_SCHEMA rows: which variant each session saw
    DIR/meta.json                      the storefront's resolved config (written by `serve`)

Read back either folder with `pyarrow.parquet.read_table(DIR / "events")`, or `EventLog.events()`.
Without a folder the log keeps everything in memory (agent simulations, tests).
"""

from __future__ import annotations

import datetime as dt
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


class EventLog:
    """Collects events and session rows; `flush()` writes what is buffered as Parquet parts."""

    def __init__(self, out_dir: Path | None, flush_rows: int):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.flush_rows = flush_rows
        self._events: list[tuple] = []
        self._sessions: list[tuple] = []
        self._done: dict[str, list[pa.Table]] = {"events": [], "sessions": []}
        # Part numbers continue after those already in out_dir: a restarted server appends.
        self._parts = 0
        if self.out_dir is not None:
            names = [q.stem for n in ("events", "sessions") for q in (self.out_dir / n).glob("part-*.parquet")]
            self._parts = 1 + max((int(x[5:]) for x in names if x[5:].isdigit()), default=-1)
        self._lock = threading.Lock()

    def event(self, shop_id: str, buyer_id: str, session_id: str, ts: dt.datetime, event_type: str,
              product_id: str | None = None, collection_id: str | None = None, query: str | None = None,
              price: float | None = None, quantity: int | None = None) -> None:
        """Buffer one canonical event."""
        row = (shop_id, buyer_id, session_id, ts, event_type, product_id, collection_id, query, price, quantity)
        with self._lock:
            self._events.append(row)
            full = len(self._events) >= self.flush_rows
        if full:
            self.flush()

    def session(self, shop_id: str, buyer_id: str, session_id: str, ts: dt.datetime, experiment: str, variant: str) -> None:
        """Buffer one sessions-sidecar row (written once per new session)."""
        with self._lock:
            self._sessions.append((shop_id, buyer_id, session_id, ts, experiment, variant))

    @staticmethod
    def _table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
        columns = list(zip(*rows)) if rows else [[] for _ in schema.names]
        return pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(columns, schema)], schema=schema)

    def flush(self) -> None:
        """Write the buffered events and sessions (a part file each in `out_dir`, else in memory)."""
        with self._lock:
            events, self._events = self._events, []
            sessions, self._sessions = self._sessions, []
            if not events and not sessions:
                return
            part = self._parts
            self._parts += 1
            for name, rows, schema in (("events", events, EVENT_SCHEMA), ("sessions", sessions, SESSION_SCHEMA)):
                table = self._table(rows, schema)
                if self.out_dir is None:
                    self._done[name].append(table)
                elif rows:
                    folder = self.out_dir / name
                    folder.mkdir(parents=True, exist_ok=True)
                    pq.write_table(table, folder / f"part-{part:05d}.parquet")

    def _read(self, name: str, schema: pa.Schema) -> pa.Table:
        self.flush()
        if self.out_dir is None:
            tables = self._done[name]
        else:
            tables = [pq.read_table(p, schema=schema) for p in sorted((self.out_dir / name).glob("part-*.parquet"))]
        return pa.concat_tables(tables) if tables else self._table([], schema)

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
            self._done = {"events": [], "sessions": []}

