"""Shared fixtures: where the real data samples are, and small helpers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import shutil
import tempfile
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


def pytest_configure(config):
    """Tests never touch the user's salt key file: one key file for the session, in a tmp folder, set
    before any fixture runs (module-scoped fixtures fabricate hashed ids too)."""
    from simpersona.events import deid

    os.environ.pop(deid.SALT_ENV, None)
    os.environ[deid.SALT_FILE_ENV] = str(Path(tempfile.mkdtemp(prefix="simpersona-test-salt-")) / "salt.hex")


def pytest_unconfigure(config):
    from simpersona.events import deid

    shutil.rmtree(Path(os.environ.get(deid.SALT_FILE_ENV, "/nonexistent")).parent, ignore_errors=True)


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    """A small tmpfs at `path` (root only); skips the test where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if p.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def tmpfs():
    """`with tmpfs(path, "size=96k") as disk:` — a real small (or read-only) disk for operator-error tests."""
    return _tmpfs
