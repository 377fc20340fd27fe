"""De-identification: buyer and session ids become HMAC-SHA256(salt, id) at ingestion.

The hash is computed inside DuckDB (two SHA-256 passes over the padded key, RFC 2104), so a
billion-row log never round-trips through Python; `hash_id` is the same function in Python,
used to key other tables (e.g. a generator's ground truth) to the ingested ids.

The salt (HMAC key) never sits beside the data: it is `--salt HEX`, else `$SIMPERSONA_SALT`
(hex), else the installation's key file, `$SIMPERSONA_SALT_FILE` or
`$XDG_CONFIG_HOME/simpersona/salt.hex` (`~/.config/...`), created with mode 0600 on first use.
The same input therefore gets the same ids run after run on one installation; the ingest
summary records only `salt_id`, a fingerprint that names the key without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from simpersona.events.validate import IngestError

SALT_ENV = "SIMPERSONA_SALT"
SALT_FILE_ENV = "SIMPERSONA_SALT_FILE"
SESSION_HEX = 16  # hex digits kept of a session id's HMAC (64 bits; ids are unique within a buyer)
_BLOCK = 64  # SHA-256 block size in bytes


class SaltError(IngestError):
    """A salt that cannot be used: not hex, too short, or not the one an ingest folder was keyed with."""


def new_salt() -> bytes:
    """A fresh 32-byte random key."""
    return secrets.token_bytes(32)


def parse_salt(text: str, where: str = "salt") -> bytes:
    """A user-supplied salt: hex digits (at least 16 bytes' worth); `where` names its origin in errors."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise SaltError(f"{where}: salt must be hex digits (e.g. 64 of them), got {text.strip()[:12]!r}") from None
    if len(key) < 16:
        raise SaltError(f"{where}: salt must be at least 16 bytes (32 hex digits), got {len(key)} bytes")
    return key


def salt_file() -> Path:
    """The installation's key file: `$SIMPERSONA_SALT_FILE`, else `$XDG_CONFIG_HOME/simpersona/salt.hex`."""
    if os.environ.get(SALT_FILE_ENV):
        return Path(os.environ[SALT_FILE_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "simpersona" / "salt.hex"


def salt_id(key: bytes) -> str:
    """A short public fingerprint of a key (not usable to hash ids).

    >>> salt_id(bytes(16))
    '0c30821337f111ad'
    """
    return hashlib.sha256(b"simpersona salt id\0" + key).hexdigest()[:16]


def load_or_create_salt(given: str | None = None) -> tuple[bytes, str]:
    """The key to use and where it came from: `given` > `$SIMPERSONA_SALT` > the key file
    (created 0600, with a 0700 folder, when missing). Never writes anywhere else."""
    if given:
        return parse_salt(given, "--salt"), "given (--salt)"
    if os.environ.get(SALT_ENV):
        return parse_salt(os.environ[SALT_ENV], f"${SALT_ENV}"), f"${SALT_ENV}"
    path = salt_file()
    if path.exists():
        return _read_key_file(path), f"key file {path}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_salt().hex() + "\n")
        try:
            os.link(tmp, path)  # atomic, and never replaces a key another process just made
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    except OSError as e:
        raise SaltError(f"{path}: cannot create the salt key file ({e.strerror}); set ${SALT_ENV} or "
                        f"${SALT_FILE_ENV}, or pass --salt") from None
    return _read_key_file(path), f"new key file {path}"


def _read_key_file(path: Path) -> bytes:
    try:
        return parse_salt(path.read_text(), str(path))
    except OSError as e:
        raise SaltError(f"{path}: cannot read the salt key file ({e.strerror})") from None


def ingest_key(ingest_dir: Path, given: str | None = None) -> bytes:
    """The key an ingest folder's ids were made with, to hash other raw ids the same way.

    It is the current key (see `load_or_create_salt`) when its `salt_id` matches the one in
    `ingest_dir/summary.json`; a SaltError saying so otherwise (e.g. after a rotation).
    """
    summary = Path(ingest_dir) / "summary.json"
    try:
        want = json.loads(summary.read_text())["salt_id"]
    except (OSError, ValueError, KeyError):
        raise SaltError(f"{summary}: no salt_id recorded; re-run `simpersona ingest` into {ingest_dir}") from None
    key, origin = load_or_create_salt(given)
    if salt_id(key) != want:
        raise SaltError(f"{ingest_dir} was keyed with salt {want}, but the current key ({origin}) is "
                        f"{salt_id(key)}: set ${SALT_ENV} to the key used then, or re-run the ingest")
    return key


def hash_id(raw: str, key: bytes) -> str:
    """HMAC-SHA256 of one id, hex.

    >>> hash_id("b1", bytes(16))[:16]
    '205e63ead3859b65'
    """
    return hmac.new(key, raw.encode("utf-8"), hashlib.sha256).hexdigest()


def hash_session(raw: str, key: bytes) -> str:
    """A session id's keyed hash, shortened to SESSION_HEX hex digits."""
    return hash_id(raw, key)[:SESSION_HEX]


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
