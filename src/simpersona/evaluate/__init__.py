"""Evaluations. `metrics.py` (small pure functions), `clustering.py` (Table 1 vs k-means),
`population.py` (App. B population recovery and, on generated data, truth recovery)."""
