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


@pytest.fixture(autouse=True)
def _salt_key_file(tmp_path_factory, monkeypatch):
    """Tests never touch the user's salt key file: one key file per test session, in a tmp folder."""
    from simpersona.events import deid

    monkeypatch.delenv(deid.SALT_ENV, raising=False)
    monkeypatch.setenv(deid.SALT_FILE_ENV, str(tmp_path_factory.getbasetemp() / "salt" / "salt.hex"))
