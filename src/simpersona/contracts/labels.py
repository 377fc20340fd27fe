"""Shared label vocabularies, each in its one order.

    EVENT_TYPES  the canonical event types in funnel order (ties in time sort by this order)
    STRATA       funnel strata A–E by the priority cascade (A purchasers … E bouncers)
    BUY_STRATA   strata whose simulated buyers get a "buy" intent (the rest "browse")
    HEADS        the auxiliary heads, in the VQ-VAE's and buyers.parquet's label order
    LEVELS       the classes of every head, low to high
"""

from __future__ import annotations

EVENT_TYPES: tuple[str, ...] = (
    "page_view", "collection_view", "search", "product_view", "add_to_cart", "remove_from_cart",
    "checkout_start", "purchase",
)
STRATA: tuple[str, ...] = ("A", "B", "C", "D", "E")
STRATUM_NAMES: dict[str, str] = {"A": "purchasers", "B": "checkout abandoners", "C": "cart builders",
                                 "D": "window shoppers", "E": "bouncers"}
BUY_STRATA: tuple[str, ...] = ("A", "B", "C")
HEADS: tuple[str, ...] = ("engage", "explore", "purchase")
LEVELS: tuple[str, ...] = ("low", "medium", "high")
