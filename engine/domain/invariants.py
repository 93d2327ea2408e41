"""The rules that hold across a case's events, its order's lines, the clock and the money.

The transition table (``engine/domain/transitions.py``) says what one action may do from one status.
These say what must hold whatever sequence of actions, parties and deadlines led here, on every
path into the engine (the command line, ``batch``, imports, HTTP, the tick): each is checked on
every event an aggregate records, before the event changes anything and before anything is
saved (``check_case_event``, ``check_order_event``, called by the aggregates as they record).
A write that would break one is refused with ``InvariantBroken`` (exit 3, HTTP 409), naming the
invariant; nothing is appended and the case stays as it was in the store.

Each check reads the state the aggregate already keeps (what was asked and refunded, the
deadline running, where an offer found the case), never the whole history again, so it costs a
few comparisons per event.

``CaseReplay`` is the other half: the cheap checks the audit makes on a stored history (each
action allowed from the status it found, leading where it may, with the consequences it calls
for; deadlines fired only when running and due, no person acting after a deadline fell due;
events in time order; refunds within what was asked or agreed), run over the events of every
case the engine loads, so it never acts on, shows or builds on a history it cannot vouch for.
These hold for every history the engine ever wrote, old rules included; the invariants above
are about what is written from now on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aftersales.engine.domain.case_events import (
    AdvanceReassigned,
    CaseOpened,
    CaseRated,
    CaseRefunded,
    ChangeOffered,
    DeadlineFired,
    FreightCharged,
    LateShipmentPenalty,
    OfferAccepted,
    OfferDeclined,
    OfferLapsed,
    ReceiptExtended,
    RulingLapsed,
)
from aftersales.engine.domain.errors import NotAllowed
from aftersales.engine.domain.order_events import BOOKS_REFUNDS, OrderShipped
from aftersales.engine.domain.transitions import (
    ACTION_OF,
    ADVANCE_REQUIRED,
    ALLOWED_FROM,
    CONSEQUENCES,
    KNOWN,
    LEADS_TO,
    REQUIRED_CONSEQUENCE,
    UNCHANGED,
)
from aftersales.engine.domain.values import (
    AWAITING_STATUSES,
    CENT,
    FINAL_STATUSES,
    ZERO,
    DueAction,
    Party,
    Role,
    Status,
    money_str,
)

if TYPE_CHECKING:
    from aftersales.engine.domain.case import ReturnCase
    from aftersales.engine.domain.case_events import CaseEvent
    from aftersales.engine.domain.events import Deadline, Event
    from aftersales.engine.domain.order import Order

S = Status


@dataclass(frozen=True)
class Invariant:
    name: str
    why: str


LINE_REFUNDS_WITHIN_PAID = Invariant(
    "line_refunds_within_paid",
    "what a line has refunded, across all its cases and by every party, never exceeds what "
    "was paid for it (its list price for gifts and accessories), or the platform pays twice",
)
REFUND_AS_DUE = Invariant(
    "refund_as_due",
    "a case refunds at most what was asked, and less only with the buyer's consent (an "
    "accepted offer) or by the platform's ruling, or a merchant could settle any claim for a "
    "cent",
)
ONE_RUNNING_DEADLINE = Invariant(
    "one_running_deadline",
    "every case that waits on someone (the platform included) has exactly one running "
    "deadline, of that wait, and an ended case none, or someone's silence holds another's "
    "money",
)
OFFERS_NEVER_EXTEND = Invariant(
    "offers_never_extend",
    "an offer never gives the merchant more time: its review runs 48 hours from the opening "
    "and an offer declined or unanswered gives back the deadline it interrupted as it stood, "
    "or offers could stall a case for ever",
)
MONEY_HAS_PARTIES = Invariant(
    "money_has_parties",
    "every amount moved is more than nothing, has a payer and a payee who are not the same, "
    "and what the platform advances is owed back by the merchant (only a ruling the platform "
    "let lapse is its own to bear, and an instant refund the platform found not owed the "
    "buyer's), or the ledger cannot be settled",
)
SHIPMENT_HELD = Invariant(
    "shipment_held",
    "a refund-only case opened before shipment holds its lines: the order ships only after "
    "the merchant answered, or with the case turned into a return, or the buyer keeps goods "
    "refunded in full",
)

INVARIANTS: tuple[Invariant, ...] = (
    LINE_REFUNDS_WITHIN_PAID,
    REFUND_AS_DUE,
    ONE_RUNNING_DEADLINE,
    OFFERS_NEVER_EXTEND,
    MONEY_HAS_PARTIES,
    SHIPMENT_HELD,
)

# Off only to measure what checking costs (scripts/bench.py runs with and without, in turn).
ENFORCED = True


class InvariantBroken(NotAllowed):
    """A write that would break an invariant: refused, naming it; nothing is recorded."""

    code = "invariant_broken"

    def __init__(self, invariant: Invariant, detail: str) -> None:
        super().__init__(f"{detail}: refused, as it breaks {invariant.name} ({invariant.why})")
        self.invariant = invariant


def _statuses_waiting_for() -> dict[Status, frozenset[DueAction]]:
    """The deadlines each waiting status may run: those that fire from it (the table's)."""
    found: dict[Status, set[DueAction]] = {}
    for action in DueAction:
        for status in ALLOWED_FROM.get(action.value, frozenset()):
            found.setdefault(status, set()).add(action)
    return {status: frozenset(actions) for status, actions in found.items()}


# The deadline(s) a case waiting in each status runs: a merchant's review its auto-approval, an
# escalated case the platform's ruling deadline (then its grace), a rejection its lapse, ...
DEADLINES_OF: Mapping[Status, frozenset[DueAction]] = _statuses_waiting_for()
WAITING: frozenset[Status] = frozenset(AWAITING_STATUSES | {S.ESCALATED, S.REJECTED})


# Writes ------------------------------------------------------------------------------------------


def check_case_event(case: ReturnCase, event: CaseEvent) -> None:
    """Refuse a case event that would break an invariant, given the case as it stands before
    it. Called by the aggregate for every event it records, the consequences of an action
    included, before the event is applied."""
    if not ENFORCED:
        return
    where = f"case {case.id}"
    _check_deadline(case, event, where)
    if isinstance(event, (OfferDeclined, OfferLapsed)):
        resumed = case.resume_due
        if (
            resumed is not None
            and event.due is not None
            and event.due.due_at > max(resumed.due_at, event.at)
        ):
            raise InvariantBroken(
                OFFERS_NEVER_EXTEND,
                f"{where}: the offer interrupted a deadline due {resumed.due_at.isoformat()}; "
                f"{type(event).__name__} would give back one due {event.due.due_at.isoformat()}",
            )
    if event.status is S.AWAITING_MERCHANT and case.review_until is not None:
        due = event.due
        if due is not None and due.due_at > max(case.review_until, event.at):
            raise InvariantBroken(
                OFFERS_NEVER_EXTEND,
                f"{where}: the merchant's review ends {case.review_until.isoformat()}; "
                f"{type(event).__name__} would run it to {due.due_at.isoformat()}",
            )
    if (
        event.status is case.status
        and case.due is not None
        and event.due != case.due
        and not isinstance(event, ReceiptExtended)
        and event.status not in (S.ESCALATED,)  # a ruling overdue starts its grace
    ):
        raise InvariantBroken(
            OFFERS_NEVER_EXTEND,
            f"{where}: {type(event).__name__} leaves the case {event.status} but moves its "
            "deadline (only the merchant's one receipt extension may)",
        )
    if isinstance(event, CaseRefunded):
        _check_refund(case, event, where, lapsed=case.last_kind is RulingLapsed)
    elif isinstance(event, (FreightCharged, LateShipmentPenalty)):
        _check_parties(event.amount, event.payer, event.payee, where)
    elif isinstance(event, AdvanceReassigned):
        _check_advance_back(case, event, where)


def _check_deadline(case: ReturnCase, event: CaseEvent, where: str) -> None:
    due: Deadline | None = event.due
    if event.status in FINAL_STATUSES:
        if due is not None:
            raise InvariantBroken(
                ONE_RUNNING_DEADLINE,
                f"{where}: {type(event).__name__} ends the case {event.status} with a deadline "
                f"({due.action.value}) still running",
            )
        return
    if event.status not in WAITING:
        return
    if due is None:
        # A case recorded before its wait had a deadline keeps what it had until it moves.
        if event.status is case.status and case.due is None:
            return
        raise InvariantBroken(
            ONE_RUNNING_DEADLINE,
            f"{where}: {type(event).__name__} leaves the case {event.status} with no deadline "
            "running",
        )
    allowed = DEADLINES_OF.get(event.status, frozenset())
    if due.action not in allowed:
        names = ", ".join(sorted(a.value for a in allowed))
        raise InvariantBroken(
            ONE_RUNNING_DEADLINE,
            f"{where}: {type(event).__name__} leaves the case {event.status} running "
            f"{due.action.value}, not its own ({names})",
        )


def _check_refund(case: ReturnCase, event: Any, where: str, *, lapsed: bool) -> None:
    amount: Decimal = event.amount
    _check_parties(amount, event.paid_by, Party.BUYER, where)
    if event.owed_by is Party.BUYER or (event.owed_by is Party.PLATFORM and not lapsed):
        raise InvariantBroken(
            MONEY_HAS_PARTIES,
            f"{where}: a refund paid by the {event.paid_by.value} owed by the "
            f"{event.owed_by.value}",
        )
    if event.paid_by is Party.MERCHANT and event.owed_by is not Party.MERCHANT:
        raise InvariantBroken(
            MONEY_HAS_PARTIES, f"{where}: a refund the merchant pays is the merchant's"
        )
    total = case.refunded_amount + amount
    if total > case.asked:
        raise InvariantBroken(
            REFUND_AS_DUE,
            f"{where}: a refund of {money_str(amount)} would make {money_str(total)} refunded, "
            f"more than the {money_str(case.asked)} asked",
        )
    if amount != case.refund_due:
        raise InvariantBroken(
            REFUND_AS_DUE,
            f"{where}: a refund of {money_str(amount)} where {money_str(case.refund_due)} is due "
            "(a smaller amount is an offer the buyer accepts, or the platform rules)",
        )


# Who an advanced refund may be put on instead of the merchant, after which first event: the
# buyer when the platform ruled for the merchant, the platform when it let its ruling lapse.
_ADVANCE_BACK_AFTER: Mapping[Party, str] = {
    Party.BUYER: "CaseRuled",
    Party.PLATFORM: "RulingLapsed",
}


def _check_advance_back(case: ReturnCase, event: AdvanceReassigned, where: str) -> None:
    _check_parties(event.amount, event.owed_by, Party.MERCHANT, where)
    after = _ADVANCE_BACK_AFTER.get(event.owed_by)
    reassigned = any(e["type"] == "advance_reassigned" for e in case.ledger)
    if after != case.last_kind.__name__ or event.amount != case.advance or reassigned:
        raise InvariantBroken(
            MONEY_HAS_PARTIES,
            f"{where}: {money_str(event.amount)} of the platform's advance put on the "
            f"{event.owed_by.value} after {case.last_kind.__name__} (advanced: "
            f"{money_str(case.advance)}{', reassigned already' if reassigned else ''})",
        )


def _check_parties(amount: Decimal, payer: Party, payee: Party, where: str) -> None:
    if amount <= ZERO or payer is payee:
        raise InvariantBroken(
            MONEY_HAS_PARTIES,
            f"{where}: {money_str(amount)} from the {payer.value} to the {payee.value}",
        )


def check_order_event(order: Order, event: Event) -> None:
    """Refuse an order event that would break an invariant, given the order before it."""
    if not ENFORCED:
        return
    if isinstance(event, BOOKS_REFUNDS):
        for sku, share in event.refunded.items():
            line = order.lines.get(sku)
            total = order.refunded.get(sku, ZERO) + share
            worth = line_worth(order, sku)
            if line is None or share < ZERO or total > worth:
                raise InvariantBroken(
                    LINE_REFUNDS_WITHIN_PAID,
                    f"order {order.order_id} line {sku}: case {event.case_id} would bring what "
                    f"the line refunded to {money_str(total)}, more than the "
                    f"{money_str(worth)} it is worth",
                )
    elif isinstance(event, OrderShipped):
        held = set(order.shipment_held_by) - set(event.turned)
        if held:
            cases = ", ".join(sorted(str(c) for c in held))
            raise InvariantBroken(
                SHIPMENT_HELD,
                f"order {order.order_id}: refund-only case {cases}, opened before shipment, "
                "holds it",
            )


def line_worth(order: Order, sku: str) -> Decimal:
    """The most a line may refund in all: what was paid for it, or its list price where it
    carries one (missing gifts and accessories are made good at it)."""
    line = order.lines.get(sku)
    if line is None:
        return ZERO
    worth = line.total
    if line.list_price is not None:
        worth = max(worth, (line.list_price * line.quantity).quantize(CENT))
    return worth


# Reads -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    check: str  # transition, deadline, time, money
    version: int
    message: str


@dataclass
class CaseReplay:
    """The audit's cheap checks, one stored event at a time (``step``), over a case's history
    in version order; ``finish`` once the whole history is read. Each finding says, in the
    audit's words, what is wrong with which version."""

    status: Status | None = None
    head: CaseEvent | None = None  # the first event of the command being read
    seen: set[str] = field(default_factory=set)  # its consequences so far, by name
    rated: bool = False
    running: Deadline | None = None
    last_at: datetime | None = None
    extended: bool = False
    refunded: Decimal = ZERO
    limit: Decimal | None = None  # what refunds may reach: the amount asked, or agreed
    advanced: bool = False  # refunded as the goods went back (an instant refund)

    def step(self, event: CaseEvent) -> list[Finding]:
        found = self._transition(event)
        found += self._deadline(event)
        found += self._money(event)
        return found

    def finish(self) -> list[Finding]:
        """The last command read has the consequence its status calls for."""
        return self._settle()

    # Transitions ----------------------------------------------------------------------------

    def _settle(self) -> list[Finding]:
        head = self.head
        if head is None:
            return []
        owed = (ADVANCE_REQUIRED if self.advanced else REQUIRED_CONSEQUENCE).get(head.status)
        if kind_of(head).__name__ in CONSEQUENCES and owed is not None and owed not in self.seen:
            v = head.originator_version
            return [
                Finding(
                    "transition",
                    v,
                    f"version {v}: {kind_of(head).__name__} left the case {head.status} but no "
                    f"{owed} follows it",
                )
            ]
        return []

    def _transition(self, event: CaseEvent) -> list[Finding]:
        found: list[Finding] = []
        v = event.originator_version
        kind = kind_of(event)
        name = kind.__name__
        action = ACTION_OF.get(name)
        head = self.head
        consequence = (
            head is not None
            and event.command_id == head.command_id
            and event.at == head.at
            and name in CONSEQUENCES.get(kind_of(head).__name__, frozenset())
            and name not in self.seen
            and self.status == event.status
        )
        if consequence:
            self.seen.add(name)
            self.status = event.status
            if kind is CaseRefunded and event.status is S.AWAITING_MERCHANT_RECEIPT:
                self.advanced = True
            return found
        found += self._settle()
        self.head, self.seen = None, set()
        status = self.status
        if action is None:
            what = "is recorded only as part of another action" if name in KNOWN else "unknown"
            found.append(Finding("transition", v, f"version {v}: {name} {what}"))
        elif kind is CaseOpened:
            if status is not None:
                found.append(Finding("transition", v, f"version {v}: opened again"))
            self.head = event
        elif status is None:
            found.append(
                Finding("transition", v, f"version {v}: {action} before the case was opened")
            )
        else:
            if status not in ALLOWED_FROM[action]:
                allowed = ", ".join(sorted(ALLOWED_FROM[action]))
                found.append(
                    Finding(
                        "transition",
                        v,
                        f"version {v}: {action} is not allowed from {status} (only from {allowed})",
                    )
                )
            if name in UNCHANGED and event.status != status:
                found.append(Finding("transition", v, f"version {v}: {action} changed the status"))
            if kind is CaseRated:
                if self.rated:
                    found.append(Finding("transition", v, f"version {v}: rated a second time"))
                self.rated = True
            self.head = event
        if action and name not in UNCHANGED and event.status not in LEADS_TO.get(name, ()):
            found.append(
                Finding("transition", v, f"version {v}: {name} cannot leave a case {event.status}")
            )
        self.status = event.status
        return found

    # Deadlines and time --------------------------------------------------------------------

    def _deadline(self, event: CaseEvent) -> list[Finding]:
        found: list[Finding] = []
        v = event.originator_version
        running, last_at = self.running, self.last_at
        if last_at is not None and event.at < last_at:
            found.append(
                Finding(
                    "time",
                    v,
                    f"version {v} happened at {event.at.isoformat()}, before the event "
                    f"before it ({last_at.isoformat()})",
                )
            )
        kind = kind_of(event)
        if isinstance(event, DeadlineFired):
            fired = event.fired
            action = ACTION_OF[kind.__name__]
            if event.actor.role is not Role.SYSTEM:
                found.append(
                    Finding("deadline", v, f"version {v}: {action} recorded as {event.actor.role}")
                )
            if fired.action.value != action:
                found.append(
                    Finding(
                        "deadline",
                        v,
                        f"version {v}: a {action} that names a {fired.action} deadline",
                    )
                )
            if event.at < fired.due_at:
                found.append(
                    Finding(
                        "deadline",
                        v,
                        f"version {v}: {action} fired at {event.at.isoformat()}, before its "
                        f"deadline {fired.due_at.isoformat()}",
                    )
                )
            if running != fired:
                was = f"{running.action} due {running.due_at.isoformat()}" if running else "none"
                found.append(
                    Finding(
                        "deadline",
                        v,
                        f"version {v}: fired a deadline that was not the one running ({was})",
                    )
                )
        person = event.actor.role is not Role.SYSTEM and kind.__name__ in ACTION_OF
        if person and running is not None and event.at >= running.due_at:
            # The clock acts first: by then the deadline had fired, whether or not a tick ran.
            found.append(
                Finding(
                    "deadline",
                    v,
                    f"version {v}: {ACTION_OF[kind.__name__]} by the {event.actor.role} at "
                    f"{event.at.isoformat()} came after {running.action} fell due at "
                    f"{running.due_at.isoformat()}: the clock should have acted first",
                )
            )
        if isinstance(event, ReceiptExtended):
            if self.extended:
                found.append(
                    Finding("deadline", v, f"version {v}: the receipt window extended again")
                )
            self.extended = True
            if not _moved_by(running, event.due, event.hours):
                found.append(
                    Finding(
                        "deadline",
                        v,
                        f"version {v}: an extension of {event.hours} hours that does not move "
                        "the running deadline by as much",
                    )
                )
        elif kind.__name__ in UNCHANGED and event.due != running:
            found.append(
                Finding(
                    "deadline", v, f"version {v}: {ACTION_OF[kind.__name__]} moved the deadline"
                )
            )
        self.running = event.due
        self.last_at = event.at if last_at is None else max(last_at, event.at)
        return found

    # Money -----------------------------------------------------------------------------------

    def _money(self, event: CaseEvent) -> list[Finding]:
        found: list[Finding] = []
        v = event.originator_version
        if isinstance(event, CaseOpened):
            self.limit = getattr(event, "amount", None)  # a partial event: nothing to hold to
            return found
        asked = self.limit
        offered = (
            event.offered_amount
            if isinstance(event, ChangeOffered)
            else event.agreed_amount
            if isinstance(event, OfferAccepted)
            else None
        )
        if offered is not None and asked is not None:
            if offered <= ZERO or offered > asked:
                found.append(
                    Finding(
                        "money",
                        v,
                        f"version {v}: {money_str(offered)} offered, but {money_str(asked)} "
                        "was asked",
                    )
                )
            if isinstance(event, OfferAccepted):
                self.limit = offered
        if isinstance(event, CaseRefunded):
            if event.amount <= ZERO:
                found.append(Finding("money", v, f"version {v}: a refund of {event.amount}"))
            self.refunded += event.amount
            if self.limit is not None and self.refunded > self.limit:
                found.append(
                    Finding(
                        "money",
                        v,
                        f"version {v}: refunds reach {money_str(self.refunded)}, more than the "
                        f"{money_str(self.limit)} asked",
                    )
                )
        return found


def _moved_by(before: Deadline | None, after: Deadline | None, hours: int) -> bool:
    """The same deadline, ``hours`` (more than none) later."""
    from datetime import timedelta

    return (
        before is not None
        and after is not None
        and hours > 0
        and after == before.model_copy(update={"due_at": before.due_at + timedelta(hours=hours)})
    )


def kind_of(event: CaseEvent) -> type[CaseEvent]:
    """The event class the tables name for this event (its own, or the nearest base: a
    subclass, an upcast shape, reads as the class it extends)."""
    for cls in type(event).__mro__:
        if cls.__name__ in KNOWN:
            return cls
    return type(event)


__all__ = [
    "INVARIANTS",
    "CaseReplay",
    "Finding",
    "Invariant",
    "InvariantBroken",
    "check_case_event",
    "check_order_event",
    "line_worth",
]
