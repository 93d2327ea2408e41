"""A parcel turned back before the buyer has it: the merchant intercepts it (拦截) instead of
arguing a refund only asked for on the way, or the buyer refuses it at the door (拒收). Either
way the case is a return on its way back: refunded when the merchant confirms it arrived, or by
the clock when the receipt window runs out; the order's books and the audit agree."""

from __future__ import annotations

from typing import Any

import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    DeliverOrder,
    InterceptParcel,
    OpenCase,
    PlaceOrder,
    ReceiveGoods,
    RefuseDelivery,
    ShipOrder,
    Tick,
)
from aftersales.engine.domain.errors import NotAllowed
from aftersales.engine.integrity.audit_bundle import audit_case
from tests.conftest import at


def shipped(engine: Engine, order_id: str = "P-1") -> None:
    engine.handle(
        PlaceOrder(
            order_id=order_id,
            merchant="shop-1",
            buyer="buyer-1",
            lines=["MUG:1:39.90:home", "TOY:1:80.00:toys"],
            at=at(),
        )
    )
    engine.handle(ShipOrder(order_id=order_id, carrier="SF", waybill="SF100", at=at(days=1)))


def refund_only(engine: Engine, order_id: str = "P-1", line: str = "MUG") -> str:
    case_id: str = engine.handle(
        OpenCase(
            order_id=order_id,
            type="refund_only",
            reason="buyer.changed_mind",
            amount="39.90" if line == "MUG" else "80.00",
            lines=[line],
            at=at(days=1, hours=2),
        )
    )["case_id"]
    return case_id


def kinds(engine: Engine, case_id: str) -> list[str]:
    return [e["type"] for e in audit_case(engine.store, case_id).to_json()["events"]]


def test_the_merchant_intercepts_and_refunds_on_the_parcels_return(engine: Engine) -> None:
    shipped(engine)
    case_id = refund_only(engine)
    assert "intercept" in engine.stored_case(case_id)["allowed_actions"]
    turned = engine.handle(InterceptParcel(case_id=case_id, at=at(days=1, hours=3)))
    assert (turned["status"], turned["type"]) == ("awaiting_merchant_receipt", "return_refund")
    assert turned["due_action"] == "auto_refund"
    # The parcel (the order's own shipment) is what comes back.
    assert turned["return_shipment"] == {"carrier": "SF", "waybill": "SF100"}
    refunded = engine.handle(ReceiveGoods(case_id=case_id, at=at(days=3)))
    assert (refunded["status"], refunded["refunded_amount"]) == ("refunded", "39.90")
    assert kinds(engine, case_id) == [
        "CaseOpened",
        "ParcelIntercepted",
        "GoodsReceived",
        "CaseRefunded",
    ]
    assert audit_case(engine.store, case_id).verified
    lines = {line["sku"]: line for line in engine.stored_order("P-1")["lines"]}
    assert (lines["MUG"]["refunded"], lines["MUG"]["open_case_id"]) == ("39.90", None)


def test_an_intercepted_parcel_the_merchant_never_confirms_is_refunded_by_the_clock(
    engine: Engine,
) -> None:
    shipped(engine)
    case_id = refund_only(engine)
    turned = engine.handle(InterceptParcel(case_id=case_id, at=at(days=1, hours=3)))
    engine.handle(Tick(now=turned["due_at"]))
    case = engine.stored_case(case_id)
    assert (case["status"], case["refunded_amount"]) == ("refunded", "39.90")
    assert kinds(engine, case_id)[-2:] == ["CaseAutoRefunded", "CaseRefunded"]


def test_intercept_only_a_refund_only_on_a_parcel_still_travelling(engine: Engine) -> None:
    shipped(engine)
    case_id = refund_only(engine)
    engine.handle(DeliverOrder(order_id="P-1", at=at(days=1, hours=5)))
    before = engine.stored_case(case_id)
    with pytest.raises(NotAllowed, match="was delivered"):
        engine.handle(InterceptParcel(case_id=case_id, at=at(days=1, hours=6)))
    assert engine.stored_case(case_id) == before
    # Not a return: nothing is travelling back to intercept.
    engine.handle(
        PlaceOrder(
            order_id="P-2", merchant="shop-1", buyer="buyer-1", lines=["MUG:1:9.90"], at=at()
        )
    )
    engine.handle(ShipOrder(order_id="P-2", carrier="SF", waybill="S2", at=at(days=1)))
    engine.handle(DeliverOrder(order_id="P-2", at=at(days=2)))
    ret = engine.handle(
        OpenCase(order_id="P-2", type="return_refund", reason="quality.colour", amount="9.90",
                 at=at(days=3))
    )  # fmt: skip
    assert "intercept" not in ret["allowed_actions"]
    with pytest.raises(NotAllowed):
        engine.handle(InterceptParcel(case_id=ret["case_id"], at=at(days=3, hours=1)))


def test_a_refused_parcel_answers_the_open_request_and_returns_the_rest(engine: Engine) -> None:
    shipped(engine)
    asked = refund_only(engine, line="MUG")
    result: Any = engine.handle(RefuseDelivery(order_id="P-1", at=at(days=2)))
    order = engine.stored_order("P-1")
    holders = {line["sku"]: line["open_case_id"] for line in order["lines"]}
    assert holders["MUG"] == asked and holders["TOY"] not in (None, asked)
    assert result["order_id"] == "P-1"
    for case_id, amount in ((asked, "39.90"), (holders["TOY"], "80.00")):
        case = engine.stored_case(case_id)
        assert (case["status"], case["type"], case["amount"]) == (
            "awaiting_merchant_receipt",
            "return_refund",
            amount,
        )
        assert case["return_shipment"] == {"carrier": "SF", "waybill": "SF100"}
        assert audit_case(engine.store, case_id).verified
    toy = engine.stored_case(holders["TOY"])
    assert (toy["buyer_id"], toy["reason"]) == ("buyer-1", "logistics.refused_delivery")
    # Refused again (a retry with another id): nothing is left to turn back.
    with pytest.raises(NotAllowed, match="not a refund only awaiting the merchant"):
        engine.handle(RefuseDelivery(order_id="P-1", at=at(days=2, hours=1)))


def test_a_parcel_not_shipped_or_already_delivered_cannot_be_refused(engine: Engine) -> None:
    engine.handle(
        PlaceOrder(
            order_id="P-3", merchant="shop-1", buyer="buyer-1", lines=["MUG:1:9.90"], at=at()
        )
    )
    with pytest.raises(NotAllowed, match="has not shipped"):
        engine.handle(RefuseDelivery(order_id="P-3", at=at(days=1)))
    engine.handle(ShipOrder(order_id="P-3", carrier="SF", waybill="S3", at=at(days=1)))
    engine.handle(DeliverOrder(order_id="P-3", at=at(days=2)))
    head = engine.store.recorder.max_notification_id()
    with pytest.raises(NotAllowed, match="was delivered"):
        engine.handle(RefuseDelivery(order_id="P-3", at=at(days=3)))
    assert engine.store.recorder.max_notification_id() == head
