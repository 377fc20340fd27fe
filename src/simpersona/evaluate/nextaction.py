"""Next-action prediction by the LLM agent (a local SFT checkpoint or an OpenAI-compatible
endpoint) on the storefront, for `evaluate fidelity` (`llm_agent: llm | endpoint`).

Each sampled real session of an evaluation shop (at most `llm_sessions`, drawn by a seeded hash
of its ids) is replayed on the in-process storefront step by step (`traces.replay.Replayer`, the
replay that makes the SFT records). Before every step the agent gets the REAL prefix: the page the
buyer was on, the progress log of the real steps so far (`LLMAgent.follow`), its goal (the
stage-2 record goal, `traces.goals.make_goals(…).intent`) and a persona token, and answers its
next action (batched through `agents.base.act_batch`). Conditions, same sessions and steps:
`persona` (the buyer's code), `no_persona` (profile "none"), `random_persona` (a code drawn
uniformly from the assigned codes, seeded), and `majority` (the most frequent action type of the
OTHER sessions' steps).

Scored in the storefront's action space (`action_type`, `action_target`): type accuracy (action
name; a click split by what it opens: product, collection, other), exact accuracy (type and
target: element id, normalised query, removed product, filled field and value), macro-F1 over the
action types present, and outcome F1 (none / cart / purchase) where the predicted outcome is the
furthest funnel step the agent's answers reach ALONG THE REAL PREFIX (an add_to_cart: cart; the
place-order submit: purchase) — teacher-forced, so it says whether the agent takes the buyer's
funnel steps where the buyer took them, not how a free episode would end. 95% CIs: percentile
bootstrap over sessions, differences persona − baseline paired. A failed answer (no valid
action) counts as a miss of type "invalid".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from simpersona.contracts import storefront as V

OUTCOMES: tuple[str, ...] = ("none", "cart", "purchase")
CONDITIONS: tuple[str, ...] = ("persona", "no_persona", "random_persona")


def action_type(action: dict[str, Any] | None) -> str:
    """An action's type: its name, a click split by the kind of element it opens.

    >>> action_type({"action": "click", "element_id": "product-p1"}), action_type({"action": "back"}), action_type(None)
    ('click:product', 'back', 'invalid')
    """
    if not action:
        return "invalid"
    name = str(action.get("action"))
    if name != "click":
        return name
    eid = str(action.get("element_id", ""))
    return "click:product" if eid.startswith(V.PRODUCT_PREFIX) else "click:collection" if eid.startswith(V.COLLECTION_PREFIX) else "click"


def action_target(action: dict[str, Any] | None) -> str:
    """What an action acts on: element id (+ value of a fill), normalised query, removed product;
    "" for actions whose target is the page itself (add_to_cart, view_cart, checkout, back, end).

    >>> action_target({"action": "search", "query": "  Red Skirt "}), action_target({"action": "fill", "element_id": "f", "value": "x"})
    ('red skirt', 'f=x')
    """
    if not action:
        return ""
    name = action.get("action")
    if name == "search":
        return " ".join(str(action.get("query", "")).lower().split())
    if name == "fill":
        return f"{action.get('element_id', '')}={action.get('value', '')}"
    if name in ("click", "submit"):
        return str(action.get("element_id", ""))
    if name == "remove_from_cart":
        return str(action.get("product_id", ""))
    return ""


def funnel_level(action: dict[str, Any] | None) -> int:
    """0 none, 1 cart (add_to_cart), 2 purchase (submit of the place-order button).

    >>> funnel_level({"action": "add_to_cart", "quantity": 1}), funnel_level({"action": "submit", "element_id": "place-order"})
    (1, 2)
    """
    if not action:
        return 0
    if action.get("action") == "submit" and action.get("element_id") == V.PLACE_ORDER:
        return 2
    return int(action.get("action") == "add_to_cart")


def score(true: list[list[dict]], pred: list[list[dict | None]], classes: list[str]) -> np.ndarray:
    """Per-session sufficient statistics (n, 3 + 3·C + 9): steps, type hits, exact hits, per-type
    tp/fp/fn, outcome tp/fp/fn (none/cart/purchase), for `fidelity._boot`.

    >>> s = score([[{"action": "back"}, {"action": "end_session"}]], [[{"action": "back"}, None]], ["back", "end_session", "invalid"])
    >>> s[0, :3].tolist()
    [2.0, 1.0, 1.0]
    """
    c = len(classes)
    out = np.zeros((len(true), 3 + 3 * c + 9))
    at = {k: i for i, k in enumerate(classes)}
    for i, (ts, ps) in enumerate(zip(true, pred)):
        for t, p in zip(ts, ps):
            tt, pt = at[action_type(t)], at[action_type(p)]
            hit = tt == pt
            out[i, 0] += 1
            out[i, 1] += hit
            out[i, 2] += hit and action_target(t) == action_target(p)
            if hit:
                out[i, 3 + 3 * tt] += 1
            else:
                out[i, 3 + 3 * pt + 1] += 1
                out[i, 3 + 3 * tt + 2] += 1
        to = max((funnel_level(t) for t in ts), default=0)
        po = max((funnel_level(p) for p in ps), default=0)
        o = 3 + 3 * c
        if to == po:
            out[i, o + 3 * to] += 1
        else:
            out[i, o + 3 * po + 1] += 1
            out[i, o + 3 * to + 2] += 1
    return out


def figures(x: np.ndarray, c: int) -> np.ndarray:
    """(B, d) summed statistics → (B, 4): type acc, exact acc, macro-F1, outcome F1."""
    from simpersona.evaluate.fidelity import f1_from_counts

    t = x[:, 3:3 + 3 * c].reshape(len(x), c, 3)
    o = x[:, 3 + 3 * c:].reshape(len(x), 3, 3)
    return np.stack([x[:, 1] / x[:, 0], x[:, 2] / x[:, 0], f1_from_counts(t[..., 0], t[..., 1], t[..., 2]),
                     f1_from_counts(o[..., 0], o[..., 1], o[..., 2])], 1)


def load_sessions(ingest: Path, labels, shops: list[str], n: int, seed: int) -> list:
    """Up to n real sessions of `shops` (seeded hash order) as `traces.goals.Session`s with their
    catalog titles and collections; labels (`fidelity.BuyerLabels`): which sessions may be scored,
    and the buyer's persona code and the stratum its goal's intent comes from (only sessions whose
    buyer has both are drawn)."""
    import duckdb

    from simpersona.agents.policy import EVENT_ORDER_SQL
    from simpersona.traces.goals import Event, Session

    con = duckdb.connect()
    con.execute("CREATE TEMP TABLE keep AS SELECT unnest($1::VARCHAR[]) AS shop_id", [list(shops)])
    rows = con.sql(f"""
        WITH l AS ({labels.sql}),
             s AS (SELECT shop_id, buyer_id, session_id FROM read_parquet('{Path(ingest) / 'events.parquet'}')
                   WHERE shop_id IN (SELECT shop_id FROM keep) AND event_type <> 'page_view'
                   {f"AND (shop_id, buyer_id, session_id) IN (SELECT (shop_id, buyer_id, session_id) FROM ({labels.sessions}))" if labels.sessions else ""}
                   AND (shop_id, buyer_id) IN (SELECT (shop_id, buyer_id) FROM l WHERE code IS NOT NULL AND intent_stratum IS NOT NULL)
                   GROUP BY shop_id, buyer_id, session_id
                   ORDER BY md5(concat('{int(seed)}/llm/', shop_id, '/', buyer_id, '/', session_id)) LIMIT {int(n)}),
             cat AS (SELECT shop_id, product_id, any_value(title) AS title, any_value(collection) AS collection
                     FROM read_parquet('{Path(ingest) / 'catalog.parquet'}') GROUP BY ALL)
        SELECT e.shop_id, e.buyer_id, e.session_id, l.code, l.intent_stratum, e.ts, e.event_type,
               e.product_id, e.collection_id, e.query, e.price, e.quantity, cat.title, cat.collection
        FROM read_parquet('{Path(ingest) / 'events.parquet'}') e JOIN s USING (shop_id, buyer_id, session_id)
        LEFT JOIN cat USING (shop_id, product_id) JOIN l USING (shop_id, buyer_id)
        ORDER BY e.shop_id, e.buyer_id, e.session_id, {EVENT_ORDER_SQL}""").to_arrow_table()
    con.close()
    rows = zip(*(rows.column(i).to_pylist() for i in range(rows.num_columns)))
    out: dict[tuple, Session] = {}
    for shop, buyer, sess, code, stratum, ts, kind, pid, coll, query, price, qty, title, cpath in rows:
        s = out.get((shop, buyer, sess))
        if s is None:
            s = out[(shop, buyer, sess)] = Session(shop, buyer, sess, [], int(code), str(stratum))
        s.events.append(Event(kind, ts, pid, coll, query, price, int(qty) if qty is not None else None, title, cpath))
    return list(out.values())


def agent_name(cfg) -> dict[str, Any]:
    """The agent and checkpoint behind the figures (the checkpoint's content hash from its meta.json)."""
    import json

    if cfg.llm_agent == "endpoint":
        return {"name": "LLM agent on an endpoint", "endpoint": cfg.endpoint.url, "model": cfg.endpoint.model}
    ck = Path(cfg.llm.checkpoint) if cfg.llm.checkpoint else None
    meta = ck / "meta.json" if ck else None
    ident = json.loads(meta.read_text()).get("checkpoint") if meta and meta.exists() else None
    return {"name": "LLM agent, local checkpoint", "checkpoint": str(ck), "checkpoint_id": ident,
            "decoding": cfg.llm.decoding, "temperature": cfg.llm.temperature}


def make_backend(cfg):
    from simpersona.agents.llm import EndpointBackend, TransformersBackend

    return TransformersBackend(cfg.llm) if cfg.llm_agent == "llm" else EndpointBackend(cfg.endpoint)


def llm_next_action(cfg, shops: list[str], labels, backend=None) -> dict[str, Any]:
    """The LLM agent's next-action figures on up to `cfg.llm_sessions` real sessions of `shops`
    (cfg: `evaluate.fidelity.FidelityConfig`; labels: `fidelity.BuyerLabels`, the scored sessions and
    their buyers' codes; `backend`: an agent backend, else built from cfg)."""
    from simpersona.agents.base import act_batch
    from simpersona.agents.llm import LLMAgent
    from simpersona.contracts.persona import persona_token
    from simpersona.evaluate.fidelity import _boot, _ci
    from simpersona.traces.goals import make_goals
    from simpersona.traces.replay import Replayer

    t0 = time.perf_counter()
    sessions = load_sessions(cfg.ingest, labels, shops, cfg.llm_sessions, cfg.seed)
    replayer = Replayer(Path(cfg.ingest) / "catalog.parquet", cfg.storefront)
    episodes, skipped = [], 0
    try:
        for s in sessions:
            if s.code < 0 or not replayer.has_shop(s.shop_id):
                skipped += 1
                continue
            goal = make_goals(s).intent
            traj = replayer.replay(s, goal, persona_token(s.code))
            if traj.steps:
                episodes.append((s, goal, traj.steps))
            else:
                skipped += 1
    finally:
        replayer.close()
    if not episodes:
        return {"value": None, "note": f"n too small (sessions replayed 0 of {len(sessions)})"}
    own = backend is None
    backend = make_backend(cfg) if own else backend
    codes = np.unique([s.code for s, _, _ in episodes])
    rng = np.random.default_rng([cfg.seed, 7])
    random_codes = rng.integers(0, int(codes.max()) + 1, size=len(episodes))
    t_replay = time.perf_counter()
    preds: dict[str, list[list[dict | None]]] = {}
    failures: dict[str, int] = {}
    try:
        for cond in cfg.llm_conditions:
            jobs = []  # (episode, step): session by session, so consecutive prompts share their prefix
            for e, (s, goal, steps) in enumerate(episodes):
                code = {"persona": s.code, "no_persona": None, "random_persona": int(random_codes[e])}[cond]
                for t in range(len(steps)):
                    agent = LLMAgent(backend)
                    agent.reset(goal, code)
                    agent.follow([(steps[i].action, steps[i + 1].observation) for i in range(t)])
                    jobs.append((agent, steps[t].observation))
            bs = max(1, cfg.llm.batch_size if cfg.llm_agent == "llm" else cfg.endpoint.concurrency)
            decisions = []
            for c in range(0, len(jobs), bs):
                chunk = jobs[c:c + bs]
                decisions += act_batch([a for a, _ in chunk], [o for _, o in chunk])
            failures[cond] = sum(d.action is None for d in decisions)
            it = iter(decisions)
            preds[cond] = [[next(it).action for _ in steps] for _, _, steps in episodes]
    finally:
        if own and hasattr(backend, "close"):
            backend.close()
    true = [[st.action for st in steps] for _, _, steps in episodes]
    types = [[action_type(a) for a in ts] for ts in true]
    for e in range(len(episodes)):  # the majority baseline: the most frequent type of the other sessions
        others = [t for j, ts in enumerate(types) if j != e for t in ts] or ["invalid"]
        vals, cnt = np.unique(others, return_counts=True)
        preds.setdefault("majority", []).append([_typed(str(vals[cnt.argmax()]))] * len(true[e]))
    classes = sorted({action_type(a) for p in [true, *preds.values()] for ts in p for a in ts} | {"invalid"})
    order = list(preds)
    per = {a: score(true, preds[a], classes) for a in order}
    c, d = len(classes), per[order[0]].shape[1]
    point = {a: figures(per[a].sum(0, keepdims=True), c)[0] for a in order}
    draws = _boot(np.concatenate([per[a] for a in order], 1),
                  lambda x: np.stack([figures(x[:, i * d:(i + 1) * d], c) for i in range(len(order))], 1), cfg.n_boot,
                  np.random.default_rng([cfg.seed, 8]))  # (B, agents, 4)
    names = ("type_accuracy", "exact_accuracy", "macro_f1", "outcome_f1")
    agents = {a: {m: {"value": float(point[a][j]), "ci": _ci(draws[:, i, j])} for j, m in enumerate(names)}
              for i, a in enumerate(order)}
    for a in cfg.llm_conditions:
        agents[a]["invalid_answers"] = failures[a]
    vs = {}
    if "persona" in order:
        i = order.index("persona")
        vs = {b: {m: {"diff": float(point["persona"][k] - point[b][k]), "ci": _ci(draws[:, i, k] - draws[:, order.index(b), k])}
                  for k, m in enumerate(names)} for b in order if b != "persona"}
    return {"agent": agent_name(cfg), "codes": labels.info.get("from"), "sessions": len(episodes), "sessions_skipped": skipped,
            "steps": int(sum(len(t) for t in true)), "class_counts": {k: int(sum(t.count(k) for t in types)) for k in classes},
            "agents": agents, "persona_minus": vs,
            "timing_s": {"replay": round(t_replay - t0, 2), "predict": round(time.perf_counter() - t_replay, 2)},
            "decisions": int(sum(len(t) for t in true)) * len(cfg.llm_conditions)}


def _typed(kind: str) -> dict[str, Any] | None:
    """An action of a type (no target) for the majority baseline."""
    if kind == "invalid":
        return None
    if kind.startswith("click"):
        return {"action": "click", "element_id": {"click:product": V.PRODUCT_PREFIX, "click:collection": V.COLLECTION_PREFIX}.get(kind, "")}
    return {"action": kind}
