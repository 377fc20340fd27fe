"""Benchmark of the simulation (not a test): sessions/s of the fast persona policy and decisions /
tokens per second of the LLM agent's batched decoding, on this machine's CPU.

    .venv/bin/python bench/bench_simulate.py                    # all parts
    .venv/bin/python bench/bench_simulate.py --storefront 400 --rollout 1000000 --llm-prompts 32

Parts (same toy world: 2 shops × 48 products, 4 persona codes fitted from fabricated sessions):
  1. policy on the storefront: the fast persona policy, episodes through the in-process
     storefront (AsgiTransport, server-rendered HTML parsed into snapshots), lock-step concurrency 32;
  2. policy-only rollout: the same fitted page-type model sampled alone (`agents.policy.rollout`,
     vectorised numpy; no storefront, no HTML) — what "millions of sessions on a CPU" uses;
  3. LLM agent: a random-init tiny Llama (the `tiny` SFT preset's shape: hidden 64, 2 layers) on
     the real prompt (system prompt + schema + a storefront page), greedy, 48 new tokens forced
     (no stop), batch 1 vs batch 16: generated tokens/s and prompts/s.
Threads: torch and DuckDB at 2 (the machine's 2 cores are shared with other work, so figures move).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--storefront", type=int, default=300, help="episodes through the storefront (per shop: half)")
    ap.add_argument("--rollout", type=int, default=1_000_000, help="sessions of the policy-only rollout")
    ap.add_argument("--llm-prompts", type=int, default=32, help="prompts decoded per batch size")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    from simpersona.agents.policy import PolicyModel, fit_counts, rollout
    from simpersona.simulate import stage
    from simpersona.testing.world import make_toy_world

    tmp = Path(tempfile.mkdtemp(prefix="bench_sim_"))
    w = make_toy_world(tmp, shops=2, codes=4, buyers=200)
    print(f"toy world in {tmp}")

    # 1. policy through the storefront
    cfg = stage.SimulateConfig(ingest=w["ingest"], personas=w["personas"], buyers=args.storefront // 2, concurrency=32)
    s = stage.run(cfg, tmp / "sim", echo=lambda x: None)
    print(f"[1] policy on the in-process storefront: {s['episodes']} sessions in {s['wall_s']:.2f} s = "
          f"{s['sessions_per_s']:.1f} sessions/s, {s['steps_per_s']:.0f} env steps/s ({s['mean_steps']:.1f} steps/session)")

    # 2. policy-only rollout
    codes, counts = fit_counts(w["ingest"] / "events.parquet", w["personas"] / "assignments.parquet")
    m = PolicyModel(codes, counts)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(m.probs), args.rollout)
    t = time.perf_counter()
    ev = rollout(m.probs, rows, 30, rng)
    dt = time.perf_counter() - t
    print(f"[2] policy-only rollout (page-type model, no storefront): {args.rollout:,} sessions in {dt:.2f} s = "
          f"{args.rollout / dt:,.0f} sessions/s ({ev.sum(1).mean():.2f} events/session)")
    print(f"    ratio rollout / storefront: {args.rollout / dt / s['sessions_per_s']:,.0f}x")

    # 3. LLM agent decoding
    from transformers import LlamaConfig, LlamaForCausalLM

    from simpersona.agents.llm import LLMAgent, LLMConfig, TransformersBackend
    from simpersona.contracts.prompt import CHAT_TEMPLATE, SYSTEM_PROMPT
    from simpersona.sft.train import train_tiny_tokenizer
    from simpersona.storefront.app import create_app
    from simpersona.storefront.config import StorefrontConfig
    from simpersona.storefront.env import ShopEnv
    from simpersona.storefront.transports import AsgiTransport

    env = ShopEnv(AsgiTransport(create_app(StorefrontConfig(), w["ingest"] / "catalog.parquet")))
    obs, _ = env.reset(seed=0, options={"shop": "shop0"})
    tok = train_tiny_tokenizer([SYSTEM_PROMPT, obs["page"]] * 4, 1024)
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16384,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    model.generation_config.eos_token_id = None
    prompt_len = len(tok.apply_chat_template(LLMAgent(None).prompt(obs), tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
    for bs in (1, 16):
        backend = TransformersBackend(LLMConfig(decoding="free", max_new_tokens=48, batch_size=bs, threads=2, prefix_cache=0),
                                      model=model, tokenizer=tok)
        backend.stop_ids = [10**6]  # an id never generated: the full 48 tokens, a fixed decode length for the figure
        backend._closed = lambda: None  # no JSON stop either (SmolLM2 itself, constrained and cached: bench_agent.py)
        agents = [LLMAgent(backend) for _ in range(args.llm_prompts)]
        for i, a in enumerate(agents):
            a.reset("You are here to buy skirts.", None)  # the tiny tokenizer has no persona tokens
        t = time.perf_counter()
        backend.generate([a.prompt(obs) for a in agents])
        dt = time.perf_counter() - t
        print(f"[3] tiny LLM, batch {bs:2d}: {args.llm_prompts} prompts of {prompt_len} tokens, {backend.tokens_generated} tokens generated "
              f"in {dt:.2f} s = {backend.tokens_generated / backend.decode_s:,.0f} tokens/s, {args.llm_prompts / dt:.1f} decisions/s")
    env.close()


if __name__ == "__main__":
    main()
