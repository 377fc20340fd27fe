"""The `synth` stage: a realistic multi-shop clickstream with its ground truth, clearly synthetic.

Layout of the output folder:

    events.csv | events.parquet   canonical events (EVENT_SCHEMA; raw buyer ids such as b000123)
    catalog.parquet               CATALOG_SCHEMA, every shop's products
    truth/buyers.parquet          shop_id, buyer_id, type: the latent type of every buyer
    truth/shops.parquet           shop_id, type, configured_share, realized_share
    truth/types.json              every type's parameters
    SYNTHETIC.txt                 says the data are generated, and how
    meta.json                     resolved config and counts

Buyers are generated shop by shop in chunks of `chunk_buyers`; each chunk has its own generator
from `SeedSequence(seed).spawn`, so the files depend only on the config (not on `threads`), and
memory is bounded by one chunk per worker.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from simpersona.config import ConfigError, write_meta
from simpersona.events.schema import EVENT_COLUMNS, EVENT_SCHEMA, EVENT_TYPES
from simpersona.synth.buyers import BuyerType, default_types, simulate_sessions, type_table
from simpersona.synth.catalog import Catalog, build_catalog

STAGE = "simpersona.synth"
DAY_MS = 86_400_000
# Relative traffic by hour of day (UTC): quiet nights, a lunch bump, an evening peak.
HOUR_WEIGHTS = np.array([2, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 6, 7, 7, 6, 6, 6, 7, 8, 9, 10, 9, 7, 4], dtype=np.float64)


@dataclass
class SynthConfig:
    """Configuration of the synthetic multi-shop generator."""

    # number of shops (storefronts)
    shops: int = 4
    # total buyers over all shops; each buyer belongs to one shop
    buyers: int = 1000
    # master seed: the same seed gives byte-identical files
    seed: int = 0
    # events file format: events.csv or events.parquet
    file_format: Literal["csv", "parquet"] = "csv"
    # Dirichlet concentration of a shop's type mix around the base shares (smaller: shops differ more)
    mix_concentration: float = 8.0
    # log-normal sigma of shop sizes (buyers per shop)
    shop_size_sigma: float = 0.8
    # products of a median-sized shop (bigger shops carry more, ∝ sqrt(size))
    products_per_shop: int = 300
    # fewest categories a shop carries
    categories_min: int = 3
    # most categories a shop carries
    categories_max: int = 8
    # first day of the observation window (UTC, YYYY-MM-DD)
    start_date: str = "2026-03-01"
    # days in the observation window: first sessions fall inside, sessions after it are dropped
    days: int = 30
    # most events positions per session (a session is cut after this many steps)
    max_session_steps: int = 60
    # most sessions per buyer
    max_sessions: int = 40
    # most distinct items in one cart
    max_cart_items: int = 6
    # least inactivity between two sessions of one buyer, minutes (sessionisation rule: 30)
    session_gap_minutes: float = 31.0
    # longest gap between two events of one session, minutes (below the 30-minute rule)
    max_dwell_minutes: float = 25.0
    # buyers generated per chunk (bounds memory)
    chunk_buyers: int = 20000
    # worker threads for generating chunks (the output does not depend on it)
    threads: int = 1
    # latent buyer types with their base shares and behaviour parameters
    types: list[BuyerType] = field(default_factory=default_types)


def _check(cfg: SynthConfig) -> None:
    if cfg.shops < 1 or cfg.buyers < cfg.shops:
        raise ConfigError(f"need shops >= 1 and buyers >= shops, got shops={cfg.shops}, buyers={cfg.buyers}")
    if not 1 <= cfg.chunk_buyers <= 200_000:
        raise ConfigError(f"chunk_buyers must be in [1, 200000], got {cfg.chunk_buyers}")
    if cfg.max_dwell_minutes >= cfg.session_gap_minutes or cfg.session_gap_minutes < 30:
        raise ConfigError("need max_dwell_minutes < session_gap_minutes and session_gap_minutes >= 30")
    if not cfg.types or any(t.share <= 0 for t in cfg.types):
        raise ConfigError("types must be non-empty with positive shares")
    if not 1 <= cfg.categories_min <= cfg.categories_max:
        raise ConfigError("need 1 <= categories_min <= categories_max")
    if cfg.max_sessions < 1 or cfg.max_sessions > 9999 or cfg.max_session_steps < 2 or cfg.max_cart_items < 1:
        raise ConfigError("need 1 <= max_sessions <= 9999, max_session_steps >= 2, max_cart_items >= 1")
    try:
        dt.date.fromisoformat(cfg.start_date)
    except ValueError as e:
        raise ConfigError(f"start_date: {e}") from None


def format_ts(ts_ms: np.ndarray) -> pa.Array:
    """Epoch milliseconds → ISO-8601 UTC strings `YYYY-MM-DDTHH:MM:SS.mmmZ` (fixed width, fast)."""
    n = len(ts_ms)
    day = ts_ms // DAY_MS
    d0 = int(day.min()) if n else 0
    days = np.arange(d0, (int(day.max()) + 1) if n else d0 + 1, dtype="datetime64[D]")
    table = np.frombuffer(np.datetime_as_string(days).astype("S10").tobytes(), dtype=np.uint8).reshape(-1, 10)
    out = np.empty((n, 24), dtype=np.uint8)
    out[:, :10] = table[day - d0]
    rem = ts_ms - day * DAY_MS
    h, rem = np.divmod(rem, 3_600_000)
    m, rem = np.divmod(rem, 60_000)
    s, ms = np.divmod(rem, 1000)
    out[:, 10] = ord("T")
    out[:, 13] = out[:, 16] = ord(":")
    out[:, 19] = ord(".")
    out[:, 23] = ord("Z")
    for col, val in ((11, h // 10), (12, h % 10), (14, m // 10), (15, m % 10), (17, s // 10), (18, s % 10), (20, ms // 100), (21, ms // 10 % 10), (22, ms % 10)):
        out[:, col] = val + 48
    offsets = np.arange(0, 24 * (n + 1), 24, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out.tobytes())])


@dataclass
class _Shop:
    shop_id: str
    catalog: Catalog
    mix: np.ndarray  # configured type shares
    types: np.ndarray  # int8 type code per buyer
    first_buyer: int  # global index of the shop's first buyer
    chunk_seeds: list[np.random.SeedSequence]


def _plan_shops(cfg: SynthConfig) -> list[_Shop]:
    root = np.random.SeedSequence(cfg.seed)
    top, *shop_seqs = root.spawn(cfg.shops + 1)
    rng = np.random.default_rng(top)
    size = np.exp(rng.normal(0.0, cfg.shop_size_sigma, cfg.shops))
    # Buyers per shop ∝ size, at least 1, largest remainders get the leftover.
    share = size / size.sum()
    raw = share * (cfg.buyers - cfg.shops)
    n = np.floor(raw).astype(np.int64)
    n[np.argsort(-(raw - n), kind="stable")[: cfg.buyers - cfg.shops - int(n.sum())]] += 1
    n += 1
    base = np.array([t.share for t in cfg.types])
    base = base / base.sum()
    width = max(2, len(str(cfg.shops - 1)))
    shops = []
    first = 0
    for i, seq in enumerate(shop_seqs):
        cat_seq, mix_seq, chunk_root = seq.spawn(3)
        srng = np.random.default_rng(mix_seq)
        mix = srng.dirichlet(cfg.mix_concentration * len(base) * base)
        types = srng.choice(len(base), size=int(n[i]), p=mix).astype(np.int8)
        crng = np.random.default_rng(cat_seq)
        n_cat = int(crng.integers(cfg.categories_min, cfg.categories_max + 1))
        n_prod = int(round(cfg.products_per_shop * np.sqrt(size[i] / np.median(size))))
        shop_id = f"shop_{i:0{width}d}"
        n_chunks = -(-int(n[i]) // cfg.chunk_buyers)
        shops.append(_Shop(shop_id, build_catalog(shop_id, n_prod, n_cat, crng), mix, types, first, chunk_root.spawn(n_chunks)))
        first += int(n[i])
    return shops


def _chunk(cfg: SynthConfig, P: dict[str, np.ndarray], shop: _Shop, c: int, id_width: int, t0_ms: int,
           price_factor: np.ndarray | None = None):
    """Generate the events of one chunk of a shop's buyers: (events table, truth table, counts).
    `P` may be an A/B arm's type table and `price_factor` its per-product price change
    (`synth.variants`): the buyers, their sessions' times and start categories stay the same."""
    rng = np.random.default_rng(shop.chunk_seeds[c])
    lo = c * cfg.chunk_buyers
    btype = shop.types[lo : lo + cfg.chunk_buyers].astype(np.int64)
    B = len(btype)
    g0 = shop.first_buyer + lo
    buyer_ids = pa.array([f"b{g:0{id_width}d}" for g in range(g0, g0 + B)], pa.string())
    cat = shop.catalog
    n_cat = len(cat.categories)
    cdf = np.cumsum(cat.cat_popularity)
    cdf[-1] = 1.0
    home = np.minimum(np.searchsorted(cdf, rng.random(B), side="right"), n_cat - 1)

    # Sessions per buyer, spread over the buyer's active span with a diurnal time of day.
    n_sess = np.minimum(1 + rng.poisson(np.maximum(P["sessions_mean"][btype] - 1, 0)), cfg.max_sessions)
    sb = np.repeat(np.arange(B), n_sess)
    S = len(sb)
    first_ms = rng.uniform(0, cfg.days * DAY_MS, B)
    span_ms = rng.exponential(P["active_days"][btype] * DAY_MS)
    is_first = np.ones(S, dtype=bool)
    is_first[1:] = sb[1:] != sb[:-1]
    raw = first_ms[sb] + np.where(is_first, 0.0, rng.random(S)) * span_ms[sb]
    hour_cdf = np.cumsum(HOUR_WEIGHTS) / HOUR_WEIGHTS.sum()
    hour = np.minimum(np.searchsorted(hour_cdf, rng.random(S), side="right"), 23)
    start = (raw // DAY_MS).astype(np.int64) * DAY_MS + hour * 3_600_000 + (rng.random(S) * 3_600_000).astype(np.int64)
    order = np.lexsort((start, sb))
    start = start[order]  # sb is already sorted, so sb[order] == sb
    stype = btype[sb]
    focus = rng.random(S) < P["category_focus"][stype]
    scat = np.where(focus, home[sb], np.minimum(np.searchsorted(cdf, rng.random(S), side="right"), n_cat - 1))

    ev = simulate_sessions(
        stype, scat, P, cat.cat_popularity, cat.cat_start, cat.query_start, rng,
        cfg.max_session_steps, cfg.max_cart_items, cfg.max_dwell_minutes * 60.0, price_factor,
    )
    # Enforce the inactivity gap: s_k = max(t_k, s_{k-1} + dur_{k-1} + gap), per buyer, vectorised
    # as s_k = D_k + cummax_j<=k (t_j - D_j) with D the exclusive per-buyer cumsum of (dur + gap).
    d = ev.duration_ms + int(cfg.session_gap_minutes * 60_000)
    cs = np.cumsum(d)
    grp_start = np.flatnonzero(is_first)
    D = cs - d - np.repeat(cs[grp_start] - d[grp_start], n_sess)
    big = np.int64(1) << 44
    v = start - D + (np.int64(1) << 40) + sb.astype(np.int64) * big
    start = np.maximum.accumulate(v) - sb.astype(np.int64) * big - (np.int64(1) << 40) + D

    # Sessions pushed past the observation window are not observed (each buyer keeps a prefix,
    # at least its first session, which starts inside the window by construction).
    keep = start < cfg.days * DAY_MS
    em = keep[ev.session]
    e_s = ev.session[em]
    etype, product, category, query, quantity = (x[em] for x in (ev.etype, ev.product, ev.category, ev.query, ev.quantity))
    ts_ms = t0_ms + start[e_s] + ev.offset_ms[em]
    k = np.arange(S) - np.repeat(grp_start, n_sess)  # session rank within buyer, chronological
    kw = max(2, len(str(cfg.max_sessions - 1)))
    sess_ids = pc.binary_join_element_wise(
        buyer_ids.take(pa.array(sb)), pc.utf8_lpad(pc.cast(pa.array(k), pa.string()), kw, "0"), "-"
    )
    idx = pa.array(e_s)
    n_ev = len(e_s)
    p_null = product < 0
    arrays = {
        "shop_id": pa.array([shop.shop_id], pa.string()).take(pa.array(np.zeros(n_ev, dtype=np.int64))),
        "buyer_id": buyer_ids.take(pa.array(sb[e_s])),
        "session_id": sess_ids.take(idx),
        "ts": pa.array(ts_ms * 1000, pa.timestamp("us", tz="UTC")),
        "event_type": pa.array(EVENT_TYPES, pa.string()).take(pa.array(etype.astype(np.int64))),
        "product_id": cat.product_ids.take(pa.array(np.where(p_null, 0, product), mask=p_null)),
        "collection_id": pa.array(cat.categories, pa.string()).take(pa.array(np.maximum(category, 0), mask=category < 0)),
        "query": cat.queries.take(pa.array(np.maximum(query, 0), mask=query < 0)),
        "price": pa.array(_prices(cat.price, price_factor)[np.where(p_null, 0, product)], pa.float64(), mask=p_null),
        "quantity": pa.array(quantity, pa.int32(), mask=quantity == 0),
    }
    events = pa.Table.from_arrays([arrays[c] for c in EVENT_COLUMNS], schema=EVENT_SCHEMA)
    if cfg.file_format == "csv":
        events = events.set_column(EVENT_COLUMNS.index("ts"), "ts", format_ts(ts_ms))
    names = [t.name for t in cfg.types]
    truth = pa.table(
        {
            "shop_id": pa.array([shop.shop_id] * B, pa.string()),
            "buyer_id": buyer_ids,
            "type": pa.array(names, pa.string()).take(pa.array(btype)),
        }
    )
    counts = np.bincount(etype, minlength=len(EVENT_TYPES))
    return events, truth, counts, int(keep.sum())


def _prices(price: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
    """Catalog prices, or an A/B arm's changed prices (rounded to cents, as the storefront serves them)."""
    return price if factor is None else np.round(price * factor, 2)


def _ordered(fn, tasks, threads: int):
    """`map(fn, tasks)` in order, with at most `threads + 1` chunks in flight."""
    if threads <= 1:
        for t in tasks:
            yield fn(*t)
        return
    with ThreadPoolExecutor(threads) as ex:
        q: collections.deque = collections.deque()
        for t in tasks:
            q.append(ex.submit(fn, *t))
            if len(q) > threads:
                yield q.popleft().result()
        while q:
            yield q.popleft().result()


def run(cfg: SynthConfig, run_dir: Path) -> dict:
    """Generate shops, catalogs, buyers and events into `run_dir`; return a summary dict."""
    _check(cfg)
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    (run_dir / "truth").mkdir(parents=True, exist_ok=True)
    P = type_table(cfg.types)
    shops = _plan_shops(cfg)
    id_width = max(6, len(str(cfg.buyers - 1)))
    d0 = dt.datetime.fromisoformat(cfg.start_date).replace(tzinfo=dt.timezone.utc)
    t0_ms = int(d0.timestamp() * 1000)

    pq.write_table(pa.concat_tables([s.catalog.table for s in shops]), run_dir / "catalog.parquet")
    events_path = run_dir / ("events.csv" if cfg.file_format == "csv" else "events.parquet")
    for stale in (run_dir / "events.csv", run_dir / "events.parquet"):
        if stale != events_path and stale.exists():
            stale.unlink()
    truth_writer = pq.ParquetWriter(run_dir / "truth" / "buyers.parquet", pa.schema([("shop_id", pa.string()), ("buyer_id", pa.string()), ("type", pa.string())]))
    if cfg.file_format == "csv":
        fh = open(events_path, "wb")
        fh.write((",".join(EVENT_COLUMNS) + "\n").encode())
        csv_schema = EVENT_SCHEMA.set(EVENT_COLUMNS.index("ts"), pa.field("ts", pa.string(), nullable=False))
        writer = pacsv.CSVWriter(fh, csv_schema, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"))
    else:
        fh = None
        writer = pq.ParquetWriter(events_path, EVENT_SCHEMA)
    counts = np.zeros(len(EVENT_TYPES), dtype=np.int64)
    n_sessions = 0
    tasks = [(cfg, P, s, c, id_width, t0_ms) for s in shops for c in range(len(s.chunk_seeds))]
    try:
        for events, truth, cnt, S in _ordered(_chunk, tasks, cfg.threads):
            writer.write_table(events)
            truth_writer.write_table(truth)
            counts += cnt
            n_sessions += S
    finally:
        writer.close()
        truth_writer.close()
        if fh is not None:
            fh.close()

    names = [t.name for t in cfg.types]
    rows = []
    for s in shops:
        realized = np.bincount(s.types, minlength=len(names)) / len(s.types)
        for j, name in enumerate(names):
            rows.append((s.shop_id, name, float(s.mix[j]), float(realized[j])))
    pq.write_table(
        pa.table({k: [r[i] for r in rows] for i, k in enumerate(("shop_id", "type", "configured_share", "realized_share"))}),
        run_dir / "truth" / "shops.parquet",
    )
    (run_dir / "truth" / "types.json").write_text(json.dumps([dataclasses.asdict(t) for t in cfg.types], indent=2) + "\n")
    (run_dir / "SYNTHETIC.txt").write_text(
        "SYNTHETIC DATA. Every shop, product, buyer and event in this folder was generated by\n"
        f"`simpersona synth` (seed {cfg.seed}); none comes from real people. The true buyer types and\n"
        "shop mixes are in truth/; see meta.json for the full configuration.\n"
    )
    seconds = time.perf_counter() - t_start
    summary = {
        "out": str(run_dir),
        "events_file": events_path.name,
        "shops": cfg.shops,
        "buyers": cfg.buyers,
        "products": int(sum(len(s.catalog.price) for s in shops)),
        "sessions": int(n_sessions),
        "events": int(counts.sum()),
        "events_by_type": {t: int(c) for t, c in zip(EVENT_TYPES, counts)},
        "seconds": round(seconds, 2),
    }
    write_meta(run_dir, STAGE, cfg, summary=summary)
    return summary


def format_summary(s: dict) -> str:
    """One paragraph for the terminal."""
    by_type = ", ".join(f"{k} {v:,}" for k, v in s["events_by_type"].items())
    return (
        f"synth: wrote {s['events']:,} SYNTHETIC events to {s['out']}/{s['events_file']} from {s['shops']} shops, "
        f"{s['buyers']:,} buyers, {s['sessions']:,} sessions and {s['products']:,} products ({by_type}) "
        f"in {s['seconds']:.1f} s; ground truth in {s['out']}/truth/."
    )
