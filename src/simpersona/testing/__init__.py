"""Fabricated data for tests and benchmarks only (every output is marked as such); no stage imports it.

- `world.make_toy_world`: a tiny ingest + features + personas world with planted per-code behaviour.
- `features.fabricate_features`: a FEAT_DIR (403-d vectors, strata, labels) with planted buyer types.
- `traces.fabricate`: SFT traces (records with persona tokens) and persona cards.
"""
