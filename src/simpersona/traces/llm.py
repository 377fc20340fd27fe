"""An OpenAI-compatible chat client (vLLM, llama.cpp server, …) for the optional goal rewriter
and LLM judge: `POST {base_url}/chat/completions` with httpx. Off unless `base_url` is set.

Every call either returns the answer text or raises `LLMError`; callers fall back to the
template / rule verdict and count the failure.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import httpx

from simpersona.traces.goals import Goals, Session, timeline

REWRITE_SYSTEM = (
    "You turn a shopper's recorded session into a navigation goal for a web agent. Keep the "
    "session's structure: the same searches, collections, products, cart actions and whether it "
    "ends with checkout or a purchase, in the same order. Do not add or drop steps. Write one to "
    "three plain sentences in the second person, without a greeting. Answer with the goal only."
)
JUDGE_SYSTEM = (
    "You judge whether a web agent's replay of a shopping session reproduced it. Answer with one "
    'JSON object: {"success": true or false, "reason": "one sentence"}.'
)


class LLMError(RuntimeError):
    """The endpoint failed, timed out, or answered something unusable."""


@dataclass
class LLMConfig:
    # OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1); "" = no LLM, templates/rules only
    base_url: str = ""
    # model name sent in the request
    model: str = ""
    # name of the environment variable holding the API key ("" = no Authorization header)
    api_key_env: str = ""
    # seconds per request
    timeout_s: float = 30.0
    # sampling temperature
    temperature: float = 0.0
    # most tokens in an answer
    max_tokens: int = 256
    # longest accepted rewritten goal, in characters (longer → fallback to the template)
    max_goal_chars: int = 600


class LLMClient:
    """One httpx client for a run; `transport` lets tests plug in httpx.MockTransport."""

    def __init__(self, cfg: LLMConfig, transport: httpx.BaseTransport | None = None):
        if not cfg.base_url:
            raise ValueError("LLMClient needs llm.base_url")
        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ValueError(f"llm.api_key_env names {cfg.api_key_env!r}, which is not set in the environment")
            headers["Authorization"] = f"Bearer {key}"
        self.cfg = cfg
        self.client = httpx.Client(base_url=cfg.base_url.rstrip("/") + "/", timeout=cfg.timeout_s,
                                   headers=headers, transport=transport)

    def chat(self, system: str, user: str) -> str:
        body = {"model": self.cfg.model, "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        try:
            r = self.client.post("chat/completions", json=body)
            r.raise_for_status()
            text = r.json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
            raise LLMError(f"{type(e).__name__}: {e}") from None
        if not isinstance(text, str) or not text.strip():
            raise LLMError("empty answer")
        return text.strip()

    def rewrite_goal(self, session: Session, goals: Goals) -> str:
        """A rewritten navigation goal (raises LLMError when unusable)."""
        user = (f"Session events:\n{timeline(session)}\n\nTemplate goal: {goals.navigation}\n\n"
                "Rewrite the template goal naturally, keeping every step.")
        text = self.chat(REWRITE_SYSTEM, user).strip().strip('"').strip()
        if len(text) > self.cfg.max_goal_chars or "\n\n" in text:
            raise LLMError(f"rewritten goal unusable ({len(text)} chars)")
        return text

    def judge(self, goal: str, session: Session, replay_events: list[str]) -> tuple[bool, str]:
        """(success, reason) from the LLM judge (raises LLMError when the answer is not the JSON asked)."""
        user = (f"Goal: {goal}\n\nOriginal session:\n{timeline(session)}\n\n"
                "Events the storefront logged during the replay:\n" + "\n".join(replay_events))
        text = self.chat(JUDGE_SYSTEM, user)
        start, end = text.find("{"), text.rfind("}")
        try:
            obj = json.loads(text[start : end + 1]) if start >= 0 else None
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("success"), bool):
            raise LLMError(f"judge answer is not {{\"success\": bool}}: {text[:120]!r}")
        return obj["success"], str(obj.get("reason", ""))

    def close(self) -> None:
        self.client.close()
