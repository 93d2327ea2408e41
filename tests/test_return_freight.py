"""Who pays the postage back: the merchant for a return that is its fault (the buyer's claim, up to
the policy's cap), the insurer for a no-reason return of an insured order (its fixed amount), the
buyer otherwise; each amount in the case's ledger and the ledger report with payer and payee."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    ApproveCase,
    DeliverOrder,
    EscalateCase,
    OpenCase,
    PlaceOrder,
    RejectCase,
    RuleCase,
    ShipBack,
    ShipOrder,
)
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.integrity.audit_bundle import audit_case
from tests.conftest import at


def returned(
    engine: Engine,
    order_id: str,
    reason: str,
    *,
    insured: bool = False,
    freight: str | None = None,
    merchant: str = "shop-1",
) -> dict[str, Any]:
    """An order delivered at day 2, a return opened and approved at day 3, shipped back."""
    engine.handle(
        PlaceOrder(
            order_id=order_id,
            merchant=merchant,
            buyer="buyer-1",
            lines=["MUG:1:39.90:home"],
            freight_insurance=insured,
            at=at(),
        )
    )
    engine.handle(ShipOrder(order_id=order_id, carrier="SF", waybill="S1", at=at(days=1)))
    engine.handle(DeliverOrder(order_id=order_id, at=at(days=2)))
    case_id = engine.handle(
        OpenCase(
            order_id=order_id, type="return_refund", reason=reason, amount="39.90", at=at(days=3)
        )
    )["case_id"]
    engine.handle(ApproveCase(case_id=case_id, at=at(days=3, hours=1)))
    shipped: dict[str, Any] = engine.handle(
        ShipBack(case_id=case_id, carrier="YTO", waybill="R1", freight=freight, at=at(days=4))
    )
    return shipped


def freight_entries(case: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(e["amount"], e["payer"], e["payee"]) for e in case["ledger"] if e["type"] == "freight"]


def test_the_merchant_pays_the_postage_of_its_fault_up_to_the_cap(engine: Engine) -> None:
    assert freight_entries(returned(engine, "F-1", "quality.colour", freight="9.50")) == [
        ("9.50", "merchant", "buyer")
    ]
    # Claimed more than the cap: the cap.
    assert freight_entries(returned(engine, "F-2", "wrong_item.size", freight="30.00")) == [
        ("12.00", "merchant", "buyer")
    ]
    # Nothing claimed: nothing owed.
    assert freight_entries(returned(engine, "F-3", "quality.colour")) == []


def test_a_no_reason_return_the_insurer_pays_if_insured_else_the_buyer_bears(
    engine: Engine,
) -> None:
    insured = returned(engine, "F-4", "buyer.changed_mind", insured=True, freight="15.00")
    assert freight_entries(insured) == [("8.00", "insurer", "buyer")]
    assert engine.get_order("F-4")["freight_insurance"] is True
    bare = returned(engine, "F-5", "buyer.changed_mind", freight="15.00")
    assert freight_entries(bare) == []
    for case in (insured, bare):
        assert audit_case(engine.store, case["case_id"]).verified


def test_a_wrong_item_upheld_is_not_paid_twice(engine: Engine) -> None:
    """The platform upholding a wrong item charges the merchant both legs at the ruling; the
    buyer's claim at ship-back adds nothing."""
    engine.handle(
        PlaceOrder(
            order_id="F-6", merchant="shop-1", buyer="buyer-1", lines=["MUG:1:39.90"], at=at()
        )
    )
    engine.handle(ShipOrder(order_id="F-6", carrier="SF", waybill="S1", at=at(days=1)))
    engine.handle(DeliverOrder(order_id="F-6", at=at(days=2)))
    case_id = engine.handle(
        OpenCase(
            order_id="F-6",
            type="refund_only",
            reason="wrong_item.size",
            amount="39.90",
            at=at(days=3),
        )
    )["case_id"]
    engine.handle(
        RejectCase(case_id=case_id, reason="fits", communication="chat:1", at=at(days=3, hours=2))
    )
    engine.handle(
        EscalateCase(case_id=case_id, claim="wrong_item", evidence=["photo:1"], at=at(days=4))
    )
    ruled = engine.handle(RuleCase(case_id=case_id, in_favour_of="buyer", at=at(days=5)))
    assert ruled["status"] == "awaiting_buyer_shipment"
    before = freight_entries(ruled)
    assert before and all(p == "merchant" for _, p, _ in before)
    shipped = engine.handle(
        ShipBack(case_id=case_id, carrier="YTO", waybill="R1", freight="9.00", at=at(days=6))
    )
    assert freight_entries(shipped) == before


def test_bad_freight_is_refused_and_changes_nothing(engine: Engine) -> None:
    engine.handle(
        PlaceOrder(
            order_id="F-7", merchant="shop-1", buyer="buyer-1", lines=["MUG:1:39.90"], at=at()
        )
    )
    engine.handle(DeliverOrder(order_id="F-7", anyway=True, at=at(days=2)))
    case_id = engine.handle(
        OpenCase(
            order_id="F-7",
            type="return_refund",
            reason="quality.colour",
            amount="39.90",
            at=at(days=3),
        )
    )["case_id"]
    approved = engine.handle(ApproveCase(case_id=case_id, at=at(days=3, hours=1)))
    for bad in ("0.00", "-1.00", "1.234", "abc"):
        try:
            engine.handle(
                ShipBack(case_id=case_id, carrier="YTO", waybill="R1", freight=bad, at=at(days=4))
            )
        except BadInput:
            pass
        else:
            raise AssertionError(f"freight {bad} was taken")
    assert engine.stored_case(case_id) == approved


def test_the_ledger_report_counts_what_the_merchant_bears(store_url: str) -> None:
    with Engine(store_url) as engine:
        returned(engine, "F-1", "quality.colour", freight="9.50")
        returned(engine, "F-2", "buyer.changed_mind", insured=True)
    runner = CliRunner()
    ran = runner.invoke(cli, ["--store", store_url, "project", "run"])
    assert ran.exit_code == 0, ran.output
    result = runner.invoke(cli, ["--store", store_url, "ledger", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["rows"]
    # The insurer's 8.00 is not the merchant's.
    assert (row["merchant_id"], row["freight"]) == ("shop-1", "9.50")
