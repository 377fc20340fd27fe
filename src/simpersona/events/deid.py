"""De-identification: buyer ids become HMAC-SHA256(salt, raw id) at ingestion.

The hash is computed inside DuckDB (two SHA-256 passes over the padded key, RFC 2104), so a
billion-row log never round-trips through Python; `hash_ids` is the same function in Python,
used to key other tables (e.g. a generator's ground truth) to the ingested ids.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SALT_FILE = "salt.hex"
_BLOCK = 64  # SHA-256 block size in bytes


def new_salt() -> bytes:
    """A fresh 32-byte random key."""
    return secrets.token_bytes(32)


def parse_salt(text: str) -> bytes:
    """A user-supplied salt: hex digits (at least 16 bytes' worth)."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"salt must be hex digits, got {text[:12]!r}…") from None
    if len(key) < 16:
        raise ValueError(f"salt must be at least 16 bytes (32 hex digits), got {len(key)} bytes")
    return key


def load_or_create_salt(out_dir: Path, given: str | None) -> tuple[bytes, str]:
    """The key to use and where it came from: given > `out_dir/salt.hex` > newly generated.

    A generated key is written to `out_dir/salt.hex` (mode 0600) so re-ingesting into the same
    folder keeps ids stable. Returns (key, "given" | "reused" | "generated").
    """
    path = Path(out_dir) / SALT_FILE
    if given:
        return parse_salt(given), "given"
    if path.exists():
        return parse_salt(path.read_text()), "reused"
    key = new_salt()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key.hex() + "\n")
    os.chmod(path, 0o600)
    return key, "generated"


def hash_id(raw: str, key: bytes) -> str:
    """HMAC-SHA256 of one id, hex.

    >>> hash_id("b1", bytes(16))[:16]
    '205e63ead3859b65'
    """
    return hmac.new(key, raw.encode("utf-8"), hashlib.sha256).hexdigest()


def hash_ids(ids, key: bytes) -> list[str]:
    """`hash_id` over an iterable of raw ids."""
    return [hash_id(str(i), key) for i in ids]


def hmac_sql(column: str, key: bytes) -> str:
    """A DuckDB expression computing `hash_id(column, key)` (hex), for use inside a query.

    HMAC(K, m) = H((K' ⊕ opad) ‖ H((K' ⊕ ipad) ‖ m)), K' = K zero-padded to 64 bytes
    (hashed first when longer). The pads are inlined as blob literals.
    """
    k = hashlib.sha256(key).digest() if len(key) > _BLOCK else key
    k = k.ljust(_BLOCK, b"\0")
    ipad = bytes(b ^ 0x36 for b in k)
    opad = bytes(b ^ 0x5C for b in k)

    def blob(b: bytes) -> str:
        return "from_hex('" + b.hex() + "')"

    return f"sha256({blob(opad)} || unhex(sha256({blob(ipad)} || encode({column}))))"
