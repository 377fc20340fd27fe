"""The CPU inference engine beside transformers: ONNX Runtime GenAI (`llm.engine: onnx`).

- `convert(checkpoint, out, precision)`: an SFT checkpoint (persona tokens included, vocabulary
  resized) → an ONNX Runtime GenAI folder, made by the library's own model builder (int8 weights
  with int8 compute by default: `MatMulNBits`, accuracy level 4, which uses AVX-512 VNNI where the
  CPU has it; or fp32 / int4), plus `engine.json`: the checkpoint it was made from (path and content
  hash), its vocabulary size, its persona tokens (K and their ids) and the precision.
- `check_engine(checkpoint, engine_dir)`: the engine folder agrees with the checkpoint (same
  vocabulary size, same persona tokens and ids, same K, same weights), else `EngineMismatch` naming
  both paths. `engine_for(cfg)` finds or makes the engine of `llm.checkpoint`: `llm.engine_dir`
  when set (checked), else a content-addressed folder under `llm.engine_cache`, converted on first
  use (a retrained checkpoint hashes differently and gets its own).
- `OnnxEngine`: per-episode KV caches. A pool of generators (batch 1 each), each holding the tokens
  it has seen (prompt and answer); a new prompt takes the generator with the longest common prefix,
  rewinds it there (`Generator.rewind_to`) and appends only the rest, so an episode's step prefills
  its new progress-log line and page, not the system prompt, goal and earlier log. Each next token is
  chosen here from the engine's logits (`agents.decoding.choose`, the same greedy / seeded sampling
  as the transformers path) after the llguidance mask of the page's action grammar is applied, so
  the two engines share one constraint and one sampler; only the logits come from another runtime.

Why ONNX Runtime GenAI: among the engines with CPU wheels here it is the one whose Python API lets
the caller apply a token mask at every step (`get_logits` → mask → choose → `append_tokens`) and
keep/rewind a KV cache per episode; CTranslate2 4.8.5's `generate_batch` / `generate_tokens` take
only a stop callback (no logits processor), and its `forward_batch` has no KV cache, so a grammar
would cost a full forward pass per token; llama-cpp-python builds from source (~9 min on 2 idle
cores). Figures: `bench/bench_agent.py` (README, "CPU inference engine").
Nothing heavy is imported at import time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from simpersona.config import InputError

# The file written beside the converted model: what it was made from (checked before every use).
ENGINE_META = "engine.json"
PRECISIONS = ("int8", "int4", "fp32")


class EngineMismatch(InputError):
    """A converted engine folder that does not belong to the checkpoint it is used with."""


def weights_sha256(checkpoint: Path) -> str:
    """The checkpoint's content hash as every figure names it (`sft.train.checkpoint_id`: sha256 over
    its *.safetensors files in name order, 12 hex digits; a test keeps the two equal)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(checkpoint).glob("*.safetensors")):
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def tokenizer_facts(tokenizer) -> dict[str, Any]:
    """Vocabulary size and persona tokens (K, ids) of a tokenizer: what engine and checkpoint must share."""
    from simpersona.contracts.persona import parse_persona_token

    personas = {}
    for tok, i in tokenizer.get_vocab().items():
        try:
            k = parse_persona_token(tok) if tok.startswith("<|persona_") else None
        except ValueError:
            k = None
        if k is not None:
            personas[int(k)] = int(i)
    return {"tokenizer_size": len(tokenizer), "persona_k": len(personas),
            "persona_ids": {str(k): personas[k] for k in sorted(personas)}}


def checkpoint_facts(checkpoint: Path) -> dict[str, Any]:
    """What an engine made from `checkpoint` must agree with: its model vocabulary (config.json),
    its tokenizer's size and persona tokens, its weights' content hash."""
    from transformers import AutoTokenizer

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise InputError(f"checkpoint {checkpoint}: no model there (config.json missing); give an SFT stage folder")
    config = json.loads((checkpoint / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    return {"vocab_size": int(config["vocab_size"]), **tokenizer_facts(tok), "sha256": weights_sha256(checkpoint)}


def check_engine(checkpoint: Path, engine_dir: Path, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The engine folder's `engine.json`, after checking it was made from this checkpoint (vocabulary,
    persona tokens, K, weights); raises EngineMismatch naming both paths otherwise."""
    engine_dir, checkpoint = Path(engine_dir), Path(checkpoint)
    meta_path = engine_dir / ENGINE_META
    if not meta_path.is_file() or not (engine_dir / "genai_config.json").is_file():
        raise EngineMismatch(f"engine {engine_dir}: not a converted engine folder ({ENGINE_META} or genai_config.json "
                             f"missing); make it with `simpersona agent convert --checkpoint {checkpoint} --out {engine_dir}`")
    meta = json.loads(meta_path.read_text())
    facts = facts or checkpoint_facts(checkpoint)
    genai = json.loads((engine_dir / "genai_config.json").read_text())
    problems = []
    if int(genai["model"]["vocab_size"]) != facts["vocab_size"]:
        problems.append(f"vocabulary {genai['model']['vocab_size']} in the engine vs {facts['vocab_size']} in the checkpoint")
    if meta.get("persona_k") != facts["persona_k"]:
        problems.append(f"K = {meta.get('persona_k')} persona tokens in the engine vs K = {facts['persona_k']} in the checkpoint")
    elif meta.get("persona_ids") != facts["persona_ids"]:
        problems.append("the persona tokens have other ids in the engine than in the checkpoint")
    if meta.get("tokenizer_size") != facts["tokenizer_size"]:
        problems.append(f"tokenizer of {meta.get('tokenizer_size')} tokens in the engine vs {facts['tokenizer_size']} in the checkpoint")
    if not problems and meta.get("sha256") != facts["sha256"]:
        problems.append(f"made from weights {meta.get('sha256')}, the checkpoint's are {facts['sha256']} (retrained since)")
    if problems:
        raise EngineMismatch(f"engine {engine_dir} does not match checkpoint {checkpoint}: " + "; ".join(problems)
                             + f"; convert it again: `simpersona agent convert --checkpoint {checkpoint} --out {engine_dir}`")
    return meta


def convert(checkpoint: Path, out: Path, precision: str = "int8", log: Path | None = None) -> dict[str, Any]:
    """Convert an SFT checkpoint to an ONNX Runtime GenAI folder at `out` (written aside, renamed into
    place with `engine.json` last); returns engine.json's content. The builder's output goes to
    `out/convert.log`."""
    if precision not in PRECISIONS:
        raise ValueError(f"engine precision {precision!r}: one of {', '.join(PRECISIONS)}")
    checkpoint, out = Path(checkpoint).resolve(), Path(out)
    facts = checkpoint_facts(checkpoint)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(tmp),
           "-p", precision, "-e", "cpu", "-c", str(tmp / "cache")]
    if precision in ("int8", "int4"):
        cmd += ["--extra_options", "accuracy_level=4"]
    t0 = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(tmp / "convert.log", "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    shutil.rmtree(tmp / "cache", ignore_errors=True)
    if rc != 0 or not (tmp / "genai_config.json").is_file():
        tail = (tmp / "convert.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"engine conversion of {checkpoint} failed (exit {rc}); the builder's log ends:\n{tail}")
    import onnxruntime_genai

    meta = {"checkpoint": str(checkpoint), **facts, "precision": precision, "engine": "onnxruntime-genai",
            "engine_version": onnxruntime_genai.__version__, "convert_s": round(time.perf_counter() - t0, 1)}
    (tmp / ENGINE_META).write_text(json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    check_engine(checkpoint, out, facts)
    return meta


def engine_for(cfg) -> Path:
    """The engine folder of `cfg.checkpoint` (an LLMConfig): `cfg.engine_dir` after checking it, or the
    content-addressed `cfg.engine_cache/<weights sha256>-<precision>`, converted when missing."""
    if cfg.checkpoint is None:
        raise FileNotFoundError("llm.engine onnx needs llm.checkpoint (an SFT stage folder)")
    facts = checkpoint_facts(Path(cfg.checkpoint))
    if cfg.engine_dir is not None:
        check_engine(cfg.checkpoint, cfg.engine_dir, facts)
        return Path(cfg.engine_dir)
    out = Path(cfg.engine_cache) / f"{facts['sha256']}-{cfg.engine_precision}"
    if (out / ENGINE_META).is_file():
        check_engine(cfg.checkpoint, out, facts)
        return out
    convert(cfg.checkpoint, out, cfg.engine_precision)
    return out


class OnnxEngine:
    """An ONNX Runtime GenAI model and a pool of per-episode generators (KV caches) keyed by their tokens."""

    def __init__(self, engine_dir: Path, threads: int, context: int, pool: int, reuse: bool = True):
        import onnxruntime_genai as og

        self._og = og
        config = og.Config(str(engine_dir))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": int(threads), "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.context = int(context)
        self.size = max(1, int(pool))
        self.reuse = bool(reuse)
        self.pool: OrderedDict[int, tuple[Any, list[int]]] = OrderedDict()  # id → (generator, tokens it holds)
        self._next = 0
        self.hit_tokens = 0
        self.prefill_tokens = 0
        self.prefill_s = 0.0
        self.decode_passes = 0  # appends after the prefill (one per chosen token, with the tokens it forces)

    def _new(self):
        p = self._og.GeneratorParams(self.model)
        p.set_search_options(max_length=self.context, past_present_share_buffer=True)
        return self._og.Generator(self.model, p)

    def _match(self, ids: list[int], held: list[int]) -> int:
        n = min(len(held), len(ids) - 1) if self.reuse else 0  # the last prompt token is always appended: its logits
        j = 0
        while j < n and held[j] == ids[j]:
            j += 1
        return j

    def assign(self, prompts: list[list[int]]) -> list[tuple[int, int]]:
        """(pool key, n) per prompt: a generator whose first n tokens are the prompt's. Prompts with the
        longest cached prefixes (an episode's next step) choose first, each the free generator sharing
        the longest prefix with it (a new episode then takes a finished episode's generator, reusing
        its system prompt); a fresh generator when none shares anything and the pool has room."""
        best = [max((self._match(ids, held) for _, held in self.pool.values()), default=0) for ids in prompts]
        out: list[tuple[int, int] | None] = [None] * len(prompts)
        busy: set[int] = set()
        for i in sorted(range(len(prompts)), key=lambda i: -best[i]):
            ids = prompts[i]
            free = [(self._match(ids, held), k) for k, (_, held) in self.pool.items() if k not in busy]
            n, key = max(free, key=lambda t: t[0], default=(0, None))  # ties: the least recently used
            if key is None or (n == 0 and len(self.pool) < self.size):
                key, n = self._next, 0
                self._next += 1
                self.pool[key] = (self._new(), [])
            busy.add(key)
            self.pool.move_to_end(key)
            out[i] = (key, n)
        return out  # type: ignore[return-value]

    def trim(self) -> None:
        """Drop the least recently used generators beyond the pool size."""
        while len(self.pool) > self.size:
            self.pool.popitem(last=False)

    def prefill(self, key: int, ids: list[int], n: int):
        """Rewind generator `key` to its first n tokens, append the rest of `ids`; logits (V,) of the next token."""
        import numpy as np

        t0 = time.perf_counter()
        gen, held = self.pool[key]
        if n == 0 and held:
            gen = self._new()  # rewinding to nothing: a fresh buffer is as cheap
        elif len(held) > n:
            gen.rewind_to(n)
        gen.append_tokens(np.asarray(ids[n:], dtype=np.int32))
        self.pool[key] = (gen, list(ids))
        self.hit_tokens += n
        self.prefill_tokens += len(ids) - n
        self.prefill_s += time.perf_counter() - t0
        return np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1)

    def step(self, key: int, tokens: list[int]):
        """Append chosen (and grammar-forced) tokens to generator `key`; logits (V,) of the next."""
        import numpy as np

        gen, held = self.pool[key]
        gen.append_tokens(np.asarray(tokens, dtype=np.int32))
        self.decode_passes += 1
        held.extend(int(t) for t in tokens)
        return np.asarray(gen.get_logits(), dtype=np.float32).reshape(-1)

    def _answer(self, i, key, ids, n, max_new_tokens, stop, temperature, top_p, generator, matchers, constraint, closed,
                fast_forward):
        import torch

        from simpersona.agents.decoding import advance, choose

        logits = torch.from_numpy(self.prefill(key, ids, n))  # (V,)
        row: list[int] = []
        while len(row) < min(max_new_tokens, self.context - len(ids)):
            if matchers is not None:
                logits = logits.masked_fill(~constraint.allowed(matchers[i], logits.shape[-1]), float("-inf"))
            t = int(choose(logits[None], temperature, top_p, generator)[0])
            if t in stop:
                break
            new = [t]
            if matchers is not None:
                new = advance(matchers[i], t, fast_forward)
                if new is None:
                    break  # cannot happen under the mask; the row ends (its text gets classified)
                row += new
                if matchers[i].is_accepting() or matchers[i].is_stopped():
                    break
            else:
                row.append(t)
                if closed is not None and closed(i, row):
                    break
            if len(ids) + len(row) >= self.context:
                break
            logits = torch.from_numpy(self.step(key, new))
        return row

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, stop_ids: list[int], temperature: float,
                 top_p: float, generator, matchers: list | None = None, constraint=None, closed=None,
                 fast_forward: bool = True) -> list:
        """New token ids of each prompt (stop tokens excluded), as `agents.decoding.generate_ids` gives
        them: masked by `matchers` (constrained) or stopped by `closed(row, ids)` (free); a prompt the
        runtime fails on gets its exception instead (the others are answered)."""
        out: list[list[int] | Exception] = []
        stop = set(stop_ids)
        for i, (ids, (key, n)) in enumerate(zip(prompts, self.assign(prompts))):
            try:
                out.append(self._answer(i, key, ids, n, max_new_tokens, stop, temperature, top_p, generator, matchers,
                                        constraint, closed, fast_forward))
            except Exception as e:  # one prompt's failure (the runtime's error) is its row's, not the batch's
                self.pool.pop(key, None)  # its cache is in an unknown state
                out.append(e)
        self.trim()
        return out
