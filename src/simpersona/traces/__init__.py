"""Agent-training traces (spec §5): goals from sessions, replay on the storefront, judge, SFT JSONL."""
