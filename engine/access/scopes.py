"""What each role of principal may do, and the scope it acts in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aftersales.engine.application.requests import (
    BY_NAME,
    Action,
    MessageCase,
)
from aftersales.engine.domain.errors import NotAllowed
from aftersales.engine.domain.values import Party, Role


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
STAFF_FIGURES = "report staff"
REPORTS = frozenset({DASHBOARD, RETURN_RATES, LEDGER, STAFF_FIGURES})

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
            "case intercept",
            "case show",
            "case list",
            "order show",
            "shop show",
            "shop set-address",
            "shop remove-address",
            "shop set-rule",
            "shop remove-rule",
            # Staff queues: within their own shop
            "shop add-staff",
            "shop remove-staff",
            "shop set-assignment",
            "case assign",
            "case claim",
            "case assignment",
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
        {
            "case rule",
            "case message",
            "case show",
            "case list",
            "order show",
            "buyer flag",
            "buyer clear",
            "buyer show",
            AUDIT,
        }
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
