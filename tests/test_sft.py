"""SFT: record format, persona tokens, two-stage training — on the tiny preset (random-init
Llama + a BPE tokenizer trained on fabricated traces), seconds per test."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from simpersona.config import ConfigError, from_dict, load_config  # noqa: E402
from simpersona.testing.traces import fabricate  # noqa: E402
from simpersona.contracts.persona import persona_token  # noqa: E402
from simpersona.contracts.prompt import CHAT_TEMPLATE, SYSTEM_PROMPT, messages  # noqa: E402
from simpersona.contracts.records import (  # noqa: E402
    RecordError, check_budget, read_records, record_name, records_from_trajectory, validate_record, write_records,
)
from simpersona.contracts.split import ShopSplit, SplitLeakError, sample_sessions, validation_shops  # noqa: E402
from simpersona.sft.tokens import add_persona_tokens, fit_projection, load_cards, load_codebook  # noqa: E402
from simpersona.sft.train import (  # noqa: E402
    ModelConfig, SftConfig, StageConfig, load_base, load_checkpoint, make_trainer, save_checkpoint,
    train_stage,
)

K = 4
torch.set_num_threads(2)


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("traces")
    fabricate(out, k=K, shops=4, sessions=16, seed=0)
    return out


@pytest.fixture(scope="module")
def records(traces) -> list[dict]:
    return read_records(traces, num_personas=K)


@pytest.fixture(scope="module")
def base(records):
    """(model, tokenizer, persona ids): tiny Llama with K persona tokens (copy before mutating)."""
    model, tok = load_base(ModelConfig(), [m["content"] for r in records for m in r["messages"]], seed=0)
    tok.chat_template = CHAT_TEMPLATE
    ids, _ = add_persona_tokens(model, tok, K, "mean")
    return model, tok, ids


def hp(**kw) -> StageConfig:
    return StageConfig(**{"max_steps": 3, "batch_size": 2, "warmup_steps": 0, "max_length": 4096, "logging_steps": 1,
                          "eval_batch_size": 8, **kw})


# -- records -----------------------------------------------------------------------------------
def test_fabricated_records_validate_and_round_trip(traces, records, tmp_path):
    assert {r["stage"] for r in records} == {1, 2}
    first = records[0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][0]["content"] == SYSTEM_PROMPT
    # a compact action list, not the JSON schema (~1,000 tokens): every action and field is named
    assert '"oneOf"' not in SYSTEM_PROMPT and len(SYSTEM_PROMPT) < 1200
    assert all(w in SYSTEM_PROMPT for w in ("search(query)", "fill(element_id, value)", "add_to_cart(quantity?)", "end_session(goal_reached)"))
    assert f"Buyer profile: {persona_token(first['persona'])}" in first["messages"][1]["content"]
    answer = json.loads(first["messages"][2]["content"])
    assert answer["action"] and answer["reasoning"]
    n = write_records(tmp_path / "x.jsonl", records[:5])
    assert n == 5 and read_records(tmp_path / "x.jsonl") == records[:5]


@pytest.mark.parametrize("breakage, match", [
    (lambda r: r.pop("stage"), "missing"),
    (lambda r: r.update(stage=3), "stage"),
    (lambda r: r.update(extra=1), "unknown field"),
    (lambda r: r["messages"].reverse(), "roles"),
    (lambda r: r["messages"][2].update(content='{"action": "fly"}'), "not a valid action"),
    (lambda r: r["messages"][2].update(content='{"action": "back"}'), "reasoning"),
    (lambda r: r.update(persona=3), "Buyer profile"),
    (lambda r: r.update(persona=9), "≥ K"),
    (lambda r: r.update(step=True), "integer"),
])
def test_validator_rejects_broken_records(records, breakage, match):
    rec = copy.deepcopy(next(r for r in records if r["persona"] != 3))
    breakage(rec)
    with pytest.raises(RecordError, match=match):
        validate_record(rec, num_personas=K)


def test_records_from_trajectory_builds_the_progress_log():
    obs = lambda url, err=None: {"url": url, "page": f"URL: {url}\nTITLE: t\n[x] link: X", "error": err}  # noqa: E731
    steps = [{"observation": obs("/s/a/"), "action": {"action": "search", "query": "socks"}, "reasoning": "Find socks."},
             {"observation": obs("/s/a/search?q=socks"), "action": {"action": "click", "element_id": "x"}, "reasoning": "Open it."},
             {"observation": obs("/s/a/p/1", "no element 'y'"), "action": {"action": "end_session", "goal_reached": False}, "reasoning": "Leave."}]
    recs = records_from_trajectory("You are interested in socks.", 2, steps,
                                   {"shop_id": "a", "session_key": "a:1", "stratum": "D", "stage": 1})
    assert [r["step"] for r in recs] == [0, 1, 2]
    users = [r["messages"][1]["content"] for r in recs]
    assert "(nothing yet)" in users[0]
    assert "1. search(query='socks') → search page" in users[1]
    assert "2. click(element_id='x') → failed: no element 'y'" in users[2]
    assert "Last action failed: no element 'y'" in users[2]
    assert messages("g", None, [], obs("/"))[1]["content"].count("Buyer profile: none") == 1


def test_sampling_represents_every_code_and_keeps_sessions_whole(records):
    sessions = lambda rs: {r["session_key"] for r in rs}  # noqa: E731
    per_code = lambda rs: {c: len({r["session_key"] for r in rs if r["persona"] == c}) for c in range(K)}  # noqa: E731
    avail = per_code(records)
    small = sample_sessions(records, max_per_code=3, min_per_code=1, target_sessions=K, seed=0)
    assert all(n == min(1, avail[c]) for c, n in per_code(small).items())
    capped = sample_sessions(records, max_per_code=2, min_per_code=1, target_sessions=0, seed=0)
    assert all(n == min(2, avail[c]) for c, n in per_code(capped).items())
    for s in sessions(capped):  # whole sessions: every step of both stages
        assert sum(r["session_key"] == s for r in capped) == sum(r["session_key"] == s for r in records)
    assert sample_sessions(records, 2, 1, 0, seed=0) == capped


def test_sampling_is_keyed_by_session_ids_not_positions(records):
    """A session's fate depends on its key only: shuffling or adding other codes' sessions does
    not change which sessions of a code are kept."""
    picked = sample_sessions(records, 2, 1, 0, seed=0)
    shuffled = sample_sessions(list(reversed(records)), 2, 1, 0, seed=0)
    assert {r["session_key"] for r in picked} == {r["session_key"] for r in shuffled}
    other = [r for r in records if r["persona"] != 0]
    assert ({r["session_key"] for r in sample_sessions(other, 2, 1, 0, seed=0)}
            == {r["session_key"] for r in picked if r["persona"] != 0})


def test_validation_shops_are_stable_and_a_proper_subset():
    shops = [f"store-{i}" for i in range(8)]
    val = validation_shops(shops, 0.25, seed=0)
    assert len(val) == 2 and val < set(shops)
    assert validation_shops(reversed(shops), 0.25, seed=0) == val
    assert validation_shops(["a"], 0.5, 0) == set() and validation_shops(["a", "b"], 0.9, 0) != {"a", "b"}


def test_traces_dir_is_split_by_shop(traces):
    from simpersona.contracts.records import read_trace_split

    train, val = read_trace_split(traces, num_personas=K)
    assert train and val and not {r["shop_id"] for r in train} & {r["shop_id"] for r in val}
    assert {r["stage"] for r in train} == {r["stage"] for r in val} == {1, 2}


def test_a_record_over_the_token_budget_is_an_error_naming_it(base, records):
    _, tok, _ = base
    lengths = check_budget(records, tok, 1 << 30)
    assert lengths["records"] == len(records) and lengths["median"] <= lengths["p95"] <= lengths["max"]
    longest = max(records, key=lambda r: len(r["messages"][1]["content"]))
    with pytest.raises(RecordError, match=f"record {longest['session_key']} step {longest['step']}"):
        check_budget([longest], tok, lengths["max"] - 1)


# -- tokens ------------------------------------------------------------------------------------
def test_persona_tokens_are_single_special_tokens(base):
    model, tok, ids = base
    assert ids == list(range(ids[0], ids[0] + K)) and len(tok) == model.get_input_embeddings().weight.shape[0]
    enc = tok("Buyer profile: <|persona_3|>\n", add_special_tokens=False)["input_ids"]
    assert ids[3] in enc and tok.decode([ids[3]]) == "<|persona_3|>"
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, resized together


@pytest.mark.parametrize("init", ["mean", "codebook", "card", "random"])
def test_init_modes(records, traces, init):
    model, tok = load_base(ModelConfig(), [m["content"] for r in records[:40] for m in r["messages"]], seed=0)
    old = model.get_input_embeddings().weight.detach().clone()  # (V, d)
    ids, info = add_persona_tokens(model, tok, K, init, load_codebook(traces / "vqvae"), load_cards(traces / "cards.json"))
    rows = model.get_input_embeddings().weight[ids].detach()  # (K, d)
    assert rows.shape == (K, old.shape[1]) and info["init"] == init and torch.isfinite(rows).all()
    if init == "mean":
        assert torch.allclose(rows, old.mean(0).expand(K, -1), atol=1e-6)
    else:
        assert len({tuple(r.tolist()) for r in rows}) == K  # a different row per code
    if init == "codebook":
        assert info["cards_used"] == K and 0 < info["train_r2"] <= 1
    if init == "random":  # the paper's: seeded, at the scale of the existing rows
        assert info["sigma"] > 0 and abs(float(rows.std()) / info["sigma"] - 1) < 0.3
        model2, tok2 = load_base(ModelConfig(), [m["content"] for r in records[:40] for m in r["messages"]], seed=0)
        ids2, _ = add_persona_tokens(model2, tok2, K, "random", seed=0)
        assert torch.equal(model2.get_input_embeddings().weight[ids2], rows)


def test_codebook_init_falls_back_to_mean_without_cards(records, traces):
    model, tok = load_base(ModelConfig(), [m["content"] for r in records[:40] for m in r["messages"]], seed=0)
    ids, info = add_persona_tokens(model, tok, K, "codebook", load_codebook(traces / "vqvae"), cards=None)
    assert info["init"] == "mean" and "fallback" in info


def test_ridge_projection_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(50, 6, generator=g), torch.randn(6, 3, generator=g)  # (n, p), (p, d)
    w_hat, b_hat = fit_projection(x, x @ w + 2.0, alpha=1e-6)
    assert torch.allclose(w_hat, w, atol=1e-4) and torch.allclose(b_hat, torch.full((3,), 2.0), atol=1e-4)


# -- training ----------------------------------------------------------------------------------
def test_trl_labels_only_assistant_tokens(base, records, tmp_path):
    model, tok, _ = copy.deepcopy(base)  # a trainer patches the model it gets (trl fused head)
    trainer = make_trainer(model, tok, records[:4], [], hp(max_steps=1), tmp_path, seed=0)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    for row, rec in enumerate(records[:4]):
        labels, ids = batch["labels"][row], batch["input_ids"][row]  # (T,), (T,)
        assert tok.decode(ids[labels != -100]) == rec["messages"][2]["content"] + "<|im_end|>"
        prompt = tok.decode(ids[(labels == -100) & (batch["attention_mask"][row] == 1)])
        assert rec["messages"][1]["content"] in prompt and "<|persona_" in prompt


def test_stage1_changes_only_persona_rows(base, records, tmp_path):
    model, tok, ids = copy.deepcopy(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = train_stage("stage1", model, tok, [r for r in records if r["stage"] == 1], [], hp(learning_rate=1e-2, weight_decay=0.0),
                    tmp_path, seed=0, persona_ids=ids)
    after = model.state_dict()
    emb = after["model.embed_tokens.weight"]  # (V, d)
    others = [i for i in range(emb.shape[0]) if i not in ids]
    assert torch.equal(emb[others], before["model.embed_tokens.weight"][others])
    assert not torch.equal(emb[ids], before["model.embed_tokens.weight"][ids])
    for k, v in after.items():
        if k not in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(v, before[k]), k
    assert s["frozen_check"]["changed_outside_persona_rows"] == [] and s["frozen_check"]["persona_rows_moved"] > 0
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again for stage 2


def test_stage1_refuses_weight_decay(base, records, tmp_path):
    model, tok, ids = copy.deepcopy(base)
    with pytest.raises(ConfigError, match="weight_decay 0"):
        train_stage("stage1", model, tok, records[:4], [], hp(weight_decay=0.01), tmp_path, seed=0, persona_ids=ids)


def test_stage2_changes_the_backbone_and_loss_falls(base, records, tmp_path):
    model, tok, ids = copy.deepcopy(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage2 = [r for r in records if r["stage"] == 2][:4]
    s = train_stage("stage2", model, tok, stage2, stage2, hp(max_steps=6, batch_size=4, learning_rate=3e-3), tmp_path, seed=0)
    after = model.state_dict()
    assert not torch.equal(after["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(after["model.norm.weight"], before["model.norm.weight"])
    losses = [e["loss"] for e in json.loads((tmp_path / "log.json").read_text()) if "loss" in e]
    assert len(losses) == 6 and losses[-1] < losses[0] and s["val_loss_after"] < s["val_loss_before"]


def top_choice_hits(model, tok, records) -> float:
    """Share of records whose action-name token (the 5th answer token) is the model's argmax."""
    hits = []
    for r in records:
        enc = tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, j = enc["input_ids"], enc["assistant_masks"].index(1)
        with torch.no_grad():
            top = model(torch.tensor([ids])).logits[0, j + 3].argmax().item()  # predicts token j + 4
        hits.append(top == ids[j + 4])
    return sum(hits) / len(hits)


def test_decision_weight_teaches_the_decision(records, tmp_path):
    """decision_loss_weight ≠ 1 (the single-pass trainer's weighted loss): the deciding token is learnt, and the
    trainer's action accuracy equals the model's top choice at each record's action-name token."""
    model, tok = load_base(ModelConfig(), [m["content"] for r in records for m in r["messages"]], seed=0)  # fresh
    tok.chat_template = CHAT_TEMPLATE
    add_persona_tokens(model, tok, K, "mean")
    stage2 = [r for r in records if r["stage"] == 2][:4]
    s = train_stage("stage2", model, tok, stage2, stage2, hp(max_steps=12, batch_size=4, learning_rate=1e-2,
                                                            decision_loss_weight=50.0), tmp_path, seed=0)
    assert s["steps"] == 12 and s["val_loss_after"] < s["val_loss_before"]
    assert s["val_action_accuracy_after"] == pytest.approx(top_choice_hits(model, tok, stage2))
    assert s["val_action_accuracy_after"] > s["val_action_accuracy_before"]


def test_evaluation_and_weighted_training_take_one_forward_pass_per_batch(base, records, tmp_path):
    """One forward pass per evaluation batch gives the loss (equal to trl's fused one) and the action
    accuracy; a decision-weighted training micro-batch runs one forward pass too (trl: two or three)."""
    from trl import SFTTrainer

    model, tok, _ = copy.deepcopy(base)
    stage2 = [r for r in records if r["stage"] == 2][:8]
    calls = []
    hook = model.get_decoder().register_forward_hook(lambda *a: calls.append(1))  # every pass runs the decoder
    trainer = make_trainer(model, tok, stage2, stage2, hp(max_steps=1, batch_size=4, grad_accum=1,
                                                          decision_loss_weight=5.0), tmp_path, seed=0)
    ev = trainer.evaluate()  # 8 records, eval_batch_size 8: one batch
    assert len(calls) == 1 and 0 <= ev["eval_action_accuracy"] <= 1
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.eval_dataset[i] for i in range(8)]))
    model.eval()
    with torch.no_grad():
        fused = SFTTrainer.compute_loss(trainer, model, dict(batch))  # trl's fused LM head
    assert ev["eval_loss"] == pytest.approx(float(fused), rel=1e-5)
    calls.clear()
    trainer.train()  # one step of one micro-batch of 4
    assert len(calls) == 1
    hook.remove()


def test_save_reload_keeps_tokens_and_logits(base, records, tmp_path):
    model, tok, ids = base
    save_checkpoint(tmp_path / "ck", model, tok, SftConfig())
    model2, tok2 = load_checkpoint(tmp_path / "ck")
    assert tok2.convert_tokens_to_ids([persona_token(i) for i in range(K)]) == ids
    text = tok.apply_chat_template(records[0]["messages"], tokenize=False)
    assert tok2.apply_chat_template(records[0]["messages"], tokenize=False) == text
    enc, enc2 = tok(text, return_tensors="pt"), tok2(text, return_tensors="pt")
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    with torch.no_grad():
        assert torch.equal(model.eval()(**enc).logits, model2.eval()(**enc2).logits)
    assert json.loads((tmp_path / "ck" / "meta.json").read_text())["stage"] == "sft-checkpoint"


# -- the stage and the CLI -----------------------------------------------------------------------
def test_cli_both_stages_then_stage2_alone(traces, tmp_path):
    from click.testing import CliRunner

    from simpersona.cli import main

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["sft", "--preset", "tiny", "--stage", "both", "--data", str(traces), "--out", str(out),
                                    "--set", f"tokens.k={K}", "--set", "stage1.max_steps=2", "--set", "stage2.max_steps=2"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["summary"]["stage1"]["frozen_check"]["changed_outside_persona_rows"] == []
    assert meta["summary"]["split"]["codes_represented"] == K
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train_shops"]) & set(split["val_shops"])
    for d in ("stage1", "stage2"):
        assert (out / d / "model.safetensors").exists() and (out / d / "meta.json").exists()
    res = CliRunner().invoke(main, ["sft", "--preset", "tiny", "--stage", "2", "--data", str(traces), "--out", str(out),
                                    "--set", f"tokens.k={K}", "--set", "stage2.max_steps=1"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "meta.json").read_text())["summary"]["persona_init"]["from"].endswith("stage1")


def test_sft_refuses_records_over_the_model_budget_or_of_evaluation_shops(traces, tmp_path):
    from simpersona.sft.train import run

    cfg = load_config(SftConfig, "tiny", (f"tokens.k={K}", "model.max_record_tokens=64"), "sft", {"data": traces})
    with pytest.raises(RecordError, match="over the model's budget max_record_tokens=64"):
        run(cfg, tmp_path / "a")
    assert not (tmp_path / "a" / "stage1").exists()  # before any training
    shop = sorted({r["shop_id"] for r in read_records(traces)})[0]
    ShopSplit(("other",), (shop,)).save(tmp_path / "split" / "shops.json")
    cfg = load_config(SftConfig, "tiny", (f"tokens.k={K}", f"split={tmp_path / 'split'}"), "sft", {"data": traces})
    with pytest.raises(SplitLeakError, match=f"sft .*{shop}"):
        run(cfg, tmp_path / "b")


def test_single_stage_ablation_trains_everything(traces, tmp_path):
    from simpersona.sft.train import run

    cfg = load_config(SftConfig, "tiny", (f"tokens.k={K}", "stage2.max_steps=1", "stage=single"), "sft", {"data": traces})
    s = run(cfg, tmp_path)
    assert s["single"]["train_records"] == sum(s["split"]["records"]["train"].values())
    model, _ = load_checkpoint(tmp_path / "single")
    assert s["single"]["trainable_params"] == sum(p.numel() for p in model.parameters()) and "stage1" not in s  # every weight trains


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(SftConfig, {"stage1": {"lr": 1}})
    with pytest.raises(ConfigError):
        load_config(SftConfig, "tiny", ("stage=3",), "sft")
    assert load_config(SftConfig, "qwen3", section="sft").model.dtype == "bfloat16"
    assert load_config(SftConfig, "smollm2", section="sft").model.preset == "smollm2"


# -- the real CPU preset: validation curve, bucketed batches, bf16 only where the CPU has it ------
def test_validation_curve_every_eval_step_and_bucketed_batches(base, records, tmp_path):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    model, tok, _ = copy.deepcopy(base)
    stage2 = [r for r in records if r["stage"] == 2]
    s = train_stage("stage2", model, tok, stage2[:8], stage2[8:12], hp(max_steps=4, eval_steps=2, sampling="group_by_length"),
                    tmp_path, seed=0)
    assert [step for step, _ in s["val_curve"]] == [0, 2, 4]
    assert s["val_curve"][0][1] == s["val_loss_before"] and s["val_curve"][-1][1] == s["val_loss_after"]
    assert s["step_s_median"] > 0 and s["examples_per_step"] == 2 and "load_average" in s
    trainer = make_trainer(model, tok, stage2[:8], [], hp(sampling="group_by_length"), tmp_path, seed=0)
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)


def test_bf16_only_where_the_cpu_has_it(monkeypatch):
    from simpersona.sft import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    on, why = train.use_bf16(StageConfig(bf16=True))
    assert not on and "lacks avx512_bf16" in why
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    assert train.use_bf16(StageConfig(bf16=True))[0] and not train.use_bf16(StageConfig(bf16=False))[0]


def test_agent_preset_extends_demo_and_trains_for_real():
    from simpersona.config import read_preset

    demo, agent = read_preset("demo"), read_preset("agent")
    assert "extends" not in agent and agent["synth"] == demo["synth"] and agent["traces"] == demo["traces"]
    cfg = load_config(SftConfig, "agent", section="sft")
    demo_sft = load_config(SftConfig, "demo", section="sft")
    # stage 2 ≥ 4× the demo's examples; stage 1 (K persona rows: 32 records moved its validation loss
    # by < 0.001) at least the demo's
    for st, demo_st, times in ((cfg.stage1, demo_sft.stage1, 1), (cfg.stage2, demo_sft.stage2, 4)):
        examples = st.max_steps * st.batch_size * st.grad_accum
        assert examples >= times * demo_st.max_steps * demo_st.batch_size * demo_st.grad_accum and st.sampling == "group_by_length"
        assert st.bf16 and st.max_eval_records > 0 and st.max_length >= cfg.model.max_record_tokens  # validated before/after
    assert cfg.stage2.max_steps * cfg.stage2.batch_size * cfg.stage2.grad_accum >= 300  # stage 2: ≥ 300 records
    assert cfg.stage2.decision_loss_weight > 1  # the deciding token weighted (plain loss: action accuracy < majority)
    assert cfg.stage2.balance > 0  # rare page types drawn more (as read: the same two actions on every page)
    assert 0 < cfg.stage2.eval_steps < cfg.stage2.max_steps  # and a validation curve through stage 2
    assert cfg.model.preset == "smollm2" and cfg.stage1.weight_decay == 0 and not cfg.single_ablation


def test_checkpoint_meta_names_its_content_hash(base, tmp_path):
    from simpersona.sft.train import checkpoint_id

    model, tok, _ = base
    save_checkpoint(tmp_path / "ck", model, tok, SftConfig())
    ident = json.loads((tmp_path / "ck" / "meta.json").read_text())["checkpoint"]
    assert ident == checkpoint_id(tmp_path / "ck") and len(ident["sha256"]) == 12
    with torch.no_grad():
        model.get_input_embeddings().weight[0, 0] += 1
    save_checkpoint(tmp_path / "ck2", model, tok, SftConfig())
    assert checkpoint_id(tmp_path / "ck2")["sha256"] != ident["sha256"]
    with torch.no_grad():
        model.get_input_embeddings().weight[0, 0] -= 1


# -- bad input: every check before any training or episode ------------------------------------
@pytest.fixture(scope="module")
def trained(traces, tmp_path_factory) -> Path:
    """A tiny two-stage SFT run folder (K persona tokens), 1 step per stage."""
    from simpersona.sft.train import run

    out = tmp_path_factory.mktemp("trained")
    run(load_config(SftConfig, "tiny", (f"tokens.k={K}", "stage1.max_steps=1", "stage2.max_steps=1"), "sft", {"data": traces}), out)
    return out


def test_a_trained_checkpoint_plugs_into_a_run(traces, trained, tmp_path):
    from simpersona.sft.train import checkpoint_id, run

    cfg = load_config(SftConfig, "tiny", (f"tokens.k={K}", f"checkpoint={trained}"), "sft", {"data": traces})
    s = run(cfg, tmp_path / "sft")
    assert (tmp_path / "sft" / "stage2").resolve() == (trained / "stage2").resolve()
    assert s["stage2"]["checkpoint"] == checkpoint_id(trained / "stage2") and s["stage2_val_loss"] > 0
    assert json.loads((tmp_path / "sft" / "meta.json").read_text())["summary"]["checkpoint"] == str(trained.resolve())


def test_a_checkpoint_without_the_runs_persona_tokens_is_refused(traces, trained, tmp_path):
    from simpersona.sft import train

    # another run's K: 2 more codes than the checkpoint knows, or 2 fewer
    for k, match in ((K + 2, r"lacks persona token\(s\) <\|persona_4\|>"), (K - 2, f"trained for K = {K} .* K = {K - 2}")):
        with pytest.raises(ConfigError, match=match) as e:
            train.check_checkpoint(trained / "stage2", k)
        assert str(trained / "stage2") in str(e.value)
    cfg = load_config(SftConfig, "tiny", (f"tokens.k={K + 2}", f"checkpoint={trained}"), "sft", {"data": traces})
    with pytest.raises(ConfigError, match=str(trained)):
        train.run(cfg, tmp_path / "a")
    assert not (tmp_path / "a" / "stage2").exists()
    # stage 2 alone, from a stage-1 checkpoint of another K
    cfg = load_config(SftConfig, "tiny", (f"tokens.k={K + 1}", f"init_from={trained / 'stage1'}"), "sft",
                      {"data": traces, "stage": "2"})
    with pytest.raises(ConfigError, match=f"checkpoint {trained / 'stage1'}"):
        train.run(cfg, tmp_path / "b")
    assert not (tmp_path / "b" / "stage2").exists()


def test_k_mismatch_with_the_codebook_and_a_record_over_budget_of_a_plugged_checkpoint(traces, trained, tmp_path):
    from simpersona.contracts.records import RecordError
    from simpersona.sft.train import run

    cfg = load_config(SftConfig, "tiny", (f"tokens.k={K + 1}", f"tokens.vqvae={traces / 'vqvae'}"), "sft", {"data": traces})
    with pytest.raises(ConfigError, match=f"tokens.k = {K + 1} but the codebook of .*vqvae has K = {K}"):
        run(cfg, tmp_path / "a")
    cfg = load_config(SftConfig, "tiny", (f"tokens.k={K}", f"checkpoint={trained}", "model.max_record_tokens=64"), "sft",
                      {"data": traces})
    with pytest.raises(RecordError, match=r"record .* step \d+.*max_record_tokens=64"):
        run(cfg, tmp_path / "b")
    assert not (tmp_path / "b" / "stage2").exists()


def test_report_names_the_checkpoint_and_shows_the_validation_curve(trained, tmp_path):
    import shutil

    from simpersona.layout import RunLayout
    from simpersona.report import build
    from simpersona.sft.train import checkpoint_id

    lay = RunLayout(tmp_path / "run")
    shutil.copytree(trained, lay.sft)
    lay.instructions.mkdir(parents=True)
    ident = checkpoint_id(lay.stage2)
    card = {"name": "llm", "agent": "llm", "persona_token": True, "checkpoint": ident}  # as simulate.cards.agent_card writes it
    overall = {"runs": 1, "steps": 3, "self_reported": 0.0, "completed": 0.0, "n": {"self_reported": [0, 1], "completed": [0, 1]},
               "ci": {"self_reported": [0.0, 0.79], "completed": [0.0, 0.79]}}
    (lay.instructions / "instructions.json").write_text(json.dumps({
        "tasks": 1, "agents": {"llm": {"status": "run", "agent": card, "data": None, "runs": 1, "overall": overall, "types": {}}},
        "paper": {"steps": 1, "self_reported": 1, "cart->atc": 1, "checkout->checkout": 1, "purchase->checkout": 1}}))
    page, status = build.render(build.ReportConfig(run=lay.root))
    assert status["SFT — the agent's checkpoints and validation curves"] == "ok"
    assert f"{ident['path']} (sha256 {ident['sha256']})" in page  # the SFT table and Table 4's agent line
    assert page.count(ident["sha256"]) >= 2 and "Validation loss per evaluation step" in page


def test_answer_forward_weights_only_the_deciding_token_and_only_in_training():
    """The LM head on answer positions only gives the full-logits loss: weight 1 is the plain
    assistant-token loss, weight w adds (w − 1) × the deciding token's loss (the `offset`-th answer
    token), without gradients (evaluation) it is the plain loss again; the predictions are the full
    logits' argmax at the answer positions; gradients reach the decoder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from simpersona.sft.train import answer_forward

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=11, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    ids = torch.randint(0, 11, (2, 7))
    labels = torch.tensor([[-100, -100, 3, 4, 5, 6, 7], [-100, 1, 2, 8, 9, 10, -100]])  # answers start at 2 and 1
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    logits = model(input_ids=ids).logits  # (B, L, V)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none", ignore_index=-100)
    n = (labels[:, 1:] != -100).sum()
    plain, pred = answer_forward(model, inputs, offset=2, weight=1.0)
    assert torch.allclose(plain, ce.sum() / n, atol=1e-6)
    valid = labels[:, 1:] != -100
    assert torch.equal(pred[:, :-1][valid], logits[:, :-1].argmax(-1)[valid]) and (pred[:, :-1][~valid] == -100).all()
    # deciding tokens: row 0 label index 2 + 2 = 4 (shifted 3), row 1 index 1 + 2 = 3 (shifted 2)
    heavy, _ = answer_forward(model, inputs, offset=2, weight=5.0)
    assert torch.allclose(heavy, (ce.sum() + 4 * (ce[0, 3] + ce[1, 2])) / n, atol=1e-6)
    heavy.backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(answer_forward(model, inputs, offset=2, weight=5.0)[0], plain, atol=1e-6)



def test_page_balanced_draw_gives_every_page_type_an_equal_share(base, records, tmp_path):
    import collections

    from simpersona.contracts.prompt import current_url
    from simpersona.contracts.storefront import page_type
    from simpersona.sft.train import balance_pages

    kind = lambda r: page_type(current_url(r["messages"]))  # noqa: E731
    stage2 = [r for r in records if r["stage"] == 2]
    read = collections.Counter(map(kind, stage2))
    assert len(read) >= 3 and max(read.values()) >= 3 * min(read.values())  # the draw has something to balance
    drawn = balance_pages(stage2, 7 * len(read), seed=0)
    assert collections.Counter(map(kind, drawn)) == {k: 7 for k in read}
    assert balance_pages(stage2, 20, seed=0) == balance_pages(stage2, 20, seed=0)
    # a type drawn whole keeps its records (and so its logged actions) exactly once each
    rare = min(read, key=read.get)
    again = [r for r in balance_pages(stage2, read[rare] * len(read), seed=1) if kind(r) == rare]
    assert sorted(map(id, again)) == sorted(id(r) for r in stage2 if kind(r) == rare)
    model, tok, _ = copy.deepcopy(base)
    s = train_stage("stage2", model, tok, stage2, [], hp(max_steps=2, balance=1.0), tmp_path, seed=0)
    assert s["records_drawn"] == 4 and s["train_records"] == len(stage2) and s["balance"] == 1.0


def test_a_bounded_stage_tokenises_only_the_records_its_steps_see(base, records, tmp_path):
    """max_steps × examples < records read: the stage draws that many (seeded, without replacement),
    counted once in `lengths`; the same seed trains the same way; a stage of more steps than records
    keeps them all."""
    from simpersona.contracts.records import record_lengths

    stage2 = [r for r in records if r["stage"] == 2]
    assert len(stage2) > 4
    model, tok, _ = copy.deepcopy(base)
    lengths = record_lengths(stage2, tok)
    runs = []
    for out in ("a", "b"):
        model, tok, _ = copy.deepcopy(base)
        runs.append(train_stage("stage2", model, tok, stage2, [], hp(max_steps=2), tmp_path / out, seed=0, lengths=lengths))
    assert runs[0]["records_drawn"] == 4 and runs[0]["train_records"] == len(stage2)
    assert runs[0]["train_loss"] == runs[1]["train_loss"]
    model, tok, _ = copy.deepcopy(base)
    whole = train_stage("stage2", model, tok, stage2[:3], [], hp(max_steps=2), tmp_path / "c", seed=0)
    assert whole["records_drawn"] is None and whole["train_records"] == 3
    # a length above max_length drops the record, whatever the tokenizer would count
    model, tok, _ = copy.deepcopy(base)
    longer = {**lengths, record_name(stage2[0]): 10**6}
    s = train_stage("stage2", model, tok, stage2, [], hp(max_steps=1), tmp_path / "d", seed=0, lengths=longer)
    assert s["dropped_too_long"]["train"] == 1


def test_smollm2_base_is_rebuilt_once_and_loaded_bit_for_bit(tmp_path):
    """The GGUF is read on first use and kept as a plain checkpoint named by its hash; the next load
    comes from there with the same weights, logits and tokenizer."""
    import torch

    from simpersona.sft.train import smollm2_base

    first, tok1 = smollm2_base(tmp_path)
    (cached,) = tmp_path.iterdir()
    assert cached.name.startswith("smollm2-") and (cached / "model.safetensors").is_file()
    again, tok2 = smollm2_base(tmp_path)
    a, b = first.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.lm_head.weight.data_ptr() == again.get_input_embeddings().weight.data_ptr()  # still tied
    text = '<|im_start|>user\nOpen {"action": "click"} for the café mug<|im_end|>'
    ids = tok1(text)["input_ids"]
    assert tok2(text)["input_ids"] == ids and len(tok1) == len(tok2) and tok1.eos_token == tok2.eos_token
    with torch.no_grad():
        assert torch.equal(first(torch.tensor([ids])).logits, again(torch.tensor([ids])).logits)
