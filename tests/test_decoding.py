"""The LLM agent's decoder: constrained decoding yields only executable actions on real storefront
pages (a random-init model, sampled, many pages and seeds) while free decoding does not; the
prefix-cached path answers exactly as the uncached one; same seed, same answers; bad input
(a checkpoint without the run's persona tokens, an endpoint answering non-JSON) is classified."""

from __future__ import annotations

import json

import httpx
import pytest

from simpersona.agents.base import FAILURES, act_batch
from simpersona.agents.decoding import action_grammar
from simpersona.agents.llm import EndpointBackend, EndpointConfig, LLMAgent, LLMConfig, TransformersBackend
from simpersona.storefront.actions import parse_action
from simpersona.storefront.app import create_app
from simpersona.storefront.config import StorefrontConfig
from simpersona.storefront.env import ShopEnv
from simpersona.storefront.transports import AsgiTransport


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from simpersona.testing.world import make_toy_world

    return make_toy_world(tmp_path_factory.mktemp("toy"), shops=2, codes=4, buyers=80)


@pytest.fixture(scope="module")
def app(world):
    return create_app(StorefrontConfig(), world["ingest"] / "catalog.parquet")


@pytest.fixture(scope="module")
def tiny(world):
    """A random-init 1-layer Llama and a BPE tokenizer trained on the prompt and a few pages."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from simpersona.contracts.persona import persona_tokens
    from simpersona.contracts.prompt import CHAT_TEMPLATE, SYSTEM_PROMPT
    from simpersona.sft.train import train_tiny_tokenizer

    texts = [SYSTEM_PROMPT, '{"action": "click", "element_id": "product-p1", "reasoning": "x"}',
             "[nav-home] link: Home\n[search-q] input Search = ''\n[collection-shoes] link: Shoes"] * 3
    tok = train_tiny_tokenizer(texts, 400)
    tok.add_special_tokens({"additional_special_tokens": persona_tokens(4)})
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    return model, tok


def run_episodes(app, backend, n: int, steps: int, seed: int):
    """n episodes of at most `steps` steps, decided together; (decisions, env infos)."""
    envs = [ShopEnv(AsgiTransport(app)) for _ in range(n)]
    agents = [LLMAgent(backend) for _ in range(n)]
    obs = []
    for i, (e, a) in enumerate(zip(envs, agents)):
        o, _ = e.reset(seed=seed + i, options={"shop": f"shop{i % 2}", "goal": "You are here to buy skirts.",
                                              "persona_token": f"<|persona_{i % 4}|>"})
        a.reset("You are here to buy skirts.", i % 4 if i % 3 else None)
        obs.append(o)
    decisions, infos = [], []
    live = list(range(n))
    for _ in range(steps):
        ds = act_batch([agents[i] for i in live], [obs[i] for i in live])
        nxt = []
        for i, d in zip(live, ds):
            decisions.append(d)
            if d.action is None:
                continue
            obs[i], _, term, trunc, info = envs[i].step(d.action)
            infos.append(info)
            if not (term or trunc):
                nxt.append(i)
        live = nxt
        if not live:
            break
    for e in envs:
        e.close()
    return decisions, infos


def test_constrained_decoding_only_executable_actions(app, tiny):
    model, tok = tiny
    for seed in (0, 1, 2):
        backend = TransformersBackend(LLMConfig(temperature=1.0, seed=seed, batch_size=4, max_text_tokens=6,
                                                max_reasoning_tokens=6), model=model, tokenizer=tok)
        decisions, infos = run_episodes(app, backend, n=6, steps=8, seed=100 * seed)
        assert len(decisions) >= 12
        assert all(d.action is not None and d.failure is None for d in decisions), [d.raw for d in decisions if d.action is None]
        assert all(not d.repaired for d in decisions)  # the text is the action's JSON as it is
        assert all(parse_action(d.raw) for d in decisions)
        assert [i["error"] for i in infos if i["error"]] == []  # every action executed on its page
        assert len({(i["action"]["action"]) for i in infos}) >= 3  # not one action over and over


def test_no_reasoning_answers_close_after_the_action(app, tiny):
    """max_reasoning_tokens 0: every answer is an executable action whose reasoning is empty or absent."""
    model, tok = tiny
    backend = TransformersBackend(LLMConfig(temperature=1.0, seed=3, batch_size=4, max_text_tokens=6,
                                            max_reasoning_tokens=0), model=model, tokenizer=tok)
    decisions, infos = run_episodes(app, backend, n=4, steps=4, seed=7)
    assert decisions and all(d.action is not None and d.failure is None for d in decisions)
    assert all(json.loads(d.raw).get("reasoning", "") == "" for d in decisions), [d.raw for d in decisions]
    assert [i["error"] for i in infos if i["error"]] == []
    g = action_grammar("URL: /s/x/\n[nav-home] link: Home", can_go_back=False, max_reasoning_tokens=0)
    assert 'reasoning\\": " "\\"\\""' in g.splitlines()[0]  # at most an empty reasoning string


def test_free_decoding_is_not_constrained(app, tiny):
    model, tok = tiny
    backend = TransformersBackend(LLMConfig(decoding="free", temperature=1.0, seed=0, max_new_tokens=24), model=model, tokenizer=tok)
    decisions, _ = run_episodes(app, backend, n=6, steps=2, seed=0)
    failures = [d.failure for d in decisions if d.action is None]
    assert failures and set(failures) <= set(FAILURES)  # a random model's free text: classified failures


def test_prefix_cache_gives_the_uncached_greedy_answer(tiny):
    model, tok = tiny
    cached = TransformersBackend(LLMConfig(prefix_cache=8, batch_size=3, max_text_tokens=8), model=model, tokenizer=tok)
    plain = TransformersBackend(LLMConfig(prefix_cache=0, batch_size=3, max_text_tokens=8), model=model, tokenizer=tok)
    page = "URL: /s/shop0/\nTITLE: Shop\n[nav-home] link: Home\n[search-q] input Search = ''\n[collection-shoes] link: Shoes"
    outs = {}
    for name, backend in (("cached", cached), ("plain", plain)):
        agents = [LLMAgent(backend) for _ in range(3)]
        for k, a in enumerate(agents):
            a.reset("You are here to buy shoes.", k)
        got = []
        for step in range(3):  # consecutive steps: the prompts share goal, persona and the first log lines
            obs = [{"url": "/s/shop0/", "page": page + f"\n[product-p{step}] link: Product {step}", "error": None}] * 3
            got.append([d.raw for d in act_batch(agents, obs)])
        outs[name] = got
    assert outs["cached"] == outs["plain"]
    assert cached.cached_tokens > 0 and plain.cached_tokens == 0
    assert cached.prefill_tokens < plain.prefill_tokens


def test_same_seed_same_sampled_answers(app, tiny):
    model, tok = tiny
    runs = []
    for _ in range(2):
        backend = TransformersBackend(LLMConfig(temperature=0.8, top_p=0.9, seed=7), model=model, tokenizer=tok)
        runs.append([d.raw for d in run_episodes(app, backend, n=3, steps=3, seed=5)[0]])
    assert runs[0] == runs[1]


def test_grammar_follows_the_page():
    page = ("URL: /s/x/cart\nTITLE: Cart\n[nav-home] link: Home\n[remove-p9] button: Remove\n"
            "[field-country] select Country = 'US' (options: US, CA)\n[field-email] input E-mail = ''")
    g = action_grammar(page, can_go_back=False)
    assert '\\"p9\\"' in g and "field-email" in g and '\\"CA\\"' in g
    assert '"\\"back\\""' not in g and '"\\"search\\""' not in g and '"\\"add_to_cart\\""' not in g
    assert '"\\"back\\""' in action_grammar(page, can_go_back=True)


def test_checkpoint_without_the_runs_persona_tokens(tiny):
    model, tok = tiny
    backend = TransformersBackend(LLMConfig(checkpoint="ckpt/stage2"), model=model, tokenizer=tok)
    backend.check_personas(4)
    with pytest.raises(ValueError, match=r"ckpt/stage2.*<\|persona_4\|>"):
        backend.check_personas(6)
    agent = LLMAgent(backend)
    agent.reset("You are here to buy shoes.", 9)  # a code the tokenizer does not know: classified, not a crash
    d = act_batch([agent], [{"url": "/s/x/", "page": "URL: /s/x/\n[nav-home] link: Home", "error": None}])[0]
    assert d.failure == "backend_error" and "<|persona_9|>" in d.detail


@pytest.mark.parametrize("status,body", [
    (200, "<html>gateway error</html>"),  # not JSON at all
    (200, ""),  # an empty body
    (200, '{"choices": [{"message": {"content": "{\\"action'),  # truncated JSON
    (200, '{"choices": []}'),  # JSON without an answer
    (200, '{"choices": [{"message": {"content": null}}]}'),  # an answer without text
    (200, '{"choices": [{"message": "view_cart"}]}'),  # the wrong shape
    (200, '[1, 2, 3]'),  # JSON, not an object
    (502, '{"error": "upstream"}'),  # an HTTP error
])
def test_endpoint_answering_non_json_is_a_classified_failure(status, body):
    transport = httpx.MockTransport(lambda request: httpx.Response(status, text=body))
    backend = EndpointBackend(EndpointConfig(url="http://model.invalid/v1"), transport=transport)
    agent = LLMAgent(backend)
    agent.reset("g", None)
    d = act_batch([agent], [{"url": "/s/x/", "page": "URL: /s/x/\nhi", "error": None}])[0]
    assert d.action is None and d.failure == "backend_error" and d.detail


def test_endpoint_answering_non_json_never_crashes_the_run(app):
    """Episodes with an endpoint answering garbage end as classified failures; the run completes."""
    from simpersona.simulate.runner import EpisodeSpec, run_episodes

    answers = iter(["<html>502</html>", '{"choices": [{"message": {"content": "I think I will look around"}}]}',
                    '{"choices": [{"message": {"content": "{\\"action\\": \\"view_cart\\"}"}}]}'] * 10)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text=next(answers)))
    backend = EndpointBackend(EndpointConfig(url="http://model.invalid/v1", concurrency=1), transport=transport)
    specs = [EpisodeSpec("shop0", f"b{i}", f"s{i}", 1, "A", "buy", "You are here to buy skirts.", i) for i in range(3)]
    out = run_episodes(specs, [ShopEnv(AsgiTransport(app))], lambda spec: LLMAgent(backend))
    assert len(out) == 3
    assert [(o["outcome"], o["failure"]) for o in out[:2]] == [("crash", "backend_error"), ("malformed", "no_json")]
    assert out[2]["steps"] == 1 and out[2]["failure"] == "backend_error"  # view_cart executed, then the endpoint failed


def test_fast_forward_batched_answers_equal_single_ones_in_fewer_passes(tiny):
    """Forced tokens (JSON keys, the rest of a unique id) go through the model with the chosen token:
    rows of a batch then feed different numbers of tokens (padded, masked out). A batch answers as each
    prompt alone does, in fewer model passes than token-by-token decoding, and every answer is valid."""
    model, tok = tiny
    page = "URL: /s/shop0/\nTITLE: Shop\n[nav-home] link: Home\n[search-q] input Search = ''\n[collection-shoes] link: Shoes"
    obs = [{"url": "/s/shop0/", "page": page + f"\n[product-p{k}] link: Product {k}", "error": None} for k in range(3)]

    def answers(batch_size: int, fast_forward: bool):
        backend = TransformersBackend(LLMConfig(batch_size=batch_size, max_text_tokens=8, fast_forward=fast_forward),
                                      model=model, tokenizer=tok)
        agents = [LLMAgent(backend) for _ in range(3)]
        for k, a in enumerate(agents):
            a.reset(["You are here to buy shoes.", "You are here to browse hats.", "You are interested in socks."][k], k)
        ds = [d for _ in range(2) for d in act_batch(agents, obs)]
        return [d.raw for d in ds], [d.action for d in ds], backend.cache.decode_passes

    batched, actions, passes = answers(3, True)
    single, _, _ = answers(1, True)
    _, slow_actions, slow_passes = answers(3, False)
    assert batched == single
    assert all(a is not None for a in actions + slow_actions)
    assert passes < slow_passes
