"""Benchmark of simulated A/B tests (not a test): the wall time of a 2-arm × N-buyer experiment with
the fast persona policy against one arm of the same N buyers (the baseline, same run), and the
A/A false-positive rate over many A/A experiments.

    .venv/bin/python bench/bench_abtest.py                              # fabricated toy world
    .venv/bin/python bench/bench_abtest.py --run runs/demo              # a main-job run (its ingest, personas, split)
    .venv/bin/python bench/bench_abtest.py --buyers 2000 --aa-runs 200 --aa-buyers 40

Parts:
  1. baseline: one arm (variant A) of N simulated buyers on the in-process storefront (episodes only);
  2. the experiment: `abtest.stage.run`, N buyers paired on both arms of a structural variant
     (page size 24, cheapest first), analysis with 2,000 bootstrap resamples per metric — wall
     time and its ratio to the baseline;
  3. A/A: R experiments of n buyers per arm, both arms served A with independent agent draws
     (paired design), simulated in one pass and analysed run by run: the share of (run, metric)
     tests with p < 0.05 (analytic; and the bootstrap interval excluding 0), per metric and
     pooled with a binomial 95% interval; the family-wise rate after Holm across the 6 metrics.
Every line names the agent, its checkpoint (the fitted policy.npz) and the data.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its finished children (the worker processes)."""
    import resource

    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=None, help="main-job run folder (ingest/, personas/, split/); default: a fabricated toy world")
    ap.add_argument("--buyers", type=int, default=2000, help="buyers of the timed experiment (over its shops; both arms)")
    ap.add_argument("--aa-runs", type=int, default=200, help="A/A experiments (0: none)")
    ap.add_argument("--aa-buyers", type=int, default=40, help="buyers per arm of each A/A experiment")
    ap.add_argument("--skip-timing", action="store_true", help="only the A/A part")
    args = ap.parse_args()

    from scipy import stats

    from simpersona.abtest.arms import draw_buyers, run_arms
    from simpersona.abtest.stage import AbtestConfig, analyse, data_note, make_agent, run
    from simpersona.abtest.stats import holm
    from simpersona.contracts.experiment import METRICS, VariantConfig, metric_matrix, session_metrics
    from simpersona.contracts.split import load_split
    from simpersona.personas.assign import PersonaMix
    from simpersona.simulate.runner import worker_count
    from simpersona.storefront.catalog import load_catalog

    tmp = Path(tempfile.mkdtemp(prefix="bench_abtest_"))
    if args.run is not None:
        ingest, personas, split = args.run / "ingest", args.run / "personas", args.run / "split"
        split = split if (split / "shops.json").exists() else None
        note = data_note(ingest)
    else:
        from simpersona.testing.world import make_toy_world

        w = make_toy_world(tmp / "toy", shops=2, codes=8, buyers=300)
        ingest, personas, split, note = w["ingest"], w["personas"], None, "FABRICATED toy world (simpersona.testing.world; not real)"
    mix = PersonaMix(personas)
    shops_obj = load_catalog(ingest / "catalog.parquet")
    sp = load_split(split)
    shops = [s for s in mix.mix if s in shops_obj and (sp is None or s in sp.eval)]
    base = AbtestConfig(ingest=ingest, personas=personas, split=split, shops=shops, data_note=note)
    make, _, agent = make_agent(base, tmp, max(int(c) for s in shops for c in mix.mix[s][0]))
    base = dataclasses.replace(base, policy=dataclasses.replace(base.policy, model=tmp / "policy.npz"))  # the fit above, reused
    who = f"agent: {agent['text']}; data: {note}"
    workers = worker_count(0)
    print(who)
    print(f"shops {shops}; {os.cpu_count()} CPU cores, {workers} worker process(es); load average at start "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))

    if not args.skip_timing:
        per_shop = max(1, args.buyers // len(shops))
        buyers = draw_buyers(mix, shops_obj, shops, per_shop, seed=0)
        t, c = time.perf_counter(), cpu_seconds()
        run_arms(base.storefront, ingest / "catalog.parquet", {"A": [u.episode("A") for u in buyers]}, make, tmp / "one",
                 base.concurrency, workers=workers)
        one, one_cpu = time.perf_counter() - t, cpu_seconds() - c
        print(f"[1] baseline: one arm of {len(buyers):,} buyers (episodes only, {workers} worker process(es)): {one:.1f} s = "
              f"{len(buyers) / one:.1f} sessions/s; {one_cpu:.1f} CPU s")
        v = VariantConfig(name="bench", page_size=24, sort_order="price_asc")
        t, c = time.perf_counter(), cpu_seconds()
        s = run(dataclasses.replace(base, variant=v, buyers=per_shop, bootstrap=2000), tmp / "exp", echo=lambda _: None)
        exp, exp_cpu = time.perf_counter() - t, cpu_seconds() - c
        print("    load average now " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        print(f"[2] experiment, 2 arms × {s['n_a']:,} buyers paired (page size 24 + cheapest first; analysis with 2,000 "
              f"bootstrap resamples × 6 metrics, strata, personas, power): {exp:.1f} s = {exp / one:.2f} × the one-arm baseline "
              f"(target ≤ 60 s on 2 cores); {s['sessions_per_s']} sessions/s in the episodes; {exp_cpu:.1f} CPU s "
              f"(= {exp_cpu / 2:.1f} s of 2 unshared cores if both stay busy)")

    # 3. A/A experiments, simulated in one pass
    r, n = args.aa_runs, args.aa_buyers
    if r < 1:
        return
    per_shop = -(-r * n // len(shops))
    buyers = draw_buyers(mix, shops_obj, shops, per_shop, seed=1, same_seeds=False)[: r * n]
    aa = VariantConfig(name="aa")
    t = time.perf_counter()
    episodes = {arm: [u.episode(arm) for u in buyers] for arm in ("A", "B")}
    _, events, variants, _ = run_arms(dataclasses.replace(base.storefront, variant=aa), ingest / "catalog.parquet", episodes, make,
                                      tmp / "aa", base.concurrency, aa=True, workers=workers)
    sim = time.perf_counter() - t
    assert set(variants.column("variant").to_pylist()) == {"A"}
    table = session_metrics(events)
    va = metric_matrix(table, [(s.shop_id, s.buyer_id, s.session_id) for s in episodes["A"]])
    vb = metric_matrix(table, [(s.shop_id, s.buyer_id, s.session_id) for s in episodes["B"]])
    run_of = np.arange(len(buyers)) % r  # each run draws buyers from every shop
    rng = np.random.default_rng(2)
    p = np.full((r, len(METRICS)), np.nan)
    p_unpaired = np.full((r, len(METRICS)), np.nan)
    boot_excl = np.zeros((r, len(METRICS)), bool)
    t = time.perf_counter()
    for k in range(r):
        m = run_of == k
        effs = analyse(va[m], vb[m], paired=True, n_boot=500, rng=rng, correction="none")
        p[k] = [e.p_value for e in effs]
        boot_excl[k] = [not (e.diff_boot_lo <= 0 <= e.diff_boot_hi) for e in effs]
        p_unpaired[k] = [e.p_value for e in analyse(va[m], vb[m], paired=False, n_boot=0, correction="none")]
    ana = time.perf_counter() - t

    def rate(rej: np.ndarray, defined: np.ndarray | None = None) -> str:
        """Rejection rate with its Clopper–Pearson 95% interval over the tests that were defined (a
        metric constant on both arms of a run, e.g. no purchase at all, has no test: counted apart)."""
        defined = np.ones(rej.shape, bool) if defined is None else defined
        x, tot = int(rej[defined].sum()), int(defined.sum())
        ci = stats.binomtest(x, tot).proportion_ci(0.95)
        return f"{x / tot:.1%} [{ci.low:.1%}, {ci.high:.1%}] of {tot}" + (f" ({rej.size - tot} undefined)" if tot < rej.size else "")

    print(f"[3] A/A: {r} experiments × {n} buyers per arm (paired, independent agent draws), {2 * r * n:,} episodes in {sim:.0f} s, "
          f"analysis {ana:.0f} s — {who}")
    print(f"    p < 0.05 (paired t), pooled over metrics: {rate(p < 0.05, ~np.isnan(p))}  (target 5% ± 2 pp)")
    print(f"    bootstrap 95% interval excludes 0:      {rate(boot_excl, ~np.isnan(p))}")
    print(f"    p < 0.05 (Welch, unpaired analysis):    {rate(p_unpaired < 0.05, ~np.isnan(p_unpaired))}")
    print(f"    family-wise, Holm across {len(METRICS)} metrics:  {rate(np.array([(holm(row) < 0.05).any() for row in p]))}")
    print("    per metric (paired t): " + "  ".join(f"{mname} {np.mean(p[~np.isnan(p[:, j]), j] < 0.05):.1%} of {int((~np.isnan(p[:, j])).sum())}"
                                                for j, mname in enumerate(METRICS)))
    print("load average at the end " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
