"""The 403-d buyer input vector layout (the features → persona contract).

x = [16 normalised scalars | viewed channel (128) | carted channel (128) | purchased channel (128)
     | masks (viewed, carted, purchased)]. A channel whose mask is 0 is all zeros.
"""

from __future__ import annotations

from simpersona.contracts.labels import STRATA  # noqa: F401  (features write the strata; imported from here too)

SCALAR_NAMES: tuple[str, ...] = (
    # exposure & volume (8); the 8th (implementer's choice) = sessions with a purchase
    "n_sessions",
    "active_days",
    "sessions_with_view",
    "sessions_with_atc",
    "sessions_with_checkout",
    "sessions_with_search",
    "sessions_with_collection",
    "sessions_with_purchase",
    # engagement (2)
    "total_duration_s",
    "total_product_views",
    # funnel (3), per session
    "atc_rate",
    "checkout_rate",
    "browse_only_rate",
    # intent strength (1)
    "intent_strength",
    # dollar values (2)
    "avg_cart_value",
    "avg_order_value",
)
N_SCALARS = 16
CHANNEL_DIM = 128
CHANNELS: tuple[str, ...] = ("viewed", "carted", "purchased")

SCALARS = slice(0, N_SCALARS)
VIEWED = slice(N_SCALARS, N_SCALARS + CHANNEL_DIM)  # 16:144
CARTED = slice(N_SCALARS + CHANNEL_DIM, N_SCALARS + 2 * CHANNEL_DIM)  # 144:272
PURCHASED = slice(N_SCALARS + 2 * CHANNEL_DIM, N_SCALARS + 3 * CHANNEL_DIM)  # 272:400
CHANNEL_SLICES: tuple[slice, ...] = (VIEWED, CARTED, PURCHASED)
MASKS = slice(N_SCALARS + 3 * CHANNEL_DIM, N_SCALARS + 3 * CHANNEL_DIM + 3)  # 400:403
INPUT_DIM = N_SCALARS + 3 * CHANNEL_DIM + 3  # 403

assert len(SCALAR_NAMES) == N_SCALARS
assert INPUT_DIM == 403
