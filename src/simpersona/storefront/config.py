"""Storefront, A/B variant and agent-environment settings (the preset's `storefront:` section)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from simpersona.contracts.experiment import VariantConfig  # the A/B variant (defined with the experiment's metrics)

# Where `storefront serve` logs when no events folder is given (relative to the working directory).
DEFAULT_EVENTS_OUT = Path("storefront-events")


class StorefrontError(ValueError):
    """A storefront input or setting the operator must fix (bad catalog, unwritable events folder,
    bad cookie key); the command line prints it as one line and exits with code 2."""


@dataclass
class EnvConfig:
    """The agent environment (`ShopEnv`)."""

    # Step budget per episode; the step that reaches it ends the episode as truncated.
    max_steps: int = 30
    # Wall-clock limit per episode in seconds (truncated when passed; 0: none, as in the main job's
    # presets, where an outcome must not depend on the machine's load).
    time_limit_s: float = 300.0
    # Token budget of the observation's page text (estimated as characters / chars_per_token).
    obs_token_budget: int = 1500
    # Characters per token for the budget estimate.
    chars_per_token: float = 4.0
    # Share of episodes given variant B when reset() names no variant (drawn from the seed).
    variant_share_b: float = 0.5


@dataclass
class StorefrontConfig:
    """The web shop (`simpersona storefront serve`)."""

    # Canonical catalog.parquet (CATALOG_SCHEMA) to serve; every shop in it gets /s/{shop_id}/.
    catalog: Path | None = None
    # Address to listen on (loopback by default).
    host: str = "127.0.0.1"
    # Port to listen on.
    port: int = 8000
    # Folder for events/ and sessions/ Parquet parts plus meta.json; None keeps events in memory
    # (in-process apps) or, for `serve`, uses DEFAULT_EVENTS_OUT (announced at start).
    events_out: Path | None = None
    # Products per collection or search-results page.
    page_size: int = 12
    # Featured products on the home page.
    featured: int = 8
    # Collections listed on the home page (the largest first).
    home_collections: int = 24
    # Longest accepted search query, in characters (longer is a 400).
    max_query_chars: int = 200
    # Largest quantity of one product in a cart line.
    max_quantity: int = 99
    # Most distinct products in one cart.
    max_cart_lines: int = 50
    # Longest accepted form field, in characters.
    max_field_chars: int = 200
    # Largest accepted request body, in bytes (larger is a 413).
    max_body_bytes: int = 65536
    # Sessions kept in memory (least recently used are dropped past this).
    max_sessions: int = 100_000
    # File holding the key that signs visitor cookies (hex; created with mode 0600 when missing).
    # None: `serve` uses cookies.default_key_file() (~/.config/simpersona/storefront.key); an
    # in-process app draws a fresh key.
    cookie_key_file: Path | None = None
    # Buffered events written as one Parquet part once this many are waiting.
    flush_rows: int = 50_000
    # ... or at most this many seconds after the first of them arrived (each row is journaled at once).
    flush_interval_s: float = 1.0
    # Flat shipping fee shown at checkout (variant B with free shipping charges none).
    shipping_fee: float = 4.95
    # Currency symbol shown before prices.
    currency: str = "$"
    # The A/B variant served to a share of sessions.
    variant: VariantConfig = field(default_factory=VariantConfig)
    # The agent environment's settings.
    env: EnvConfig = field(default_factory=EnvConfig)
