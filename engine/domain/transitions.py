"""The case state machine as data: every transition, stated once.

Each row says, for one action from some statuses (and, where the outcome depends on it, one
distinguishing condition: the case type, the claim, the receipt's condition, the ruling, whether
the merchant could reship): who acts, the status the case is left in, the deadline that status
starts, the money it moves, and the events it records, first the action's own, then its
consequences in the order they are recorded.

Everything else is derived from the rows: the statuses each action may start from
(`ALLOWED_FROM`, which the aggregate enforces), the actions a person may take, and the audit's
tables (which action each event records, where it may lead, what must follow it). The aggregate
reads the row for each action it takes (`outcome`), the audit reads the derived tables, the
transition table in docs/transitions.md is generated from the rows
(``scripts/transition_table.py``), and the standalone bundle verifier's copy is tested equal to
them.

Events are named here by their class name, which is also the tail of their stored topic and the
name the standalone verifier knows them by; the classes themselves live in ``engine.domain.case``
(this module comes before them), which binds the names to them with `bind`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Generic, TypeVar

from aftersales.engine.domain.values import (
    AWAITING_STATUSES,
    FINAL_STATUSES,
    RETURN_TYPES,
    CaseType,
    Claim,
    Condition,
    DueAction,
    Party,
    ReasonGroup,
    Role,
    Status,
    reason_group,
)

S = Status
OPEN = "open"  # the buyer's request: the one action that starts from no status
TURN_RETURN = "turn-return"  # a refund-only case the order's shipment turned into a return
INTERCEPT = "intercept"  # the merchant turns the parcel back before delivery
REFUSE_DELIVERY = "refuse-delivery"  # the buyer refused the parcel at the door


@dataclass(frozen=True, slots=True)
class Given:
    """What one row's outcome depends on, where it depends on anything (None: whatever it is)."""

    case_types: frozenset[CaseType] | None = None
    claims: frozenset[Claim] | None = None  # the claim the case was escalated with
    receipt: frozenset[Condition] | None = None  # the condition the returned goods came in
    ruling: Party | None = None  # the party the platform ruled for
    reshipped: bool | None = None  # the merchant reshipped (True) or said it cannot (False)
    appeal: bool | None = None  # the platform ruled on this case before (this is the appeal)
    resumes: Status | None = None  # the status an unanswered offer interrupted
    # The refund is advanced by the platform at ship-back (an instant refund, 极速退款): on the
    # ship-back, that it is now; after it, that it was.
    advance: bool | None = None

    def holds(
        self,
        case_type: CaseType | None,
        claim: Claim | None,
        receipt: Condition | None,
        ruling: Party | None,
        reshipped: bool | None,
        appeal: bool | None = None,
        resumes: Status | None = None,
        advance: bool | None = None,
    ) -> bool:
        return (
            (self.case_types is None or case_type in self.case_types)
            and (self.claims is None or claim in self.claims)
            and (self.receipt is None or receipt in self.receipt)
            and (self.ruling is None or ruling is self.ruling)
            and (self.reshipped is None or reshipped is self.reshipped)
            and (self.appeal is None or appeal is self.appeal)
            and (self.resumes is None or resumes is self.resumes)
            and (self.advance is None or advance is self.advance)
        )


@dataclass(frozen=True, slots=True)
class Refund:
    """Money returned to the buyer: who pays it now, and who owes it in the end."""

    paid_by: Party
    owed_by: Party


@dataclass(frozen=True, slots=True)
class Charge:
    """Money one party bears for another (its amount is the policy's, per leg where it has
    legs)."""

    payer: Party
    payee: Party
    legs: int = 1


@dataclass(frozen=True, slots=True)
class Transition:
    action: str
    actor: Role
    before: frozenset[Status]  # empty: the case does not exist yet
    # None: the status stays as it was, and the deadline running too (unless the action's
    # purpose is to move it: a receipt window extended)
    after: Status | None
    records: str  # the event class the action records first
    then: tuple[str, ...] = ()  # the consequence events, in the order they are recorded
    given: Given = field(default_factory=Given)
    starts: DueAction | None = None  # the deadline the new status starts
    refund: Refund | None = None
    freight: Charge | None = None
    penalty: Charge | None = None


# The rows ----------------------------------------------------------------------------------------

M, B, P, SYS = Role.MERCHANT, Role.BUYER, Role.PLATFORM, Role.SYSTEM
_MERCHANT_PAYS = Refund(paid_by=Party.MERCHANT, owed_by=Party.MERCHANT)
# The platform makes the buyer whole first and recovers the money from the merchant.
_PLATFORM_FIRST = Refund(paid_by=Party.PLATFORM, owed_by=Party.MERCHANT)
# The platform let its own ruling lapse: it pays the buyer and bears it (nobody found the
# merchant liable).
_PLATFORM_BEARS = Refund(paid_by=Party.PLATFORM, owed_by=Party.PLATFORM)
# An instant refund: the platform advances it when the goods are shipped back; the merchant owes
# it, unless the platform finds the goods not in order (AdvanceReassigned).
_PLATFORM_ADVANCES = Refund(paid_by=Party.PLATFORM, owed_by=Party.MERCHANT)
_MERCHANT_TO_BUYER = Charge(payer=Party.MERCHANT, payee=Party.BUYER)
_FREIGHT_BOTH_WAYS = Charge(payer=Party.MERCHANT, payee=Party.BUYER, legs=2)

_REFUND_ONLY = frozenset({CaseType.REFUND_ONLY})
_RESHIP = frozenset({CaseType.RESHIP})
_EXCHANGE = frozenset({CaseType.EXCHANGE})
# Goods are received only after they were shipped back: on a return, or on any case whose
# wrong-item claim the platform upheld (which sends the goods back too).
_REFUNDED_ON_RECEIPT = frozenset(set(CaseType) - _EXCHANGE)
_OK = frozenset({Condition.OK})
_NOT_OK = frozenset(set(Condition) - _OK)
_PLATFORM_REFUNDS = frozenset({Claim.UNJUSTIFIED_REJECTION, Claim.OTHER, Claim.DISPUTED_RECEIPT})
_BUYERS_CLAIMS = frozenset(set(Claim) - {Claim.DISPUTED_RECEIPT})
_DISPUTED_RECEIPT = frozenset({Claim.DISPUTED_RECEIPT})
# Whether the refund was advanced at ship-back, where the outcome depends on it.
_ADVANCED, _NOT_ADVANCED = True, False
# The buyer goes to the platform once the merchant has answered, or should have: while the
# merchant's review runs unanswered, its deadline (approval when it runs out) is the buyer's
# remedy; once the merchant answered with an offer the buyer declined or let lapse, the buyer
# may go to the platform from the review too (a guard the aggregate checks).
_ESCALATE_FROM = frozenset(AWAITING_STATUSES | {S.REJECTED})
# Any status but the end states: where the parties may still talk.
_NOT_ENDED = frozenset(set(Status) - FINAL_STATUSES)
# Statuses in which a case holds its order lines; the platform's order system may record a
# shipment under a refund-only case opened before it, which turns the case into a return.
_HOLDING = frozenset(_NOT_ENDED - {S.REJECTED})
# Where the merchant may offer the buyer something else (another service from its review; a
# smaller refund wherever it may refund), and so where an unanswered offer returns the case.
OFFER_FROM: tuple[Status, ...] = (
    S.AWAITING_MERCHANT,
    S.AWAITING_BUYER_SHIPMENT,
    S.AWAITING_MERCHANT_RECEIPT,
    S.AWAITING_REPLACEMENT,
)
# The deadline each of those statuses runs: an offer declined or lapsed gives it back as it
# stood (never extended).
WAIT_OF: Mapping[Status, DueAction] = {
    S.AWAITING_MERCHANT: DueAction.AUTO_APPROVE,
    S.AWAITING_BUYER_SHIPMENT: DueAction.AUTO_CLOSE,
    S.AWAITING_MERCHANT_RECEIPT: DueAction.AUTO_REFUND,
    S.AWAITING_REPLACEMENT: DueAction.REPLACEMENT_OVERDUE,
}


def _row(
    action: str,
    actor: Role,
    before: Iterable[Status],
    after: Status | None,
    records: str,
    *then: str,
    given: Given | None = None,
    starts: DueAction | None = None,
    refund: Refund | None = None,
    freight: Charge | None = None,
    penalty: Charge | None = None,
) -> Transition:
    return Transition(
        action=action,
        actor=actor,
        before=frozenset(before),
        after=after,
        records=records,
        then=then,
        given=given or Given(),
        starts=starts,
        refund=refund,
        freight=freight,
        penalty=penalty,
    )


def _resumed(action: str, actor: Role, records: str) -> tuple[Transition, ...]:
    """An offer declined or unanswered: the case goes back to where the offer found it, with
    the deadline that was running there (due no later than it was)."""
    return tuple(
        _row(action, actor, [S.AWAITING_BUYER_ANSWER], status, records,
             given=Given(resumes=status), starts=WAIT_OF[status])
        for status in OFFER_FROM
    )  # fmt: skip


def _approval(
    action: str, actor: Role, records: str, at: Status = S.AWAITING_MERCHANT
) -> tuple[Transition, ...]:
    """The merchant's approval and the deadline's are one (and a buyer's acceptance of the
    merchant's offer): the case type decides what next."""
    before = [at]
    return (
        _row(action, actor, before, S.REFUNDED, records, "CaseRefunded",
             given=Given(case_types=_REFUND_ONLY), refund=_MERCHANT_PAYS),
        _row(action, actor, before, S.AWAITING_BUYER_SHIPMENT, records,
             given=Given(case_types=RETURN_TYPES), starts=DueAction.AUTO_CLOSE),
        _row(action, actor, before, S.AWAITING_RESHIPMENT, records,
             given=Given(case_types=_RESHIP), starts=DueAction.RESHIP_OVERDUE),
    )  # fmt: skip


# Laid out by hand, one row to a statement, so it reads as the table it is.
TRANSITIONS: tuple[Transition, ...] = (
    _row(OPEN, B, [], S.AWAITING_MERCHANT, "CaseOpened", starts=DueAction.AUTO_APPROVE),
    *_approval("approve", M, "CaseApproved"),
    *_approval(DueAction.AUTO_APPROVE.value, SYS, "CaseAutoApproved"),
    # The buyer has the policy's days to take a rejection further; then the clock closes it.
    _row("reject", M, [S.AWAITING_MERCHANT], S.REJECTED, "CaseRejected",
         starts=DueAction.ESCALATION_LAPSED),
    _row(DueAction.ESCALATION_LAPSED.value, SYS, [S.REJECTED], S.CLOSED, "EscalationLapsed"),
    # From awaiting_replacement too: the merchant has the goods back and no replacement to send.
    _row("refund", M,
         [S.AWAITING_MERCHANT, S.AWAITING_BUYER_SHIPMENT, S.AWAITING_MERCHANT_RECEIPT,
          S.AWAITING_REPLACEMENT],
         S.REFUNDED, "CaseRefunded", refund=_MERCHANT_PAYS),
    _row("ship-back", B, [S.AWAITING_BUYER_SHIPMENT], S.AWAITING_MERCHANT_RECEIPT,
         "GoodsShippedBack", given=Given(advance=_NOT_ADVANCED), starts=DueAction.AUTO_REFUND),
    # An instant refund (极速退款): a return within the policy's limits, by a buyer in good
    # standing, is refunded as the goods go back; the platform advances it, the merchant owes
    # it. The merchant still confirms the goods' arrival (or the clock does, for it).
    # (Only a return and refund: a guard the aggregate checks, with the policy's limits.)
    _row("ship-back", B, [S.AWAITING_BUYER_SHIPMENT], S.AWAITING_MERCHANT_RECEIPT,
         "GoodsShippedBack", "CaseRefunded", given=Given(advance=_ADVANCED),
         starts=DueAction.AUTO_REFUND, refund=_PLATFORM_ADVANCES),
    _row(DueAction.AUTO_CLOSE.value, SYS, [S.AWAITING_BUYER_SHIPMENT], S.CLOSED,
         "CaseAutoClosed"),
    _row("receive", M, [S.AWAITING_MERCHANT_RECEIPT], S.REFUNDED, "GoodsReceived",
         "CaseRefunded",
         given=Given(case_types=_REFUNDED_ON_RECEIPT, receipt=_OK, advance=_NOT_ADVANCED),
         refund=_MERCHANT_PAYS),
    # Refunded at ship-back already: the receipt ends the case, the advance stays the merchant's.
    _row("receive", M, [S.AWAITING_MERCHANT_RECEIPT], S.REFUNDED, "GoodsReceived",
         given=Given(case_types=_REFUNDED_ON_RECEIPT, receipt=_OK, advance=_ADVANCED)),
    _row("receive", M, [S.AWAITING_MERCHANT_RECEIPT], S.AWAITING_REPLACEMENT, "GoodsReceived",
         given=Given(case_types=_EXCHANGE, receipt=_OK), starts=DueAction.REPLACEMENT_OVERDUE),
    # Goods not as they should be: no refund; the engine escalates and the platform decides.
    _row("receive", M, [S.AWAITING_MERCHANT_RECEIPT], S.ESCALATED, "GoodsReceived",
         "CaseEscalated", given=Given(receipt=_NOT_OK), starts=DueAction.RULING_OVERDUE),
    _row(DueAction.AUTO_REFUND.value, SYS, [S.AWAITING_MERCHANT_RECEIPT], S.REFUNDED,
         "CaseAutoRefunded", "CaseRefunded", given=Given(advance=_NOT_ADVANCED),
         refund=_MERCHANT_PAYS),
    _row(DueAction.AUTO_REFUND.value, SYS, [S.AWAITING_MERCHANT_RECEIPT], S.REFUNDED,
         "CaseAutoRefunded", given=Given(advance=_ADVANCED)),
    _row("ship-replacement", M, [S.AWAITING_REPLACEMENT], S.COMPLETED, "ReplacementShipped"),
    # The merchant holds the goods sent back: it refunds them.
    _row(DueAction.REPLACEMENT_OVERDUE.value, SYS, [S.AWAITING_REPLACEMENT], S.REFUNDED,
         "ReplacementOverdue", "CaseRefunded", refund=_MERCHANT_PAYS),
    _row("reship", M, [S.AWAITING_RESHIPMENT], S.COMPLETED, "MissingItemsReshipped",
         given=Given(reshipped=True)),
    _row("reship", M, [S.AWAITING_RESHIPMENT], S.REFUNDED, "ReshipImpossible",
         "CaseRefunded", given=Given(reshipped=False), refund=_PLATFORM_FIRST),
    _row(DueAction.RESHIP_OVERDUE.value, SYS, [S.AWAITING_RESHIPMENT], S.REFUNDED,
         "ReshipOverdue", "LateShipmentPenalty", "CaseRefunded",
         refund=_PLATFORM_FIRST, penalty=_MERCHANT_TO_BUYER),
    _row("withdraw", B,
         [S.AWAITING_MERCHANT, S.AWAITING_BUYER_SHIPMENT, S.REJECTED, S.ESCALATED],
         S.CLOSED, "CaseWithdrawn"),
    # The platform has its own deadline: overdue after the policy's hours (the dashboards show
    # it), and after its grace the platform pays the buyer on its own account.
    _row("escalate", B, _ESCALATE_FROM, S.ESCALATED, "CaseEscalated",
         starts=DueAction.RULING_OVERDUE),
    _row(DueAction.RULING_OVERDUE.value, SYS, [S.ESCALATED], S.ESCALATED, "RulingOverdue",
         starts=DueAction.RULING_LAPSED),
    _row(DueAction.RULING_LAPSED.value, SYS, [S.ESCALATED], S.REFUNDED, "RulingLapsed",
         "CaseRefunded", given=Given(advance=_NOT_ADVANCED), refund=_PLATFORM_BEARS),
    # An advance the platform never ruled on: it bears it, the merchant owes nothing.
    _row(DueAction.RULING_LAPSED.value, SYS, [S.ESCALATED], S.REFUNDED, "RulingLapsed",
         "AdvanceReassigned", given=Given(advance=_ADVANCED)),
    _row("rule", P, [S.ESCALATED], S.AWAITING_RESHIPMENT, "CaseRuled",
         given=Given(ruling=Party.BUYER, claims=frozenset({Claim.MISSING_ITEMS})),
         starts=DueAction.RESHIP_OVERDUE),
    # A wrong item upheld: the return goes ahead, the merchant bears the freight both ways.
    _row("rule", P, [S.ESCALATED], S.AWAITING_BUYER_SHIPMENT, "CaseRuled", "FreightCharged",
         given=Given(ruling=Party.BUYER, claims=frozenset({Claim.WRONG_ITEM})),
         starts=DueAction.AUTO_CLOSE, freight=_FREIGHT_BOTH_WAYS),
    _row("rule", P, [S.ESCALATED], S.REFUNDED, "CaseRuled", "CaseRefunded",
         given=Given(ruling=Party.BUYER, claims=_PLATFORM_REFUNDS - _DISPUTED_RECEIPT),
         refund=_PLATFORM_FIRST),
    _row("rule", P, [S.ESCALATED], S.REFUNDED, "CaseRuled", "CaseRefunded",
         given=Given(ruling=Party.BUYER, claims=_DISPUTED_RECEIPT, advance=_NOT_ADVANCED),
         refund=_PLATFORM_FIRST),
    _row("rule", P, [S.ESCALATED], S.CLOSED, "CaseRuled",
         given=Given(ruling=Party.MERCHANT, claims=_DISPUTED_RECEIPT, advance=_NOT_ADVANCED)),
    # Goods received not in order after an instant refund: the advance stays the merchant's if
    # the platform rules for the buyer, and becomes the buyer's to repay if it rules for the
    # merchant. (A case refunded at ship-back is taken to the platform only this way.)
    _row("rule", P, [S.ESCALATED], S.REFUNDED, "CaseRuled",
         given=Given(ruling=Party.BUYER, claims=_DISPUTED_RECEIPT, advance=_ADVANCED)),
    _row("rule", P, [S.ESCALATED], S.CLOSED, "CaseRuled", "AdvanceReassigned",
         given=Given(ruling=Party.MERCHANT, claims=_DISPUTED_RECEIPT, advance=_ADVANCED)),
    # A first ruling for the merchant: the buyer may appeal once within the policy's days; the
    # second ruling is final.
    _row("rule", P, [S.ESCALATED], S.REJECTED, "CaseRuled",
         given=Given(ruling=Party.MERCHANT, claims=_BUYERS_CLAIMS, appeal=False),
         starts=DueAction.ESCALATION_LAPSED),
    _row("rule", P, [S.ESCALATED], S.CLOSED, "CaseRuled",
         given=Given(ruling=Party.MERCHANT, claims=_BUYERS_CLAIMS, appeal=True)),
    _row("rate", B, FINAL_STATUSES, None, "CaseRated"),
    # Only after the platform refunded on a ruling that left the goods with the buyer: a guard
    # the aggregate checks; the outcome does not depend on it.
    _row("recover-goods", M, [S.REFUNDED], None, "GoodsRecovered"),
    # Negotiation: a message (with any evidence) from whichever party speaks, one row each.
    *(_row("message", who, _NOT_ENDED, None, "MessagePosted") for who in (B, M, P)),
    # The merchant offers another service instead, or (a refund smaller than due) less money:
    # the buyer's answer clock stands in for the one running, one offer at a time.
    _row("offer", M, OFFER_FROM, S.AWAITING_BUYER_ANSWER, "ChangeOffered",
         starts=DueAction.OFFER_LAPSED),
    # Accepted, the case goes on as an approval of the type offered (the type here).
    *_approval("accept-offer", B, "OfferAccepted", at=S.AWAITING_BUYER_ANSWER),
    # Declined or unanswered: back where the offer found the case, its deadline as it was.
    *_resumed("decline-offer", B, "OfferDeclined"),
    *_resumed(DueAction.OFFER_LAPSED.value, SYS, "OfferLapsed"),
    # The buyer may walk away instead of answering, as from the merchant's review.
    _row("withdraw", B, [S.AWAITING_BUYER_ANSWER], S.CLOSED, "CaseWithdrawn"),
    # The merchant's one extension of its receipt window: the running deadline moves later.
    _row("extend", M, [S.AWAITING_MERCHANT_RECEIPT], None, "ReceiptExtended"),
    # The order system recorded a shipment under a refund-only case opened before it (the
    # merchant shipped without answering): the case becomes a return; nothing else changes.
    _row(TURN_RETURN, P, _HOLDING, None, "CaseTurnedReturn"),
    # The parcel comes back to the shop before the buyer has the goods: the merchant
    # intercepted it (拦截) instead of answering a refund only, or the buyer refused it at the
    # door (拒收, the order system's fact). The case becomes a return whose goods are on their
    # way back: the merchant confirms their arrival within its receipt window, or the buyer
    # is refunded automatically.
    # (Only a refund only, on a parcel still travelling: guards the aggregate checks.)
    _row(INTERCEPT, M, [S.AWAITING_MERCHANT], S.AWAITING_MERCHANT_RECEIPT, "ParcelIntercepted",
         starts=DueAction.AUTO_REFUND),
    _row(REFUSE_DELIVERY, P, [S.AWAITING_MERCHANT], S.AWAITING_MERCHANT_RECEIPT,
         "DeliveryRefused", starts=DueAction.AUTO_REFUND),
)  # fmt: skip

SYSTEM_ACTIONS: frozenset[str] = frozenset(d.value for d in DueAction)
# Actions the engine takes as a consequence of another aggregate's (an order's), never a
# person's command.
ENGINE_ACTIONS: frozenset[str] = frozenset({TURN_RETURN, REFUSE_DELIVERY})


# What a claim must fit -------------------------------------------------------------------------

# A claim about the goods is for a case opened for that: the reason group it needs.
CLAIM_REASON: Mapping[Claim, ReasonGroup] = {
    Claim.MISSING_ITEMS: ReasonGroup.MISSING_ITEMS,
    Claim.WRONG_ITEM: ReasonGroup.WRONG_ITEM,
}
# A claim about what happened to the case is for a case escalated from there.
CLAIM_FROM: Mapping[Claim, frozenset[Status]] = {
    Claim.UNJUSTIFIED_REJECTION: frozenset({S.REJECTED}),
    Claim.DISPUTED_RECEIPT: frozenset({S.AWAITING_MERCHANT_RECEIPT}),
}


def claim_misfit(claim: Claim, reason: str, from_status: Status) -> str | None:
    """Why the claim does not fit a case opened for ``reason`` and escalated from
    ``from_status``, or None when it fits (``other`` fits every case)."""
    group = CLAIM_REASON.get(claim)
    if group is not None and reason_group(reason) is not group:
        return (
            f"a {claim.value} claim is for a case opened for {group.value} "
            f"({group.value}.*), not for {reason}"
        )
    statuses = CLAIM_FROM.get(claim)
    if statuses is not None and from_status not in statuses:
        where = " or ".join(sorted(statuses))
        return f"a {claim.value} claim is for a case escalated from {where}, not from {from_status}"
    return None


# Reading the rows --------------------------------------------------------------------------------

_BY_ACTION: Mapping[str, tuple[Transition, ...]] = {
    action: tuple(t for t in TRANSITIONS if t.action == action)
    for action in dict.fromkeys(t.action for t in TRANSITIONS)
}


@cache  # the table never changes, so each question has one answer: looked up once
def outcome(
    action: str,
    status: Status | None,
    *,
    case_type: CaseType | None = None,
    claim: Claim | None = None,
    receipt: Condition | None = None,
    ruling: Party | None = None,
    reshipped: bool | None = None,
    appeal: bool | None = None,
    resumes: Status | None = None,
    advance: bool | None = None,
    actor: Role | None = None,
) -> Transition:
    """The one row for this action from this status, given what its outcome depends on.
    ``status`` None is a case not opened yet. ``actor`` picks among rows that differ only in
    who acts (a message); None: whoever it is. A miss is a caller's mistake (the aggregate
    checks the status and its inputs first), so it raises LookupError rather than a domain
    error."""
    found = [
        t
        for t in _BY_ACTION.get(action, ())
        if (status in t.before if status is not None else not t.before)
        and t.given.holds(case_type, claim, receipt, ruling, reshipped, appeal, resumes, advance)
        and (actor is None or t.actor is actor)
    ]
    if len(found) != 1:
        raise LookupError(
            f"{len(found)} transitions for {action} from {status} "
            f"({case_type}, {claim}, {receipt}, {ruling}, {reshipped}, {appeal}, {resumes}, "
            f"{advance}, {actor})"
        )
    return found[0]


# Derived tables ----------------------------------------------------------------------------------


def _allowed_from(rows: Iterable[Transition]) -> dict[str, frozenset[Status]]:
    allowed: dict[str, set[Status]] = {}
    for t in rows:
        if t.before:
            allowed.setdefault(t.action, set()).update(t.before)
    return {action: frozenset(statuses) for action, statuses in allowed.items()}


# The statuses each action may start from: what the aggregate enforces and the audit checks.
ALLOWED_FROM: Mapping[str, frozenset[Status]] = _allowed_from(TRANSITIONS)
# A person's actions, in the table's order (the order a case lists what is allowed now).
PERSON_ACTIONS: tuple[str, ...] = tuple(
    a for a in ALLOWED_FROM if a not in SYSTEM_ACTIONS | ENGINE_ACTIONS
)


def _action_of(rows: Iterable[Transition]) -> dict[str, str]:
    action_of: dict[str, str] = {}
    for t in rows:
        if action_of.setdefault(t.records, t.action) != t.action:
            raise ValueError(f"{t.records} is recorded first by two actions")
    return action_of


# Which action each event records when it comes first.
ACTION_OF: Mapping[str, str] = _action_of(TRANSITIONS)
# The events a system action (a deadline) records first.
SYSTEM_EVENTS: frozenset[str] = frozenset(
    name for name, action in ACTION_OF.items() if action in SYSTEM_ACTIONS
)
# Events recorded only as part of another action (money it moves besides a refund).
CONSEQUENCE_ONLY: frozenset[str] = frozenset(
    name for t in TRANSITIONS for name in t.then if name not in ACTION_OF
)
KNOWN: frozenset[str] = frozenset(ACTION_OF) | CONSEQUENCE_ONLY
# Events whose action leaves the status as it was.
UNCHANGED: frozenset[str] = frozenset(t.records for t in TRANSITIONS if t.after is None)


def _leads_to(rows: Iterable[Transition]) -> dict[str, frozenset[Status]]:
    leads: dict[str, set[Status]] = {}
    for t in rows:
        if t.after is not None:
            leads.setdefault(t.records, set()).add(t.after)
    return {name: frozenset(statuses) for name, statuses in leads.items()}


# The statuses each event may leave the case in when it comes first (the "to" column).
LEADS_TO: Mapping[str, frozenset[Status]] = _leads_to(TRANSITIONS)


def _consequences(rows: Iterable[Transition]) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for t in rows:
        if t.then:
            found.setdefault(t.records, set()).update(t.then)
    return {name: frozenset(events) for name, events in found.items()}


# The events an event coming first may bring with it, in the same command.
ROW_CONSEQUENCES: Mapping[str, frozenset[str]] = _consequences(TRANSITIONS)
# Consequences an action records only when its circumstances call for them, not in its row:
# the postage back of a return, charged with the goods shipped back when the merchant (up to
# the policy's cap) or the insurer pays it (ReturnCase.return_freight).
MAY_FOLLOW: Mapping[str, frozenset[str]] = {"GoodsShippedBack": frozenset({"FreightCharged"})}
CONSEQUENCES: Mapping[str, frozenset[str]] = {
    **ROW_CONSEQUENCES,
    **{name: ROW_CONSEQUENCES.get(name, frozenset()) | more for name, more in MAY_FOLLOW.items()},
}


def _required(rows: Iterable[Transition]) -> dict[Status, str]:
    """For each status, the consequence every row able to bring consequences records when it
    leaves the case there: the audit asks for it after any such event leaving that status."""
    rows = [t for t in rows if t.records in ROW_CONSEQUENCES and t.after is not None]
    required: dict[Status, str] = {}
    for status in dict.fromkeys(t.after for t in rows if t.after is not None):
        common = set.intersection(*(set(t.then) for t in rows if t.after is status))
        if len(common) > 1:  # the audit's table names one; a second would go unchecked
            raise ValueError(f"leaving a case {status} calls for {sorted(common)}")
        if common:
            required[status] = common.pop()
    return required


# The consequence an event that may bring consequences owes for the status it leaves; on a case
# whose refund was advanced at ship-back (an instant refund), those of its own rows.
REQUIRED_CONSEQUENCE: Mapping[Status, str] = _required(
    t for t in TRANSITIONS if t.given.advance is not _ADVANCED
)
_ADVANCE_ROWS = tuple(t for t in TRANSITIONS if t.given.advance is _ADVANCED)
_ADVANCE_LEADS = {t.after for t in _ADVANCE_ROWS if t.records in ROW_CONSEQUENCES}
ADVANCE_REQUIRED: Mapping[Status, str] = {
    **{s: n for s, n in REQUIRED_CONSEQUENCE.items() if s not in _ADVANCE_LEADS},
    **_required(_ADVANCE_ROWS),
}


# The same tables with the event classes for their names -------------------------------------------

E = TypeVar("E")


@dataclass(frozen=True)
class Bound(Generic[E]):
    """The audit's tables keyed by event class rather than name."""

    action_of: Mapping[type[E], str]
    leads_to: Mapping[type[E], frozenset[Status]]
    consequences: Mapping[type[E], frozenset[type[E]]]
    required_consequence: Mapping[Status, type[E]]
    advance_required: Mapping[Status, type[E]]
    consequence_only: frozenset[type[E]]
    unchanged: frozenset[type[E]]
    known: frozenset[type[E]]


def bind(classes: Mapping[str, type[E]]) -> Bound[E]:
    """The derived tables with each event name replaced by its class; every name the rows use
    must have one (KeyError otherwise)."""
    c = classes.__getitem__
    return Bound(
        action_of={c(n): a for n, a in ACTION_OF.items()},
        leads_to={c(n): s for n, s in LEADS_TO.items()},
        consequences={c(n): frozenset(map(c, cs)) for n, cs in CONSEQUENCES.items()},
        required_consequence={s: c(n) for s, n in REQUIRED_CONSEQUENCE.items()},
        advance_required={s: c(n) for s, n in ADVANCE_REQUIRED.items()},
        consequence_only=frozenset(map(c, CONSEQUENCE_ONLY)),
        unchanged=frozenset(map(c, UNCHANGED)),
        known=frozenset(map(c, KNOWN)),
    )
