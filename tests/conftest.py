"""Shared fixtures: where the real data samples are, and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`$SIMPERSONA_SHARED`, or `../shared` beside the repository."""
    return Path(os.environ.get("SIMPERSONA_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_dir() / "data"
    if not d.exists():
        pytest.skip(f"real data samples not found at {d} (set SIMPERSONA_SHARED)")
    return d
