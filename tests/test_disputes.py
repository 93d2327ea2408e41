"""Platform intervention, rulings and the money each path moves (issue: disputes)."""

from __future__ import annotations

from decimal import Decimal
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
    RecoverGoods,
    RefundCase,
    RejectCase,
    Reship,
    RuleCase,
    ShipBack,
)
from aftersales.engine.domain.errors import NotAllowed
from tests.conftest import at, place_delivered

LINES = ("EARBUDS:1:199.00:electronics", "CASE:1:0.00:gift:15.00", "CABLE:1:9.90:accessory:12.00")


@pytest.fixture
def e(engine: Engine) -> Engine:
    place_delivered(engine, lines=LINES)
    return engine


def rejected_and_escalated(e: Engine, claim: str, **open_kw: Any) -> str:
    args: dict[str, Any] = {
        "type": "refund_only",
        "reason": "quality.broken",
        "amount": "199.00",
        "lines": ["EARBUDS"],
        "at": at(days=3),
    }
    args.update(open_kw)
    cid = e.handle(OpenCase(order_id="KS-1", **args))["case_id"]
    e.handle(RejectCase(case_id=cid, reason="used", communication="chat:1", at=at(days=3, hours=2)))
    e.handle(EscalateCase(case_id=cid, claim=claim, evidence=["photo:box"], at=at(days=3, hours=3)))
    return str(cid)


def totals(case: dict[str, Any]) -> dict[tuple[str, str, str], Decimal]:
    sums: dict[tuple[str, str, str], Decimal] = {}
    for entry in case["ledger"]:
        key = (entry["type"], entry["payer"], entry["payee"])
        sums[key] = sums.get(key, Decimal("0")) + Decimal(entry["amount"])
    return sums


def test_missing_items_upheld_then_reshipped(e: Engine) -> None:
    cid = rejected_and_escalated(
        e,
        "missing_items",
        type="reship",
        reason="missing_items.gift",
        amount="15.00",
        lines=["CASE"],
    )
    ruled = e.handle(
        RuleCase(
            case_id=cid, in_favour_of="buyer", note="photos agree", by="agent-7", at=at(days=4)
        )
    )
    assert ruled["status"] == "awaiting_reshipment" and ruled["due_action"] == "reship_overdue"
    assert ruled["ruling"] == {
        "for": "buyer",
        "claim": "missing_items",
        "note": "photos agree",
        "by": "agent-7",
        "at": at(days=4),
    }
    done = e.handle(Reship(case_id=cid, carrier="SF", waybill="R1", at=at(days=4, hours=20)))
    assert done["status"] == "completed" and done["ledger"] == []


def test_missing_items_reship_overdue_at_24_hours(e: Engine) -> None:
    cid = rejected_and_escalated(
        e,
        "missing_items",
        type="reship",
        reason="missing_items.gift",
        amount="15.00",
        lines=["CASE"],
    )
    due = e.handle(RuleCase(case_id=cid, in_favour_of="buyer", at=at(days=4)))["due_at"]
    assert due == at(days=5)
    with pytest.raises(NotAllowed, match="not yet"):
        e.handle(FireDeadline(case_id=cid, deadline="reship_overdue", at=at(days=5, seconds=-1)))
    case = e.handle(FireDeadline(case_id=cid, deadline="reship_overdue", at=due))
    assert case["status"] == "refunded" and case["late_shipment"] is True
    # The platform pays the gift at its list price, and the merchant owes the penalty.
    assert case["refund_paid_by"] == "platform" and case["refunded_amount"] == "15.00"
    assert totals(case) == {
        ("late_shipment_penalty", "merchant", "buyer"): Decimal("5.00"),
        ("refund", "platform", "buyer"): Decimal("15.00"),
    }
    assert case["ledger"][-1]["owed_by"] == "merchant"


def test_missing_items_merchant_cannot_reship(e: Engine) -> None:
    cid = rejected_and_escalated(
        e,
        "missing_items",
        type="reship",
        reason="missing_items.cable",
        amount="12.00",
        lines=["CABLE"],
    )
    e.handle(RuleCase(case_id=cid, in_favour_of="buyer", at=at(days=4)))
    case = e.handle(Reship(case_id=cid, cannot=True, at=at(days=4, hours=1)))
    assert case["status"] == "refunded" and case["late_shipment"] is False
    assert totals(case) == {("refund", "platform", "buyer"): Decimal("12.00")}


def test_list_price_caps_missing_items_and_paid_price_caps_the_rest(e: Engine) -> None:
    with pytest.raises(NotAllowed, match=r"at most 15\.00"):
        e.handle(
            OpenCase(
                order_id="KS-1",
                type="reship",
                reason="missing_items.gift",
                amount="15.01",
                lines=["CASE"],
                at=at(days=3),
            )
        )
    with pytest.raises(NotAllowed, match=r"at most 0\.00"):
        e.handle(
            OpenCase(
                order_id="KS-1",
                type="refund_only",
                reason="quality.cracked",
                amount="1.00",
                lines=["CASE"],
                at=at(days=3),
            )
        )


def test_wrong_item_upheld_charges_both_legs_of_freight(e: Engine) -> None:
    cid = rejected_and_escalated(
        e, "wrong_item", type="return_refund", reason="wrong_item.other_variant"
    )
    case = e.handle(RuleCase(case_id=cid, in_favour_of="buyer", at=at(days=4)))
    assert case["status"] == "awaiting_buyer_shipment" and case["freight_on_merchant"]
    e.handle(ShipBack(case_id=cid, carrier="SF", waybill="B1", at=at(days=5)))
    case = e.handle(ReceiveGoods(case_id=cid, at=at(days=6)))
    assert case["status"] == "refunded" and case["refund_paid_by"] == "merchant"
    assert totals(case) == {
        ("freight", "merchant", "buyer"): Decimal("20.00"),
        ("refund", "merchant", "buyer"): Decimal("199.00"),
    }


def test_unjustified_rejection_platform_pays_first_merchant_recovers_goods(e: Engine) -> None:
    cid = rejected_and_escalated(e, "unjustified_rejection")
    case = e.handle(RuleCase(case_id=cid, in_favour_of="buyer", at=at(days=4)))
    assert case["status"] == "refunded" and case["refund_paid_by"] == "platform"
    assert "recover-goods" in case["allowed_actions"]
    assert totals(case) == {("refund", "platform", "buyer"): Decimal("199.00")}
    case = e.handle(
        RecoverGoods(case_id=cid, note="courier picked up", by="staff-2", at=at(days=6))
    )
    assert case["goods_recovered"] is True and "recover-goods" not in case["allowed_actions"]
    with pytest.raises(NotAllowed, match="already recovered"):
        e.handle(RecoverGoods(case_id=cid, at=at(days=7)))


def test_recover_goods_only_after_a_platform_refund(e: Engine) -> None:
    cid = e.handle(
        OpenCase(
            order_id="KS-1",
            type="refund_only",
            reason="quality.x",
            amount="9.90",
            lines=["CABLE"],
            at=at(days=3),
        )
    )["case_id"]
    e.handle(RefundCase(case_id=cid, at=at(days=3, hours=1)))
    with pytest.raises(NotAllowed, match="only after the platform refunded"):
        e.handle(RecoverGoods(case_id=cid, at=at(days=4)))


def test_ruling_for_the_merchant_and_a_new_case(e: Engine) -> None:
    cid = rejected_and_escalated(e, "unjustified_rejection")
    case = e.handle(
        RuleCase(case_id=cid, in_favour_of="merchant", note="item was used", at=at(days=4))
    )
    assert case["status"] == "rejected" and case["refunded_amount"] == "0.00"
    with pytest.raises(NotAllowed, match="is rejected: rule is not allowed"):
        e.handle(RuleCase(case_id=cid, in_favour_of="buyer", at=at(days=5)))  # ruling twice
    again = e.handle(
        OpenCase(
            order_id="KS-1",
            type="refund_only",
            reason="quality.broken",
            amount="50.00",
            lines=["EARBUDS"],
            at=at(days=5),
        )
    )
    assert again["follows"] == cid


def test_disputed_receipt_ruled_for_the_merchant_closes_without_refund(e: Engine) -> None:
    cid = e.handle(
        OpenCase(
            order_id="KS-1",
            type="return_refund",
            reason="buyer.changed_mind",
            amount="199.00",
            lines=["EARBUDS"],
            at=at(days=3),
        )
    )["case_id"]
    e.handle(ApproveCase(case_id=cid, at=at(days=3, hours=1)))
    e.handle(ShipBack(case_id=cid, carrier="SF", waybill="B2", at=at(days=4)))
    case = e.handle(ReceiveGoods(case_id=cid, condition="not_as_returned", at=at(days=5)))
    assert case["escalation"]["claim"] == "disputed_receipt"
    case = e.handle(RuleCase(case_id=cid, in_favour_of="merchant", at=at(days=6)))
    assert case["status"] == "closed" and case["ledger"] == []


def test_refusals(e: Engine) -> None:
    cid = e.handle(
        OpenCase(
            order_id="KS-1",
            type="refund_only",
            reason="quality.x",
            amount="9.90",
            lines=["CABLE"],
            at=at(days=3),
        )
    )["case_id"]
    with pytest.raises(NotAllowed, match="is awaiting_merchant: rate is not allowed"):
        e.handle(RateCase(case_id=cid, score=5, at=at(days=3, hours=1)))
    e.handle(ApproveCase(case_id=cid, at=at(days=3, hours=1)))
    with pytest.raises(NotAllowed, match="is refunded: escalate is not allowed"):
        e.handle(EscalateCase(case_id=cid, claim="other", at=at(days=4)))
    e.handle(RateCase(case_id=cid, score=2, at=at(days=4)))
    with pytest.raises(NotAllowed, match="rated once"):
        e.handle(RateCase(case_id=cid, score=3, at=at(days=5)))
