"""One OpenAI-compatible chat client (vLLM, llama.cpp server, any `/chat/completions` API) and one
JSON extractor, shared by the traces' goal rewriter and LLM judge and by the endpoint agent.

`ChatClient(EndpointConfig).complete(messages)` → (answer text, completion tokens), or raises
`ChatError` (HTTP failure, timeout, an answer without text). The API key is read from the
environment variable the config names; a named variable that is not set is an error, not a
silent unauthenticated call. Nothing is contacted unless a URL is configured.

`first_object` finds the first balanced {...} in model text (closing a truncated one),
`loads_lenient` parses it with the usual repairs, `extract_object` does both.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any


@dataclass
class EndpointConfig:
    # base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8001/v1 ("" = not used)
    url: str = ""
    # model name sent with each request
    model: str = "simpersona"
    # name of the environment variable holding the API key ("" = no key)
    api_key_env: str = ""
    # request timeout in seconds
    timeout_s: float = 60.0
    # max_tokens per completion (a cap: an action answer takes ~80, a rewritten goal up to ~150)
    max_tokens: int = 256
    # sampling temperature
    temperature: float = 0.0
    # concurrent requests (the endpoint agent's batches)
    concurrency: int = 8


class ChatError(RuntimeError):
    """The endpoint failed, timed out, or answered without text."""


class ChatClient:
    """One httpx client for an endpoint; `transport` lets tests plug in httpx.MockTransport."""

    def __init__(self, cfg: EndpointConfig, transport=None):
        import httpx

        if not cfg.url:
            raise ValueError("an OpenAI-compatible endpoint needs its url (e.g. http://127.0.0.1:8001/v1)")
        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ValueError(f"api_key_env names {cfg.api_key_env!r}, which is not set in the environment")
            headers["Authorization"] = f"Bearer {key}"
        self.cfg = cfg
        self.client = httpx.Client(base_url=cfg.url.rstrip("/") + "/", timeout=cfg.timeout_s, headers=headers,
                                   transport=transport)

    def complete(self, messages: list[dict[str, str]], max_tokens: int | None = None) -> tuple[str, int]:
        """(answer text, completion tokens the endpoint reports) of one chat completion."""
        import httpx

        body = {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                "max_tokens": max_tokens or self.cfg.max_tokens}
        try:
            r = self.client.post("chat/completions", json=body)
            r.raise_for_status()
            answer = r.json()
            text = answer["choices"][0]["message"]["content"]
            tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
            raise ChatError(f"{type(e).__name__}: {e}") from None
        if not isinstance(text, str):
            raise ChatError("the answer has no text")
        return text, tokens

    def close(self) -> None:
        self.client.close()


def first_object(text: str) -> tuple[str | None, bool]:
    """(the first balanced {...} in text, or None when there is no "{"; closed: False when the
    object is truncated and had to be closed here).

    >>> first_object('sure: {"action": "back"} and {"x": 1}')
    ('{"action": "back"}', True)
    >>> first_object('{"action": "search", "query": "red')
    ('{"action": "search", "query": "red"}', False)
    """
    start = text.find("{")
    if start < 0:
        return None, True
    depth, in_str, esc, quote = 0, False, False, ""
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                in_str = False
        elif ch in "\"'":
            in_str, quote = True, ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1], True
    tail = text[start:].rstrip().rstrip(",")
    return tail + (quote if in_str else "") + "}" * depth, False


_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_BARE_KEY = re.compile(r'([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:')
_PY_LITERALS = ((re.compile(r"\bTrue\b"), "true"), (re.compile(r"\bFalse\b"), "false"), (re.compile(r"\bNone\b"), "null"))


def loads_lenient(obj: str) -> tuple[Any, bool]:
    """(json value, repaired?) of an object's text, trying the common fixes; raises ValueError.

    >>> loads_lenient("{'action': 'end_session', 'goal_reached': True,}")
    ({'action': 'end_session', 'goal_reached': True}, True)
    """
    try:
        return json.loads(obj), False
    except (json.JSONDecodeError, RecursionError):
        pass
    s = obj
    if '"' not in s:
        s = s.replace("'", '"')
    for pat, rep in _PY_LITERALS:
        s = pat.sub(rep, s)
    s = _TRAILING_COMMA.sub(r"\1", s)
    s = _BARE_KEY.sub(r'\1"\2":', s)
    try:
        return json.loads(s), True
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(str(e)) from None


def extract_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in model text (repaired if needed), or None when there is none.

    >>> extract_object('Sure: {"success": false, "reason": "no purchase",}'), extract_object("yes")
    ({'success': False, 'reason': 'no purchase'}, None)
    """
    obj_text, _ = first_object(text)
    if obj_text is None:
        return None
    try:
        obj, _ = loads_lenient(obj_text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
