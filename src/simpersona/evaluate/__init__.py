"""Evaluations: they read stage outputs and never run a simulation. `metrics.py` and `stats.py`
(small pure functions), `clustering.py` (Table 1 vs k-means), `population.py` (App. B population
recovery and, on generated data, truth recovery), `alignment.py`, `separation.py`, `fidelity.py`
(the population simulation), `instructions.py` and `ablations.py` (`simulate`'s scenario runs)."""
