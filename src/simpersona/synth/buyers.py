"""Latent buyer types and the vectorised session simulator.

A session is a Markov chain over event types, run in lockstep for all sessions of a chunk
(one numpy step per event position). It starts with a landing `page_view`; at each step the
buyer picks exit / page_view / collection_view / search / product_view / add_to_cart /
remove_from_cart / checkout_start with weights from its type, masked by what is possible:
add_to_cart only right after a product view, remove and checkout only with a non-empty cart.
After `checkout_start` the buyer purchases the whole cart (one `purchase` row per item, then the
session ends) with the type's `p_purchase`, else abandons (mostly leaves, sometimes browses on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simpersona.events.schema import EVENT_TYPES

PAGE, COLLECTION, SEARCH, PRODUCT, CART, REMOVE, CHECKOUT, PURCHASE = (
    EVENT_TYPES.index(t)
    for t in ("page_view", "collection_view", "search", "product_view", "add_to_cart", "remove_from_cart", "checkout_start", "purchase")
)
EXIT = -1
# Dwell multiplier by event type (time spent before this event, relative to the type's median).
DWELL_MULT = np.array([1.0, 0.9, 0.7, 1.6, 0.8, 0.6, 1.2, 2.0])  # indexed by EVENT_TYPES
DWELL_SIGMA = 0.8  # log-normal sigma of within-session gaps


@dataclass
class BuyerType:
    """One latent buyer type: funnel propensities, engagement, tastes."""

    # the type's name, e.g. "bargain hunter"
    name: str = "buyer"
    # base share of this type in the buyer population (shop mixes scatter around it)
    share: float = 0.125
    # mean sessions per buyer (1 + Poisson(mean - 1))
    sessions_mean: float = 2.0
    # mean span in days over which a buyer's sessions spread (exponential)
    active_days: float = 5.0
    # probability that a session ends right after the landing page
    p_bounce: float = 0.2
    # per-step weight of leaving while browsing
    w_exit: float = 0.2
    # per-step weight of another content page view
    w_page: float = 0.05
    # per-step weight of a collection view
    w_collection: float = 0.2
    # per-step weight of a search
    w_search: float = 0.2
    # per-step weight of a product view
    w_product: float = 0.6
    # weight of add_to_cart right after a product view
    w_cart: float = 0.1
    # weight of remove_from_cart while the cart is non-empty
    w_remove: float = 0.03
    # weight of checkout_start while the cart is non-empty
    w_checkout: float = 0.2
    # probability of completing the purchase after checkout_start
    p_purchase: float = 0.6
    # median seconds between two events of a session
    dwell_median_s: float = 20.0
    # price sensitivity: > 0 favours cheap products, < 0 expensive ones, 0 indifferent
    price_sensitivity: float = 0.0
    # probability that a session stays in the buyer's favourite category
    category_focus: float = 0.6
    # probability that a search or collection view moves to another category
    p_switch: float = 0.15
    # mean extra units per add_to_cart (quantity = 1 + Poisson(mean))
    extra_quantity: float = 0.15
    # -- responses to an A/B variant's changes (the generator's declared true effects; `synth.variants`)
    # p_purchase multiplier when arm B adds a checkout step (1: unaffected)
    checkout_step_keep: float = 1.0
    # w_checkout and p_purchase multiplier under a free-shipping banner
    banner_lift: float = 1.0
    # price elasticity of carting: w_cart × factor^(−e) on a product whose price arm B multiplies by factor
    price_elasticity: float = 0.0
    # page-size elasticity of browsing: w_product × (B's page size / A's)^e
    page_size_elasticity: float = 0.0
    # w_cart multiplier when arm B lists the cheapest products first (divided by it when the dearest come first)
    cheap_first_cart: float = 1.0


def default_types() -> list[BuyerType]:
    """Eight types whose funnels land buyers in all strata A (purchasers) … E (bouncers)."""
    T = BuyerType
    return [
        T(
            name="decisive buyer", share=0.1, sessions_mean=1.6, active_days=3.0, p_bounce=0.05,
            w_exit=0.15, w_page=0.02, w_collection=0.1, w_search=0.15, w_product=0.75, w_cart=0.9, w_remove=0.02, w_checkout=0.55, p_purchase=0.85, dwell_median_s=15.0,
            price_sensitivity=0.0, category_focus=0.85, p_switch=0.05, extra_quantity=0.2,
            checkout_step_keep=0.97, banner_lift=1.03, price_elasticity=0.3, page_size_elasticity=0.0, cheap_first_cart=1.0,
        ),
        T(
            name="bargain hunter", share=0.13, sessions_mean=3.5, active_days=10.0, p_bounce=0.1,
            w_exit=0.15, w_page=0.03, w_collection=0.25, w_search=0.45, w_product=0.6, w_cart=0.12, w_remove=0.06, w_checkout=0.25, p_purchase=0.55, dwell_median_s=18.0,
            price_sensitivity=2.0, category_focus=0.6, p_switch=0.25, extra_quantity=0.3,
            checkout_step_keep=0.85, banner_lift=1.35, price_elasticity=2.0, page_size_elasticity=0.15, cheap_first_cart=1.35,
        ),
        T(
            name="window shopper", share=0.2, sessions_mean=2.5, active_days=12.0, p_bounce=0.15,
            w_exit=0.18, w_page=0.08, w_collection=0.45, w_search=0.15, w_product=0.6, w_cart=0.004, w_remove=0.05, w_checkout=0.05, p_purchase=0.1, dwell_median_s=25.0,
            price_sensitivity=0.3, category_focus=0.4, p_switch=0.35, extra_quantity=0.0,
            checkout_step_keep=0.6, banner_lift=1.1, price_elasticity=0.6, page_size_elasticity=0.4, cheap_first_cart=1.05,
        ),
        T(
            name="cart abandoner", share=0.12, sessions_mean=2.2, active_days=7.0, p_bounce=0.08,
            w_exit=0.2, w_page=0.03, w_collection=0.2, w_search=0.2, w_product=0.6, w_cart=0.35, w_remove=0.12, w_checkout=0.18, p_purchase=0.04, dwell_median_s=20.0,
            price_sensitivity=0.5, category_focus=0.6, p_switch=0.15, extra_quantity=0.2,
            checkout_step_keep=0.5, banner_lift=1.5, price_elasticity=1.2, page_size_elasticity=0.1, cheap_first_cart=1.1,
        ),
        T(
            name="researcher", share=0.11, sessions_mean=4.0, active_days=14.0, p_bounce=0.05,
            w_exit=0.1, w_page=0.05, w_collection=0.2, w_search=0.55, w_product=0.8, w_cart=0.04, w_remove=0.08, w_checkout=0.25, p_purchase=0.4, dwell_median_s=45.0,
            price_sensitivity=0.8, category_focus=0.8, p_switch=0.1, extra_quantity=0.05,
            checkout_step_keep=0.9, banner_lift=1.1, price_elasticity=0.8, page_size_elasticity=0.35, cheap_first_cart=1.15,
        ),
        T(
            name="bouncer", share=0.18, sessions_mean=1.2, active_days=2.0, p_bounce=0.85,
            w_exit=0.8, w_page=0.1, w_collection=0.1, w_search=0.05, w_product=0.2, w_cart=0.01, w_remove=0.01, w_checkout=0.1, p_purchase=0.2, dwell_median_s=8.0,
            price_sensitivity=0.0, category_focus=0.3, p_switch=0.3, extra_quantity=0.0,
            checkout_step_keep=0.5, banner_lift=1.0, price_elasticity=0.0, page_size_elasticity=0.0, cheap_first_cart=1.0,
        ),
        T(
            name="loyal regular", share=0.08, sessions_mean=6.0, active_days=25.0, p_bounce=0.1,
            w_exit=0.22, w_page=0.03, w_collection=0.15, w_search=0.2, w_product=0.6, w_cart=0.2, w_remove=0.04, w_checkout=0.4, p_purchase=0.75, dwell_median_s=14.0,
            price_sensitivity=0.0, category_focus=0.9, p_switch=0.05, extra_quantity=0.5,
            checkout_step_keep=0.98, banner_lift=1.05, price_elasticity=0.2, page_size_elasticity=0.05, cheap_first_cart=1.0,
        ),
        T(
            name="impulse buyer", share=0.08, sessions_mean=1.5, active_days=2.0, p_bounce=0.1,
            w_exit=0.2, w_page=0.02, w_collection=0.15, w_search=0.05, w_product=0.6, w_cart=0.8, w_remove=0.03, w_checkout=0.6, p_purchase=0.8, dwell_median_s=8.0,
            price_sensitivity=-1.0, category_focus=0.5, p_switch=0.3, extra_quantity=0.4,
            checkout_step_keep=0.8, banner_lift=1.2, price_elasticity=-0.2, page_size_elasticity=0.1, cheap_first_cart=0.9,
        ),
    ]


def type_table(types: list[BuyerType]) -> dict[str, np.ndarray]:
    """Column arrays of the type parameters, indexed by type code."""
    return {f: np.array([getattr(t, f) for t in types], dtype=np.float64) for f in BuyerType.__dataclass_fields__ if f != "name"}


@dataclass
class Sessions:
    """Events of simulated sessions, ordered by (session, position)."""

    session: np.ndarray  # int64 session index per event
    etype: np.ndarray  # int8 event type code (EVENT_TYPES index)
    product: np.ndarray  # int64 product index, -1 = none
    category: np.ndarray  # int64 category index for collection views, -1 = none
    query: np.ndarray  # int64 query index for searches, -1 = none
    quantity: np.ndarray  # int32, 0 = none
    offset_ms: np.ndarray  # int64 milliseconds since the session's first event
    duration_ms: np.ndarray  # int64 per session: offset of its last event


def simulate_sessions(
    stype: np.ndarray,
    start_cat: np.ndarray,
    P: dict[str, np.ndarray],
    cat_popularity: np.ndarray,
    cat_start: np.ndarray,
    query_start: np.ndarray,
    rng: np.random.Generator,
    max_steps: int,
    max_cart: int,
    max_dwell_s: float,
    price_factor: np.ndarray | None = None,
) -> Sessions:
    """Run all sessions (type codes `stype`, starting categories `start_cat`) to their end.
    `price_factor` (per product, 1 = unchanged): an A/B arm's price change, to which carting
    responds with the type's `price_elasticity`."""
    S = len(stype)
    n_cat = len(cat_popularity)
    cat_cdf = np.cumsum(cat_popularity)
    cat_cdf[-1] = 1.0
    last = np.full(S, PAGE, dtype=np.int8)
    cat = start_cat.astype(np.int64).copy()
    prod = np.full(S, -1, dtype=np.int64)
    cart_p = np.full((S, max_cart), -1, dtype=np.int64)
    cart_q = np.zeros((S, max_cart), dtype=np.int32)
    cart_n = np.zeros(S, dtype=np.int64)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("s", "order", "e", "p", "c", "q", "n")}
    sub_slots = max_cart + 1

    def emit(s, step, e, p=None, c=None, q=None, n=None, sub=0):
        k = len(s)
        out["s"].append(s)
        out["order"].append(np.full(k, step * sub_slots + sub, dtype=np.int64))
        out["e"].append(np.full(k, e, dtype=np.int8))
        none = np.full(k, -1, dtype=np.int64)
        out["p"].append(none if p is None else p)
        out["c"].append(none if c is None else c)
        out["q"].append(none if q is None else q)
        out["n"].append(np.zeros(k, dtype=np.int32) if n is None else n.astype(np.int32))

    def new_cat(k):
        return np.minimum(np.searchsorted(cat_cdf, rng.random(k), side="right"), n_cat - 1)

    all_s = np.arange(S, dtype=np.int64)
    emit(all_s, 0, PAGE)
    alive = rng.random(S) >= P["p_bounce"][stype]
    cols = ("w_exit", "w_page", "w_collection", "w_search", "w_product", "w_cart", "w_remove", "w_checkout")
    W_type = np.stack([P[c] for c in cols], axis=1)  # [n_types, 8]
    for step in range(1, max_steps):
        idx = np.flatnonzero(alive)
        if len(idx) == 0:
            break
        t = stype[idx]
        L = last[idx]
        cn = cart_n[idx]
        action = np.empty(len(idx), dtype=np.int8)
        # In checkout: purchase, or abandon (leave 75%, browse on 25%).
        co = L == CHECKOUT
        if co.any():
            u = rng.random(int(co.sum()))
            pp = P["p_purchase"][t[co]]
            action[co] = np.where(u < pp, PURCHASE, np.where(u < pp + (1 - pp) * 0.75, EXIT, PRODUCT))
        br = ~co
        if br.any():
            W = W_type[t[br]].copy()
            Lb, cnb = L[br], cn[br]
            W[:, 5] *= (Lb == PRODUCT) & (cnb < max_cart)
            if price_factor is not None:
                seen = prod[idx[br]]
                W[:, 5] *= np.where(seen >= 0, price_factor[np.maximum(seen, 0)], 1.0) ** -P["price_elasticity"][t[br]]
            W[:, 6] *= cnb > 0
            W[:, 7] *= (cnb > 0) & (Lb != REMOVE)
            cum = np.cumsum(W, axis=1)
            u = rng.random(len(cum)) * cum[:, -1]
            choice = (cum < u[:, None]).sum(axis=1)
            codes = np.array([EXIT, PAGE, COLLECTION, SEARCH, PRODUCT, CART, REMOVE, CHECKOUT], dtype=np.int8)
            action[br] = codes[np.minimum(choice, 7)]
        alive[idx[action == EXIT]] = False
        for a in (PAGE, COLLECTION, SEARCH, PRODUCT, CART, REMOVE, CHECKOUT, PURCHASE):
            m = action == a
            if not m.any():
                continue
            s = idx[m]
            ta = t[m]
            if a == PAGE or a == CHECKOUT:
                emit(s, step, a)
            elif a in (COLLECTION, SEARCH):
                sw = rng.random(len(s)) < P["p_switch"][ta]
                c = cat[s]
                c[sw] = new_cat(int(sw.sum()))
                cat[s] = c
                if a == COLLECTION:
                    emit(s, step, a, c=c)
                else:
                    lo, hi = query_start[c], query_start[c + 1]
                    q = lo + np.minimum((rng.random(len(s)) * (hi - lo)).astype(np.int64), hi - lo - 1)
                    emit(s, step, a, q=q)
            elif a == PRODUCT:
                c = cat[s]
                lo, hi = cat_start[c], cat_start[c + 1]
                # Products of a category are sorted by price: u**exp(sens) leans to cheap (sens > 0).
                x = rng.random(len(s)) ** np.exp(P["price_sensitivity"][ta])
                p = lo + np.minimum((x * (hi - lo)).astype(np.int64), hi - lo - 1)
                prod[s] = p
                emit(s, step, a, p=p)
            elif a == CART:
                p = prod[s]
                n = 1 + rng.poisson(P["extra_quantity"][ta])
                j = cart_n[s]
                cart_p[s, j] = p
                cart_q[s, j] = n
                cart_n[s] = j + 1
                emit(s, step, a, p=p, n=n)
            elif a == REMOVE:
                n_in = cart_n[s]
                j = np.minimum((rng.random(len(s)) * n_in).astype(np.int64), n_in - 1)
                p, n = cart_p[s, j], cart_q[s, j]
                lastj = n_in - 1
                cart_p[s, j], cart_q[s, j] = cart_p[s, lastj], cart_q[s, lastj]
                cart_p[s, lastj], cart_q[s, lastj] = -1, 0
                cart_n[s] = lastj
                emit(s, step, a, p=p, n=n)
            elif a == PURCHASE:
                for j in range(max_cart):
                    mj = cart_n[s] > j
                    if not mj.any():
                        break
                    sj = s[mj]
                    emit(sj, step, a, p=cart_p[sj, j], n=cart_q[sj, j], sub=j)
                alive[s] = False
        last[idx] = np.where(action == EXIT, last[idx], action)

    s = np.concatenate(out["s"])
    order = np.concatenate(out["order"])
    perm = np.lexsort((order, s))
    s = s[perm]
    e = np.concatenate(out["e"])[perm]
    sub = (order[perm] % sub_slots) > 0
    # Gaps before each event: log-normal around the type's dwell, by event type; the first event
    # of a session has none; the 2nd..kth purchase rows of one checkout follow within a second.
    med = P["dwell_median_s"][stype[s]] * DWELL_MULT[e]
    gap_s = np.minimum(med * np.exp(rng.normal(0.0, DWELL_SIGMA, len(s))), max_dwell_s)
    gap_s = np.maximum(gap_s, 0.3)
    gap_s[sub] = rng.uniform(0.01, 0.3, int(sub.sum()))
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    gap_ms = np.round(gap_s * 1000).astype(np.int64)
    gap_ms[first] = 0
    cum = np.cumsum(gap_ms)
    starts = np.flatnonzero(first)
    base = np.repeat(cum[starts], np.diff(np.append(starts, len(s))))
    offset = cum - base
    ends = np.append(starts[1:], len(s)) - 1
    duration = np.zeros(S, dtype=np.int64)
    duration[s[ends]] = offset[ends]
    return Sessions(
        session=s,
        etype=e,
        product=np.concatenate(out["p"])[perm],
        category=np.concatenate(out["c"])[perm],
        query=np.concatenate(out["q"])[perm],
        quantity=np.concatenate(out["n"])[perm],
        offset_ms=offset,
        duration_ms=duration,
    )
