"""Population simulation: persona codes k ~ p̂_s(k), intents from the drawn strata, episodes run
concurrently on the storefront; the storefront's canonical event log is the output.

`stage.run(SimulateConfig, run_dir)` (CLI `simpersona simulate`), `runner.run_episodes` (the
lock-step episode loop, any agents), `logs.session_stats` (simulated sessions through the
features aggregation), and the evaluations' scenarios: `instructions.run` (Table 4's tasks) and
`ablations.run` (Tables 7–9's conditions); `evaluate` only reads what they write. Nothing is
built at import time.
"""
