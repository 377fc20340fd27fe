"""Variant-aware generation: how the generator's buyer types respond to an A/B variant (its
declared true effects), and "real" A/B logs of both arms with the true lift per metric.

Declared effects (each type's response fields, `buyers.BuyerType`; arm A is the plain generator):

    extra_checkout_step         p_purchase × checkout_step_keep (low-intent types drop out: 0.5–0.6)
    free_shipping_banner        w_checkout × banner_lift, p_purchase × banner_lift (≤ 0.98); price-
                                sensitive types most (bargain hunter 1.35, cart abandoner 1.5)
    price_collection × factor   those products' prices × factor; carting them × factor^(−price_elasticity)
    page_size (B vs A's)        w_product × (B/A)^page_size_elasticity (explorers: window shopper 0.4,
                                researcher 0.35)
    sort_order, search_ranking  price_asc: buyers pick cheaper products (price_sensitivity + 0.5 each)
                                and cart more (w_cart × cheap_first_cart); price_desc: the opposite;
                                title: no effect
    home_order                  price_asc / price_desc: price_sensitivity ± 0.25; else no effect

`ab_log` writes one world's experiments: buyers split between the arms by a hash of their id
(`share_b`), arm A's sessions generated once (the control log, the same for every experiment of
the world), arm B's per experiment; and the true lift per metric from the same world with
`truth_factor` times the buyers, each simulated on both arms (see `true_effects`).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simpersona.contracts.experiment import VariantConfig
from simpersona.synth.buyers import BuyerType

# price_sensitivity shift of a listing ordered cheapest first (sort_order, search_ranking), and of the home page.
SORT_SHIFT = 0.5
HOME_SHIFT = 0.25


def _direction(order: str) -> int:
    return {"price_asc": 1, "price_desc": -1}.get(order, 0)


def arm_types(types: list[BuyerType], v: VariantConfig, page_size_a: int) -> list[BuyerType]:
    """The buyer types of arm B under variant `v` (arm A: `types` themselves).

    >>> t = arm_types([BuyerType(p_purchase=0.6, checkout_step_keep=0.5)], VariantConfig(extra_checkout_step=True), 12)
    >>> t[0].p_purchase
    0.3
    """
    out = []
    for t in types:
        c = dataclasses.replace(t)
        if v.extra_checkout_step:
            c.p_purchase *= t.checkout_step_keep
        if v.free_shipping_banner:
            c.w_checkout *= t.banner_lift
            c.p_purchase = min(c.p_purchase * t.banner_lift, 0.98)
        if v.page_size > 0 and v.page_size != page_size_a:
            c.w_product *= (v.page_size / page_size_a) ** t.page_size_elasticity
        for order in (v.sort_order, v.search_ranking):
            d = _direction(order)
            c.price_sensitivity += d * SORT_SHIFT
            c.w_cart *= t.cheap_first_cart ** d
        c.price_sensitivity += _direction(v.home_order) * HOME_SHIFT
        out.append(c)
    return out


def price_factors(categories: list[str], cat_start: np.ndarray, v: VariantConfig) -> np.ndarray | None:
    """Per product of a shop (products grouped by category, `cat_start`): arm B's price factor, or
    None when B changes no price in this shop."""
    if not v.price_collection or v.price_factor == 1.0:
        return None
    path = v.price_collection.strip("/")
    f = np.ones(int(cat_start[-1]))
    hit = False
    for k, c in enumerate(categories):
        if c == path or c.startswith(path + "/"):
            f[cat_start[k] : cat_start[k + 1]] = v.price_factor
            hit = True
    return f if hit else None


def arm_of(buyer_ids: pa.Array | list[str], name: str, share_b: float) -> np.ndarray:
    """True where a buyer is in arm B: a hash of (experiment world, buyer id) below share_b."""
    ids = buyer_ids.to_pylist() if isinstance(buyer_ids, pa.Array) else list(buyer_ids)
    h = np.array([int.from_bytes(hashlib.sha256(f"{name}:{b}".encode()).digest()[:8], "big") for b in ids], dtype=np.float64)
    return h / 2**64 < share_b


def select_buyers(events: pa.Table, keep: set[str]) -> pa.Table:
    """The rows of `events` whose buyer_id is in `keep`."""
    return events.filter(pc.is_in(events.column("buyer_id"), value_set=pa.array(sorted(keep), pa.string())))


def world_events(cfg, types: list[BuyerType], v: VariantConfig | None, page_size_a: int,
                 shops: set[str] | None = None) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(events, truth: shop_id/buyer_id/type, catalog) of the world `cfg` (a SynthConfig) with every
    buyer on arm A (`v` None) or on arm B of `v`; only `shops` when given. The same config gives the
    same buyers, session times and start categories on both arms (only behaviour and prices differ)."""
    import datetime as dt

    from simpersona.synth.buyers import type_table
    from simpersona.synth.generate import _chunk, _plan_shops

    cfg = dataclasses.replace(cfg, file_format="parquet", types=list(types))
    P = type_table(arm_types(cfg.types, v, page_size_a) if v is not None else cfg.types)
    id_width = max(6, len(str(cfg.buyers - 1)))
    t0_ms = int(dt.datetime.fromisoformat(cfg.start_date).replace(tzinfo=dt.timezone.utc).timestamp() * 1000)
    events, truth, catalogs = [], [], []
    for shop in _plan_shops(cfg):
        if shops is not None and shop.shop_id not in shops:
            continue
        catalogs.append(shop.catalog.table)
        pf = price_factors(shop.catalog.categories, shop.catalog.cat_start, v) if v is not None else None
        for c in range(len(shop.chunk_seeds)):
            ev, tr, _, _ = _chunk(cfg, P, shop, c, id_width, t0_ms, pf)
            events.append(ev)
            truth.append(tr)
    return pa.concat_tables(events), pa.concat_tables(truth), pa.concat_tables(catalogs)


def true_effects(cfg, types: list[BuyerType], v: VariantConfig, page_size_a: int, shops: set[str],
                 truth_factor: int) -> dict[str, dict[str, float]]:
    """The true effect of `v` per metric on `shops`: the world with truth_factor × the buyers, every
    buyer simulated on A and on B; per arm the mean over buyers of their sessions' mean (the
    simulated experiment's unit: one buyer). {metric: {a, b, diff, lift}}."""
    from simpersona.contracts.experiment import METRICS, buyer_means, session_metrics

    big = dataclasses.replace(cfg, buyers=cfg.buyers * truth_factor)
    means = {}
    for arm, variant in (("a", None), ("b", v)):
        ev, _, _ = world_events(big, types, variant, page_size_a, shops)
        means[arm] = buyer_means(session_metrics(ev))[1].mean(0)
    out = {}
    for j, m in enumerate(METRICS):
        a, b = float(means["a"][j]), float(means["b"][j])
        out[m] = {"a": a, "b": b, "diff": b - a, "lift": (b / a - 1) if a else float("nan")}
    return out
