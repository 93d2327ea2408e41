"""Who may act: principals, their keys, and what each role may do on which cases.

A principal is a merchant's staff member, a buyer (through the platform's apps), a platform
agent, an auditor, a reporting job or an operator. Its role decides which actions and reads it
may take (``MAY``, the one table of rights, used by the HTTP API and by the command line's
``--by`` check alike); the principal decides on which cases (``SCOPE``: a merchant's staff only
its merchant's, a buyer only its own).

Keys are random secrets shown once and stored only as a SHA-256 hash (enough for 256-bit
random secrets: nothing to guess, so no slow hash is needed). A key reads
``ask_<key_id>_<secret>``: the key id finds the row, the secret is compared with its hash in
constant time. Principals and keys are rows that change only by a key's revocation; every
change is also appended to the access log, so an audit can say who held which rights when.
"""

from __future__ import annotations

import getpass
import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from aftersales.engine.access.api_keys import _ID, Unauthenticated, key_hash, key_id_of, new_key
from aftersales.engine.access.credential_cache import (
    Grant,
    forget_everywhere,
    principals_of,
    revocation_statements,
)
from aftersales.engine.access.scopes import Principal, PrincipalRole
from aftersales.engine.domain.errors import BadInput, NotAllowed, NotFound
from aftersales.engine.storage.sql import (
    ACCESS_LOG_TABLE,
    KEYS_TABLE,
    PRINCIPALS_TABLE,
    SESSIONS_TABLE,
    Dialect,
    parse_stored_time,
)
from aftersales.engine.storage.store import AftersalesStore

# Principals and keys in the store ----------------------------------------------------------------


def _operator_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _log(
    store: AftersalesStore,
    at: datetime,
    change: str,
    principal_id: str,
    key_id: str | None,
    detail: Mapping[str, Any],
) -> tuple[str, list[Any]]:
    return (
        f"INSERT INTO {{t}}{ACCESS_LOG_TABLE} "
        "(at, change, principal_id, key_id, detail, by_user) VALUES (?, ?, ?, ?, ?, ?)",
        [
            store.time_param(at),
            change,
            principal_id,
            key_id,
            json.dumps(detail, sort_keys=True),
            _operator_name(),
        ],
    )


def check_principal_id(principal_id: str) -> str:
    if not _ID.match(principal_id):
        raise BadInput(
            f"principal id {principal_id!r}: letters, digits and . _ @ : - (at most 128)"
        )
    return principal_id


def add_principal(
    store: AftersalesStore, principal_id: str, role: str, merchant: str | None, at: datetime
) -> Principal:
    """Add a principal; a merchant's staff belongs to one merchant, and only they name one."""
    check_principal_id(principal_id)
    try:
        kind = PrincipalRole(role)
    except ValueError:
        words = "|".join(r.value for r in PrincipalRole)
        raise BadInput(f"role {role!r} is not one of {words}") from None
    if kind is PrincipalRole.MERCHANT and not (merchant or "").strip():
        raise BadInput("a merchant principal needs --merchant (the merchant it works for)")
    if kind is not PrincipalRole.MERCHANT and merchant is not None:
        raise BadInput("only a merchant principal belongs to a merchant (--merchant)")
    if find_principal(store, principal_id) is not None:
        raise NotAllowed(f"principal {principal_id} exists already; its role does not change")
    principal = Principal(principal_id, kind, merchant.strip() if merchant else None)
    store.write(
        [
            (
                f"INSERT INTO {{t}}{PRINCIPALS_TABLE} "
                "(principal_id, role, merchant_id, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
                [
                    principal_id,
                    kind.value,
                    principal.merchant_id,
                    store.time_param(at),
                    _operator_name(),
                ],
            ),
            _log(store, at, "principal added", principal_id, None, principal.to_json()),
        ]
    )
    return principal


def _principal(row: Mapping[str, Any]) -> Principal:
    return Principal(row["principal_id"], PrincipalRole(row["role"]), row["merchant_id"])


def find_principal(store: AftersalesStore, principal_id: str) -> Principal | None:
    rows = store.query(
        f"SELECT principal_id, role, merchant_id FROM {{t}}{PRINCIPALS_TABLE} "
        "WHERE principal_id = ?",
        [principal_id],
    )
    return _principal(rows[0]) if rows else None


def has_principals(store: AftersalesStore) -> bool:
    return bool(store.query(f"SELECT 1 AS found FROM {{t}}{PRINCIPALS_TABLE} LIMIT 1"))


def _when(value: Any) -> str | None:
    found = parse_stored_time(value)
    return found.isoformat() if found else None


def list_principals(store: AftersalesStore) -> list[dict[str, Any]]:
    """Every principal with its keys (ids and times only, never a hash)."""
    keys: dict[str, list[dict[str, Any]]] = {}
    for row in store.query(
        f"SELECT key_id, principal_id, created_at, expires_at, revoked_at FROM {{t}}{KEYS_TABLE} "
        "ORDER BY created_at, key_id"
    ):
        keys.setdefault(row["principal_id"], []).append(
            {
                "key_id": row["key_id"],
                "created_at": _when(row["created_at"]),
                "expires_at": _when(row["expires_at"]),
                "revoked_at": _when(row["revoked_at"]),
            }
        )
    return [
        {
            **_principal(row).to_json(),
            "created_at": _when(row["created_at"]),
            "created_by": row["created_by"],
            "keys": keys.get(row["principal_id"], []),
        }
        for row in store.query(
            f"SELECT * FROM {{t}}{PRINCIPALS_TABLE} ORDER BY created_at, principal_id"
        )
    ]


def access_history(store: AftersalesStore) -> list[dict[str, Any]]:
    """Every change to principals, keys and the desk's sessions, oldest first."""
    return [
        {
            "at": _when(row["at"]),
            "change": row["change"],
            "principal": row["principal_id"],
            "key_id": row["key_id"],
            "detail": json.loads(row["detail"]),
            "by": row["by_user"],
        }
        for row in store.query(f"SELECT * FROM {{t}}{ACCESS_LOG_TABLE} ORDER BY seq")
    ]


def create_key(
    store: AftersalesStore, principal_id: str, at: datetime, expires: datetime | None
) -> dict[str, Any]:
    """A new key for a principal: the key itself is in the result only, never stored."""
    if find_principal(store, principal_id) is None:
        raise NotFound(f"no principal {principal_id}")
    if expires is not None and expires <= at:
        raise BadInput(f"--expires {expires.isoformat()} is not in the future")
    key_id, key = new_key()
    store.write(
        [
            (
                f"INSERT INTO {{t}}{KEYS_TABLE} "
                "(key_id, principal_id, key_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                [
                    key_id,
                    principal_id,
                    key_hash(key),
                    store.time_param(at),
                    store.time_param(expires) if expires else None,
                ],
            ),
            _log(
                store,
                at,
                "key created",
                principal_id,
                key_id,
                {"expires_at": expires.isoformat() if expires else None},
            ),
        ]
    )
    return {
        "principal": principal_id,
        "key": key,
        "key_id": key_id,
        "expires_at": expires.isoformat() if expires else None,
    }


def revoke_key(store: AftersalesStore, key_id: str, at: datetime) -> dict[str, Any]:
    rows = store.query(
        f"SELECT principal_id, revoked_at FROM {{t}}{KEYS_TABLE} WHERE key_id = ?", [key_id]
    )
    if not rows:
        raise NotFound(f"no key {key_id}")
    principal_id = rows[0]["principal_id"]
    if rows[0]["revoked_at"] is not None:
        raise NotAllowed(f"key {key_id} was revoked at {_when(rows[0]['revoked_at'])}")
    # The desk's sessions signed in with the key end with it (engine/access/desk_sessions.py).
    sessions = [
        row["session_id"]
        for row in store.query(
            f"SELECT session_id FROM {{t}}{SESSIONS_TABLE} "
            "WHERE key_id = ? AND revoked_at IS NULL ORDER BY session_id",
            [key_id],
        )
    ]
    store.write(
        [
            (
                f"UPDATE {{t}}{KEYS_TABLE} SET revoked_at = ? "
                "WHERE key_id = ? AND revoked_at IS NULL",
                [store.time_param(at), key_id],
            ),
            _log(store, at, "key revoked", principal_id, key_id, {}),
            (
                f"UPDATE {{t}}{SESSIONS_TABLE} SET revoked_at = ?, ended_why = ? "
                "WHERE key_id = ? AND revoked_at IS NULL",
                [store.time_param(at), "key revoked", key_id],
            ),
            *(
                _log(
                    store,
                    at,
                    "session revoked",
                    principal_id,
                    key_id,
                    {"session_id": session_id, "why": "key revoked"},
                )
                for session_id in sessions
            ),
            *revocation_statements(store),
        ]
    )
    forget_everywhere()
    return {
        "principal": principal_id,
        "key_id": key_id,
        "revoked_at": at.isoformat(),
        "sessions_ended": sessions,
    }


def authenticate(store: AftersalesStore, key: str | None, now: datetime) -> Principal:
    """The principal a key belongs to, read from the store (so a revocation counts at once);
    Unauthenticated, saying nothing about which keys exist, otherwise."""
    found = authenticate_many(store, [key], now)[key]
    if isinstance(found, Unauthenticated):
        raise found
    return found


def authenticate_many(
    store: AftersalesStore, keys: Sequence[str | None], now: datetime
) -> dict[str | None, Principal | Unauthenticated]:
    """``authenticate`` for many keys with one query (the requests of one group commit)."""
    return principals_of(grant_keys(store, keys, now))


def grant_keys(
    store: AftersalesStore, keys: Sequence[str | None], now: datetime
) -> dict[str | None, Grant | Unauthenticated]:
    """``authenticate_many``, with each principal's ``Grant``."""
    claimed = {key: key_id_of(key) if key else None for key in keys}
    wanted = sorted({k for k in claimed.values() if k})
    marks = Dialect.marks(len(wanted))
    rows = {
        row["key_id"]: row
        for row in (
            store.query(
                "SELECT k.key_id, k.key_hash, k.expires_at, k.revoked_at, p.principal_id, "
                f"p.role, p.merchant_id FROM {{t}}{KEYS_TABLE} k JOIN {{t}}{PRINCIPALS_TABLE} p "
                f"ON p.principal_id = k.principal_id WHERE k.key_id IN ({marks})",
                wanted,
            )
            if wanted
            else []
        )
    }
    result: dict[str | None, Grant | Unauthenticated] = {}
    for key, key_id in claimed.items():
        row = rows.get(key_id) if key_id else None
        if not key:
            result[key] = Unauthenticated("a key is needed: Authorization: Bearer KEY")
        elif row is None or not hmac.compare_digest(row["key_hash"], key_hash(key)):
            result[key] = Unauthenticated("unknown key")
        elif row["revoked_at"] is not None:
            result[key] = Unauthenticated("the key is revoked")
        elif (expires := parse_stored_time(row["expires_at"])) is not None and expires <= now:
            result[key] = Unauthenticated("the key has expired")
        else:
            result[key] = Grant(_principal(row), expires)
    return result
