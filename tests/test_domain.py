"""The `ReturnCase` and `Order` aggregates on their own: no store, no engine, no clock.

Each test is *given* past events (made by the domain methods, then replayed into fresh
aggregates as the store would load them), *when* one action (the aggregate's method, with an
`Act` and the `Policy`), *then* the new events it recorded (types and key fields) or its refusal
(the error class and a stable key word: the status, the action, the rule), which leaves the
aggregate as it was. Refusals are checked on their class and key words, not their sentences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest

from aftersales.engine.domain.case import ReturnCase, settle_order_lines
from aftersales.engine.domain.case_events import (
    CaseApproved,
    CaseAutoApproved,
    CaseAutoClosed,
    CaseAutoRefunded,
    CaseEscalated,
    CaseOpened,
    CaseRated,
    CaseRefunded,
    CaseRejected,
    CaseRuled,
    CaseWithdrawn,
    EscalationLapsed,
    FreightCharged,
    GoodsReceived,
    GoodsRecovered,
    GoodsShippedBack,
    LateShipmentPenalty,
    MissingItemsReshipped,
    OfferAccepted,
    OfferLapsed,
    ReplacementOverdue,
    ReplacementShipped,
    ReshipImpossible,
    ReshipOverdue,
    RulingLapsed,
    RulingOverdue,
)
from aftersales.engine.domain.errors import AftersalesError, BadInput, NotAllowed
from aftersales.engine.domain.events import Act, Aggregate, Deadline, Event
from aftersales.engine.domain.order import Order, allocate, parse_case_line, parse_order_line
from aftersales.engine.domain.order_events import (
    CaseLine,
    CaseLinked,
    CaseUnlinked,
    OrderDelivered,
    OrderShipped,
    Shipment,
)
from aftersales.engine.domain.policy import Policy, TypeWindows, Windows
from aftersales.engine.domain.transitions import ALLOWED_FROM, PERSON_ACTIONS
from aftersales.engine.domain.values import (
    Actor,
    CaseType,
    Claim,
    Condition,
    DueAction,
    Party,
    Role,
    Status,
    parse_money,
)

S = Status
T = CaseType
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=CST)
POLICY = Policy()
BUYER, MERCHANT, AGENT = "buyer-1", "shop-1", "agent-7"
SHIPMENT = Shipment(carrier="SF", waybill="SF1")
LINES = (
    "CASE-RED:1:39.90:phone_accessory",
    "GIFT:1:5.00:gift",
    "STRAP:2:10.00",
    "NAME:1:88.00:custom_made",
    "FREEBIE:1:0.00:gift:15.00",
    "CABLE:1:9.90:accessory:12.00",
)
OPENED_AT = T0 + timedelta(days=3)
LATER = T0 + timedelta(days=60)  # after every story's last event and every deadline in it
ROLE_ID = {Role.BUYER: BUYER, Role.MERCHANT: MERCHANT, Role.PLATFORM: AGENT, Role.SYSTEM: "system"}
A = TypeVar("A", bound=Aggregate)


def t(days: float = 0, hours: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours, seconds=seconds)


def act(role: Role, at: datetime, who: str | None = None) -> Act:
    return Act(
        at=at, actor=Actor(role=role, id=who or ROLE_ID[role]), command_id="c", recorded_at=at
    )


def deadline(action: DueAction, start: datetime, hours: int, policy: Policy = POLICY) -> Deadline:
    return Deadline(
        due_at=start + timedelta(hours=hours), action=action, policy_version=policy.version
    )


def replay(events: Sequence[Event], kind: type[A]) -> A:
    """An aggregate as the store loads it: its events applied one by one to nothing."""
    aggregate: Any = None
    for event in events:
        aggregate = event.mutate(aggregate)
    assert isinstance(aggregate, kind)
    return aggregate


# Given -------------------------------------------------------------------------------------------


def given_order(
    *, lines: Sequence[str] = LINES, shipped: bool = True, delivered: bool = True
) -> Order:
    """An order placed at T0, shipped at day 1 and delivered at day 2 (as far as asked)."""
    return replay(order_history(lines=lines, shipped=shipped, delivered=delivered), Order)


def order_history(
    *, lines: Sequence[str] = LINES, shipped: bool = True, delivered: bool = True
) -> list[Event]:
    order = Order.place(
        "KS-1",
        merchant_id=MERCHANT,
        buyer_id=BUYER,
        lines=[parse_order_line(x) for x in lines],
        act=act(Role.PLATFORM, t()),
    )
    if shipped:
        order.ship(SHIPMENT, act(Role.PLATFORM, t(days=1)))
    if delivered:
        order.deliver(act(Role.PLATFORM, t(days=2)))
    return events_of(order)


def open_on(
    order: Order,
    case_type: CaseType = T.RETURN_REFUND,
    *,
    reason: str | None = None,
    amount: str | None = "default",
    skus: Sequence[str] | None = None,
    at: datetime = OPENED_AT,
    policy: Policy = POLICY,
    who: str = BUYER,
) -> ReturnCase:
    """Open a case as the service does: on the order's lines, then linked to them."""
    reship = case_type is T.RESHIP
    wanted = [parse_case_line(x) for x in (skus or (["GIFT"] if reship else ["CASE-RED"]))]
    lines = order.case_lines(wanted)
    if amount == "default":
        amount = "5.00" if reship else "39.90"
    case = ReturnCase.open(
        uuid4(),
        order,
        case_type=case_type,
        reason=reason or ("missing_items.gift" if reship else "quality.colour"),
        amount=None if amount is None else Decimal(amount),
        lines=lines,
        evidence=[],
        note=None,
        policy=policy,
        act=act(Role.BUYER, at, who),
    )
    order.link_case(case.id, lines, act(Role.BUYER, at, who), holds_shipment=case.holds_shipment)
    ORDERS[case.id] = order
    return case


Step = Callable[[ReturnCase, datetime], None]


# The order each case of these stories is on, as the service would load it: a rejected case
# escalated takes its lines back on it.
ORDERS: dict[UUID, Order] = {}


def escalate_step(claim: Claim) -> Step:
    return lambda c, w: c.escalate(
        act(Role.BUYER, w), POLICY, claim=claim, evidence=["p:1"], order=ORDERS.get(c.id)
    )


STEPS: dict[str, Step] = {
    "approve": lambda c, w: c.approve(act(Role.MERCHANT, w), POLICY, return_address="HZ"),
    "reject": lambda c, w: c.reject(
        act(Role.MERCHANT, w), POLICY, reason="worn", communication="chat:1"
    ),
    "refund": lambda c, w: c.refund(act(Role.MERCHANT, w), POLICY),
    # Less than due: an offer, which the buyer accepts (then the refund is made).
    "refund 12.00": lambda c, w: c.refund(act(Role.MERCHANT, w), POLICY, amount=Decimal("12.00")),
    "accept offer": lambda c, w: c.accept_offer(act(Role.BUYER, w), POLICY),
    "ruling overdue": lambda c, w: c.fire(
        act(Role.SYSTEM, c.due.due_at if c.due else w), POLICY, DueAction.RULING_OVERDUE
    ),
    "ship back": lambda c, w: c.ship_back(act(Role.BUYER, w), POLICY, SHIPMENT),
    "receive": lambda c, w: c.receive(act(Role.MERCHANT, w), POLICY),
    "receive damaged": lambda c, w: c.receive(
        act(Role.MERCHANT, w), POLICY, condition=Condition.DAMAGED
    ),
    "reship": lambda c, w: c.reship(act(Role.MERCHANT, w), Shipment(carrier="SF", waybill="R1")),
    "withdraw": lambda c, w: c.withdraw(act(Role.BUYER, w)),
    "rule for buyer": lambda c, w: c.rule(act(Role.PLATFORM, w), POLICY, in_favour_of=Party.BUYER),
    "rule for merchant": lambda c, w: c.rule(
        act(Role.PLATFORM, w), POLICY, in_favour_of=Party.MERCHANT
    ),
    "rate": lambda c, w: c.rate(act(Role.BUYER, w), score=4),
    "offer refund_only": lambda c, w: c.offer(
        act(Role.MERCHANT, w), POLICY, case_type=T.REFUND_ONLY
    ),
    **{
        f"escalate {claim.value}": escalate_step(claim)
        for claim in Claim
        if claim is not Claim.DISPUTED_RECEIPT
    },
}


@dataclass
class Story:
    case: ReturnCase
    order: Order
    last: datetime  # when the last given event happened
    case_events: list[Event]  # the past events the case and the order were rebuilt from
    order_events: list[Event]

    @property
    def next(self) -> datetime:
        return self.last + timedelta(hours=1)


def given(case_type: CaseType = T.RETURN_REFUND, *steps: str, **open_kw: Any) -> Story:
    """A case opened at day 3 on a delivered order, then each step an hour after the one
    before, with the order's books kept as the service keeps them; both then rebuilt from
    their events alone."""
    placed = order_history()
    order = replay(placed, Order)
    case = open_on(order, case_type, **open_kw)
    when_ = open_kw.get("at", OPENED_AT)
    for name in steps:
        when_ += timedelta(hours=1)
        holding, refunded = case.holds_lines, case.refunded_amount
        STEPS[name](case, when_)
        settle_order_lines(
            case,
            order,
            was_holding=holding,
            refunded_before=refunded,
            act=act(Role.SYSTEM, when_),
        )
    built = case.to_json()
    case_events = events_of(case)
    order_events = placed + events_of(order)
    replayed = replay(case_events, ReturnCase)
    assert replayed.to_json() == built, "replaying the events gives another case"
    order = replay(order_events, Order)
    ORDERS[replayed.id] = order
    return Story(replayed, order, when_, case_events, order_events)


def events_of(aggregate: Aggregate) -> list[Event]:
    events = aggregate.collect_events()
    assert all(isinstance(e, Event) for e in events)
    return [e for e in events if isinstance(e, Event)]


# When / then -------------------------------------------------------------------------------------


def when(aggregate: Aggregate, call: Callable[[], object]) -> list[Event]:
    """Act, and give back the events the action recorded."""
    assert aggregate.pending_events == []
    call()
    return events_of(aggregate)


Expect = tuple[type[Event], dict[str, Any]]


def ev(kind: type[Event], **fields: Any) -> Expect:
    return kind, fields


def then(events: Sequence[Event], *expected: Expect) -> None:
    assert [type(e).__name__ for e in events] == [kind.__name__ for kind, _ in expected]
    for event, (kind, fields) in zip(events, expected, strict=True):
        for name, value in fields.items():
            assert getattr(event, name) == value, f"{kind.__name__}.{name}"


def refused(
    aggregate: Order | ReturnCase,
    call: Callable[[], object],
    error: type[AftersalesError],
    *words: str,
) -> str:
    """The action is refused with this error naming these words, and records nothing."""
    version, before = aggregate.version, aggregate.to_json()
    with pytest.raises(AftersalesError) as info:
        call()
    assert type(info.value) is error, info.value
    for word in words:
        assert word in info.value.message, f"{word!r} not in {info.value.message!r}"
    assert aggregate.pending_events == [] and aggregate.version == version
    assert aggregate.to_json() == before
    return info.value.message


def refund(amount: str, paid_by: Party) -> Expect:
    return ev(
        CaseRefunded,
        status=S.REFUNDED,
        amount=Decimal(amount),
        paid_by=paid_by,
        owed_by=Party.MERCHANT,
    )


# The transition table ----------------------------------------------------------------------------

WAITING = {
    S.AWAITING_MERCHANT,
    S.AWAITING_BUYER_SHIPMENT,
    S.AWAITING_MERCHANT_RECEIPT,
    S.AWAITING_REPLACEMENT,
    S.AWAITING_RESHIPMENT,
    S.AWAITING_BUYER_ANSWER,
}
CONTRACT: dict[str, set[Status]] = {
    "approve": {S.AWAITING_MERCHANT},
    "reject": {S.AWAITING_MERCHANT},
    "refund": {
        S.AWAITING_MERCHANT,
        S.AWAITING_BUYER_SHIPMENT,
        S.AWAITING_MERCHANT_RECEIPT,
        S.AWAITING_REPLACEMENT,
    },
    "ship-back": {S.AWAITING_BUYER_SHIPMENT},
    "receive": {S.AWAITING_MERCHANT_RECEIPT},
    "ship-replacement": {S.AWAITING_REPLACEMENT},
    "reship": {S.AWAITING_RESHIPMENT},
    "withdraw": {
        S.AWAITING_MERCHANT,
        S.AWAITING_BUYER_SHIPMENT,
        S.REJECTED,
        S.ESCALATED,
        S.AWAITING_BUYER_ANSWER,
    },
    # From the review only once the merchant answered with an offer the buyer declined or let
    # lapse (a guard: see GUARDED); before that its review deadline is the buyer's remedy.
    "escalate": WAITING | {S.REJECTED},
    "rule": {S.ESCALATED},
    "rate": {S.REFUNDED, S.COMPLETED, S.CLOSED},
    "recover-goods": {S.REFUNDED},
    "auto_approve": {S.AWAITING_MERCHANT},
    "auto_close": {S.AWAITING_BUYER_SHIPMENT},
    "auto_refund": {S.AWAITING_MERCHANT_RECEIPT},
    "reship_overdue": {S.AWAITING_RESHIPMENT},
    "replacement_overdue": {S.AWAITING_REPLACEMENT},
    "message": set(Status) - {S.REFUNDED, S.COMPLETED, S.CLOSED},
    "offer": {
        S.AWAITING_MERCHANT,
        S.AWAITING_BUYER_SHIPMENT,
        S.AWAITING_MERCHANT_RECEIPT,
        S.AWAITING_REPLACEMENT,
    },
    "accept-offer": {S.AWAITING_BUYER_ANSWER},
    "decline-offer": {S.AWAITING_BUYER_ANSWER},
    "extend": {S.AWAITING_MERCHANT_RECEIPT},
    "offer_lapsed": {S.AWAITING_BUYER_ANSWER},
    "escalation_lapsed": {S.REJECTED},
    "ruling_overdue": {S.ESCALATED},
    "ruling_lapsed": {S.ESCALATED},
    # The order system's shipment under a refund-only case opened before it (a guard: only on
    # such a case).
    "turn-return": set(Status) - {S.REFUNDED, S.COMPLETED, S.CLOSED, S.REJECTED},
    # The parcel turned back: a refund only asked for while it travels (tests/test_parcel_back.py).
    "intercept": {S.AWAITING_MERCHANT},
    "refuse-delivery": {S.AWAITING_MERCHANT},
}
# Allowed from these statuses by the table, refused in the story that reaches them by a guard
# the aggregate checks (with a word its refusal names).
GUARDED: dict[tuple[str, Status], str] = {
    ("escalate", S.AWAITING_MERCHANT): "may still answer",
    ("ruling_lapsed", S.ESCALATED): "ruling_lapsed",  # after the ruling fell overdue
    **{("turn-return", s): "refund-only" for s in CONTRACT["turn-return"]},
    ("intercept", S.AWAITING_MERCHANT): "only a refund only",
    ("refuse-delivery", S.AWAITING_MERCHANT): "only a refund only",
}

# One way to each status.
TO_STATUS: dict[Status, tuple[CaseType, tuple[str, ...]]] = {
    S.AWAITING_MERCHANT: (T.RETURN_REFUND, ()),
    S.AWAITING_BUYER_SHIPMENT: (T.RETURN_REFUND, ("approve",)),
    S.AWAITING_MERCHANT_RECEIPT: (T.RETURN_REFUND, ("approve", "ship back")),
    S.AWAITING_REPLACEMENT: (T.EXCHANGE, ("approve", "ship back", "receive")),
    S.AWAITING_RESHIPMENT: (T.RESHIP, ("approve",)),
    S.ESCALATED: (T.RETURN_REFUND, ("approve", "escalate other")),
    S.REJECTED: (T.RETURN_REFUND, ("reject",)),
    # The platform refunded an unjustified rejection: the goods are still to recover.
    S.REFUNDED: (
        T.RETURN_REFUND,
        ("reject", "escalate unjustified_rejection", "rule for buyer"),
    ),
    S.COMPLETED: (T.RESHIP, ("approve", "reship")),
    S.CLOSED: (T.RETURN_REFUND, ("withdraw",)),
    S.AWAITING_BUYER_ANSWER: (T.RETURN_REFUND, ("offer refund_only",)),
}

RESHIPMENT = Shipment(carrier="SF", waybill="R2")


def fire_action(action: DueAction) -> Callable[[ReturnCase, Act], None]:
    return lambda c, a: c.fire(a, POLICY, action)


ACTIONS: dict[str, tuple[Role, Callable[[ReturnCase, Act], None]]] = {
    "approve": (Role.MERCHANT, lambda c, a: c.approve(a, POLICY)),
    "reject": (
        Role.MERCHANT,
        lambda c, a: c.reject(a, POLICY, reason="worn", communication="chat:2"),
    ),
    "refund": (Role.MERCHANT, lambda c, a: c.refund(a, POLICY)),
    "ship-back": (Role.BUYER, lambda c, a: c.ship_back(a, POLICY, SHIPMENT)),
    "receive": (Role.MERCHANT, lambda c, a: c.receive(a, POLICY)),
    "ship-replacement": (Role.MERCHANT, lambda c, a: c.ship_replacement(a, RESHIPMENT)),
    "reship": (Role.MERCHANT, lambda c, a: c.reship(a, RESHIPMENT)),
    "withdraw": (Role.BUYER, lambda c, a: c.withdraw(a)),
    "escalate": (
        Role.BUYER,
        lambda c, a: c.escalate(a, POLICY, claim=Claim.OTHER, evidence=[], order=ORDERS.get(c.id)),
    ),
    "rule": (Role.PLATFORM, lambda c, a: c.rule(a, POLICY, in_favour_of=Party.BUYER)),
    "rate": (Role.BUYER, lambda c, a: c.rate(a, score=4)),
    "recover-goods": (Role.MERCHANT, lambda c, a: c.recover_goods(a)),
    "message": (Role.BUYER, lambda c, a: c.message(a, text="any news?", evidence=[])),
    "offer": (Role.MERCHANT, lambda c, a: c.offer(a, POLICY, case_type=T.REFUND_ONLY)),
    "accept-offer": (Role.BUYER, lambda c, a: c.accept_offer(a, POLICY)),
    "decline-offer": (Role.BUYER, lambda c, a: c.decline_offer(a, POLICY)),
    "extend": (
        Role.MERCHANT,
        lambda c, a: c.extend_receipt(a, POLICY, hours=24, reason="warehouse closed"),
    ),
    **{d.value: (Role.SYSTEM, fire_action(d)) for d in DueAction},
    "turn-return": (Role.PLATFORM, lambda c, a: c.turn_return(a)),
    "intercept": (Role.MERCHANT, lambda c, a: c.intercept(a, POLICY, given().order)),
    "refuse-delivery": (Role.PLATFORM, lambda c, a: c.refuse_delivery(a, POLICY, given().order)),
}


def in_status(status: Status) -> Story:
    case_type, steps = TO_STATUS[status]
    story = given(case_type, *steps)
    assert story.case.status is status
    return story


def test_the_transition_table_is_the_contracts() -> None:
    assert {a: set(s) for a, s in ALLOWED_FROM.items()} == CONTRACT
    assert set(ACTIONS) == set(CONTRACT)


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("action", list(CONTRACT))
def test_each_action_from_each_status(action: str, status: Status) -> None:
    story = in_status(status)
    case = story.case
    role, call = ACTIONS[action]
    # A rejection is escalated within its window (tests/test_windows.py has the window).
    a = act(role, story.next if (action, status) == ("escalate", S.REJECTED) else LATER)
    if (action, status) in GUARDED:
        refused(case, lambda: call(case, a), NotAllowed, GUARDED[action, status])
    elif status in CONTRACT[action]:
        events = when(case, lambda: call(case, a))
        assert events and all(e.actor.role is role and e.at == a.at for e in events)
    else:
        refused(case, lambda: call(case, a), NotAllowed, status.value, action)


@pytest.mark.parametrize("status", list(Status))
def test_a_refusal_names_what_is_allowed_now(status: Status) -> None:
    case = in_status(status).case
    allowed = [a for a in PERSON_ACTIONS if status in CONTRACT[a] and (a, status) not in GUARDED]
    assert case.allowed_now() == allowed
    if "ship-back" not in allowed:
        message = refused(
            case,
            lambda: case.ship_back(act(Role.BUYER, LATER), POLICY, SHIPMENT),
            NotAllowed,
            status.value,
            "ship-back",
        )
        assert all(a in message for a in allowed)


def test_what_is_allowed_after_a_rating_or_a_merchants_refund() -> None:
    case = given(T.RETURN_REFUND, "refund").case
    assert case.allowed_now() == ["rate"]  # the merchant refunded: no goods to recover
    case = given(T.RETURN_REFUND, "refund", "rate").case
    assert case.allowed_now() == []


def _unguarded(action: str) -> Status:
    """A status the action is taken from in the stories above, the same on every run."""
    return next(s for s in sorted(CONTRACT[action]) if (action, s) not in GUARDED)


@pytest.mark.parametrize(
    "action",
    # (Intercepting needs a story of its own: tests/test_parcel_back.py.)
    [
        a
        for a in CONTRACT
        if a in PERSON_ACTIONS and any((a, s) not in GUARDED for s in CONTRACT[a])
    ],
)
def test_no_action_dated_before_the_cases_latest_event(action: str) -> None:
    status = _unguarded(action)
    story = in_status(status)
    role, call = ACTIONS[action]
    refused(
        story.case,
        lambda: call(story.case, act(role, story.last - timedelta(seconds=1))),
        BadInput,
        "before",
    )


@pytest.mark.parametrize(
    "action", ["ship-back", "withdraw", "escalate", "rate"], ids=lambda a: f"{a}"
)
def test_a_buyers_action_is_the_cases_buyers_only(action: str) -> None:
    status = _unguarded(action)
    case = in_status(status).case
    _, call = ACTIONS[action]
    refused(
        case, lambda: call(case, act(Role.BUYER, LATER, "buyer-2")), NotAllowed, BUYER, "buyer-2"
    )


# Opening -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_type", list(CaseType))
def test_open_waits_48_hours_for_the_merchant(case_type: CaseType) -> None:
    order = given_order()
    case = open_on(order, case_type)
    amount = Decimal("5.00" if case_type is T.RESHIP else "39.90")
    events = events_of(case)
    then(
        events,
        ev(
            CaseOpened,
            status=S.AWAITING_MERCHANT,
            due=deadline(DueAction.AUTO_APPROVE, OPENED_AT, 48),
            case_type=case_type,
            amount=amount,
            order_id="KS-1",
            order_ref=order.id,
            merchant_id=MERCHANT,
            buyer_id=BUYER,
            order_shipped=True,
            order_delivered_at=t(days=2),
            follows=None,
        ),
    )
    then(events_of(order), ev(CaseLinked, case_id=case.id, skus=(case.lines[0].sku,)))
    assert case.refunded_amount == Decimal("0.00") and case.refund_paid_by is None


def test_a_case_before_shipping_takes_the_unshipped_window() -> None:
    policy = Policy(
        by_type={
            T.REFUND_ONLY: TypeWindows(
                merchant_review_hours=24, unshipped=Windows(merchant_review_hours=12)
            )
        },
        windows=Windows(merchant_review_hours=72),
    )
    unshipped = open_on(
        given_order(shipped=False, delivered=False), T.REFUND_ONLY, at=t(hours=1), policy=policy
    )
    assert unshipped.order_shipped is False
    assert unshipped.due == deadline(DueAction.AUTO_APPROVE, t(hours=1), 12, policy)
    shipped = open_on(given_order(delivered=False), T.REFUND_ONLY, at=t(days=1), policy=policy)
    assert shipped.due == deadline(DueAction.AUTO_APPROVE, t(days=1), 24, policy)
    other = open_on(given_order(), T.EXCHANGE, policy=policy)
    assert other.due == deadline(DueAction.AUTO_APPROVE, OPENED_AT, 72, policy)
    assert policy.version != POLICY.version and other.policy_version == policy.version


def test_only_the_orders_buyer_opens_a_case() -> None:
    order = given_order()
    refused(order, lambda: open_on(order, who="someone-else"), NotAllowed, BUYER, "someone-else")


def test_a_case_is_not_opened_before_its_order_was_placed() -> None:
    order = given_order()
    refused(order, lambda: open_on(order, at=t(seconds=-1)), BadInput, "before", "KS-1")


def test_a_reship_case_is_for_missing_items() -> None:
    order = given_order()
    refused(
        order,
        lambda: open_on(order, T.RESHIP, reason="quality.colour"),
        NotAllowed,
        "missing_items",
    )


@pytest.mark.parametrize("case_type", [T.RETURN_REFUND, T.EXCHANGE, T.RESHIP])
def test_only_refund_only_before_delivery(case_type: CaseType) -> None:
    order = given_order(delivered=False)
    refused(order, lambda: open_on(order, case_type), NotAllowed, "delivered", "refund_only")


def test_refund_only_before_delivery_with_any_reason() -> None:
    order = given_order(shipped=False, delivered=False)
    case = open_on(order, T.REFUND_ONLY, reason="buyer.changed_mind", at=t(days=30))
    assert case.status is S.AWAITING_MERCHANT  # no delivery: no no-reason window running yet


@pytest.mark.parametrize("category", POLICY.no_reason_excluded_categories)
def test_no_reason_returns_exclude_the_policys_categories(category: str) -> None:
    order = given_order(lines=(f"ITEM:1:20.00:{category}", "PLAIN:1:20.00"))
    refused(
        order,
        lambda: open_on(order, reason="buyer.changed_mind", skus=["ITEM"], amount="20.00"),
        NotAllowed,
        "ITEM",
        category,
    )
    # Another reason on the same line, or the same reason on another line, is fine.
    open_on(order, reason="quality.colour", skus=["ITEM"], amount="20.00")
    open_on(order, reason="buyer.changed_mind", skus=["PLAIN"], amount="20.00")


def test_excluded_categories_come_from_the_policy() -> None:
    policy = Policy(no_reason_excluded_categories=("fresh_food",))
    order = given_order(lines=("FISH:1:20.00:fresh_food", "NAME:1:88.00:custom_made"))
    args: dict[str, Any] = {"reason": "buyer.changed_mind", "policy": policy}
    refused(
        order,
        lambda: open_on(order, skus=["FISH"], amount="20.00", **args),
        NotAllowed,
        "fresh_food",
    )
    assert open_on(order, skus=["NAME"], amount="88.00", **args).status is S.AWAITING_MERCHANT


@pytest.mark.parametrize("days,policy", [(7, POLICY), (3, Policy(no_reason_return_days=3))])
def test_the_no_reason_window_runs_from_delivery(days: int, policy: Policy) -> None:
    order = given_order()  # delivered at day 2, 10:00 in Shanghai
    end = t(days=2 + days, hours=13, seconds=3599)  # 23:59:59 of the last calendar day
    refused(
        order,
        lambda: open_on(
            order,
            reason="buyer.changed_mind",
            skus=["STRAP"],
            amount="1.00",
            at=end + timedelta(seconds=1),
            policy=policy,
        ),
        NotAllowed,
        f"{days}-day",
        "buyer.",
    )
    case = open_on(
        order, reason="buyer.changed_mind", skus=["STRAP"], amount="1.00", at=end, policy=policy
    )
    assert case.status is S.AWAITING_MERCHANT
    # Any other reason is not held to the window (only to the after-sales one).
    assert open_on(order, skus=["CASE-RED"], at=t(days=17)).status is S.AWAITING_MERCHANT


@pytest.mark.parametrize("case_type", [T.REFUND_ONLY, T.RETURN_REFUND])
def test_a_refund_case_says_how_much(case_type: CaseType) -> None:
    order = given_order()
    refused(order, lambda: open_on(order, case_type, amount=None), BadInput, "amount")


@pytest.mark.parametrize(
    "case_type,skus,reason,expected",
    [
        (T.EXCHANGE, ["CASE-RED"], None, "39.90"),
        (T.EXCHANGE, ["STRAP:1"], None, "10.00"),
        (T.RESHIP, ["GIFT"], None, "5.00"),
        (T.RESHIP, ["FREEBIE"], "missing_items.gift", "15.00"),
    ],
)
def test_exchange_and_reship_ask_for_what_the_lines_are_worth(
    case_type: CaseType, skus: list[str], reason: str | None, expected: str
) -> None:
    case = open_on(given_order(), case_type, skus=skus, reason=reason, amount=None)
    assert case.amount == Decimal(expected)


@pytest.mark.parametrize("amount", ["0", "0.00"])
def test_the_amount_asked_is_above_zero(amount: str) -> None:
    order = given_order()
    refused(order, lambda: open_on(order, amount=amount), BadInput, "amount", "0")


@pytest.mark.parametrize("amount", ["-1", "12.345", "1e3", "abc", "12,50", ""])
def test_amounts_are_money(amount: str) -> None:
    with pytest.raises(BadInput, match="amount"):
        parse_money(amount)
    assert parse_money("12.5") == Decimal("12.50") and parse_money("7") == Decimal("7.00")


@pytest.mark.parametrize(
    "skus,too_much,most",
    [
        (["STRAP"], "20.01", "20.00"),
        (["STRAP:1"], "10.01", "10.00"),
        (["CASE-RED"], "39.91", "39.90"),
    ],
)
def test_never_more_than_was_paid(skus: list[str], too_much: str, most: str) -> None:
    order = given_order()
    refused(order, lambda: open_on(order, skus=skus, amount=too_much), NotAllowed, most)
    assert open_on(order, skus=skus, amount=most).amount == Decimal(most)


def test_earlier_refunds_reduce_what_can_be_asked() -> None:
    first = given(T.RETURN_REFUND, "refund 12.00", "accept offer", skus=["STRAP"], amount="15.00")
    order = first.order
    assert order.refunded == {"STRAP": Decimal("12.00")} and order.holders == {}
    at = first.next
    refused(order, lambda: open_on(order, skus=["STRAP"], amount="8.01", at=at), NotAllowed, "8.00")
    second = open_on(order, skus=["STRAP"], amount="8.00", at=at)
    assert second.follows == first.case.id


@pytest.mark.parametrize(
    "sku,missing,other",
    [
        ("FREEBIE", "15.00", "0.00"),  # a free gift: its list price when it goes missing
        ("CABLE", "12.00", "9.90"),  # an accessory: its list price, above what was paid
        ("GIFT", "5.00", "5.00"),  # no list price: what was paid
        ("CASE-RED", "39.90", "39.90"),  # not a listed category
    ],
)
def test_missing_items_count_at_list_price(sku: str, missing: str, other: str) -> None:
    order = given_order()
    too_much = str(Decimal(missing) + Decimal("0.01"))
    refused(
        order,
        lambda: open_on(order, T.RESHIP, skus=[sku], reason="missing_items.x", amount=too_much),
        NotAllowed,
        missing,
    )
    if other != missing:
        refused(
            order,
            lambda: open_on(order, T.REFUND_ONLY, skus=[sku], reason="quality.x", amount=missing),
            NotAllowed,
            other,
        )
    case = open_on(order, T.RESHIP, skus=[sku], reason="missing_items.x", amount=missing)
    assert case.amount == Decimal(missing)


def test_listed_categories_come_from_the_policy() -> None:
    policy = Policy(listed_price_categories=("phone_accessory",))
    order = given_order(
        lines=("CASE-RED:1:29.90:phone_accessory:39.90", "CABLE:1:9.90:accessory:12.00")
    )
    reship: dict[str, Any] = {"reason": "missing_items.x", "policy": policy, "amount": None}
    assert open_on(order, T.RESHIP, skus=["CASE-RED"], **reship).amount == Decimal("39.90")
    assert open_on(order, T.RESHIP, skus=["CABLE"], **reship).amount == Decimal("9.90")


def test_one_open_case_per_line() -> None:
    first = given(T.RETURN_REFUND, skus=["CASE-RED"])
    order = first.order
    assert order.holders == {"CASE-RED": first.case.id}
    refused(
        order,
        lambda: open_on(order, skus=["CASE-RED", "STRAP"], amount="1.00"),
        NotAllowed,
        "CASE-RED",
        str(first.case.id),
    )
    assert open_on(order, skus=["STRAP"], amount="5.00").status is S.AWAITING_MERCHANT


@pytest.mark.parametrize("end", ["reject", "withdraw", "rule for merchant"])
def test_a_case_that_lets_go_of_its_lines_is_followed_by_the_next(end: str) -> None:
    steps = ("reject", "escalate unjustified_rejection", end) if end.startswith("rule") else (end,)
    first = given(T.RETURN_REFUND, *steps)
    assert first.order.holders == {} and not first.case.holds_lines
    second = open_on(first.order, at=first.next)
    assert second.follows == first.case.id
    assert first.order.holders == {"CASE-RED": second.id}


def test_a_fully_refunded_line_has_nothing_left() -> None:
    first = given(T.RETURN_REFUND, "refund")
    order = first.order
    refused(order, lambda: open_on(order, amount="0.01", at=first.next), NotAllowed, "0.00")


def test_escalating_a_rejected_case_takes_its_lines_back_if_free() -> None:
    first = given(T.RETURN_REFUND, "reject")
    order, case = first.order, first.case
    escalated_at = first.next
    # Free: escalating links the lines again.
    case.escalate(
        act(Role.BUYER, escalated_at),
        POLICY,
        claim=Claim.UNJUSTIFIED_REJECTION,
        evidence=[],
        order=order,
    )
    assert settle_order_lines(
        case,
        order,
        was_holding=False,
        refunded_before=Decimal(0),
        act=act(Role.BUYER, escalated_at),
    )
    then(events_of(order), ev(CaseLinked, case_id=case.id, skus=("CASE-RED",)))
    # Taken by a newer case: the order refuses before the case is escalated.
    again = given(T.RETURN_REFUND, "reject")
    newer = open_on(again.order, at=again.next)
    events_of(again.order)  # saved with the newer case
    refused(
        again.order,
        lambda: again.order.check_lines_free(list(again.case.lines)),
        NotAllowed,
        "CASE-RED",
        str(newer.id),
    )


def test_the_lines_a_case_names() -> None:
    order = given_order()
    every = order.case_lines([])
    assert [(x.sku, x.quantity) for x in every] == [
        (line.sku, line.quantity) for line in order.lines.values()
    ]
    assert order.case_lines([("STRAP", 1)])[0].value == Decimal("10.00")
    refused(order, lambda: order.case_lines([("NOPE", None)]), BadInput, "NOPE")
    refused(order, lambda: order.case_lines([("STRAP", 1), ("STRAP", 1)]), BadInput, "STRAP")
    refused(order, lambda: order.case_lines([("STRAP", 3)]), BadInput, "STRAP", "3")


# The merchant's review ---------------------------------------------------------------------------


@pytest.mark.parametrize("fire", [False, True], ids=["approve", "auto_approve"])
@pytest.mark.parametrize("case_type", list(CaseType))
def test_each_case_types_approval(case_type: CaseType, fire: bool) -> None:
    story = given(case_type)
    case = story.case
    due = deadline(DueAction.AUTO_APPROVE, OPENED_AT, 48)
    start = due.due_at if fire else story.next
    if fire:
        events = when(
            case, lambda: case.fire(act(Role.SYSTEM, start), POLICY, DueAction.AUTO_APPROVE)
        )
        first = ev(CaseAutoApproved, fired=due)
    else:
        events = when(
            case, lambda: case.approve(act(Role.MERCHANT, start), POLICY, return_address="HZ")
        )
        first = ev(CaseApproved, return_address="HZ")
    kind, fields = first
    if case_type is T.REFUND_ONLY:
        then(
            events,
            (kind, {**fields, "status": S.REFUNDED, "due": None}),
            refund("39.90", Party.MERCHANT),
        )
        assert case.refunded_amount == Decimal("39.90") and case.ledger[0]["payer"] == "merchant"
    elif case_type is T.RESHIP:
        waiting = deadline(DueAction.RESHIP_OVERDUE, start, 24)
        then(events, (kind, {**fields, "status": S.AWAITING_RESHIPMENT, "due": waiting}))
    else:
        # The buyer's 10 days count from the approval, or the auto-approval.
        waiting = deadline(DueAction.AUTO_CLOSE, start, 240)
        then(events, (kind, {**fields, "status": S.AWAITING_BUYER_SHIPMENT, "due": waiting}))


def test_reject_records_the_reason_and_the_talk_with_the_buyer() -> None:
    case = given().case
    events = when(
        case,
        lambda: case.reject(
            act(Role.MERCHANT, t(days=4)), POLICY, reason="worn", communication="call:42"
        ),
    )
    then(
        events,
        ev(
            CaseRejected,
            status=S.REJECTED,
            due=deadline(DueAction.ESCALATION_LAPSED, t(days=4), 24 * 7),
            reason="worn",
            communication="call:42",
        ),
    )
    assert case.rejection == {"reason": "worn", "communication": "call:42"}


@pytest.mark.parametrize(
    "reason,communication,word", [("worn", " ", "communication"), ("", "c", "reason")]
)
def test_a_rejection_needs_a_reason_and_the_talk(
    reason: str, communication: str, word: str
) -> None:
    case = given().case
    refused(
        case,
        lambda: case.reject(
            act(Role.MERCHANT, t(days=4)), POLICY, reason=reason, communication=communication
        ),
        BadInput,
        word,
    )


@pytest.mark.parametrize(
    "status", [S.AWAITING_MERCHANT, S.AWAITING_BUYER_SHIPMENT, S.AWAITING_MERCHANT_RECEIPT]
)
def test_the_merchant_refunds_from_each_waiting_status(status: Status) -> None:
    story = in_status(status)
    case = story.case
    events = when(case, lambda: case.refund(act(Role.MERCHANT, story.next), POLICY))
    then(events, refund("39.90", Party.MERCHANT))
    assert case.refunded_amount == Decimal("39.90") and case.refund_paid_by is Party.MERCHANT
    assert case.due is None and not case.holds_lines


@pytest.mark.parametrize(
    "status", [S.AWAITING_MERCHANT, S.AWAITING_BUYER_SHIPMENT, S.AWAITING_MERCHANT_RECEIPT]
)
def test_a_smaller_refund_is_an_offer_the_buyer_answers(status: Status) -> None:
    """A merchant's refund of less than is due ends nothing by itself: it is an offer of a
    refund only for that amount. Accepted, it is refunded; declined, the case is back where it
    was, with the deadline it had (never later)."""
    story = in_status(status)
    case = story.case
    running = case.due
    events = when(
        case, lambda: case.refund(act(Role.MERCHANT, story.next), POLICY, amount=Decimal("20.00"))
    )
    assert [type(e).__name__ for e in events] == ["ChangeOffered"]
    assert case.status is S.AWAITING_BUYER_ANSWER and case.refunded_amount == Decimal("0.00")
    assert case.offers[-1]["amount"] == "20.00" and case.offers[-1]["type"] == "refund_only"
    other = given(story.case.case_type, *TO_STATUS[status][1], "refund 12.00")
    declined = other.case
    when(declined, lambda: declined.decline_offer(act(Role.BUYER, other.next), POLICY))
    assert declined.status is status and declined.due == running
    then(
        when(case, lambda: case.accept_offer(act(Role.BUYER, story.next), POLICY)),
        ev(OfferAccepted, status=S.REFUNDED, agreed_amount=Decimal("20.00")),
        refund("20.00", Party.MERCHANT),
    )


def test_a_refund_is_the_amount_asked_unless_less_is_given() -> None:
    case = given(amount="30.00").case
    refused(
        case,
        lambda: case.refund(act(Role.MERCHANT, t(days=4)), POLICY, amount=Decimal("30.01")),
        NotAllowed,
        "30.00",
        "30.01",
    )
    refused(
        case,
        lambda: case.refund(act(Role.MERCHANT, t(days=4)), POLICY, amount=Decimal("0")),
        BadInput,
        "0",
    )
    then(
        when(case, lambda: case.refund(act(Role.MERCHANT, t(days=4)), POLICY)),
        refund("30.00", Party.MERCHANT),
    )


def test_a_refund_is_shared_over_the_cases_lines() -> None:
    story = given(
        T.REFUND_ONLY, "refund 12.00", "accept offer", skus=["CASE-RED", "STRAP"], amount="50.00"
    )
    assert story.order.refunded == {"CASE-RED": Decimal("7.99"), "STRAP": Decimal("4.01")}
    assert allocate(Decimal("0"), list(story.case.lines)) == {}
    lines = [CaseLine(sku=s, quantity=1, unit_price=Decimal("1.00")) for s in "ABC"]
    assert allocate(Decimal("1.00"), lines) == {
        "A": Decimal("0.33"),
        "B": Decimal("0.33"),
        "C": Decimal("0.34"),
    }
    # No line beyond the room it has: a missing gift paid nothing, made good at its list
    # price, takes its share from what the paid lines cannot.
    paid = [
        CaseLine(sku="MUG", quantity=1, unit_price=Decimal("39.90")),
        CaseLine(sku="STRAP", quantity=3, unit_price=Decimal("10.00")),
        CaseLine(sku="GIFT", quantity=1, unit_price=Decimal("0.00"), list_price=Decimal("15.00")),
    ]
    room = {"MUG": Decimal("39.90"), "STRAP": Decimal("30.00"), "GIFT": Decimal("15.00")}
    assert allocate(Decimal("84.90"), paid, room) == room


# Returns and exchanges ---------------------------------------------------------------------------


def test_ship_back_gives_the_merchant_10_days_from_the_waybill() -> None:
    story = in_status(S.AWAITING_BUYER_SHIPMENT)
    case = story.case
    events = when(case, lambda: case.ship_back(act(Role.BUYER, story.next), POLICY, SHIPMENT))
    then(
        events,
        ev(
            GoodsShippedBack,
            status=S.AWAITING_MERCHANT_RECEIPT,
            due=deadline(DueAction.AUTO_REFUND, story.next, 240),
            shipment=SHIPMENT,
        ),
    )


@pytest.mark.parametrize("case_type", [T.RETURN_REFUND, T.EXCHANGE])
def test_receive_ok(case_type: CaseType) -> None:
    story = given(case_type, "approve", "ship back")
    case = story.case
    events = when(case, lambda: case.receive(act(Role.MERCHANT, story.next), POLICY))
    if case_type is T.EXCHANGE:
        then(
            events,
            ev(
                GoodsReceived,
                status=S.AWAITING_REPLACEMENT,
                due=deadline(DueAction.REPLACEMENT_OVERDUE, story.next, 48),
                condition=Condition.OK,
            ),
        )
        assert case.refunded_amount == Decimal("0.00")
    else:
        then(
            events,
            ev(GoodsReceived, status=S.REFUNDED, condition=Condition.OK),
            refund("39.90", Party.MERCHANT),
        )


@pytest.mark.parametrize("condition", [Condition.DAMAGED, Condition.NOT_AS_RETURNED])
@pytest.mark.parametrize("case_type", [T.RETURN_REFUND, T.EXCHANGE])
def test_receive_not_ok_waits_for_the_platform(case_type: CaseType, condition: Condition) -> None:
    story = given(case_type, "approve", "ship back")
    case = story.case
    events = when(
        case, lambda: case.receive(act(Role.MERCHANT, story.next), POLICY, condition=condition)
    )
    ruling = deadline(DueAction.RULING_OVERDUE, story.next, 72)
    then(
        events,
        ev(GoodsReceived, status=S.ESCALATED, due=ruling, condition=condition),
        ev(
            CaseEscalated,
            status=S.ESCALATED,
            due=ruling,
            claim=Claim.DISPUTED_RECEIPT,
            from_status=S.AWAITING_MERCHANT_RECEIPT,
        ),
    )
    assert case.refunded_amount == Decimal("0.00") and case.escalation is not None
    assert case.escalation["by"] == "merchant"


def test_the_replacement_completes_an_exchange() -> None:
    story = in_status(S.AWAITING_REPLACEMENT)
    case = story.case
    events = when(case, lambda: case.ship_replacement(act(Role.MERCHANT, story.next), RESHIPMENT))
    then(events, ev(ReplacementShipped, status=S.COMPLETED, due=None, shipment=RESHIPMENT))
    assert case.refunded_amount == Decimal("0.00") and not case.holds_lines


# Reships -----------------------------------------------------------------------------------------


def test_reship_completes() -> None:
    story = in_status(S.AWAITING_RESHIPMENT)
    case = story.case
    events = when(case, lambda: case.reship(act(Role.MERCHANT, story.next), RESHIPMENT))
    then(events, ev(MissingItemsReshipped, status=S.COMPLETED, due=None, shipment=RESHIPMENT))
    assert case.ledger == []


def test_a_merchant_who_cannot_reship_has_the_platform_pay_first() -> None:
    story = in_status(S.AWAITING_RESHIPMENT)
    case = story.case
    events = when(case, lambda: case.reship(act(Role.MERCHANT, story.next), None, note="sold out"))
    then(
        events,
        ev(ReshipImpossible, status=S.REFUNDED, note="sold out"),
        refund("5.00", Party.PLATFORM),
    )
    assert case.late_shipment is False
    assert case.ledger == [
        {
            "type": "refund",
            "amount": "5.00",
            "payer": "platform",
            "payee": "buyer",
            "at": story.next.isoformat(),
            "version": case.version,
            "owed_by": "merchant",
        }
    ]


# The buyer ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(CONTRACT["withdraw"]))
def test_withdraw_closes(status: Status) -> None:
    story = in_status(status)
    case = story.case
    then(
        when(case, lambda: case.withdraw(act(Role.BUYER, story.next))),
        ev(CaseWithdrawn, status=S.CLOSED, due=None),
    )
    assert not case.holds_lines


@pytest.mark.parametrize(
    "status", sorted(s for s in CONTRACT["escalate"] if ("escalate", s) not in GUARDED)
)
def test_escalate_from_each_status_it_is_allowed_from(status: Status) -> None:
    story = in_status(status)
    case = story.case
    events = when(
        case,
        lambda: case.escalate(
            act(Role.BUYER, story.next),
            POLICY,
            claim=Claim.OTHER,
            evidence=["chat:9"],
            note="n",
            order=story.order,
        ),
    )
    then(
        events,
        ev(
            CaseEscalated,
            status=S.ESCALATED,
            due=deadline(DueAction.RULING_OVERDUE, story.next, 72),
            claim=Claim.OTHER,
            from_status=status,
            evidence=("chat:9",),
        ),
    )
    assert case.escalation is not None and case.escalation["from_status"] == status.value


def test_a_person_does_not_claim_a_disputed_receipt() -> None:
    case = given(T.RETURN_REFUND, "approve").case
    refused(
        case,
        lambda: case.escalate(
            act(Role.BUYER, t(days=4)), POLICY, claim=Claim.DISPUTED_RECEIPT, evidence=[]
        ),
        BadInput,
        "claim",
    )


def test_a_case_is_rated_once_and_keeps_its_status() -> None:
    story = given(T.RETURN_REFUND, "withdraw")
    case = story.case
    events = when(case, lambda: case.rate(act(Role.BUYER, story.next), score=4, comment="fine"))
    then(events, ev(CaseRated, status=S.CLOSED, due=None, score=4, comment="fine"))
    assert case.rating == {"score": 4, "comment": "fine"}
    refused(case, lambda: case.rate(act(Role.BUYER, LATER), score=5), NotAllowed, "rated")


@pytest.mark.parametrize("score", [0, 6])
def test_a_rating_is_1_to_5(score: int) -> None:
    case = given(T.RETURN_REFUND, "withdraw").case
    refused(case, lambda: case.rate(act(Role.BUYER, LATER), score=score), BadInput, str(score))


# The platform ------------------------------------------------------------------------------------


def escalated(claim: Claim) -> Story:
    if claim is Claim.DISPUTED_RECEIPT:
        return given(T.RETURN_REFUND, "approve", "ship back", "receive damaged")
    if claim is Claim.MISSING_ITEMS:
        return given(T.RESHIP, "reject", "escalate missing_items")
    if claim is Claim.WRONG_ITEM:
        return given(T.RETURN_REFUND, "reject", "escalate wrong_item", reason="wrong_item.colour")
    return given(T.RETURN_REFUND, "reject", f"escalate {claim.value}")


@pytest.mark.parametrize("claim", list(Claim))
def test_each_claims_ruling_for_the_buyer(claim: Claim) -> None:
    story = escalated(claim)
    case = story.case
    at = story.next
    events = when(
        case, lambda: case.rule(act(Role.PLATFORM, at), POLICY, in_favour_of=Party.BUYER, note="n")
    )
    ruled: dict[str, Any] = {"in_favour_of": Party.BUYER, "claim": claim, "note": "n"}
    if claim is Claim.MISSING_ITEMS:
        due = deadline(DueAction.RESHIP_OVERDUE, at, 24)
        then(events, ev(CaseRuled, status=S.AWAITING_RESHIPMENT, due=due, **ruled))
    elif claim is Claim.WRONG_ITEM:
        due = deadline(DueAction.AUTO_CLOSE, at, 240)
        then(
            events,
            ev(
                CaseRuled,
                status=S.AWAITING_BUYER_SHIPMENT,
                due=due,
                freight_on_merchant=True,
                **ruled,
            ),
            ev(
                FreightCharged,
                status=S.AWAITING_BUYER_SHIPMENT,
                due=due,
                amount=Decimal("20.00"),
                legs=2,
                payer=Party.MERCHANT,
                payee=Party.BUYER,
            ),
        )
        assert case.freight_on_merchant is True
    else:
        then(
            events,
            ev(CaseRuled, status=S.REFUNDED, due=None, **ruled),
            refund("39.90", Party.PLATFORM),
        )
    assert case.ruling == {
        "for": "buyer",
        "claim": claim.value,
        "note": "n",
        "by": AGENT,
        "at": at.isoformat(),
    }
    # The goods stay with the buyer only where the platform paid for a rejected case.
    recoverable = claim in (Claim.UNJUSTIFIED_REJECTION, Claim.OTHER)
    assert case.goods_to_recover is recoverable
    assert ("recover-goods" in case.allowed_now()) is recoverable


@pytest.mark.parametrize("claim", list(Claim))
def test_each_claims_ruling_for_the_merchant(claim: Claim) -> None:
    story = escalated(claim)
    case = story.case
    events = when(
        case, lambda: case.rule(act(Role.PLATFORM, story.next), POLICY, in_favour_of=Party.MERCHANT)
    )
    # Goods received not as returned: the case ends; otherwise the rejection stands, and the
    # buyer may appeal it for the policy's days.
    status = S.CLOSED if claim is Claim.DISPUTED_RECEIPT else S.REJECTED
    due = (
        None
        if status is S.CLOSED
        else deadline(DueAction.ESCALATION_LAPSED, story.next, 24 * POLICY.appeal_days)
    )
    then(events, ev(CaseRuled, status=status, due=due, in_favour_of=Party.MERCHANT, claim=claim))
    assert case.refunded_amount == Decimal("0.00") and case.ledger == []
    refused(
        case,
        lambda: case.rule(act(Role.PLATFORM, LATER), POLICY, in_favour_of=Party.BUYER),
        NotAllowed,
        status.value,
        "rule",
    )


def test_a_ruling_is_for_the_buyer_or_the_merchant() -> None:
    case = escalated(Claim.OTHER).case
    refused(
        case,
        lambda: case.rule(act(Role.PLATFORM, LATER), POLICY, in_favour_of=Party.PLATFORM),
        BadInput,
        "buyer",
        "merchant",
    )


def test_freight_per_leg_comes_from_the_policy() -> None:
    case = escalated(Claim.WRONG_ITEM).case
    events = when(
        case,
        lambda: case.rule(
            act(Role.PLATFORM, LATER),
            Policy(freight_per_leg=Decimal("7.50")),
            in_favour_of=Party.BUYER,
        ),
    )
    assert [e.amount for e in events if isinstance(e, FreightCharged)] == [Decimal("15.00")]


def test_wrong_item_upheld_then_returned_refunds_and_charges_freight() -> None:
    story = escalated(Claim.WRONG_ITEM)
    case = story.case
    for step in ("rule for buyer", "ship back", "receive"):
        STEPS[step](case, LATER)
    assert case.status is S.REFUNDED and case.refund_paid_by is Party.MERCHANT
    assert [(e["type"], e["amount"], e["payer"], e["payee"]) for e in case.ledger] == [
        ("freight", "20.00", "merchant", "buyer"),
        ("refund", "39.90", "merchant", "buyer"),
    ]


@pytest.mark.parametrize("claim", [Claim.UNJUSTIFIED_REJECTION, Claim.OTHER])
def test_the_merchant_recovers_goods_the_platform_paid_for_once(claim: Claim) -> None:
    story = given(T.RETURN_REFUND, "reject", f"escalate {claim.value}", "rule for buyer")
    case = story.case
    events = when(
        case, lambda: case.recover_goods(act(Role.MERCHANT, story.next), note="picked up")
    )
    then(events, ev(GoodsRecovered, status=S.REFUNDED, note="picked up"))
    assert case.goods_recovered and "recover-goods" not in case.allowed_now()
    refused(case, lambda: case.recover_goods(act(Role.MERCHANT, LATER)), NotAllowed, "recovered")


@pytest.mark.parametrize(
    "steps",
    [
        ("refund",),
        ("approve", "ship back", "receive damaged", "rule for buyer"),
    ],
    ids=["merchant refunded", "disputed receipt"],
)
def test_no_goods_to_recover_unless_the_platform_paid_for_a_rejection(
    steps: tuple[str, ...],
) -> None:
    case = given(T.RETURN_REFUND, *steps).case
    assert case.status is S.REFUNDED
    refused(case, lambda: case.recover_goods(act(Role.MERCHANT, LATER)), NotAllowed, "platform")


# The clock ---------------------------------------------------------------------------------------

# Each deadline: the story that starts it, when it falls due, and what firing it records.
DEADLINES: dict[DueAction, tuple[CaseType, tuple[str, ...], datetime]] = {
    DueAction.AUTO_APPROVE: (T.REFUND_ONLY, (), t(days=5)),
    DueAction.AUTO_CLOSE: (T.RETURN_REFUND, ("approve",), t(days=13, hours=1)),
    DueAction.AUTO_REFUND: (T.RETURN_REFUND, ("approve", "ship back"), t(days=13, hours=2)),
    DueAction.RESHIP_OVERDUE: (T.RESHIP, ("approve",), t(days=4, hours=1)),
    DueAction.REPLACEMENT_OVERDUE: (
        T.EXCHANGE,
        ("approve", "ship back", "receive"),
        t(days=5, hours=3),
    ),
    DueAction.OFFER_LAPSED: (T.RETURN_REFUND, ("offer refund_only",), t(days=5, hours=1)),
    DueAction.ESCALATION_LAPSED: (T.RETURN_REFUND, ("reject",), t(days=10, hours=1)),
    DueAction.RULING_OVERDUE: (T.RETURN_REFUND, ("approve", "escalate other"), t(days=6, hours=2)),
    DueAction.RULING_LAPSED: (
        T.RETURN_REFUND,
        ("approve", "escalate other", "ruling overdue"),
        t(days=8, hours=2),
    ),
}


def fired_events(action: DueAction, due: Deadline) -> list[Expect]:
    if action is DueAction.AUTO_APPROVE:
        return [
            ev(CaseAutoApproved, status=S.REFUNDED, due=None, fired=due),
            refund("39.90", Party.MERCHANT),
        ]
    if action is DueAction.AUTO_CLOSE:
        return [ev(CaseAutoClosed, status=S.CLOSED, due=None, fired=due)]
    if action is DueAction.AUTO_REFUND:
        return [
            ev(CaseAutoRefunded, status=S.REFUNDED, due=None, fired=due),
            refund("39.90", Party.MERCHANT),
        ]
    if action is DueAction.REPLACEMENT_OVERDUE:
        return [
            ev(ReplacementOverdue, status=S.REFUNDED, due=None, fired=due),
            refund("39.90", Party.MERCHANT),
        ]
    if action is DueAction.OFFER_LAPSED:
        # Back to the merchant's review, its deadline as it stood (here passed: due now).
        review = deadline(DueAction.AUTO_APPROVE, due.due_at, 0)
        return [ev(OfferLapsed, status=S.AWAITING_MERCHANT, due=review, fired=due)]
    if action is DueAction.ESCALATION_LAPSED:
        return [ev(EscalationLapsed, status=S.CLOSED, due=None, fired=due)]
    if action is DueAction.RULING_OVERDUE:
        grace = deadline(DueAction.RULING_LAPSED, due.due_at, 48)
        return [ev(RulingOverdue, status=S.ESCALATED, due=grace, fired=due)]
    if action is DueAction.RULING_LAPSED:
        return [
            ev(RulingLapsed, status=S.REFUNDED, due=None, fired=due),
            ev(
                CaseRefunded,
                status=S.REFUNDED,
                amount=Decimal("39.90"),
                paid_by=Party.PLATFORM,
                owed_by=Party.PLATFORM,
            ),
        ]
    return [
        ev(ReshipOverdue, status=S.REFUNDED, due=None, fired=due),
        ev(
            LateShipmentPenalty,
            status=S.REFUNDED,
            amount=Decimal("5.00"),
            payer=Party.MERCHANT,
            payee=Party.BUYER,
        ),
        refund("5.00", Party.PLATFORM),
    ]


@pytest.mark.parametrize("action", list(DueAction))
def test_each_deadline_fires_at_its_limit_and_not_a_second_before(action: DueAction) -> None:
    case_type, steps, due_at = DEADLINES[action]
    case = given(case_type, *steps).case
    assert case.due is not None and case.due.action is action and case.due.due_at == due_at
    running = case.due
    refused(
        case,
        lambda: case.fire(act(Role.SYSTEM, due_at - timedelta(seconds=1)), POLICY, action),
        NotAllowed,
        action.value,
    )
    # Fired at its time, given in another offset: recorded at the deadline's own time.
    events = when(case, lambda: case.fire(act(Role.SYSTEM, due_at.astimezone(UTC)), POLICY, action))
    then(events, *fired_events(action, running))
    assert all(e.at == due_at and e.at.utcoffset() == timedelta(hours=8) for e in events)
    assert all(e.actor == Actor(role=Role.SYSTEM, id="system") for e in events)
    assert case.late_shipment is (action is DueAction.RESHIP_OVERDUE)


@pytest.mark.parametrize("action", list(DueAction))
def test_a_late_firing_is_recorded_when_it_happened(action: DueAction) -> None:
    case_type, steps, _ = DEADLINES[action]
    case = given(case_type, *steps).case
    events = when(case, lambda: case.fire(act(Role.SYSTEM, LATER), POLICY, action))
    assert events and all(e.at == LATER for e in events)


@pytest.mark.parametrize("action", list(DueAction))
@pytest.mark.parametrize("running", list(DueAction))
def test_only_the_running_deadline_fires(action: DueAction, running: DueAction) -> None:
    case_type, steps, _ = DEADLINES[running]
    case = given(case_type, *steps).case
    if action is running:
        assert when(case, lambda: case.fire(act(Role.SYSTEM, LATER), POLICY, action))
    else:
        refused(
            case,
            lambda: case.fire(act(Role.SYSTEM, LATER), POLICY, action),
            NotAllowed,
            action.value,
            case.status.value,
        )


def test_a_deadline_missing_from_older_events_does_not_fire() -> None:
    """Given events recorded without the deadline (as an older version might have), the
    status allows the firing, but no deadline is running."""
    opened, approved = given(T.RETURN_REFUND, "approve").case_events
    old = approved.model_copy(update={"due": None})
    case = replay([opened, old], ReturnCase)
    assert case.status is S.AWAITING_BUYER_SHIPMENT and case.due is None
    refused(
        case,
        lambda: case.fire(act(Role.SYSTEM, LATER), POLICY, DueAction.AUTO_CLOSE),
        NotAllowed,
        "auto_close",
    )


def test_a_deadline_never_fires_after_the_case_moved_on() -> None:
    story = given(T.RETURN_REFUND)
    case = story.case
    case.approve(act(Role.MERCHANT, t(days=4, hours=23)), POLICY)  # the merchant at hour 47
    case.collect_events()
    refused(
        case,
        lambda: case.fire(act(Role.SYSTEM, t(days=5)), POLICY, DueAction.AUTO_APPROVE),
        NotAllowed,
        "auto_approve",
        S.AWAITING_BUYER_SHIPMENT.value,
    )
    assert case.due == deadline(DueAction.AUTO_CLOSE, t(days=4, hours=23), 240)


def test_an_auto_approved_return_waits_its_own_10_days_then_closes() -> None:
    case = given(T.RETURN_REFUND).case
    case.fire(act(Role.SYSTEM, t(days=5)), POLICY, DueAction.AUTO_APPROVE)
    case.collect_events()
    closing = deadline(DueAction.AUTO_CLOSE, t(days=5), 240)
    assert case.due == closing
    refused(
        case,
        lambda: case.fire(act(Role.SYSTEM, t(days=15, seconds=-1)), POLICY, DueAction.AUTO_CLOSE),
        NotAllowed,
        "auto_close",
    )
    then(
        when(case, lambda: case.fire(act(Role.SYSTEM, t(days=15)), POLICY, DueAction.AUTO_CLOSE)),
        *fired_events(DueAction.AUTO_CLOSE, closing),
    )


@pytest.mark.parametrize("steps", [("withdraw",), ("approve", "escalate other"), ("reject",)])
def test_a_withdrawn_escalated_or_rejected_case_runs_its_own_deadline_only(
    steps: tuple[str, ...],
) -> None:
    case = given(T.RETURN_REFUND, *steps).case
    running = {S.CLOSED: None, S.ESCALATED: DueAction.RULING_OVERDUE}.get(
        case.status, DueAction.ESCALATION_LAPSED
    )
    assert (case.due.action if case.due else None) is running
    for action in set(DueAction) - {running}:

        def fire(action: DueAction = action) -> None:
            case.fire(act(Role.SYSTEM, LATER), POLICY, action)

        refused(case, fire, NotAllowed, action.value)


def test_deadlines_record_the_policy_that_set_them() -> None:
    policy = Policy(name="kuaishou-2026", windows=Windows(buyer_shipment_hours=72))
    case = given(T.RETURN_REFUND).case
    case.approve(act(Role.MERCHANT, t(days=4)), policy)
    (event,) = case.collect_events()
    assert isinstance(event, CaseApproved)
    assert event.due == deadline(DueAction.AUTO_CLOSE, t(days=4), 72, policy)
    assert case.policy_version == policy.version and policy.version.startswith("kuaishou-2026@")


# The order ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "order_id,merchant,buyer,lines,word",
    [
        ("KS 1", "m", "b", ["A:1:1.00"], "KS 1"),
        ("KS-2", " ", "b", ["A:1:1.00"], "merchant"),
        ("KS-2", "m", "", ["A:1:1.00"], "buyer"),
        ("KS-2", "m", "b", [], "line"),
        ("KS-2", "m", "b", ["A:1:1.00", "A:2:1.00"], "SKU"),
    ],
)
def test_an_order_is_placed_with_its_facts(
    order_id: str, merchant: str, buyer: str, lines: list[str], word: str
) -> None:
    with pytest.raises(BadInput) as info:
        Order.place(
            order_id,
            merchant_id=merchant,
            buyer_id=buyer,
            lines=[parse_order_line(x) for x in lines],
            act=act(Role.PLATFORM, t()),
        )
    assert type(info.value) is BadInput and word in info.value.message


@pytest.mark.parametrize(
    "text,word",
    [
        ("A:1", "SKU:QTY:UNIT_PRICE"),
        ("A:0:1.00", "quantity"),
        ("A:x:1.00", "quantity"),
        ("!A:1:1.00", "SKU"),
        ("A:1:0.00", "list price"),
        ("A:1:1.0.0", "unit price"),
    ],
)
def test_order_lines_as_the_command_line_takes_them(text: str, word: str) -> None:
    with pytest.raises(BadInput, match=word):
        parse_order_line(text)
    gift = parse_order_line("G:2:0.00:gift:15.00")
    assert (gift.category, gift.list_price, gift.total) == (
        "gift",
        Decimal("15.00"),
        Decimal("0.00"),
    )


def test_delivery_implies_shipment_and_each_happens_once() -> None:
    order = given_order(shipped=False, delivered=False)
    then(
        when(order, lambda: order.deliver(act(Role.PLATFORM, t(days=2)))),
        ev(OrderShipped, shipment=None),
        ev(OrderDelivered),
    )
    assert order.shipped_at == order.delivered_at == t(days=2)
    refused(order, lambda: order.deliver(act(Role.PLATFORM, t(days=3))), NotAllowed, "delivered")
    refused(
        order, lambda: order.ship(SHIPMENT, act(Role.PLATFORM, t(days=3))), NotAllowed, "shipped"
    )
    shipped = given_order(delivered=False)
    then(when(shipped, lambda: shipped.deliver(act(Role.PLATFORM, t(days=2)))), ev(OrderDelivered))


def test_order_facts_are_not_dated_before_the_latest() -> None:
    order = given_order(delivered=False)  # shipped at day 1
    refused(
        order, lambda: order.deliver(act(Role.PLATFORM, t(hours=23))), BadInput, "before", "KS-1"
    )
    unshipped = given_order(shipped=False, delivered=False)
    refused(
        unshipped,
        lambda: unshipped.ship(SHIPMENT, act(Role.PLATFORM, t(seconds=-1))),
        BadInput,
        "before",
    )


def test_the_order_keeps_the_books_of_its_lines() -> None:
    story = given(T.REFUND_ONLY, "refund 12.00", "accept offer", skus=["STRAP"], amount="15.00")
    order = story.order
    case_id = story.case.id
    assert order.cases == [case_id] and order.last_case == {"STRAP": case_id}
    lines = {line["sku"]: line for line in order.to_json()["lines"]}
    assert lines["STRAP"]["refunded"] == "12.00" and lines["STRAP"]["open_case_id"] is None
    then(
        story.order_events[-2:],
        ev(CaseLinked, case_id=case_id, skus=("STRAP",), holds_shipment=False),
        ev(CaseUnlinked, case_id=case_id, status="refunded", refunded={"STRAP": Decimal("12.00")}),
    )
