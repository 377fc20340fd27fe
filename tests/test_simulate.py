"""Population simulation: every outcome counted under garbage output, k ~ p̂_s converges, the
stage end to end (CLI, in-process and HTTP), the simulated log through the features aggregation."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from simpersona.agents.llm import LLMAgent
from simpersona.events.schema import EVENT_SCHEMA
from simpersona.contracts.storefront import OUTCOMES
from simpersona.simulate.runner import EpisodeSpec, run_episodes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from simpersona.testing.world import make_toy_world

    return make_toy_world(tmp_path_factory.mktemp("toy"), shops=2, codes=4, buyers=100)


class HalfGarbage:
    """Answers garbage for half the prompts (by a hash of the prompt), else a random valid-looking action."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def generate(self, prompts):
        out = []
        for p in prompts:
            text = p[1]["content"]
            if zlib.crc32(text.encode()) % 2:
                out.append(["", "no json here", "{broken", '{"action": "fly"}', '{"action": "click"}'][self.rng.integers(5)])
                continue
            ids = [ln.split("]")[0][1:] for ln in text.splitlines() if ln.startswith("[") and "link" in ln]
            choice = self.rng.integers(5)
            out.append(json.dumps([
                {"action": "click", "element_id": str(self.rng.choice(ids)) if ids else "x"},
                {"action": "search", "query": "skirt"}, {"action": "view_cart"}, {"action": "back"},
                {"action": "end_session", "goal_reached": bool(self.rng.integers(2))}][choice]))
        return out


def test_200_episodes_half_garbage_every_outcome_counted(world):
    from simpersona.storefront.app import create_app
    from simpersona.storefront.config import EnvConfig, StorefrontConfig
    from simpersona.storefront.env import ShopEnv
    from simpersona.storefront.transports import AsgiTransport
    from simpersona.simulate.stage import summarise

    app = create_app(StorefrontConfig(), world["ingest"] / "catalog.parquet")
    envs = [ShopEnv(AsgiTransport(app), EnvConfig(max_steps=6)) for _ in range(16)]
    backend = HalfGarbage()
    specs = [EpisodeSpec("shop0" if i % 3 else "no-such-shop" if i % 50 == 0 else "shop1", f"b{i}", f"s{i}", i % 4, "A", "buy",
                         "You are here to buy skirts.", i) for i in range(200)]
    out = run_episodes(specs, envs, lambda spec: LLMAgent(backend))
    s = summarise(out, 1.0, 0)
    assert s["episodes"] == 200 == sum(s["outcomes"].values()) and set(s["outcomes"]) == set(OUTCOMES)
    assert s["outcomes"]["malformed"] > 50 and s["outcomes"]["crash"] == 2  # garbage; resets on an unknown shop (i = 0, 150)
    assert s["outcomes"]["steps_limit"] + s["outcomes"]["goal_reached"] + s["outcomes"]["ended"] > 20
    assert sum(s["failures"].values()) == s["outcomes"]["malformed"]
    assert sorted(r["buyer_id"] for r in out) == sorted(f"b{i}" for i in range(200))


def test_sampling_codes_converges_to_shop_mix(world):
    from simpersona.personas.assign import PersonaMix

    mix = PersonaMix(world["personas"])
    codes, p = mix.mix["shop1"]
    pop = mix.sample_population("shop1", 40_000, np.random.default_rng(0))
    freq = np.array([(pop.codes == c).mean() for c in codes])
    assert np.abs(freq - p / p.sum()).max() < 0.01
    assert set(np.unique(pop.intents)) <= {"buy", "browse"}


def test_simulate_cli_end_to_end(world, tmp_path):
    from simpersona.cli import main
    from simpersona.simulate.logs import episode_stats

    out = tmp_path / "sim"
    r = CliRunner().invoke(main, ["simulate", "--ingest", str(world["ingest"]), "--personas", str(world["personas"]),
                                  "--buyers", "60", "--out", str(out), "--set", "concurrency=8"])
    assert r.exit_code == 0, r.output
    assert "120 episodes" in r.output
    ev = pq.read_table(out / "events.parquet")
    assert ev.schema.equals(EVENT_SCHEMA) and ev.num_rows > 120
    ep = pq.read_table(out / "episodes.parquet").to_pylist()
    assert len(ep) == 120 and {e["outcome"] for e in ep} <= set(OUTCOMES)
    assert all(e["intent"] == ("buy" if e["stratum"] in "ABC" else "browse") for e in ep)
    st = episode_stats(out).to_pylist()
    atc = {k: np.mean([x["has_atc"] for x in st if x["code"] == k]) for k in range(4) if any(x["code"] == k for x in st)}
    assert atc.get(0, 0.0) < 0.2 and max(atc.values()) > 0.5  # code 0 never carts in the real data; code 3 always
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 120 and (out / "policy.npz").exists() and (out / "meta.json").exists()


def test_simulate_over_http_and_without_persona(world, tmp_path):
    from simpersona.simulate import stage

    cfg = stage.SimulateConfig(ingest=world["ingest"], personas=world["personas"], buyers=5, shops=["shop0"],
                               transport="http", persona=False, intent="neutral", concurrency=2)
    s = stage.run(cfg, tmp_path / "http")
    assert s["episodes"] == 5 and s["outcomes"]["crash"] == 0
    ep = pq.read_table(tmp_path / "http" / "episodes.parquet").to_pylist()
    assert all(not e["persona"] and e["goal"].startswith("You are interested in") for e in ep)
    assert pq.read_table(tmp_path / "http" / "events.parquet").num_rows >= 5


def test_llm_checkpoint_must_know_the_runs_persona_tokens(world, tmp_path):
    """An SFT checkpoint whose tokenizer lacks <|persona_k|> for a code the persona mix can draw is
    refused before any episode runs, naming the checkpoint; with the tokens it is accepted."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from simpersona.agents.llm import LLMConfig
    from simpersona.contracts.persona import persona_tokens
    from simpersona.contracts.prompt import CHAT_TEMPLATE, SYSTEM_PROMPT
    from simpersona.sft.train import train_tiny_tokenizer
    from simpersona.simulate.stage import SimulateConfig, make_agents

    def save(path, tokens):
        tok = train_tiny_tokenizer([SYSTEM_PROMPT] * 2, 300)
        tok.add_tokens(tokens, special_tokens=True)
        tok.chat_template = CHAT_TEMPLATE
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                             eos_token_id=tok.eos_token_id))
        model.save_pretrained(path)
        tok.save_pretrained(path)
        return path

    codes = pq.read_table(world["personas"] / "shop_mix.parquet").column("code").to_numpy()
    k = int(codes.max()) + 1
    short = save(tmp_path / "short", persona_tokens(k - 1))  # lacks the last code the mix can draw
    cfg = SimulateConfig(ingest=world["ingest"], personas=world["personas"], agent="llm", llm=LLMConfig(checkpoint=short))
    with pytest.raises(ValueError, match=rf"checkpoint {short}: .*<\|persona_{k - 1}\|>"):
        make_agents(cfg, tmp_path)
    full = save(tmp_path / "full", persona_tokens(k))
    _, backend, _ = make_agents(SimulateConfig(ingest=world["ingest"], personas=world["personas"], agent="llm",
                                               llm=LLMConfig(checkpoint=full)), tmp_path)
    assert backend.tok.convert_tokens_to_ids(f"<|persona_{k - 1}|>") != backend.tok.unk_token_id
