"""The LLM agent: THE SFT prompt (`contracts.prompt.messages` + `log_entry`), a model backend, repaired JSON.

Backends (`generate(list of chat messages) -> list of str | Exception`, one entry per prompt):
- `TransformersBackend` (= `LocalBackend`): a local checkpoint (an SFT stage folder: model +
  tokenizer with the persona tokens and chat template), decoded by `agents.decoding`: constrained
  to the actions the current page can execute (`llm.decoding: constrained`, llguidance) or free
  text (`free`: the paper's malformed-output comparison), greedy or seeded sampling, each prompt
  prefilled only past its longest cached prefix (`llm.prefix_cache`); counts generated / prefilled
  / cached tokens. The logits come from transformers (`llm.engine: transformers`, the reference)
  or from the checkpoint converted to ONNX Runtime GenAI (`onnx`, `agents.engine`: int8 on CPU,
  one KV cache per episode); tokenizer, grammar and sampler are the same for both.
- `EndpointBackend`: any OpenAI-compatible `/chat/completions` endpoint (httpx, concurrent
  requests); the only network use, and only when the user configures a URL.

A prompt is a `ChatPrompt`: the chat messages (a plain list to any backend) carrying the page
snapshot and whether the episode has a previous page, from which the decoder builds its grammar.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from simpersona.agents.base import Decision, parse_output
from simpersona.chat import ChatClient, EndpointConfig, first_object
from simpersona.contracts.persona import check_tokenizer, persona_token
from simpersona.contracts.prompt import ANSWER_PREFIX, log_entry, messages

# Safety cap on a constrained answer's tokens (its grammar bounds it far below: capped free text, finite ids).
CONSTRAINED_CAP = 4096
# Actions after which the environment has one more page in its history (`back` has one fewer).
NAVIGATING = ("search", "click", "add_to_cart", "remove_from_cart", "view_cart", "checkout", "submit")


@dataclass
class LLMConfig:
    # SFT checkpoint folder (model + tokenizer with persona tokens), e.g. RUN/sft/stage2
    checkpoint: Path | None = None
    # constrained: only actions executable on the current page (llguidance grammar); free: any text
    # (repaired / classified by `base.parse_output`; the paper's malformed-output comparison)
    decoding: Literal["constrained", "free"] = "constrained"
    # most tokens generated per step in free mode (constrained answers close by their grammar)
    max_new_tokens: int = 96
    # constrained: most tokens of a search query or a typed value
    max_text_tokens: int = 24
    # constrained: most tokens of the reasoning sentence; 0 = no reasoning field, the answer closes after
    # the action's fields (≈ 30–45 fewer decode passes per step; the progress log never shows reasoning)
    max_reasoning_tokens: int = 32
    # text the assistant turn is forced to start with (every SFT answer starts so): a cheap
    # constraint that keeps an under-trained model from answering in prose; "" = none
    response_prefix: str = ANSWER_PREFIX
    # constrained: the tokens the grammar forces after a chosen one (JSON keys, the rest of a unique id)
    # go through the model with it in one pass, unsampled (False: one pass per token, as free mode)
    fast_forward: bool = True
    # sampling temperature; 0 = greedy (Table 4); > 0 for population simulation
    temperature: float = 0.0
    # nucleus sampling mass (temperature > 0)
    top_p: float = 1.0
    # prompts per batched decode (episodes decoded together)
    batch_size: int = 16
    # prompt KV caches kept (recent prompts; a prompt prefills only past its longest cached prefix; SmolLM2
    # fp32: ~46 kB per prompt token, ~30 MB per prompt); keep ≥ batch_size; 0 = none
    prefix_cache: int = 32
    # prompts longer than this many tokens are not generated: failure "context_length"
    max_prompt_tokens: int = 8192
    # inference engine: transformers (the reference) or onnx (ONNX Runtime GenAI, the checkpoint
    # converted by `simpersona agent convert`; int8 on CPU, one KV cache per episode)
    engine: Literal["transformers", "onnx"] = "transformers"
    # onnx: the converted engine folder (checked against llm.checkpoint); None = converted on first
    # use into engine_cache/<checkpoint weights sha256>-<engine_precision>
    engine_dir: Path | None = None
    # onnx: where engines converted on first use are kept (content-addressed by the checkpoint's weights)
    engine_cache: Path = Path("runs/cache/engines")
    # onnx: weights of an engine converted on first use (int8: int8 compute with VNNI; int4; fp32)
    engine_precision: Literal["int8", "int4", "fp32"] = "int8"
    # onnx: most tokens (prompt + answer) one episode's KV cache holds (~46 kB per token for
    # SmolLM2); a longer prompt fails as context_length
    engine_context: int = 2048
    # torch CPU threads (and the onnx engine's)
    threads: int = 2
    # torch device
    device: str = "cpu"
    # weights dtype at inference
    dtype: Literal["float32", "bfloat16"] = "float32"
    # seed of sampling
    seed: int = 0


class ContextLengthError(ValueError):
    """The prompt is longer than the backend accepts."""


class ChatPrompt(list):
    """One step's chat messages (a list, as every backend reads it) with what the decoder's action
    grammar is built from: the page snapshot and whether `back` has a page to go to."""

    def __init__(self, msgs: list[dict[str, str]], page: str = "", can_go_back: bool = True, persona: str | None = None):
        super().__init__(msgs)
        self.page, self.can_go_back, self.persona = page, can_go_back, persona


class LLMAgent:
    """One episode's LLM agent; many share one backend (batched by `base.act_batch`)."""

    def __init__(self, backend):
        self.backend = backend
        self.reset("", None)

    def reset(self, goal: str, persona: int | None) -> None:
        self.goal, self.persona = goal, persona
        self.log: list[str] = []
        self.steps = 0
        self.pages = 1  # pages in the environment's history (back needs 2)
        self._pending: Decision | None = None

    def prompt(self, observation: dict[str, Any]) -> ChatPrompt:
        """This step's chat messages; the previous action's log line is written now, from the
        observation it led to (its URL or its error), exactly as `contracts.records` does."""
        if self._pending is not None:
            a = self._pending.action
            err = observation.get("error")
            self.log.append(log_entry(self.steps, a, observation.get("url"), err))
            if not err:
                self.pages += -1 if a["action"] == "back" else int(a["action"] in NAVIGATING)
            self._pending = None
        token = persona_token(self.persona) if self.persona is not None else None
        return ChatPrompt(messages(self.goal, token, list(self.log), observation), str(observation.get("page", "")),
                          self.pages > 1, token)

    def decide(self, text: str | Exception) -> Decision:
        """The backend's answer → Decision (an exception becomes backend_error / context_length)."""
        if isinstance(text, ContextLengthError):
            return Decision(None, "context_length", detail=str(text))
        if isinstance(text, Exception):
            return Decision(None, "backend_error", detail=f"{type(text).__name__}: {text}")
        d = parse_output(text)
        if d.action is not None:
            self.steps += 1
            self._pending = d
        return d

    def follow(self, history: list[tuple[dict[str, Any], dict[str, Any]]]) -> LLMAgent:
        """Next-action prediction (`evaluate fidelity`): put the agent where a REAL session is after
        `history`, its (action, the observation that action led to) pairs, as if it had taken them
        (progress log, page count); goal and persona stay as `reset` set them. The next `act` /
        `act_batch` answers the real prefix's next action. Returns self."""
        self.log, self.steps, self.pages, self._pending = [], 0, 1, None
        for action, observation in history:
            self.steps += 1
            self._pending = Decision(action)
            self.prompt(observation)  # writes the step's log line and page count, as in an episode
        return self

    def act(self, observation: dict[str, Any]) -> Decision:
        try:
            out = self.backend.generate([self.prompt(observation)])[0]
        except Exception as e:
            out = e
        return self.decide(out)


class LocalBackend:
    """Batched generation with a local checkpoint (`agents.decoding`); logits from transformers or the
    ONNX Runtime GenAI engine (`llm.engine`)."""

    def __init__(self, cfg: LLMConfig, model=None, tokenizer=None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        from simpersona.agents.decoding import Constraint, PrefixCache

        torch.set_num_threads(cfg.threads)
        self.engine = None
        if cfg.engine == "onnx":
            from transformers import AutoTokenizer

            from simpersona.agents.engine import OnnxEngine, engine_for

            folder = engine_for(cfg)  # checked against the checkpoint, converted when missing
            tokenizer = AutoTokenizer.from_pretrained(Path(cfg.checkpoint), local_files_only=True)
            self.engine = OnnxEngine(folder, cfg.threads, cfg.engine_context, max(cfg.prefix_cache, cfg.batch_size),
                                     reuse=cfg.prefix_cache > 0)
            self.engine_dir = folder
        elif model is None:
            if cfg.checkpoint is None:
                raise FileNotFoundError("the LLM agent needs llm.checkpoint (an SFT stage folder)")
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = Path(cfg.checkpoint)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=getattr(torch, cfg.dtype))
        self.cfg, self.tok = cfg, tokenizer
        self.model = model.to(cfg.device).eval() if self.engine is None else None
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        ids = [self.tok.convert_tokens_to_ids(t) for t in ("<|im_end|>",)] + [self.tok.eos_token_id]
        self.stop_ids = sorted({i for i in ids if isinstance(i, int) and i >= 0 and i != self.tok.unk_token_id})
        self.vocab = self.tok.get_vocab()
        self.constraint = Constraint(self.tok) if cfg.decoding == "constrained" else None
        self.prefix_ids = self.tok(cfg.response_prefix, add_special_tokens=False)["input_ids"] if cfg.response_prefix else []
        # the prompt KV caches: transformers' prefix cache, or the engine's generator pool (same counters)
        self.cache = PrefixCache(cfg.prefix_cache) if self.engine is None else self.engine
        self.generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.tokens_generated = 0
        self.decode_s = 0.0
        self.calls = 0

    def check_personas(self, n_codes: int) -> None:
        """Raise ValueError naming the checkpoint unless its tokenizer has the run's K persona tokens."""
        check_tokenizer(self.tok, n_codes, self.cfg.checkpoint or "(in memory)")

    @property
    def prefill_tokens(self) -> int:
        return self.cache.prefill_tokens

    @property
    def cached_tokens(self) -> int:
        return self.cache.hit_tokens

    def _matcher(self, prompt):
        """The llguidance matcher of a prompt's page, past the response prefix."""
        from simpersona.agents.decoding import action_grammar

        page, back = (prompt.page, prompt.can_go_back) if isinstance(prompt, ChatPrompt) else ("", True)
        m = self.constraint.matcher(action_grammar(page, back, self.cfg.max_text_tokens, self.cfg.max_reasoning_tokens))
        if self.prefix_ids and not m.consume_tokens(self.prefix_ids):
            raise ValueError(f"llm.response_prefix {self.cfg.response_prefix!r} does not start an action")
        return m

    def _closed(self):
        """Free mode's stop test: the row's text holds a closed JSON object."""
        prefix = self.cfg.response_prefix

        def closed(i: int, ids: list[int]) -> bool:
            if "}" not in self.tok.decode(ids[-1:], skip_special_tokens=True):
                return False
            obj, ok = first_object(prefix + self.tok.decode(ids, skip_special_tokens=True))
            return obj is not None and ok

        return closed

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[str | Exception]:
        from simpersona.agents.decoding import generate_ids

        texts = [self.tok.apply_chat_template(list(m), add_generation_prompt=True, tokenize=False) + self.cfg.response_prefix
                 for m in prompts]
        out: list[str | Exception] = [""] * len(texts)
        enc = [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        matchers: list[Any] = [None] * len(texts)
        ok = []
        for i, ids in enumerate(enc):
            persona = getattr(prompts[i], "persona", None)
            limit = self.cfg.max_prompt_tokens if self.engine is None else min(self.cfg.max_prompt_tokens, self.cfg.engine_context - 1)
            if len(ids) > limit:
                out[i] = ContextLengthError(f"prompt of {len(ids)} tokens > {limit}")
            elif persona and persona not in self.vocab:
                out[i] = ValueError(f"checkpoint {self.cfg.checkpoint or '(in memory)'}: its tokenizer lacks {persona}")
            else:
                try:
                    matchers[i] = self._matcher(prompts[i]) if self.constraint is not None else None
                    ok.append(i)
                except ValueError as e:
                    out[i] = e
        ok.sort(key=lambda i: len(enc[i]))  # similar lengths together: less padding
        # the engine decodes one prompt at a time on its own KV cache: one call for all of them
        bs = max(1, self.cfg.batch_size) if self.engine is None else max(1, len(ok))
        cap = self.cfg.max_new_tokens if self.constraint is None else CONSTRAINED_CAP
        for c in range(0, len(ok), bs):
            idx = ok[c : c + bs]
            t0 = time.perf_counter()
            kw = dict(max_new_tokens=cap, stop_ids=self.stop_ids, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                      generator=self.generator, matchers=[matchers[i] for i in idx] if self.constraint is not None else None,
                      constraint=self.constraint, closed=self._closed(), fast_forward=self.cfg.fast_forward)
            if self.engine is not None:
                gen = self.engine.generate([enc[i] for i in idx], **kw)
            else:
                gen = generate_ids(self.model, [enc[i] for i in idx], self.cache, **kw)
            self.decode_s += time.perf_counter() - t0
            self.calls += 1
            for ids, i in zip(gen, idx):
                if isinstance(ids, Exception):  # the engine failed on this prompt only
                    out[i] = ids
                    continue
                self.tokens_generated += len(ids)
                out[i] = self.cfg.response_prefix + self.tok.decode(ids, skip_special_tokens=True)
        return out


# The name the stages and tests use (a local checkpoint, whichever engine computes its logits).
TransformersBackend = LocalBackend


class EndpointBackend:
    """An OpenAI-compatible chat-completions endpoint (`cfg.url`), requests sent concurrently."""

    def __init__(self, cfg: EndpointConfig, transport=None):
        if not cfg.url:
            raise ValueError("the endpoint agent needs endpoint.url (e.g. http://127.0.0.1:8001/v1)")
        self.cfg = cfg
        self.client = ChatClient(cfg, transport)
        self.tokens_generated = 0
        self.decode_s = 0.0
        self.calls = 0

    def _one(self, msgs: list[dict[str, str]]) -> str:
        text, tokens = self.client.complete(msgs)
        self.tokens_generated += tokens
        return text

    def _safe(self, msgs):
        try:
            return self._one(msgs)
        except Exception as e:  # per request: one failure does not fail the batch
            return e

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[str | Exception]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
            out = list(pool.map(self._safe, prompts))
        self.decode_s += time.perf_counter() - t0
        self.calls += 1
        return out

    def close(self) -> None:
        self.client.close()
