"""The contract's transitions end to end, on SQLite and on PostgreSQL.

Every action from every status, and each variant of each outcome, is covered without a store
in tests/test_domain.py; here each kind of transition runs at least once through the engine on
both backends, as the contract suite.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    ApproveCase,
    EscalateCase,
    FireDeadline,
    OpenCase,
    RateCase,
    ReceiveGoods,
    RefundCase,
    RejectCase,
    Reship,
    RuleCase,
    ShipBack,
    ShipReplacement,
    WithdrawCase,
)
from aftersales.engine.domain.errors import NotAllowed
from tests.conftest import at, place_delivered


def due(case: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(case["due_at"])


def opened(engine: Engine, case_type: str = "return_refund", **kw: Any) -> dict[str, Any]:
    place_delivered(engine, lines=("CASE-RED:1:39.90:phone_accessory", "GIFT:1:5.00:gift"))
    result: dict[str, Any] = engine.handle(
        OpenCase(
            order_id="KS-1",
            type=case_type,
            reason=kw.pop(
                "reason", "missing_items.gift" if case_type == "reship" else "quality.colour"
            ),
            amount=kw.pop("amount", "39.90" if case_type != "reship" else "5.00"),
            lines=kw.pop("lines", ["CASE-RED"] if case_type != "reship" else ["GIFT"]),
            at=at(days=3),
            **kw,
        )
    )
    return result


def approved(engine: Engine, case_type: str = "return_refund") -> dict[str, Any]:
    case = opened(engine, case_type)
    result: dict[str, Any] = engine.handle(
        ApproveCase(case_id=case["case_id"], at=at(days=3, hours=2))
    )
    return result


def shipped_back(engine: Engine, case_type: str = "return_refund") -> dict[str, Any]:
    case = approved(engine, case_type)
    result: dict[str, Any] = engine.handle(
        ShipBack(case_id=case["case_id"], carrier="SF", waybill="SF1", at=at(days=4))
    )
    return result


def escalated_after(engine: Engine, claim: str) -> dict[str, Any]:
    # A claim about the goods is made on a case opened for it.
    reasons = {"missing_items": "missing_items.case", "wrong_item": "wrong_item.colour"}
    case = opened(engine, reason=reasons.get(claim, "quality.colour"))
    engine.handle(
        RejectCase(
            case_id=case["case_id"], reason="used", communication="chat:1", at=at(days=3, hours=1)
        )
    )
    result: dict[str, Any] = engine.handle(
        EscalateCase(
            case_id=case["case_id"], claim=claim, evidence=["photo:1"], at=at(days=3, hours=2)
        )
    )
    return result


def test_open_waits_for_the_merchant_48_hours(engine: Engine) -> None:
    case = opened(engine)
    assert case["status"] == "awaiting_merchant"
    assert case["due_action"] == "auto_approve"
    assert due(case) == datetime.fromisoformat(at(days=3)) + timedelta(hours=48)
    assert case["version"] == 1 and case["refunded_amount"] == "0.00"
    assert case["refund_paid_by"] is None


@pytest.mark.parametrize("fire", [False, True], ids=["approve", "auto_approve"])
def test_refund_only_approval_refunds_at_once(engine: Engine, fire: bool) -> None:
    case = opened(engine, "refund_only")
    if fire:
        result = engine.handle(
            FireDeadline(case_id=case["case_id"], deadline="auto_approve", at=case["due_at"])
        )
    else:
        result = engine.handle(ApproveCase(case_id=case["case_id"], at=at(days=3, hours=1)))
    assert result["status"] == "refunded"
    assert result["refunded_amount"] == "39.90" and result["refund_paid_by"] == "merchant"
    assert result["due_at"] is None


@pytest.mark.parametrize(
    "case_type,fire",
    [("return_refund", True), ("exchange", False)],
    ids=["return_refund-auto_approve", "exchange-approve"],
)
def test_return_approval_waits_10_days_for_the_buyer(
    engine: Engine, case_type: str, fire: bool
) -> None:
    case = opened(engine, case_type)
    if fire:
        result = engine.handle(
            FireDeadline(case_id=case["case_id"], deadline="auto_approve", at=case["due_at"])
        )
        start = due(case)  # the buyer's 10 days count from the auto-approval
    else:
        result = engine.handle(
            ApproveCase(case_id=case["case_id"], at=at(days=3, hours=5), return_address="HZ")
        )
        start = datetime.fromisoformat(at(days=3, hours=5))
    assert result["status"] == "awaiting_buyer_shipment"
    assert result["due_action"] == "auto_close"
    assert due(result) == start + timedelta(days=10)


def test_reship_approval_waits_24_hours(engine: Engine) -> None:
    result = approved(engine, "reship")
    assert result["status"] == "awaiting_reshipment"
    assert result["due_action"] == "reship_overdue"
    assert due(result) == datetime.fromisoformat(at(days=3, hours=2)) + timedelta(hours=24)


def test_reject_records_reason_and_communication(engine: Engine) -> None:
    case = opened(engine)
    result = engine.handle(
        RejectCase(
            case_id=case["case_id"], reason="worn", communication="call:42", at=at(days=3, hours=1)
        )
    )
    # The buyer has 7 days to take it further; then the clock closes it.
    assert result["status"] == "rejected" and result["due_action"] == "escalation_lapsed"
    assert due(result) == datetime.fromisoformat(at(days=3, hours=1)) + timedelta(days=7)
    assert result["rejection"] == {"reason": "worn", "communication": "call:42"}


@pytest.mark.parametrize("stage", ["awaiting_merchant_receipt"])
def test_merchant_refund_from_a_waiting_status(engine: Engine, stage: str) -> None:
    drive = {
        "awaiting_merchant": opened,
        "awaiting_buyer_shipment": approved,
        "awaiting_merchant_receipt": shipped_back,
    }[stage]
    case = drive(engine)
    assert case["status"] == stage
    result = engine.handle(RefundCase(case_id=case["case_id"], at=at(days=5)))
    assert result["status"] == "refunded"
    assert result["refunded_amount"] == case["amount"] and result["refund_paid_by"] == "merchant"


def test_ship_back_waits_10_days_from_the_waybill(engine: Engine) -> None:
    result = shipped_back(engine)
    assert result["status"] == "awaiting_merchant_receipt"
    assert result["due_action"] == "auto_refund"
    assert due(result) == datetime.fromisoformat(at(days=4)) + timedelta(days=10)
    assert result["return_shipment"] == {"carrier": "SF", "waybill": "SF1"}


def test_auto_close_when_the_buyer_does_not_ship(engine: Engine) -> None:
    case = approved(engine)
    result = engine.handle(
        FireDeadline(case_id=case["case_id"], deadline="auto_close", at=case["due_at"])
    )
    assert result["status"] == "closed" and result["refunded_amount"] == "0.00"


def test_receive_ok_refunds_a_return(engine: Engine) -> None:
    case = shipped_back(engine)
    result = engine.handle(ReceiveGoods(case_id=case["case_id"], condition="ok", at=at(days=6)))
    assert result["status"] == "refunded"
    assert result["refunded_amount"] == "39.90" and result["refund_paid_by"] == "merchant"


def test_exchange_receive_then_ship_replacement_completes(engine: Engine) -> None:
    case = shipped_back(engine, "exchange")
    result = engine.handle(ReceiveGoods(case_id=case["case_id"], at=at(days=6)))
    assert result["status"] == "awaiting_replacement" and result["refunded_amount"] == "0.00"
    result = engine.handle(
        ShipReplacement(case_id=case["case_id"], carrier="YTO", waybill="Y2", at=at(days=7))
    )
    assert result["status"] == "completed"
    assert result["replacement_shipment"] == {"carrier": "YTO", "waybill": "Y2"}


@pytest.mark.parametrize("condition", ["damaged"])
def test_receive_not_ok_waits_for_the_platform(engine: Engine, condition: str) -> None:
    case = shipped_back(engine)
    result = engine.handle(
        ReceiveGoods(case_id=case["case_id"], condition=condition, at=at(days=6))
    )
    assert result["status"] == "escalated"
    assert result["refunded_amount"] == "0.00"
    assert result["escalation"]["claim"] == "disputed_receipt"
    assert result["escalation"]["from_status"] == "awaiting_merchant_receipt"


def test_auto_refund_when_the_merchant_does_not_confirm(engine: Engine) -> None:
    case = shipped_back(engine)
    result = engine.handle(
        FireDeadline(case_id=case["case_id"], deadline="auto_refund", at=case["due_at"])
    )
    assert result["status"] == "refunded" and result["refund_paid_by"] == "merchant"
    assert result["refunded_amount"] == "39.90"


def test_reship_completes(engine: Engine) -> None:
    case = approved(engine, "reship")
    result = engine.handle(
        Reship(case_id=case["case_id"], carrier="SF", waybill="R1", at=at(days=3, hours=5))
    )
    assert result["status"] == "completed" and result["reshipment"]["waybill"] == "R1"


def test_reship_cannot_makes_the_platform_pay(engine: Engine) -> None:
    case = approved(engine, "reship")
    result = engine.handle(Reship(case_id=case["case_id"], cannot=True, at=at(days=3, hours=5)))
    assert result["status"] == "refunded"
    assert result["refund_paid_by"] == "platform" and result["refunded_amount"] == "5.00"
    assert result["late_shipment"] is False


def test_reship_overdue_is_a_late_shipment_and_the_platform_pays(engine: Engine) -> None:
    case = approved(engine, "reship")
    result = engine.handle(
        FireDeadline(case_id=case["case_id"], deadline="reship_overdue", at=case["due_at"])
    )
    assert result["status"] == "refunded" and result["refund_paid_by"] == "platform"
    assert result["late_shipment"] is True


@pytest.mark.parametrize("drive", [approved], ids=["awaiting_buyer_shipment"])
def test_withdraw_closes(engine: Engine, drive: Any) -> None:
    case = drive(engine)
    result = engine.handle(WithdrawCase(case_id=case["case_id"], at=at(days=4)))
    assert result["status"] == "closed"


@pytest.mark.parametrize("drive", [shipped_back], ids=["receipt"])
def test_escalate_from_waiting(engine: Engine, drive: Any) -> None:
    case = drive(engine)
    result = engine.handle(
        EscalateCase(case_id=case["case_id"], claim="other", evidence=["chat:9"], at=at(days=5))
    )
    # The platform's own deadline runs: 72 hours to rule.
    assert result["status"] == "escalated" and result["due_action"] == "ruling_overdue"
    assert due(result) == datetime.fromisoformat(at(days=5)) + timedelta(hours=72)
    assert result["escalation"]["from_status"] == case["status"]


def test_escalate_from_reshipment_and_replacement(engine: Engine) -> None:
    case = approved(engine, "reship")
    assert (
        engine.handle(
            EscalateCase(case_id=case["case_id"], claim="missing_items", at=at(days=3, hours=3))
        )["status"]
        == "escalated"
    )


def test_rule_for_buyer_on_missing_items_orders_a_reship(engine: Engine) -> None:
    case = escalated_after(engine, "missing_items")
    result = engine.handle(
        RuleCase(
            case_id=case["case_id"], in_favour_of="buyer", note="photos show it", at=at(days=4)
        )
    )
    assert result["status"] == "awaiting_reshipment" and result["due_action"] == "reship_overdue"
    assert due(result) == datetime.fromisoformat(at(days=4)) + timedelta(hours=24)
    assert result["ruling"]["for"] == "buyer"


def test_rule_for_buyer_on_wrong_item_charges_freight_to_the_merchant(engine: Engine) -> None:
    case = escalated_after(engine, "wrong_item")
    result = engine.handle(RuleCase(case_id=case["case_id"], in_favour_of="buyer", at=at(days=4)))
    assert result["status"] == "awaiting_buyer_shipment" and result["freight_on_merchant"] is True


def test_rule_for_buyer_on_unjustified_rejection_platform_pays_first(engine: Engine) -> None:
    case = escalated_after(engine, "unjustified_rejection")
    result = engine.handle(RuleCase(case_id=case["case_id"], in_favour_of="buyer", at=at(days=4)))
    assert result["status"] == "refunded" and result["refund_paid_by"] == "platform"
    assert result["refunded_amount"] == "39.90"


def test_rule_on_disputed_receipt(engine: Engine) -> None:
    case = shipped_back(engine)
    engine.handle(ReceiveGoods(case_id=case["case_id"], condition="damaged", at=at(days=6)))
    result = engine.handle(
        RuleCase(case_id=case["case_id"], in_favour_of="merchant", at=at(days=7))
    )
    assert result["status"] == "closed" and result["refunded_amount"] == "0.00"


def test_rule_on_disputed_receipt_for_buyer(engine: Engine) -> None:
    case = shipped_back(engine)
    engine.handle(ReceiveGoods(case_id=case["case_id"], condition="damaged", at=at(days=6)))
    result = engine.handle(RuleCase(case_id=case["case_id"], in_favour_of="buyer", at=at(days=7)))
    assert result["status"] == "refunded" and result["refund_paid_by"] == "platform"


def test_rule_for_merchant_goes_back_to_rejected(engine: Engine) -> None:
    case = escalated_after(engine, "unjustified_rejection")
    result = engine.handle(
        RuleCase(case_id=case["case_id"], in_favour_of="merchant", at=at(days=4))
    )
    assert result["status"] == "rejected"


@pytest.mark.parametrize("end", ["completed"])
def test_rate_once_after_the_end_and_nothing_else(engine: Engine, end: str) -> None:
    if end == "refunded":
        case = engine.handle(RefundCase(case_id=opened(engine)["case_id"], at=at(days=4)))
    elif end == "completed":
        case = engine.handle(
            Reship(
                case_id=approved(engine, "reship")["case_id"],
                carrier="SF",
                waybill="1",
                at=at(days=4),
            )
        )
    else:
        case = engine.handle(WithdrawCase(case_id=opened(engine)["case_id"], at=at(days=4)))
    assert case["status"] == end
    cid = case["case_id"]
    rated = engine.handle(RateCase(case_id=cid, score=4, comment="fine", at=at(days=5)))
    assert rated["status"] == end and rated["rating"] == {"score": 4, "comment": "fine"}
    assert rated["version"] == case["version"] + 1
    with pytest.raises(NotAllowed, match="rated once"):
        engine.handle(RateCase(case_id=cid, score=5, at=at(days=6)))
    refusals: list[Callable[[], object]] = [
        lambda: engine.handle(ApproveCase(case_id=cid, at=at(days=6))),
        lambda: engine.handle(
            RejectCase(case_id=cid, reason="r", communication="c", at=at(days=6))
        ),
        lambda: engine.handle(RefundCase(case_id=cid, at=at(days=6))),
        lambda: engine.handle(ShipBack(case_id=cid, carrier="SF", waybill="2", at=at(days=6))),
        lambda: engine.handle(ReceiveGoods(case_id=cid, at=at(days=6))),
        lambda: engine.handle(
            ShipReplacement(case_id=cid, carrier="SF", waybill="3", at=at(days=6))
        ),
        lambda: engine.handle(Reship(case_id=cid, carrier="SF", waybill="4", at=at(days=6))),
        lambda: engine.handle(WithdrawCase(case_id=cid, at=at(days=6))),
        lambda: engine.handle(EscalateCase(case_id=cid, claim="other", at=at(days=6))),
        lambda: engine.handle(RuleCase(case_id=cid, in_favour_of="buyer", at=at(days=6))),
    ]
    for refuse in refusals:
        with pytest.raises(NotAllowed, match=f"is {end}: .* is not allowed"):
            refuse()
    assert engine.get_case(cid)["version"] == rated["version"]
