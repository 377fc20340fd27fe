"""THE SFT record format: JSONL, one agent step per line, in the chat `messages` format trl reads.

    {"messages": [system, user, assistant], "shop_id": str, "session_key": str,
     "persona": k, "stratum": "A".."E", "step": 0-based int, "stage": 1 | 2}

Stage 1 records carry the intent-neutral goal, stage 2 records the buy/browse goal
(`contracts.goals`; spec §5); the same replayed session usually yields both. The replay
(`traces`) calls `records_from_trajectory` and `write_records`; `sft` reads them with
`read_records` and checks them against the model's token budget with `check_budget` before any
training step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from simpersona.contracts.labels import STRATA
from simpersona.contracts.persona import persona_token
from simpersona.contracts.prompt import log_entry, messages, record_tokens
from simpersona.storefront.actions import ActionError, parse_action

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
    error) that the next observation shows (the reasoning stays in each step's answer). Every
    record is validated.
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
        log.append(log_entry(t + 1, action, nxt["url"] if nxt else None, nxt.get("error") if nxt else None))
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


def record_name(rec: dict[str, Any]) -> str:
    """How an error names a record: `shop:buyer:session step 3 (stage 2)`."""
    return f"{rec['session_key']} step {rec['step']} (stage {rec['stage']})"


def record_lengths(records: list[dict[str, Any]], tokenizer: Any) -> dict[str, int]:
    """{`record_name`: tokens} of each record (`contracts.prompt.record_tokens`: its chat template
    applied), counted once and shared by the budget check and the trainer's length filter."""
    return {record_name(r): record_tokens(r["messages"], tokenizer) for r in records}


def check_budget(records: list[dict[str, Any]], tokenizer: Any, max_tokens: int, where: str = "",
                 lengths: dict[str, int] | None = None) -> dict[str, float]:
    """Every record's length in `tokenizer`'s tokens (its chat template applied; `lengths`: counted
    before by `record_lengths`); raises RecordError naming the first record over `max_tokens` (and how
    many are), else returns the length distribution {records, median, p95, max}."""
    import numpy as np

    lengths = record_lengths(records, tokenizer) if lengths is None else lengths
    n = np.array([lengths[record_name(r)] for r in records], dtype=np.int64)
    over = np.flatnonzero(n > max_tokens)
    if over.size:
        first = records[int(over[0])]
        raise RecordError(f"{where + ': ' if where else ''}record {record_name(first)} is {int(n[over[0]])} tokens, over the "
                          f"model's budget max_record_tokens={max_tokens} ({over.size} of {len(records)} records are); "
                          "lower storefront.env.obs_token_budget for the traces or raise the budget")
    if n.size == 0:
        return {"records": 0, "median": 0.0, "p95": 0.0, "max": 0}
    return {"records": int(n.size), "median": float(np.median(n)), "p95": float(np.percentile(n, 95)), "max": int(n.max())}


# -- TRACES_DIR ----------------------------------------------------------------------------------
# traces.jsonl holds every record; stage{1,2}/{train,val}.jsonl the SFT split by shop.
SIDES = ("train", "val")


def write_trace_split(out_dir: Path, train: list[dict[str, Any]], val: list[dict[str, Any]]) -> dict[str, int]:
    """Write a TRACES_DIR: traces.jsonl (all) and stage{1,2}/{train,val}.jsonl; returns the counts
    ("all", "stage1_train", …). A shop is on one side only."""
    both = {r["shop_id"] for r in train} & {r["shop_id"] for r in val}
    if both:
        raise RecordError(f"shop(s) {sorted(both)[:5]} are on both the train and the validation side")
    out_dir = Path(out_dir)
    n = {"all": write_records(out_dir / "traces.jsonl", train + val)}
    for stage in (1, 2):
        for side, rs in zip(SIDES, (train, val)):
            n[f"stage{stage}_{side}"] = write_records(out_dir / f"stage{stage}" / f"{side}.jsonl", [r for r in rs if r["stage"] == stage])
    return n


def read_trace_split(traces_dir: Path, num_personas: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, val) records of a TRACES_DIR written by `write_trace_split`, both stages, validated."""
    traces_dir = Path(traces_dir)
    files = {(s, side): traces_dir / f"stage{s}" / f"{side}.jsonl" for s in (1, 2) for side in SIDES}
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{traces_dir} is not a TRACES_DIR (missing {missing[0]}); write one with "
                                "`simpersona traces` or `simpersona sft fabricate`")
    return tuple([r for s in (1, 2) for r in read_records(files[(s, side)], num_personas)] for side in SIDES)
