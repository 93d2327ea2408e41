"""The desk's sessions: a key exchanged at sign-in for a session kept in the store.

A session's token reads ``ads_<session_id>_<secret>``: the session id (random, not a secret:
listed and revoked by it) finds the row, and only the token's SHA-256 hash is stored, compared in
constant time as a key's is. A session belongs to the principal and the key it was started with,
and ends at the first of: its idle time without a request (``last_seen_at`` + ``idle_seconds``),
its absolute end (``expires_at``), signing out, its revocation (``aftersales principal
end-session``), or its key's revocation or expiry. Starting and ending one is appended to the
access log, as key changes are; its use (``last_seen_at``) is not.

The desk's cookie holds the token only, never the key (``commands/desk/session.py``).
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aftersales.engine.access.api_keys import Unauthenticated, key_hash, key_id_of
from aftersales.engine.access.credential_cache import (
    Grant,
    forget_everywhere,
    principals_of,
    revocation_statements,
)
from aftersales.engine.access.principal_store import (
    _log,
    _principal,
    _when,
    find_principal,
    grant_keys,
)
from aftersales.engine.access.scopes import Principal
from aftersales.engine.domain.errors import BadInput, NotAllowed, NotFound
from aftersales.engine.storage.sql import (
    KEYS_TABLE,
    PRINCIPALS_TABLE,
    SESSIONS_TABLE,
    Dialect,
    parse_stored_time,
)
from aftersales.engine.storage.store import AftersalesStore

SESSION_PREFIX = "ads_"
_TOKEN = re.compile(r"^ads_([0-9a-f]{16})_([A-Za-z0-9_-]{43,})$")
_SESSION_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True, slots=True)
class SessionTerms:
    """How long a session lasts: ``idle`` without a request, ``lifetime`` at most."""

    idle: timedelta = timedelta(hours=12)
    lifetime: timedelta = timedelta(days=7)

    def __post_init__(self) -> None:
        if self.idle <= timedelta(0) or self.lifetime <= timedelta(0):
            raise BadInput("a session's idle time and lifetime must be positive")


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*$")
UNITS = {"s": 1, None: 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d`` (a bare number is seconds)."""
    found = DURATION.match(text)
    if not found or float(found.group(1)) <= 0:
        raise BadInput(f"{what} {text!r} is not a duration such as 90s, 30m, 12h or 7d")
    return timedelta(seconds=float(found.group(1)) * UNITS[found.group(2)])


def session_id_of(token: str) -> str | None:
    """The id a session token claims (not a secret), or None if it is not shaped like one."""
    found = _TOKEN.match(token)
    return found.group(1) if found else None


def start_session(
    store: AftersalesStore,
    principal: Principal,
    key: str,
    now: datetime,
    terms: SessionTerms,
) -> tuple[str, dict[str, Any]]:
    """A new session for a principal signed in with its key (already authenticated): the token
    (never stored) and what is recorded."""
    key_id = key_id_of(key)
    if key_id is None:
        raise BadInput("a session is started with a key")
    session_id = secrets.token_hex(8)
    token = f"{SESSION_PREFIX}{session_id}_{secrets.token_urlsafe(32)}"
    expires = now + terms.lifetime
    idle = max(1, int(terms.idle.total_seconds()))
    store.write(
        [
            (
                f"INSERT INTO {{t}}{SESSIONS_TABLE} (session_id, token_hash, principal_id, "
                "key_id, created_at, last_seen_at, idle_seconds, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    session_id,
                    key_hash(token),
                    principal.principal_id,
                    key_id,
                    store.time_param(now),
                    store.time_param(now),
                    idle,
                    store.time_param(expires),
                ],
            ),
            _log(
                store,
                now,
                "session started",
                principal.principal_id,
                key_id,
                {"session_id": session_id, "idle_seconds": idle, "expires_at": expires.isoformat()},
            ),
        ]
    )
    return token, {
        "session_id": session_id,
        "principal": principal.principal_id,
        "key_id": key_id,
        "expires_at": expires.isoformat(),
    }


def end_session(
    store: AftersalesStore, session_id: str, at: datetime, why: str = "revoked"
) -> dict[str, Any]:
    """End a session (signed out, or revoked by an operator): its next request is refused."""
    if not _SESSION_ID.match(session_id):
        raise BadInput(f"session id {session_id!r}: 16 hex digits, as sessions lists them")
    rows = store.query(
        f"SELECT principal_id, key_id, revoked_at FROM {{t}}{SESSIONS_TABLE} WHERE session_id = ?",
        [session_id],
    )
    if not rows:
        raise NotFound(f"no session {session_id}")
    row = rows[0]
    if row["revoked_at"] is not None:
        raise NotAllowed(f"session {session_id} ended at {_when(row['revoked_at'])}")
    store.write(
        [
            (
                f"UPDATE {{t}}{SESSIONS_TABLE} SET revoked_at = ?, ended_why = ? "
                "WHERE session_id = ? AND revoked_at IS NULL",
                [store.time_param(at), why, session_id],
            ),
            _log(
                store,
                at,
                "session signed out" if why == "signed out" else "session revoked",
                row["principal_id"],
                row["key_id"],
                {"session_id": session_id, "why": why},
            ),
            *revocation_statements(store),
        ]
    )
    forget_everywhere()
    return {
        "session_id": session_id,
        "principal": row["principal_id"],
        "key_id": row["key_id"],
        "revoked_at": at.isoformat(),
        "why": why,
    }


def _state(row: dict[str, Any], now: datetime) -> str:
    if row["revoked_at"] is not None:
        return "ended"
    expires = parse_stored_time(row["expires_at"])
    last_seen = parse_stored_time(row["last_seen_at"])
    if expires is not None and expires <= now:
        return "expired"
    if last_seen is not None and last_seen + timedelta(seconds=row["idle_seconds"]) <= now:
        return "idle"
    return "active"


def _ended(value: Any, now: datetime) -> bool:
    end = parse_stored_time(value)
    return end is not None and end <= now


def list_sessions(store: AftersalesStore, principal_id: str, now: datetime) -> list[dict[str, Any]]:
    """A principal's sessions, newest first (ids and times only, never a token or its hash)."""
    if find_principal(store, principal_id) is None:
        raise NotFound(f"no principal {principal_id}")
    rows = store.query(
        "SELECT session_id, principal_id, key_id, created_at, last_seen_at, idle_seconds, "
        f"expires_at, revoked_at, ended_why FROM {{t}}{SESSIONS_TABLE} "
        "WHERE principal_id = ? ORDER BY created_at DESC, session_id",
        [principal_id],
    )
    return [
        {
            "session_id": row["session_id"],
            "principal": row["principal_id"],
            "key_id": row["key_id"],
            "state": _state(row, now),
            "created_at": _when(row["created_at"]),
            "last_seen_at": _when(row["last_seen_at"]),
            "idle_seconds": row["idle_seconds"],
            "expires_at": _when(row["expires_at"]),
            "ended_at": _when(row["revoked_at"]),
            "ended_why": row["ended_why"],
        }
        for row in rows
    ]


def authenticate_credentials(
    store: AftersalesStore, credentials: Sequence[str | None], now: datetime
) -> dict[str | None, Principal | Unauthenticated]:
    """``authenticate_many`` for keys and desk sessions' tokens together: a session counts
    while it, its key and its principal do. A session's use moves its idle end on (written
    when it last moved a while ago, not on every request)."""
    return principals_of(grant_credentials(store, credentials, now))


def grant_credentials(
    store: AftersalesStore, credentials: Sequence[str | None], now: datetime
) -> dict[str | None, Grant | Unauthenticated]:
    """``authenticate_credentials``, with each principal's ``Grant``: a session's holds until
    the first of its end, its key's and the time its idle end is next to be moved on (so a
    cache of it asks the store again by then, and the use is written)."""
    tokens = [c for c in credentials if c and session_id_of(c)]
    result = grant_keys(store, [c for c in credentials if c not in tokens], now)
    if not tokens:
        return result
    wanted = sorted({sid for t in tokens if (sid := session_id_of(t))})
    rows = {
        row["session_id"]: row
        for row in store.query(
            "SELECT s.session_id, s.token_hash, s.last_seen_at, s.idle_seconds, s.expires_at, "
            "s.revoked_at, k.revoked_at AS key_revoked_at, k.expires_at AS key_expires_at, "
            f"p.principal_id, p.role, p.merchant_id FROM {{t}}{SESSIONS_TABLE} s "
            f"JOIN {{t}}{KEYS_TABLE} k ON k.key_id = s.key_id "
            f"JOIN {{t}}{PRINCIPALS_TABLE} p ON p.principal_id = s.principal_id "
            f"WHERE s.session_id IN ({Dialect.marks(len(wanted))})",
            wanted,
        )
    }
    touch = []
    for token in tokens:
        row = rows.get(session_id_of(token))
        if row is None or not hmac.compare_digest(row["token_hash"], key_hash(token)):
            result[token] = Unauthenticated("unknown session: sign in again")
        elif row["revoked_at"] is not None or row["key_revoked_at"] is not None:
            result[token] = Unauthenticated("the session has ended: sign in again")
        elif _state(row, now) != "active" or _ended(row["key_expires_at"], now):
            result[token] = Unauthenticated("the session has expired: sign in again")
        else:
            last_seen = parse_stored_time(row["last_seen_at"])
            # Written at most every 60 s (or a tenth of the idle time, if shorter).
            every = min(60.0, row["idle_seconds"] / 10)
            if last_seen is None or (now - last_seen).total_seconds() >= every:
                touch.append(row["session_id"])
                last_seen = now
            ends = [
                last_seen + timedelta(seconds=every),
                *(
                    end
                    for end in (
                        parse_stored_time(row["expires_at"]),
                        parse_stored_time(row["key_expires_at"]),
                    )
                    if end is not None
                ),
            ]
            result[token] = Grant(_principal(row), min(ends))
    if touch:
        store.write(
            [
                (
                    f"UPDATE {{t}}{SESSIONS_TABLE} SET last_seen_at = ? "
                    "WHERE session_id = ? AND revoked_at IS NULL",
                    [store.time_param(now), session_id],
                )
                for session_id in sorted(set(touch))
            ]
        )
    return result
