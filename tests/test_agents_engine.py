"""The CPU inference engine (ONNX Runtime GenAI, `agents.engine`) beside transformers: a tiny
checkpoint with persona tokens converted by `simpersona agent convert` gives the same greedy
actions as transformers on the same prompts (constrained and free, several steps of episodes,
its per-episode KV caches reused); an engine folder that does not belong to the checkpoint
(another vocabulary, other persona tokens, retrained weights, not an engine) is a clear error
naming both paths, and the agent is chosen by config alone (`llm.engine`)."""

from __future__ import annotations

import json
import shutil

import pytest

from simpersona.agents.base import act_batch
from simpersona.agents.engine import EngineMismatch, check_engine
from simpersona.agents.llm import LLMAgent, LLMConfig, TransformersBackend

PAGE = ("URL: /s/shop0/\nTITLE: Shop\n[nav-home] link: Home\n[search-q] input Search = ''\n"
        "[collection-shoes] link: Shoes\n[collection-skirts] link: Skirts")


def tiny_checkpoint(path, k: int = 4, seed: int = 0, hidden: int = 64):
    """A random-init 2-layer Llama with K persona tokens and the run's chat template, saved as an SFT checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from simpersona.contracts.persona import persona_tokens
    from simpersona.contracts.prompt import CHAT_TEMPLATE, SYSTEM_PROMPT
    from simpersona.sft.train import train_tiny_tokenizer

    texts = [SYSTEM_PROMPT, '{"action": "click", "element_id": "collection-shoes", "reasoning": "x"}', PAGE] * 3
    tok = train_tiny_tokenizer(texts, 400)
    tok.add_special_tokens({"additional_special_tokens": persona_tokens(k)})
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=4096, tie_word_embeddings=True,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The tiny checkpoint converted by the command a user runs: `simpersona agent convert`."""
    from click.testing import CliRunner

    from simpersona.cli import main

    root = tmp_path_factory.mktemp("engine")
    ckpt = tiny_checkpoint(root / "stage2")
    res = CliRunner().invoke(main, ["agent", "convert", "--checkpoint", str(ckpt), "--out", str(root / "engine"),
                                    "--precision", "fp32"])
    assert res.exit_code == 0 and "K = 4" in res.output, res.output
    return ckpt, root / "engine", json.loads((root / "engine" / "engine.json").read_text())


def episodes(backend, n: int = 3, steps: int = 3):
    """Raw answers of n episodes (distinct goals and personas) over `steps` steps with growing logs."""
    agents = [LLMAgent(backend) for _ in range(n)]
    for i, a in enumerate(agents):
        a.reset(f"You are here to buy {('shoes', 'skirts', 'socks')[i % 3]}.", i if i < n - 1 else None)
    got = []
    for s in range(steps):
        obs = [{"url": "/s/shop0/", "page": PAGE + f"\n[product-p{s}] link: Product {s}", "error": None}] * n
        ds = act_batch(agents, obs)
        got.append([(d.raw, d.failure) for d in ds])
    return got


def test_convert_writes_what_the_engine_was_made_from(converted):
    ckpt, engine, meta = converted
    assert meta["persona_k"] == 4 and meta["vocab_size"] == meta["tokenizer_size"] and meta["precision"] == "fp32"
    assert (engine / "genai_config.json").is_file() and (engine / "model.onnx").is_file()
    assert check_engine(ckpt, engine)["sha256"] == meta["sha256"]
    from simpersona.sft.train import checkpoint_id

    assert meta["sha256"] == checkpoint_id(ckpt)["sha256"]  # the name every figure gives the checkpoint


@pytest.mark.parametrize("decoding", ["constrained", "free"])
def test_engine_and_transformers_give_the_same_greedy_actions(converted, decoding):
    ckpt, engine, _ = converted
    common = dict(checkpoint=ckpt, decoding=decoding, max_new_tokens=16, max_text_tokens=6, max_reasoning_tokens=6)
    ref = TransformersBackend(LLMConfig(**common))
    eng = TransformersBackend(LLMConfig(**common, engine="onnx", engine_dir=engine))
    assert eng.engine is not None and ref.engine is None
    want, got = episodes(ref), episodes(eng)
    assert got == want
    assert eng.tokens_generated == ref.tokens_generated > 0
    assert eng.cached_tokens > 0 and eng.prefill_tokens < ref.prefill_tokens + ref.cached_tokens  # steps reused their episode's cache
    if decoding == "constrained":
        assert all(f is None for step in got for _, f in step)


def test_engine_cache_off_gives_the_same_answers(converted):
    ckpt, engine, _ = converted
    cfg = dict(checkpoint=ckpt, engine="onnx", engine_dir=engine, max_text_tokens=6, max_reasoning_tokens=6)
    cached, plain = TransformersBackend(LLMConfig(**cfg)), TransformersBackend(LLMConfig(**cfg, prefix_cache=0))
    assert episodes(cached) == episodes(plain)
    assert plain.cached_tokens == 0 < cached.cached_tokens


def test_engine_converted_on_first_use_into_the_cache(converted, tmp_path):
    ckpt, _, meta = converted
    cfg = LLMConfig(checkpoint=ckpt, engine="onnx", engine_cache=tmp_path / "engines", engine_precision="fp32")
    backend = TransformersBackend(cfg)
    assert backend.engine_dir == tmp_path / "engines" / f"{meta['sha256']}-fp32"
    assert episodes(backend, n=1, steps=1)[0][0][1] is None


def test_engine_that_does_not_match_the_checkpoint(converted, tmp_path):
    ckpt, engine, _ = converted
    other = tiny_checkpoint(tmp_path / "k6", k=6)  # another run's personas: vocabulary and K differ
    with pytest.raises(EngineMismatch, match=rf"engine {engine} does not match checkpoint {other}.*vocabulary.*K = 4.*K = 6"):
        check_engine(other, engine)
    with pytest.raises(EngineMismatch, match=str(other)):  # the agent refuses it before any episode
        TransformersBackend(LLMConfig(checkpoint=other, engine="onnx", engine_dir=engine))
    retrained = tmp_path / "retrained"
    shutil.copytree(ckpt, retrained)
    tiny_checkpoint(retrained, seed=1)  # same tokenizer and K, other weights
    with pytest.raises(EngineMismatch, match="retrained since"):
        check_engine(retrained, engine)
    moved = tmp_path / "moved-ids"
    shutil.copytree(engine, moved)
    meta = json.loads((moved / "engine.json").read_text())
    meta["persona_ids"] = {k: v + 1 for k, v in meta["persona_ids"].items()}
    (moved / "engine.json").write_text(json.dumps(meta))
    with pytest.raises(EngineMismatch, match="persona tokens have other ids"):
        check_engine(ckpt, moved)
    with pytest.raises(EngineMismatch, match=rf"engine {tmp_path}: not a converted engine folder.*agent convert"):
        check_engine(ckpt, tmp_path)


def test_agent_check_command(converted, tmp_path):
    from click.testing import CliRunner

    from simpersona.cli import main

    ckpt, engine, _ = converted
    res = CliRunner().invoke(main, ["agent", "check", "--checkpoint", str(ckpt), "--engine", str(engine)])
    assert res.exit_code == 0 and "matches" in res.output, res.output
    other = tiny_checkpoint(tmp_path / "k6", k=6)
    res = CliRunner().invoke(main, ["agent", "check", "--checkpoint", str(other), "--engine", str(engine)])
    assert res.exit_code == 2 and str(engine) in res.output and str(other) in res.output
    assert "Traceback" not in res.output


def test_engine_failing_on_one_prompt_fails_only_its_episode(converted, monkeypatch):
    from simpersona.agents import engine as E

    ckpt, engine, _ = converted
    backend = TransformersBackend(LLMConfig(checkpoint=ckpt, engine="onnx", engine_dir=engine, max_text_tokens=6,
                                            max_reasoning_tokens=6))
    real = E.OnnxEngine.prefill
    bad = backend.tok.convert_tokens_to_ids("<|persona_1|>")

    def prefill(self, key, ids, n):
        if bad in ids:
            raise RuntimeError("onnxruntime: out of memory")
        return real(self, key, ids, n)

    monkeypatch.setattr(E.OnnxEngine, "prefill", prefill)
    got = episodes(backend, n=3, steps=1)[0]
    assert got[1][1] == "backend_error" and [f for _, f in (got[0], got[2])] == [None, None]
