"""The persona id: one type everywhere.

A persona is a VQ-VAE code `k` in 0 … K-1 (`PersonaId = int`); "no persona" (the ablation's
variant, an unassigned buyer) is `None` — never -1 or False. In text a persona is the special
token `<|persona_k|>`, which a fine-tuned checkpoint's tokenizer must know for every k < K
(`check_tokenizer`).
"""

from __future__ import annotations

import re
from typing import Any

# A persona code k (0 … K-1); `PersonaId | None` where "no persona" is possible.
PersonaId = int

_TOKEN = re.compile(r"^<\|persona_(\d+)\|>$")


def persona_token(k: PersonaId) -> str:
    """The special token of persona k.

    >>> persona_token(3)
    '<|persona_3|>'
    """
    return f"<|persona_{int(k)}|>"


def persona_tokens(n_codes: int) -> list[str]:
    """The K tokens of a codebook of `n_codes` entries, in code order.

    >>> persona_tokens(2)
    ['<|persona_0|>', '<|persona_1|>']
    """
    return [persona_token(k) for k in range(int(n_codes))]


def parse_persona_token(text: str | None) -> PersonaId | None:
    """The code of a persona token; None for "" / None / "none" (no persona). Raises ValueError
    on anything else.

    >>> parse_persona_token("<|persona_12|>"), parse_persona_token(""), parse_persona_token("none")
    (12, None, None)
    """
    if text is None or text.strip() in ("", "none"):
        return None
    m = _TOKEN.match(text.strip())
    if m is None:
        raise ValueError(f"not a persona token: {text!r} (expected <|persona_k|>)")
    return int(m.group(1))


def token_or_none(k: PersonaId | None) -> str | None:
    """The token of a persona, or None for no persona.

    >>> token_or_none(0), token_or_none(None)
    ('<|persona_0|>', None)
    """
    return None if k is None else persona_token(k)


def check_tokenizer(tokenizer: Any, n_codes: int, checkpoint: Any = "") -> None:
    """Raise ValueError, naming the checkpoint, unless the tokenizer maps every persona token of a
    K = `n_codes` codebook to one id of its own (a missing token would be split into sub-words, and
    the agent would silently run without its persona)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in persona_tokens(n_codes) if t not in vocab]
    if missing:
        shown = ", ".join(missing[:3]) + (f" … ({len(missing)} in all)" if len(missing) > 3 else "")
        raise ValueError(f"checkpoint {checkpoint}: its tokenizer lacks persona token(s) {shown} of the run's "
                         f"K = {n_codes} codes; fine-tune it with `simpersona sft` on this run's personas")
    ids = {vocab[t] for t in persona_tokens(n_codes)}
    if len(ids) != int(n_codes):
        raise ValueError(f"checkpoint {checkpoint}: persona tokens share ids in its tokenizer ({len(ids)} ids for {n_codes} tokens)")
