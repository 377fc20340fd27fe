"""Buyer features stage: enrichment, 16 scalars, strata, labels, product channels, 403-d vectors.

`from simpersona.features import run, FeaturesConfig` — loaded lazily so that importing
`simpersona.features.layout` stays light.
"""

from __future__ import annotations

__all__ = ["FeaturesConfig", "run", "inverse_scalars", "load_transforms"]


def __getattr__(name: str):
    if name in __all__:
        from simpersona.features import stage

        return getattr(stage, name)
    raise AttributeError(name)
