"""The `ReturnCase` aggregate: one method per action of the contract's transition table.

Each method checks the rules for the current status and records one event (or a few, where one
action has several consequences, as an approval that refunds at once). Every case event records
the status it leaves the case in and the deadline then running, so a replay, an audit or a
projection reads what happened without re-deriving it from rules that may since have changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from engine.errors import BadInput, NotAllowed, NotFound
from engine.events import Act, Aggregate, Created, Deadline, Event
from engine.order import CaseLine, Order, Shipment
from engine.policy import Policy, Stage
from engine.values import (
    AWAITING_STATUSES,
    FINAL_STATUSES,
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

# The transition table: the statuses each action may start from. The deadline actions are the
# system's; everything else is a person's. Audit verification reads this same table.
ALLOWED_FROM: Mapping[str, frozenset[Status]] = {
    "approve": frozenset({S.AWAITING_MERCHANT}),
    "reject": frozenset({S.AWAITING_MERCHANT}),
    "refund": frozenset(
        {S.AWAITING_MERCHANT, S.AWAITING_BUYER_SHIPMENT, S.AWAITING_MERCHANT_RECEIPT}
    ),
    "ship-back": frozenset({S.AWAITING_BUYER_SHIPMENT}),
    "receive": frozenset({S.AWAITING_MERCHANT_RECEIPT}),
    "ship-replacement": frozenset({S.AWAITING_REPLACEMENT}),
    "reship": frozenset({S.AWAITING_RESHIPMENT}),
    "withdraw": frozenset(
        {S.AWAITING_MERCHANT, S.AWAITING_BUYER_SHIPMENT, S.REJECTED, S.ESCALATED}
    ),
    "escalate": frozenset(AWAITING_STATUSES | {S.REJECTED}),
    "rule": frozenset({S.ESCALATED}),
    "rate": FINAL_STATUSES,
    "recover-goods": frozenset({S.REFUNDED}),
    DueAction.AUTO_APPROVE.value: frozenset({S.AWAITING_MERCHANT}),
    DueAction.AUTO_CLOSE.value: frozenset({S.AWAITING_BUYER_SHIPMENT}),
    DueAction.AUTO_REFUND.value: frozenset({S.AWAITING_MERCHANT_RECEIPT}),
    DueAction.RESHIP_OVERDUE.value: frozenset({S.AWAITING_RESHIPMENT}),
}
PERSON_ACTIONS = tuple(a for a in ALLOWED_FROM if a not in {d.value for d in DueAction})

# Statuses in which a case holds its order lines (no other case may open on them).
HOLDING_STATUSES = frozenset(set(Status) - FINAL_STATUSES - {S.REJECTED})


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


class CaseApproved(CaseEvent):
    return_address: str | None = None


class CaseRejected(CaseEvent):
    reason: str
    communication: str


class GoodsShippedBack(CaseEvent):
    shipment: Shipment


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


class CaseRuled(CaseEvent):
    in_favour_of: Party
    claim: Claim
    note: str | None = None
    freight_on_merchant: bool = False


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
    pass


class CaseAutoClosed(DeadlineFired):
    pass


class CaseAutoRefunded(DeadlineFired):
    pass


class ReshipOverdue(DeadlineFired):
    """The merchant missed the 24 h reship: recorded as a late shipment against it."""


STAGE_OF: Mapping[DueAction, Stage] = {
    DueAction.AUTO_APPROVE: "merchant_review",
    DueAction.AUTO_CLOSE: "buyer_shipment",
    DueAction.AUTO_REFUND: "merchant_receipt",
    DueAction.RESHIP_OVERDUE: "reshipment",
}


# The aggregate ---------------------------------------------------------------------------------


class ReturnCase(Aggregate):
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
        status: Status
        due: Deadline | None
        opened_at: datetime
        last_at: datetime
        refunded_amount: Decimal
        refund_paid_by: Party | None
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
        if case_type is CaseType.RESHIP and group is not ReasonGroup.MISSING_ITEMS:
            raise NotAllowed("a reship case is for missing items: use a missing_items.* reason")
        if case_type is not CaseType.REFUND_ONLY and order.delivered_at is None:
            raise NotAllowed(
                f"order {order.order_id} is not delivered yet: only a refund_only case "
                "may be opened before delivery"
            )
        if group is ReasonGroup.BUYER:
            for line in lines:
                if policy.excludes_no_reason(line.category):
                    raise NotAllowed(
                        f"line {line.sku} is {line.category}: the policy excludes that "
                        "category from no-reason (buyer.*) returns"
                    )
            if order.delivered_at is not None:
                window_end = order.delivered_at + timedelta(days=policy.no_reason_return_days)
                if act.at > window_end:
                    raise NotAllowed(
                        f"the {policy.no_reason_return_days}-day no-reason window closed at "
                        f"{window_end.isoformat()}: a buyer.* reason is no longer accepted"
                    )
        order.check_lines_free(lines)
        listed = policy.listed_price_categories if group is ReasonGroup.MISSING_ITEMS else ()
        refundable = order.refundable(lines, listed)
        if amount is None:
            if case_type in (CaseType.REFUND_ONLY, CaseType.RETURN_REFUND):
                raise BadInput(f"a {case_type} case needs --amount")
            amount = refundable
        if amount <= ZERO:
            raise BadInput("the amount asked for must be more than 0")
        if amount > refundable:
            raise NotAllowed(
                f"{money_str(amount)} asked, but at most {money_str(refundable)} can be refunded "
                "on these lines (what was paid, less earlier refunds)"
            )
        shipped = order.shipped_at is not None
        due = _deadline(policy, DueAction.AUTO_APPROVE, case_type, act.at, shipped=shipped)
        case = cls._create_sealed(
            CaseOpened,
            id=case_id,
            status=S.AWAITING_MERCHANT,
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
            **act.fields(),
        )
        return case

    def when(self, event: Event) -> None:
        assert isinstance(event, CaseEvent)
        super().when(event)
        if isinstance(event, CaseOpened):
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
            self.opened_at = event.at
            self.last_at = event.at
            self.refunded_amount = ZERO
            self.refund_paid_by = None
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
        self.status = event.status
        self.due = event.due
        self.last_at = max(self.last_at, event.at)
        if event.due is not None:
            self.policy_version = event.due.policy_version
        if isinstance(event, CaseApproved):
            self.return_address = event.return_address
        elif isinstance(event, CaseRejected):
            self.rejection = {"reason": event.reason, "communication": event.communication}
        elif isinstance(event, GoodsShippedBack):
            self.return_shipment = event.shipment
        elif isinstance(event, GoodsReceived):
            self.receipt_condition = event.condition
        elif isinstance(event, CaseRefunded):
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
        elif isinstance(event, FreightCharged):
            self._entry(event, "freight", event.amount, event.payer, event.payee, legs=event.legs)
        elif isinstance(event, LateShipmentPenalty):
            self._entry(event, "late_shipment_penalty", event.amount, event.payer, event.payee)
        elif isinstance(event, GoodsRecovered):
            self.goods_recovered = True
        elif isinstance(event, ReplacementShipped):
            self.replacement_shipment = event.shipment
        elif isinstance(event, MissingItemsReshipped):
            self.reshipment = event.shipment
        elif isinstance(event, CaseEscalated):
            self.escalation = {
                "claim": event.claim.value,
                "evidence": list(event.evidence),
                "from_status": event.from_status.value,
                "by": event.actor.role.value,
                "at": event.at.isoformat(),
            }
        elif isinstance(event, CaseRuled):
            self.ruling = {
                "for": event.in_favour_of.value,
                "claim": event.claim.value,
                "note": event.note,
                "by": event.actor.id,
                "at": event.at.isoformat(),
            }
            self.freight_on_merchant = self.freight_on_merchant or event.freight_on_merchant
        elif isinstance(event, ReshipOverdue):
            self.late_shipment = True
        elif isinstance(event, CaseRated):
            self.rating = {"score": event.score, "comment": event.comment}

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
        return allowed

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
        return _deadline(policy, action, self.case_type, at, shipped=self.order_shipped)

    def _refund(self, act: Act, amount: Decimal, *, paid_by: Party) -> None:
        self._record(
            CaseRefunded,
            act,
            status=S.REFUNDED,
            amount=amount,
            paid_by=paid_by,
            owed_by=Party.MERCHANT,
        )

    def _move_on_after_approval(
        self, act: Act, policy: Policy, first: type[CaseEvent], **fields: Any
    ) -> None:
        if self.case_type is CaseType.REFUND_ONLY:
            self._record(first, act, status=S.REFUNDED, due=None, **fields)
            self._refund(act, self.amount, paid_by=Party.MERCHANT)
        elif self.case_type in RETURN_TYPES:
            due = self._wait(policy, DueAction.AUTO_CLOSE, act.at)
            self._record(first, act, status=S.AWAITING_BUYER_SHIPMENT, due=due, **fields)
        else:
            due = self._wait(policy, DueAction.RESHIP_OVERDUE, act.at)
            self._record(first, act, status=S.AWAITING_RESHIPMENT, due=due, **fields)

    # The merchant ------------------------------------------------------------------------------

    def approve(self, act: Act, policy: Policy, *, return_address: str | None = None) -> None:
        self._check("approve", act)
        self._move_on_after_approval(act, policy, CaseApproved, return_address=return_address)

    def reject(self, act: Act, *, reason: str, communication: str) -> None:
        self._check("reject", act)
        if not reason.strip():
            raise BadInput("a rejection needs --reason")
        if not communication.strip():
            raise BadInput(
                "a rejection needs --communication: a reference to the talk with the buyer "
                "(chat log, call note)"
            )
        self._record(
            CaseRejected, act, status=S.REJECTED, reason=reason, communication=communication
        )

    def refund(self, act: Act, *, amount: Decimal | None = None) -> None:
        self._check("refund", act)
        value = self.amount if amount is None else amount
        if value <= ZERO:
            raise BadInput("a refund must be more than 0")
        if value > self.amount:
            raise NotAllowed(
                f"refund of {money_str(value)} is more than the {money_str(self.amount)} asked"
            )
        self._refund(act, value, paid_by=Party.MERCHANT)

    def receive(self, act: Act, policy: Policy, *, condition: Condition = Condition.OK) -> None:
        self._check("receive", act)
        if condition is not Condition.OK:
            # Goods not as they should be: no refund; the platform decides.
            self._record(GoodsReceived, act, status=S.ESCALATED, condition=condition)
            self._record(
                CaseEscalated,
                act,
                status=S.ESCALATED,
                claim=Claim.DISPUTED_RECEIPT,
                from_status=S.AWAITING_MERCHANT_RECEIPT,
                note=f"returned goods received {condition.value}",
            )
        elif self.case_type is CaseType.EXCHANGE:
            self._record(GoodsReceived, act, status=S.AWAITING_REPLACEMENT, condition=condition)
        else:
            self._record(GoodsReceived, act, status=S.REFUNDED, condition=condition)
            self._refund(act, self.amount, paid_by=Party.MERCHANT)

    def ship_replacement(self, act: Act, shipment: Shipment) -> None:
        self._check("ship-replacement", act)
        self._record(ReplacementShipped, act, status=S.COMPLETED, shipment=shipment)

    def reship(self, act: Act, shipment: Shipment | None, *, note: str | None = None) -> None:
        """Reship the missing items, or (no shipment) say it cannot: the platform pays first."""
        self._check("reship", act)
        if shipment is not None:
            self._record(MissingItemsReshipped, act, status=S.COMPLETED, shipment=shipment)
        else:
            self._record(ReshipImpossible, act, status=S.REFUNDED, note=note)
            self._refund(act, self.amount, paid_by=Party.PLATFORM)

    # The buyer ---------------------------------------------------------------------------------

    def ship_back(self, act: Act, policy: Policy, shipment: Shipment) -> None:
        self._check("ship-back", act)
        due = self._wait(policy, DueAction.AUTO_REFUND, act.at)
        self._record(
            GoodsShippedBack, act, status=S.AWAITING_MERCHANT_RECEIPT, due=due, shipment=shipment
        )

    def withdraw(self, act: Act) -> None:
        self._check("withdraw", act)
        self._record(CaseWithdrawn, act, status=S.CLOSED)

    def escalate(
        self, act: Act, *, claim: Claim, evidence: list[str], note: str | None = None
    ) -> None:
        self._check("escalate", act)
        if claim is Claim.DISPUTED_RECEIPT:
            raise BadInput(
                "claim must be missing_items, wrong_item, unjustified_rejection or other"
            )
        self._record(
            CaseEscalated,
            act,
            status=S.ESCALATED,
            claim=claim,
            evidence=tuple(evidence),
            from_status=self.status,
            note=note,
        )

    def rate(self, act: Act, *, score: int, comment: str | None = None) -> None:
        self._check("rate", act)
        if self.rating is not None:
            raise NotAllowed(f"case {self.id} was already rated; a case is rated once")
        if not 1 <= score <= 5:
            raise BadInput(f"score {score} must be 1 to 5")
        self._record(CaseRated, act, status=self.status, due=self.due, score=score, comment=comment)

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
        self._record(GoodsRecovered, act, status=self.status, note=note)

    # The platform ------------------------------------------------------------------------------

    def rule(
        self, act: Act, policy: Policy, *, in_favour_of: Party, note: str | None = None
    ) -> None:
        self._check("rule", act)
        if in_favour_of not in (Party.BUYER, Party.MERCHANT):
            raise BadInput("a ruling is for the buyer or for the merchant")
        assert self.escalation is not None
        claim = Claim(self.escalation["claim"])
        base = {"in_favour_of": in_favour_of, "claim": claim, "note": note}
        if in_favour_of is Party.MERCHANT:
            status = S.CLOSED if claim is Claim.DISPUTED_RECEIPT else S.REJECTED
            self._record(CaseRuled, act, status=status, **base)
        elif claim is Claim.MISSING_ITEMS:
            due = self._wait(policy, DueAction.RESHIP_OVERDUE, act.at)
            self._record(CaseRuled, act, status=S.AWAITING_RESHIPMENT, due=due, **base)
        elif claim is Claim.WRONG_ITEM:
            due = self._wait(policy, DueAction.AUTO_CLOSE, act.at)
            self._record(
                CaseRuled,
                act,
                status=S.AWAITING_BUYER_SHIPMENT,
                due=due,
                freight_on_merchant=True,
                **base,
            )
            self._record(
                FreightCharged,
                act,
                status=S.AWAITING_BUYER_SHIPMENT,
                due=due,
                amount=policy.freight_per_leg * 2,
                legs=2,
                payer=Party.MERCHANT,
                payee=Party.BUYER,
            )
        else:
            self._record(CaseRuled, act, status=S.REFUNDED, **base)
            self._refund(act, self.amount, paid_by=Party.PLATFORM)

    # The clock ---------------------------------------------------------------------------------

    def fire(self, act: Act, policy: Policy, action: DueAction) -> None:
        """Fire the running deadline; refused unless it is the one running and it is due."""
        self._check(action.value, act)
        due = self.due
        if due is None or due.action is not action:
            raise NotAllowed(f"case {self.id} has no {action.value} deadline running")
        if act.at == due.due_at:
            # Fired at its due time: keep the deadline's own offset in the record.
            act = replace(act, at=due.due_at)
        if act.at < due.due_at:
            raise NotAllowed(
                f"case {self.id}: {action.value} is due at {due.due_at.isoformat()}, "
                f"not yet at {act.at.isoformat()}"
            )
        if action is DueAction.AUTO_APPROVE:
            self._move_on_after_approval(act, policy, CaseAutoApproved, fired=due)
        elif action is DueAction.AUTO_CLOSE:
            self._record(CaseAutoClosed, act, status=S.CLOSED, fired=due)
        elif action is DueAction.AUTO_REFUND:
            self._record(CaseAutoRefunded, act, status=S.REFUNDED, fired=due)
            self._refund(act, self.amount, paid_by=Party.MERCHANT)
        else:
            self._record(ReshipOverdue, act, status=S.REFUNDED, fired=due)
            self._record(
                LateShipmentPenalty,
                act,
                status=S.REFUNDED,
                amount=policy.late_shipment_penalty,
                payer=Party.MERCHANT,
                payee=Party.BUYER,
            )
            self._refund(act, self.amount, paid_by=Party.PLATFORM)

    # Views ---------------------------------------------------------------------------------------

    @property
    def holds_lines(self) -> bool:
        return self.status in HOLDING_STATUSES

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
            "due_at": self.due.due_at.isoformat() if self.due else None,
            "due_action": self.due.action.value if self.due else None,
            "version": self.version,
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
            "freight_on_merchant": self.freight_on_merchant,
            "late_shipment": self.late_shipment,
            "goods_recovered": self.goods_recovered,
            "ledger": self.ledger,
            "rating": self.rating,
            "policy_version": self.policy_version,
            "allowed_actions": self.allowed_now(),
        }


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
    lines lets them go (with what it refunded on them); one that took them back (a rejected
    case escalated) holds them again. True if the order recorded something."""
    if was_holding == case.holds_lines:
        return False
    lines = list(case.lines)
    if was_holding:
        order.unlink_case(
            case.id, case.status.value, lines, case.refunded_amount - refunded_before, act
        )
    else:
        order.link_case(case.id, lines, act)
    return True


def _deadline(
    policy: Policy, action: DueAction, case_type: CaseType, at: datetime, *, shipped: bool
) -> Deadline:
    window = policy.window(STAGE_OF[action], case_type, shipped=shipped)
    return Deadline(due_at=at + window, action=action, policy_version=policy.version)
