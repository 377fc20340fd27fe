"""Persona tokens and the two-stage SFT of a causal LM (spec §6, App. G), on the traces' records
(the prompt and record format are `contracts.prompt` and `contracts.records`).

    tokens.py     K persona tokens, embedding resize, mean / codebook / card init
    train.py      two-stage SFT with trl (stage 1 persona rows only, stage 2 all, single-stage ablation)
    fabricate.py  FABRICATED traces in the record format (tests, benchmarks, demo before the replay exists)
"""
