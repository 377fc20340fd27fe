"""The episode loop: many episodes at once on a pool of environments, in lock step.

Each round asks every running episode's agent for a decision (one batched generate per LLM
backend, `agents.base.act_batch`), then steps each environment. A finished slot takes the next
episode. Outcomes (`contracts.storefront.OUTCOMES`): the env's goal_reached / ended / steps_limit / time_limit / crash,
plus `malformed` (the agent's output was no valid action: the failure kind is recorded and the
episode ends there) — context_length and backend_error count as crash. Nothing aborts the run: a
reset or step that raises ends that episode as a crash.

An episode depends on its spec alone (its seed, ids and agent; the storefront keeps each session's
state apart), so episodes of agents that need no shared backend (the fast policy) may also run in
several processes, each with its own storefront app (`run_in_workers`): the same records and the
same logged events as one process, in a canonical order (`session_order`) that no split changes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from simpersona.agents.base import Decision, act_batch
from simpersona.contracts.goals import topic_name
from simpersona.contracts.persona import persona_token

CRASH_FAILURES = frozenset({"backend_error", "context_length"})


@dataclass
class EpisodeSpec:
    """One simulated buyer's episode."""

    shop_id: str
    buyer_id: str
    session_id: str
    # persona code drawn for this buyer (kept even when the agent gets no token); None: no persona
    code: int | None
    stratum: str
    # "buy", "browse" or "neutral"
    intent: str
    goal: str
    seed: int
    # give the agent the persona token (false: the no-persona variant)
    persona: bool = True
    # free-form tag carried into the episodes table (e.g. an instruction task id)
    tag: str = ""


@dataclass
class _Slot:
    env: Any
    spec: EpisodeSpec | None = None
    index: int = 0
    agent: Any = None
    obs: dict | None = None
    t0: float = 0.0
    repaired: int = 0


def _record(spec: EpisodeSpec, outcome: str, steps: int, invalid: int, wall: float, d: Decision | None = None,
            repaired: int = 0, error: str = "") -> dict[str, Any]:
    return {
        "shop_id": spec.shop_id, "buyer_id": spec.buyer_id, "session_id": spec.session_id, "code": spec.code,
        "persona": spec.persona, "stratum": spec.stratum, "intent": spec.intent, "goal": spec.goal, "tag": spec.tag,
        "outcome": outcome, "self_reported_goal": outcome == "goal_reached", "steps": steps, "invalid_actions": invalid,
        "failure": (d.failure or "") if d is not None else "", "failure_detail": (d.detail[:300] if d is not None else "") or error[:300],
        "failure_output": (d.raw[:300] if d is not None and d.failure else ""), "repaired_actions": repaired, "wall_s": wall,
    }


def run_episodes(specs: Iterable[EpisodeSpec], envs: list, make_agent: Callable[[EpisodeSpec], Any],
                 on_done: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Run every spec on the environments `envs` (one episode per env at a time); returns one
    record per episode (see `_record`), in spec order (`on_done` sees them in completion order)."""
    queue = enumerate(specs)
    slots = [_Slot(env) for env in envs]
    out: dict[int, dict[str, Any]] = {}

    def finish(s: _Slot, rec: dict) -> None:
        out[s.index] = rec
        if on_done is not None:
            on_done(rec)
        s.spec = s.agent = s.obs = None

    def fill(s: _Slot) -> None:
        while s.spec is None:
            s.index, spec = next(queue, (0, None))
            if spec is None:
                return
            s.t0, s.repaired = time.perf_counter(), 0
            try:
                s.agent = make_agent(spec)
                s.agent.reset(spec.goal, spec.code if spec.persona else None)
                s.obs, _ = s.env.reset(seed=spec.seed, options={
                    "shop": spec.shop_id, "goal": spec.goal, "buyer_id": spec.buyer_id, "session_id": spec.session_id,
                    "persona_token": persona_token(spec.code) if spec.persona and spec.code is not None else ""})
                s.spec = spec
            except Exception as e:
                finish(s, _record(spec, "crash", 0, 0, time.perf_counter() - s.t0, error=f"reset: {type(e).__name__}: {e}"))

    while True:
        for s in slots:
            fill(s)
        live = [s for s in slots if s.spec is not None]
        if not live:
            return [out[i] for i in sorted(out)]
        decisions = act_batch([s.agent for s in live], [s.obs for s in live])
        for s, d in zip(live, decisions):
            spec = s.spec
            if d.failure is not None:
                outcome = "crash" if d.failure in CRASH_FAILURES else "malformed"
                finish(s, _record(spec, outcome, s.env.steps, s.env.invalid, time.perf_counter() - s.t0, d, s.repaired))
                continue
            s.repaired += int(d.repaired)
            try:
                s.obs, _, term, trunc, info = s.env.step(d.action)
            except Exception as e:
                finish(s, _record(spec, "crash", s.env.steps, s.env.invalid, time.perf_counter() - s.t0, d, s.repaired,
                                  f"step: {type(e).__name__}: {e}"))
                continue
            if term or trunc:
                finish(s, _record(spec, info["outcome"], info["step"], info["invalid_actions"], time.perf_counter() - s.t0,
                                  None, s.repaired, info.get("error") or ""))


def worker_count(workers: int) -> int:
    """Processes for `workers` (0: one per CPU this process may use; 1 where processes cannot fork)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if workers > 0:
        return workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_in_workers(specs: list[EpisodeSpec], workers: int,
                   run_shard: Callable[[list[EpisodeSpec], int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """`run_shard(specs[k::workers], k)` in `workers` forked processes at once (each builds its own
    storefront app and environments; fork, so the closure and the agents' model need no pickling);
    returns the shards' records (each shard's in its spec order) in spec order. A worker that
    fails raises here with its traceback."""
    ctx = multiprocessing.get_context("fork")
    procs = []
    for k in range(workers):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(run_shard, specs[k::workers], k, send), daemon=True)
        proc.start()
        send.close()
        procs.append((proc, recv))
    out: list[dict[str, Any] | None] = [None] * len(specs)
    errors = []
    for k, (proc, recv) in enumerate(procs):
        try:
            ok, payload = recv.recv()
        except EOFError:
            ok, payload = False, "the worker died without an answer (killed, out of memory?)"
        proc.join()
        if not ok:
            errors.append(f"simulation worker {k}/{workers}: {payload}")
            continue
        out[k::workers] = payload
    if errors:
        raise RuntimeError("\n".join(errors))
    return out  # type: ignore[return-value]


def _worker(run_shard, shard: list[EpisodeSpec], k: int, send) -> None:
    try:
        result = (True, run_shard(shard, k))
    except BaseException:  # report it to the parent whatever it was
        result = (False, traceback.format_exc()[-3000:])
    send.send(result)
    send.close()


def session_order(events: pa.Table) -> pa.Table:
    """The events grouped by session — sorted by (shop_id, buyer_id, session_id), each session's
    events in the order they were logged — the order the simulation writes, whatever the episodes'
    concurrency or processes."""
    seq = pa.array(np.arange(events.num_rows, dtype=np.int64))
    order = events.append_column("_seq", seq).sort_by([("shop_id", "ascending"), ("buyer_id", "ascending"),
                                                         ("session_id", "ascending"), ("_seq", "ascending")])
    return order.drop_columns(["_seq"])


def draw_population(mix, shop_id: str, shop, n: int, rng: np.random.Generator):
    """n simulated buyers of one shop, as `simpersona simulate` and `simpersona abtest` draw them:
    (population: k ~ p̂_s(k), stratum ~ P(stratum | k), intent — `PersonaMix.sample_population`;
    each buyer's goal topic among the storefront `shop`'s collections, ∝ products — `shop_topics`)."""
    pop = mix.sample_population(shop_id, n, rng)
    topics, p = shop_topics(shop)
    picks = rng.choice(len(topics), size=n, p=p)
    return pop, [topics[j] for j in picks]


def shop_topics(shop) -> tuple[list[str], np.ndarray]:
    """(topics, probabilities ∝ products) of a storefront `Shop` (its leaf collections; a shop
    without collections: its product titles' last words)."""
    leaves = shop.leaves or {}
    if leaves:
        names = sorted(leaves)
        w = np.array([leaves[c] for c in names], float)
        return [topic_name(c) for c in names], w / w.sum()
    titles = sorted({p.title.split()[-1].lower() for p in shop.products.values() if p.title}) or ["gift"]
    return titles, np.full(len(titles), 1 / len(titles))
