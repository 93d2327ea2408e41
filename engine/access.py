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
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from aftersales.engine.case import ReturnCase
from aftersales.engine.commands import (
    BY_NAME,
    Action,
    CaseAction,
    Command,
    MessageCase,
    PlaceOrder,
    ShowCase,
)
from aftersales.engine.errors import AftersalesError, BadInput, NotAllowed, NotFound
from aftersales.engine.order import Order, order_uuid
from aftersales.engine.service import Engine
from aftersales.engine.sql import Dialect
from aftersales.engine.store import (
    ACCESS_LOG_TABLE,
    KEYS_TABLE,
    PRINCIPALS_TABLE,
    EventStore,
    parse_stored_time,
)
from aftersales.engine.values import Party, Role


class PrincipalRole(StrEnum):
    OPERATOR = "operator"
    MERCHANT = "merchant"
    BUYER = "buyer"
    AGENT = "agent"
    AUDITOR = "auditor"
    REPORTER = "reporter"


class Scope(StrEnum):
    """Which cases a role reaches: every case, its merchant's, or its own as the buyer."""

    ALL = "all"
    MERCHANT = "merchant"
    BUYER = "buyer"


# Reads that are not typed commands, by the name their command-line command has.
AUDIT = "audit"
DASHBOARD = "report dashboard"
RETURN_RATES = "report return-rates"
LEDGER = "ledger"
REPORTS = frozenset({DASHBOARD, RETURN_RATES, LEDGER})

# The one table of rights: what each role may do, by command name. The operator may do
# everything; "case fire" and "tick" are the clock's, and order facts the operator's.
MAY: Mapping[PrincipalRole, frozenset[str]] = {
    PrincipalRole.MERCHANT: frozenset(
        {
            "case approve",
            "case reject",
            "case receive",
            "case refund",
            "case ship-replacement",
            "case reship",
            "case recover-goods",
            "case message",
            "case offer",
            "case extend",
            "case show",
            "case list",
            "order show",
            AUDIT,
            *REPORTS,
        }
    ),
    PrincipalRole.BUYER: frozenset(
        {
            "case open",
            "case ship-back",
            "case withdraw",
            "case escalate",
            "case rate",
            "case message",
            "case accept-offer",
            "case decline-offer",
            "case show",
            "case list",
            "order show",
        }
    ),
    PrincipalRole.AGENT: frozenset(
        {"case rule", "case message", "case show", "case list", "order show", AUDIT}
    ),
    PrincipalRole.AUDITOR: frozenset({AUDIT}),
    PrincipalRole.REPORTER: frozenset(REPORTS),
}

SCOPE: Mapping[PrincipalRole, Scope] = {
    PrincipalRole.OPERATOR: Scope.ALL,
    PrincipalRole.MERCHANT: Scope.MERCHANT,
    PrincipalRole.BUYER: Scope.BUYER,
    PrincipalRole.AGENT: Scope.ALL,
    PrincipalRole.AUDITOR: Scope.ALL,
    PrincipalRole.REPORTER: Scope.ALL,
}

# The party a role speaks for in a case: whose actions it takes (the operator: anyone's).
PARTY: Mapping[PrincipalRole, Party] = {
    PrincipalRole.MERCHANT: Party.MERCHANT,
    PrincipalRole.BUYER: Party.BUYER,
    PrincipalRole.AGENT: Party.PLATFORM,
}

KNOWN_NAMES = frozenset({*BY_NAME, AUDIT, *REPORTS})


@dataclass(frozen=True)
class Principal:
    principal_id: str
    role: PrincipalRole
    merchant_id: str | None = None

    @property
    def scope(self) -> Scope:
        return SCOPE[self.role]

    def may(self, name: str) -> bool:
        """Whether the role may take this action or read (a command name), on some case."""
        return self.role is PrincipalRole.OPERATOR or name in MAY.get(self.role, frozenset())

    def speaks_for(self, role: Role) -> bool:
        """Whether the principal may act as this party (the operator: as anyone)."""
        party = PARTY.get(self.role)
        return self.role is PrincipalRole.OPERATOR or (
            party is not None and party.value == role.value
        )

    def sees(self, merchant_id: str, buyer_id: str) -> bool:
        """Whether a case or order of this merchant and buyer is within the principal's reach."""
        if self.scope is Scope.MERCHANT:
            return merchant_id == self.merchant_id
        if self.scope is Scope.BUYER:
            return buyer_id == self.principal_id
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "principal": self.principal_id,
            "role": self.role.value,
            "merchant": self.merchant_id,
        }


def who_may(name: str) -> list[str]:
    """The roles that may take an action or read, for messages."""
    return ["operator", *(r.value for r, names in MAY.items() if name in names)]


def check_actor(principal: Principal, command: Action, merchant_id: str, buyer_id: str) -> None:
    """Refuse (NotAllowed, saying who may) unless the principal may take this action on a case
    or order of this merchant and buyer, as the party the action is taken for."""
    name = command.name
    if not principal.may(name):
        raise NotAllowed(
            f"{principal.principal_id} ({principal.role.value}) may not {name}; "
            f"who may: {', '.join(who_may(name))}"
        )
    role = command.role  # a message's is the party speaking
    if not principal.speaks_for(role):
        what = f"as {role.value}" if isinstance(command, MessageCase) else f"a {role.value} action"
        raise NotAllowed(f"{principal.principal_id} ({principal.role.value}) may not {name} {what}")
    if not principal.sees(merchant_id, buyer_id):
        whose = (
            f"merchant {merchant_id}'s staff"
            if principal.scope is Scope.MERCHANT
            else f"the buyer {buyer_id}"
        )
        raise NotAllowed(
            f"{principal.principal_id} may not {name} here: only {whose} or an operator may"
        )


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


# Principals and keys in the store ----------------------------------------------------------------


def _operator_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _log(
    store: EventStore,
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
    store: EventStore, principal_id: str, role: str, merchant: str | None, at: datetime
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


def find_principal(store: EventStore, principal_id: str) -> Principal | None:
    rows = store.query(
        f"SELECT principal_id, role, merchant_id FROM {{t}}{PRINCIPALS_TABLE} "
        "WHERE principal_id = ?",
        [principal_id],
    )
    return _principal(rows[0]) if rows else None


def has_principals(store: EventStore) -> bool:
    return bool(store.query(f"SELECT 1 AS found FROM {{t}}{PRINCIPALS_TABLE} LIMIT 1"))


def _when(value: Any) -> str | None:
    found = parse_stored_time(value)
    return found.isoformat() if found else None


def list_principals(store: EventStore) -> list[dict[str, Any]]:
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


def access_history(store: EventStore) -> list[dict[str, Any]]:
    """Every change to principals and keys, oldest first."""
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
    store: EventStore, principal_id: str, at: datetime, expires: datetime | None
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


def revoke_key(store: EventStore, key_id: str, at: datetime) -> dict[str, Any]:
    rows = store.query(
        f"SELECT principal_id, revoked_at FROM {{t}}{KEYS_TABLE} WHERE key_id = ?", [key_id]
    )
    if not rows:
        raise NotFound(f"no key {key_id}")
    principal_id = rows[0]["principal_id"]
    if rows[0]["revoked_at"] is not None:
        raise NotAllowed(f"key {key_id} was revoked at {_when(rows[0]['revoked_at'])}")
    store.write(
        [
            (
                f"UPDATE {{t}}{KEYS_TABLE} SET revoked_at = ? "
                "WHERE key_id = ? AND revoked_at IS NULL",
                [store.time_param(at), key_id],
            ),
            _log(store, at, "key revoked", principal_id, key_id, {}),
        ]
    )
    return {"principal": principal_id, "key_id": key_id, "revoked_at": at.isoformat()}


def authenticate(store: EventStore, key: str | None, now: datetime) -> Principal:
    """The principal a key belongs to, read from the store (so a revocation counts at once);
    Unauthenticated, saying nothing about which keys exist, otherwise."""
    found = authenticate_many(store, [key], now)[key]
    if isinstance(found, Unauthenticated):
        raise found
    return found


def authenticate_many(
    store: EventStore, keys: Sequence[str | None], now: datetime
) -> dict[str | None, Principal | Unauthenticated]:
    """``authenticate`` for many keys with one query (the requests of one group commit)."""
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
    result: dict[str | None, Principal | Unauthenticated] = {}
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
            result[key] = _principal(row)
    return result


# Who a case or an order is about --------------------------------------------------------------


def case_parties(engine: Engine, case_id: UUID) -> tuple[str, str] | None:
    """A case's merchant and buyer (they never change): from the aggregate cache when this
    process has the case, else from the case index; None if there is no such case."""
    cached = engine.store.cached(case_id)
    if isinstance(cached, ReturnCase):
        return cached.merchant_id, cached.buyer_id
    rows = engine.store.query(
        "SELECT merchant_id, buyer_id FROM {t}aftersales_cases WHERE case_id = ?", [str(case_id)]
    )
    return (rows[0]["merchant_id"], rows[0]["buyer_id"]) if rows else None


def order_parties(engine: Engine, order_id: str) -> tuple[str, str] | None:
    cached = engine.store.cached(order_uuid(order_id))
    order = cached if isinstance(cached, Order) else engine.find_order(order_id)
    return (order.merchant_id, order.buyer_id) if order is not None else None


def parties(engine: Engine, command: Command) -> tuple[str, str] | None:
    """The merchant and buyer of what a command is about; None if it is not there (the
    command is then refused as not found by the engine, or not reachable over HTTP)."""
    if isinstance(command, PlaceOrder):
        return command.merchant, command.buyer
    case_id = getattr(command, "case_id", None)
    if isinstance(command, (CaseAction, ShowCase)) and isinstance(case_id, UUID):
        return case_parties(engine, case_id)
    order_id = getattr(command, "order_id", None)
    if isinstance(order_id, str):
        return order_parties(engine, order_id)
    return None


class ActorCheck:
    """The command line records honestly: once a store has principals, an action's ``--by``
    must name a principal who may take it on that case (stores without principals, such as the
    demo's and those made before, are as they were). Whether the store has principals is read
    once, when the check is made."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.active = has_principals(engine.store)

    def __call__(self, command: Command) -> Command:
        if not self.active or not isinstance(command, Action) or command.role is Role.SYSTEM:
            return command
        name = command.name
        if command.by is None:
            raise NotAllowed(
                f"this store has principals: --by must name the one acting "
                f"(who may {name}: {', '.join(who_may(name))})"
            )
        principal = find_principal(self.engine.store, command.by)
        if principal is None:
            raise NotAllowed(
                f"--by {command.by} is not a principal of this store "
                f"(who may {name}: {', '.join(who_may(name))})"
            )
        found = parties(self.engine, command)
        if found is not None:  # else the engine says there is no such case or order
            check_actor(principal, command, *found)
        return command
