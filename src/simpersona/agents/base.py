"""The agent interface, the `Decision` it returns, and the repair + classification of model text.

Every agent has `reset(goal, persona)` (persona: a code int, or None for the no-persona variant)
and `act(observation) -> Decision` (observation: `ShopEnv`'s obs dict). A Decision holds either a
valid action dict (checked by `storefront.actions.parse_action`) or a failure kind from FAILURES:

    empty           the model said nothing
    no_json         no "{" in the text
    invalid_json    an object was started but is not JSON even after repair (or is truncated)
    no_action       a JSON object without an "action" field
    unknown_action  an "action" that names no action of the schema
    bad_field       a known action with a missing, unknown or ill-typed field
    context_length  the prompt is longer than the backend accepts
    backend_error   the model backend failed (endpoint down, generation error)

Repairs tried, in order (`parse_output`): take the first balanced {...} (closing a truncated one),
Python literals and single quotes → JSON, trailing commas dropped, unquoted keys quoted; action
names normalised ("Add to cart" → add_to_cart; a few aliases); quantity "2" → 2, "true" → true,
numeric ids → strings; fields the action does not have are dropped. `Decision.repaired` says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from simpersona.chat import first_object, loads_lenient
from simpersona.storefront.actions import FIELDS, NAMES, ActionError, action_to_dict, parse_action

FAILURES: tuple[str, ...] = ("empty", "no_json", "invalid_json", "no_action", "unknown_action", "bad_field", "context_length",
                             "backend_error")
ALIASES: dict[str, str] = {
    "add": "add_to_cart", "addtocart": "add_to_cart", "cart": "view_cart", "open_cart": "view_cart",
    "remove": "remove_from_cart", "end": "end_session", "stop": "end_session", "finish": "end_session",
    "done": "end_session", "type": "fill", "input": "fill", "go_back": "back", "navigate_back": "back",
    "press": "click", "open": "click", "select": "fill", "find": "search", "checkout_start": "checkout",
}


@dataclass
class Decision:
    """One step's answer: `action` (a valid action dict) or `failure` (one of FAILURES)."""

    action: dict[str, Any] | None
    failure: str | None = None
    # the model's raw text ("" for policies)
    raw: str = ""
    # the reasoning string (the model's, or the policy's short note)
    reasoning: str = ""
    # the text needed a repair to become a valid action
    repaired: bool = False
    # the failure's detail (parser message)
    detail: str = ""
    # generated tokens (LLM backends that count them)
    tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Agent(Protocol):
    def reset(self, goal: str, persona: int | None) -> None: ...

    def act(self, observation: dict[str, Any]) -> Decision: ...


def normalise_name(name: Any) -> str | None:
    """An action name as the schema spells it, or None.

    >>> normalise_name("Add to cart"), normalise_name("stop"), normalise_name("fly")
    ('add_to_cart', 'end_session', None)
    """
    if not isinstance(name, str):
        return None
    n = re.sub(r"[\s\-]+", "_", name.strip().lower())
    if n in NAMES:
        return n
    return ALIASES.get(n) or ALIASES.get(n.replace("_", ""))


def _coerce_fields(name: str, obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"action": name}
    for f, (t, _) in FIELDS[name].items():
        if f not in obj:
            continue
        v = obj[f]
        if t == "integer" and isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        elif t == "integer" and isinstance(v, float) and v.is_integer():
            v = int(v)
        elif t == "boolean" and isinstance(v, str) and v.strip().lower() in ("true", "false", "yes", "no"):
            v = v.strip().lower() in ("true", "yes")
        elif t == "string" and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        out[f] = v
    return out


def parse_output(text: str) -> Decision:
    """Model text → Decision: a validated action (maybe repaired) or a classified failure.

    >>> parse_output('{"action": "view_cart", "reasoning": "check"}').action
    {'action': 'view_cart'}
    >>> [parse_output(t).failure for t in ("", "hello", "{nope", '{"x": 1}', '{"action": "fly"}', '{"action": "click"}')]
    ['empty', 'no_json', 'invalid_json', 'no_action', 'unknown_action', 'bad_field']
    """
    raw = text if isinstance(text, str) else str(text)
    if not raw.strip():
        return Decision(None, "empty", raw)
    obj_text, closed = first_object(raw)
    if obj_text is None:
        return Decision(None, "no_json", raw, detail="no '{' in the output")
    try:
        obj, fixed = loads_lenient(obj_text)
    except ValueError as e:
        return Decision(None, "invalid_json", raw, detail=str(e))
    if not isinstance(obj, dict):
        return Decision(None, "invalid_json", raw, detail="not an object")
    reasoning = obj.get("reasoning") if isinstance(obj.get("reasoning"), str) else ""
    if "action" not in obj:
        return Decision(None, "no_action", raw, reasoning, detail="no 'action' field")
    name = normalise_name(obj["action"])
    if name is None:
        return Decision(None, "unknown_action", raw, reasoning, detail=f"unknown action {obj['action']!r}")
    clean = _coerce_fields(name, obj)
    try:
        action = action_to_dict(parse_action(clean))
    except ActionError as e:
        return Decision(None, "bad_field", raw, reasoning, detail=str(e))
    strict = {k: v for k, v in obj.items() if k != "reasoning"}
    repaired = fixed or not closed or strict != action
    return Decision(action, None, raw, reasoning, repaired=repaired)


def act_batch(agents: list, observations: list[dict[str, Any]]) -> list[Decision]:
    """Decisions of many episodes at once: agents with a `backend` (LLM agents) are answered by one
    `generate` call per backend; the others by `act`. An exception becomes a backend_error."""
    out: list[Decision | None] = [None] * len(agents)
    groups: dict[int, list[int]] = {}
    for i, a in enumerate(agents):
        if getattr(a, "backend", None) is not None:
            groups.setdefault(id(a.backend), []).append(i)
        else:
            try:
                out[i] = a.act(observations[i])
            except Exception as e:  # a policy bug ends its episode as a crash, never the run
                out[i] = Decision(None, "backend_error", detail=f"{type(e).__name__}: {e}")
    for idx in groups.values():
        backend = agents[idx[0]].backend
        prompts = [agents[i].prompt(observations[i]) for i in idx]
        try:
            texts = backend.generate(prompts)
        except Exception as e:  # the whole call failed: every episode in it gets a backend_error
            texts = [e] * len(idx)
        for i, t in zip(idx, texts):
            out[i] = agents[i].decide(t)
    return out  # type: ignore[return-value]
