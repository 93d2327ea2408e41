"""API keys: made, hashed and named; refusals of a key or of what it asks."""

from __future__ import annotations

import hashlib
import re
import secrets

from aftersales.engine.domain.errors import AftersalesError

# Keys ------------------------------------------------------------------------------------------

KEY_PREFIX = "ask_"
_KEY = re.compile(r"^ask_([0-9a-f]{16})_([A-Za-z0-9_-]{43,})$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")


def new_key() -> tuple[str, str]:
    """A new key and its id: 256 random bits, and 64 more for the id."""
    key_id = secrets.token_hex(8)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id a key claims to have (not a secret), or None if it is not shaped like a key."""
    found = _KEY.match(key)
    return found.group(1) if found else None


class Unauthenticated(AftersalesError):
    """No key, or a key that is unknown, revoked or expired."""

    code = "unauthenticated"


class Forbidden(AftersalesError):
    """A known principal acting outside its rights."""

    code = "forbidden"
