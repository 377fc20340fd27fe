"""Agents: the LLM agent's prompt is the SFT prompt; model output repaired or classified; backends
(tiny local model, fake OpenAI-compatible endpoint); the persona policy fitted from a clickstream."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from simpersona.agents.base import FAILURES, act_batch, parse_output
from simpersona.agents.llm import EndpointBackend, EndpointConfig, LLMAgent, LLMConfig, TransformersBackend
from simpersona.agents.policy import EVENTS, STATES, PolicyAgent, PolicyModel, fit_counts
from simpersona.contracts.records import records_from_trajectory
from simpersona.contracts.storefront import page_type
from simpersona.storefront.app import create_app
from simpersona.storefront.config import StorefrontConfig
from simpersona.storefront.env import ShopEnv
from simpersona.storefront.transports import AsgiTransport


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from simpersona.testing.world import make_toy_world

    return make_toy_world(tmp_path_factory.mktemp("toy"), shops=2, codes=4, buyers=80)


@pytest.fixture()
def env(world):
    app = create_app(StorefrontConfig(), world["ingest"] / "catalog.parquet")
    e = ShopEnv(AsgiTransport(app))
    yield e
    e.close()


class Scripted:
    """A fake backend answering from a list of texts, recording the prompts it was given."""

    def __init__(self, texts):
        self.texts, self.prompts = list(texts), []

    def generate(self, prompts):
        self.prompts += prompts
        return [self.texts.pop(0) for _ in prompts]


def test_agent_prompt_equals_sft_prompt(env):
    goal = "You are here to buy skirts."
    obs, _ = env.reset(seed=0, options={"shop": "shop0", "goal": goal, "persona_token": "<|persona_2|>"})
    coll = next(i for i in env.snap.elements if i.startswith("collection-"))
    plan = [({"action": "click", "element_id": coll}, "I open a collection."),
            ({"action": "click", "element_id": "no-such-id"}, "A wrong id, on purpose."),
            ({"action": "search", "query": "skirt"}, "I search."),
            ({"action": "end_session", "goal_reached": False}, "Done.")]
    backend = Scripted([json.dumps({**a, "reasoning": r}) for a, r in plan])
    agent = LLMAgent(backend)
    agent.reset(goal, 2)
    steps = []
    for a, r in plan:
        d = agent.act(obs)
        assert d.action == a and d.failure is None
        steps.append({"observation": obs, "action": a, "reasoning": r})
        obs, *_ = env.step(d.action)
    records = records_from_trajectory(goal, 2, steps, {"shop_id": "shop0", "session_key": "k", "stratum": "A", "stage": 2})
    assert [rec["messages"][:2] for rec in records] == backend.prompts
    assert "Last action failed" in backend.prompts[2][1]["content"]  # the error reached both the same way


def test_parse_output_repairs_and_classifies():
    ok = {
        '{"action": "search", "query": "red skirt", "reasoning": "r"}': ({"action": "search", "query": "red skirt"}, False),
        "Sure! ```json\n{'action': 'add_to_cart', 'quantity': '2',}\n```": ({"action": "add_to_cart", "quantity": 2}, True),
        '{"action": "End session", "goal_reached": "true"}': ({"action": "end_session", "goal_reached": True}, True),
        '{"action": "view_cart", "foo": 1}': ({"action": "view_cart"}, True),
        '{action: "back"}': ({"action": "back"}, True),
        '{"action": "search", "query": "wool so': ({"action": "search", "query": "wool so"}, True),  # truncated
    }
    for text, (action, repaired) in ok.items():
        d = parse_output(text)
        assert (d.action, d.repaired, d.failure) == (action, repaired, None), text
    bad = {"": "empty", "   ": "empty", "I will click the button": "no_json", "{]": "invalid_json",
           '{"reasoning": "hmm"}': "no_action", '{"action": "teleport"}': "unknown_action",
           '{"action": "click"}': "bad_field", '{"action": "add_to_cart", "quantity": 500}': "bad_field"}
    for text, kind in bad.items():
        d = parse_output(text)
        assert d.action is None and d.failure == kind and kind in FAILURES, text


def test_malformed_output_ends_episode_cleanly(world, env):
    from simpersona.simulate.runner import EpisodeSpec, run_episodes

    backend = Scripted(['{"action": "search", "query": "skirt"}', "Let me think about it…", '{"action": "back"}',
                        '{"action": "end_session", "goal_reached": false}'])
    specs = [EpisodeSpec("shop0", "b1", "s1", 1, "A", "buy", "You are here to buy skirts.", 0),
             EpisodeSpec("shop0", "b2", "s2", 1, "A", "buy", "You are here to buy skirts.", 1)]
    out = run_episodes(specs, [env], lambda spec: LLMAgent(backend))
    first, second = out
    assert (first["outcome"], first["failure"], first["steps"]) == ("malformed", "no_json", 1)
    assert "think" in first["failure_output"]
    # the run went on with the next episode: "back" on its landing page is invalid (counted, no crash), then it ends
    assert (second["outcome"], second["steps"], second["invalid_actions"], second["failure"]) == ("ended", 2, 1, "")
    assert len(out) == 2 and backend.texts == []


def test_act_batch_turns_backend_exceptions_into_crash_failures():
    class Down:
        def generate(self, prompts):
            raise ConnectionError("endpoint down")

    agents = [LLMAgent(Down()) for _ in range(3)]
    for a in agents:
        a.reset("g", None)
    obs = {"url": "/s/x/", "page": "URL: /s/x/\nhi", "error": None}
    ds = act_batch(agents, [obs] * 3)
    assert [d.failure for d in ds] == ["backend_error"] * 3


def test_tiny_transformers_backend_batched(world):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from simpersona.contracts.prompt import CHAT_TEMPLATE, SYSTEM_PROMPT
    from simpersona.sft.train import train_tiny_tokenizer

    tok = train_tiny_tokenizer([SYSTEM_PROMPT, '{"action": "view_cart", "reasoning": "x"}'] * 3, 400)
    tok.add_special_tokens({"additional_special_tokens": ["<|persona_1|>", "<|persona_3|>"]})
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    backend = TransformersBackend(LLMConfig(decoding="free", max_new_tokens=12, batch_size=4), model=model, tokenizer=tok)
    agents = [LLMAgent(backend) for _ in range(5)]
    for i, a in enumerate(agents):
        a.reset("You are interested in skirts.", i if i % 2 else None)
    obs = {"url": "/s/shop0/", "page": "URL: /s/shop0/\n[nav-home] link: Home", "error": None}
    ds = act_batch(agents, [obs] * 5)
    assert len(ds) == 5 and backend.calls == 2  # 5 prompts, batches of 4
    prefix = LLMConfig().response_prefix
    assert prefix and all(d.raw.startswith(prefix) for d in ds)  # the forced answer prefix starts every answer
    assert 0 < backend.tokens_generated <= 5 * 12


class _Answers:
    """A fake causal LM for TransformersBackend's token loop (`agents.decoding`): its logits put all
    mass on the fixed answer's next token; records the prompts (first call of each row) it was given."""

    def __init__(self, answer_ids, vocab: int = 400):
        self.answer_ids, self.vocab, self.inputs, self.prompt_len = answer_ids, vocab, [], 0

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, input_ids, cache, position_ids, use_cache=True, logits_to_keep=1, attention_mask=None):
        import torch
        from types import SimpleNamespace

        B, n = input_ids.shape
        if n > 1:  # a prefill (prefix cache off: the whole prompt)
            self.inputs.append(input_ids)
            self.prompt_len = n
        cache.update(torch.zeros(B, 1, n, 1), torch.zeros(B, 1, n, 1), 0)
        nxt = position_ids[:, -1] + 1 - self.prompt_len  # (B,) answer tokens already given
        logits = torch.zeros(B, 1, self.vocab)
        for b, i in enumerate(nxt.tolist()):
            logits[b, 0, self.answer_ids[min(i, len(self.answer_ids) - 1)]] = 1.0
        return SimpleNamespace(logits=logits, cache=cache)


@pytest.mark.parametrize("prefix", ['{"action": "', ""])
def test_forced_answer_prefix(prefix):
    """The assistant turn is forced to start with `response_prefix`: the prompt ends with it, and the
    answer is parsed with it, so a model continuing 'view_cart"}' yields the view_cart action;
    without the prefix the same continuation is no JSON."""
    from simpersona.contracts.prompt import CHAT_TEMPLATE, SYSTEM_PROMPT
    from simpersona.sft.train import train_tiny_tokenizer

    tok = train_tiny_tokenizer([SYSTEM_PROMPT, '{"action": "view_cart", "reasoning": "x"}'] * 3, 400)
    tok.chat_template = CHAT_TEMPLATE
    model = _Answers(tok('view_cart"}', add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")], len(tok))
    backend = TransformersBackend(LLMConfig(decoding="free", prefix_cache=0, max_new_tokens=12, response_prefix=prefix),
                                  model=model, tokenizer=tok)
    agent = LLMAgent(backend)
    agent.reset("You are interested in skirts.", None)
    d = agent.act({"url": "/s/shop0/", "page": "URL: /s/shop0/\n[nav-home] link: Home", "error": None})
    prompt = tok.decode(model.inputs[0][0], skip_special_tokens=False)
    assert prompt.endswith("<|im_start|>assistant\n" + prefix)
    if prefix:
        assert d.action == {"action": "view_cart"} and d.raw == '{"action": "view_cart"}'
    else:
        assert d.action is None and d.failure == "no_json"


def test_endpoint_backend_against_a_fake_local_endpoint():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append((self.path, body, self.headers.get("authorization")))
            if "FAIL" in body["messages"][-1]["content"]:
                self.send_response(500)
                self.end_headers()
                return
            out = json.dumps({"choices": [{"message": {"content": '{"action": "view_cart", "reasoning": "ok"}'}}],
                              "usage": {"completion_tokens": 9}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        import os

        os.environ["SP_TEST_KEY"] = "secret"
        backend = EndpointBackend(EndpointConfig(url=f"http://127.0.0.1:{server.server_port}/v1", api_key_env="SP_TEST_KEY", concurrency=2))
        agents = [LLMAgent(backend) for _ in range(2)]
        agents[0].reset("You are here to buy skirts.", 3)
        agents[1].reset("FAIL please", None)
        obs = {"url": "/s/x/", "page": "URL: /s/x/", "error": None}
        ok, failed = act_batch(agents, [obs, obs])
        assert ok.action == {"action": "view_cart"} and failed.failure == "backend_error"
        assert backend.tokens_generated == 9
        path, body, auth = seen[0]
        assert path == "/v1/chat/completions" and auth == "Bearer secret" and body["messages"][0]["role"] == "system"
        assert "<|persona_3|>" in next(b for _, b, _ in seen if "buy" in b["messages"][1]["content"])["messages"][1]["content"]
        backend.close()
    finally:
        server.shutdown()


def test_persona_policy_fitted_per_code(world):
    codes, counts = fit_counts(world["ingest"] / "events.parquet", world["personas"] / "assignments.parquet")
    assert codes.tolist() == [0, 1, 2, 3] and counts.shape == (4, len(STATES), len(EVENTS))
    m = PolicyModel(codes, counts)
    assert np.allclose(m.probs.sum(-1), 1.0) and (m.probs > 0).all()
    product, atc = STATES.index("product"), EVENTS.index("add_to_cart")
    # code 0 never adds to cart in the toy data, code 3 always does: the policy keeps that apart
    assert m.probs[m.row(3), product, atc] > 0.5 > 0.05 > m.probs[m.row(0), product, atc]
    assert m.row(None) == m.row(99) == 4  # the population-wide (no-persona) row
    agent = PolicyAgent(m, np.random.default_rng(0))
    agent.reset("You are here to buy skirts.", 3)
    d = agent.act({"url": "/s/shop0/", "page": "URL: /s/shop0/\n[nav-home] link: shop0\n[search-q] input Search = ''\n"
                   "[product-p1] link: A skirt"})
    assert d.action is not None and d.failure is None
    assert page_type("/s/shop0/checkout?step=shipping") == "checkout"


def test_doctests_of_the_agent_simulation_metric_modules():
    import doctest
    import importlib

    for name in ("agents.base", "agents.policy", "contracts.goals", "evaluate.stats", "evaluate.instructions",
                 "contracts.persona", "contracts.storefront", "chat"):
        mod = importlib.import_module(f"simpersona.{name}")
        res = doctest.testmod(mod)
        assert res.failed == 0 and res.attempted > 0, name
