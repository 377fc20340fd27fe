"""SFT records: JSONL, one agent step per line, in the chat `messages` format trl reads.

    {"messages": [system, user, assistant], "shop_id": str, "session_key": str,
     "persona": k, "stratum": "A".."E", "step": 0-based int, "stage": 1 | 2}

Stage 1 records carry intent-neutral goals, stage 2 records intent-bearing goals (spec §5);
the same replayed session usually yields both. The replay calls `records_from_trajectory`
and `write_records`; `simpersona sft` reads a TRACES_DIR of `*.jsonl` with `read_records`,
then `sample_sessions` (every codebook entry represented, corpus small) and `split_by_shop`.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from simpersona.sft.prompt import log_entry, messages, persona_token
from simpersona.storefront.actions import ActionError, parse_action

STRATA = ("A", "B", "C", "D", "E")

# JSON-schema-style description of one record (checked by `validate_record`, no dependency).
RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages", "shop_id", "session_key", "persona", "stratum", "step", "stage"],
    "additionalProperties": False,
    "properties": {
        "messages": {
            "type": "array", "minItems": 3, "maxItems": 3,
            "items": {
                "type": "object", "required": ["role", "content"], "additionalProperties": False,
                "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string", "minLength": 1}},
            },
        },
        "shop_id": {"type": "string", "minLength": 1},
        "session_key": {"type": "string", "minLength": 1},
        "persona": {"type": "integer", "minimum": 0},
        "stratum": {"enum": list(STRATA)},
        "step": {"type": "integer", "minimum": 0},
        "stage": {"enum": [1, 2]},
    },
}
ROLES = ("system", "user", "assistant")
_TYPES = {"object": dict, "array": list, "string": str, "integer": int}


class RecordError(ValueError):
    """A record that does not fit RECORD_SCHEMA (the message names the field)."""


def _check(value: Any, schema: dict[str, Any], where: str) -> None:
    """The subset of JSON schema that RECORD_SCHEMA uses: type, enum, required, properties,
    additionalProperties, items, min/maxItems, minLength, minimum."""
    if "enum" in schema and (value not in schema["enum"] or isinstance(value, bool)):
        raise RecordError(f"{where}: {value!r} is not one of {schema['enum']}")
    t = schema.get("type")
    if t is not None and (not isinstance(value, _TYPES[t]) or isinstance(value, bool)):
        raise RecordError(f"{where}: expected {t}, got {type(value).__name__}")
    if t == "object":
        missing = [k for k in schema.get("required", []) if k not in value]
        if missing:
            raise RecordError(f"{where}: missing {missing}")
        extra = sorted(set(value) - set(schema["properties"]))
        if extra and schema.get("additionalProperties") is False:
            raise RecordError(f"{where}: unknown field(s) {extra}")
        for k, sub in schema["properties"].items():
            if k in value:
                _check(value[k], sub, f"{where}.{k}")
    if t == "array":
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            raise RecordError(f"{where}: {len(value)} items, expected {schema.get('minItems')}–{schema.get('maxItems')}")
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]")
    if t == "string" and len(value) < schema.get("minLength", 0):
        raise RecordError(f"{where}: empty string")
    if t == "integer" and value < schema.get("minimum", value):
        raise RecordError(f"{where}: {value} < {schema['minimum']}")


def validate_record(rec: dict[str, Any], num_personas: int | None = None) -> None:
    """Raise RecordError unless `rec` fits RECORD_SCHEMA and its messages are what the prompt
    format writes: roles system, user, assistant; the user turn names the record's persona token;
    the assistant turn is one valid action JSON with a string "reasoning"."""
    _check(rec, RECORD_SCHEMA, "record")
    roles = tuple(m["role"] for m in rec["messages"])
    if roles != ROLES:
        raise RecordError(f"record.messages: roles {list(roles)}, expected {list(ROLES)}")
    if num_personas is not None and rec["persona"] >= num_personas:
        raise RecordError(f"record.persona: {rec['persona']} ≥ K = {num_personas}")
    if f"Buyer profile: {persona_token(rec['persona'])}" not in rec["messages"][1]["content"]:
        raise RecordError(f"record.messages[1]: no 'Buyer profile: {persona_token(rec['persona'])}'")
    try:
        answer = json.loads(rec["messages"][2]["content"])
        parse_action(answer)
    except (json.JSONDecodeError, ActionError) as e:
        raise RecordError(f"record.messages[2]: not a valid action: {e}") from None
    if not isinstance(answer.get("reasoning"), str) or not answer["reasoning"].strip():
        raise RecordError("record.messages[2]: no \"reasoning\" string")


def records_from_trajectory(goal: str, persona: int, steps: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per step of a (judged) trajectory.

    `steps`: `[{"observation": env obs dict, "action": action dict, "reasoning": str}, …]` in
    order (the observation is the page the action was taken on); `meta`: `shop_id`,
    `session_key`, `stratum`, `stage` (1: intent-neutral goal, 2: intent-bearing goal).
    The progress log of step t holds `log_entry` lines of steps 0..t-1, with the URL (or the
    error) that the next observation shows. Every record is validated.
    """
    token = persona_token(persona)
    out, log = [], []
    for t, s in enumerate(steps):
        action = {k: v for k, v in s["action"].items() if k != "reasoning"}
        msgs = messages(goal, token, list(log), s["observation"], action, s["reasoning"])
        rec = {"messages": msgs, "shop_id": str(meta["shop_id"]), "session_key": str(meta["session_key"]),
               "persona": int(persona), "stratum": meta["stratum"], "step": t, "stage": int(meta["stage"])}
        validate_record(rec)
        out.append(rec)
        nxt = steps[t + 1]["observation"] if t + 1 < len(steps) else None
        log.append(log_entry(t + 1, action, s["reasoning"], nxt["url"] if nxt else None, nxt.get("error") if nxt else None))
    return out


def write_records(path: Path, records: Iterable[dict[str, Any]], append: bool = False) -> int:
    """Validate and write records as JSONL (UTF-8, one per line); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for rec in records:
            validate_record(rec)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_records(path: Path, num_personas: int | None = None) -> list[dict[str, Any]]:
    """Every record of a JSONL file, or of every `*.jsonl` in a folder (sorted), validated;
    errors name the file and line."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"no *.jsonl records in {path}")
    out = []
    for f in files:
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                validate_record(rec, num_personas)
            except (json.JSONDecodeError, RecordError) as e:
                raise RecordError(f"{f}:{i}: {e}") from None
            out.append(rec)
    return out


def sample_sessions(
    records: list[dict[str, Any]], max_per_code: int, min_per_code: int, target_sessions: int, seed: int
) -> list[dict[str, Any]]:
    """Keep whole sessions so that every persona code is represented and the corpus stays small.

    Each code first gets min(available, `min_per_code`) sessions; the rest of the
    `target_sessions` budget (0 = no budget) goes round-robin over codes, never past
    `max_per_code` per code. Within a code, sessions are drawn round-robin over its shops and
    strata (seeded shuffle), so no shop or stratum dominates a code. A session's records (its
    steps, of both stages) stay together.
    """
    rng = random.Random(seed)
    by_session: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_session[r["session_key"]].append(r)
    by_code: dict[int, dict[tuple, list[str]]] = defaultdict(lambda: defaultdict(list))
    for key in sorted(by_session):
        r = by_session[key][0]
        by_code[r["persona"]][(r["shop_id"], r["stratum"])].append(key)
    queues: dict[int, list[str]] = {}
    for code, groups in sorted(by_code.items()):
        for g in groups.values():
            rng.shuffle(g)
        order = sorted(groups)
        rng.shuffle(order)
        queue, depth = [], 0
        while len(queue) < sum(map(len, groups.values())):
            queue += [groups[g][depth] for g in order if depth < len(groups[g])]
            depth += 1
        queues[code] = queue[:max_per_code] if max_per_code > 0 else queue
    take = {c: min(len(q), min_per_code) for c, q in queues.items()}
    budget = (target_sessions - sum(take.values())) if target_sessions > 0 else sum(map(len, queues.values()))
    while budget > 0 and any(take[c] < len(q) for c, q in queues.items()):
        for c, q in queues.items():
            if budget > 0 and take[c] < len(q):
                take[c] += 1
                budget -= 1
    kept = {key for c, q in queues.items() for key in q[: take[c]]}
    return [r for r in records if r["session_key"] in kept]


def split_by_shop(records: list[dict[str, Any]], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): a seeded share `val_fraction` of the SHOPS (at least one when there
    are two or more shops and val_fraction > 0) goes to validation, so no shop is on both sides."""
    shops = sorted({r["shop_id"] for r in records})
    random.Random(seed).shuffle(shops)
    n_val = min(len(shops) - 1, max(1, round(val_fraction * len(shops)))) if val_fraction > 0 and len(shops) > 1 else 0
    val_shops = set(shops[:n_val])
    return [r for r in records if r["shop_id"] not in val_shops], [r for r in records if r["shop_id"] in val_shops]
