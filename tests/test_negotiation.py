"""Negotiation on its own, in the style of tests/test_domain.py: given past events, when one
action, then the events it recorded or its refusal (class and key words), which records nothing.

Messages with evidence from any party, the merchant's offer of another service and the buyer's
answer (or silence), and the merchant's one extension of its receipt window.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.case_events import (
    CaseRefunded,
    ChangeOffered,
    MessagePosted,
    OfferAccepted,
    OfferDeclined,
    OfferLapsed,
    ReceiptExtended,
)
from aftersales.engine.domain.errors import BadInput, NotAllowed
from aftersales.engine.domain.policy import Policy, TypeWindows, Windows
from aftersales.engine.domain.values import Actor, CaseType, Claim, DueAction, Party, Role, Status
from tests.test_domain import (
    LATER,
    POLICY,
    Story,
    act,
    deadline,
    ev,
    events_of,
    given,
    given_order,
    open_on,
    refund,
    refused,
    replay,
    then,
    when,
)

S = Status
T = CaseType


def offered(
    case_type: CaseType = T.RETURN_REFUND,
    to: CaseType = T.REFUND_ONLY,
    amount: str | None = None,
) -> Story:
    """A case opened at day 3 and the merchant's offer an hour later."""
    story = given(case_type)
    case = story.case
    case.offer(
        act(Role.MERCHANT, story.next),
        POLICY,
        case_type=to,
        amount=None if amount is None else Decimal(amount),
    )
    rebuilt = replay([*story.case_events, *events_of(case)], ReturnCase)
    return Story(rebuilt, story.order, story.next, story.case_events, story.order_events)


# Messages ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.BUYER, Role.MERCHANT, Role.PLATFORM])
def test_a_message_from_any_party_carries_its_evidence_and_changes_nothing(role: Role) -> None:
    story = given(T.RETURN_REFUND, "approve")
    case = story.case
    running = case.due
    events = when(
        case,
        lambda: case.message(
            act(role, story.next), text="see the photos", evidence=["photo:1", "chat:2"]
        ),
    )
    then(
        events,
        ev(
            MessagePosted,
            status=S.AWAITING_BUYER_SHIPMENT,
            due=running,
            text="see the photos",
            evidence=("photo:1", "chat:2"),
        ),
    )
    assert events[0].actor.role is role
    assert case.to_json()["messages"] == [
        {
            "party": role.value,
            "by": events[0].actor.id,
            "at": story.next.isoformat(),
            "text": "see the photos",
            "evidence": ["photo:1", "chat:2"],
        }
    ]


@pytest.mark.parametrize("steps", [("withdraw",), ("refund",), ("approve", "reship")])
def test_no_message_once_the_case_has_ended(steps: tuple[str, ...]) -> None:
    case_type = T.RESHIP if "reship" in steps else T.RETURN_REFUND
    case = given(case_type, *steps).case
    refused(
        case,
        lambda: case.message(act(Role.BUYER, LATER), text="hello?", evidence=[]),
        NotAllowed,
        case.status.value,
        "message",
    )


def test_a_message_needs_its_text_and_no_empty_evidence() -> None:
    case = given().case
    refused(
        case, lambda: case.message(act(Role.BUYER, LATER), text=" ", evidence=[]), BadInput, "text"
    )
    refused(
        case,
        lambda: case.message(act(Role.BUYER, LATER), text="hi", evidence=[""]),
        BadInput,
        "evidence",
    )


def test_only_the_cases_buyer_speaks_as_the_buyer() -> None:
    case = given().case
    refused(
        case,
        lambda: case.message(act(Role.BUYER, LATER, "buyer-2"), text="hi", evidence=[]),
        NotAllowed,
        "buyer-2",
    )


# The offer ---------------------------------------------------------------------------------------


def test_an_offer_waits_48_hours_for_the_buyer_instead_of_the_merchant() -> None:
    story = given(T.RETURN_REFUND)
    case = story.case
    at = story.next
    events = when(
        case,
        lambda: case.offer(
            act(Role.MERCHANT, at),
            POLICY,
            case_type=T.REFUND_ONLY,
            amount=Decimal("20.00"),
            note="keep it",
        ),
    )
    then(
        events,
        ev(
            ChangeOffered,
            status=S.AWAITING_BUYER_ANSWER,
            due=deadline(DueAction.OFFER_LAPSED, at, 48),
            case_type=T.REFUND_ONLY,
            offered_amount=Decimal("20.00"),
            note="keep it",
        ),
    )
    shown = case.to_json()
    assert shown["offers"][0]["type"] == "refund_only" and shown["offers"][0]["answer"] is None
    assert shown["allowed_actions"] == [
        "withdraw",
        "escalate",
        "message",
        "accept-offer",
        "decline-offer",
    ]


def test_the_answer_window_is_policy_data() -> None:
    policy = Policy(
        windows=Windows(offer_answer_hours=24),
        by_type={T.EXCHANGE: TypeWindows(offer_answer_hours=12)},
    )
    for case_type, hours in ((T.RETURN_REFUND, 24), (T.EXCHANGE, 12)):
        story = given(case_type)
        case = story.case
        case.offer(act(Role.MERCHANT, story.next), policy, case_type=T.REFUND_ONLY)
        assert case.due == deadline(DueAction.OFFER_LAPSED, story.next, hours, policy)
    assert policy.version != POLICY.version


@pytest.mark.parametrize(
    "case_type,to,word",
    [
        (T.RETURN_REFUND, T.RETURN_REFUND, "already"),
        (T.RETURN_REFUND, T.RESHIP, "missing items"),
        (T.RESHIP, T.RETURN_REFUND, "nothing to send back"),
        (T.RESHIP, T.EXCHANGE, "nothing to send back"),
    ],
)
def test_offers_that_make_no_sense_are_refused(
    case_type: CaseType, to: CaseType, word: str
) -> None:
    case = given(case_type).case
    refused(
        case,
        lambda: case.offer(act(Role.MERCHANT, LATER), POLICY, case_type=to),
        NotAllowed,
        word,
    )


def test_no_return_offered_on_goods_never_delivered() -> None:
    order = given_order(shipped=False, delivered=False)
    case = open_on(order, T.REFUND_ONLY)
    replayed = replay(events_of(case), ReturnCase)
    refused(
        replayed,
        lambda: replayed.offer(act(Role.MERCHANT, LATER), POLICY, case_type=T.RETURN_REFUND),
        NotAllowed,
        "not delivered",
    )


def test_the_amount_offered_is_more_than_nothing_and_at_most_the_amount_asked() -> None:
    case = given().case
    for amount, error, word in (
        ("0.00", BadInput, "more than 0"),
        ("39.91", NotAllowed, "39.90"),
    ):

        def offer(amount: str = amount) -> None:
            case.offer(
                act(Role.MERCHANT, LATER), POLICY, case_type=T.REFUND_ONLY, amount=Decimal(amount)
            )

        refused(case, offer, error, word)


def test_another_service_only_while_the_merchant_reviews_less_money_while_it_may_refund() -> None:
    approved = given(T.RETURN_REFUND, "approve").case
    refused(
        approved,
        lambda: approved.offer(act(Role.MERCHANT, LATER), POLICY, case_type=T.EXCHANGE),
        NotAllowed,
        approved.status.value,
        "refund_only",
    )
    when(
        approved,
        lambda: approved.offer(
            act(Role.MERCHANT, LATER), POLICY, case_type=T.REFUND_ONLY, amount=Decimal("9.00")
        ),
    )
    assert approved.status is S.AWAITING_BUYER_ANSWER
    rejected = given(T.RETURN_REFUND, "reject").case
    refused(
        rejected,
        lambda: rejected.offer(act(Role.MERCHANT, LATER), POLICY, case_type=T.REFUND_ONLY),
        NotAllowed,
        rejected.status.value,
        "offer",
    )


def test_refund_only_accepted_refunds_the_amount_offered_at_once() -> None:
    story = offered(T.RETURN_REFUND, T.REFUND_ONLY, "20.00")
    case = story.case
    events = when(case, lambda: case.accept_offer(act(Role.BUYER, story.next), POLICY))
    then(
        events,
        ev(
            OfferAccepted,
            status=S.REFUNDED,
            due=None,
            case_type=T.REFUND_ONLY,
            agreed_amount=Decimal("20.00"),
        ),
        refund("20.00", Party.MERCHANT),
    )
    shown = case.to_json()
    assert shown["type"] == "refund_only" and shown["amount"] == "20.00"
    assert shown["refunded_amount"] == "20.00" and shown["offers"][0]["answer"] == "accepted"


def test_an_exchange_turned_return_waits_10_days_for_the_goods() -> None:
    story = offered(T.EXCHANGE, T.RETURN_REFUND)
    case = story.case
    at = story.next
    events = when(case, lambda: case.accept_offer(act(Role.BUYER, at), POLICY))
    then(
        events,
        ev(
            OfferAccepted,
            status=S.AWAITING_BUYER_SHIPMENT,
            due=deadline(DueAction.AUTO_CLOSE, at, 240),
            case_type=T.RETURN_REFUND,
            agreed_amount=Decimal("39.90"),
        ),
    )
    assert case.case_type is T.RETURN_REFUND


def test_the_new_types_window_counts_after_acceptance() -> None:
    policy = Policy(by_type={T.RETURN_REFUND: TypeWindows(buyer_shipment_hours=72)})
    story = offered(T.EXCHANGE, T.RETURN_REFUND)
    case = story.case
    case.accept_offer(act(Role.BUYER, story.next), policy)
    assert case.due == deadline(DueAction.AUTO_CLOSE, story.next, 72, policy)


def test_a_reship_offered_for_missing_items_waits_24_hours_for_the_merchant() -> None:
    story = given(T.REFUND_ONLY, reason="missing_items.gift", skus=["GIFT"], amount="5.00")
    case = story.case
    case.offer(act(Role.MERCHANT, story.next), POLICY, case_type=T.RESHIP)
    case.collect_events()  # given, as saved
    at = story.next + timedelta(hours=1)
    events = when(case, lambda: case.accept_offer(act(Role.BUYER, at), POLICY))
    then(
        events,
        ev(
            OfferAccepted,
            status=S.AWAITING_RESHIPMENT,
            due=deadline(DueAction.RESHIP_OVERDUE, at, 24),
            case_type=T.RESHIP,
        ),
    )


def test_declined_the_merchant_reviews_again_with_the_time_it_had_left() -> None:
    story = offered()
    case = story.case
    at = story.next
    events = when(case, lambda: case.decline_offer(act(Role.BUYER, at), POLICY))
    # The review still ends 48 hours after the opening: the offer gave the merchant no time.
    then(
        events,
        ev(
            OfferDeclined,
            status=S.AWAITING_MERCHANT,
            due=deadline(DueAction.AUTO_APPROVE, story.case.opened_at, 48),
        ),
    )
    shown = case.to_json()
    assert shown["type"] == "return_refund" and shown["amount"] == "39.90"
    assert shown["offers"][0]["answer"] == "declined"
    # The case goes on as before: the merchant may approve it (or offer again).
    case.approve(act(Role.MERCHANT, at + timedelta(hours=1)), POLICY)
    assert case.status is S.AWAITING_BUYER_SHIPMENT


def test_unanswered_the_offer_lapses_at_48_hours_and_not_a_second_before() -> None:
    story = offered()
    case = story.case
    running = case.due
    assert running is not None and running.due_at == story.last + timedelta(hours=48)
    refused(
        case,
        lambda: case.fire(
            act(Role.SYSTEM, running.due_at - timedelta(seconds=1)),
            POLICY,
            DueAction.OFFER_LAPSED,
        ),
        NotAllowed,
        "offer_lapsed",
    )
    events = when(
        case, lambda: case.fire(act(Role.SYSTEM, running.due_at), POLICY, DueAction.OFFER_LAPSED)
    )
    then(
        events,
        # The review it interrupted ran out meanwhile: due now, the clock approves next.
        ev(
            OfferLapsed,
            status=S.AWAITING_MERCHANT,
            due=deadline(DueAction.AUTO_APPROVE, running.due_at, 0),
            fired=running,
        ),
    )
    assert events[0].actor == Actor(role=Role.SYSTEM, id="system")
    assert case.to_json()["offers"][0]["answer"] == "lapsed"


@pytest.mark.parametrize("answer", ["accept", "decline"])
def test_only_the_cases_buyer_answers_and_only_while_an_offer_waits(answer: str) -> None:
    def call(case: ReturnCase, who: str | None = None) -> None:
        a = act(Role.BUYER, LATER, who)
        if answer == "accept":
            case.accept_offer(a, POLICY)
        else:
            case.decline_offer(a, POLICY)

    waiting = offered().case
    refused(waiting, lambda: call(waiting, "buyer-2"), NotAllowed, "buyer-2")
    plain = given().case
    refused(plain, lambda: call(plain), NotAllowed, "awaiting_merchant", f"{answer}-offer")


def test_the_buyer_may_walk_away_or_escalate_instead_of_answering() -> None:
    case = offered().case
    case.escalate(act(Role.BUYER, LATER), POLICY, claim=Claim.OTHER, evidence=[])
    assert case.status is S.ESCALATED and case.due is not None
    assert case.due.action is DueAction.RULING_OVERDUE
    assert case.to_json()["offers"][0]["answer"] is None  # never answered
    case = offered().case
    case.withdraw(act(Role.BUYER, LATER))
    assert case.status is S.CLOSED


def test_refunds_after_an_accepted_offer_are_held_to_its_amount() -> None:
    story = offered(T.EXCHANGE, T.RETURN_REFUND, "30.00")
    case = story.case
    case.accept_offer(act(Role.BUYER, story.next), POLICY)
    case.collect_events()  # given, as saved
    assert case.amount == Decimal("30.00")
    refused(
        case,
        lambda: case.refund(act(Role.MERCHANT, LATER), POLICY, amount=Decimal("35.00")),
        NotAllowed,
        "30.00",
    )


# The receipt extension ---------------------------------------------------------------------------


def test_the_merchant_extends_its_receipt_window_once_moving_the_refund_later() -> None:
    story = given(T.RETURN_REFUND, "approve", "ship back")
    case = story.case
    running = case.due
    assert running is not None and running.action is DueAction.AUTO_REFUND
    events = when(
        case,
        lambda: case.extend_receipt(
            act(Role.MERCHANT, story.next), POLICY, hours=72, reason="warehouse stocktake"
        ),
    )
    moved = running.model_copy(update={"due_at": running.due_at + timedelta(hours=72)})
    then(
        events,
        ev(
            ReceiptExtended,
            status=S.AWAITING_MERCHANT_RECEIPT,
            due=moved,
            hours=72,
            reason="warehouse stocktake",
        ),
    )
    assert case.to_json()["receipt_extension"]["hours"] == 72
    assert "extend" not in case.allowed_now()
    # The refund no longer falls due at the old time, but at the new one.
    refused(
        case,
        lambda: case.fire(act(Role.SYSTEM, running.due_at), POLICY, DueAction.AUTO_REFUND),
        NotAllowed,
        "auto_refund",
    )
    fired = when(
        case, lambda: case.fire(act(Role.SYSTEM, moved.due_at), POLICY, DueAction.AUTO_REFUND)
    )
    assert [type(e) for e in fired][-1] is CaseRefunded


def test_a_second_extension_is_refused() -> None:
    story = given(T.RETURN_REFUND, "approve", "ship back")
    case = story.case
    case.extend_receipt(act(Role.MERCHANT, story.next), POLICY, hours=24, reason="holiday")
    case.collect_events()  # given, as saved
    refused(
        case,
        lambda: case.extend_receipt(act(Role.MERCHANT, LATER), POLICY, hours=1, reason="again"),
        NotAllowed,
        "already extended",
    )


def test_an_extension_over_the_policys_maximum_is_refused() -> None:
    case = given(T.RETURN_REFUND, "approve", "ship back").case
    refused(
        case,
        lambda: case.extend_receipt(act(Role.MERCHANT, LATER), POLICY, hours=73, reason="x"),
        NotAllowed,
        "72",
    )
    generous = Policy(max_receipt_extension_hours=96)
    case.extend_receipt(act(Role.MERCHANT, LATER), generous, hours=96, reason="x")
    assert case.receipt_extension is not None


def test_an_extension_needs_hours_and_a_reason() -> None:
    case = given(T.RETURN_REFUND, "approve", "ship back").case
    refused(
        case,
        lambda: case.extend_receipt(act(Role.MERCHANT, LATER), POLICY, hours=0, reason="x"),
        BadInput,
        "hour",
    )
    refused(
        case,
        lambda: case.extend_receipt(act(Role.MERCHANT, LATER), POLICY, hours=5, reason=" "),
        BadInput,
        "reason",
    )


@pytest.mark.parametrize("steps", [(), ("approve",), ("approve", "ship back", "receive")])
def test_an_extension_only_while_the_goods_are_on_their_way_back(steps: tuple[str, ...]) -> None:
    case = given(T.RETURN_REFUND, *steps).case
    refused(
        case,
        lambda: case.extend_receipt(act(Role.MERCHANT, LATER), POLICY, hours=5, reason="x"),
        NotAllowed,
        case.status.value,
        "extend",
    )
