"""The events of a `ReturnCase` (engine/domain/case.py), one class per thing that happens to a
case, each recording the status it leaves the case in and the deadline then running.

Their stored topics keep the module they were first written from (``engine.case:CaseOpened``):
a topic is part of each stored event's hash (engine/domain/events.py).
"""

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from aftersales.engine.domain.events import Created, Deadline, Event
from aftersales.engine.domain.order_events import CaseLine, Shipment
from aftersales.engine.domain.values import (
    CaseType,
    Claim,
    Condition,
    Party,
    Status,
)

# Events --------------------------------------------------------------------------------------


class CaseEvent(Event):
    status: Status
    due: Deadline | None = None


class CaseOpened(CaseEvent, Created):
    order_id: str
    order_ref: UUID
    merchant_id: str
    buyer_id: str
    case_type: CaseType
    reason: str
    amount: Decimal
    lines: tuple[CaseLine, ...]
    evidence: tuple[str, ...] = ()
    note: str | None = None
    follows: UUID | None = None
    order_shipped: bool
    order_delivered_at: datetime | None = None
    # The order carried return-shipping insurance (运费险).
    freight_insurance: bool = False
    # The policy's windows as they stood when the case was opened (None on cases opened before
    # these rules): the end of the after-sales window for a return or an exchange, and the days
    # a rejection may be taken to the platform.
    after_sales_until: datetime | None = None
    escalation_days_after_rejection: int | None = None


class CaseApproved(CaseEvent):
    return_address: str | None = None
    # Approved by one of the shop's rules (engine/domain/shop.py): the rule and its version.
    by_rule: str | None = None


class CaseRejected(CaseEvent):
    reason: str
    communication: str


class GoodsShippedBack(CaseEvent):
    shipment: Shipment
    # The postage the buyer claimed with the waybill (what is paid of it: FreightCharged).
    freight: Decimal | None = None


class GoodsReceived(CaseEvent):
    condition: Condition


class CaseRefunded(CaseEvent):
    """Money returned to the buyer: by whom, and who owes it in the end."""

    amount: Decimal
    paid_by: Party
    owed_by: Party


class ReplacementShipped(CaseEvent):
    shipment: Shipment


class MissingItemsReshipped(CaseEvent):
    shipment: Shipment


class ReshipImpossible(CaseEvent):
    note: str | None = None


class CaseWithdrawn(CaseEvent):
    pass


class CaseEscalated(CaseEvent):
    claim: Claim
    evidence: tuple[str, ...] = ()
    from_status: Status
    note: str | None = None
    # What the case may still be paid, where that is less than it asked: a rejected case whose
    # lines later cases refunded in part takes them back with only what remains (None: the
    # amount due, and on cases escalated before this rule).
    pays_at_most: Decimal | None = None
    # Until when each party may add evidence for the platform (None: escalated before the rule).
    evidence_until: datetime | None = None


class CaseRuled(CaseEvent):
    in_favour_of: Party
    claim: Claim
    note: str | None = None
    freight_on_merchant: bool = False
    # The most the ruling may pay, where the claim concerns less than the case (the missing
    # lines of a missing-items claim); None: the amount asked.
    pays_at_most: Decimal | None = None


class FreightCharged(CaseEvent):
    """Freight a party bears: the merchant pays both legs when a wrong item is upheld."""

    amount: Decimal
    legs: int
    payer: Party
    payee: Party


class LateShipmentPenalty(CaseEvent):
    """Compensation for a late shipment, recorded against the merchant."""

    amount: Decimal
    payer: Party
    payee: Party


class AdvanceReassigned(CaseEvent):
    """An instant refund the platform advanced at ship-back is no longer the merchant's to
    repay: the buyer owes it (the platform ruled for the merchant on the goods received not in
    order), or the platform bears it (it let its ruling lapse)."""

    amount: Decimal
    owed_by: Party


class GoodsRecovered(CaseEvent):
    """After the platform refunded an unjustified rejection, the merchant got the goods back."""

    note: str | None = None


class CaseRated(CaseEvent):
    score: int
    comment: str | None = None


class DeadlineFired(CaseEvent):
    """The system acted because nobody did: names the deadline and the policy behind it."""

    fired: Deadline


class CaseAutoApproved(DeadlineFired):
    # A return approved by the clock goes to the shop's default return address.
    return_address: str | None = None


class CaseAutoClosed(DeadlineFired):
    pass


class CaseAutoRefunded(DeadlineFired):
    pass


class ReshipOverdue(DeadlineFired):
    """The merchant missed the 24 h reship: recorded as a late shipment against it."""


class ReplacementOverdue(DeadlineFired):
    """The merchant shipped no replacement in time: it refunds the goods it has back."""


# Negotiation: what the parties said, and the merchant's offers and extension.


class MessagePosted(CaseEvent):
    """A message in the talk about the case; the actor says which party spoke. Evidence
    references travel with it (adding evidence is a message that carries some)."""

    text: str
    evidence: tuple[str, ...] = ()


class ChangeOffered(CaseEvent):
    """The merchant offers another service instead of the one asked for (and, it may be,
    another amount: None keeps the amount asked)."""

    case_type: CaseType
    offered_amount: Decimal | None = None
    note: str | None = None


class OfferAccepted(CaseEvent):
    """The buyer took the offer: the case is now of this type, for this amount."""

    case_type: CaseType
    agreed_amount: Decimal
    # An offer of a return, taken: the return goes to the shop's default return address.
    return_address: str | None = None


class OfferDeclined(CaseEvent):
    pass


class OfferLapsed(DeadlineFired):
    """The buyer did not answer the offer in time: the case goes back to the merchant."""


class ReceiptExtended(CaseEvent):
    """The merchant's one extension of its receipt window, by ``hours``, for a reason."""

    hours: int
    reason: str


class EscalationLapsed(DeadlineFired):
    """Nobody took the rejection (or the ruling for the merchant) further in time: closed."""


class RulingOverdue(DeadlineFired):
    """The platform did not rule by its deadline: the case shows as overdue, and the grace
    before the platform pays starts."""


class RulingLapsed(DeadlineFired):
    """The platform let its ruling lapse: it pays the buyer and bears it itself."""


class CaseTurnedReturn(CaseEvent):
    """The order system recorded a shipment under a refund-only case opened before it: the
    buyer gets the goods, so the case is a return now (the refund follows the goods back)."""

    case_type: CaseType


class ParcelIntercepted(CaseEvent):
    """The merchant had the parcel turned back before delivery (拦截), answering a refund only:
    the case is a return now, its goods on their way back in this shipment."""

    case_type: CaseType
    shipment: Shipment | None = None


class DeliveryRefused(CaseEvent):
    """The buyer refused the parcel at the door (拒收), as the order system reports: the case is
    a return now, its goods on their way back in the order's shipment."""

    case_type: CaseType
    shipment: Shipment | None = None


# The case's events by class name: the names the transition table uses (and the tails of their
# stored topics).
EVENT_CLASSES: Mapping[str, type[CaseEvent]] = {
    kind.__name__: kind
    for kind in (
        CaseOpened,
        CaseApproved,
        CaseRejected,
        GoodsShippedBack,
        GoodsReceived,
        CaseRefunded,
        ReplacementShipped,
        MissingItemsReshipped,
        ReshipImpossible,
        CaseWithdrawn,
        CaseEscalated,
        CaseRuled,
        FreightCharged,
        LateShipmentPenalty,
        GoodsRecovered,
        CaseRated,
        CaseAutoApproved,
        CaseAutoClosed,
        CaseAutoRefunded,
        ReshipOverdue,
        ReplacementOverdue,
        MessagePosted,
        ChangeOffered,
        OfferAccepted,
        OfferDeclined,
        OfferLapsed,
        ReceiptExtended,
        EscalationLapsed,
        RulingOverdue,
        RulingLapsed,
        CaseTurnedReturn,
        ParcelIntercepted,
        DeliveryRefused,
        AdvanceReassigned,
    )
}
