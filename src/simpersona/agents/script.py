"""`ScriptAgent`: follows a fixed plan of storefront steps exactly (the instruction tasks'
reference: every task must be feasible in the step budget and accepted by the judge).

Plan ops: ("search", query) ("view", title) ("view_any",) ("collection", path) ("back",) ("add",)
("checkout",) ("buy",) ("end",). A view clicks the product link whose label is the title (else the
first product on the page; with none, the op is skipped); buy opens the checkout unless there,
fills each empty checkout field, then places the order.
"""

from __future__ import annotations

from typing import Any

from simpersona.agents.base import Decision
from simpersona.contracts import storefront as V


class ScriptAgent:
    """One episode of a plan (persona and goal are ignored)."""

    backend = None

    def __init__(self, plan: list[tuple]):
        self.plan = list(plan)
        self.i = 0

    def reset(self, goal: str, persona: int | None) -> None:
        self.i = 0

    def act(self, observation: dict[str, Any]) -> Decision:
        els = V.elements(str(observation.get("page", "")))
        state = V.page_type(str(observation.get("url", "")))
        while self.i < len(self.plan):
            op = self.plan[self.i]
            if op[0] == "search":
                self.i += 1
                return Decision({"action": "search", "query": op[1][:200]})
            if op[0] == "collection":
                self.i += 1
                return Decision({"action": "click", "element_id": V.collection_link(op[1])})
            if op[0] in ("view", "view_any"):
                self.i += 1
                prods = [e for e in els if e.startswith(V.PRODUCT_PREFIX)]
                exact = [e for e in prods if op[0] == "view" and els[e][1].strip() == op[1]]
                if exact or prods:
                    return Decision({"action": "click", "element_id": (exact or prods)[0]})
                continue
            if op[0] == "back":
                self.i += 1
                return Decision({"action": "back"})
            if op[0] == "add":
                self.i += 1
                return Decision({"action": "add_to_cart", "quantity": 1})
            if op[0] == "checkout":
                self.i += 1
                return Decision({"action": "checkout"})
            if op[0] == "buy":
                if state != "checkout":
                    return Decision({"action": "checkout"})
                fid = V.next_empty_field(els)
                if fid is not None:
                    return Decision({"action": "fill", "element_id": fid, "value": V.CHECKOUT_VALUES[fid]})
                self.i += 1
                return Decision({"action": "click", "element_id": V.PLACE_ORDER})
            if op[0] == "end":
                self.i += 1
                return Decision({"action": "end_session", "goal_reached": True})
            raise ValueError(f"unknown plan op {op!r}")
        return Decision({"action": "end_session", "goal_reached": True})
