"""Physical lines of a text file: an independent count, and a line-by-line reader for files whose
quoting or line breaks the fast DuckDB parse cannot map one record to one line.

A *line* is a run of bytes ended by `\\n` (a final run without `\\n` counts too); a trailing
`\\r` belongs to the line ending. An *empty line* (no bytes, or only `\\r`) holds no data and is
neither a row nor a reject; every other line after the header is a *data line*, and every data
line becomes exactly one accepted row or one reject. A quoted field spanning a line break is not
a record: each line it touches is quarantined as `malformed_row` on its own line number (none of
the supported formats puts line breaks inside fields).
"""

from __future__ import annotations

import csv
import fcntl
import os
import re
import select
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 1 << 24  # bytes per read when counting
BATCH = 200_000  # lines per Parquet row group when splitting CSV
TEXT_BATCH = 20_000  # JSON lines per row group (an OTTO line can hold hundreds of events)
_EMPTY_AFTER = re.compile(rb"\n(?=\r?\n)")  # a line break followed by an empty line


@dataclass(frozen=True)
class LineCount:
    """What `count_lines` found."""

    # Non-empty lines, the header included.
    lines: int
    # Empty lines (no bytes, or only `\r`), anywhere in the file.
    empty: int
    # True when every line break is `\n`, or every one is `\r\n`, and no other `\r` occurs: a
    # parser that also breaks lines at `\r` then sees the same lines.
    plain_breaks: bool = True


class LineCounter:
    """`count_lines` fed one block at a time, so that a byte range of a file can be counted while it
    is read for another purpose (`pipe_range`); `total` adds up the counters of a file's ranges.

    A range starts at the start of the file or just after a line break: either way it is counted
    as if after a `\\n` (the bytes before a range's first line change none of its counts)."""

    def __init__(self):
        self.breaks = self.empty = self.cr = self.crlf = 0
        self.carry, self.last = b"\n", b""

    def feed(self, chunk: bytes) -> None:
        self.breaks += chunk.count(b"\n")
        # Empty lines and `\r` are rare: a chunk is searched for them (plus its 2-byte seam with
        # the last one), and only a chunk that has one is joined to `carry` and scanned (5M events,
        # 392 MiB: 1.7 s → 1.0 s). Matches lying wholly in `carry` (≤ 2 bytes; the longest match is
        # 3) were counted with the last chunk.
        carry = self.carry
        seam = carry + chunk[:2]
        has_cr = b"\r" in chunk
        if (b"\n\n" in chunk or b"\n\n" in seam or b"\n\r\n" in seam
                or (has_cr and b"\n\r\n" in chunk)):
            probe = carry + chunk
            self.empty += len(_EMPTY_AFTER.findall(probe)) - len(_EMPTY_AFTER.findall(carry))
        if has_cr or carry.endswith(b"\r"):
            self.cr += chunk.count(b"\r")
            self.crlf += (carry[-1:] + chunk).count(b"\r\n")  # pairs wholly in carry were counted
        self.carry, self.last = (carry + chunk)[-2:] if len(chunk) < 2 else chunk[-2:], chunk[-1:]

    def _open_end(self) -> tuple[int, int]:
        """(1 if the range ends in a line without a line break, empty lines that adds)."""
        open_end = self.last not in (b"", b"\n")
        return int(open_end), int(open_end and self.carry.endswith(b"\n\r"))  # a final lone `\r`

    @staticmethod
    def total(counters: list[LineCounter]) -> LineCount:
        """The count of the file whose consecutive ranges `counters` counted (only the last range
        may end without a line break)."""
        breaks = sum(c.breaks for c in counters)
        cr, crlf = sum(c.cr for c in counters), sum(c.crlf for c in counters)
        open_end, lone_cr = counters[-1]._open_end()
        empty = sum(c.empty for c in counters) + lone_cr
        return LineCount(breaks + open_end - empty, empty, cr == 0 or cr == crlf == breaks)


def count_lines(path: Path) -> LineCount:
    """Count non-empty and empty lines by scanning bytes (independent of any CSV parser).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "f.csv"; _ = p.write_bytes(b"h\\n1\\n\\n\\r\\n2")
    >>> count_lines(p)
    LineCount(lines=3, empty=2, plain_breaks=False)
    """
    counter = LineCounter()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            counter.feed(chunk)
    return LineCounter.total([counter])


def split_ranges(path: Path, skip: int, parts: int) -> tuple[int, list[tuple[int, int]]]:
    """The end of the first `skip` lines (the header) and up to `parts` byte ranges of about equal
    size covering the rest of the file, each starting at the start of a line.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "f.csv"; _ = p.write_bytes(b"h\\n111\\n222\\n333\\n")
    >>> split_ranges(p, 1, 2)
    (2, [(2, 10), (10, 14)])
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        for _ in range(skip):
            f.readline()
        start = f.tell()
        cuts = [start]
        for k in range(1, parts):
            f.seek(max(start + (size - start) * k // parts - 1, cuts[-1]))
            f.readline()  # to the start of the next line
            if cuts[-1] < f.tell() < size:
                cuts.append(f.tell())
    return start, list(zip(cuts, cuts[1:] + [size]))


def pipe_range(path: Path, start: int, end: int, fifo: Path, counter: LineCounter, stop: threading.Event) -> None:
    """Write bytes [start, end) of `path` into the named pipe `fifo`, counting their lines on the way.

    Waits for a reader to open the pipe (`release_pipe` ends the wait). Once the reader is gone or
    `stop` is set (a parser that gave up), the rest of the range is only counted: the count is the
    reference the parse is checked against."""
    fd = os.open(fifo, os.O_WRONLY)
    os.set_blocking(fd, False)  # a reader that stops reading must not hold this thread forever
    if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux: 1 MiB of pipe (default 64 KiB), fewer wake-ups on both sides
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
    try:
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start
            while left and (chunk := f.read(min(CHUNK, left))):
                left -= len(chunk)
                counter.feed(chunk)
                view = memoryview(chunk)
                while fd >= 0 and view:
                    try:
                        if stop.is_set():
                            raise BrokenPipeError
                        select.select([], [fd], [], 0.5)
                        view = view[os.write(fd, view):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        os.close(fd)
                        fd = -1
    finally:
        if fd >= 0:
            os.close(fd)


def release_pipe(fifo: Path) -> None:
    """Let a `pipe_range` still waiting for its reader go on (to count only): open the read end and
    close it at once."""
    try:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    except OSError:
        pass


def csv_lines_to_parquet(path: Path, names: list[str], skip: int, out: Path) -> list[tuple[int, str, str]]:
    """Parse `path` one line at a time into `out` (`_row` + one VARCHAR column per name).

    `skip` header lines are skipped (they still count in line numbers). Returns the malformed
    lines as (line number, problem, text): a field count other than len(names), quoting that does
    not close on the line, or bytes that are not UTF-8.
    """
    bad: list[tuple[int, str, str]] = []
    schema = pa.schema([("_row", pa.int64())] + [(n, pa.string()) for n in names])
    width = len(names)
    with pq.ParquetWriter(out, schema, compression="lz4") as w:
        rows: list[int] = []
        cols: list[list[str]] = [[] for _ in names]
        for no, raw in enumerate(_raw_lines(path), start=1):
            if no <= skip or raw in (b"", b"\r"):
                continue
            raw = raw[:-1] if raw.endswith(b"\r") else raw
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad.append((no, "invalid_encoding", raw.decode("utf-8", "replace")))
                continue
            try:  # the csv module only where quoting or a stray `\r` needs it (4× faster without)
                fields = next(csv.reader([text], strict=True)) if '"' in text or "\r" in text else text.split(",")
            except csv.Error:
                problem = "unterminated_quote" if text.count('"') % 2 else "bad_quoting" if '"' in text else "stray_cr"
                bad.append((no, problem, text))
                continue
            if len(fields) != width:
                bad.append((no, "missing_columns" if len(fields) < width else "too_many_columns", text))
                continue
            rows.append(no)
            for c, v in zip(cols, fields):
                c.append(v)
            if len(rows) >= BATCH:
                w.write_table(pa.table([rows, *cols], schema=schema))
                rows, cols = [], [[] for _ in names]
        w.write_table(pa.table([rows, *cols], schema=schema))
    return bad


def text_lines_to_parquet(path: Path, out: Path) -> list[tuple[int, str, str]]:
    """Every non-empty line of `path` into `out` as (`_row`, `line`); lines that are not UTF-8
    are returned as (line number, "invalid_encoding", text) instead."""
    bad: list[tuple[int, str, str]] = []
    schema = pa.schema([("_row", pa.int64()), ("line", pa.string())])
    with pq.ParquetWriter(out, schema, compression="lz4") as w:
        rows: list[int] = []
        texts: list[str] = []
        for no, raw in enumerate(_raw_lines(path), start=1):
            if raw in (b"", b"\r"):
                continue
            raw = raw[:-1] if raw.endswith(b"\r") else raw
            try:
                texts.append(raw.decode("utf-8"))
                rows.append(no)
            except UnicodeDecodeError:
                bad.append((no, "invalid_encoding", raw.decode("utf-8", "replace")))
            if len(rows) >= TEXT_BATCH:
                w.write_table(pa.table([rows, texts], schema=schema))
                rows, texts = [], []
        w.write_table(pa.table([rows, texts], schema=schema))
    return bad


def _raw_lines(path: Path):
    """Each line's bytes without its `\\n` (a `\\r` before it is kept for the caller)."""
    with open(path, "rb") as f:
        for raw in f:
            yield raw[:-1] if raw.endswith(b"\n") else raw
