"""Instant refund (极速退款): a return within the policy's limit, by a buyer in good standing, is
refunded as the goods are shipped back; the platform advances it and the merchant owes it. The
merchant still confirms the goods' arrival (or the clock does); goods found not in order go to
the platform, whose ruling for the merchant puts the advance on the buyer (and counts against the
buyer's standing), and whose lapse makes it the platform's own. Never a second refund, on the
case or on its lines."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    ApproveCase,
    ClearBuyer,
    EscalateCase,
    FlagBuyer,
    OfferChange,
    OpenCase,
    ReceiveGoods,
    RefundCase,
    RuleCase,
    ShipBack,
    ShowBuyer,
    ShowOrder,
    Tick,
    WithdrawCase,
)
from aftersales.engine.domain.errors import NotAllowed
from aftersales.engine.domain.invariants import InvariantBroken
from aftersales.engine.domain.policy import InstantRefund, Policy
from aftersales.engine.integrity.audit_bundle import audit_case
from aftersales.projections.ledger import ledger
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector
from tests.conftest import at, place_delivered

INSTANT = Policy(name="instant", instant_refund=InstantRefund(up_to=Decimal("100.00")))


@pytest.fixture
def shop(store_url: str) -> Any:
    with Engine(store_url, policy=INSTANT) as engine:
        yield engine


def shipped_back(
    engine: Engine,
    order_id: str,
    *,
    case_type: str = "return_refund",
    reason: str = "quality.colour",
    buyer: str = "buyer-1",
    price: str = "39.90",
) -> dict[str, Any]:
    """An order delivered on day 2, a case opened on day 3 and approved, its goods shipped
    back on day 4."""
    place_delivered(engine, order_id, lines=(f"MUG:1:{price}:home",), buyer=buyer)
    case_id = engine.handle(
        OpenCase(order_id=order_id, type=case_type, reason=reason, amount=price, at=at(days=3))
    )["case_id"]
    engine.handle(ApproveCase(case_id=case_id, return_address="WH: 1 Road", at=at(days=3.1)))
    shipped: dict[str, Any] = engine.handle(
        ShipBack(case_id=case_id, carrier="SF", waybill=f"R-{order_id}", at=at(days=4))
    )
    return shipped


def kinds(engine: Engine, case_id: str) -> list[str]:
    stored = engine.store.recorder.select_events(UUID(case_id))
    return [e.topic.rpartition(":")[2] for e in stored]


def ledger_rows(case: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    return [(e["type"], e["amount"], e["payer"], e["payee"], e["owed_by"]) for e in case["ledger"]]


def test_a_return_is_refunded_as_its_goods_go_back_and_never_again(shop: Engine) -> None:
    case = shipped_back(shop, "IR-1")
    case_id = case["case_id"]
    assert case["status"] == "awaiting_merchant_receipt"
    assert (case["refunded_amount"], case["refund_paid_by"]) == ("39.90", "platform")
    assert ledger_rows(case) == [("refund", "39.90", "platform", "buyer", "merchant")]
    assert kinds(shop, case_id)[-2:] == ["GoodsShippedBack", "CaseRefunded"]
    # Refunded: nobody refunds it again, offers less, walks away with it or takes it further.
    assert set(case["allowed_actions"]) == {"receive", "message", "extend"}
    for action in (
        RefundCase(case_id=case_id, at=at(days=4.5)),
        OfferChange(case_id=case_id, type="refund_only", amount="10.00", at=at(days=4.5)),
    ):
        with pytest.raises(NotAllowed, match="refunded when the goods were shipped back"):
            shop.handle(action)
    received = shop.handle(ReceiveGoods(case_id=case_id, at=at(days=5)))
    assert received["status"] == "refunded" and received["refunded_amount"] == "39.90"
    assert kinds(shop, case_id)[-1] == "GoodsReceived"  # no second CaseRefunded
    # The order's books have the advance: nothing is left to refund on the line.
    order = shop.handle(ShowOrder(order_id="IR-1", at=at(days=5)))
    assert order["lines"][0]["refunded"] == "39.90"
    with pytest.raises(NotAllowed, match=r"at most 0\.00"):
        shop.handle(
            OpenCase(
                order_id="IR-1", type="refund_only", reason="quality.colour", amount="1.00",
                at=at(days=6),
            )
        )  # fmt: skip
    assert audit_case(shop.store, case_id).verified
    # The ledger: the platform advanced it, the merchant owes it back.
    Projector(shop.store).catch_up(VIEWS)
    (totals,) = ledger(shop.store, "shop-1", None, None)
    assert (totals["advanced_by_platform"], totals["owed_to_platform"]) == ("39.90", "39.90")


def test_the_clock_confirms_an_instant_refund_without_refunding_again(shop: Engine) -> None:
    case_id = shipped_back(shop, "IR-2")["case_id"]
    shop.handle(Tick(now=at(days=15)))
    shown = shop.get_case(case_id, datetime.fromisoformat(at(days=15)))
    assert (shown["status"], shown["refunded_amount"]) == ("refunded", "39.90")
    assert kinds(shop, case_id)[-1] == "CaseAutoRefunded"
    assert [e["type"] for e in shown["ledger"]] == ["refund"]
    assert audit_case(shop.store, case_id).verified


def test_goods_not_in_order_put_the_advance_on_the_buyer_and_cost_their_standing(
    shop: Engine,
) -> None:
    case_id = shipped_back(shop, "IR-3")["case_id"]
    escalated = shop.handle(ReceiveGoods(case_id=case_id, condition="damaged", at=at(days=5)))
    assert escalated["status"] == "escalated"
    with pytest.raises(NotAllowed, match="withdraw is not allowed"):
        shop.handle(WithdrawCase(case_id=case_id, at=at(days=5.5)))
    ruled = shop.handle(
        RuleCase(case_id=case_id, in_favour_of="merchant", by="agent-1", at=at(days=6))
    )
    assert ruled["status"] == "closed"
    assert ledger_rows(ruled) == [
        ("refund", "39.90", "platform", "buyer", "merchant"),
        ("advance_reassigned", "39.90", "buyer", "merchant", "buyer"),
    ]
    assert audit_case(shop.store, case_id).verified
    Projector(shop.store).catch_up(VIEWS)
    (totals,) = ledger(shop.store, "shop-1", None, None)
    assert (totals["advanced_by_platform"], totals["owed_to_platform"]) == ("39.90", "0.00")
    # The dispute the buyer lost is on their standing: their next return waits for receipt.
    standing = shop.handle(ShowBuyer(buyer_id="buyer-1", at=at(days=7)))
    assert [d["case_id"] for d in standing["disputes_lost"]] == [case_id]
    assert standing["instant_refund"]["eligible"] is False
    later = shipped_back(shop, "IR-4")
    assert (later["status"], later["refunded_amount"]) == ("awaiting_merchant_receipt", "0.00")
    # A year on, the dispute no longer counts.
    assert shop.handle(ShowBuyer(buyer_id="buyer-1", at=at(days=372)))["instant_refund"]["eligible"]


def test_the_platform_ruling_for_the_buyer_or_letting_it_lapse_pays_nothing_more(
    shop: Engine,
) -> None:
    upheld = shipped_back(shop, "IR-5")["case_id"]
    shop.handle(ReceiveGoods(case_id=upheld, condition="not_as_returned", at=at(days=5)))
    ruled = shop.handle(RuleCase(case_id=upheld, in_favour_of="buyer", by="agent-1", at=at(days=6)))
    assert (ruled["status"], ruled["refunded_amount"]) == ("refunded", "39.90")
    assert ledger_rows(ruled) == [("refund", "39.90", "platform", "buyer", "merchant")]
    lapsed = shipped_back(shop, "IR-6", buyer="buyer-2")["case_id"]
    shop.handle(ReceiveGoods(case_id=lapsed, condition="damaged", at=at(days=5)))
    shop.handle(Tick(now=at(days=20)))
    shown = shop.get_case(lapsed, datetime.fromisoformat(at(days=20)))
    assert (shown["status"], shown["refunded_amount"]) == ("refunded", "39.90")
    assert ledger_rows(shown)[-1] == ("advance_reassigned", "39.90", "platform", "merchant",
                                      "platform")  # fmt: skip
    for case_id in (upheld, lapsed):
        assert audit_case(shop.store, case_id).verified
    # The platform's lapse is no dispute the buyer lost.
    assert shop.handle(ShowBuyer(buyer_id="buyer-2", at=at(days=21)))["disputes_lost"] == []


def test_who_waits_for_the_goods_to_arrive(shop: Engine, store_url: str) -> None:
    # Above the limit, an exchange, a flagged buyer: refunded on receipt, as without the policy.
    assert shipped_back(shop, "IR-7", price="100.01")["refunded_amount"] == "0.00"
    exchange = shipped_back(shop, "IR-8", case_type="exchange")
    assert (exchange["refunded_amount"], exchange["status"]) == (
        "0.00",
        "awaiting_merchant_receipt",
    )
    shop.handle(FlagBuyer(buyer_id="buyer-3", reason="empty parcels", by="agent-1", at=at()))
    assert shipped_back(shop, "IR-9", buyer="buyer-3")["refunded_amount"] == "0.00"
    with pytest.raises(NotAllowed, match="flagged already"):
        shop.handle(FlagBuyer(buyer_id="buyer-3", reason="again", at=at(days=1)))
    shop.handle(ClearBuyer(buyer_id="buyer-3", note="checked", by="agent-1", at=at(days=1)))
    assert shipped_back(shop, "IR-10", buyer="buyer-3")["refunded_amount"] == "39.90"
    # A policy without instant refunds: none.
    with Engine(store_url) as plain:
        assert shipped_back(plain, "IR-11", buyer="buyer-4")["refunded_amount"] == "0.00"
        assert plain.handle(ShowBuyer(buyer_id="buyer-4"))["instant_refund"]["eligible"] is False


def test_the_advance_is_put_on_another_only_once_and_only_as_ruled(shop: Engine) -> None:
    """The invariant behind AdvanceReassigned: never more than was advanced, never twice, and
    on the buyer only after a ruling, on the platform only after its ruling lapsed."""
    case_id = shipped_back(shop, "IR-12")["case_id"]
    shop.handle(ReceiveGoods(case_id=case_id, condition="damaged", at=at(days=5)))
    case = shop.load_case(case_id)
    from aftersales.engine.domain.case_events import AdvanceReassigned
    from aftersales.engine.domain.values import Party

    for owed_by, amount in (
        (Party.BUYER, "39.90"),
        (Party.BUYER, "10.00"),
        (Party.MERCHANT, "39.90"),
    ):
        with pytest.raises(InvariantBroken, match="money_has_parties"):
            case._record(
                AdvanceReassigned,
                shop._act(EscalateCase(case_id=case_id, claim="other"), "agent", "x"),
                status=case.status, due=case.due, amount=Decimal(amount), owed_by=owed_by,
            )  # fmt: skip


def test_buyers_standing_from_the_command_line_and_over_http(store_url: str, tmp_path: Any) -> None:
    from fastapi.testclient import TestClient

    from aftersales.commands.http.app import create_app
    from tests.people import People
    from tests.test_desk import sign_in

    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Any:
        result = runner.invoke(cli, ["--store", store_url, *args, "--json"])
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        return json.loads(result.stdout)

    flagged = run("buyer", "flag", "buyer-7", "--reason", "empty parcels", "--by", "agent-1")
    assert flagged["flagged"] is True and flagged["flag"]["reason"] == "empty parcels"
    assert run("buyer", "clear", "buyer-8", "--note", "x", code=3)["error"]["code"] == "not_allowed"
    shown = run("buyer", "show", "buyer-7")
    assert shown["instant_refund"] == {
        "eligible": False,
        "why_not": "the policy has no instant refund",
        "up_to": None,
    }
    with Engine(store_url, policy=INSTANT) as engine:
        people = People(engine)
        with TestClient(create_app(store_url, INSTANT, failure_limit=10_000)) as client:

            def post(who: str, buyer: str, word: str, sent: dict[str, Any]) -> Any:
                return client.post(
                    f"/v1/buyers/{buyer}/{word}", json=sent, headers=people.auth(who)
                )

            made = post("agent", "buyer-1", "flag", {"reason": "empty parcels"})
            assert made.status_code == 200, made.text
            assert made.json()["flag"]["by"] == "agent"
            for who, code in (("staff-1", 403), ("buyer-1", 403), ("reporter", 403)):
                assert post(who, "buyer-1", "clear", {"note": "x"}).status_code == code, who
            assert post("agent", "buyer-1", "clear", {}).status_code == 422
            read = client.get("/v1/buyers/buyer-1", headers=people.auth("agent"))
            assert read.status_code == 200
            assert (
                read.json()["instant_refund"]["why_not"]
                == "buyer buyer-1 is flagged (empty parcels)"
            )
            assert (
                client.get("/v1/buyers/buyer-1", headers=people.auth("staff-1")).status_code == 403
            )
            # The shop's staff see on the desk that the platform refunded a return at once.
            own = people.open("KS-1", type="return_refund", lines=["CASE-BLUE"])
            engine.handle(ApproveCase(case_id=own, by="staff-1"))
            engine.handle(ShipBack(case_id=own, carrier="SF", waybill="R1", by="buyer-1"))
            sign_in(client, people, "staff-1")
            page = client.get(f"/desk/cases/{own}").text
            assert 'id="instant-refund"' not in page  # buyer-1 was flagged when it shipped
            other = people.open("KS-2", type="return_refund", lines=["CASE-BLUE"])
            engine.handle(ApproveCase(case_id=other, by="staff-2"))
            engine.handle(ShipBack(case_id=other, carrier="SF", waybill="R2", by="buyer-2"))
            sign_in(client, people, "staff-2")
            assert 'id="instant-refund"' in client.get(f"/desk/cases/{other}").text
            cleared = post("ops", "buyer-1", "clear", {"note": "checked"})
            assert cleared.status_code == 200 and cleared.json()["flagged"] is False
            again = client.get("/v1/buyers/buyer-1", headers=people.auth("ops"))
            assert again.json()["instant_refund"] == {
                "eligible": True, "why_not": None, "up_to": "100.00",
            }  # fmt: skip
