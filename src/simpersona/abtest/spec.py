"""The variant spec: a YAML mapping of `storefront.config.VariantConfig` fields (what arm B changes),
read through the one config loader (an unknown or ill-typed field is an error naming it), and
checked against the shops before any episode runs.

    name: big-pages          # the experiment's name (logged with each session)
    page_size: 24            # B: products per collection / search page (A: storefront.page_size)
    sort_order: price_asc    # B: collection order (catalog, price_asc, price_desc, title)
    search_ranking: relevance
    free_shipping_banner: false
    price_collection: ""     # with price_factor: B's prices of this collection (path prefix)
    price_factor: 1.0
    home_order: catalog
    extra_checkout_step: false
    share_b: 0.5             # unpaired design: share of buyers on B

A spec is a file by path, or by name one shipped under `simpersona/presets/variants/` (`big-pages`:
products per page 12 → 24, the main job's default experiment).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from simpersona.config import PRESET_DIR, ConfigError, resolve
from simpersona.contracts.experiment import VariantConfig

# The variant specs shipped with the package (`spec_path` finds them by name).
VARIANT_DIR = PRESET_DIR / "variants"


def spec_path(name_or_path: Path | str) -> Path:
    """A variant spec file by path, or by name under `simpersona/presets/variants/` (`big-pages` →
    big-pages.yaml); a name of neither is returned as given (reading it then fails, naming it)."""
    p = Path(name_or_path)
    named = VARIANT_DIR / f"{name_or_path}.yaml"
    return named if not p.exists() and named.exists() else p


def read_spec(path: Path | str, base: VariantConfig | None = None) -> VariantConfig:
    """The variant in the YAML file at `path` (its keys over `base`'s values); a ConfigError names
    the file and the field."""
    path = spec_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        shipped = sorted(q.stem for q in VARIANT_DIR.glob("*.yaml"))
        raise ConfigError(f"variant spec {path}: cannot read it ({e.strerror or e}); a file, or one of the shipped specs {shipped}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"variant spec {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"variant spec {path}: expected a mapping of VariantConfig fields, got {type(data).__name__}")
    try:
        return resolve(VariantConfig, {"variant": {**dataclasses.asdict(base or VariantConfig()), **data}}, "variant")
    except ConfigError as e:
        raise ConfigError(f"variant spec {path}: {e}") from None


def changes(v: VariantConfig, page_size: int) -> list[str]:
    """What arm B changes, in words ([] = nothing); `page_size`: arm A's products per page.

    >>> changes(VariantConfig(page_size=24, free_shipping_banner=True), 12)
    ['free-shipping banner', 'page size 12 → 24']
    """
    out = []
    if v.free_shipping_banner:
        out.append("free-shipping banner")
    if v.price_collection and v.price_factor != 1.0:
        out.append(f"prices ×{v.price_factor:g} in {v.price_collection}")
    if v.home_order != "catalog":
        out.append(f"home order {v.home_order}")
    if v.extra_checkout_step:
        out.append("extra checkout step")
    if v.page_size > 0 and v.page_size != page_size:
        out.append(f"page size {page_size} → {v.page_size}")
    if v.sort_order != "catalog":
        out.append(f"collection order {v.sort_order}")
    if v.search_ranking != "relevance":
        out.append(f"search ranking {v.search_ranking}")
    return out


def check_variant(v: VariantConfig, shops: dict, page_size: int, aa: bool = False) -> list[str]:
    """The variant's changes (`changes`), or a ConfigError before any episode runs: a share outside
    (0, 1), a price change half given, a price factor ≤ 0, a negative page size, a collection that
    none of `shops` (id → storefront `Shop`) has, or — unless `aa` (an A/A test) — no change at all."""
    if not 0.0 < v.share_b < 1.0:
        raise ConfigError(f"variant.share_b must lie in (0, 1), got {v.share_b}")
    if v.page_size < 0:
        raise ConfigError(f"variant.page_size must be ≥ 0 (0: as arm A), got {v.page_size}")
    if not v.price_factor > 0:
        raise ConfigError(f"variant.price_factor must be > 0, got {v.price_factor}")
    if v.price_factor != 1.0 and not v.price_collection:
        raise ConfigError(f"variant.price_factor {v.price_factor:g} needs variant.price_collection (the collection whose prices change)")
    if v.price_collection:
        path = v.price_collection.strip("/")
        if not any(path in s.collection_sizes for s in shops.values()):
            known = sorted({c for s in shops.values() for c in s.collection_sizes if "/" not in c})
            raise ConfigError(f"variant.price_collection {v.price_collection!r} is a collection of none of the shops "
                              f"{sorted(shops)[:6]}; top-level collections there: {known[:12]}")
        if v.price_factor == 1.0:
            raise ConfigError(f"variant.price_collection {v.price_collection!r} is given but variant.price_factor is 1 (no price change)")
    found = changes(v, page_size)
    if not found and not aa:
        raise ConfigError("the variant spec changes nothing: arm B would be arm A (set a change, e.g. page_size, "
                          "sort_order, search_ranking, free_shipping_banner, price_collection + price_factor, "
                          "home_order, extra_checkout_step; or run an A/A test with aa: true)")
    return found
