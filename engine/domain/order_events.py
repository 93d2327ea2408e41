"""The events of an `Order` (engine/domain/order.py) and the lines and shipments they carry.

Their stored topics keep the module they were first written from (``engine.order:OrderPlaced``):
a topic is part of each stored event's hash (engine/domain/events.py).
"""

from decimal import Decimal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from aftersales.engine.domain.events import Created, Event
from aftersales.engine.domain.values import CENT


class OrderLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sku: str
    quantity: int = Field(gt=0)
    unit_price: Decimal
    category: str | None = None
    # The price on the product page, for gifts and accessories the buyer paid little or
    # nothing for: what the platform pays first when they go missing.
    list_price: Decimal | None = None

    @property
    def total(self) -> Decimal:
        return (self.unit_price * self.quantity).quantize(CENT)


class CaseLine(OrderLine):
    """A line a case concerns: how many units, and what they cost the buyer."""

    @property
    def value(self) -> Decimal:
        return self.total


class Shipment(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    carrier: str
    waybill: str


class OrderPlaced(Created):
    order_id: str
    merchant_id: str
    buyer_id: str
    lines: tuple[OrderLine, ...]
    # The order carried return-shipping insurance (运费险).
    freight_insurance: bool = False


class OrderShipped(Event):
    shipment: Shipment | None = None
    # Refund-only cases opened before the shipment that it turned into returns (the order
    # system recorded it although they held the lines).
    turned: tuple[UUID, ...] = ()


class OrderDelivered(Event):
    pass


class CaseLinked(Event):
    """A case now holds these lines: no other case may open on them until it ends."""

    case_id: UUID
    skus: tuple[str, ...]
    # A refund-only case opened before shipment: the order may not ship until it is answered.
    holds_shipment: bool = False


class CaseUnlinked(Event):
    """A case let go of its lines, having refunded these amounts on them."""

    case_id: UUID
    status: str
    refunded: dict[str, Decimal]


class CaseRefundBooked(Event):
    """A case that keeps its lines refunded these amounts on them (an instant refund, paid as
    the goods go back): booked at once, so the order's books always agree with its cases."""

    case_id: UUID
    refunded: dict[str, Decimal]


# The events that book what a case refunded on the order's lines.
BOOKS_REFUNDS: tuple[type[CaseUnlinked | CaseRefundBooked], ...] = (
    CaseUnlinked,
    CaseRefundBooked,
)
