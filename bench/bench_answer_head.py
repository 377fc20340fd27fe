"""The LM head on answer positions only vs on every position (not a test).

One SFT micro-batch of real stage-2 records (a run's traces; the trained checkpoint's model and
tokenizer), forward + backward of the decision-weighted loss two ways in the same run:
- full logits: the model's (B, L, V) logits of every token, the loss on the assistant tokens (the
  path before `sft.train.answer_forward`);
- answer head: the decoder's hidden states, the LM head on the N answer positions only
  (`sft.train.answer_forward`, what training and evaluation use).
Prints the median seconds of `--reps` runs each (after one warm-up), the ratio, the two losses
(equal up to float rounding) and the machine's load average.

    .venv/bin/python bench/bench_answer_head.py --run runs/agent --records 4 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def full_logits_loss(model, inputs, offset: int, weight: float):
    """The baseline: every position's logits (B, L, V), then the same weighted cross-entropy."""
    import torch

    from simpersona.sft.train import decision_weights

    labels = inputs["labels"]
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits[:, :-1].float()  # (B, L-1, V)
    target = labels[:, 1:]  # (B, L-1)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")  # (B, L-1)
    w = decision_weights(labels, offset, weight)
    return (ce * w).sum() / (target != -100).sum().clamp(min=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a main-job run folder with traces/ and sft/stage2/")
    ap.add_argument("--records", type=int, default=4, help="records in the micro-batch")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--weight", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from simpersona.contracts.prompt import ANSWER_PREFIX
    from simpersona.sft.train import StageConfig, answer_forward, load_checkpoint, make_trainer

    torch.set_num_threads(args.threads)
    model, tok = load_checkpoint(args.run / "sft" / "stage2")
    recs = [json.loads(line) for line in (args.run / "traces" / "stage2" / "val.jsonl").open()][: args.records]
    trainer = make_trainer(model, tok, recs, recs, StageConfig(max_steps=1, batch_size=args.records, max_length=1024),
                           Path(tempfile.mkdtemp()), seed=0, bf16=False)
    inputs = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(len(recs))]))
    offset = len(tok(ANSWER_PREFIX, add_special_tokens=False)["input_ids"])
    model.train()
    tokens = int(inputs["attention_mask"].sum())
    answer = int((inputs["labels"] != -100).sum())

    def step(fn):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = fn()
        loss.backward()
        return time.perf_counter() - t0, float(loss)

    arms = {"full logits": lambda: full_logits_loss(model, inputs, offset, args.weight),
            "answer head": lambda: answer_forward(model, inputs, offset=offset, weight=args.weight)[0]}
    res = {}
    for name, fn in arms.items():
        step(fn)  # warm-up
        runs = [step(fn) for _ in range(args.reps)]
        res[name] = (statistics.median(r[0] for r in runs), runs[0][1])
    print(f"checkpoint {args.run / 'sft' / 'stage2'}; {len(recs)} stage-2 validation records of {args.run / 'traces'}: "
          f"{tokens} tokens, {answer} answer tokens; vocabulary {len(tok)}; {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    base = res["full logits"][0]
    for name, (sec, loss) in res.items():
        print(f"{name:<12} forward+backward {sec:6.2f} s (median of {args.reps})  {base / sec:5.2f}× the full logits  loss {loss:.5f}")


if __name__ == "__main__":
    main()
