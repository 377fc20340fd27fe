"""Benchmark: VQ-VAE training on ~45k generated buyers (the paper's 44,559-pair sample size),
then assignment, Table 1 against MiniBatchKMeans and population/truth recovery on held-out shops.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_vqvae_train.py --out /tmp/bench_vq

Reports the training wall time (target: < 5 min on 2 cores), steps, early stopping, final usage
and perplexity; then AMI and per-shop type-mix error on the held-out shops, and Table 1.
The data is `simpersona.testing.features` (6 planted types), not the features stage's output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from simpersona.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_vqvae"))
    ap.add_argument("--shops", type=int, default=34, help="30 training shops + 4 held out at 1,500 buyers")
    ap.add_argument("--buyers-per-shop", type=int, default=1500)
    ap.add_argument("--holdout", type=int, default=4)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="TrainConfig override, e.g. max_epochs=5")
    ap.add_argument("--skip-eval", action="store_true")
    a = ap.parse_args()

    from simpersona.evaluate import clustering, population
    from simpersona.evaluate.config import EvaluateConfig
    from simpersona.personas import assign
    from simpersona.vqvae import train
    from simpersona.testing.features import fabricate_features

    feat = a.out / "feat"
    if not (feat / "vectors.parquet").exists():
        fabricate_features(a.out, n_shops=a.shops, buyers_per_shop=a.buyers_per_shop, n_holdout=a.holdout)
    cfg = load_config(train.TrainConfig, values={"features": str(feat)}, overrides=["resume=false", *a.sets])
    t0 = time.perf_counter()
    s = train.run(cfg, a.out / "run")
    wall = time.perf_counter() - t0
    last = json.loads((a.out / "run" / "train_log.jsonl").read_text().splitlines()[-1])
    print(f"train: {s['n_train']:,} train + {s['n_val']:,} val buyers, {s['steps']} steps "
          f"(best {s['best_step']}, early stop {s['early_stopped']}), wall {wall:.1f} s "
          f"({1000 * wall / max(s['steps'], 1):.1f} ms/step); last step usage {last['usage_pct']:.1f}%, "
          f"perplexity {last['perplexity']:.1f}, live codes {last['live_pct']:.1f}%")
    if a.skip_eval:
        return
    pcfg = load_config(assign.PersonasConfig, values={"model": str(a.out / "run"), "features": str(feat)})
    ps = assign.run(pcfg, a.out / "personas")
    print(f"assign: {ps}")
    ecfg = load_config(EvaluateConfig, overrides=[
        f"clustering.model={a.out / 'run'}", f"clustering.features={feat}",
        f"population.personas={a.out / 'personas'}", f"population.features={feat}",
        f"population.truth={a.out / 'truth' / 'buyers.parquet'}", f"population.ingest={a.out / 'ingest'}"])
    print(clustering.format_table(clustering.run(ecfg.clustering, a.out / "eval_clustering")))
    print(population.format_report(population.run(ecfg.population, a.out / "eval_population")))


if __name__ == "__main__":
    main()
