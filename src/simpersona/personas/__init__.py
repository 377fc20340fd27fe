"""Personas (spec §3): assignment of buyers to codes, per-shop mixes, sampling, persona cards."""
