"""The agent's action space: typed JSON actions, parsed in one place (`parse_action`).

One JSON object per step, `{"action": NAME, ...fields}`; an optional `"reasoning"` string is
accepted and ignored. `ACTION_SCHEMA` is the JSON schema to put in a prompt. Whatever arrives
(any JSON value in any field, text that is not JSON, lone surrogates, deep nesting, huge text)
either parses or raises `ActionError` with a reason at most `MAX_ERROR_CHARS` long; nothing else.

| action            | fields                                  | does                                          |
|-------------------|-----------------------------------------|-----------------------------------------------|
| search            | query: str (1–200 chars)                | types the query in the search box and submits |
| click             | element_id: str                         | follows a link or presses a button            |
| add_to_cart       | quantity: int (1–99, default 1)         | on a product page: sets quantity, adds        |
| remove_from_cart  | product_id: str                         | on the cart page: removes that product's line |
| view_cart         | –                                       | opens the cart                                |
| checkout          | –                                       | opens the checkout                            |
| fill              | element_id: str, value: str (≤ 200)     | types into an input / picks a select option   |
| submit            | element_id: str (optional)              | submits the form holding that element (or the only form with filled fields) |
| back              | –                                       | goes to the previous page                     |
| end_session       | goal_reached: bool                      | ends the episode                              |
"""

from __future__ import annotations

import json
import reprlib
from dataclasses import asdict, dataclass
from typing import Any

MAX_TEXT = 200
MAX_QUANTITY = 99
# Longest action text parsed (longer is an error without parsing).
MAX_ACTION_CHARS = 50_000
# Longest error message (the env echoes it into the next observation).
MAX_ERROR_CHARS = 500


class ActionError(ValueError):
    """An action that cannot be parsed or executed; the environment reports it and goes on.
    The message is cut to MAX_ERROR_CHARS."""

    def __init__(self, message: str):
        super().__init__(bounded(message))


def bounded(message: str) -> str:
    """`message` cut to MAX_ERROR_CHARS characters (an ellipsis marks the cut)."""
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 2] + " …"


def short(value: Any) -> str:
    """A bounded repr of any value (deep nesting and huge strings are elided)."""
    r = reprlib.Repr()  # (keyword arguments only from Python 3.12)
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 2, 60, 60, 40
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 4
    return r.repr(value)


def _valid_text(v: str) -> bool:
    """Encodable as UTF-8 (no lone surrogates), so it can travel in a URL or a form."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Search:
    query: str


@dataclass(frozen=True)
class Click:
    element_id: str


@dataclass(frozen=True)
class AddToCart:
    quantity: int = 1


@dataclass(frozen=True)
class RemoveFromCart:
    product_id: str


@dataclass(frozen=True)
class ViewCart:
    pass


@dataclass(frozen=True)
class Checkout:
    pass


@dataclass(frozen=True)
class Fill:
    element_id: str
    value: str


@dataclass(frozen=True)
class Submit:
    element_id: str | None = None


@dataclass(frozen=True)
class Back:
    pass


@dataclass(frozen=True)
class EndSession:
    goal_reached: bool


Action = Search | Click | AddToCart | RemoveFromCart | ViewCart | Checkout | Fill | Submit | Back | EndSession

NAMES: dict[str, type] = {
    "search": Search, "click": Click, "add_to_cart": AddToCart, "remove_from_cart": RemoveFromCart,
    "view_cart": ViewCart, "checkout": Checkout, "fill": Fill, "submit": Submit, "back": Back,
    "end_session": EndSession,
}
# Per action: field → (JSON type, required?).
FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "search": {"query": ("string", True)},
    "click": {"element_id": ("string", True)},
    "add_to_cart": {"quantity": ("integer", False)},
    "remove_from_cart": {"product_id": ("string", True)},
    "view_cart": {},
    "checkout": {},
    "fill": {"element_id": ("string", True), "value": ("string", True)},
    "submit": {"element_id": ("string", False)},
    "back": {},
    "end_session": {"goal_reached": ("boolean", True)},
}


def _schema_of(name: str) -> dict[str, Any]:
    props: dict[str, Any] = {"action": {"const": name}, "reasoning": {"type": "string"}}
    for f, (t, _) in FIELDS[name].items():
        p: dict[str, Any] = {"type": t}
        if t == "string":
            p.update(minLength=0 if f == "value" else 1, maxLength=MAX_TEXT)
        if t == "integer":
            p.update(minimum=1, maximum=MAX_QUANTITY, default=1)
        props[f] = p
    required = ["action"] + [f for f, (_, req) in FIELDS[name].items() if req]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


ACTION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Storefront action",
    "oneOf": [_schema_of(n) for n in NAMES],
}


def parse_action(raw: Any) -> Action:
    """An action from JSON text (a ```json fence is tolerated), a dict or an action object;
    raises ActionError naming what is wrong, for any input whatsoever."""
    if isinstance(raw, tuple(NAMES.values())):
        raw = action_to_dict(raw)  # re-checked below: dataclasses do not validate their fields
    if isinstance(raw, (str, bytes)):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if len(text) > MAX_ACTION_CHARS:
            raise ActionError(f"action text longer than {MAX_ACTION_CHARS} characters")
        text = text.strip()
        if text.startswith("```"):
            text = text.strip("`").strip()
            if text.lower().startswith("json"):
                text = text[4:]
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ActionError(f"not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ActionError(f"an action is a JSON object with an \"action\" field, got {type(raw).__name__}")
    name = raw.get("action")
    if not isinstance(name, str) or name not in NAMES:
        raise ActionError(f"unknown action {short(name)}; one of {list(NAMES)}")
    fields = FIELDS[name]
    unknown = [k for k in raw if k not in fields and k not in ("action", "reasoning")]
    if unknown:
        raise ActionError(f"{name}: unknown field(s) {short(unknown)}; allowed: {sorted(fields)}")
    if "reasoning" in raw and not isinstance(raw["reasoning"], str):
        raise ActionError(f"{name}: reasoning must be a string")
    kwargs: dict[str, Any] = {}
    for f, (t, required) in fields.items():
        if f not in raw or raw[f] is None:
            if required:
                raise ActionError(f"{name}: missing field {f!r}")
            continue
        v = raw[f]
        if t == "string":
            if not isinstance(v, str):
                raise ActionError(f"{name}: {f} must be a string, got {short(v)}")
            if len(v) > MAX_TEXT or (not v.strip() and f != "value"):
                raise ActionError(f"{name}: {f} must be 1 to {MAX_TEXT} characters")
            if not _valid_text(v):
                raise ActionError(f"{name}: {f} holds characters that are not valid Unicode (a lone surrogate)")
        elif t == "integer":
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_QUANTITY:
                raise ActionError(f"{name}: {f} must be a whole number from 1 to {MAX_QUANTITY}, got {short(v)}")
        elif t == "boolean" and not isinstance(v, bool):
            raise ActionError(f"{name}: {f} must be true or false, got {short(v)}")
        kwargs[f] = v
    return NAMES[name](**kwargs)


def action_to_dict(action: Action) -> dict[str, Any]:
    """The JSON object of an action (the inverse of `parse_action`)."""
    name = next(n for n, cls in NAMES.items() if isinstance(action, cls))
    return {"action": name, **{k: v for k, v in asdict(action).items() if v is not None}}
