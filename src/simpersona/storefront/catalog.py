"""Shops built from the canonical catalog: products, collections (category paths) and search."""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from simpersona.events.schema import CATALOG_COLUMNS, CATALOG_SCHEMA
from simpersona.storefront.config import StorefrontError

_WORD = re.compile(r"\w+")
# Columns a catalog must have.
REQUIRED = ("shop_id", "product_id", "title")


def words(text: str | None) -> list[str]:
    """Lower-case word tokens of `text`."""
    return _WORD.findall(text.lower()) if text else []


@dataclass(frozen=True)
class Product:
    product_id: str
    title: str
    collection: str | None
    brand: str | None
    price: float | None
    description: str | None


class Shop:
    """One shop's products in catalog order, its collections and a small search index."""

    def __init__(self, shop_id: str, products: list[Product]):
        self.shop_id = shop_id
        self.products: dict[str, Product] = {}
        for p in products:
            self.products.setdefault(p.product_id, p)
        self.order = list(self.products)
        # Every collection path and each of its prefixes → number of products under it.
        self.collection_sizes: dict[str, int] = defaultdict(int)
        self.leaves: dict[str, int] = defaultdict(int)
        for p in self.products.values():
            if p.collection:
                self.leaves[p.collection] += 1
                parts = p.collection.split("/")
                for i in range(1, len(parts) + 1):
                    self.collection_sizes["/".join(parts[:i])] += 1
        self._index: dict[str, dict[str, int]] | None = None  # word → {product: weight}, built by the first search
        self._answers: dict[tuple, list] = {}  # collection queries answered so far (the shop never changes)

    def _search_index(self) -> dict[str, dict[str, int]]:
        """word → {product_id: weight}; built on first use (most simulated shops are never searched,
        and the index was ~70% of building Taobao's 4 shops of ~22k products, 1.8 s in all, in a
        cProfile of the real-log main job)."""
        if self._index is None:
            index: dict[str, dict[str, int]] = defaultdict(dict)
            for pid, p in self.products.items():
                for weight, text in ((3, p.title), (2, p.collection), (2, p.brand)):
                    for w in set(words(text)):
                        index[w][pid] = index[w].get(pid, 0) + weight
            self._index = dict(index)
        return self._index

    def _once(self, key: tuple, make) -> list:
        """`make()`, computed once per key of a known collection (or the home page's limit); a
        copy, so the caller may change it."""
        if key[0] != "top" and key[1] not in self.collection_sizes:
            return make()
        hit = self._answers.get(key)
        if hit is None:
            hit = self._answers[key] = make()
        return list(hit)

    def collections(self, limit: int) -> list[str]:
        """Leaf collections, the largest first, then by name."""
        return self._once(("top", limit), lambda: sorted(self.leaves, key=lambda c: (-self.leaves[c], c))[:limit])

    def in_collection(self, path: str) -> list[Product]:
        """Products whose collection is `path` or lies under it, in catalog order."""
        prefix = path + "/"
        return self._once(("in", path), lambda: [
            p
            for p in self.products.values()
            if p.collection is not None and (p.collection == path or p.collection.startswith(prefix))
        ])

    def subcollections(self, path: str) -> list[str]:
        """Direct children of `path` that hold products."""
        depth = path.count("/") + 1
        prefix = path + "/"
        return self._once(("sub", path), lambda: sorted(c for c in self.collection_sizes if c.startswith(prefix) and c.count("/") == depth))

    def search(self, query: str) -> list[Product]:
        """Products ranked by matched query words (title ×3, collection ×2, brand ×2; a title
        containing the whole query +5), ties by title then id; no match → empty."""
        scores: dict[str, int] = defaultdict(int)
        index = self._search_index()
        for w in set(words(query)):
            for pid, s in index.get(w, {}).items():
                scores[pid] += s
        phrase = query.strip().lower()
        for pid in scores:
            if phrase and phrase in self.products[pid].title.lower():
                scores[pid] += 5
        ranked = sorted(scores, key=lambda pid: (-scores[pid], self.products[pid].title, pid))
        return [self.products[pid] for pid in ranked]


def sort_products(products: list[Product], order: str, price=lambda p: p.price) -> list[Product]:
    """`products` in a variant's order: "catalog" / "relevance" (as given), "price_asc",
    "price_desc" (by `price(p)`, the price served; no price last) or "title"."""
    if order == "price_asc":
        return sorted(products, key=lambda p: (price(p) is None, price(p) or 0.0))
    if order == "price_desc":
        return sorted(products, key=lambda p: (price(p) is None, -(price(p) or 0.0)))
    if order == "title":
        return sorted(products, key=lambda p: p.title)
    return list(products)


def read_catalog(path: Path | str) -> pa.Table:
    """The catalog table at `path`, or a StorefrontError naming the path and the problem."""
    path = Path(path)
    if not path.exists():
        raise StorefrontError(f"catalog {path} does not exist")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        hint = " (a CSV? run `simpersona ingest` to build catalog.parquet)" if path.suffix.lower() in (".csv", ".tsv", ".txt") else ""
        raise StorefrontError(f"catalog {path} is not a readable Parquet file{hint}: {str(e).splitlines()[0][:200]}") from None


# Shops of the catalog files loaded in this process, by path and content digest: a behaviour stage
# serves the same catalog to a dozen simulations and storefront apps, and a real log's catalog takes
# seconds to build (86,747 Taobao products: 1.8 s; hashing its file: milliseconds). Shops never
# change once built; the newest few are kept.
_LOADED: dict[tuple, dict[str, Shop]] = {}
_KEEP = 4


def load_catalog(catalog: pa.Table | Path | str) -> dict[str, Shop]:
    """Shops by id from a canonical catalog table or Parquet file (CATALOG_SCHEMA columns;
    shop_id, product_id and title required). Problems raise StorefrontError naming the catalog
    and the column. A price that is not a finite number ≥ 0 shows as "price on request".
    A file loaded before in this process and unchanged since gives the same (read-only) shops."""
    if isinstance(catalog, pa.Table):
        return _build_shops(catalog, "catalog")
    path = Path(catalog)
    try:
        with path.open("rb") as f:
            key = (str(path.resolve()), hashlib.file_digest(f, "blake2b").hexdigest())
    except OSError:
        key = None  # read_catalog says what is wrong with it
    if key is not None and key in _LOADED:
        return _LOADED[key]
    shops = _build_shops(read_catalog(path), f"catalog {catalog}")
    if key is not None:
        _LOADED[key] = shops
        while len(_LOADED) > _KEEP:
            del _LOADED[next(iter(_LOADED))]
    return shops


def _build_shops(table: pa.Table, where: str) -> dict[str, Shop]:
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise StorefrontError(f"{where} lacks column(s) {missing}; expected {list(CATALOG_COLUMNS)}")
    cols = {}
    for f in CATALOG_SCHEMA:
        if f.name not in table.column_names:
            cols[f.name] = [None] * table.num_rows
            continue
        try:
            cols[f.name] = table.column(f.name).cast(f.type).to_pylist()
        except (pa.ArrowException, ValueError) as e:
            raise StorefrontError(f"{where}: column {f.name} holds {table.schema.field(f.name).type}, "
                                  f"not {f.type} ({str(e).splitlines()[0][:120]})") from None
    by_shop: dict[str, list[Product]] = defaultdict(list)
    for i in range(table.num_rows):
        shop, pid, title = cols["shop_id"][i], cols["product_id"][i], cols["title"][i]
        if shop is None or pid is None:
            continue
        price = cols["price"][i]
        if price is not None and not (math.isfinite(price) and price >= 0):  # NaN, ±inf, negatives
            price = None
        by_shop[shop].append(
            Product(pid, title or pid, cols["collection"][i] or None, cols["brand"][i] or None, price, cols["description"][i])
        )
    return {s: Shop(s, ps) for s, ps in sorted(by_shop.items())}
