"""The LLM agent: THE SFT prompt (`contracts.prompt.messages` + `log_entry`), a model backend, repaired JSON.

Backends (`generate(list of chat messages) -> list of str | Exception`, one entry per prompt):
- `TransformersBackend`: a local checkpoint (an SFT stage folder: model + tokenizer with the
  persona tokens and chat template), batched left-padded generation, stopped per row as soon as
  its JSON object closes (or at <|im_end|>); counts generated tokens and decode seconds.
- `EndpointBackend`: any OpenAI-compatible `/chat/completions` endpoint (httpx, concurrent
  requests); the only network use, and only when the user configures a URL.
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
from simpersona.contracts.persona import persona_token
from simpersona.contracts.prompt import log_entry, messages


@dataclass
class LLMConfig:
    # SFT checkpoint folder (model + tokenizer with persona tokens), e.g. RUN/sft/stage2
    checkpoint: Path | None = None
    # most tokens generated per step (an action JSON with a short reasoning fits in ~80)
    max_new_tokens: int = 96
    # text the assistant turn is forced to start with (every SFT answer starts so): a cheap
    # constraint that keeps an under-trained model from answering in prose; "" = none
    response_prefix: str = '{"action": "'
    # sampling temperature; 0 = greedy
    temperature: float = 0.0
    # nucleus sampling mass (temperature > 0)
    top_p: float = 1.0
    # prompts per generate call (episodes decoded together)
    batch_size: int = 16
    # prompts longer than this many tokens are not generated: failure "context_length"
    max_prompt_tokens: int = 8192
    # torch CPU threads
    threads: int = 2
    # torch device
    device: str = "cpu"
    # weights dtype at inference
    dtype: Literal["float32", "bfloat16"] = "float32"
    # seed of sampling
    seed: int = 0


class ContextLengthError(ValueError):
    """The prompt is longer than the backend accepts."""


class LLMAgent:
    """One episode's LLM agent; many share one backend (batched by `base.act_batch`)."""

    def __init__(self, backend):
        self.backend = backend
        self.reset("", None)

    def reset(self, goal: str, persona: int | None) -> None:
        self.goal, self.persona = goal, persona
        self.log: list[str] = []
        self.steps = 0
        self._pending: Decision | None = None

    def prompt(self, observation: dict[str, Any]) -> list[dict[str, str]]:
        """This step's chat messages; the previous action's log line is written now, from the
        observation it led to (its URL or its error), exactly as `contracts.records` does."""
        if self._pending is not None:
            a = self._pending
            self.log.append(log_entry(self.steps, a.action, observation.get("url"), observation.get("error")))
            self._pending = None
        token = persona_token(self.persona) if self.persona is not None else None
        return messages(self.goal, token, list(self.log), observation)

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

    def act(self, observation: dict[str, Any]) -> Decision:
        try:
            out = self.backend.generate([self.prompt(observation)])[0]
        except Exception as e:
            out = e
        return self.decide(out)


class TransformersBackend:
    """Batched generation with a local causal LM checkpoint."""

    def __init__(self, cfg: LLMConfig, model=None, tokenizer=None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        torch.set_num_threads(cfg.threads)
        if model is None:
            if cfg.checkpoint is None:
                raise FileNotFoundError("the LLM agent needs llm.checkpoint (an SFT stage folder)")
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = Path(cfg.checkpoint)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=getattr(torch, cfg.dtype))
        self.cfg, self.model, self.tok = cfg, model.to(cfg.device).eval(), tokenizer
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        ids = [self.tok.convert_tokens_to_ids(t) for t in ("<|im_end|>",)] + [self.tok.eos_token_id]
        self.stop_ids = sorted({i for i in ids if isinstance(i, int) and i >= 0 and i != self.tok.unk_token_id})
        self.generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.tokens_generated = 0
        self.decode_s = 0.0
        self.calls = 0

    def _stopper(self, prompt_len: int):
        import torch
        from transformers import StoppingCriteria

        tok = self.tok

        prefix = self.cfg.response_prefix

        class JsonClosed(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):  # (B, L) → (B,) bool
                done = [first_object(prefix + tok.decode(row[prompt_len:], skip_special_tokens=True)) for row in input_ids]
                return torch.tensor([o is not None and closed for o, closed in done], device=input_ids.device)

        return JsonClosed()

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[str | Exception]:
        import torch
        from transformers import StoppingCriteriaList

        texts = [self.tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) + self.cfg.response_prefix
                 for m in prompts]
        out: list[str | Exception] = [""] * len(texts)
        lens = [len(self.tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        ok = [i for i, n in enumerate(lens) if n <= self.cfg.max_prompt_tokens]
        for i, n in enumerate(lens):
            if n > self.cfg.max_prompt_tokens:
                out[i] = ContextLengthError(f"prompt of {n} tokens > {self.cfg.max_prompt_tokens}")
        ok.sort(key=lambda i: lens[i])  # similar lengths together: less padding
        bs = max(1, self.cfg.batch_size)
        for c in range(0, len(ok), bs):
            idx = ok[c : c + bs]
            enc = self.tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(self.cfg.device)
            width = enc["input_ids"].shape[1]
            sample = self.cfg.temperature > 0
            t0 = time.perf_counter()
            with torch.inference_mode():
                gen = self.model.generate(
                    **enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=sample,
                    temperature=self.cfg.temperature if sample else None, top_p=self.cfg.top_p if sample else None,
                    top_k=None, eos_token_id=self.stop_ids, pad_token_id=self.tok.pad_token_id,
                    stopping_criteria=StoppingCriteriaList([self._stopper(width)]),
                )  # (B, width + new)
            self.decode_s += time.perf_counter() - t0
            self.calls += 1
            for row, i in zip(gen[:, width:], idx):
                ids = row.tolist()
                n = len(ids)
                for j, t in enumerate(ids):
                    if t in self.stop_ids or t == self.tok.pad_token_id:
                        n = j + (1 if t in self.stop_ids else 0)
                        break
                self.tokens_generated += n
                out[i] = self.cfg.response_prefix + self.tok.decode(ids[:n], skip_special_tokens=True)
        return out


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
