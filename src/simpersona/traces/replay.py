"""Replay: carry out a real session's events on the storefront through `ShopEnv`, step by step.

`Replayer(catalog, storefront_config)` builds one in-process storefront (`create_app` +
`AsgiTransport`, events kept in memory) and replays sessions on it; `replay(session)` returns a
`Trajectory`: per step the observation the action was taken on, the action, and a reason key
from which `reasoning()` writes a short sentence tied to the stage's goal; plus the events the
storefront logged for that episode (its OWN log, what the judge checks).

Event → actions (page views are not replayed: the episode starts on the home page):

    search            search{query}
    collection_view   click the collection link; else home, then the link (or a descendant's
                      listing and its breadcrumb)
    product_view      click the product if its link is on the page, else search its title (and go
                      through up to `result_pages` pages of results, for shared titles) and click
    add_to_cart       (open the product unless on its page) add_to_cart{quantity}
    remove_from_cart  view_cart (unless there) + remove_from_cart{product_id}
    checkout_start    checkout
    purchase (run)    make the cart hold exactly the purchased lines (open + add missing ones;
                      view_cart, remove extra lines, fill + submit a changed quantity), checkout
                      unless on the checkout form, fill each field, submit place-order
    the end           end_session{goal_reached: true}

An event that cannot be mapped (product not in the catalog or not found by search, remove of a
product not in the cart) is skipped and noted; the judge then sees what the log lacks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from simpersona.contracts import storefront as V
from simpersona.contracts.storefront import CHECKOUT_VALUES, FIELD_NAMES
from simpersona.traces.goals import Event, Goals, Session, leaf


@dataclass
class Step:
    observation: dict  # the env observation the action was taken on
    action: dict  # the action's JSON object
    reason: tuple  # (key, detail…) for `reasoning()`


@dataclass
class Trajectory:
    session_key: str
    episode_session_id: str  # the storefront session id of the replay
    steps: list[Step] = field(default_factory=list)
    outcome: str | None = None  # the env's outcome ("goal_reached" when the replay ran to the end)
    error: str | None = None  # the first env error, when an action failed
    skipped: list[str] = field(default_factory=list)  # causes of events that could not be replayed
    logged: list[dict] = field(default_factory=list)  # the storefront's events of this episode


def _rendered(obs: dict, element_id: str) -> bool:
    """Is the element visible in the observation's page text (not pruned by the token budget)?"""
    return f"[{element_id}] " in obs["page"]


class _Abort(Exception):
    """The episode ended early (env error or truncation)."""


class Replayer:
    """An in-process storefront over `catalog` and a `ShopEnv` reused for every replay."""

    def __init__(self, catalog: pa.Table | Path | str, storefront=None, result_pages: int = 3):
        from simpersona.storefront.app import create_app
        from simpersona.storefront.config import StorefrontConfig
        from simpersona.storefront.env import ShopEnv
        from simpersona.storefront.transports import AsgiTransport

        cfg = storefront or StorefrontConfig()
        if cfg.events_out is not None:
            raise ValueError("the replay reads the storefront's in-memory log: storefront.events_out must be null")
        self.app = create_app(cfg, catalog)
        self.store = self.app.state.store
        self.env = ShopEnv(AsgiTransport(self.app), cfg.env)
        self.result_pages = result_pages
        self.n = 0

    def close(self) -> None:
        self.env.close()

    def has_shop(self, shop_id: str) -> bool:
        return shop_id in self.store.shops

    # -- one session ---------------------------------------------------------------------------
    def replay(self, session: Session, goal: str = "", persona_token: str = "") -> Trajectory:
        self.n += 1
        sid = f"replay-{self.n:08d}"
        traj = Trajectory(session.key, sid)
        self.store.log.clear()
        self.obs, _ = self.env.reset(seed=self.n, options={"shop": session.shop_id, "buyer_id": f"replayer-{self.n:08d}",
                                                          "session_id": sid, "variant": "A", "goal": goal,
                                                          "persona_token": persona_token})
        self.traj, self.cart = traj, {}
        self.shop = self.store.shops[session.shop_id]
        self.shop_id = session.shop_id
        try:
            events = [e for e in session.events if e.kind != "page_view"]
            i = 0
            while i < len(events):
                e = events[i]
                if e.kind == "purchase":
                    j = i
                    while j < len(events) and events[j].kind == "purchase":
                        j += 1
                    self._purchase(events[i:j])
                    i = j
                    continue
                {"search": self._search, "collection_view": self._collection, "product_view": self._product_view,
                 "add_to_cart": self._add, "remove_from_cart": self._remove, "checkout_start": self._checkout}[e.kind](e)
                i += 1
            bought = bool(events) and events[-1].kind == "purchase"
            self._act({"action": "end_session", "goal_reached": True}, ("end", "bought" if bought else "left"))
        except _Abort:
            pass
        traj.outcome = self.env.outcome
        traj.logged = [{"event_type": t, "product_id": p, "quantity": q, "collection_id": c, "query": s}
                       for t, p, q, c, s, sess in zip(*(self.store.log.events().column(n).to_pylist() for n in
                                                       ("event_type", "product_id", "quantity", "collection_id", "query", "session_id")))
                       if sess == sid]
        self.store.log.clear()
        return traj

    # -- primitives ----------------------------------------------------------------------------
    def _act(self, action: dict, reason: tuple) -> None:
        self.traj.steps.append(Step(self.obs, action, reason))
        self.obs, _, terminated, truncated, info = self.env.step(action)
        if info["error"]:
            self.traj.error = info["error"]
            raise _Abort
        if truncated or (terminated and action["action"] != "end_session"):
            raise _Abort

    def _url(self) -> str:
        return self.obs["url"]

    def _product_url(self, pid: str) -> str:
        return V.product_path(self.shop_id, pid)

    def _open_product(self, e: Event) -> bool:
        """Reach e's product page (click if listed, else search its title); False if impossible."""
        if self._url() == self._product_url(e.product_id):
            return True
        link = V.product_link(e.product_id)
        if e.product_id not in self.shop.products:
            self.traj.skipped.append(f"{e.kind}: product not in the catalog")
            return False
        if not _rendered(self.obs, link):
            title = self.shop.products[e.product_id].title
            self._act({"action": "search", "query": title[:200]}, ("find", title))
            for _ in range(self.result_pages - 1):  # shared titles: the product may be further down
                if _rendered(self.obs, link) or not _rendered(self.obs, V.PAGE_NEXT):
                    break
                self._act({"action": "click", "element_id": V.PAGE_NEXT}, ("next_page", title))
            if not _rendered(self.obs, link):
                self.traj.skipped.append(f"{e.kind}: product not found by searching its title")
                return False
        self._act({"action": "click", "element_id": link}, ("open", self.shop.products[e.product_id].title))
        return True

    # -- events --------------------------------------------------------------------------------
    def _search(self, e: Event) -> None:
        self._act({"action": "search", "query": (e.query or "").strip()[:200] or "products"}, ("search", e.query))

    def _collection(self, e: Event) -> None:
        c = (e.collection_id or "").strip("/")
        link = V.collection_link(c)
        if self._url().split("?")[0] == V.collection_path(self.shop_id, c):
            return  # already on it (a reload or a second page): not repeated
        if not _rendered(self.obs, link) and self._url() != V.shop_base(self.shop_id) + "/":
            self._act({"action": "click", "element_id": V.NAV_HOME}, ("home", leaf(c)))
        if not _rendered(self.obs, link):
            # a parent collection: open a listed descendant, whose breadcrumbs link to it
            below = next((eid for eid in self.env.snap.elements if eid.startswith(link + "/") and _rendered(self.obs, eid)), None)
            if below is None:
                self.traj.skipped.append("collection_view: collection not reachable")
                return
            self._act({"action": "click", "element_id": below}, ("collection", leaf(below[len("collection-"):])))
            if not _rendered(self.obs, link):
                self.traj.skipped.append("collection_view: collection not reachable")
                return
        self._act({"action": "click", "element_id": link}, ("collection", leaf(c)))

    def _product_view(self, e: Event) -> None:
        if self._url() == self._product_url(e.product_id):  # a reload of the same page: not repeated
            return
        self._open_product(e)

    def _add(self, e: Event) -> None:
        if not self._open_product(e):
            return
        qty = min(max(int(e.quantity or 1), 1), 99)
        self._act({"action": "add_to_cart", "quantity": qty}, ("add", self.shop.products[e.product_id].title, qty))
        self.cart[e.product_id] = self.cart.get(e.product_id, 0) + qty

    def _view_cart(self) -> None:
        if self._url() != V.shop_base(self.shop_id) + V.CART_PATH:
            self._act({"action": "view_cart"}, ("cart",))

    def _remove(self, e: Event) -> None:
        if e.product_id not in self.cart:
            self.traj.skipped.append("remove_from_cart: product not in the replay's cart")
            return
        self._view_cart()
        self._act({"action": "remove_from_cart", "product_id": e.product_id}, ("remove", self.shop.products[e.product_id].title))
        del self.cart[e.product_id]

    def _checkout(self, e: Event | None = None) -> None:
        self._act({"action": "checkout"}, ("checkout",))

    def _purchase(self, run: list[Event]) -> None:
        want: Counter = Counter()
        for e in run:
            want[e.product_id] += min(max(int(e.quantity or 1), 1), 99)
        for e in run:  # products bought but not carted in this session (a cart from an earlier visit)
            if e.product_id not in self.cart:
                self._add(Event("add_to_cart", product_id=e.product_id, quantity=want[e.product_id]))
        extra = [p for p in self.cart if p not in want]
        changed = [p for p in want if p in self.cart and self.cart[p] != want[p]]
        if extra or changed:
            self._view_cart()
            for p in extra:
                self._act({"action": "remove_from_cart", "product_id": p}, ("remove", self.shop.products[p].title))
                del self.cart[p]
            for p in changed:
                self._act({"action": "fill", "element_id": V.QTY_PREFIX + p, "value": str(min(want[p], 99))}, ("quantity", self.shop.products[p].title, want[p]))
                self._act({"action": "submit", "element_id": V.UPDATE_PREFIX + p}, ("update", self.shop.products[p].title))
                self.cart[p] = want[p]
        if not self.cart:
            self.traj.skipped.append("purchase: nothing in the replay's cart")
            return
        if V.CHECKOUT_FORM not in self.env.snap.forms:
            self._checkout()
        for _ in range(2):  # a one-page form, or contact then shipping
            form = self.env.snap.forms.get(V.CHECKOUT_FORM)
            if form is None:
                break
            for _, _, eid in form.fields:
                if eid in CHECKOUT_VALUES:
                    self._act({"action": "fill", "element_id": eid, "value": CHECKOUT_VALUES[eid]}, ("fill", FIELD_NAMES[eid]))
            button = V.PLACE_ORDER if V.PLACE_ORDER in self.env.snap.elements else V.CONTINUE_BUTTON
            self._act({"action": "submit", "element_id": button}, ("order",) if button == V.PLACE_ORDER else ("continue",))
        self.cart = {}


# -- reasoning ---------------------------------------------------------------------------------
def reasoning(reason: tuple, stage: int, goals: Goals) -> str:
    """One short sentence for a step, from what the buyer sees and its record goal: neutral in stage
    1 (the goal names only a category), tied to the buy/browse intent in stage 2. Never a reference
    to the navigation plan, which the record does not carry."""
    key, *arg = reason
    cat = goals.category
    s2 = stage == 2
    want = ("to buy" if goals.buy else "to browse") if s2 else "to look at"
    if key == "search":
        return f"I search for '{arg[0]}' to find {cat} {want}."
    if key == "find":
        return f"I search for '{arg[0]}' to find that product."
    if key == "next_page":
        return f"'{arg[0]}' is not on this page of results, so I look at the next page."
    if key == "open":
        return f"I open '{arg[0]}' to look at its details."
    if key == "home":
        return f"I go to the home page to find the {arg[0]} collection."
    if key == "collection":
        return f"I browse the {arg[0]} collection to find {cat} {want}."
    if key == "add":
        n = f" ({arg[1]} units)" if arg[1] > 1 else ""
        if s2 and goals.buy:
            return f"'{arg[0]}' is what I want to buy, so I add it to the cart{n}."
        return f"I like '{arg[0]}', so I add it to the cart{n}."
    if key == "cart":
        return "I open the cart to check what is in it."
    if key == "remove":
        return f"I no longer want '{arg[0]}', so I remove it from the cart."
    if key == "quantity":
        return f"I set the quantity of '{arg[0]}' to {arg[1]}."
    if key == "update":
        return f"I update the cart line of '{arg[0]}'."
    if key == "checkout":
        return "I start checkout to buy what is in my cart." if s2 and goals.buy else "I go to the checkout."
    if key == "fill":
        return f"I fill in the {arg[0]} field of the checkout form."
    if key == "continue":
        return "I continue to the shipping details."
    if key == "order":
        return "Everything is filled in, so I place the order."
    if key == "end":
        if arg[0] == "bought":
            return "I bought what I came for, so I am done." if s2 else "I placed my order, so I am done."
        return f"I have seen enough {cat} for now, so I leave."
    raise ValueError(f"unknown reason key {key!r}")


def stage_steps(traj: Trajectory, stage: int, goals: Goals) -> list[dict]:
    """The trajectory as `records_from_trajectory` steps for `stage`."""
    return [{"observation": s.observation, "action": s.action, "reasoning": reasoning(s.reason, stage, goals)} for s in traj.steps]
