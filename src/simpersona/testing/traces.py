"""FABRICATED traces in the record format, for tests and benchmarks (the main job's traces are
replays of real sessions on the storefront). Nothing here comes from real sessions.

A fake codebook (K×96, Gaussian) decides each persona's behaviour through two fixed random
directions: purchase propensity and browsing depth. A persona's sessions search a category,
open `depth` products, then buy (add to cart, cart, checkout) or leave. Persona cards describe
the same two traits in words, so card text and codebook carry the same signal (what the
`codebook` and `card` inits can use). Pages are short text snapshots in the storefront's
snapshot style (`[id] kind: label`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from simpersona.contracts.goals import goal_text
from simpersona.contracts.records import records_from_trajectory, write_trace_split
from simpersona.contracts.split import validation_shops

CATEGORIES = ("running shoes", "skirts", "coffee beans", "desk lamps", "backpacks", "yoga mats", "tea kettles", "wool socks")
ADJ = ("blue", "classic", "light", "premium", "compact", "organic", "soft", "sturdy")


def persona_traits(codebook: torch.Tensor, seed: int) -> list[tuple[float, int]]:
    """Per code: (purchase propensity in (0, 1), products viewed 1–4), from the code vector."""
    g = torch.Generator().manual_seed(seed + 1)
    u, v = torch.randn(2, codebook.shape[1], generator=g)  # (96,) each
    p = torch.sigmoid(2.0 * (codebook @ u) / codebook.shape[1] ** 0.5)  # (K,)
    d = 1 + (3 * torch.sigmoid((codebook @ v) / codebook.shape[1] ** 0.5)).round().long()  # (K,) in 1..4
    return [(float(a), int(b)) for a, b in zip(p, d)]


def fake_cards(traits: list[tuple[float, int]]) -> list[dict[str, Any]]:
    """Persona cards (cards.json shape) whose words name each code's traits."""
    level = lambda x, lo, hi: "low" if x < lo else ("high" if x > hi else "medium")  # noqa: E731
    cards = []
    for k, (p, d) in enumerate(traits):
        cards.append({
            "code": k, "size": 100, "share": 1 / len(traits),
            "strata": {"A": round(p * 0.7, 3), "C": round(p * 0.3, 3), "D": round(1 - p, 3)},
            "labels": {"engage": level(d, 1.5, 3.5), "explore": level(d, 1.5, 3.5), "purchase": level(p, 0.35, 0.65)},
            "description": (f"A shopper who {'usually buys' if p > 0.5 else 'mostly browses without buying'}, "
                            f"with {'high' if p > 0.65 else 'low' if p < 0.35 else 'moderate'} purchase intent, "
                            f"who looks at {['one product', 'two products', 'three products', 'many products'][d - 1]} per visit."),
        })
    return cards


def _page(url: str, title: str, lines: list[str]) -> dict[str, Any]:
    head = [f"URL: {url}", f"TITLE: {title}", "[nav-home] link: Home", "[nav-cart] link: Cart",
            "[search-q] input Search = ''", "[search-go] button: Search"]
    return {"url": url, "page": "\n".join(head + lines), "status": 200, "error": None}


def session_steps(shop: str, category: str, buy: bool, depth: int, rng: random.Random) -> list[dict[str, Any]]:
    """One fabricated trajectory: (observation, action, reasoning) per step."""
    base = f"/s/{shop}"
    products = [(f"p{rng.randrange(10_000):04d}", f"{rng.choice(ADJ)} {category}", rng.randrange(5, 200)) for _ in range(6)]
    listing = [f"[{pid}] link: {name} — ${price}" for pid, name, price in products]
    steps = [{"observation": _page(base + "/", f"{shop} home", ["Featured collections", f"[c-{category[:4]}] link: {category}"]),
              "action": {"action": "search", "query": category},
              "reasoning": f"I look for {category} first."}]
    results = _page(f"{base}/search?q={category.replace(' ', '+')}", f"Search: {category}", listing)
    for i in range(depth):
        pid, name, price = products[i]
        steps.append({"observation": results, "action": {"action": "click", "element_id": pid},
                      "reasoning": "I open this one to see the details." if i == 0 else "I compare it with another option."})
        page = _page(f"{base}/p/{pid}", name, [f"{name}", f"Price ${price}", "[quantity] input Quantity = '1'", "[add-to-cart] button: Add to cart"])
        if i < depth - 1:
            steps.append({"observation": page, "action": {"action": "back"}, "reasoning": "I go back to the results to compare."})
        elif buy:
            steps.append({"observation": page, "action": {"action": "add_to_cart", "quantity": 1}, "reasoning": "This fits what I want, so I add it to the cart."})
            cart = _page(f"{base}/cart", "Cart", [f"{name} x1 ${price}", f"[remove-{pid}] button: Remove", "[go-checkout] link: Checkout"])
            steps.append({"observation": cart, "action": {"action": "checkout"}, "reasoning": "I am ready to pay."})
            steps.append({"observation": _page(f"{base}/checkout", "Checkout", ["[email] input Email = ''", "[place-order] button: Place order"]),
                          "action": {"action": "end_session", "goal_reached": True}, "reasoning": "I reached the checkout; my goal is done."})
        else:
            steps.append({"observation": page, "action": {"action": "end_session", "goal_reached": True},
                          "reasoning": "I have seen enough for now and leave without buying."})
    return steps


def fabricate(out_dir: Path, k: int, shops: int, sessions: int, seed: int, latent_dim: int = 96,
              val_fraction: float = 0.25) -> dict[str, Any]:
    """Write a TRACES_DIR (traces.jsonl and stage{1,2}/{train,val}.jsonl, both stages per session,
    `val_fraction` of the shops validating), out_dir/cards.json and a fake VQ-VAE folder
    out_dir/vqvae/model.safetensors holding `quantizer.codebook` (K, latent_dim)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    rng = random.Random(seed)
    codebook = torch.randn(k, latent_dim, generator=torch.Generator().manual_seed(seed))  # (K, 96)
    traits = persona_traits(codebook, seed)
    records = []
    for s in range(sessions):
        shop, code = f"shop{s % shops:02d}", rng.randrange(k)
        p, depth = traits[code]
        buy = rng.random() < p
        stratum = rng.choice("ABC") if buy else "D"
        category = rng.choice(CATEGORIES)
        steps = session_steps(shop, category, buy, depth, rng)
        goals = {1: goal_text("neutral", category), 2: goal_text("buy" if buy else "browse", category)}
        for stage, goal in goals.items():
            meta = {"shop_id": shop, "session_key": f"{shop}:s{s:05d}", "stratum": stratum, "stage": stage}
            records += records_from_trajectory(goal, code, steps, meta)
    val = validation_shops({r["shop_id"] for r in records}, val_fraction, seed)
    n = write_trace_split(out_dir, [r for r in records if r["shop_id"] not in val], [r for r in records if r["shop_id"] in val])["all"]
    (out_dir / "cards.json").write_text(json.dumps(fake_cards(traits), indent=2) + "\n")
    (out_dir / "vqvae").mkdir(parents=True, exist_ok=True)
    save_file({"quantizer.codebook": codebook}, str(out_dir / "vqvae" / "model.safetensors"))
    return {"records": n, "sessions": sessions, "shops": shops, "k": k, "fabricated": True}
