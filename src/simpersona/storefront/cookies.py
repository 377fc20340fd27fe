"""Signed visitor cookies. `sp_buyer` and `sp_session` carry the visitor's ids and `sp_variant`
the A/B variant, each with an HMAC-SHA256 tag made with a server-side key, so a client can neither
pose as another visitor (the ids are in the event log, the tags are not) nor pick its variant.

Values: `{id}.{tag}` for sp_buyer and sp_session, `{A|B}.{tag}` for sp_variant with its tag bound
to the session id; the tag is 22 characters of base64url(HMAC-SHA256(key, name|value|session)),
128 bits. A cookie without a valid tag is ignored: the visitor gets fresh ids, and the variant is
drawn from the session id (`Store.variant_of`). Only a key holder mints cookies: the server, and
an agent harness given the key (`ShopEnv` through its transport) to choose ids and variants.

Where the key lives: an in-process app (`create_app` without `cookie_key_file`) draws a fresh key;
`simpersona storefront serve` keeps one in a user-level file, `default_key_file()` =
`$XDG_CONFIG_HOME/simpersona/storefront.key` (`~/.config/…`), created with mode 0600 on first use,
so buyers stay the same buyers across restarts. Another file: `storefront.cookie_key_file`.
Rotation: replace or delete the file and restart; every earlier cookie stops being honoured and
visitors get new ids (carts live in server memory and end with the process anyway).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from simpersona.storefront.config import StorefrontError

# A visitor id as the server issues it (and an agent may choose).
COOKIE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
BUYER, SESSION, VARIANT = "sp_buyer", "sp_session", "sp_variant"
KEY_BYTES = 32


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def default_key_file() -> Path:
    """The user-level key file `serve` uses unless told otherwise."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "simpersona" / "storefront.key"


def load_or_create_key(path: Path) -> tuple[bytes, bool]:
    """(key, created): the key in `path` (hex), or a new one written there with mode 0600."""
    path = Path(path)
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = new_key()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key.hex() + "\n")
            return key, True
        text = path.read_text().strip()
    except OSError as e:
        raise StorefrontError(f"cookie key file {path}: {e.strerror or e}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise StorefrontError(f"cookie key file {path} must hold hex digits") from None
    if len(key) < 16:
        raise StorefrontError(f"cookie key file {path} holds {len(key)} bytes; at least 16 (32 hex digits) needed")
    return key, False


def _tag(key: bytes, name: str, value: str, session: str) -> str:
    mac = hmac.new(key, f"{name}|{value}|{session}".encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode()


def sign(key: bytes, name: str, value: str, session: str = "") -> str:
    """The cookie value carrying `value` (`session`: the session id a variant is bound to)."""
    return f"{value}.{_tag(key, name, value, session)}"


def verify(key: bytes, name: str, cookie: str | None, session: str = "") -> str | None:
    """The value a cookie carries when its tag is valid, else None (any string is safe to pass)."""
    value, dot, tag = (cookie or "").rpartition(".")
    if not dot or not COOKIE_ID.match(value):
        return None
    expected = _tag(key, name, value, session)
    return value if hmac.compare_digest(tag.encode("utf-8", "surrogatepass"), expected.encode()) else None


def visitor_cookies(key: bytes, buyer_id: str, session_id: str, variant: str | None = None) -> dict[str, str]:
    """The signed cookies of a visitor with these ids (and variant, when given)."""
    cookies = {BUYER: sign(key, BUYER, buyer_id), SESSION: sign(key, SESSION, session_id)}
    if variant is not None:
        cookies[VARIANT] = sign(key, VARIANT, variant, session_id)
    return cookies
