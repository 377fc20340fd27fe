"""Synthetic shop catalogs: a category taxonomy with vocabularies, titles, brands and prices.

Each leaf category (a path such as `apparel/women/skirts`) has nouns, materials/colours,
adjectives, brands and a log-normal price law (median, sigma). A shop draws a subset of the
categories (shops specialise in one or two top-level verticals), then products whose titles are
`brand + adjective + material/colour + noun`. Search queries are drawn from the same words, so
a query always matches some titles of its category.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from simpersona.events.schema import CATALOG_SCHEMA

# path: (nouns, materials/colours, adjectives, brands, median price, price log-sigma)
TAXONOMY: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...], float, float]] = {
    "apparel/women/skirts": (("skirt", "midi skirt", "mini skirt", "pleated skirt"), ("denim", "linen", "black", "floral", "wool", "satin"), ("high-waisted", "flowy", "classic", "vintage"), ("Lunora", "Vela", "Marisol", "Tess & Co"), 45.0, 0.45),
    "apparel/women/dresses": (("dress", "maxi dress", "wrap dress", "shirt dress"), ("cotton", "silk", "navy", "red", "linen", "polka-dot"), ("elegant", "casual", "summer", "evening"), ("Lunora", "Vela", "Aurelle", "Bloom"), 70.0, 0.5),
    "apparel/men/shirts": (("shirt", "oxford shirt", "flannel shirt", "polo"), ("cotton", "white", "blue", "checked", "linen", "denim"), ("slim-fit", "classic", "relaxed", "button-down"), ("Harbor", "Kestrel", "Northwin", "Oakley & Sons"), 40.0, 0.4),
    "apparel/men/jackets": (("jacket", "parka", "bomber jacket", "rain jacket"), ("leather", "olive", "black", "waxed cotton", "down", "navy"), ("waterproof", "insulated", "lightweight", "rugged"), ("Harbor", "Fjellman", "Northwin", "Summit"), 120.0, 0.55),
    "apparel/shoes/sneakers": (("sneakers", "running shoes", "trainers", "high-tops"), ("white", "black", "mesh", "leather", "grey", "suede"), ("cushioned", "retro", "breathable", "everyday"), ("Stride", "Kinetic", "Vapor", "Runlab"), 85.0, 0.45),
    "electronics/audio/headphones": (("headphones", "earbuds", "headset", "earphones"), ("black", "white", "silver", "rose gold", "matte", "graphite"), ("wireless", "noise-cancelling", "bluetooth", "studio"), ("Sonique", "Auralis", "Bassline", "Tonic"), 90.0, 0.8),
    "electronics/audio/speakers": (("speaker", "soundbar", "smart speaker", "bookshelf speakers"), ("black", "walnut", "grey", "white", "fabric", "aluminium"), ("portable", "waterproof", "wireless", "compact"), ("Sonique", "Boomcraft", "Auralis", "Resono"), 110.0, 0.75),
    "electronics/phones/cases": (("phone case", "wallet case", "bumper case", "screen protector"), ("clear", "silicone", "leather", "black", "transparent", "carbon"), ("shockproof", "slim", "magnetic", "rugged"), ("Shieldly", "Caseon", "Armr", "Gripp"), 18.0, 0.45),
    "electronics/computers/keyboards": (("keyboard", "mechanical keyboard", "mouse", "keyboard and mouse set"), ("black", "white", "RGB", "aluminium", "grey", "pink"), ("wireless", "ergonomic", "compact", "gaming"), ("Keyzen", "Tactyl", "Logix", "Clickr"), 60.0, 0.6),
    "electronics/wearables/smartwatches": (("smartwatch", "fitness tracker", "watch band", "sports watch"), ("black", "silver", "silicone", "steel", "rose gold", "blue"), ("waterproof", "GPS", "slim", "sport"), ("Pulse", "Chronix", "Fitwave", "Orbit"), 150.0, 0.7),
    "home/kitchen/cookware": (("frying pan", "saucepan", "dutch oven", "wok"), ("cast iron", "stainless steel", "non-stick", "copper", "ceramic", "enamel"), ("heavy-duty", "induction-ready", "professional", "classic"), ("Ferro", "Cucina", "Panhaus", "Chefline"), 55.0, 0.55),
    "home/kitchen/coffee": (("coffee grinder", "french press", "espresso cups", "pour-over kettle"), ("glass", "stainless steel", "ceramic", "matte black", "bamboo", "copper"), ("manual", "electric", "barista", "compact"), ("Brewt", "Cafeo", "Morning Co", "Kaffa"), 40.0, 0.6),
    "home/decor/lamps": (("table lamp", "floor lamp", "pendant light", "desk lamp"), ("brass", "rattan", "white", "marble", "black", "linen"), ("modern", "dimmable", "minimalist", "vintage"), ("Lumeo", "Nordlys", "Atelier", "Glowhaus"), 75.0, 0.6),
    "home/bedding/sheets": (("sheet set", "duvet cover", "pillowcases", "fitted sheet"), ("cotton", "linen", "white", "sage", "bamboo", "grey"), ("soft", "breathable", "organic", "percale"), ("Slumbr", "Linnea", "Restwell", "Dreamfold"), 60.0, 0.45),
    "home/bath/towels": (("bath towel", "hand towel", "bath mat", "towel set"), ("cotton", "white", "turkish cotton", "grey", "waffle", "navy"), ("plush", "quick-dry", "oversized", "organic"), ("Linnea", "Aqualis", "Spa & Co", "Terry"), 25.0, 0.45),
    "beauty/skincare/moisturizers": (("moisturizer", "face cream", "serum", "night cream"), ("hyaluronic", "vitamin C", "aloe", "retinol", "shea", "rose"), ("hydrating", "lightweight", "fragrance-free", "anti-aging"), ("Dermaly", "Glowra", "Purea", "Botanika"), 28.0, 0.6),
    "beauty/makeup/lipstick": (("lipstick", "lip gloss", "lip liner", "lip balm"), ("red", "nude", "berry", "coral", "matte", "pink"), ("long-lasting", "creamy", "velvet", "tinted"), ("Rouge", "Glowra", "Velvetine", "Kissme"), 16.0, 0.4),
    "sports/fitness/yoga": (("yoga mat", "yoga block", "resistance bands", "foam roller"), ("cork", "rubber", "purple", "black", "TPE", "teal"), ("non-slip", "extra-thick", "eco-friendly", "travel"), ("Zenfit", "Asana", "Flowform", "Corely"), 32.0, 0.5),
    "sports/outdoor/tents": (("tent", "sleeping bag", "camping chair", "backpack"), ("green", "orange", "nylon", "ripstop", "grey", "canvas"), ("ultralight", "waterproof", "4-season", "pop-up"), ("Summit", "Trailhead", "Fjellman", "Basecamp"), 140.0, 0.7),
    "toys/kids/building": (("building set", "blocks", "puzzle", "construction kit"), ("wooden", "colourful", "plastic", "magnetic", "rainbow", "natural"), ("educational", "classic", "creative", "deluxe"), ("Brixo", "Playnest", "Tinkr", "Woodland Toys"), 35.0, 0.6),
    "grocery/pantry/tea": (("green tea", "black tea", "herbal tea", "tea sampler"), ("loose-leaf", "jasmine", "earl grey", "chamomile", "matcha", "mint"), ("organic", "premium", "decaf", "fair-trade"), ("Teavana Hills", "Leafwise", "Chaiya", "Brewt"), 12.0, 0.45),
    "pets/dogs/toys": (("chew toy", "rope toy", "dog bed", "leash"), ("rubber", "cotton", "blue", "plush", "nylon", "red"), ("durable", "squeaky", "orthopedic", "reflective"), ("Pawly", "Barkbox Co", "Furrend", "Wagz"), 20.0, 0.55),
}
CATEGORIES: tuple[str, ...] = tuple(TAXONOMY)
VERTICALS: tuple[str, ...] = tuple(sorted({c.split("/")[0] for c in CATEGORIES}))


@dataclass
class Catalog:
    """One shop's catalog in index form: products sorted by (category, price)."""

    shop_id: str
    categories: list[str]  # category paths this shop carries
    cat_popularity: np.ndarray  # float, sums to 1: how often buyers land in each category
    cat_start: np.ndarray  # int64 [n_cat + 1]: product index range of each category
    price: np.ndarray  # float64 per product
    product_ids: pa.Array  # string per product
    queries: pa.Array  # all query strings of the shop
    query_start: np.ndarray  # int64 [n_cat + 1]: query index range of each category
    table: pa.Table  # CATALOG_SCHEMA rows


def _check_vocab() -> None:
    """Titles and queries are written unquoted to CSV: no comma, quote or newline anywhere."""
    for path, (nouns, mats, adjs, brands, _, _) in TAXONOMY.items():
        for w in (path, *nouns, *mats, *adjs, *brands):
            if any(ch in w for ch in ',"\n\r'):
                raise ValueError(f"vocabulary word {w!r} in {path} has a CSV special character")


def build_catalog(shop_id: str, n_products: int, n_categories: int, rng: np.random.Generator) -> Catalog:
    """Draw a shop's categories (focused on one or two verticals) and `n_products` products."""
    _check_vocab()
    n_categories = max(1, min(n_categories, len(CATEGORIES)))
    # Shop focus: categories in the shop's favourite verticals are 8x as likely to be picked.
    fav = rng.choice(len(VERTICALS), size=min(2, len(VERTICALS)), replace=False)
    fav_names = {VERTICALS[i] for i in fav}
    w = np.array([8.0 if c.split("/")[0] in fav_names else 1.0 for c in CATEGORIES])
    picked = np.sort(rng.choice(len(CATEGORIES), size=n_categories, replace=False, p=w / w.sum()))
    cats = [CATEGORIES[i] for i in picked]
    popularity = rng.dirichlet(np.full(len(cats), 2.0))
    # Products per category ∝ popularity (at least 3 each).
    n_products = max(n_products, 3 * len(cats))
    counts = np.maximum(3, np.floor(popularity * (n_products - 3 * len(cats))).astype(np.int64) + 3)
    rows: dict[str, list] = {k: [] for k in ("title", "collection", "brand", "price", "description")}
    prices_all = []
    queries: list[str] = []
    q_start = [0]
    for cat, n in zip(cats, counts):
        nouns, mats, adjs, brands, median, sigma = TAXONOMY[cat]
        shop_brands = [brands[i] for i in np.sort(rng.choice(len(brands), size=rng.integers(2, len(brands) + 1), replace=False))]
        brand_premium = dict(zip(shop_brands, np.exp(rng.normal(0.0, 0.25, len(shop_brands)))))
        ni, mi, ai, bi = (rng.integers(0, len(x), n) for x in (nouns, mats, adjs, shop_brands))
        price = median * np.exp(rng.normal(0.0, sigma, n)) * np.array([brand_premium[shop_brands[b]] for b in bi])
        price = np.maximum(0.99, np.round(np.round(price) - 0.01, 2))
        order = np.argsort(price, kind="stable")
        for j in order:
            noun, mat, adj, brand = nouns[ni[j]], mats[mi[j]], adjs[ai[j]], shop_brands[bi[j]]
            rows["title"].append(f"{brand} {adj.capitalize()} {mat} {noun}")
            rows["collection"].append(cat)
            rows["brand"].append(brand)
            rows["description"].append(f"A {adj} {noun} in {mat} from {brand}.")
        prices_all.append(price[order])
        # Queries of this category: nouns, material + noun, adjective + noun, brand + noun words.
        head = cat.split("/")[-1]
        qs = [head, *nouns]
        qs += [f"{m} {nn}" for m in mats for nn in nouns[:2]]
        qs += [f"{a} {nn}" for a in adjs for nn in nouns[:2]]
        qs += [f"{b} {nn}" for b in shop_brands for nn in nouns[:1]]
        queries += [q.lower() for q in qs]
        q_start.append(len(queries))
    price = np.concatenate(prices_all)
    n_total = len(price)
    width = max(5, len(str(n_total - 1)))
    pids = [f"p{i:0{width}d}" for i in range(n_total)]
    table = pa.table(
        {
            "shop_id": pa.array([shop_id] * n_total, pa.string()),
            "product_id": pa.array(pids, pa.string()),
            "title": pa.array(rows["title"], pa.string()),
            "collection": pa.array(rows["collection"], pa.string()),
            "brand": pa.array(rows["brand"], pa.string()),
            "price": pa.array(price, pa.float64()),
            "description": pa.array(rows["description"], pa.string()),
        },
        schema=CATALOG_SCHEMA,
    )
    return Catalog(
        shop_id=shop_id,
        categories=cats,
        cat_popularity=popularity,
        cat_start=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        price=price,
        product_ids=table.column("product_id").combine_chunks(),
        queries=pa.array(queries, pa.string()),
        query_start=np.array(q_start, dtype=np.int64),
        table=table,
    )
