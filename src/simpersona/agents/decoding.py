"""Decoding for the local LLM agent: a per-page action grammar (llguidance), constrained or free
sampling, and a prompt-prefix KV cache, in one token loop over a transformers causal LM.

- `action_grammar(page, can_go_back)`: a Lark grammar (llguidance's dialect) of exactly the actions
  the current page can execute, spelled as the SFT answers are (`json.dumps` of `{"action": …,
  fields…, "reasoning": …}`): `click` only on the page's links and buttons, `fill` only on its
  inputs (a select only with one of its options), `remove_from_cart` only for products the page can
  remove, `search` / `add_to_cart` only where the page has the search box / add form, `back` only
  when there is a previous page; the reasoning may be left out (as `parse_action` allows). Free
  text (query, typed value, reasoning) has no quote, backslash or control character and a token
  cap (`[max_tokens=N]`), so every constrained answer closes.
- `Constraint`: llguidance's tokenizer view of a Hugging Face tokenizer (built once) → a matcher
  per answer, and the allowed-token mask of its next step.
- `PrefixCache`: the KV cache of recent prompts by token ids; a new prompt prefills only the
  tokens after its longest common prefix with one of them (the system prompt is shared by every
  episode; goal, persona and the progress log by consecutive steps of one episode).
- `generate_ids`: prefill each prompt on its cached prefix (batch 1), then decode the batch
  together on the left-padded caches; greedy (temperature 0, Table 4) or temperature / top-p
  sampling from a seeded generator (population simulation); grammar masks in constrained mode,
  stop at a closed JSON object / end token in free mode.
- Fast-forward (`advance`): in constrained mode, the tokens the grammar forces after a chosen token
  (`", "element_id": "`, the rest of a unique element id, `"reasoning": `: ~15 of a click's ~23
  tokens) are taken without sampling and run through the model in ONE forward pass with the chosen
  token (rows of a batch padded to the longest, the padding masked out). They are llguidance's
  canonical tokenization of the forced text: the tokenization the SFT answers were trained on.

Why llguidance: on SmolLM2's 49,152-token vocabulary it builds a page's grammar and matcher in
~2 ms and computes a next-token mask in ~0.01–0.2 ms (median), while xgrammar 0.2.8 needs ~13 s to
compile each page's grammar (1 thread, loaded machine; `bench/bench_agent.py --libs` times both).
llguidance has no dependency.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from typing import Any

from simpersona.contracts import storefront as V
from simpersona.storefront.actions import MAX_QUANTITY

# Free text (query, typed value, reasoning): no quote, backslash or control character, so the JSON
# string needs no escape (and cannot hold a lone surrogate); a query / value starts with a non-space.
_TEXT_CHARS = r'[^"\\\x00-\x1f]'
_OPTIONS = re.compile(r"\(options: (.*)\)\s*$")


def _lit(text: str) -> str:
    """A Lark string literal matching the JSON string literal of `text` (as json.dumps writes it)."""
    return json.dumps(json.dumps(text, ensure_ascii=False))


def _alts(values: list[str]) -> str:
    return " | ".join(_lit(v) for v in values)


def select_options(rest: str) -> list[str]:
    """The option values of a select's snapshot line (after its id and kind).

    >>> select_options("Country = 'US' (options: US, CA, GB)")
    ['US', 'CA', 'GB']
    """
    m = _OPTIONS.search(rest)
    return [o.strip() for o in m.group(1).split(",") if o.strip()] if m else []


def action_grammar(page: str, can_go_back: bool = True, max_text_tokens: int = 24, max_reasoning_tokens: int = 32,
                   max_text_chars: int = 80) -> str:
    """The Lark grammar of the actions executable on `page` (a storefront snapshot, as the agent sees it).

    >>> g = action_grammar("URL: /s/x/\\n[nav-home] link: Home", can_go_back=False)
    >>> '"\\\\"back\\\\""' in g, "nav-home" in g, "search" in g
    (False, True, False)
    """
    els = V.elements(page)
    clickable = [i for i, (kind, _) in els.items() if kind in ("link", "button")]
    inputs = [i for i, (kind, _) in els.items() if kind == "input"]
    selects = {i: select_options(rest) for i, (kind, rest) in els.items() if kind == "select"}
    selects = {i: o for i, o in selects.items() if o}
    removable = [i[len(V.REMOVE_PREFIX):] for i in els if i.startswith(V.REMOVE_PREFIX) and len(i) > len(V.REMOVE_PREFIX)]
    q = lambda name: _lit(name)  # noqa: E731
    bodies = []
    if V.SEARCH_BOX in els:
        bodies.append(f'{q("search")} ", \\"query\\": " text')
    if clickable:
        bodies.append(f'{q("click")} ", \\"element_id\\": " ({_alts(clickable)})')
    if V.QUANTITY in els:
        bodies.append(f'{q("add_to_cart")} ", \\"quantity\\": " QTY')
    if removable:
        bodies.append(f'{q("remove_from_cart")} ", \\"product_id\\": " ({_alts(removable)})')
    bodies += [q("view_cart"), q("checkout")]
    if inputs:
        bodies.append(f'{q("fill")} ", \\"element_id\\": " ({_alts(inputs)}) ", \\"value\\": " text')
    for sid, opts in selects.items():
        bodies.append(f'{q("fill")} ", \\"element_id\\": " {_lit(sid)} ", \\"value\\": " ({_alts(opts)})')
    if inputs or selects or any(els[i][0] == "button" for i in clickable):
        fields = inputs + list(selects) + [i for i in clickable if els[i][0] == "button"]
        bodies.append(f'{q("submit")} ", \\"element_id\\": " ({_alts(fields)})')
    if can_go_back:
        bodies.append(q("back"))
    bodies.append(f'{q("end_session")} ", \\"goal_reached\\": " ("true" | "false")')
    digits = "[1-9]" if MAX_QUANTITY < 10 else "[1-9][0-9]?"
    n = max(0, int(max_text_chars) - 1)
    # The token caps sit on the strings' contents, so a capped string still gets its closing quote.
    # max_reasoning_tokens 0: an empty reasoning at most (the answer closes after the action's fields). The
    # optional empty field keeps the tokenizer's `",` token legal after a string field: without it a model
    # trained to write `", "reasoning"` finds its closing token masked and runs the string on.
    reason = '"\\"" reason? "\\""' if max_reasoning_tokens > 0 else '"\\"\\""'
    reasoning = f' (", \\"reasoning\\": " {reason})?'
    return "\n".join([
        'start: "{\\"action\\": " body' + reasoning + ' "}"',
        "body: " + "\n    | ".join(bodies),
        'text: "\\"" words "\\""',
        f"words[max_tokens={int(max_text_tokens)}]: WORDS",
        f"reason[max_tokens={max(1, int(max_reasoning_tokens))}]: REASON",
        f'WORDS: /[^"\\\\\\x00-\\x1f\\s]{_TEXT_CHARS}{{0,{n}}}/',
        f"REASON: /{_TEXT_CHARS}{{1,{int(max_text_chars)}}}/",
        f"QTY: /{digits}/",
    ])


class Constraint:
    """llguidance over one tokenizer: a matcher per grammar and the allowed-token mask of its next token."""

    def __init__(self, tokenizer):
        import llguidance
        import llguidance.hf
        import numpy as np

        self._ll, self._np = llguidance, np
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer)
        self.vocab = self.tokenizer.vocab_size
        self._buf = np.zeros((self.vocab + 31) // 32, dtype=np.int32)

    def matcher(self, grammar: str):
        """A fresh matcher of a Lark grammar; raises ValueError when the grammar does not compile."""
        m = self._ll.LLMatcher(self.tokenizer, self._ll.LLMatcher.grammar_from_lark(grammar), log_level=1)
        if m.is_error():
            raise ValueError(f"action grammar: {m.get_error()}")
        return m

    def allowed(self, matcher, width: int):
        """Bool tensor (width,) of the tokens the matcher accepts next (ids ≥ the tokenizer's vocabulary: never)."""
        import torch

        matcher.unsafe_compute_mask_ptr(self._buf.ctypes.data, self._buf.nbytes)
        bits = self._np.unpackbits(self._buf.view(self._np.uint8), bitorder="little")[: min(width, self.vocab)]
        out = torch.zeros(width, dtype=torch.bool)
        out[: len(bits)] = torch.from_numpy(bits.astype(bool))
        return out


class PrefixCache:
    """Per-layer K/V of recent prompts (token ids), most recently used kept; `size` 0 = no caching."""

    def __init__(self, size: int):
        self.size = int(size)
        self.entries: OrderedDict[int, tuple[list[int], list[tuple[Any, Any]]]] = OrderedDict()
        self._next = 0
        self.hit_tokens = 0
        self.prefill_tokens = 0
        self.prefill_s = 0.0
        self.decode_passes = 0  # model calls after the prefill (one per step of the batch)

    def lookup(self, ids: list[int]) -> tuple[int, list[tuple[Any, Any]] | None]:
        """(n, kv): the longest cached common prefix (n < len(ids): the last token is always prefilled)."""
        best, best_key = 0, None
        for key, (cached, _) in self.entries.items():
            n = min(len(cached), len(ids) - 1)
            j = 0
            while j < n and cached[j] == ids[j]:
                j += 1
            if j > best:
                best, best_key = j, key
        if best_key is None:
            return 0, None
        self.entries.move_to_end(best_key)
        return best, self.entries[best_key][1]

    def store(self, ids: list[int], kv: list[tuple[Any, Any]]) -> None:
        if self.size <= 0:
            return
        self.entries[self._next] = (list(ids), kv)
        self._next += 1
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def prefill(model, ids: list[int], cache: PrefixCache):
    """Run the prompt `ids` (batch 1) on its longest cached prefix; returns (per-layer K/V (1, H, L, D), logits (V,))."""
    import time

    import torch
    from transformers import DynamicCache

    t0 = time.perf_counter()
    n, kv = cache.lookup(ids)
    past = DynamicCache(ddp_cache_data=[(k[:, :, :n], v[:, :, :n]) for k, v in kv]) if n else DynamicCache()
    x = torch.tensor([ids[n:]])  # (1, L - n)
    pos = torch.arange(n, len(ids))[None]  # (1, L - n)
    out = model(input_ids=x, cache=past, position_ids=pos, use_cache=True, logits_to_keep=1)
    full = [(layer.keys, layer.values) for layer in out.cache.layers]
    cache.store(ids, full)
    cache.hit_tokens += n
    cache.prefill_tokens += len(ids) - n
    cache.prefill_s += time.perf_counter() - t0
    return full, out.logits[0, -1].float()  # (V,)


def advance(matcher, token: int, fast_forward: bool = True) -> list[int] | None:
    """Consume the chosen `token` and (fast_forward) the tokens the grammar then forces; returns them
    all (the next model input), or None when the matcher rejects `token` (cannot happen under its mask)."""
    if not matcher.consume_token(token):
        return None
    done = not fast_forward or matcher.is_accepting() or matcher.is_stopped()
    forced = [] if done else list(matcher.compute_ff_tokens())
    if forced and not matcher.consume_tokens(forced):
        return None
    return [int(token)] + forced


def choose(logits, temperature: float, top_p: float, generator):
    """Next token ids (B,) from logits (B, V): argmax at temperature 0, else nucleus sampling."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        keep = (sp.cumsum(-1) - sp) < top_p  # (B, V) the first always kept
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def generate_ids(model, prompts: list[list[int]], cache: PrefixCache, *, max_new_tokens: int, stop_ids: list[int],
                 temperature: float, top_p: float, generator, matchers: list | None = None,
                 constraint: Constraint | None = None, closed=None, fast_forward: bool = True) -> list[list[int]]:
    """New token ids of each prompt (stop tokens excluded). `matchers` (constrained): one llguidance
    matcher per prompt, already past the response prefix; a row ends when its grammar is complete;
    `fast_forward`: the tokens it forces go through the model with the chosen one, unsampled.
    `closed(row, ids) -> bool` (free mode): the row's text is a complete answer."""
    import torch
    from transformers import DynamicCache

    B = len(prompts)
    out: list[list[int]] = [[] for _ in range(B)]
    with torch.inference_mode():
        pre = [prefill(model, ids, cache) for ids in prompts]
        lens = [len(ids) for ids in prompts]
        L = max(lens)
        layers = []
        for li in range(len(pre[0][0])):
            k0 = pre[0][0][li][0]
            K = k0.new_zeros((B, k0.shape[1], L, k0.shape[3]))  # (B, H, L, D)
            Vv = K.clone()
            for b, (kv, _) in enumerate(pre):
                K[b, :, L - lens[b]:] = kv[li][0][0]
                Vv[b, :, L - lens[b]:] = kv[li][1][0]
            layers.append((K, Vv))
        past = DynamicCache(ddp_cache_data=layers)
        mask = torch.zeros((B, L), dtype=torch.long)  # (B, L) 1 = a real token
        for b in range(B):
            mask[b, L - lens[b]:] = 1
        pos = torch.tensor(lens)  # (B,) next position of each row
        logits = torch.stack([lg for _, lg in pre])  # (B, V)
        live = list(range(B))  # prompt index of each batch row
        stop = set(stop_ids)
        pad = 0
        for _ in range(max_new_tokens):
            if matchers is not None:
                allow = torch.stack([constraint.allowed(matchers[i], logits.shape[-1]) for i in live])  # (B', V)
                logits = logits.masked_fill(~allow, float("-inf"))
            nxt = choose(logits, temperature, top_p, generator).tolist()  # (B',)
            keep, feed = [], []
            for r, (i, t) in enumerate(zip(live, nxt)):
                done = t in stop
                new = [t]
                if matchers is not None and not done:
                    new = advance(matchers[i], t, fast_forward)
                    if new is None:
                        done = True  # cannot happen under the mask; the row ends (its text gets classified)
                    else:
                        out[i] += new
                        done = matchers[i].is_accepting() or matchers[i].is_stopped()
                elif not done:
                    out[i].append(t)
                    done = closed is not None and closed(i, out[i])
                if not done:
                    keep.append(r)
                    feed.append(new)
            if not keep:
                break
            if len(keep) < len(live):
                idx = torch.tensor(keep)
                past.batch_select_indices(idx)
                mask, pos = mask[idx], pos[idx]
                live = [live[r] for r in keep]
            n = max(len(f) for f in feed)
            x = torch.tensor([f + [pad] * (n - len(f)) for f in feed])  # (B', n) right-padded
            real = torch.tensor([[1] * len(f) + [0] * (n - len(f)) for f in feed])  # (B', n)
            mask = torch.cat([mask, real], dim=1)  # (B', L + t) padding stays masked out for good
            step = model(input_ids=x, cache=past, attention_mask=mask, position_ids=pos[:, None] + torch.arange(n),
                         use_cache=True, logits_to_keep=n)
            cache.decode_passes += 1
            past = step.cache
            last = torch.tensor([len(f) - 1 for f in feed])  # (B',)
            logits = step.logits[torch.arange(len(feed)), last].float()  # (B', V)
            pos = pos + torch.tensor([len(f) for f in feed])
    return out
