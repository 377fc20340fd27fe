"""The judge: keep a replayed trajectory only if it reproduced the session's funnel events.

Rule-based, from the storefront's OWN event log of the episode (`Trajectory.logged`), never from
the replay's intentions. Checks in order; the first failure is the drop reason:

    <outcome>          the replay did not run to its end_session (steps_limit, time_limit,
                       crash, or invalid_action when the env refused an action)
    purchase_missing   a product the session bought was not bought
    purchase_extra     the replay bought something the session did not
    purchase_quantity  a bought product's units differ
    checkout_missing   the session started checkout (or bought) and the replay did not
    cart_missing       a product the session added to the cart was not added
    remove_missing     a product the session removed from the cart was not removed
    view_missing       a product the session viewed was not viewed

Extra views, searches and cart lines that the store's mechanics force (finding a product by its
title, adding a product bought from an earlier visit's cart) are allowed. An optional LLM judge
(`LLMClient.judge`) may then veto a trajectory the rules kept ("llm_judge_rejected").
"""

from __future__ import annotations

from collections import Counter

from simpersona.traces.goals import Session
from simpersona.traces.replay import Trajectory


def funnel(events: list[tuple[str, str | None, int | None]]) -> dict:
    """Viewed / carted / removed product sets, purchased units per product, checkout started."""
    kinds = lambda k: {p for t, p, _ in events if t == k and p is not None}  # noqa: E731
    bought: Counter = Counter()
    for t, p, q in events:
        if t == "purchase" and p is not None:
            bought[p] += int(q or 1)
    return {"view": kinds("product_view"), "cart": kinds("add_to_cart"), "remove": kinds("remove_from_cart"),
            "purchase": bought, "checkout": any(t in ("checkout_start", "purchase") for t, _, _ in events)}


def rule_verdict(session: Session, traj: Trajectory) -> tuple[bool, str]:
    """(kept, reason): reason "ok" when kept, else the first failed check (see the module doc)."""
    if traj.outcome != "goal_reached":
        return False, "invalid_action" if traj.error else (traj.outcome or "crash")
    real = funnel([(e.kind, e.product_id, e.quantity) for e in session.events])
    rep = funnel([(x["event_type"], x["product_id"], x["quantity"]) for x in traj.logged])
    if set(real["purchase"]) - set(rep["purchase"]):
        return False, "purchase_missing"
    if set(rep["purchase"]) - set(real["purchase"]):
        return False, "purchase_extra"
    if real["purchase"] != rep["purchase"]:
        return False, "purchase_quantity"
    if real["checkout"] and not rep["checkout"]:
        return False, "checkout_missing"
    for key in ("cart", "remove", "view"):
        if real[key] - rep[key]:
            return False, f"{key}_missing"
    return True, "ok"


def logged_lines(traj: Trajectory) -> list[str]:
    """The episode's logged events as short lines (for the LLM judge)."""
    out = []
    for x in traj.logged:
        detail = " ".join(f"{k}={x[k]}" for k in ("product_id", "quantity", "collection_id", "query") if x.get(k) is not None)
        out.append(f"{x['event_type']} {detail}".rstrip())
    return out
