"""THE prompt format: one SFT example per agent step, and the same prompt for the LLM agent.

    system     the role, a compact list of the actions and their fields, the rules (~150 tokens)
    user       goal · buyer profile (`<|persona_k|>` or "none") · progress log (the last
               `MAX_LOG_ENTRIES` steps, one short line each) · current page
    assistant  one JSON object: {"action": …, fields…, "reasoning": "…"}

The action's JSON schema is not in the prompt: a small model cannot afford ~1,000 tokens of schema
per step, and the decoder is what enforces the action grammar. Training (`contracts.records`) and
simulation (`agents.llm`) both build their messages with `messages()` and their progress log with
`log_entry()`, so the agent sees at run time exactly what it was trained on. The page text is the
storefront's snapshot, already pruned to `storefront.env.obs_token_budget`; a model preset's
`max_record_tokens` bounds the whole record, counted with the model's own tokenizer
(`record_tokens`, checked before training by `contracts.records.check_budget`).

`CHAT_TEMPLATE` is the ChatML template the tokenizer is saved with: its `{% generation %}`
markers (around the assistant's content AND its `<|im_end|>`) give trl the assistant-only loss mask.
"""

from __future__ import annotations

import json
from typing import Any

from simpersona.contracts.storefront import page_type
from simpersona.storefront.actions import FIELDS, MAX_QUANTITY, action_to_dict, parse_action

# The last this many progress-log entries are shown (older ones are summarised as a count).
MAX_LOG_ENTRIES = 6


def action_lines() -> str:
    """One line per action with its fields ("?" marks an optional field), from the action table.

    >>> action_lines().splitlines()[:2]
    ['search(query)', 'click(element_id)']
    """
    lines = []
    for name, fields in FIELDS.items():
        args = ", ".join(f + ("" if req else "?") for f, (_, req) in fields.items())
        lines.append(f"{name}({args})" if args else name)
    return "\n".join(lines)


SYSTEM_PROMPT = (
    "You are a shopper in an online store. Each turn you see your goal, your buyer profile, your "
    "last steps and the current page, where each element you can use is shown as [id] kind: label.\n"
    "Answer with ONE JSON object: {\"action\": name, its fields, \"reasoning\": one short sentence}.\n"
    "Actions:\n" + action_lines() + "\n"
    f"element_id: an id on the current page; quantity: 1-{MAX_QUANTITY}; goal_reached: true or false.\n"
    "Act as your buyer profile would: it decides how long you browse, what you compare and whether "
    "you add to cart or buy. One action per turn; end_session when done or leaving."
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


def log_entry(step: int, action: dict[str, Any], next_url: str | None, error: str | None = None) -> str:
    """One progress-log line: what step `step` (1-based) did and the kind of page it led to (or
    its error); the page's full URL is on the current page, and a search's query is in the action.

    >>> log_entry(2, {"action": "click", "element_id": "product-p1"}, "/s/shop_01/products/p1")
    "2. click(element_id='product-p1') → product page"
    """
    fields = ", ".join(f"{k}={v!r}" for k, v in action.items() if k not in ("action", "reasoning"))
    what = action["action"] + (f"({fields})" if fields else "")
    result = f"failed: {error}" if error else (f"{page_type(next_url)} page" if next_url else "done")
    return f"{step}. {what} → {result}"


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


# How every assistant turn starts (`assistant_turn`: the action's name is the JSON object's first
# field): the LLM agent's forced response prefix, and where SFT validation finds the decision.
ANSWER_PREFIX = '{"action": "'


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


def current_url(msgs: list[dict[str, str]]) -> str:
    """The URL of the page a chat's last user turn shows (`user_turn`'s "Current page" block).

    >>> current_url(messages("g", None, [], {"url": "/s/a/products/p1", "page": "TITLE: x"}))
    '/s/a/products/p1'
    """
    user = next(m["content"] for m in reversed(msgs) if m["role"] == "user")
    return user.split("Current page:\nURL: ", 1)[1].split("\n", 1)[0]


def record_tokens(msgs: list[dict[str, str]], tokenizer: Any) -> int:
    """Tokens of a chat (system, user, assistant) as the model sees it: `tokenizer`'s chat template
    (CHAT_TEMPLATE once set) applied to `msgs`."""
    return len(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])

