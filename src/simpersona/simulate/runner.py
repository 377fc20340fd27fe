"""The episode loop: many episodes at once on a pool of environments, in lock step.

Each round asks every running episode's agent for a decision (one batched generate per LLM
backend, `agents.base.act_batch`), then steps each environment. A finished slot takes the next
episode. Outcomes (`contracts.storefront.OUTCOMES`): the env's goal_reached / ended / steps_limit / time_limit / crash,
plus `malformed` (the agent's output was no valid action: the failure kind is recorded and the
episode ends there) — context_length and backend_error count as crash. Nothing aborts the run: a
reset or step that raises ends that episode as a crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from simpersona.agents.base import Decision, act_batch
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
    record per episode (see `_record`), in completion order."""
    queue = iter(specs)
    slots = [_Slot(env) for env in envs]
    out: list[dict[str, Any]] = []

    def finish(s: _Slot, rec: dict) -> None:
        out.append(rec)
        if on_done is not None:
            on_done(rec)
        s.spec = s.agent = s.obs = None

    def fill(s: _Slot) -> None:
        while s.spec is None:
            spec = next(queue, None)
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
            return out
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
