"""THE prompt format: one SFT example per agent step, and the same prompt for the LLM agent.

    system     the role, the JSON action schema (`storefront.actions.ACTION_SCHEMA`), the rules
    user       goal · buyer profile (`<|persona_k|>` or "none") · progress log (memory) · current page
    assistant  one JSON object: {"action": …, fields…, "reasoning": "…"}

Training (`sft.records`) and simulation (the agent) both build their messages with `messages()`
and their progress log with `log_entry()`, so the agent sees at run time exactly what it was
trained on. `CHAT_TEMPLATE` is the ChatML template the tokenizer is saved with: its
`{% generation %}` markers (around the assistant's content AND its `<|im_end|>`) give trl the
assistant-only loss mask.
"""

from __future__ import annotations

import json
from typing import Any

from simpersona.storefront.actions import ACTION_SCHEMA, action_to_dict, parse_action

# The last this many progress-log entries are shown (older ones are summarised as a count).
MAX_LOG_ENTRIES = 30

SYSTEM_PROMPT = (
    "You are a shopper browsing an online store. Each turn you see your goal, your buyer profile, "
    "a log of what you have done so far and the current page as text, where every element you can "
    "use is written as [id] kind: label.\n"
    "Answer with exactly ONE JSON object and nothing else: the field \"action\", the action's "
    "fields, and a short \"reasoning\" (one sentence) saying why.\n"
    "Rules:\n"
    "- Use only element ids shown on the current page.\n"
    "- Act as the buyer described by the buyer profile would: its habits decide how long you browse, "
    "what you compare, and whether you add to cart or buy.\n"
    "- Do one action per turn; when the goal is done or you would leave the store, send end_session.\n"
    "The JSON schema of an action:\n"
    + json.dumps(ACTION_SCHEMA, separators=(",", ":"))
)

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def persona_token(k: int) -> str:
    """`persona_token(3)` → `'<|persona_3|>'`."""
    return f"<|persona_{int(k)}|>"


def log_entry(step: int, action: dict[str, Any], reasoning: str, next_url: str | None, error: str | None = None) -> str:
    """One progress-log line: what step `step` (1-based) did, why, and where it led (or its error)."""
    fields = ", ".join(f"{k}={v!r}" for k, v in action.items() if k not in ("action", "reasoning"))
    what = action["action"] + (f"({fields})" if fields else "")
    result = f"failed: {error}" if error else (f"now at {next_url}" if next_url else "done")
    return f"{step}. {what} — {reasoning.strip()} → {result}"


def user_turn(goal: str, persona: str | None, progress_log: list[str], observation: dict[str, Any]) -> str:
    """The user message of one step. `persona`: a persona token, or None for the no-persona ablation;
    `observation`: the env's observation dict (`url`, `page`, optional `error`)."""
    shown = progress_log[-MAX_LOG_ENTRIES:]
    hidden = len(progress_log) - len(shown)
    log = (["(nothing yet)"] if not progress_log else []) + ([f"({hidden} earlier steps)"] if hidden else []) + shown
    page = str(observation["page"])
    if not page.startswith("URL:"):
        page = f"URL: {observation['url']}\n{page}"
    parts = [
        f"Goal: {goal.strip()}",
        f"Buyer profile: {persona if persona else 'none'}",
        "Progress log:\n" + "\n".join(log),
    ]
    if observation.get("error"):
        parts.append(f"Last action failed: {observation['error']}")
    parts.append("Current page:\n" + page)
    return "\n\n".join(parts)


def assistant_turn(action: dict[str, Any], reasoning: str) -> str:
    """The assistant message: the action's JSON object with a short reasoning (validated on the way)."""
    clean = action_to_dict(parse_action({k: v for k, v in action.items() if k != "reasoning"}))
    return json.dumps({**clean, "reasoning": reasoning.strip()}, ensure_ascii=False)


def messages(
    goal: str, persona: str | None, progress_log: list[str], observation: dict[str, Any],
    action: dict[str, Any] | None = None, reasoning: str = "",
) -> list[dict[str, str]]:
    """The chat `messages` trl reads: system + user, and the assistant turn when `action` is given
    (training); without it, the prompt the agent completes (generation)."""
    out = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_turn(goal, persona, progress_log, observation)},
    ]
    if action is not None:
        out.append({"role": "assistant", "content": assistant_turn(action, reasoning)})
    return out
