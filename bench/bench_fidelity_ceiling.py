"""How much can ANY persona code add to next-event prediction on this data? (not a test, not a speed bench)

Reads a `simpersona evaluate fidelity` output folder made with `codes: history` (its history_codes.parquet
and scored_sessions.parquet: the same buyers, intents and scored sessions as the report) and, when given,
one made with `codes: truth` (the oracle: truth_codes.parquet), and prints for the evaluation shops'
scored sessions:

1. in-sample ceilings: the accuracy of the best next event per (condition, page type) cell fitted ON THE
   SCORED STEPS THEMSELVES (an upper bound for any page-type policy with that condition), for the intent
   only, history code + intent, the same codes permuted across buyers within each intent (same code
   sizes, no information: the overfitting floor of that many cells), and the true type + intent;
2. out of sample, the policy fitted on the training shops (as the report): persona − no persona type
   accuracy with a paired bootstrap CI, for the back-off strengths of `--strengths`;
3. leave-shops-out on the TRAINING shops only (`--folds` folds): the same difference per strength,
   step-weighted over folds (how a strength would be chosen without the evaluation shops).

    .venv/bin/python bench/bench_fidelity_ceiling.py --run RUN --fidelity OUT_HISTORY [--oracle OUT_TRUTH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True, help="a main-job run folder (ingest/, features/, split/)")
    ap.add_argument("--fidelity", type=Path, required=True, help="an evaluate fidelity output folder made with codes: history")
    ap.add_argument("--oracle", type=Path, default=None, help="one made with codes: truth (truth_codes.parquet)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[5.0, 20.0, 50.0, 200.0])
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--permutations", type=int, default=5)
    ap.add_argument("--n-boot", type=int, default=200)
    args = ap.parse_args()

    import duckdb

    from simpersona.agents.policy import EVENTS, STATES, PolicyModel, fit_intent_counts
    from simpersona.contracts.labels import BUY_STRATA
    from simpersona.evaluate import fidelity as F

    run, out = args.run, args.fidelity
    events, buyers, h = run / "ingest/events.parquet", run / "features/buyers.parquet", out / "history_codes.parquet"
    split = json.loads((run / "split/shops.json").read_text())
    train, evals = list(split["train"]), list(split["eval"])
    labels = F.BuyerLabels(f"SELECT b.shop_id, b.buyer_id, h.code, coalesce(h.stratum, 'none') AS stratum, h.stratum AS intent_stratum "
                           f"FROM read_parquet('{buyers}') b LEFT JOIN read_parquet('{h}') h USING (shop_id, buyer_id)",
                           f"SELECT shop_id, buyer_id, session_id FROM read_parquet('{out / 'scored_sessions.parquet'}')", {})
    fit_labels = (f"SELECT shop_id, buyer_id, code, CASE WHEN intent_stratum IN {tuple(BUY_STRATA)} THEN 'buy' ELSE 'browse' END "
                  f"AS intent FROM ({labels.sql})")
    stats = F.train_stats(events, labels, train, 1)
    real = F.load_sessions(events, labels.sql, evals, "stratum", 0, 0, 1, labels.sessions)
    st = F.steps_of(real)
    print(f"evaluation shops {evals}: {len(real):,} scored sessions, {len(st['true']):,} steps, "
          f"{int((real.code < 0).sum()):,} sessions without a history")

    def insample(cond: np.ndarray) -> tuple[float, int]:
        _, ki = np.unique(cond[st["sess"]], return_inverse=True)
        c = np.zeros((ki.max() + 1, len(STATES), len(EVENTS)))
        np.add.at(c, (ki, st["state"], st["true"]), 1)
        return float(c.max(-1).sum() / len(st["true"])), int(ki.max() + 1)

    print("\n1. in-sample ceiling (best next event per cell, fitted on the scored steps themselves)")
    base, n = insample(real.intent.astype(object))
    print(f"   intent only                         {base:.4f}  ({n} conditions)")
    code, n = insample(np.array([f"{c}/{i}" for c, i in zip(real.code, real.intent)]))
    print(f"   history code + intent               {code:.4f}  ({n} conditions)  gain {code - base:+.4f}")
    rng = np.random.default_rng(0)
    first = {}
    for i, key in enumerate(zip(real.shop, real.buyer)):
        first.setdefault(key, i)
    keys = list(first)
    gains = []
    for _ in range(args.permutations):
        perm = {}
        for it in sorted(set(real.intent)):
            ks = [k for k in keys if real.intent[first[k]] == it]
            cs = rng.permutation([real.code[first[k]] for k in ks])
            perm.update(zip(ks, cs))
        pc = np.array([perm[k] for k in zip(real.shop, real.buyer)])
        gains.append(insample(np.array([f"{c}/{i}" for c, i in zip(pc, real.intent)]))[0] - base)
    print(f"   permuted codes + intent (no info)   gain {np.mean(gains):+.4f} (mean of {args.permutations} permutations)")
    if args.oracle is not None:
        t = dict(((s, b), c) for s, b, c in duckdb.sql(
            f"SELECT shop_id, buyer_id, code FROM read_parquet('{args.oracle / 'truth_codes.parquet'}')").fetchall())
        ty = np.array([t.get((s, b), -1) if c >= 0 else -1 for s, b, c in zip(real.shop, real.buyer, real.code)])
        tru, n = insample(np.array([f"{c}/{i}" for c, i in zip(ty, real.intent)]))
        print(f"   TRUE type + intent (oracle)         {tru:.4f}  ({n} conditions)  gain {tru - base:+.4f}")

    cfg = F.FidelityConfig(n_boot=args.n_boot)
    codes, counts = fit_intent_counts(events, None, 1, shops=train, labels_sql=fit_labels, sessions_sql=labels.sessions)
    print("\n2. policy fitted on the training shops, scored on the evaluation shops: persona − no persona type accuracy")
    for m in args.strengths:
        d = F.next_action(PolicyModel(codes, counts, m, 0.1), real, stats, cfg)["persona_minus"]["no_persona"]["type_accuracy"]
        print(f"   strength {m:6g}: {d['diff']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]")

    print(f"\n3. leave-shops-out on the training shops only ({args.folds} folds): persona − no persona type accuracy")
    cfg.n_boot = 10
    res: dict[float, list[tuple[float, int]]] = {m: [] for m in args.strengths}
    for f in range(args.folds):
        held = train[f::args.folds]
        fit = [s for s in train if s not in held]
        c, n_ = fit_intent_counts(events, None, 1, shops=fit, labels_sql=fit_labels, sessions_sql=labels.sessions)
        rs = F.load_sessions(events, labels.sql, held, "stratum", 0, 0, 1, labels.sessions)
        for m in args.strengths:
            r = F.next_action(PolicyModel(c, n_, m, 0.1), rs, stats, cfg)
            res[m].append((r["persona_minus"]["no_persona"]["type_accuracy"]["diff"], r["steps"]))
    for m, v in res.items():
        d = np.array(v)
        print(f"   strength {m:6g}: folds {np.round(d[:, 0], 4).tolist()}  step-weighted {np.average(d[:, 0], weights=d[:, 1]):+.4f}")


if __name__ == "__main__":
    main()
