"""The rules of domain.md and the refusals of the issue: each refused, nothing appended.

Each rule's variants are covered without a store in tests/test_domain.py; here each kind of
refusal runs at least once through the engine on both backends, with the store's event count
checked unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    AcceptOffer,
    ApproveCase,
    DeliverOrder,
    EscalateCase,
    FireDeadline,
    OpenCase,
    PlaceOrder,
    RefundCase,
    RejectCase,
    ShipBack,
    ShipOrder,
    WithdrawCase,
)
from aftersales.engine.domain.errors import BadInput, Conflict, NotAllowed, NotFound
from tests.conftest import at, place_delivered


def event_count(engine: Engine) -> int:
    return engine.store.recorder.max_notification_id() or 0


def open_quality(engine: Engine, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "type": "return_refund",
        "reason": "quality.colour",
        "amount": "39.90",
        "at": at(days=3),
    }
    args.update(kw)
    result: dict[str, Any] = engine.handle(OpenCase(order_id="KS-1", **args))
    return result


@pytest.fixture
def delivered(engine: Engine) -> Engine:
    place_delivered(
        engine,
        lines=("CASE-RED:1:39.90:phone_accessory", "STRAP:2:10.00", "NAME:1:88.00:custom_made"),
    )
    return engine


def refused(engine: Engine, error: type[Exception], match: str, call: Any) -> None:
    before = event_count(engine)
    with pytest.raises(error, match=match):
        call()
    assert event_count(engine) == before, "a refused action appended events"


def test_a_case_needs_a_known_order(engine: Engine) -> None:
    refused(
        engine,
        NotFound,
        "no order KS-404",
        lambda: engine.handle(
            OpenCase(
                order_id="KS-404", type="refund_only", reason="quality.x", amount="1.00", at=at()
            )
        ),
    )


def test_unknown_case(delivered: Engine) -> None:
    e = delivered
    refused(
        e,
        NotFound,
        "no case",
        lambda: e.handle(ApproveCase(case_id="5d3c4b1a-0000-4000-8000-000000000000")),
    )
    refused(e, NotFound, "no case", lambda: e.handle(ApproveCase(case_id="not-a-case")))
    # An order's id is not a case.
    order_uuid = str(e.load_order("KS-1").id)
    refused(e, NotFound, "no case", lambda: e.stored_case(order_uuid))


@pytest.mark.parametrize("amount", ["0.00", "12.345"])
def test_amount_must_be_money_above_zero(delivered: Engine, amount: str) -> None:
    refused(delivered, BadInput, "amount", lambda: open_quality(delivered, amount=amount))


def test_amount_no_more_than_what_was_paid(delivered: Engine) -> None:
    e = delivered
    refused(
        e, NotAllowed, "at most 20.00", lambda: open_quality(e, amount="20.01", lines=["STRAP"])
    )
    refused(
        e, NotAllowed, "at most 10.00", lambda: open_quality(e, amount="10.01", lines=["STRAP:1"])
    )
    assert open_quality(e, amount="20.00", lines=["STRAP"])["amount"] == "20.00"


def test_earlier_refunds_reduce_what_can_be_asked(delivered: Engine) -> None:
    e = delivered
    first = open_quality(e, amount="15.00", lines=["STRAP"])
    # Less than asked: an offer, accepted by the buyer.
    e.handle(RefundCase(case_id=first["case_id"], amount="12.00", at=at(days=3, hours=1)))
    e.handle(AcceptOffer(case_id=first["case_id"], at=at(days=3, hours=2)))
    assert e.stored_order("KS-1")["lines"][1]["refunded"] == "12.00"
    refused(
        e,
        NotAllowed,
        "at most 8.00",
        lambda: open_quality(e, amount="8.01", lines=["STRAP"], at=at(days=4)),
    )
    second = open_quality(e, amount="8.00", lines=["STRAP"], at=at(days=4))
    assert second["follows"] == first["case_id"]


def test_one_open_case_per_line(delivered: Engine) -> None:
    e = delivered
    first = open_quality(e, lines=["CASE-RED"])
    refused(
        e,
        NotAllowed,
        f"already has an open case {first['case_id']}",
        lambda: open_quality(e, lines=["CASE-RED", "STRAP"], amount="1.00"),
    )
    # Another line of the same order is free.
    assert open_quality(e, lines=["STRAP"], amount="5.00")["status"] == "awaiting_merchant"


@pytest.mark.parametrize("end", ["withdraw"])
def test_after_rejection_or_closure_a_new_case_follows(delivered: Engine, end: str) -> None:
    e = delivered
    first = open_quality(e, lines=["CASE-RED"])
    if end == "reject":
        e.handle(
            RejectCase(
                case_id=first["case_id"],
                reason="scratched by use",
                communication="chat:77",
                at=at(days=3, hours=1),
            )
        )
    else:
        e.handle(WithdrawCase(case_id=first["case_id"], at=at(days=3, hours=1)))
    second = open_quality(e, lines=["CASE-RED"], at=at(days=3, hours=2))
    assert second["follows"] == first["case_id"]
    assert e.stored_order("KS-1")["lines"][0]["open_case_id"] == second["case_id"]


def test_escalating_a_rejected_case_after_a_new_one_opened_is_refused(delivered: Engine) -> None:
    e = delivered
    first = open_quality(e, lines=["CASE-RED"])
    e.handle(
        RejectCase(case_id=first["case_id"], reason="r", communication="c", at=at(days=3, hours=1))
    )
    open_quality(e, lines=["CASE-RED"], at=at(days=3, hours=2))
    refused(
        e,
        NotAllowed,
        "already has an open case",
        lambda: e.handle(
            EscalateCase(
                case_id=first["case_id"], claim="unjustified_rejection", at=at(days=3, hours=3)
            )
        ),
    )


def test_no_reason_refused_for_excluded_categories(delivered: Engine) -> None:
    e = delivered
    refused(
        e,
        NotAllowed,
        "custom_made: the policy excludes",
        lambda: open_quality(e, reason="buyer.changed_mind", lines=["NAME"], amount="88.00"),
    )
    # A quality reason on the same line is fine.
    assert open_quality(e, lines=["NAME"], amount="88.00")["status"] == "awaiting_merchant"


def test_no_reason_window_is_7_days_after_delivery(delivered: Engine) -> None:
    e = delivered  # delivered at day 2, 10:00 in Shanghai: the window ends day 9 at 23:59:59
    refused(
        e,
        NotAllowed,
        "7-day no-reason window closed",
        lambda: open_quality(
            e, reason="buyer.changed_mind", lines=["STRAP"], amount="1.00", at=at(days=9, hours=14)
        ),
    )
    last = at(days=9, hours=13, minutes=59, seconds=59)
    ok = open_quality(e, reason="buyer.changed_mind", lines=["STRAP"], amount="1.00", at=last)
    assert ok["status"] == "awaiting_merchant"


def test_returns_need_a_delivered_order(engine: Engine) -> None:
    place_delivered(engine, delivered=False)
    refused(engine, NotAllowed, "not delivered yet", lambda: open_quality(engine))
    case = open_quality(engine, type="refund_only", reason="buyer.changed_mind")
    assert case["status"] == "awaiting_merchant"


def test_a_rejection_needs_reason_and_communication(delivered: Engine) -> None:
    e = delivered
    cid = open_quality(e)["case_id"]
    refused(
        e,
        BadInput,
        "communication is required",
        lambda: e.handle(RejectCase(case_id=cid, reason="worn", communication=" ")),
    )
    refused(
        e,
        BadInput,
        "reason is required",
        lambda: e.handle(RejectCase(case_id=cid, reason="", communication="c")),
    )


def test_withdraw_is_the_buyers_until_the_money_moved(delivered: Engine) -> None:
    e = delivered
    cid = open_quality(e)["case_id"]
    refused(
        e,
        NotAllowed,
        "buyer-1; buyer-2 may not withdraw",
        lambda: e.handle(WithdrawCase(case_id=cid, by="buyer-2", at=at(days=4))),
    )
    e.handle(RefundCase(case_id=cid, at=at(days=4)))
    refused(
        e,
        NotAllowed,
        "is refunded: withdraw is not allowed",
        lambda: e.handle(WithdrawCase(case_id=cid, at=at(days=5))),
    )


def test_only_the_orders_buyer_opens_a_case(delivered: Engine) -> None:
    refused(
        delivered,
        NotAllowed,
        "belongs to buyer buyer-1",
        lambda: open_quality(delivered, by="someone-else"),
    )


def test_action_not_allowed_names_status_and_what_is_allowed(delivered: Engine) -> None:
    e = delivered
    cid = open_quality(e)["case_id"]
    refused(
        e,
        NotAllowed,
        "is awaiting_merchant: ship-back is not allowed; allowed now: approve, reject, "
        "refund, withdraw",
        lambda: e.handle(ShipBack(case_id=cid, carrier="SF", waybill="1", at=at(days=4))),
    )


def test_action_dated_before_the_latest_event_is_refused(delivered: Engine) -> None:
    e = delivered
    cid = open_quality(e)["case_id"]
    refused(
        e,
        BadInput,
        "before case .* latest event",
        lambda: e.handle(ApproveCase(case_id=cid, at=at(days=2, hours=23))),
    )
    refused(
        e,
        BadInput,
        "before order KS-1's latest event",
        lambda: e.handle(ShipOrder(order_id="KS-1", at=at(days=1))),
    )


@pytest.mark.parametrize("value", ["yesterday", "2026-11-01T10:00:00", "2026-13-01T00:00+08:00"])
def test_malformed_time(delivered: Engine, value: str) -> None:
    refused(delivered, BadInput, "^at ", lambda: open_quality(delivered, at=value))


def test_command_id_makes_a_retry_change_nothing(delivered: Engine) -> None:
    e = delivered
    first = open_quality(e, command_id="cmd-open-1")
    count = event_count(e)
    again = open_quality(e, command_id="cmd-open-1")
    assert again == first and event_count(e) == count
    approved = e.handle(
        ApproveCase(case_id=first["case_id"], at=at(days=4), command_id="cmd-approve-1")
    )
    e.handle(ShipBack(case_id=first["case_id"], carrier="SF", waybill="1", at=at(days=5)))
    # The retry prints the first result again, though the case has moved on since.
    count = event_count(e)
    assert (
        e.handle(ApproveCase(case_id=first["case_id"], at=at(days=4), command_id="cmd-approve-1"))
        == approved
    )
    assert event_count(e) == count


def test_command_id_reused_with_different_arguments_is_refused(delivered: Engine) -> None:
    e = delivered
    cid = open_quality(e, command_id="k-1")["case_id"]
    refused(
        e,
        BadInput,
        "command id k-1 was already used",
        lambda: open_quality(e, amount="1.00", command_id="k-1"),
    )
    refused(
        e,
        BadInput,
        "command id k-1 was already used",
        lambda: e.handle(ApproveCase(case_id=cid, at=at(days=4), command_id="k-1")),
    )


def test_expected_version(delivered: Engine) -> None:
    e = delivered
    case = open_quality(e)
    refused(
        e,
        Conflict,
        "not the expected 0",
        lambda: e.handle(ApproveCase(case_id=case["case_id"], at=at(days=4), expected_version=0)),
    )
    assert (
        e.handle(ApproveCase(case_id=case["case_id"], at=at(days=4), expected_version=1))["version"]
        == 2
    )


def test_refund_no_more_than_asked(delivered: Engine) -> None:
    e = delivered
    cid = open_quality(e, amount="30.00")["case_id"]
    refused(
        e,
        NotAllowed,
        "more than the 30.00 asked",
        lambda: e.handle(RefundCase(case_id=cid, amount="30.01", at=at(days=4))),
    )


def test_deadline_fires_not_a_second_early_and_only_while_running(delivered: Engine) -> None:
    e = delivered
    case = open_quality(e)
    refused(
        e,
        NotAllowed,
        "not yet",
        lambda: e.handle(
            FireDeadline(
                case_id=case["case_id"], deadline="auto_approve", at=at(days=5, seconds=-1)
            )
        ),
    )
    refused(
        e,
        NotAllowed,
        "awaiting_merchant: auto_close is not allowed",
        lambda: e.handle(
            FireDeadline(case_id=case["case_id"], deadline="auto_close", at=at(days=30))
        ),
    )
    e.handle(
        ApproveCase(case_id=case["case_id"], at=at(days=4, hours=23))
    )  # the merchant at hour 47
    refused(
        e,
        NotAllowed,
        "auto_approve is not allowed",
        lambda: e.handle(
            FireDeadline(case_id=case["case_id"], deadline="auto_approve", at=at(days=5))
        ),
    )


def test_order_facts(engine: Engine) -> None:
    refused(
        engine,
        BadInput,
        "SKU appears on more than one line",
        lambda: engine.handle(
            PlaceOrder(
                order_id="KS-2", merchant="m", buyer="b", lines=["A:1:1.00", "A:2:1.00"], at=at()
            )
        ),
    )
    refused(
        engine,
        BadInput,
        "not SKU:QTY:UNIT_PRICE",
        lambda: engine.handle(
            PlaceOrder(order_id="KS-2", merchant="m", buyer="b", lines=["A:1"], at=at())
        ),
    )
    refused(
        engine,
        BadInput,
        "quantity",
        lambda: engine.handle(
            PlaceOrder(order_id="KS-2", merchant="m", buyer="b", lines=["A:0:1.00"], at=at())
        ),
    )
    engine.handle(PlaceOrder(order_id="KS-2", merchant="m", buyer="b", lines=["A:1:1.00"], at=at()))
    refused(
        engine,
        NotAllowed,
        "already placed",
        lambda: engine.handle(
            PlaceOrder(order_id="KS-2", merchant="m", buyer="b", lines=["A:1:1.00"], at=at())
        ),
    )
    engine.handle(DeliverOrder(order_id="KS-2", at=at(days=1)))
    refused(
        engine,
        NotAllowed,
        "already delivered",
        lambda: engine.handle(DeliverOrder(order_id="KS-2", at=at(days=2))),
    )


def test_a_case_id_already_taken_is_refused_and_changes_nothing(delivered: Engine) -> None:
    """A case id given (or derived from a command id) that another case has is refused, from
    the same engine that opened it (which has both cached) and from a fresh one; the order
    the second case would have taken lines of keeps them free."""
    e = delivered
    taken = open_quality(e, case_id="3f2b6a1e-8f4c-4d2a-9b7e-1c5d0e9a7b11")["case_id"]
    place_delivered(e, "KS-2", lines=("CUP:1:20.00",))
    for engine in (e, Engine(e.store)):
        refused(
            engine,
            NotAllowed,
            f"case {taken} exists already",
            lambda engine=engine: engine.handle(
                OpenCase(
                    order_id="KS-2",
                    type="refund_only",
                    reason="quality.crack",
                    amount="20.00",
                    case_id=taken,
                    at=at(days=3),
                )
            ),
        )
        assert engine.stored_order("KS-2")["lines"][0]["open_case_id"] is None
    # A command id names a case too: reusing one for another order's case is refused as a
    # reused command id, before anything is saved.
    place_delivered(e, "KS-3", lines=("BOWL:1:30.00",))
    e.handle(
        OpenCase(
            order_id="KS-3",
            type="refund_only",
            reason="quality.crack",
            amount="30.00",
            at=at(days=3),
            command_id="named-1",
        )
    )
    refused(
        e,
        BadInput,
        "command id named-1 was already used",
        lambda: e.handle(
            OpenCase(
                order_id="KS-2",
                type="refund_only",
                reason="quality.crack",
                amount="20.00",
                at=at(days=3),
                command_id="named-1",
            )
        ),
    )


def test_a_commands_fingerprint_keeps_its_stored_form() -> None:
    """Fingerprints are stored with command ids, and a retry compares against them: the form
    (sorted keys, no spaces, ASCII escapes) must stay as it was stored."""
    import hashlib
    import json

    from aftersales.engine.application.requests import RefundCase, RuleCase

    command = RefundCase(
        case_id="9b2f7c4e-1d3a-4c5b-8e6f-0a1b2c3d4e5f",
        amount="1.5",
        at="2026-11-03T10:00:00+08:00",
        by="店员-7",
        command_id="c-1",
    )
    expected = json.dumps(
        {
            "action": "case refund",
            "target": "9b2f7c4e-1d3a-4c5b-8e6f-0a1b2c3d4e5f",
            "args": {"amount": "1.50"},
            "by": "店员-7",
            "at": "2026-11-03T10:00:00+08:00",
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    assert command.fingerprint() == hashlib.sha256(expected.encode()).hexdigest()
    # An opening's lines and a ruling's party keep the keys they were first stored under.
    opening = OpenCase(
        order_id="KS-1", type="exchange", reason="quality.colour", lines=["A", "B:2"], note="颜色"
    )
    stored_form = {
        "action": "case open",
        "target": "KS-1",
        "args": {
            "amount": None,
            "case_id": None,
            "evidence": [],
            "lines": ["A:None", "B:2"],
            "note": "颜色",
            "reason": "quality.colour",
            "type": "exchange",
        },
        "by": None,
        "at": None,
    }
    text = json.dumps(stored_form, sort_keys=True, separators=(",", ":"))
    assert opening.fingerprint() == hashlib.sha256(text.encode()).hexdigest()
    assert set(RuleCase(case_id=command.case_id, in_favour_of="buyer").fingerprint_args()) == {
        "for",
        "note",
    }
