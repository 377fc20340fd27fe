"""The fast persona policy: per persona code, the real clickstream's next-event and stop
probabilities given the page type, executed on the storefront (or rolled out alone).

States (the page the buyer is on, from the previous event, or from the URL in simulation):
    start (session entry), home, collection, search, product, cart, checkout, order
Next events: the 8 canonical event types and `stop`. An event leads to the state
    page_view → home, collection_view → collection, search → search, product_view → product,
    add_to_cart / remove_from_cart → cart (the storefront shows the cart after both),
    checkout_start → checkout, purchase → order.

Fitting (`fit_intent_counts`, DuckDB over ingest's events.parquet ⋈ personas' assignments.parquet,
on the training shops only when `shops` is given): counts n_{k,i}[s, a] of (state, next event) per
code k and intent i, each session's last event followed by `stop` (events ordered by time, ties
in funnel order, `EVENT_ORDER_SQL`). The intent is the buyer's, as simulation and SFT give it:
"buy" when the buyer's stratum is A–C (a cart, checkout or purchase event in the shop), else
"browse". `fit_counts` sums the intents out. Smoothing (`smooth`) with a global back-off:
    p_g(a|s) = (n_g[s,a] + α) / (n_g[s] + α·A),   p_k(a|s) = (n_k[s,a] + m·p_g(a|s)) / (n_k[s] + m)
    p_i(a|s) = (n_i[s,a] + m·p_g(a|s)) / (n_i[s] + m)
    p_{k,i}(a|s) = (n_{k,i}[s,a] + m·b(a|s)) / (n_{k,i}[s] + m),  b ∝ p_k·p_i / p_g (`combine`)
with n_g the counts over all codes; the no-persona policy is p_g itself (row K of `probs`), or
p_i when the goal states an intent. `PolicyModel.table(code, intent)` picks the table.

`PolicyAgent` reads the intent from its goal ("to buy" / "to browse", `intent_of`), samples a
target event from p_{k,i}(·|page type) and takes the fewest storefront
actions that produce it (a product view from a page without products searches the goal's topic
first; a purchase opens the checkout, fills the six fields — continuing past a two-step checkout's
e-mail page — and places the order), then samples
again; `stop` ends the session (self-reported goal reached). `rollout` samples sessions from the
page-type model alone, vectorised (no storefront): event counts per session (`rollout_events`: the
event sequences).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from simpersona.agents.base import Decision
from simpersona.contracts import storefront as V
from simpersona.contracts.goals import parse_goal
from simpersona.contracts.labels import EVENT_TYPES
from simpersona.contracts.storefront import CHECKOUT_VALUES, elements, page_type

STATES: tuple[str, ...] = ("start", *V.PAGE_TYPES)
EVENTS: tuple[str, ...] = (*EVENT_TYPES, "stop")
STOP = EVENTS.index("stop")
INTENTS: tuple[str, ...] = ("buy", "browse")
# how events of one session are ordered, as a DuckDB ORDER BY: time, funnel order, then the event's
# other fields (a total order: events in the same second never take the file's row order)
EVENT_ORDER_SQL = ("ts, CASE event_type " + " ".join(f"WHEN '{e}' THEN {i}" for i, e in enumerate(EVENTS[:-1]))
                   + " ELSE 9 END, product_id, collection_id, query, price, quantity")
EVENT_STATE: dict[str, str] = {"page_view": "home", "collection_view": "collection", "search": "search",
                               "product_view": "product", "add_to_cart": "cart", "remove_from_cart": "cart",
                               "checkout_start": "checkout", "purchase": "order"}
NEXT_STATE = np.array([STATES.index(EVENT_STATE[e]) if e != "stop" else 0 for e in EVENTS])  # (A,)


def smooth(counts: np.ndarray, global_counts: np.ndarray, strength: float, alpha: float) -> np.ndarray:
    """Back-off smoothing: counts (..., S, A) and global counts (S, A) → probabilities (..., S, A).

    >>> p = smooth(np.array([[4.0, 0.0]]), np.array([[1.0, 1.0]]), strength=2.0, alpha=0.0)
    >>> p.round(3).tolist()
    [[0.833, 0.167]]
    """
    a = global_counts.shape[-1]
    pg = (global_counts + alpha) / (global_counts.sum(-1, keepdims=True) + alpha * a)  # (S, A)
    return (counts + strength * pg) / (counts.sum(-1, keepdims=True) + strength)


def combine(p_code: np.ndarray, p_intent: np.ndarray, p_global: np.ndarray) -> np.ndarray:
    """The back-off of a (code, intent) cell: p_k·p_i / p_g renormalised over the last axis (the
    code's and the intent's effects taken as independent).

    >>> combine(np.array([0.5, 0.5]), np.array([0.8, 0.2]), np.array([0.5, 0.5])).tolist()
    [0.8, 0.2]
    """
    b = p_code * p_intent / np.maximum(p_global, 1e-12)
    return b / b.sum(-1, keepdims=True)


def intent_of(goal: str) -> str | None:
    """The intent of a goal sentence (`contracts.goals.parse_goal`): "buy", "browse", or None (a
    neutral goal, or an instruction).

    >>> intent_of("You are here to buy wool socks."), intent_of("You are interested in socks.")
    ('buy', None)
    """
    parsed = parse_goal(goal or "")
    return parsed[0] if parsed is not None and parsed[0] in INTENTS else None


class PolicyModel:
    """codes (K,) int, counts (K, S, A) or per intent (K, I, S, A) (I = len(INTENTS));
    probs (K+1, S, A) with row K the population-wide policy; tables (K+1, I+1, S, A) with column I
    "no intent" (= probs). Without per-intent counts every column is `probs`. `shops`: the shops
    the counts came from (the evaluation guard checks them)."""

    def __init__(self, codes: np.ndarray, counts: np.ndarray, strength: float = 5.0, alpha: float = 0.1,
                 shops: tuple[str, ...] | list[str] = ()):
        self.codes = np.asarray(codes, dtype=np.int64)
        self.counts = np.asarray(counts, dtype=np.float64)
        self.shops = tuple(sorted(str(s) for s in shops))
        n_k = self.counts.sum(1) if self.counts.ndim == 4 else self.counts  # (K, S, A)
        g = n_k.sum(0)  # (S, A)
        a = len(EVENTS)
        pg = (g + alpha) / np.maximum(g.sum(-1, keepdims=True) + alpha * a, 1e-12)  # (S, A)
        pg[pg.sum(-1) == 0] = 1.0 / a  # a state never seen and α = 0: uniform
        self.probs = np.concatenate([smooth(n_k, g, strength, alpha), pg[None]], 0)  # (K+1, S, A)
        k, n_i = len(self.codes), len(INTENTS)
        self.tables = np.repeat(self.probs[:, None], n_i + 1, 1)  # (K+1, I+1, S, A)
        if self.counts.ndim == 4:
            p_i = (self.counts.sum(0) + strength * pg) / (self.counts.sum(0).sum(-1, keepdims=True) + strength)  # (I, S, A)
            back = combine(self.probs[:k, None], p_i[None], pg)  # (K, I, S, A)
            self.tables[:k, :n_i] = (self.counts + strength * back) / (self.counts.sum(-1, keepdims=True) + strength)
            self.tables[k, :n_i] = p_i
        self.strength, self.alpha = strength, alpha
        self._row = {int(c): i for i, c in enumerate(self.codes)}

    def row(self, code: int | None) -> int:
        """Index into `probs`: the code's row, or the population-wide row K (None or an unseen code)."""
        return self._row.get(int(code), len(self.codes)) if code is not None else len(self.codes)

    def column(self, intent: str | None) -> int:
        """Index into `tables`' intent axis: the intent's column, or I (None: no intent)."""
        return INTENTS.index(intent) if intent in INTENTS else len(INTENTS)

    def table(self, code: int | None, intent: str | None) -> np.ndarray:
        """p(next event | page type) (S, A) of a code (None: population-wide) and an intent (None: none)."""
        return self.tables[self.row(code), self.column(intent)]

    def save(self, path: Path) -> None:
        np.savez(path, codes=self.codes, counts=self.counts, strength=self.strength, alpha=self.alpha,
                 states=np.array(STATES), events=np.array(EVENTS), intents=np.array(INTENTS), shops=np.array(self.shops, dtype=str))

    @classmethod
    def load(cls, path: Path) -> "PolicyModel":
        z = np.load(path)
        if tuple(z["states"]) != STATES or tuple(z["events"]) != EVENTS:
            raise ValueError(f"{path}: states/events differ from this version's")
        if z["counts"].ndim == 4 and tuple(z["intents"]) != INTENTS:
            raise ValueError(f"{path}: intents differ from this version's")
        shops = tuple(z["shops"].tolist()) if "shops" in z.files else ()
        return cls(z["codes"], z["counts"], float(z["strength"]), float(z["alpha"]), shops)


def fit_intent_counts(events_path: Path, assignments_path: Path, threads: int = 2, shops: list[str] | None = None,
                      labels_sql: str | None = None, sessions_sql: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(codes (K,), counts (K, I, S, A)) from real events and persona assignments; only the events
    of `shops` when given (the training shops). `labels_sql`: a relation (shop_id, buyer_id, code,
    intent) used instead of the assignments and the buyers' own intents (a buyer whose code is NULL
    is left out); `sessions_sql`: a relation (shop_id, buyer_id, session_id), the only sessions counted."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads={int(threads)}")
    where = ""
    if shops is not None:
        con.execute("CREATE TEMP TABLE keep AS SELECT unnest($1::VARCHAR[]) AS shop_id", [list(shops)])
        where = "WHERE shop_id IN (SELECT shop_id FROM keep)"
    labels = labels_sql or f"SELECT shop_id, buyer_id, a.code, b.intent FROM read_parquet('{assignments_path}') a JOIN buyer b USING (shop_id, buyer_id)"
    only = f"WHERE (shop_id, buyer_id, session_id) IN (SELECT (shop_id, buyer_id, session_id) FROM ({sessions_sql}))" if sessions_sql else ""
    rows = con.execute(f"""
        WITH e0 AS (SELECT * FROM read_parquet('{events_path}') {where}),
        buyer AS (
          SELECT shop_id, buyer_id, CASE WHEN bool_or(event_type IN ('add_to_cart', 'remove_from_cart', 'checkout_start',
                 'purchase')) THEN 'buy' ELSE 'browse' END AS intent FROM e0 GROUP BY ALL),
        l AS (SELECT * FROM ({labels}) WHERE code IS NOT NULL),
        e AS (SELECT * FROM e0 {only}),
        ev AS (
          SELECT l.code, l.intent, e.event_type,
                 lag(e.event_type) OVER w AS prev, lead(e.event_type) OVER w AS nxt
          FROM e JOIN l USING (shop_id, buyer_id)
          WINDOW w AS (PARTITION BY e.shop_id, e.buyer_id, e.session_id ORDER BY {EVENT_ORDER_SQL}))
        SELECT code, intent, coalesce(prev, 'start') AS s, event_type AS a, count(*) FROM ev GROUP BY ALL
        UNION ALL
        SELECT code, intent, event_type AS s, 'stop' AS a, count(*) FROM ev WHERE nxt IS NULL GROUP BY ALL""").fetchall()
    con.close()
    codes = np.array(sorted({int(r[0]) for r in rows}), dtype=np.int64)
    at = {int(c): i for i, c in enumerate(codes)}
    counts = np.zeros((len(codes), len(INTENTS), len(STATES), len(EVENTS)))
    for code, intent, s, a, n in rows:
        state = "start" if s == "start" else EVENT_STATE.get(s)
        if state is None or a not in EVENTS:
            continue
        counts[at[int(code)], INTENTS.index(intent), STATES.index(state), EVENTS.index(a)] += n
    return codes, counts


def fit_counts(events_path: Path, assignments_path: Path, threads: int = 2,
               shops: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(codes (K,), counts (K, S, A)) from real events and persona assignments (intents summed out)."""
    codes, counts = fit_intent_counts(events_path, assignments_path, threads, shops)
    return codes, counts.sum(1)


def topic_of(goal: str) -> str:
    """The goal's object ("You are here to buy wool socks." → "wool socks"); an instruction's by pattern."""
    parsed = parse_goal(goal)
    if parsed is not None:
        return parsed[1]
    m = re.search(r"(?:interested in|to buy|to browse|look(?:ing)? for)\s+(.+?)[.!]?$", goal.strip(), re.I)
    return (m.group(1) if m else goal).strip() or "gift"


class PolicyAgent:
    """One episode of the fast persona policy (code None: the population-wide policy)."""

    backend = None

    def __init__(self, model: PolicyModel, rng: np.random.Generator, max_plan_steps: int = 10):
        self.model, self.rng, self.max_plan_steps = model, rng, max_plan_steps
        self.reset("", None)

    def reset(self, goal: str, persona: int | None) -> None:
        self.p = self.model.table(persona, intent_of(goal))  # (S, A)
        self.topic = topic_of(goal)
        self.target: str | None = None
        self.plan_steps = 0
        self.tries = 0

    def _sample(self, state: str) -> str:
        p = self.p[STATES.index(state)]
        return EVENTS[int(self.rng.choice(len(EVENTS), p=p / p.sum()))]

    def act(self, observation: dict[str, Any]) -> Decision:
        url = str(observation.get("url", ""))
        state = page_type(url)
        els = elements(str(observation.get("page", "")))
        for _ in range(8):
            if self.target is None:
                self.target, self.plan_steps, self.tries = self._sample(state), 0, 0
            if self.plan_steps >= self.max_plan_steps:  # stuck: give the target up
                self.target = None
                continue
            self.plan_steps += 1
            step = self._towards(self.target, state, els)
            if step is None:  # not possible here (e.g. remove from an empty cart): sample again
                self.target = None
                continue
            action, done = step
            note = f"towards {self.target}"
            if done:
                self.target = None
            return Decision(action, reasoning=note)
        return Decision({"action": "end_session", "goal_reached": False}, reasoning="no feasible next event")

    def _pick(self, ids: list[str]) -> str:
        words = set(self.topic.lower().split())
        return ids[int(self.rng.integers(len(ids)))] if not words else sorted(
            ids, key=lambda i: (-len(words & set(re.split(r"[/\-_ ]", i.lower()))), self.rng.random()))[0]

    def _towards(self, target: str, state: str, els: dict[str, tuple[str, str]]) -> tuple[dict, bool] | None:
        products = [i for i in els if i.startswith(V.PRODUCT_PREFIX)]
        home = {"action": "click", "element_id": V.NAV_HOME}
        if target == "stop":
            return {"action": "end_session", "goal_reached": True}, True
        if target == "page_view":
            return (home, True) if V.NAV_HOME in els else None
        if target == "collection_view":
            colls = [i for i in els if i.startswith(V.COLLECTION_PREFIX)]
            if colls:
                return {"action": "click", "element_id": self._pick(colls)}, True
            return (home, False) if V.NAV_HOME in els else None
        if target == "search":
            return ({"action": "search", "query": self.topic[:200]}, True) if V.SEARCH_BOX in els else None
        if target in ("product_view", "add_to_cart"):
            if target == "add_to_cart" and state == "product" and V.ADD_BUTTON in els:
                return {"action": "add_to_cart", "quantity": 1}, True
            if products:
                return {"action": "click", "element_id": products[int(self.rng.integers(len(products)))]}, target == "product_view"
            self.tries += 1
            if self.tries == 1 and V.SEARCH_BOX in els:
                return {"action": "search", "query": self.topic[:200]}, False
            return (home, False) if V.NAV_HOME in els and state != "home" else None
        if target == "remove_from_cart":
            removes = [i for i in els if i.startswith(V.REMOVE_PREFIX)]
            if state == "cart":
                return ({"action": "click", "element_id": removes[0]}, True) if removes else None
            return {"action": "view_cart"}, False
        if target == "checkout_start":
            return {"action": "checkout"}, True
        if target == "purchase":
            if state != "checkout":
                return {"action": "checkout"}, False
            if V.PLACE_ORDER not in els and V.CONTINUE_BUTTON not in els:
                return None  # empty cart: nothing to buy
            fid = V.next_empty_field(els)
            if fid is not None:
                return {"action": "fill", "element_id": fid, "value": CHECKOUT_VALUES[fid]}, False
            if V.PLACE_ORDER not in els:  # a two-step checkout's e-mail page
                return {"action": "click", "element_id": V.CONTINUE_BUTTON}, False
            return {"action": "click", "element_id": V.PLACE_ORDER}, True
        return None


def rollout(probs: np.ndarray, rows: np.ndarray, max_steps: int, rng: np.random.Generator) -> np.ndarray:
    """Sessions sampled from the page-type model alone (no storefront), vectorised: the event counts
    (n, A-1) of `rollout_events`' sequences (the same draws).

    >>> p = np.zeros((1, len(STATES), len(EVENTS))); p[:, :, STOP] = 1; p[0, 0] = 0; p[0, 0, 3] = 1
    >>> rollout(p, np.zeros(2, int), 30, np.random.default_rng(0))[:, 3].tolist()
    [1, 1]
    """
    seq = rollout_events(probs, rows, max_steps, rng).astype(np.int64)  # (n, T)
    n = len(rows)
    ok = seq >= 0
    return np.bincount(np.repeat(np.arange(n), ok.sum(1)) * STOP + seq[ok], minlength=n * STOP).reshape(n, STOP).astype(np.int32)


def rollout_events(probs: np.ndarray, rows: np.ndarray, max_events: int, rng: np.random.Generator) -> np.ndarray:
    """Event sequences sampled from the page-type model alone, vectorised: probs (R, S, A), rows (n,)
    → (n, max_events) int8 event indices, -1 after the session's end (`stop` is not written; a
    session still going after max_events is cut there).

    >>> p = np.zeros((1, len(STATES), len(EVENTS))); p[:, :, STOP] = 1; p[0, 0] = 0; p[0, 0, 3] = 1
    >>> rollout_events(p, np.zeros(2, int), 3, np.random.default_rng(0)).tolist()
    [[3, -1, -1], [3, -1, -1]]
    """
    n = len(rows)
    cum = probs.cumsum(-1)  # (R, S, A)
    cum[..., -1] = 1.0
    seq = np.full((n, max_events), -1, dtype=np.int8)
    state = np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    for t in range(max_events):
        idx = np.flatnonzero(alive)
        if len(idx) == 0:
            break
        a = (rng.random(len(idx))[:, None] > cum[rows[idx], state[idx]]).sum(1)  # (m,)
        go = a != STOP
        seq[idx[go], t] = a[go]
        alive[idx[~go]] = False
        state[idx] = NEXT_STATE[a]
    return seq
