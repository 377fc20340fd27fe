"""The two arms of a simulated experiment: one persona population per shop, each buyer's episode
on arm A and on arm B of one storefront (paired), or on the arm its session id hashes to (unpaired).

Buyer i of shop s draws k ~ p̂_s(k), a stratum ~ P(stratum | k), the intent of its stratum and a goal
topic among the shop's collections (`draw_buyers`, as `simpersona simulate` draws its population).
The arm is the storefront's: both arms run on one app serving the variant, arm A's environments
ask for variant A and arm B's for variant B (signed `sp_variant` cookies, `ShopEnv`), so an
episode's session is logged with the variant it saw. Paired episodes share the buyer's id, code,
stratum, goal and — with `arm_seeds: same` — its agent's random numbers (common random numbers:
the arms differ only where the pages differ); session ids end in `-A` / `-B`.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from simpersona.contracts.goals import goal_text
from simpersona.simulate.runner import EpisodeSpec, draw_population, run_episodes
from simpersona.storefront.config import StorefrontConfig


@dataclass
class Buyer:
    """One simulated buyer of the experiment (its episodes: `episode(arm)`)."""

    shop_id: str
    # index of the shop in the experiment (ids and cookies carry it, not the shop's name)
    shop_index: int
    # index of the buyer in its shop's population
    index: int
    code: int
    stratum: str
    intent: str
    goal: str
    # agent seed on arm A, and on arm B (equal with common random numbers)
    seed_a: int
    seed_b: int
    persona: bool = True

    @property
    def buyer_id(self) -> str:
        return f"ab{self.shop_index:03d}b{self.index:06d}"

    def episode(self, arm: str) -> EpisodeSpec:
        """The buyer's episode on `arm` ("A" or "B"): session id `<buyer>-<arm>`."""
        return EpisodeSpec(shop_id=self.shop_id, buyer_id=self.buyer_id, session_id=f"{self.buyer_id}-{arm}",
                           code=self.code, stratum=self.stratum, intent=self.intent, goal=self.goal,
                           seed=self.seed_a if arm == "A" else self.seed_b, persona=self.persona, tag=arm)


def draw_buyers(mix, shops_obj: dict, shops: list[str], n: int, seed: int, same_seeds: bool = True,
                persona: bool = True) -> list[Buyer]:
    """n buyers per shop from the persona mix (`personas.assign.PersonaMix`), seeded per shop
    (`simulate.runner.draw_population`, then each buyer's agent seeds on arm A and B)."""
    out = []
    for si, shop in enumerate(shops):
        rng = np.random.default_rng([seed, si])
        pop, topics = draw_population(mix, shop, shops_obj[shop], n, rng)
        seeds = rng.integers(1 << 31, size=(n, 2))
        for i in range(n):
            out.append(Buyer(shop, si, i, int(pop.codes[i]), str(pop.strata[i]), str(pop.intents[i]),
                             goal_text(str(pop.intents[i]), topics[i]), int(seeds[i, 0]),
                             int(seeds[i, 0] if same_seeds else seeds[i, 1]), persona))
    return out


def _run_pools(app, sf: StorefrontConfig, episodes: dict[str, list[EpisodeSpec]], make_agent, concurrency: int,
               aa: bool) -> list[dict[str, Any]]:
    """Each arm's episodes on environments asking for that arm (aa: both A); records with `arm`."""
    from simpersona.storefront.env import ShopEnv
    from simpersona.storefront.transports import AsgiTransport

    records: list[dict[str, Any]] = []
    for arm in ("A", "B"):
        specs = episodes.get(arm) or []
        if not specs:
            continue
        share_b = 1.0 if arm == "B" and not aa else 0.0  # the env's variant draw: always B, or always A
        env_cfg = dataclasses.replace(sf.env, variant_share_b=share_b)
        envs = [ShopEnv(AsgiTransport(app), env_cfg) for _ in range(max(1, min(concurrency, len(specs))))]
        try:
            records += [{**rec, "arm": arm} for rec in run_episodes(specs, envs, make_agent)]
        finally:
            for e in envs:
                e.close()
    return records


def run_arms(storefront: StorefrontConfig, catalog: pa.Table | Path, episodes: dict[str, list[EpisodeSpec]],
             make_agent, log_dir: Path | None, concurrency: int = 32, aa: bool = False,
             workers: int = 1) -> tuple[list[dict], pa.Table, pa.Table, float]:
    """Run each arm's episodes ({"A": specs, "B": specs}) on a storefront serving
    `storefront.variant` (aa: both arms get variant A); (episode records with `arm`, events by
    session (`runner.session_order`), the storefront's session log, wall seconds). `workers` > 1:
    that many forked processes, each with its own app logging into log_dir/worker-K (agents that
    share no backend only: the fast policy); the same records and events as one process."""
    from simpersona.simulate.runner import run_in_workers, session_order
    from simpersona.storefront.app import create_app
    from simpersona.storefront.eventlog import read_parts

    if log_dir is not None:
        shutil.rmtree(log_dir, ignore_errors=True)
    t0 = time.perf_counter()
    if workers > 1:
        if log_dir is None:
            raise ValueError("run_arms with workers needs a log folder (each worker writes its own)")
        flat = [s for arm in ("A", "B") for s in episodes.get(arm) or []]

        def shard(part: list[EpisodeSpec], k: int) -> list[dict[str, Any]]:
            app = create_app(dataclasses.replace(storefront, events_out=Path(log_dir) / f"worker-{k}"), catalog)
            try:
                recs = _run_pools(app, storefront, {a: [s for s in part if s.tag == a] for a in ("A", "B")},
                                  make_agent, max(1, -(-concurrency // workers)), aa)
            finally:
                app.state.store.log.close()
            at = {r["session_id"]: r for r in recs}
            return [at[s.session_id] for s in part]

        records = run_in_workers(flat, min(workers, len(flat)), shard)
        wall = time.perf_counter() - t0
        parts = [Path(log_dir) / f"worker-{k}" for k in range(min(workers, len(flat)))]
        events = pa.concat_tables([read_parts(d) for d in parts])
        sessions = pa.concat_tables([read_parts(d, "sessions") for d in parts])
        return records, session_order(events), sessions, wall
    app = create_app(dataclasses.replace(storefront, events_out=log_dir), catalog)
    records = _run_pools(app, storefront, episodes, make_agent, concurrency, aa)
    wall = time.perf_counter() - t0
    log = app.state.store.log
    return records, session_order(log.events()), log.sessions(), wall
