"""The `ReturnCase` aggregate: one method per action of the transition table,
engine/domain/transitions.py.

Each method checks the rules for the current status and its own inputs, then takes the action's
row of the table: the new status, the deadline it starts, the money moved, and the events to
record, one (or a few, where one action has consequences, as an approval that refunds at once).
Every case event records the status it leaves the case in and the deadline then running, so a
replay, an audit or a projection reads what happened without re-deriving it from rules that may
since have changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any
from uuid import UUID

from aftersales.engine.domain.case_events import (
    EVENT_CLASSES,
    AdvanceReassigned,
    CaseApproved,
    CaseAutoApproved,
    CaseEscalated,
    CaseEvent,
    CaseOpened,
    CaseRated,
    CaseRefunded,
    CaseRejected,
    CaseRuled,
    CaseTurnedReturn,
    ChangeOffered,
    DeliveryRefused,
    FreightCharged,
    GoodsReceived,
    GoodsRecovered,
    GoodsShippedBack,
    LateShipmentPenalty,
    MessagePosted,
    MissingItemsReshipped,
    OfferAccepted,
    OfferDeclined,
    OfferLapsed,
    ParcelIntercepted,
    ReceiptExtended,
    ReplacementShipped,
    ReshipOverdue,
    RulingOverdue,
)
from aftersales.engine.domain.errors import BadInput, NotAllowed, NotFound
from aftersales.engine.domain.events import Act, Aggregate, Deadline, Event
from aftersales.engine.domain.invariants import check_case_event
from aftersales.engine.domain.order import Order, lines_worth
from aftersales.engine.domain.order_events import CaseLine, Shipment
from aftersales.engine.domain.policy import Policy, Stage
from aftersales.engine.domain.transitions import (
    ALLOWED_FROM,
    INTERCEPT,
    OPEN,
    PERSON_ACTIONS,
    REFUSE_DELIVERY,
    TURN_RETURN,
    Transition,
    claim_misfit,
    outcome,
)
from aftersales.engine.domain.values import (
    FINAL_STATUSES,
    PARCEL_LOST_OR_DAMAGED,
    RETURN_TYPES,
    ZERO,
    CaseType,
    Claim,
    Condition,
    DueAction,
    Party,
    ReasonGroup,
    Role,
    Status,
    money_str,
    reason_group,
)

S = Status

# The transition table is engine/domain/transitions.py: the aggregate reads its row for each action
# (`outcome`) and enforces `ALLOWED_FROM`, derived from it, as the audit does.

# Statuses in which a case holds its order lines (no other case may open on them).
HOLDING_STATUSES = frozenset(set(Status) - FINAL_STATUSES - {S.REJECTED})


STAGE_OF: Mapping[DueAction, Stage] = {
    DueAction.AUTO_APPROVE: "merchant_review",
    DueAction.AUTO_CLOSE: "buyer_shipment",
    DueAction.AUTO_REFUND: "merchant_receipt",
    DueAction.RESHIP_OVERDUE: "reshipment",
    DueAction.REPLACEMENT_OVERDUE: "replacement",
    DueAction.OFFER_LAPSED: "offer_answer",
    DueAction.RULING_OVERDUE: "ruling",
    DueAction.RULING_LAPSED: "ruling_grace",
}


# The aggregate ---------------------------------------------------------------------------------


class ReturnCase(Aggregate):
    # The shop's default return address, as the engine read it from the shop for the action
    # at hand (engine/domain/shop.py): given to approvals of returns that name none. Not part
    # of the case's state: set before each action that may approve, never from an event.
    default_address: str | None = None
    # Why the buyer may not be refunded at once (an instant refund, 极速退款) as the goods go
    # back, as the engine read their standing for the action at hand (engine/domain/buyer.py);
    # None: they may. Like the address, set before each ship-back, never from an event.
    instant_refund_refusal: str | None = "the buyer's standing was not read"

    if TYPE_CHECKING:  # state set by when(); see Order for why only for the type checker
        order_id: str
        order_ref: UUID
        merchant_id: str
        buyer_id: str
        case_type: CaseType
        reason: str
        amount: Decimal
        lines: tuple[CaseLine, ...]
        evidence: tuple[str, ...]
        note: str | None
        follows: UUID | None
        order_shipped: bool
        after_sales_until: datetime | None
        escalation_days_after_rejection: int | None
        rejected_at: datetime | None
        pays_at_most: Decimal | None
        asked: Decimal
        review_until: datetime | None
        resume_status: Status | None
        resume_due: Deadline | None
        rulings: int
        ruling_overdue: bool
        last_kind: type[CaseEvent]
        status: Status
        due: Deadline | None
        opened_at: datetime
        last_at: datetime
        refunded_amount: Decimal
        refund_paid_by: Party | None
        # What the platform advanced at ship-back (an instant refund; ZERO: none).
        advance: Decimal
        return_address: str | None
        rejection: dict[str, str] | None
        return_shipment: Shipment | None
        receipt_condition: Condition | None
        replacement_shipment: Shipment | None
        reshipment: Shipment | None
        escalation: dict[str, Any] | None
        ruling: dict[str, Any] | None
        freight_on_merchant: bool
        late_shipment: bool
        goods_recovered: bool
        ledger: list[dict[str, Any]]
        rating: dict[str, Any] | None
        policy_version: str | None
        order_delivered: bool
        messages: list[dict[str, Any]]
        offers: list[dict[str, Any]]
        receipt_extension: dict[str, Any] | None

    # Opening and replay ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        case_id: UUID,
        order: Order,
        *,
        case_type: CaseType,
        reason: str,
        amount: Decimal | None,
        lines: list[CaseLine],
        evidence: list[str],
        note: str | None,
        policy: Policy,
        act: Act,
    ) -> ReturnCase:
        """A buyer's request on a known order, checked against the order and the policy."""
        if act.actor.id != order.buyer_id:
            raise NotAllowed(
                f"order {order.order_id} belongs to buyer {order.buyer_id}; "
                f"{act.actor.id} may not open a case on it"
            )
        if act.at < order.placed_at:
            raise BadInput(
                f"open at {act.at.isoformat()} is before order {order.order_id} was placed"
            )
        group = reason_group(reason)
        parcel = reason in PARCEL_LOST_OR_DAMAGED
        if case_type is CaseType.RESHIP and group is not ReasonGroup.MISSING_ITEMS and not parcel:
            raise NotAllowed(
                "a reship case is for missing items or a parcel lost or damaged on its way: "
                "use a missing_items.* reason, logistics.lost or logistics.damaged"
            )
        # A parcel lost or damaged on its way may be reshipped once it was sent, arrived or not.
        before_delivery = case_type is CaseType.REFUND_ONLY or (
            case_type is CaseType.RESHIP and parcel and order.shipped_at is not None
        )
        if order.delivered_at is None and not before_delivery:
            raise NotAllowed(
                f"order {order.order_id} is not delivered yet: only a refund_only case (or a "
                "reship of a shipped parcel lost or damaged on its way) may be opened before "
                "delivery"
            )
        after_sales_until = None
        if order.delivered_at is not None:
            # Every service type has its window after delivery (the category's, where the
            # policy sets one for the goods).
            days = policy.after_sales_window(case_type, [line.category for line in lines])
            after_sales_until = order.delivered_at + timedelta(days=days)
            if act.at > after_sales_until:
                raise NotAllowed(
                    f"the {days}-day after-sales window for {_TYPE_WORDS[case_type]} on order "
                    f"{order.order_id} closed at {after_sales_until.isoformat()}: a "
                    f"{_TYPE_WORDS[case_type]} case is no longer accepted"
                )
        if group is ReasonGroup.BUYER:
            for line in lines:
                if policy.excludes_no_reason(line.category):
                    raise NotAllowed(
                        f"line {line.sku} is {line.category}: the policy excludes that "
                        "category from no-reason (buyer.*) returns"
                    )
            if order.delivered_at is not None:
                # Calendar days in the platform's zone, to 23:59:59 of the last (all of it).
                window_end = policy.no_reason_window_end(order.delivered_at)
                if act.at >= window_end + timedelta(seconds=1):
                    raise NotAllowed(
                        f"the {policy.no_reason_return_days}-day no-reason window closed at "
                        f"{window_end.isoformat()}: a buyer.* reason is no longer accepted"
                    )
        order.check_lines_free(lines)
        order.check_case_limit(lines, policy.max_cases_per_line)
        listed = policy.listed_price_categories if group is ReasonGroup.MISSING_ITEMS else ()
        refundable = order.refundable(lines, listed)
        if amount is None:
            if case_type in (CaseType.REFUND_ONLY, CaseType.RETURN_REFUND):
                raise BadInput(f"a {_TYPE_WORDS[case_type]} case needs an amount")
            amount = refundable
        if amount <= ZERO:
            raise BadInput("the amount asked for must be more than 0")
        if amount > refundable:
            raise NotAllowed(
                f"{money_str(amount)} asked, but at most {money_str(refundable)} can be refunded "
                "on these lines (what was paid, less earlier refunds)"
            )
        shipped = order.shipped_at is not None
        row = outcome(OPEN, None, case_type=case_type)
        due = (
            None
            if row.starts is None
            else _deadline(policy, row.starts, case_type, act.at, shipped=shipped)
        )
        case = cls._create_sealed(
            CaseOpened,
            id=case_id,
            status=row.after,
            due=due,
            order_id=order.order_id,
            order_ref=order.id,
            merchant_id=order.merchant_id,
            buyer_id=order.buyer_id,
            case_type=case_type,
            reason=reason,
            amount=amount,
            lines=tuple(lines),
            evidence=tuple(evidence),
            note=note,
            follows=order.previous_case(lines),
            order_shipped=shipped,
            order_delivered_at=order.delivered_at,
            freight_insurance=order.freight_insurance,
            after_sales_until=after_sales_until,
            escalation_days_after_rejection=policy.escalation_days_after_rejection,
            **act.fields(),
        )
        return case

    def check_new(self, event: Event) -> None:
        assert isinstance(event, CaseEvent)
        check_case_event(self, event)

    def when(self, event: Event) -> None:
        assert isinstance(event, CaseEvent)
        super().when(event)
        apply = _applier(type(event))
        if apply is not None:
            apply(self, event)
        self.last_kind = type(event)
        if event.status is S.REJECTED and self.status is not S.REJECTED:
            self.rejected_at = event.at  # when the window to take it to the platform opened
        self.status = event.status
        self.due = event.due
        self.last_at = max(self.last_at, event.at)
        if event.due is not None:
            self.policy_version = event.due.policy_version

    # What each kind of event changes besides the status and the deadline (see _APPLY).

    def _opened(self, event: CaseOpened) -> None:
        self.freight_insurance = event.freight_insurance
        self.order_id = event.order_id
        self.order_ref = event.order_ref
        self.merchant_id = event.merchant_id
        self.buyer_id = event.buyer_id
        self.case_type = event.case_type
        self.reason = event.reason
        self.amount = event.amount
        self.lines = event.lines
        self.evidence = event.evidence
        self.note = event.note
        self.follows = event.follows
        self.order_shipped = event.order_shipped
        self.after_sales_until = event.after_sales_until
        self.escalation_days_after_rejection = event.escalation_days_after_rejection
        self.rejected_at = None
        self.pays_at_most = None
        self.asked = event.amount
        # The merchant's review runs from the opening: offers never move it later.
        self.review_until = event.due.due_at if event.due is not None else None
        self.resume_status = None
        self.resume_due = None
        self.rulings = 0
        self.ruling_overdue = False
        self.opened_at = event.at
        self.last_at = event.at
        self.refunded_amount = ZERO
        self.refund_paid_by = None
        self.advance = ZERO
        self.return_address = None
        self.rejection = None
        self.return_shipment = None
        self.receipt_condition = None
        self.replacement_shipment = None
        self.reshipment = None
        self.escalation = None
        self.ruling = None
        self.freight_on_merchant = False
        self.late_shipment = False
        self.goods_recovered = False
        self.ledger = []
        self.rating = None
        self.policy_version = None
        self.order_delivered = event.order_delivered_at is not None
        self.messages = []
        self.offers = []
        self.receipt_extension = None

    def _approved(self, event: CaseApproved | CaseAutoApproved) -> None:
        self.return_address = event.return_address

    def _rejected(self, event: CaseRejected) -> None:
        self.rejection = {"reason": event.reason, "communication": event.communication}

    def _shipped_back(self, event: GoodsShippedBack) -> None:
        self.return_shipment = event.shipment

    def _received(self, event: GoodsReceived) -> None:
        self.receipt_condition = event.condition

    def _refunded(self, event: CaseRefunded) -> None:
        if event.status is S.AWAITING_MERCHANT_RECEIPT:  # refunded as the goods went back
            self.advance = event.amount
        self.refunded_amount += event.amount
        self.refund_paid_by = event.paid_by
        self._entry(
            event,
            "refund",
            event.amount,
            event.paid_by,
            Party.BUYER,
            owed_by=event.owed_by.value,
        )

    def _freight(self, event: FreightCharged) -> None:
        self._entry(event, "freight", event.amount, event.payer, event.payee, legs=event.legs)

    def _reassigned(self, event: AdvanceReassigned) -> None:
        self._entry(
            event,
            "advance_reassigned",
            event.amount,
            event.owed_by,
            Party.MERCHANT,
            owed_by=event.owed_by.value,
        )

    def _penalty(self, event: LateShipmentPenalty) -> None:
        self._entry(event, "late_shipment_penalty", event.amount, event.payer, event.payee)

    def _recovered(self, event: GoodsRecovered) -> None:
        self.goods_recovered = True

    def _replacement(self, event: ReplacementShipped) -> None:
        self.replacement_shipment = event.shipment

    def _reshipped(self, event: MissingItemsReshipped) -> None:
        self.reshipment = event.shipment

    def _escalated(self, event: CaseEscalated) -> None:
        self.escalation = {
            "claim": event.claim.value,
            "evidence": list(event.evidence),
            "from_status": event.from_status.value,
            "by": event.actor.role.value,
            "at": event.at.isoformat(),
            "evidence_until": _iso(event.evidence_until),
            "pays_at_most": money_str(event.pays_at_most) if event.pays_at_most else None,
            "appeal": self.rulings > 0,
        }
        self.ruling_overdue = False
        if event.pays_at_most is not None:
            self.pays_at_most = event.pays_at_most

    def _ruled(self, event: CaseRuled) -> None:
        self.ruling = {
            "for": event.in_favour_of.value,
            "claim": event.claim.value,
            "note": event.note,
            "by": event.actor.id,
            "at": event.at.isoformat(),
        }
        self.freight_on_merchant = self.freight_on_merchant or event.freight_on_merchant
        self.pays_at_most = event.pays_at_most
        self.rulings += 1
        self.ruling_overdue = False

    def _overdue(self, event: ReshipOverdue) -> None:
        self.late_shipment = True

    def _rated(self, event: CaseRated) -> None:
        self.rating = {"score": event.score, "comment": event.comment}

    def _message(self, event: MessagePosted) -> None:
        self.messages.append(
            {
                "party": event.actor.role.value,
                "by": event.actor.id,
                "at": event.at.isoformat(),
                "text": event.text,
                "evidence": list(event.evidence),
            }
        )

    def _offered(self, event: ChangeOffered) -> None:
        # Where the offer found the case (applied before the status changes): an offer
        # declined or unanswered gives the case back there, with that deadline.
        self.resume_status, self.resume_due = self.status, self.due
        self.offers.append(
            {
                "type": event.case_type.value,
                "amount": (
                    money_str(event.offered_amount) if event.offered_amount is not None else None
                ),
                "note": event.note,
                "by": event.actor.id,
                "at": event.at.isoformat(),
                "answer": None,  # stays None if the case moved on unanswered (escalated)
                "answered_at": None,
            }
        )

    def _answered(self, event: CaseEvent, answer: str) -> None:
        self.offers[-1] = {**self.offers[-1], "answer": answer, "answered_at": event.at.isoformat()}

    def _accepted(self, event: OfferAccepted) -> None:
        self._answered(event, "accepted")
        self.case_type = event.case_type
        self.amount = event.agreed_amount
        if event.return_address is not None:
            self.return_address = event.return_address

    def _declined(self, event: OfferDeclined) -> None:
        self._answered(event, "declined")

    def _lapsed(self, event: OfferLapsed) -> None:
        self._answered(event, "lapsed")

    def _ruling_overdue(self, event: RulingOverdue) -> None:
        self.ruling_overdue = True

    def _turned(self, event: CaseTurnedReturn) -> None:
        self.case_type = event.case_type
        self.order_shipped = True

    def _extended(self, event: ReceiptExtended) -> None:
        self.receipt_extension = {
            "hours": event.hours,
            "reason": event.reason,
            "by": event.actor.id,
            "at": event.at.isoformat(),
        }

    def _entry(
        self, event: CaseEvent, kind: str, amount: Decimal, payer: Party, payee: Party, **more: Any
    ) -> None:
        self.ledger.append(
            {
                "type": kind,
                "amount": money_str(amount),
                "payer": payer.value,
                "payee": payee.value,
                "at": event.at.isoformat(),
                "version": event.originator_version,
                **more,
            }
        )

    # Shared checks ----------------------------------------------------------------------------

    def allowed_now(self) -> list[str]:
        allowed = [a for a in PERSON_ACTIONS if self.status in ALLOWED_FROM[a]]
        if self.rating is not None and "rate" in allowed:
            allowed.remove("rate")
        if "recover-goods" in allowed and not self.goods_to_recover:
            allowed.remove("recover-goods")
        if "extend" in allowed and self.receipt_extension is not None:
            allowed.remove("extend")
        if "escalate" in allowed and self._escalation_refused() is not None:
            allowed.remove("escalate")
        if INTERCEPT in allowed and not self.may_intercept:
            allowed.remove(INTERCEPT)
        if self.advanced:
            allowed = [a for a in allowed if a not in _NOT_AFTER_ADVANCE]
        return allowed

    @property
    def may_intercept(self) -> bool:
        """A refund only asked for while the order was on its way (as the case knows it)."""
        return (
            self.case_type is CaseType.REFUND_ONLY
            and self.order_shipped
            and not self.order_delivered
        )

    @property
    def refund_due(self) -> Decimal:
        """What a refund pays unless told otherwise: the amount asked (or agreed), or less
        where a ruling concerns less (the missing lines' worth) or the case's lines have less
        left to refund since later cases refunded them; nothing once the platform advanced it
        as the goods went back (an instant refund)."""
        due = self.amount if self.pays_at_most is None else min(self.amount, self.pays_at_most)
        return max(ZERO, due - self.advance)

    @property
    def advanced(self) -> bool:
        """The platform refunded the buyer as the goods went back (an instant refund)."""
        return self.advance > ZERO

    def instant_refund_now(self, policy: Policy) -> bool:
        """Whether goods shipped back now are refunded at once: a return within the policy's
        instant refund limit, by a buyer in the standing it asks (``instant_refund_refusal``,
        read for the action)."""
        rules = policy.instant_refund
        return (
            rules is not None
            and self.case_type is CaseType.RETURN_REFUND
            and self.refund_due <= rules.up_to
            and self.instant_refund_refusal is None
        )

    def _advance_back(self, owed_by: Party) -> dict[type[CaseEvent], dict[str, Any]]:
        """The consequence that puts an advanced refund on another party than the merchant."""
        return {AdvanceReassigned: {"amount": self.advance, "owed_by": owed_by}}

    def _refunded_already(self, action: str) -> NotAllowed:
        return NotAllowed(
            f"case {self.id} was refunded when the goods were shipped back (an instant refund "
            f"the platform advanced): {action} is not allowed; the merchant confirms the goods' "
            "receipt (case receive), and goods not in order go to the platform"
        )

    @property
    def merchant_answered(self) -> bool:
        """The merchant answered the request with an offer the buyer declined or let lapse."""
        return bool(self.offers) and self.offers[-1]["answer"] in ("declined", "lapsed")

    @property
    def escalation_until(self) -> datetime | None:
        """Until when a rejected case may be taken to the platform (None: not rejected, or
        opened before the window was a rule): the deadline the clock closes it at."""
        if self.status is not S.REJECTED or self.rejected_at is None:
            return None
        if self.due is not None and self.due.action is DueAction.ESCALATION_LAPSED:
            return self.due.due_at
        if self.escalation_days_after_rejection is None:
            return None
        return self.rejected_at + timedelta(days=self.escalation_days_after_rejection)

    def _escalation_refused(self) -> str | None:
        """Why the buyer may not escalate now whatever the claim, or None."""
        if self.advanced:
            return self._refunded_already("escalate").message
        if self.status is S.AWAITING_MERCHANT and not self.merchant_answered:
            due = f" (until {self.due.due_at.isoformat()})" if self.due else ""
            return (
                f"case {self.id} is awaiting_merchant: escalate is not allowed while the "
                f"merchant may still answer{due}; if it does not, the request is approved "
                "when its time runs out"
            )
        if self.rulings >= 2:
            return f"case {self.id}: the platform has ruled on it twice; the second ruling is final"
        return None

    @property
    def goods_to_recover(self) -> bool:
        """The platform refunded the buyer on a ruling that left the goods with the buyer."""
        ruling = self.ruling or {}
        return (
            ruling.get("for") == Party.BUYER.value
            and ruling.get("claim") in (Claim.UNJUSTIFIED_REJECTION.value, Claim.OTHER.value)
            and self.refund_paid_by is Party.PLATFORM
            and not self.goods_recovered
        )

    def _check(self, action: str, act: Act) -> None:
        if self.status not in ALLOWED_FROM[action]:
            allowed = ", ".join(self.allowed_now()) or "nothing"
            raise NotAllowed(
                f"case {self.id} is {self.status}: {action} is not allowed; allowed now: {allowed}"
            )
        if act.at < self.last_at:
            raise BadInput(
                f"{action} at {act.at.isoformat()} is before case {self.id}'s latest event "
                f"at {self.last_at.isoformat()}"
            )
        if act.actor.role is Role.BUYER and act.actor.id != self.buyer_id:
            raise NotAllowed(
                f"case {self.id} belongs to buyer {self.buyer_id}; "
                f"{act.actor.id} may not {action} it"
            )

    def _record(self, event_class: type[CaseEvent], act: Act, **kwargs: Any) -> None:
        self.trigger_event(event_class, **kwargs, **act.fields())

    def _wait(self, policy: Policy, action: DueAction, at: datetime) -> Deadline:
        if action is DueAction.ESCALATION_LAPSED:
            # From a ruling for the merchant: the appeal's window; from a rejection: the days
            # the case was opened under.
            days = (
                policy.appeal_days
                if self.status is S.ESCALATED
                else policy.escalation_days_after_rejection
                if self.escalation_days_after_rejection is None
                else self.escalation_days_after_rejection
            )
            return Deadline(
                due_at=at + timedelta(days=days), action=action, policy_version=policy.version
            )
        return _deadline(policy, action, self.case_type, at, shipped=self.order_shipped)

    def _resumed(self, act: Act) -> tuple[Status, Deadline | None]:
        """Where an offer declined or unanswered leaves the case: where the offer found it,
        with the deadline then running, due no later than it was (now, if it passed
        meanwhile: the clock then acts at once)."""
        status = self.resume_status or S.AWAITING_MERCHANT
        due = self.resume_due
        if due is not None and due.due_at < act.at:
            due = due.model_copy(update={"due_at": act.at})
        return status, due

    def _outcome(
        self,
        action: str,
        *,
        claim: Claim | None = None,
        receipt: Condition | None = None,
        ruling: Party | None = None,
        reshipped: bool | None = None,
        appeal: bool | None = None,
        resumes: Status | None = None,
        advance: bool | None = None,
    ) -> Transition:
        return outcome(
            action,
            self.status,
            case_type=self.case_type,
            claim=claim,
            receipt=receipt,
            ruling=ruling,
            reshipped=reshipped,
            appeal=appeal,
            resumes=resumes,
            advance=self.advanced if advance is None else advance,
        )

    def _take(
        self,
        row: Transition,
        act: Act,
        policy: Policy | None = None,
        *,
        amount: Decimal | None = None,
        consequences: Mapping[type[CaseEvent], Mapping[str, Any]] | None = None,
        deadline: Deadline | None = None,
        **fields: Any,
    ) -> None:
        """Record what the row says: its first event, with the fields only the action knows,
        then its consequences in order. Each leaves the case in the row's status with the
        deadline that status starts (a row that changes nothing keeps both); money moves as the
        row says, a refund of ``amount`` (the amount asked unless given). ``deadline``, where an
        action works its deadline out itself (an extension, an accepted offer's new type),
        replaces the one the row would start or keep."""
        if row.after is None:
            status, due = self.status, self.due
        elif row.starts is None:
            status, due = row.after, None
        else:
            assert policy is not None, f"{row.action} starts a deadline: it needs the policy"
            status, due = row.after, self._wait(policy, row.starts, act.at)
        if deadline is not None:
            due = deadline
        refund = self.refund_due if amount is None else amount
        first = EVENT_CLASSES[row.records]
        money = _money(first, row, policy, refund)
        self._record(first, act, status=status, due=due, **money, **fields)
        for name in row.then:
            kind = EVENT_CLASSES[name]
            more = (consequences or {}).get(kind, {})
            self._record(
                kind, act, status=status, due=due, **_money(kind, row, policy, refund), **more
            )

    # The merchant ------------------------------------------------------------------------------

    def approve(
        self,
        act: Act,
        policy: Policy,
        *,
        return_address: str | None = None,
        by_rule: str | None = None,
    ) -> None:
        """Approve the request: a return goes to ``return_address`` (the engine gives the
        shop's default when staff name none); ``by_rule``: approved by that shop rule."""
        self._check("approve", act)
        if return_address is None:
            return_address = self.shop_address(self.case_type)
        self._take(
            self._outcome("approve"), act, policy, return_address=return_address, by_rule=by_rule
        )

    def shop_address(self, case_type: CaseType) -> str | None:
        """The shop's default return address for an approval of this type (None unless it is a
        return): what the engine read from the shop for this action (``default_address``), not
        part of the case's own state."""
        return self.default_address if case_type in RETURN_TYPES else None

    def reject(self, act: Act, policy: Policy, *, reason: str, communication: str) -> None:
        self._check("reject", act)
        if not reason.strip():
            raise BadInput("a rejection needs a reason")
        if not communication.strip():
            raise BadInput(
                "a rejection needs a reference to the talk with the buyer "
                "(its communication: chat log, call note)"
            )
        self._take(self._outcome("reject"), act, policy, reason=reason, communication=communication)

    def refund(self, act: Act, policy: Policy, *, amount: Decimal | None = None) -> None:
        """Refund what is due. A smaller amount is not a refund the merchant may impose: it is
        an offer of a refund only, which the buyer accepts, declines or lets lapse."""
        self._check("refund", act)
        if self.advanced:
            raise self._refunded_already("refund")
        due = self.refund_due
        value = due if amount is None else amount
        if value <= ZERO:
            raise BadInput("a refund must be more than 0")
        if value > due:
            raise NotAllowed(
                f"refund of {money_str(value)} is more than the {money_str(due)} "
                f"{'asked' if due == self.amount else 'due'}"
            )
        if value < due:
            self.offer(
                act,
                policy,
                case_type=CaseType.REFUND_ONLY,
                amount=value,
                note=f"a refund of {money_str(value)} instead of {money_str(due)}",
            )
            return
        self._take(self._outcome("refund"), act, amount=value)

    def receive(self, act: Act, policy: Policy, *, condition: Condition = Condition.OK) -> None:
        self._check("receive", act)
        # Goods not as they should be escalate by themselves: the engine's own claim.
        escalation = {
            "claim": Claim.DISPUTED_RECEIPT,
            "from_status": self.status,
            "note": f"returned goods received {condition.value}",
        }
        self._take(
            self._outcome("receive", receipt=condition),
            act,
            policy,
            consequences={CaseEscalated: escalation},
            condition=condition,
        )

    def ship_replacement(self, act: Act, shipment: Shipment) -> None:
        self._check("ship-replacement", act)
        self._take(self._outcome("ship-replacement"), act, shipment=shipment)

    def reship(self, act: Act, shipment: Shipment | None, *, note: str | None = None) -> None:
        """Reship the missing items, or (no shipment) say it cannot: the platform pays first."""
        self._check("reship", act)
        row = self._outcome("reship", reshipped=shipment is not None)
        if shipment is not None:
            self._take(row, act, shipment=shipment)
        else:
            self._take(row, act, note=note)

    # The buyer ---------------------------------------------------------------------------------

    def ship_back(
        self, act: Act, policy: Policy, shipment: Shipment, *, freight: Decimal | None = None
    ) -> None:
        """The goods go back. Their postage (``freight``: what the buyer paid, claimed with the
        waybill) is the merchant's for a return that is its fault (the reasons the policy
        names), up to the policy's cap; for a no-reason return of an insured order the insurer
        pays the buyer its fixed amount; otherwise the buyer bears it."""
        self._check("ship-back", act)
        if freight is not None and freight <= ZERO:
            raise BadInput("freight must be more than 0.00 (leave it out if nothing was paid)")
        charge = self.return_freight(policy, freight)
        claimed: dict[str, Any] = {"freight": freight} if freight is not None else {}
        row = self._outcome("ship-back", advance=self.instant_refund_now(policy))
        self._take(row, act, policy, shipment=shipment, **claimed)
        if charge is not None:
            amount, payer = charge
            self._record(
                FreightCharged,
                act,
                status=self.status,
                due=self.due,
                amount=amount,
                legs=1,
                payer=payer,
                payee=Party.BUYER,
            )

    def return_freight(
        self, policy: Policy, claimed: Decimal | None
    ) -> tuple[Decimal, Party] | None:
        """Who pays the postage back, and how much, for goods shipped back now (None: the
        buyer bears it, or it was paid already: a wrong item upheld by the platform had both
        legs charged to the merchant)."""
        if any(e["type"] == "freight" and e["payee"] == Party.BUYER.value for e in self.ledger):
            return None
        group = self.reason.partition(".")[0]
        if group in policy.freight_on_merchant:
            if claimed is None:
                return None
            return min(claimed, policy.return_freight_cap), Party.MERCHANT
        if group == ReasonGroup.BUYER.value and self.freight_insurance:
            return policy.freight_insurance_payout, Party.INSURER
        return None

    def withdraw(self, act: Act) -> None:
        self._check("withdraw", act)
        if self.advanced:
            raise self._refunded_already("withdraw")
        self._take(self._outcome("withdraw"), act)

    def escalate(
        self,
        act: Act,
        policy: Policy,
        *,
        claim: Claim,
        evidence: list[str],
        note: str | None = None,
        order: Order | None = None,
    ) -> None:
        """The buyer asks the platform to step in. A rejected case takes its lines back, so it
        needs its ``order``: what later cases refunded on them since is no longer owed."""
        refused = self._escalation_refused()
        if refused is not None:
            raise NotAllowed(refused)
        self._check("escalate", act)
        if claim is Claim.DISPUTED_RECEIPT:
            raise BadInput(
                "claim must be missing_items, wrong_item, unjustified_rejection or other"
            )
        until = self.escalation_until
        if until is not None and act.at > until:
            what = (
                "a ruling for the merchant may be appealed"
                if self.rulings
                else ("a rejection may be escalated")
            )
            assert self.rejected_at is not None
            raise NotAllowed(
                f"case {self.id} is rejected: {what} for {(until - self.rejected_at).days} days, "
                f"and that window closed at {until.isoformat()}"
            )
        misfit = claim_misfit(claim, self.reason, self.status)
        if misfit is not None:
            raise NotAllowed(f"case {self.id}: {misfit}")
        pays_at_most = None
        if self.status is S.REJECTED:
            if order is None:
                raise TypeError(
                    "escalating a rejected case takes its order (it takes its lines back)"
                )
            pays_at_most = self._left_on_lines(order, policy)
        self._take(
            self._outcome("escalate"),
            act,
            policy,
            claim=claim,
            evidence=tuple(evidence),
            from_status=self.status,
            note=note,
            pays_at_most=pays_at_most,
            evidence_until=act.at + timedelta(hours=policy.evidence_hours),
        )

    def _left_on_lines(self, order: Order, policy: Policy) -> Decimal | None:
        """What a rejected case taking its lines back may still be paid, where less than due
        (None: all of it). Refused if later cases refunded its lines in full meanwhile: a line
        is never paid twice."""
        listed = (
            policy.listed_price_categories
            if reason_group(self.reason) is ReasonGroup.MISSING_ITEMS
            else ()
        )
        left = order.refundable(list(self.lines), listed)
        if left <= ZERO:
            skus = ", ".join(line.sku for line in self.lines)
            later = sorted(
                {
                    str(order.last_case[line.sku])
                    for line in self.lines
                    if line.sku in order.last_case
                }
                - {str(self.id)}
            )
            by = f" (by case {', '.join(later)})" if later else ""
            raise NotAllowed(
                f"case {self.id}: its lines ({skus}) of order {self.order_id} were refunded in "
                f"full since it was rejected{by}: nothing remains to pay on it, so it cannot be "
                "taken to the platform"
            )
        return left if left < self.refund_due else None

    def rate(self, act: Act, *, score: int, comment: str | None = None) -> None:
        self._check("rate", act)
        if self.rating is not None:
            raise NotAllowed(f"case {self.id} was already rated; a case is rated once")
        if not 1 <= score <= 5:
            raise BadInput(f"score {score} must be 1 to 5")
        self._take(self._outcome("rate"), act, score=score, comment=comment)

    def recover_goods(self, act: Act, *, note: str | None = None) -> None:
        """After the platform refunded an unjustified rejection, the merchant records that it
        got its goods back from the buyer."""
        self._check("recover-goods", act)
        if self.goods_recovered:
            raise NotAllowed(f"case {self.id}: the goods were already recovered")
        if not self.goods_to_recover:
            raise NotAllowed(
                f"case {self.id}: goods are recovered only after the platform refunded the "
                "buyer on an unjustified rejection"
            )
        self._take(self._outcome("recover-goods"), act, note=note)

    # The platform ------------------------------------------------------------------------------

    def rule(
        self, act: Act, policy: Policy, *, in_favour_of: Party, note: str | None = None
    ) -> None:
        self._check("rule", act)
        if in_favour_of not in (Party.BUYER, Party.MERCHANT):
            raise BadInput("a ruling is for the buyer or for the merchant")
        assert self.escalation is not None
        claim = Claim(self.escalation["claim"])
        # A second ruling (on the buyer's appeal, or on a second dispute) is final.
        row = self._outcome("rule", claim=claim, ruling=in_favour_of, appeal=self.rulings > 0)
        # Missing items upheld pay for the missing lines only (gifts and accessories at their
        # list price), whatever else the case asked for; and never more than the case's lines
        # had left when it took them back.
        caps = [self.pays_at_most] if self.pays_at_most is not None else []
        if claim is Claim.MISSING_ITEMS and in_favour_of is Party.BUYER:
            caps.append(lines_worth(list(self.lines), policy.listed_price_categories))
        pays_at_most = min(caps) if caps else None
        self._take(
            row,
            act,
            policy,
            consequences=self._advance_back(Party.BUYER) if self.advanced else None,
            in_favour_of=in_favour_of,
            claim=claim,
            note=note,
            freight_on_merchant=row.freight is not None,
            pays_at_most=pays_at_most,
        )

    # The clock ---------------------------------------------------------------------------------

    def fire(self, act: Act, policy: Policy, action: DueAction) -> None:
        """Fire the running deadline; refused unless it is the one running and it is due."""
        self._check(action.value, act)
        due = self.due
        if due is None or due.action is not action:
            running = f"{self.due.action.value} is" if self.due else "nothing is"
            raise NotAllowed(
                f"case {self.id} is {self.status}: it has no {action.value} deadline running "
                f"({running} running)"
            )
        if act.at == due.due_at:
            # Fired at its due time: keep the deadline's own offset in the record.
            act = replace(act, at=due.due_at)
        if act.at < due.due_at:
            raise NotAllowed(
                f"case {self.id}: {action.value} is due at {due.due_at.isoformat()}, "
                f"not yet at {act.at.isoformat()}"
            )
        if action is DueAction.OFFER_LAPSED:
            self._unanswered(action.value, act, policy, fired=due)
            return
        if action is DueAction.AUTO_APPROVE:
            address = self.shop_address(self.case_type)
            self._take(self._outcome(action.value), act, policy, fired=due, return_address=address)
            return
        lapsed = action is DueAction.RULING_LAPSED and self.advanced
        back = self._advance_back(Party.PLATFORM) if lapsed else None
        self._take(self._outcome(action.value), act, policy, consequences=back, fired=due)

    def _unanswered(self, action: str, act: Act, policy: Policy, **fields: Any) -> None:
        """An offer declined or lapsed: back where it found the case, its deadline as it was."""
        status, due = self._resumed(act)
        row = self._outcome(action, resumes=status)
        self._take(row, act, policy, deadline=due, **fields)

    # Negotiation ------------------------------------------------------------------------------

    def message(self, act: Act, *, text: str, evidence: list[str]) -> None:
        """A message from the buyer, the merchant or the platform (the actor's role), with any
        evidence; it changes neither the status nor the deadline."""
        self._check("message", act)
        if not text.strip():
            raise BadInput("a message needs its text")
        if any(not ref.strip() for ref in evidence):
            raise BadInput("an evidence reference is empty")
        closes = (self.escalation or {}).get("evidence_until")
        if (
            evidence
            and self.status is S.ESCALATED
            and act.actor.role in (Role.BUYER, Role.MERCHANT)
            and closes is not None
            and act.at > datetime.fromisoformat(closes)
        ):
            raise NotAllowed(
                f"case {self.id}: the parties' evidence window closed at {closes}; the "
                "platform rules on what it has (a message without evidence is still taken)"
            )
        row = self._outcome_by("message", act.actor.role)
        self._take(row, act, text=text, evidence=tuple(evidence))

    def offer(
        self,
        act: Act,
        policy: Policy,
        *,
        case_type: CaseType,
        amount: Decimal | None = None,
        note: str | None = None,
    ) -> None:
        """The merchant offers another service instead of the one asked for (while it reviews
        the request), or less money than is due (wherever it may refund: a refund only, for the
        amount offered). The buyer has the policy's window to answer; declined or unanswered,
        the case goes back where the offer found it, its deadline as it was. One at a time."""
        self._check("offer", act)
        if self.advanced:
            raise self._refunded_already("offer")
        due = self.refund_due
        if self.status is not S.AWAITING_MERCHANT and case_type is not CaseType.REFUND_ONLY:
            raise NotAllowed(
                f"case {self.id} is {self.status}: another service is offered while the "
                "merchant reviews the request; now only a refund (refund_only, with its amount) "
                "may be offered"
            )
        if (
            case_type is CaseType.RESHIP
            and reason_group(self.reason) is not ReasonGroup.MISSING_ITEMS
        ):
            raise NotAllowed(f"case {self.id} is not for missing items: a reship cannot be offered")
        less = amount is not None and amount < due
        if case_type is self.case_type and not less:
            raise NotAllowed(
                f"case {self.id} is already {_TYPE_WORDS[case_type]}: an offer changes the "
                "service or the amount"
            )
        if case_type in RETURN_TYPES and self.case_type is CaseType.RESHIP:
            raise NotAllowed(
                f"case {self.id} is for missing items: there is nothing to send back, "
                "only refund only can be offered"
            )
        if case_type in RETURN_TYPES and not self.order_delivered:
            raise NotAllowed(
                f"order {self.order_id} was not delivered when case {self.id} was opened: "
                "only refund only can be offered"
            )
        if amount is not None:
            if amount <= ZERO:
                raise BadInput("the amount offered must be more than 0")
            if amount > due:
                # The amount asked was checked against what was paid on the case's lines.
                raise NotAllowed(
                    f"{money_str(amount)} offered, but at most the {money_str(due)} "
                    f"{'asked' if due == self.amount else 'due'} can be refunded on this case"
                )
        self._take(
            self._outcome("offer"),
            act,
            policy,
            case_type=case_type,
            offered_amount=amount,
            note=note,
        )

    def accept_offer(self, act: Act, policy: Policy) -> None:
        """The buyer takes the offer: the case goes on as an approval of the type offered."""
        self._check("accept-offer", act)
        offered = self.offers[-1]
        case_type = CaseType(offered["type"])
        agreed = self.refund_due if offered["amount"] is None else Decimal(offered["amount"])
        row = outcome("accept-offer", self.status, case_type=case_type)
        # The deadline the new status starts counts with the new type's windows.
        due = (
            None
            if row.starts is None
            else _deadline(policy, row.starts, case_type, act.at, shipped=self.order_shipped)
        )
        self._take(
            row,
            act,
            policy,
            amount=agreed,
            deadline=due,
            case_type=case_type,
            agreed_amount=agreed,
            return_address=self.shop_address(case_type),
        )

    def decline_offer(self, act: Act, policy: Policy) -> None:
        """The buyer declines the offer: the case goes back where the offer found it, with the
        deadline then running (an offer never gives the merchant more time)."""
        self._check("decline-offer", act)
        self._unanswered("decline-offer", act, policy)

    def intercept(
        self, act: Act, policy: Policy, order: Order, *, shipment: Shipment | None = None
    ) -> None:
        """The merchant answers a refund only asked for while the parcel travels by turning
        the parcel back (拦截): the case becomes a return whose goods are on their way back (in
        ``shipment``, else the order's own), refunded on receipt or by the clock."""
        self._check(INTERCEPT, act)
        self._parcel_back(INTERCEPT, act, policy, order, shipment)

    def refuse_delivery(self, act: Act, policy: Policy, order: Order) -> None:
        """The buyer refused the parcel at the door (拒收), the order system reports: the case
        becomes a return whose goods are on their way back in the order's shipment."""
        self._check(REFUSE_DELIVERY, act)
        self._parcel_back(REFUSE_DELIVERY, act, policy, order, None)

    def _parcel_back(
        self, action: str, act: Act, policy: Policy, order: Order, shipment: Shipment | None
    ) -> None:
        if self.case_type is not CaseType.REFUND_ONLY:
            raise NotAllowed(f"case {self.id} is a {self.case_type.value}: only a refund only is")
        if order.shipped_at is None:
            raise NotAllowed(
                f"order {order.order_id} has not shipped: there is no parcel to turn back "
                "(the refund only holds the order: answer it)"
            )
        if order.delivered_at is not None:
            raise NotAllowed(
                f"order {order.order_id} was delivered at {order.delivered_at.isoformat()}: "
                "the parcel can no longer be turned back"
            )
        self._take(
            self._outcome(action),
            act,
            policy,
            case_type=CaseType.RETURN_REFUND,
            shipment=shipment or order.shipment,
        )

    def _parcel_returning(self, event: ParcelIntercepted | DeliveryRefused) -> None:
        self.case_type = event.case_type
        self.order_shipped = True
        self.return_shipment = event.shipment

    def turn_return(self, act: Act) -> None:
        """The order system recorded a shipment under this refund-only case, opened before it:
        the goods went out, so the case becomes a return."""
        self._check(TURN_RETURN, act)
        if not self.holds_shipment:
            raise NotAllowed(
                f"case {self.id} is not a refund-only case opened before the order shipped"
            )
        self._take(self._outcome(TURN_RETURN), act, case_type=CaseType.RETURN_REFUND)

    def extend_receipt(self, act: Act, policy: Policy, *, hours: int, reason: str) -> None:
        """The merchant's one extension of its receipt window, moving the running deadline."""
        self._check("extend", act)
        if self.receipt_extension is not None:
            raise NotAllowed(
                f"case {self.id}: the receipt window was already extended "
                f"({self.receipt_extension['hours']} hours); it is extended once"
            )
        if hours <= 0:
            raise BadInput("an extension must be of at least one hour")
        limit = policy.max_receipt_extension_hours
        if hours > limit:
            raise NotAllowed(
                f"an extension of {hours} hours is more than the {limit} hours the policy allows"
            )
        if not reason.strip():
            raise BadInput("an extension needs a reason")
        assert self.due is not None  # awaiting receipt always has its deadline running
        moved = self.due.model_copy(update={"due_at": self.due.due_at + timedelta(hours=hours)})
        self._take(self._outcome("extend"), act, deadline=moved, hours=hours, reason=reason)

    def _outcome_by(self, action: str, actor: Role) -> Transition:
        return outcome(action, self.status, case_type=self.case_type, actor=actor)

    # Views ---------------------------------------------------------------------------------------

    @property
    def holds_lines(self) -> bool:
        return self.status in HOLDING_STATUSES

    @property
    def holds_shipment(self) -> bool:
        """A refund-only case opened before the order shipped holds the shipment of its lines
        while it is open: the merchant answers before it ships (未发货仅退款)."""
        return (
            self.holds_lines and self.case_type is CaseType.REFUND_ONLY and not self.order_shipped
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "case_id": str(self.id),
            "order_id": self.order_id,
            "merchant_id": self.merchant_id,
            "buyer_id": self.buyer_id,
            "type": self.case_type.value,
            "reason": self.reason,
            "status": self.status.value,
            "amount": money_str(self.amount),
            "refunded_amount": money_str(self.refunded_amount),
            "refund_paid_by": self.refund_paid_by.value if self.refund_paid_by else None,
            "instant_refund": self.advanced,
            "due_at": self.due.due_at.isoformat() if self.due else None,
            "due_action": self.due.action.value if self.due else None,
            "version": self.version,
            "after_sales_until": _iso(self.after_sales_until),
            "escalation_until": _iso(self.escalation_until),
            "lines": [
                {"sku": line.sku, "quantity": line.quantity, "value": money_str(line.value)}
                for line in self.lines
            ],
            "evidence": list(self.evidence),
            "note": self.note,
            "follows": str(self.follows) if self.follows else None,
            "opened_at": self.opened_at.isoformat(),
            "updated_at": self.last_at.isoformat(),
            "return_address": self.return_address,
            "rejection": self.rejection,
            "return_shipment": self.return_shipment.model_dump() if self.return_shipment else None,
            "receipt_condition": self.receipt_condition.value if self.receipt_condition else None,
            "replacement_shipment": self.replacement_shipment.model_dump()
            if self.replacement_shipment
            else None,
            "reshipment": self.reshipment.model_dump() if self.reshipment else None,
            "escalation": self.escalation,
            "ruling": self.ruling,
            "ruling_overdue": self.ruling_overdue,
            "freight_on_merchant": self.freight_on_merchant,
            "late_shipment": self.late_shipment,
            "goods_recovered": self.goods_recovered,
            "ledger": self.ledger,
            "rating": self.rating,
            "policy_version": self.policy_version,
            "messages": self.messages,
            "offers": self.offers,
            "receipt_extension": self.receipt_extension,
            "allowed_actions": self.allowed_now(),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def case_uuid(case_id: str | UUID) -> UUID:
    """A case id as given on the command line; not a UUID means no such case."""
    if isinstance(case_id, UUID):
        return case_id
    try:
        return UUID(str(case_id).strip())
    except ValueError:
        raise NotFound(f"no case {case_id}: case ids look like 3f2b…-…") from None


def settle_order_lines(
    case: ReturnCase, order: Order, *, was_holding: bool, refunded_before: Decimal, act: Act
) -> bool:
    """After an action on a case, keep its order's books: a case that stopped holding its
    lines lets them go (with what the action refunded on them); one that took them back (a
    rejected case escalated) holds them again; one that refunded while it keeps them (an
    instant refund, paid as the goods go back) books the refund at once. True if the order
    recorded something."""
    lines = list(case.lines)
    refunded = case.refunded_amount - refunded_before
    if was_holding and not case.holds_lines:
        order.unlink_case(case.id, case.status.value, lines, refunded, act)
    elif case.holds_lines and not was_holding:
        order.link_case(case.id, lines, act, holds_shipment=case.holds_shipment)
    elif case.holds_lines and refunded > ZERO:
        order.book_refund(case.id, lines, refunded, act)
    else:
        return False
    return True


# The state each kind of event sets, by class; an event of a subclass (an upcast shape, say) reads
# as the class it extends, and one not here changes only the status and the deadline.
_APPLY: Mapping[type[CaseEvent], Callable[[ReturnCase, Any], None]] = {
    CaseOpened: ReturnCase._opened,
    CaseApproved: ReturnCase._approved,
    CaseAutoApproved: ReturnCase._approved,
    CaseRejected: ReturnCase._rejected,
    GoodsShippedBack: ReturnCase._shipped_back,
    GoodsReceived: ReturnCase._received,
    CaseRefunded: ReturnCase._refunded,
    AdvanceReassigned: ReturnCase._reassigned,
    FreightCharged: ReturnCase._freight,
    LateShipmentPenalty: ReturnCase._penalty,
    GoodsRecovered: ReturnCase._recovered,
    ReplacementShipped: ReturnCase._replacement,
    MissingItemsReshipped: ReturnCase._reshipped,
    CaseEscalated: ReturnCase._escalated,
    CaseRuled: ReturnCase._ruled,
    ReshipOverdue: ReturnCase._overdue,
    CaseRated: ReturnCase._rated,
    MessagePosted: ReturnCase._message,
    ChangeOffered: ReturnCase._offered,
    OfferAccepted: ReturnCase._accepted,
    OfferDeclined: ReturnCase._declined,
    OfferLapsed: ReturnCase._lapsed,
    ReceiptExtended: ReturnCase._extended,
    RulingOverdue: ReturnCase._ruling_overdue,
    CaseTurnedReturn: ReturnCase._turned,
    ParcelIntercepted: ReturnCase._parcel_returning,
    DeliveryRefused: ReturnCase._parcel_returning,
}


@cache
def _applier(kind: type[Event]) -> Callable[[ReturnCase, Any], None] | None:
    return next((_APPLY[c] for c in kind.__mro__ if c in _APPLY), None)


def _money(
    kind: type[CaseEvent], row: Transition, policy: Policy | None, refund: Decimal
) -> dict[str, Any]:
    """The fields of an event that moves money: the parties from the row, the amount from the
    action (a refund) or the policy (freight, a penalty)."""
    if kind is CaseRefunded and row.refund is not None:
        return {"amount": refund, "paid_by": row.refund.paid_by, "owed_by": row.refund.owed_by}
    if kind is FreightCharged and row.freight is not None:
        assert policy is not None
        legs = row.freight.legs
        return {
            "amount": policy.freight_per_leg * legs,
            "legs": legs,
            "payer": row.freight.payer,
            "payee": row.freight.payee,
        }
    if kind is LateShipmentPenalty and row.penalty is not None:
        assert policy is not None
        return {
            "amount": policy.late_shipment_penalty,
            "payer": row.penalty.payer,
            "payee": row.penalty.payee,
        }
    return {}


# What a person may no longer do on a case refunded as its goods went back (an instant refund):
# refund it again, offer less, take it to the platform, or walk away with the money.
_NOT_AFTER_ADVANCE = frozenset({"refund", "offer", "escalate", "withdraw"})

# How a case type is written in a sentence.
_TYPE_WORDS: Mapping[CaseType, str] = {
    CaseType.REFUND_ONLY: "refund only",
    CaseType.RETURN_REFUND: "return and refund",
    CaseType.EXCHANGE: "exchange",
    CaseType.RESHIP: "reship",
}


def _deadline(
    policy: Policy, action: DueAction, case_type: CaseType, at: datetime, *, shipped: bool
) -> Deadline:
    window = policy.window(STAGE_OF[action], case_type, shipped=shipped)
    return Deadline(due_at=at + window, action=action, policy_version=policy.version)
