"""`simpersona traces`: real sessions → goals → replay on the storefront → judge → SFT JSONL.

    simpersona traces --ingest INGEST_DIR --features FEAT_DIR --personas PERSONAS_DIR --out TRACES_DIR

Steps: (1) candidate sessions from FEAT_DIR/buyer_sessions.parquet with the buyer's stratum
(buyers.parquet) and persona code (PERSONAS_DIR/assignments.parquet), of the run's TRAINING shops
only (`split`: the main job's split/shops.json); (2) `contracts.split.sample_sessions` picks whole
sessions so every code is represented and the corpus stays small;
(3) their events (INGEST_DIR/events.parquet ⋈ catalog.parquet) are rebuilt in time order and
turned into goals (record goals: stage 1 neutral, stage 2 buy/browse intent; the navigation plan
only for the replay and the judge); (4) each is replayed on an
in-process storefront of INGEST_DIR/catalog.parquet and judged from the storefront's own log;
codes that lost sessions to the judge are refilled from their unused sessions (`refill_rounds`);
(5) kept trajectories become records (`contracts.records.records_from_trajectory`, persona = the
buyer's code), split into SFT train/validation by shop (`contracts.split.validation_shops`).

TRACES_DIR/
  traces.jsonl            every record, both stages
  stage1/train.jsonl, stage1/val.jsonl   intent-neutral records, split by shop (what `simpersona
                          sft --data TRACES_DIR` trains and validates on)
  stage2/train.jsonl, stage2/val.jsonl   buy/browse records, same shops on each side
  sessions.parquet        per tried session: key, code, stratum, record goals, navigation plan, steps,
                          kept, reason
  summary.json, meta.json
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from simpersona.chat import EndpointConfig
from simpersona.config import ConfigError, write_meta
from simpersona.contracts.labels import EVENT_TYPES
from simpersona.contracts.split import load_split, sample_sessions, validation_shops
from simpersona.storefront.config import StorefrontConfig
from simpersona.traces.goals import Event, Session, make_goals

# Funnel order: ties on the timestamp are broken by it (a purchase logged in the same instant as
# its checkout start comes after it).
ORDER = EVENT_TYPES


@dataclass
class TraceSampleConfig:
    # at most this many sessions per persona code (0: no cap)
    max_sessions_per_code: int = 20
    # at least min(available, this) sessions per code
    min_sessions_per_code: int = 5
    # total session budget (0: every session under the per-code cap)
    target_sessions: int = 400
    # share of the training SHOPS whose records validate SFT (never the run's evaluation shops)
    val_fraction: float = 0.15
    # seed of the sampling, the refills and the shop split
    seed: int = 0


@dataclass
class TracesConfig:
    # ingest folder: events.parquet, catalog.parquet
    ingest: Path | None = None
    # FEAT_DIR: buyer_sessions.parquet, buyers.parquet
    features: Path | None = None
    # personas folder: assignments.parquet (shop_id, buyer_id, code)
    personas: Path | None = None
    # the run's shop split (split/shops.json): only training shops' sessions become traces (None: every shop)
    split: Path | None = None
    # session sampling (per persona code) and the train/validation split by shop
    sample: TraceSampleConfig = field(default_factory=TraceSampleConfig)
    # sessions with fewer non-page-view events are not candidates (0 keeps bounces)
    min_actions: int = 0
    # sessions with more non-page-view events are not candidates (they would not fit max_steps)
    max_actions: int = 12
    # pages of search results the replay looks through to find a product by its title
    result_pages: int = 3
    # rounds of refilling codes whose sessions the judge dropped
    refill_rounds: int = 2
    # the storefront the sessions are replayed on (its env.max_steps is the replay's step budget)
    storefront: StorefrontConfig = field(default_factory=StorefrontConfig)
    # rewrite the navigation goals through the LLM endpoint (template on any failure)
    rewrite_goals: bool = False
    # ask the LLM endpoint to confirm every trajectory the rules keep
    llm_judge: bool = False
    # the OpenAI-compatible endpoint for rewrite_goals / llm_judge (off while url is "")
    llm: EndpointConfig = field(default_factory=EndpointConfig)
    # print progress every this many replayed sessions (0: quiet)
    progress_every: int = 0


def _need(path: Path | None, name: str, flag: str) -> Path:
    if path is None:
        raise ConfigError(f"traces needs {flag} (traces.{flag.strip('-')})")
    p = Path(path) / name
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist ({flag} must be the folder holding {name})")
    return p


def candidates(cfg: TracesConfig, con) -> pa.Table:
    """One row per candidate session: shop_id, buyer_id, session_id, code, stratum."""
    bs = _need(cfg.features, "buyer_sessions.parquet", "--features")
    buyers = _need(cfg.features, "buyers.parquet", "--features")
    assign = _need(cfg.personas, "assignments.parquet", "--personas")
    for path, cols in ((bs, ("shop_id", "buyer_id", "session_id", "n_events", "n_page_view")),
                       (buyers, ("shop_id", "buyer_id", "stratum")), (assign, ("shop_id", "buyer_id", "code"))):
        missing = sorted(set(cols) - set(pq.read_schema(path).names))
        if missing:
            raise ConfigError(f"{path}: missing column(s) {missing}")
    return con.sql(f"""
        SELECT s.shop_id, s.buyer_id, s.session_id, CAST(a.code AS INTEGER) AS code, b.stratum
        FROM read_parquet('{bs}') s
        JOIN read_parquet('{buyers}') b USING (shop_id, buyer_id)
        JOIN read_parquet('{assign}') a USING (shop_id, buyer_id)
        WHERE s.n_events - coalesce(s.n_page_view, 0) BETWEEN {int(cfg.min_actions)} AND {int(cfg.max_actions)}
        ORDER BY s.shop_id, s.buyer_id, s.session_id""").to_arrow_table()


def load_sessions(cfg: TracesConfig, con, chosen: list[dict]) -> dict[str, Session]:
    """The chosen sessions' events in time order, joined with the catalog, plus the buyers'
    collections by frequency (the category fallback). Keyed by Session.key."""
    events = _need(cfg.ingest, "events.parquet", "--ingest")
    catalog = _need(cfg.ingest, "catalog.parquet", "--ingest")
    split = [r["ids"] for r in chosen]
    keys = pa.table({c: [k[i] for k in split] for i, c in enumerate(("shop_id", "buyer_id", "session_id"))})
    con.register("chosen_keys", keys)
    # ties on the timestamp break in funnel order (a purchase logged in the same instant as its checkout start comes after it)
    order = " ".join(f"WHEN '{k}' THEN {i}" for i, k in enumerate(EVENT_TYPES))
    rows = con.sql(f"""
        WITH cat AS (SELECT shop_id, product_id, any_value(title) AS title, any_value(collection) AS collection,
                            any_value(price) AS cat_price
                     FROM read_parquet('{catalog}') GROUP BY shop_id, product_id)
        SELECT e.shop_id, e.buyer_id, e.session_id, e.ts, e.event_type, e.product_id, e.collection_id, e.query,
               coalesce(e.price, cat.cat_price) AS price, e.quantity, cat.title, cat.collection
        FROM read_parquet('{events}') e
        JOIN chosen_keys k USING (shop_id, buyer_id, session_id)
        LEFT JOIN cat USING (shop_id, product_id)
        ORDER BY e.shop_id, e.buyer_id, e.session_id, e.ts, CASE e.event_type {order} ELSE 99 END,
                 e.product_id, e.collection_id, e.query, e.price, e.quantity""").to_arrow_table()  # a total order
    rows = zip(*(rows.column(c).to_pylist() for c in rows.column_names))
    meta = {r["ids"]: r for r in chosen}
    out: dict[str, Session] = {}
    for shop, buyer, sess, ts, kind, pid, coll_id, query, price, qty, title, coll in rows:
        key = (shop, buyer, sess)
        s = out.get(":".join(key))
        if s is None:
            m = meta[key]
            s = out[":".join(key)] = Session(shop, buyer, sess, [], int(m["persona"]), str(m["stratum"]))
        s.events.append(Event(kind, ts, pid, coll_id, query, price, int(qty) if qty is not None else None, title, coll))
    bs = _need(cfg.features, "buyer_sessions.parquet", "--features")
    if "collections" in pq.read_schema(bs).names:
        hist = con.sql(f"""
            WITH b AS (SELECT DISTINCT shop_id, buyer_id FROM chosen_keys),
                 c AS (SELECT s.shop_id, s.buyer_id, unnest(s.collections) AS c
                       FROM read_parquet('{bs}') s JOIN b USING (shop_id, buyer_id))
            SELECT shop_id, buyer_id, c, count(*) AS n FROM c GROUP BY ALL ORDER BY shop_id, buyer_id, n DESC, c""").to_arrow_table().to_pylist()
        by_buyer: dict[tuple, list[str]] = defaultdict(list)
        for h in hist:
            by_buyer[(h["shop_id"], h["buyer_id"])].append(h["c"])
        for s in out.values():
            s.history = by_buyer.get((s.shop_id, s.buyer_id), [])
    con.unregister("chosen_keys")
    return out


def _pick(pool: list[dict], max_per_code: int, min_per_code: int, target: int, seed: int) -> list[dict]:
    """`sample_sessions` over one pseudo-record per session (it keeps whole sessions by key)."""
    return sample_sessions(pool, max_per_code, min_per_code, target, seed)


def run(cfg: TracesConfig, run_dir: Path) -> dict:
    """Sample, build goals, replay, judge, write records; returns the summary."""
    import duckdb

    from simpersona.contracts.persona import persona_token
    from simpersona.contracts.records import records_from_trajectory, write_trace_split
    from simpersona.traces.judge import logged_lines, rule_verdict
    from simpersona.traces.llm import LLMClient, LLMError
    from simpersona.traces.replay import Replayer, stage_steps

    if (cfg.rewrite_goals or cfg.llm_judge) and not cfg.llm.url:
        raise ConfigError("traces.rewrite_goals / traces.llm_judge need traces.llm.url (an OpenAI-compatible endpoint)")
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    cand = candidates(cfg, con)
    split = load_split(cfg.split)
    if split is not None:  # evaluation shops' sessions never become traces
        cand = cand.filter(pa.array([s not in set(split.eval) for s in cand.column("shop_id").to_pylist()], pa.bool_()))
    all_codes = sorted(set(pq.read_table(_need(cfg.personas, "assignments.parquet", "--personas"), columns=["code"]).column("code").to_pylist()))
    # one pseudo-record per session, in the shape `sample_sessions` reads
    pool = [{"session_key": ":".join(k), "persona": int(c), "shop_id": k[0], "stratum": st, "ids": tuple(k)}
            for *k, c, st in zip(*(cand.column(n).to_pylist() for n in ("shop_id", "buyer_id", "session_id", "code", "stratum")))]
    by_code: dict[int, list[dict]] = defaultdict(list)
    for r in pool:
        by_code[r["persona"]].append(r)
    if not pool:
        raise ConfigError(f"no candidate sessions in {cfg.features} with {cfg.min_actions}–{cfg.max_actions} actions and a persona code")
    sc = cfg.sample
    replayer = Replayer(_need(cfg.ingest, "catalog.parquet", "--ingest"), cfg.storefront, cfg.result_pages)
    client = LLMClient(cfg.llm) if (cfg.rewrite_goals or cfg.llm_judge) else None
    counts: Counter = Counter()
    reasons: Counter = Counter()
    skipped: Counter = Counter()
    report: list[dict] = []
    records: list[dict] = []
    kept_per_code: Counter = Counter()
    tried: set[str] = set()
    replay_s = 0.0

    def process(batch: list[dict]) -> None:
        nonlocal replay_s
        sessions = load_sessions(cfg, con, batch)
        for r in batch:
            tried.add(r["session_key"])
            s = sessions.get(r["session_key"])
            if s is None or not replayer.has_shop(r["shop_id"]):
                reasons["no_events_or_shop"] += 1
                counts["dropped"] += 1
                continue
            goals = make_goals(s)
            if cfg.rewrite_goals:
                try:
                    goals = make_goals(s, client.rewrite_goal(s, goals))
                    counts["goals_rewritten"] += 1
                except LLMError:
                    counts["rewrite_fallbacks"] += 1
            t = time.perf_counter()
            traj = replayer.replay(s, goals.intent, persona_token(s.code))
            replay_s += time.perf_counter() - t
            counts["replayed"] += 1
            skipped.update(traj.skipped)
            kept, reason = rule_verdict(s, traj)
            if kept and cfg.llm_judge:
                try:
                    ok, _why = client.judge(f"{goals.intent} {goals.navigation}", s, logged_lines(traj))
                    counts["llm_judged"] += 1
                    if not ok:
                        kept, reason = False, "llm_judge_rejected"
                except LLMError:
                    counts["llm_judge_failures"] += 1
            report.append({"session_key": s.key, "shop_id": s.shop_id, "code": s.code, "stratum": s.stratum,
                           "events": len(s.events), "steps": len(traj.steps), "kept": kept, "reason": reason,
                           "goal_stage1": goals.neutral, "goal_stage2": goals.intent,
                           "navigation": goals.navigation})
            if not kept:
                counts["dropped"] += 1
                reasons[reason] += 1
                continue
            counts["kept"] += 1
            kept_per_code[s.code] += 1
            for stage in (1, 2):
                meta = {"shop_id": s.shop_id, "session_key": s.key, "stratum": s.stratum, "stage": stage}
                records.extend(records_from_trajectory(goals.for_stage(stage), s.code, stage_steps(traj, stage, goals), meta))
            if cfg.progress_every and counts["replayed"] % cfg.progress_every == 0:
                print(f"[traces] replayed {counts['replayed']}, kept {counts['kept']}", flush=True)

    try:
        first = _pick(pool, sc.max_sessions_per_code, sc.min_sessions_per_code, sc.target_sessions, sc.seed)
        wanted = Counter(r["persona"] for r in first)
        process(first)
        for rnd in range(1, cfg.refill_rounds + 1):
            refill = []
            for code, n in sorted(wanted.items()):
                deficit = n - kept_per_code[code]
                rest = [r for r in by_code[code] if r["session_key"] not in tried]
                if deficit > 0 and rest:
                    refill += _pick(rest, deficit, deficit, 0, sc.seed + rnd)
            if not refill:
                break
            counts["refilled"] += len(refill)
            process(refill)
    finally:
        replayer.close()
        if client is not None:
            client.close()

    if split is not None:
        split.check_training({r["shop_id"] for r in records}, "traces")
    val_shops = validation_shops({r["shop_id"] for r in records}, sc.val_fraction, sc.seed)
    train = [r for r in records if r["shop_id"] not in val_shops]
    val = [r for r in records if r["shop_id"] in val_shops]
    n_written = write_trace_split(run_dir, train, val)
    pq.write_table(pa.Table.from_pylist(report, schema=pa.schema([
        ("session_key", pa.string()), ("shop_id", pa.string()), ("code", pa.int32()), ("stratum", pa.string()),
        ("events", pa.int32()), ("steps", pa.int32()), ("kept", pa.bool_()), ("reason", pa.string()),
        ("goal_stage1", pa.string()), ("goal_stage2", pa.string()), ("navigation", pa.string())])),
        run_dir / "sessions.parquet")
    wall = time.perf_counter() - t0
    steps = [r["steps"] for r in report if r["kept"]]
    summary = {
        "candidates": len(pool),
        "tried": len(tried),
        "replayed": counts["replayed"],
        "kept": counts["kept"],
        "dropped": counts["dropped"],
        "dropped_by_reason": dict(reasons.most_common()),
        "skipped_events": dict(skipped.most_common()),
        "refilled": counts["refilled"],
        "goals": {"rewritten": counts["goals_rewritten"], "rewrite_fallbacks": counts["rewrite_fallbacks"]},
        "llm_judge": {"judged": counts["llm_judged"], "failures": counts["llm_judge_failures"]},
        "records": {f"stage{s}": {side: n_written[f"stage{s}_{side}"] for side in ("train", "val")} for s in (1, 2)},
        "records_total": n_written["all"],
        "steps_per_kept_session": {"mean": round(sum(steps) / len(steps), 2) if steps else 0.0, "max": max(steps, default=0)},
        "shops": {"train": sorted({r["shop_id"] for r in train}), "val": sorted({r["shop_id"] for r in val})},
        "codes": {"with_buyers": len(all_codes), "with_candidates": len(by_code),
                  "covered": len(kept_per_code), "sessions_per_code": {str(c): kept_per_code[c] for c in sorted(kept_per_code)}},
        "wall_s": round(wall, 2),
        "replay_s": round(replay_s, 2),
        "traces_per_min": round(60 * counts["replayed"] / replay_s, 1) if replay_s > 0 else 0.0,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_meta(run_dir, "traces", cfg, summary=summary)
    return summary


def format_summary(summary: dict) -> str:
    r = summary["records"]
    return (f"traces: replayed {summary['replayed']} sessions, kept {summary['kept']}, dropped {summary['dropped']} "
            f"{summary['dropped_by_reason']}; records stage1 {r['stage1']}, stage2 {r['stage2']}; "
            f"codes covered {summary['codes']['covered']}/{summary['codes']['with_candidates']}; "
            f"{summary['traces_per_min']:.0f} traces/min of replay, {summary['wall_s']:.1f}s in all")
