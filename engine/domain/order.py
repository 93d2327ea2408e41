"""The `Order` aggregate: the facts a case needs, and which lines have a case open on them.

An order is placed, shipped and delivered by the order system. It also keeps the after-sales
ledger of its lines: which case holds each line now (one open case per line at a time) and how
much earlier cases on each line have refunded, so that the rules "one open case per order line"
and "never more than was paid" are kept by the library's optimistic concurrency on this one
aggregate, even when two cases are opened at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid5

from aftersales.engine.domain.errors import BadInput, NotAllowed
from aftersales.engine.domain.events import Act, Aggregate, Event
from aftersales.engine.domain.invariants import check_order_event
from aftersales.engine.domain.limits import MAX_QUANTITY, check_id, whole_number
from aftersales.engine.domain.order_events import (
    CaseLine,
    CaseLinked,
    CaseRefundBooked,
    CaseUnlinked,
    OrderDelivered,
    OrderLine,
    OrderPlaced,
    OrderShipped,
    Shipment,
)
from aftersales.engine.domain.values import CENT, ZERO, money_str, parse_money

ORDER_NAMESPACE = UUID("6f1c5c9e-3a52-4c8e-9b1e-2f8d7a4e5b10")
_SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,63}$")
_ORDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@lru_cache(maxsize=4096)
def order_uuid(order_id: str) -> UUID:
    """Orders keep the order system's id; the stored aggregate id is derived from it."""
    return uuid5(ORDER_NAMESPACE, f"order:{order_id}")


def check_order_id(order_id: str) -> str:
    if not _ORDER_ID.fullmatch(order_id):
        shown = order_id if len(order_id) <= 70 else order_id[:70] + "..."
        raise BadInput(
            f"order id {shown!r} must be 1 to 64 letters, digits, '-', '_' or '.' (ASCII)"
        )
    return order_id


def _quantity(text: str, line: str) -> int:
    """A line's quantity: ASCII digits, above 0, at most ``limits.MAX_QUANTITY``."""
    quantity = whole_number(text.strip(), f"line {line!r}: quantity")
    if not 0 < quantity <= MAX_QUANTITY:
        raise BadInput(f"line {line!r}: quantity {quantity} must be 1 to {MAX_QUANTITY}")
    return quantity


def parse_order_line(text: str) -> OrderLine:
    """``SKU:QTY:UNIT_PRICE[:CATEGORY[:LIST_PRICE]]``, as the command line takes it."""
    parts = text.split(":")
    if len(parts) not in (3, 4, 5):
        raise BadInput(f"line {text!r} is not SKU:QTY:UNIT_PRICE[:CATEGORY[:LIST_PRICE]]")
    sku, qty, price = parts[0].strip(), parts[1].strip(), parts[2]
    if not _SKU.fullmatch(sku):
        raise BadInput(
            f"line {text!r}: SKU {sku!r} is not a valid SKU (1 to 64 ASCII letters, digits, "
            "'_', '.', '-', '/')"
        )
    quantity = _quantity(qty, text)
    unit_price = parse_money(price, "unit price")
    category = parts[3].strip() if len(parts) >= 4 and parts[3].strip() else None
    if category is not None:
        check_id(category, "category")
    list_price = parse_money(parts[4], "list price") if len(parts) == 5 else None
    if unit_price <= ZERO and not list_price:
        raise BadInput(
            f"line {text!r}: unit price must be more than 0 (a free gift needs "
            "its list price: SKU:QTY:0.00:gift:LIST_PRICE)"
        )
    return OrderLine(
        sku=sku, quantity=quantity, unit_price=unit_price, category=category, list_price=list_price
    )


def parse_case_line(text: str) -> tuple[str, int | None]:
    """``SKU[:QTY]``: the line a case concerns; no quantity means the whole line."""
    sku, _, qty = text.partition(":")
    sku = sku.strip()
    if not sku:
        raise BadInput(f"line {text!r} is not SKU:QTY")
    check_id(sku, "line")
    if qty == "":
        return sku, None
    return sku, _quantity(qty, text)


class Order(Aggregate):
    # State, set by when(); declared for the type checker only, because the library
    # turns an aggregate class with annotations into a dataclass.
    if TYPE_CHECKING:
        order_id: str
        merchant_id: str
        buyer_id: str
        lines: dict[str, OrderLine]
        placed_at: datetime
        shipped_at: datetime | None
        shipment: Shipment | None
        delivered_at: datetime | None
        last_at: datetime
        holders: dict[str, UUID]
        refunded: dict[str, Decimal]
        last_case: dict[str, UUID]
        cases: list[UUID]
        line_cases: dict[str, list[UUID]]
        shipment_held_by: list[UUID]

    # Construction and replay -------------------------------------------------------------

    @classmethod
    def place(
        cls,
        order_id: str,
        *,
        merchant_id: str,
        buyer_id: str,
        lines: list[OrderLine],
        act: Act,
        freight_insurance: bool = False,
    ) -> Order:
        check_order_id(order_id)
        if not merchant_id.strip() or not buyer_id.strip():
            raise BadInput("an order needs a merchant and a buyer")
        if not lines:
            raise BadInput("an order needs at least one line")
        skus = [line.sku for line in lines]
        if len(set(skus)) != len(skus):
            raise BadInput(f"order {order_id}: a SKU appears on more than one line")
        return cls._create_sealed(
            OrderPlaced,
            id=order_uuid(order_id),
            order_id=order_id,
            merchant_id=merchant_id,
            buyer_id=buyer_id,
            lines=tuple(lines),
            freight_insurance=freight_insurance,
            **act.fields(),
        )

    def check_new(self, event: Event) -> None:
        check_order_event(self, event)

    def when(self, event: Event) -> None:
        super().when(event)
        self.last_at = max(event.at, getattr(self, "last_at", event.at))
        apply = _applier(type(event))
        if apply is not None:
            apply(self, event)

    # What each kind of event changes (see _APPLY).

    def _placed(self, event: OrderPlaced) -> None:
        self.order_id = event.order_id
        self.merchant_id = event.merchant_id
        self.buyer_id = event.buyer_id
        self.lines = {line.sku: line for line in event.lines}
        self.freight_insurance = event.freight_insurance
        self.placed_at = event.at
        self.shipped_at = None
        self.shipment = None
        self.delivered_at = None
        self.holders = {}
        self.refunded = {}
        self.last_case = {}
        self.cases = []
        self.line_cases = {}
        self.shipment_held_by = []

    def _shipped(self, event: OrderShipped) -> None:
        self.shipped_at = event.at
        self.shipment = event.shipment
        self.shipment_held_by = [c for c in self.shipment_held_by if c not in event.turned]

    def _delivered(self, event: OrderDelivered) -> None:
        self.delivered_at = event.at

    def _linked(self, event: CaseLinked) -> None:
        for sku in event.skus:
            self.holders[sku] = event.case_id
            self.last_case[sku] = event.case_id
            # A rejected case escalated links its lines again: it is still one case.
            on_line = self.line_cases.setdefault(sku, [])
            if event.case_id not in on_line:
                on_line.append(event.case_id)
        if event.case_id not in self.cases:
            self.cases.append(event.case_id)
        if event.holds_shipment and event.case_id not in self.shipment_held_by:
            self.shipment_held_by.append(event.case_id)

    def _unlinked(self, event: CaseUnlinked) -> None:
        for sku in [s for s, c in self.holders.items() if c == event.case_id]:
            del self.holders[sku]
        if event.case_id in self.shipment_held_by:
            self.shipment_held_by.remove(event.case_id)
        self._booked(event)

    def _booked(self, event: CaseUnlinked | CaseRefundBooked) -> None:
        for sku, amount in event.refunded.items():
            self.refunded[sku] = self.refunded.get(sku, ZERO) + amount

    # Order facts --------------------------------------------------------------------------

    def _check_time(self, act: Act, what: str) -> None:
        if act.at < self.last_at:
            raise BadInput(
                f"{what} at {act.at.isoformat()} is before order {self.order_id}'s "
                f"latest event at {self.last_at.isoformat()}"
            )

    def ship(self, shipment: Shipment | None, act: Act, *, anyway: bool = False) -> list[UUID]:
        """Record the shipment. A refund-only case opened before it holds its lines: refused
        while one is open (the merchant answers first), unless the order system records that
        the goods went out ``anyway``; then those cases are turned into returns (the caller
        turns them: their ids are returned)."""
        self._check_time(act, "ship")
        if self.shipped_at is not None:
            raise NotAllowed(f"order {self.order_id} is already shipped")
        turned = self._held(anyway, "shipped")
        self.trigger_event(OrderShipped, shipment=shipment, turned=turned, **act.fields())
        return list(turned)

    def deliver(self, act: Act, *, anyway: bool = False) -> list[UUID]:
        """Record the delivery (and the shipment it implies, held as ``ship`` holds it)."""
        self._check_time(act, "deliver")
        if self.delivered_at is not None:
            raise NotAllowed(f"order {self.order_id} is already delivered")
        turned: tuple[UUID, ...] = ()
        if self.shipped_at is None:
            # Delivery implies shipment; record both so the facts stay in order.
            turned = self._held(anyway, "delivered")
            self.trigger_event(OrderShipped, shipment=None, turned=turned, **act.fields())
        self.trigger_event(OrderDelivered, **act.fields())
        return list(turned)

    def _held(self, anyway: bool, what: str) -> tuple[UUID, ...]:
        held = tuple(self.shipment_held_by)
        if held and not anyway:
            cases = ", ".join(str(c) for c in held)
            raise NotAllowed(
                f"order {self.order_id} cannot be {what}: refund-only case {cases}, opened "
                "before shipment, holds its lines until the merchant answers it (approve: "
                "refunded, nothing ships; reject: then ship). If the goods went out anyway, "
                "the order system records that they did, which turns the case into a return"
            )
        return held

    # After-sales bookkeeping ----------------------------------------------------------------

    def case_lines(self, wanted: list[tuple[str, int | None]]) -> list[CaseLine]:
        """The lines a case concerns; none named means every line, in full."""
        if not wanted:
            wanted = [(sku, None) for sku in self.lines]
        seen: set[str] = set()
        result = []
        for sku, qty in wanted:
            line = self.lines.get(sku)
            if line is None:
                known = ", ".join(self.lines)
                raise BadInput(f"order {self.order_id} has no line {sku} (lines: {known})")
            if sku in seen:
                raise BadInput(f"line {sku} is named twice")
            seen.add(sku)
            quantity = line.quantity if qty is None else qty
            if quantity > line.quantity:
                raise BadInput(
                    f"line {sku}: {quantity} asked, but order {self.order_id} has {line.quantity}"
                )
            result.append(
                CaseLine(
                    sku=sku,
                    quantity=quantity,
                    unit_price=line.unit_price,
                    category=line.category,
                    list_price=line.list_price,
                )
            )
        return result

    def refundable(self, lines: list[CaseLine], listed: tuple[str, ...] = ()) -> Decimal:
        """What was paid for these units, less what earlier cases refunded on their lines.
        Lines whose category is ``listed`` count at their list price instead (missing gifts
        and accessories are made good at the price on the product page)."""
        total = ZERO
        for line in lines:
            order_line = self.lines[line.sku]
            worth, whole = line.value, order_line.total
            if line.category in listed and line.list_price is not None:
                worth = (line.list_price * line.quantity).quantize(CENT)
                whole = (line.list_price * order_line.quantity).quantize(CENT)
            left = whole - self.refunded.get(line.sku, ZERO)
            total += max(ZERO, min(worth, left))
        return total

    def check_lines_free(self, lines: list[CaseLine]) -> None:
        for line in lines:
            holder = self.holders.get(line.sku)
            if holder is not None:
                raise NotAllowed(
                    f"line {line.sku} of order {self.order_id} already has an open case "
                    f"{holder}; one open case per line at a time"
                )

    def check_case_limit(self, lines: list[CaseLine], most: int) -> None:
        """A line has at most ``most`` cases over its lifetime, one after another."""
        for line in lines:
            had = len(self.line_cases.get(line.sku, ()))
            if had >= most:
                raise NotAllowed(
                    f"line {line.sku} of order {self.order_id} has had {had} cases already: "
                    f"at most {most} cases per order line"
                )

    def previous_case(self, lines: list[CaseLine]) -> UUID | None:
        """The latest earlier case on any of these lines: the one a new case follows."""
        earlier = {self.last_case[line.sku] for line in lines if line.sku in self.last_case}
        for case_id in reversed(self.cases):
            if case_id in earlier:
                return case_id
        return None

    def link_case(
        self, case_id: UUID, lines: list[CaseLine], act: Act, *, holds_shipment: bool = False
    ) -> None:
        # Time never runs backwards on an order: a case cannot be opened (or take its lines
        # back) at a time before what the order already records, such as its delivery.
        self._check_time(act, "a case on it")
        self.check_lines_free(lines)
        self.trigger_event(
            CaseLinked,
            case_id=case_id,
            skus=tuple(line.sku for line in lines),
            holds_shipment=holds_shipment,
            **act.fields(),
        )

    def unlink_case(
        self, case_id: UUID, status: str, lines: list[CaseLine], refunded: Decimal, act: Act
    ) -> None:
        self.trigger_event(
            CaseUnlinked,
            case_id=case_id,
            status=status,
            refunded=self._shares(refunded, lines),
            **act.fields(),
        )

    def book_refund(
        self, case_id: UUID, lines: list[CaseLine], refunded: Decimal, act: Act
    ) -> None:
        """A case that keeps its lines refunded on them (an instant refund): booked now."""
        self.trigger_event(
            CaseRefundBooked,
            case_id=case_id,
            refunded=self._shares(refunded, lines),
            **act.fields(),
        )

    def _shares(self, refunded: Decimal, lines: list[CaseLine]) -> dict[str, Decimal]:
        """A case's refund, line by line. No line takes more than it may still refund: the
        case's units at what they are worth (their list price where the line carries one: a
        missing gift is made good at it), within what the order line has left."""
        room = {
            line.sku: min(
                _worth(line),
                max(ZERO, _worth(self.lines[line.sku]) - self.refunded.get(line.sku, ZERO)),
            )
            for line in lines
        }
        return allocate(refunded, lines, room)

    def to_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "merchant_id": self.merchant_id,
            "buyer_id": self.buyer_id,
            "freight_insurance": self.freight_insurance,
            "lines": [
                {
                    "sku": line.sku,
                    "quantity": line.quantity,
                    "unit_price": money_str(line.unit_price),
                    "category": line.category,
                    "list_price": money_str(line.list_price) if line.list_price else None,
                    "refunded": money_str(self.refunded.get(line.sku, ZERO)),
                    "open_case_id": str(self.holders[line.sku])
                    if line.sku in self.holders
                    else None,
                }
                for line in self.lines.values()
            ],
            "total": money_str(sum((line.total for line in self.lines.values()), ZERO)),
            "placed_at": self.placed_at.isoformat(),
            "shipped_at": self.shipped_at.isoformat() if self.shipped_at else None,
            "carrier": self.shipment.carrier if self.shipment else None,
            "waybill": self.shipment.waybill if self.shipment else None,
            "delivered_at": self.delivered_at.isoformat() if self.delivered_at else None,
            "case_ids": [str(c) for c in self.cases],
            "version": self.version,
        }


# The state each kind of event sets, by class (a subclass reads as the class it extends).
_APPLY: Mapping[type[Event], Callable[[Order, Any], None]] = {
    OrderPlaced: Order._placed,
    OrderShipped: Order._shipped,
    OrderDelivered: Order._delivered,
    CaseLinked: Order._linked,
    CaseUnlinked: Order._unlinked,
    CaseRefundBooked: Order._booked,
}


@cache
def _applier(kind: type[Event]) -> Callable[[Order, Any], None] | None:
    return next((_APPLY[c] for c in kind.__mro__ if c in _APPLY), None)


def allocate(
    amount: Decimal, lines: list[CaseLine], room: Mapping[str, Decimal] | None = None
) -> dict[str, Decimal]:
    """Split a refund over the case's lines in proportion to their value, to the cent; with
    ``room`` (what each line may still take), none beyond it, what a full line cannot take
    going to the others in turn (a missing gift paid nothing is made good at its list price:
    its share is not booked on the lines that were paid for)."""
    if amount <= ZERO or not lines:
        return {}
    total = sum((line.value for line in lines), ZERO)
    shares: dict[str, Decimal] = {}
    given = ZERO
    for line in lines[:-1]:
        share = (amount * line.value / total).quantize(CENT, rounding=ROUND_DOWN) if total else ZERO
        shares[line.sku] = share
        given += share
    shares[lines[-1].sku] = amount - given
    if room is None:
        return shares
    over = ZERO
    for sku, share in shares.items():
        if share > room[sku]:
            over += share - room[sku]
            shares[sku] = room[sku]
    for line in lines:
        if over <= ZERO:
            break
        more = min(over, room[line.sku] - shares[line.sku])
        shares[line.sku] += more
        over -= more
    # Whatever no line had room for stays on the last line, where the order refuses it
    # (no line is refunded beyond its worth).
    shares[lines[-1].sku] += over
    return shares


def _worth(line: OrderLine) -> Decimal:
    """The most these units may refund: what was paid, or their list price if higher."""
    if line.list_price is not None:
        return max(line.total, (line.list_price * line.quantity).quantize(CENT))
    return line.total


def lines_worth(lines: list[CaseLine], listed: tuple[str, ...]) -> Decimal:
    """What these units are worth to the buyer: what was paid, or for ``listed`` categories
    that carry one, the list price (missing gifts and accessories are made good at it)."""
    total = ZERO
    for line in lines:
        if line.category in listed and line.list_price is not None:
            total += (line.list_price * line.quantity).quantize(CENT)
        else:
            total += line.value
    return total
