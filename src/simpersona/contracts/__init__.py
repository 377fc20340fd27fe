"""The contracts layer: facts every stage shares, defined once, below all stages.

Each module holds one kind of fact (no re-exports here): `persona` (the persona id and its
`<|persona_k|>` token), `labels` (event order, strata, aux heads and levels), `storefront` (the
storefront's element ids, URL grammar, page types, checkout fields, episode outcomes), `goals`
(the goal sentences, written and parsed), `prompt` (the agent prompt for SFT and inference),
`records` (the SFT record and TRACES_DIR files, the token-budget check), `split` (the run's
train/evaluation shop split and its guard, the session sampler). Stages import these modules and
never each other's internals.
"""
