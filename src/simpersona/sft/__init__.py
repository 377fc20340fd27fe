"""Agent-training traces and persona tokens: the prompt/record format, persona tokens, and the
two-stage SFT of a causal LM (spec §5–§6, App. G).

    prompt.py     THE prompt format (system prompt, user/assistant turns, chat template), shared with the agent
    records.py    SFT records (JSONL), validator, writer/reader, per-code session sampling, split by shop
    tokens.py     K persona tokens, embedding resize, mean / codebook / card init
    train.py      two-stage SFT with trl (stage 1 persona rows only, stage 2 all, single-stage ablation)
    fabricate.py  FABRICATED traces in the record format (tests, benchmarks, demo before the replay exists)
"""
