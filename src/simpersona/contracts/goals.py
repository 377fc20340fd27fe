"""Goal text: the one sentence an agent is given, written and parsed here only (spec §5, paper §2.3).

    neutral  "You are interested in {topic}."    SFT stage 1; simulate with intent "neutral"
    buy      "You are here to buy {topic}."      SFT stage 2 for strata A–C; simulate, stratum intent
    browse   "You are here to browse {topic}."   SFT stage 2 for strata D (and E)

A goal names an intent and a topic (a collection leaf such as "skirts"), never the session's
steps: the step-by-step navigation plan of a replayed session drives the replay only and never
enters a record, so the persona token is what has to explain how the buyer navigates, and the
agent meets at simulation time the same kind of goal it was trained on.
"""

from __future__ import annotations

import re
from typing import Literal

from simpersona.contracts.labels import BUY_STRATA

Intent = Literal["neutral", "buy", "browse"]
INTENTS: tuple[str, ...] = ("neutral", "buy", "browse")

_GOAL = re.compile(r"^You are (?:interested in|here to (buy|browse)) ([^.]+)\.$")


def topic_name(collection: str) -> str:
    """A collection path as a goal topic: its leaf, underscores and dashes as spaces.

    >>> topic_name("apparel/women/skirts"), topic_name("home/tea_kettles")
    ('skirts', 'tea kettles')
    """
    return collection.strip("/").rsplit("/", 1)[-1].replace("_", " ").replace("-", " ").strip() or collection


def stratum_intent(stratum: str) -> Intent:
    """The stage-2 intent of a funnel stratum: A–C buy, D and E browse.

    >>> stratum_intent("B"), stratum_intent("D")
    ('buy', 'browse')
    """
    return "buy" if stratum in BUY_STRATA else "browse"


def goal_text(intent: Intent, topic: str) -> str:
    """The goal sentence of an intent about a topic.

    >>> goal_text("buy", "skirts"), goal_text("neutral", "skirts")
    ('You are here to buy skirts.', 'You are interested in skirts.')
    """
    if intent not in INTENTS:
        raise ValueError(f"intent {intent!r} is not one of {INTENTS}")
    topic = " ".join(topic.replace(".", " ").split()) or "products"  # one sentence: no inner full stop
    return f"You are interested in {topic}." if intent == "neutral" else f"You are here to {intent} {topic}."


def parse_goal(text: str) -> tuple[Intent, str] | None:
    """(intent, topic) of a goal sentence written by `goal_text`; None for any other text (an
    instruction of the Table 4 tasks, or a goal followed by a navigation plan).

    >>> parse_goal("You are here to browse tea kettles."), parse_goal("Buy the cheapest skirt.")
    (('browse', 'tea kettles'), None)
    """
    m = _GOAL.match(text.strip())
    if m is None:
        return None
    return (m.group(1) or "neutral"), m.group(2)
