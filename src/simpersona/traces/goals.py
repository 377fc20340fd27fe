"""Goals from sessions: a session's timestamped events → its goal texts (spec §5, paper §2.3).

Three texts per session; the sentences themselves are `contracts.goals`'s:

    neutral     stage-1 record goal: "You are interested in speakers." (category from the
                session's products/collections, else the buyer's history), never saying whether
                the buyer browses, carts or buys
    intent      stage-2 record goal from the buyer's funnel stratum: A–C "You are here to buy
                speakers.", D (and E) "You are here to browse speakers."
    navigation  the session's steps, e.g. "Search for 'speaker', open two products, add the
                cheaper one to the cart, start checkout and leave." (deterministic template;
                optionally rewritten by an LLM through `llm.LLMClient`, falling back to the
                template on any failure). It is what the replay carries out and what the LLM
                judge checks against; it NEVER enters a record (a record's goal is the intent).

Runs of the same event are merged ("open 3 products"); page views are not described (the replay
cannot tell which page they were). Everything here is pure and deterministic.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from simpersona.contracts.goals import goal_text, stratum_intent, topic_name

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Event:
    """One event of a session, joined with the catalog (title/collection/price of its product)."""

    kind: str  # canonical event_type
    ts: dt.datetime | None = None
    product_id: str | None = None
    collection_id: str | None = None
    query: str | None = None
    price: float | None = None
    quantity: int | None = None
    title: str | None = None  # the product's catalog title (None: not in the catalog)
    collection: str | None = None  # the product's catalog collection path


@dataclass
class Session:
    """A real session to turn into goals and replay."""

    shop_id: str
    buyer_id: str
    session_id: str
    events: list[Event]
    code: int = 0  # the buyer's persona code
    stratum: str = "D"  # the buyer's funnel stratum A–E
    history: list[str] = field(default_factory=list)  # the buyer's collections, most frequent first

    @property
    def key(self) -> str:
        return f"{self.shop_id}:{self.buyer_id}:{self.session_id}"


@dataclass(frozen=True)
class Goals:
    category: str
    neutral: str  # stage-1 record goal
    intent: str  # stage-2 record goal
    navigation: str  # the session's steps (template or rewritten): replay and judge only
    buy: bool = False  # the stage-2 intent is "buy" (strata A–C)

    def for_stage(self, stage: int) -> str:
        """The goal a record of `stage` carries: the intent alone, never the navigation."""
        return self.neutral if stage == 1 else self.intent


leaf = topic_name


def category(session: Session) -> str:
    """The session's category: its most frequent product/collection path (ties: first seen), else
    the buyer's most frequent collection, else "products" (never a search query: the goal must
    not hand the agent the session's own query)."""
    paths = [e.collection or e.collection_id for e in session.events if e.kind != "search"]
    paths = [p for p in paths if p]
    if paths:
        counts = Counter(paths)
        best = max(paths, key=lambda p: (counts[p], -paths.index(p)))
        return leaf(best)
    if session.history:
        return leaf(session.history[0])
    return "products"


def number(n: int) -> str:
    return NUMBERS[n] if 0 <= n < len(NUMBERS) else str(n)


def _name(e: Event) -> str:
    return f"'{e.title}'" if e.title else f"product {e.product_id}"


def _runs(events: list[Event]) -> list[list[Event]]:
    """Consecutive events merged: same kind (product views of any product; searches and
    collection views only when repeated identically); page views dropped; purchases grouped."""
    out: list[list[Event]] = []
    for e in events:
        if e.kind == "page_view":
            continue
        if out and out[-1][0].kind == e.kind:
            last = out[-1][-1]
            same = {"search": e.query == last.query, "collection_view": e.collection_id == last.collection_id,
                    "product_view": True, "purchase": True, "checkout_start": True}.get(e.kind, False)
            if same:
                out[-1].append(e)
                continue
        out.append([e])
    return out


def _views_phrase(run: list[Event]) -> str:
    distinct = list(dict.fromkeys(e.product_id for e in run))
    evs = {e.product_id: e for e in run}
    if len(distinct) == 1:
        return f"open {_name(evs[distinct[0]])}"
    if len(distinct) == 2:
        return f"open {_name(evs[distinct[0]])} and {_name(evs[distinct[1]])}"
    return f"open {number(len(distinct))} products"


def _cart_phrase(e: Event, previous_views: list[Event]) -> str:
    """Add-to-cart, naming the product relative to the products just viewed when it is the
    cheapest/dearest of two or more, else by title."""
    qty = f" ({number(e.quantity)} units)" if e.quantity and e.quantity > 1 else ""
    if {v.product_id for v in previous_views} == {e.product_id}:
        return f"add it to the cart{qty}"
    priced = {v.product_id: v.price for v in previous_views if v.price is not None}
    if e.product_id in priced and len(priced) >= 2 and len(set(priced.values())) > 1:
        lo, hi = min(priced.values()), max(priced.values())
        two = len(priced) == 2
        if priced[e.product_id] == lo:
            return f"add the {'cheaper' if two else 'cheapest'} one to the cart{qty}"
        if priced[e.product_id] == hi:
            return f"add the {'more expensive' if two else 'most expensive'} one to the cart{qty}"
    return f"add {_name(e)} to the cart{qty}"


def navigation_template(events: list[Event]) -> str:
    """The deterministic structure-keeping goal text of a session's events."""
    runs = _runs(events)
    if not runs:
        return "Look at the home page and leave."
    parts: list[str] = []
    views: list[Event] = []  # the last product-view run, for "the cheaper one"
    for run in runs:
        e = run[0]
        if e.kind == "search":
            parts.append(f"search for '{e.query}'")
        elif e.kind == "collection_view":
            parts.append(f"browse the {leaf(e.collection_id or '')} collection")
        elif e.kind == "product_view":
            parts.append(_views_phrase(run))
            views = run
            continue
        elif e.kind == "add_to_cart":
            parts.append(_cart_phrase(e, views) if len(run) == 1 else f"add {number(len(run))} products to the cart")
        elif e.kind == "remove_from_cart":
            parts.append(f"remove {_name(e)} from the cart" if len(run) == 1 else f"remove {number(len(run))} products from the cart")
        elif e.kind == "checkout_start":
            parts.append("start checkout")
        elif e.kind == "purchase":
            parts.append("place the order")
        views = []
    parts.append("leave")
    text = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return text[0].upper() + text[1:] + "."


def make_goals(session: Session, navigation: str | None = None) -> Goals:
    """The three goal texts of `session`; `navigation` replaces the template (an LLM rewrite)."""
    cat = category(session)
    intent = stratum_intent(session.stratum)
    return Goals(cat, goal_text("neutral", cat), goal_text(intent, cat),
                 navigation or navigation_template(session.events), intent == "buy")


def timeline(session: Session) -> str:
    """The session's events as lines (the LLM rewriter's and judge's input)."""
    lines = []
    t0 = session.events[0].ts if session.events and session.events[0].ts else None
    for e in session.events:
        at = f"+{(e.ts - t0).total_seconds():.0f}s " if t0 and e.ts else ""
        what = {"search": f"query={e.query!r}", "collection_view": f"collection={e.collection_id!r}"}.get(e.kind, "")
        if e.product_id:
            what = f"product={e.title or e.product_id!r}" + (f" price={e.price:.2f}" if e.price is not None else "")
            what += f" quantity={e.quantity}" if e.quantity else ""
        lines.append(f"{at}{e.kind} {what}".rstrip())
    return "\n".join(lines)
