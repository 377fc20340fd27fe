"""Does weighting the deciding token teach the agent its decisions? (not a test)

Continues a trained SFT stage-2 checkpoint for the same steps on the same records, once with the
plain assistant-token loss (`sft.stage2.decision_loss_weight` 1) and once with each answer's deciding
token (its action name) weighted `--weight`, and prints for each the validation loss and action
accuracy (the action as the model's top choice; `sft.train.action_accuracy`) on the same held-out
records, beside the majority-action baseline and the checkpoint it started from.

    .venv/bin/python bench/bench_decision_loss.py --run RUN --steps 8 --weight 20 --val 48
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a main-job run folder with traces/ and sft/stage2/")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per arm")
    ap.add_argument("--weight", type=float, default=20.0, help="the deciding token's weight in the weighted arm")
    ap.add_argument("--val", type=int, default=48, help="validation records (held-out shops), the same for every row")
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from simpersona.sft.train import StageConfig, evaluate_records, load_checkpoint, majority_share, train_stage

    read = lambda f: [json.loads(line) for line in open(f)]  # noqa: E731
    train = read(args.run / "traces/stage2/train.jsonl")
    val = random.Random(0).sample(read(args.run / "traces/stage2/val.jsonl"), args.val)
    ckpt = args.run / "sft/stage2"
    print(f"load average {os.getloadavg()[0]:.1f}; checkpoint {ckpt}; {len(train)} training records, {len(val)} validation "
          f"records; majority action share {majority_share(val):.3f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_decision_"))
    base = dict(learning_rate=args.lr, weight_decay=0.01, max_steps=args.steps, batch_size=2, grad_accum=4, warmup_steps=0,
                lr_scheduler="constant", max_length=1024, bf16=True, sampling="group_by_length", logging_steps=args.steps,
                eval_batch_size=8)
    model, tok = load_checkpoint(ckpt)
    ev = evaluate_records(model, tok, val, StageConfig(**base), tmp / "start", seed=0)
    print(f"{'start':<22} val loss {ev['eval_loss']:.4f}  action accuracy {ev['eval_action_accuracy']:.3f}", flush=True)
    for w in (1.0, args.weight):
        model, tok = load_checkpoint(ckpt)
        t = time.perf_counter()
        s = train_stage("2", model, tok, train, val, StageConfig(**base, decision_loss_weight=w), tmp / f"w{w}", seed=0)
        label = f"+{s['steps']} steps, weight {w:g}"
        print(f"{label:<22} val loss "
              f"{s['val_loss_after']:.4f}  action accuracy {s['val_action_accuracy_after']:.3f}  "
              f"({time.perf_counter() - t:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
