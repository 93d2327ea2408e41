"""Who of a shop's staff has a case: the `CaseAssignment` aggregate, one per case, every
assignment an event, so a case's queue has a history an audit can show.

A case is assigned as it is opened (when its shop has staff), by the shop's mode
(``Shop.mode``): ``round_robin`` spreads cases over the whole roster; ``by_rule`` over the
members whose conditions (reasons, up to an amount, SKUs) the case meets, or the whole roster
when it meets no one's. Either way the member is chosen by the case id alone (rendezvous
hashing: the member whose hash with the case id is highest), so opening a case reads no
counter that every opening would write, and races with nothing. Staff reassign a case to
another member, and a member claims one for themselves.

The assignment is kept apart from the case's own events: it is the shop's internal routing of
its work, not a step between buyer, merchant and platform, so reassigning a case never moves
the case's version (a member's ``--expected-version`` still holds), never races a party's
action on it, and leaves the case's transitions and its audit bundle as they are.
"""

import hashlib
from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid5

from aftersales.engine.domain.errors import NotAllowed
from aftersales.engine.domain.events import Act, Aggregate, Created, Event
from aftersales.engine.domain.shop import AssignMode, Shop

ASSIGNMENT_NAMESPACE = UUID("6f1c0a3e-2b7d-4e58-9a41-c3d2e1f0a9b8")


def assignment_uuid(case_id: UUID) -> UUID:
    """A case's assignment's stored aggregate id, derived from the case's id."""
    return uuid5(ASSIGNMENT_NAMESPACE, f"assignment:{case_id}")


class How(StrEnum):
    """How a case came to a member."""

    ROUND_ROBIN = "round_robin"  # as it was opened, over the whole roster
    RULE = "rule"  # as it was opened, over the members whose conditions it meets
    CLAIM = "claim"  # the member took it
    REASSIGN = "reassign"  # staff or an operator gave it to the member


class AssignmentEvent(Event):
    case_id: UUID
    member: str
    how: How
    # Who had the case before (None: nobody).
    previous: str | None = None


class AssignmentStarted(AssignmentEvent, Created):
    merchant_id: str


class CaseAssigned(AssignmentEvent):
    pass


def _weight(case_id: UUID, member_id: str) -> bytes:
    return hashlib.sha256(f"{case_id}:{member_id}".encode()).digest()


def pick_member(
    shop: Shop, case_id: UUID, reason: str, amount: Decimal, skus: Iterable[str]
) -> tuple[str, How] | None:
    """The member a new case goes to, and how; None when the shop has no staff."""
    roster = shop.roster
    if not roster:
        return None
    candidates = list(roster.values())
    how = How.ROUND_ROBIN
    if shop.mode is AssignMode.BY_RULE:
        wanted = list(skus)
        fitting = [m for m in candidates if m.matches(reason, amount, wanted)]
        if fitting:
            candidates, how = fitting, How.RULE
    chosen = max(candidates, key=lambda m: _weight(case_id, m.member_id))
    return chosen.member_id, how


class CaseAssignment(Aggregate):
    """Which of the shop's staff has one case, and since when."""

    if TYPE_CHECKING:
        case_id: UUID
        merchant_id: str
        member: str
        how: How
        history: list[dict[str, Any]]

    @classmethod
    def start(
        cls, case_id: UUID, merchant_id: str, member: str, how: How, act: Act
    ) -> "CaseAssignment":
        return cls._create_sealed(
            AssignmentStarted,
            id=assignment_uuid(case_id),
            case_id=case_id,
            merchant_id=merchant_id,
            member=member,
            how=how,
            **act.fields(),
        )

    def when(self, event: Event) -> None:
        super().when(event)
        if isinstance(event, AssignmentStarted):
            self.case_id, self.merchant_id = event.case_id, event.merchant_id
            self.history = []
        if isinstance(event, AssignmentEvent):
            self.member, self.how = event.member, event.how
            self.history.append(
                {
                    "member": event.member,
                    "how": event.how.value,
                    "previous": event.previous,
                    "at": event.at.isoformat(),
                    "by": event.actor.id,
                }
            )

    def assign(self, act: Act, member: str, how: How) -> None:
        if member == self.member:
            raise NotAllowed(f"case {self.case_id} is assigned to {member} already")
        self.trigger_event(
            CaseAssigned,
            case_id=self.case_id,
            member=member,
            how=how,
            previous=self.member,
            **act.fields(),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "case_id": str(self.case_id),
            "merchant_id": self.merchant_id,
            "assignee": self.member,
            "how": self.how.value,
            "version": self.version,
            "history": list(self.history),
        }
