"""A buyer's standing with the platform: the `Buyer` aggregate, every change an event, so what
made a buyer eligible for an instant refund (极速退款) or not has a history an audit can show.

- **Abuse flags**: a platform agent flags a buyer (a reason: returns of empty boxes, say) and
  clears the flag; a flagged buyer is refunded when the goods arrive, as everyone else is.
- **Disputes lost**: every ruling against the buyer (for the merchant, on the buyer's own
  escalation or on goods the merchant received not in order) is recorded here by the engine, in
  the same transaction as the ruling.

The policy (``Policy.instant_refund``) says how many disputes lost, over how many days, still
leave a buyer in good standing.
"""

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid5

from aftersales.engine.domain.errors import BadInput, NotAllowed
from aftersales.engine.domain.events import Act, Aggregate, Created, Event
from aftersales.engine.domain.limits import MAX_TEXT_CHARS

if TYPE_CHECKING:
    from aftersales.engine.domain.policy import InstantRefund

BUYER_NAMESPACE = UUID("8b2f4c1d-7e3a-4d6b-a5c9-0e1f2a3b4c5d")


def buyer_uuid(buyer_id: str) -> UUID:
    """A buyer's stored aggregate id, derived from the buyer's id."""
    return uuid5(BUYER_NAMESPACE, f"buyer:{buyer_id}")


class BuyerEvent(Event):
    pass


class BuyerNoted(BuyerEvent, Created):
    """The platform's first record of a buyer."""

    buyer_id: str


class BuyerFlagged(BuyerEvent):
    """A platform agent flags the buyer for abuse."""

    reason: str


class BuyerCleared(BuyerEvent):
    """A platform agent clears the buyer's flag."""

    note: str


class DisputeLost(BuyerEvent):
    """The platform ruled against the buyer on a case (recorded with the ruling)."""

    case_id: UUID


def _text(value: str, what: str) -> str:
    if not value.strip():
        raise BadInput(f"{what} is empty")
    if len(value) > MAX_TEXT_CHARS:
        raise BadInput(f"{what} is longer than {MAX_TEXT_CHARS} characters")
    return value.strip()


class Buyer(Aggregate):
    """One buyer's standing: an abuse flag (or none) and the disputes ruled against them."""

    if TYPE_CHECKING:
        buyer_id: str
        flag: dict[str, str] | None
        lost: list[tuple[UUID, datetime]]

    @classmethod
    def note(cls, buyer_id: str, act: Act) -> "Buyer":
        if not buyer_id.strip():
            raise BadInput("a buyer needs an id")
        return cls._create_sealed(
            BuyerNoted, id=buyer_uuid(buyer_id), buyer_id=buyer_id, **act.fields()
        )

    def when(self, event: Event) -> None:
        super().when(event)
        if isinstance(event, BuyerNoted):
            self.buyer_id = event.buyer_id
            self.flag, self.lost = None, []
        elif isinstance(event, BuyerFlagged):
            self.flag = {
                "reason": event.reason,
                "by": event.actor.id,
                "at": event.at.isoformat(),
            }
        elif isinstance(event, BuyerCleared):
            self.flag = None
        elif isinstance(event, DisputeLost):
            self.lost.append((event.case_id, event.at))

    def flag_abuse(self, act: Act, *, reason: str) -> None:
        if self.flag is not None:
            raise NotAllowed(
                f"buyer {self.buyer_id} is flagged already ({self.flag['reason']}); clear the "
                "flag first to flag again"
            )
        self.trigger_event(BuyerFlagged, reason=_text(reason, "the reason"), **act.fields())

    def clear_flag(self, act: Act, *, note: str) -> None:
        if self.flag is None:
            raise NotAllowed(f"buyer {self.buyer_id} is not flagged")
        self.trigger_event(BuyerCleared, note=_text(note, "the note"), **act.fields())

    def dispute_lost(self, act: Act, case_id: UUID) -> None:
        self.trigger_event(DisputeLost, case_id=case_id, **act.fields())

    def lost_since(self, since: datetime) -> int:
        return sum(1 for _, at in self.lost if at >= since)

    def to_json(self) -> dict[str, Any]:
        return {
            "buyer_id": self.buyer_id,
            "version": self.version,
            "flagged": self.flag is not None,
            "flag": self.flag,
            "disputes_lost": [
                {"case_id": str(case_id), "at": at.isoformat()} for case_id, at in self.lost
            ],
        }


def refusal(buyer: Buyer | None, rules: "InstantRefund | None", at: datetime) -> str | None:
    """Why a buyer (None: one the platform has no record of, in good standing) may not be
    refunded at once under the policy's rules (None: the policy has no instant refund) at
    ``at``; None if they may."""
    if rules is None:
        return "the policy has no instant refund"
    if buyer is None:
        return None
    if buyer.flag is not None:
        return f"buyer {buyer.buyer_id} is flagged ({buyer.flag['reason']})"
    lost = buyer.lost_since(at - timedelta(days=rules.within_days))
    if lost > rules.disputes_lost:
        return (
            f"buyer {buyer.buyer_id} lost {lost} disputes in the last {rules.within_days} days "
            f"(at most {rules.disputes_lost})"
        )
    return None


def unknown_buyer(buyer_id: str) -> dict[str, Any]:
    """What a buyer the platform has no record of shows: no flag, no disputes lost."""
    return {"buyer_id": buyer_id, "version": 0, "flagged": False, "flag": None, "disputes_lost": []}
