"""What the agent would do, page by page: a checkpoint's next-action distribution vs the logged one (not a test).

For held-out-shop stage-2 validation records (a run's traces), grouped by the kind of page the
buyer was on (`contracts.storefront.page_type` of `contracts.prompt.current_url`), the checkpoint's mean
probability of each action name (the first token after `contracts.prompt.ANSWER_PREFIX`: the token
that decides what the agent does) beside the share of records whose logged answer is that action.
A model that puts ~1% on add_to_cart on product pages where buyers added to cart 40% of the time
will loop through search results in simulation however low its validation loss. Per page type, and
averaged over them, the total variation distance between the two (a prior-only model scores high).

    .venv/bin/python bench/bench_action_dist.py --checkpoint runs/agent5/sft/stage2 --traces runs/agent5/traces --per-page 20
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, required=True, help="an SFT stage folder (model + tokenizer)")
    ap.add_argument("--traces", type=Path, required=True, help="a traces folder: stage2/val.jsonl is read")
    ap.add_argument("--per-page", type=int, default=20, help="records per page kind (the first ones in file order)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simpersona.contracts.prompt import ANSWER_PREFIX, current_url
    from simpersona.contracts.storefront import page_type
    from simpersona.storefront.actions import FIELDS

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint).eval()
    start = len(tok(ANSWER_PREFIX, add_special_tokens=False)["input_ids"])
    first = {name: tok(ANSWER_PREFIX + name, add_special_tokens=False)["input_ids"][start] for name in FIELDS}
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for line in (args.traces / "stage2" / "val.jsonl").open():
        r = json.loads(line)
        kind = page_type(current_url(r["messages"]))
        if len(groups[kind]) < args.per_page:
            groups[kind].append(r)
    shared = collections.Counter(first.values())
    print(f"checkpoint {args.checkpoint}; stage-2 validation records of {args.traces} (held-out shops); "
          f"first action-name token's probability (names sharing a first token: {[n for n, i in first.items() if shared[i] > 1]})")
    distances = {}
    for kind, recs in sorted(groups.items()):
        model_p, logged = collections.Counter(), collections.Counter()
        for r in recs:
            text = tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX
            ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]  # (1, L)
            with torch.no_grad():
                p = model(ids).logits[0, -1].softmax(-1)  # (V,)
            for name, i in first.items():
                model_p[name] += float(p[i]) / len(recs)
            logged[json.loads(r["messages"][-1]["content"])["action"]] += 1 / len(recs)
        shown = [n for n in FIELDS if model_p[n] >= 0.005 or logged[n] > 0]
        distances[kind] = sum(abs(model_p[n] - logged[n]) for n in FIELDS) / 2
        print(f"{kind} page ({len(recs)} records): " + ", ".join(f"{n} {model_p[n]:.3f} (logged {logged[n]:.2f})" for n in shown)
              + f"; total variation {distances[kind]:.3f}")
    print(f"mean total variation distance to the logged actions over {len(distances)} page types: "
          f"{sum(distances.values()) / len(distances):.3f} (0: the logged shares; 1: disjoint)")


if __name__ == "__main__":
    main()
