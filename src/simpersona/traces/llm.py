"""The optional goal rewriter and LLM judge of the traces, on the one OpenAI-compatible client
(`simpersona.chat.ChatClient`, configured by `chat.EndpointConfig`; off unless its url is set).

Every call either returns the answer or raises `LLMError`; callers fall back to the template /
rule verdict and count the failure.
"""

from __future__ import annotations

from simpersona.chat import ChatClient, ChatError, EndpointConfig, extract_object
from simpersona.traces.goals import Goals, Session, timeline

# Longest accepted rewritten goal, in characters (longer → the template goal).
MAX_GOAL_CHARS = 600

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


class LLMClient:
    """The rewriter and judge over one `ChatClient`; `transport` lets tests plug in httpx.MockTransport."""

    def __init__(self, cfg: EndpointConfig, transport=None):
        if not cfg.url:
            raise ValueError("LLMClient needs llm.url")
        self.cfg = cfg
        self.client = ChatClient(cfg, transport)

    def chat(self, system: str, user: str) -> str:
        try:
            text, _ = self.client.complete([{"role": "system", "content": system}, {"role": "user", "content": user}])
        except ChatError as e:
            raise LLMError(str(e)) from None
        if not text.strip():
            raise LLMError("empty answer")
        return text.strip()

    def rewrite_goal(self, session: Session, goals: Goals) -> str:
        """A rewritten navigation goal (raises LLMError when unusable)."""
        user = (f"Session events:\n{timeline(session)}\n\nTemplate goal: {goals.navigation}\n\n"
                "Rewrite the template goal naturally, keeping every step.")
        text = self.chat(REWRITE_SYSTEM, user).strip().strip('"').strip()
        if len(text) > MAX_GOAL_CHARS or "\n\n" in text:
            raise LLMError(f"rewritten goal unusable ({len(text)} chars)")
        return text

    def judge(self, goal: str, session: Session, replay_events: list[str]) -> tuple[bool, str]:
        """(success, reason) from the LLM judge (raises LLMError when the answer is not the JSON asked)."""
        user = (f"Goal: {goal}\n\nOriginal session:\n{timeline(session)}\n\n"
                "Events the storefront logged during the replay:\n" + "\n".join(replay_events))
        text = self.chat(JUDGE_SYSTEM, user)
        obj = extract_object(text)
        if obj is None or not isinstance(obj.get("success"), bool):
            raise LLMError(f"judge answer is not {{\"success\": bool}}: {text[:120]!r}")
        return obj["success"], str(obj.get("reason", ""))

    def close(self) -> None:
        self.client.close()
