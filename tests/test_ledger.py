"""The ledger projection: each merchant's money, equal to sums worked out from the scenario."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    ApproveCase,
    DeliverOrder,
    EscalateCase,
    FireDeadline,
    OpenCase,
    PlaceOrder,
    ReceiveGoods,
    RejectCase,
    RuleCase,
    ShipBack,
)
from tests.conftest import at


def scenario(e: Engine) -> list[str]:
    """Two shops. Known money, by hand:
    shop-a: refunds it paid 39.90 + 199.00 = 238.90; the platform advanced 15.00 (a missed
            reship, gift at list price) + 88.00 (an unjustified rejection) = 103.00, all owed
            by shop-a; freight 0; penalty 5.00 (the missed reship).
    shop-b: refunds it paid 129.00 (wrong item, after the ruling); freight 2 x 10.00 = 20.00.
    """
    for order, shop, lines in (
        ("A-1", "shop-a", ["CASE:1:39.90:phone_accessory", "GIFT:1:0.00:gift:15.00"]),
        ("A-2", "shop-a", ["EARBUDS:1:199.00:electronics"]),
        ("A-3", "shop-a", ["PLATE:1:88.00:home"]),
        ("B-1", "shop-b", ["SHIRT:1:129.00:apparel"]),
    ):
        e.handle(
            PlaceOrder(order_id=order, merchant=shop, buyer=f"buyer-{order}", lines=lines, at=at())
        )
        e.handle(DeliverOrder(order_id=order, at=at(days=1)))
    ids = []
    # shop-a: a quality refund, paid by the merchant (day 3).
    c = e.handle(
        OpenCase(
            order_id="A-1",
            type="refund_only",
            reason="quality.colour",
            amount="39.90",
            lines=["CASE"],
            at=at(days=3),
        )
    )["case_id"]
    e.handle(ApproveCase(case_id=c, at=at(days=3, hours=1)))
    ids.append(c)
    # shop-a: a missing gift, ruled for the buyer, reship missed (day 5).
    c = e.handle(
        OpenCase(
            order_id="A-1",
            type="reship",
            reason="missing_items.gift",
            amount="15.00",
            lines=["GIFT"],
            at=at(days=3, hours=1),
        )
    )["case_id"]
    e.handle(
        RejectCase(
            case_id=c, reason="it was packed", communication="chat:1", at=at(days=3, hours=2)
        )
    )
    e.handle(EscalateCase(case_id=c, claim="missing_items", at=at(days=3, hours=3)))
    due = e.handle(RuleCase(case_id=c, in_favour_of="buyer", at=at(days=4)))["due_at"]
    e.handle(FireDeadline(case_id=c, deadline="reship_overdue", at=due))
    ids.append(c)
    # shop-a: a return received ok (day 6).
    c = e.handle(
        OpenCase(
            order_id="A-2",
            type="return_refund",
            reason="buyer.changed_mind",
            amount="199.00",
            at=at(days=2),
        )
    )["case_id"]
    e.handle(ApproveCase(case_id=c, at=at(days=2, hours=1)))
    e.handle(ShipBack(case_id=c, carrier="SF", waybill="1", at=at(days=3)))
    e.handle(ReceiveGoods(case_id=c, at=at(days=6)))
    ids.append(c)
    # shop-a: an unjustified rejection, the platform pays first (day 8).
    c = e.handle(
        OpenCase(
            order_id="A-3",
            type="refund_only",
            reason="quality.cracked",
            amount="88.00",
            at=at(days=2),
        )
    )["case_id"]
    e.handle(RejectCase(case_id=c, reason="no", communication="call:1", at=at(days=2, hours=1)))
    e.handle(EscalateCase(case_id=c, claim="unjustified_rejection", at=at(days=7)))
    e.handle(RuleCase(case_id=c, in_favour_of="buyer", at=at(days=8)))
    ids.append(c)
    # shop-b: a wrong item, freight both ways on the merchant, then refunded (day 9).
    c = e.handle(
        OpenCase(
            order_id="B-1",
            type="return_refund",
            reason="wrong_item.other_variant",
            amount="129.00",
            at=at(days=2),
        )
    )["case_id"]
    e.handle(
        RejectCase(case_id=c, reason="same item", communication="chat:2", at=at(days=2, hours=1))
    )
    e.handle(EscalateCase(case_id=c, claim="wrong_item", at=at(days=2, hours=2)))
    e.handle(RuleCase(case_id=c, in_favour_of="buyer", at=at(days=3)))
    e.handle(ShipBack(case_id=c, carrier="SF", waybill="2", at=at(days=4)))
    e.handle(ReceiveGoods(case_id=c, at=at(days=9)))
    ids.append(c)
    return ids


def run(store: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--store", store, *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def test_ledger_totals_equal_the_scenarios_money(store_url: str) -> None:
    with Engine(store_url) as engine:
        ids = scenario(engine)
        entries = [x for cid in ids for x in engine.get_case(cid)["ledger"]]
    run(store_url, "project", "run")
    result = json.loads(run(store_url, "ledger", "--json"))
    with Engine(store_url) as engine:
        assert result["position"] == engine.store.recorder.max_notification_id()
    rows = result["rows"]
    assert rows == [
        {
            "merchant_id": "shop-a",
            "refunded_by_merchant": "238.90",
            "advanced_by_platform": "103.00",
            "owed_to_platform": "103.00",
            "freight": "0.00",
            "penalties": "5.00",
            "total": "346.90",
            "entries": 5,
        },
        {
            "merchant_id": "shop-b",
            "refunded_by_merchant": "129.00",
            "advanced_by_platform": "0.00",
            "owed_to_platform": "0.00",
            "freight": "20.00",
            "penalties": "0.00",
            "total": "149.00",
            "entries": 2,
        },
    ]
    # The totals add up to the money events themselves.
    assert sum(Decimal(x["amount"]) for x in entries) == sum(Decimal(r["total"]) for r in rows)
    one = json.loads(run(store_url, "ledger", "--merchant", "shop-b", "--json"))["rows"]
    assert [r["merchant_id"] for r in one] == ["shop-b"]
    # A window: only what moved from day 5 up to day 9 (excluded): the missed reship (refund
    # and penalty), the return on day 6, the platform's refund on day 8.
    window = json.loads(
        run(store_url, "ledger", "--since", at(days=5), "--until", at(days=9), "--json")
    )["rows"]
    assert window == [
        {
            "merchant_id": "shop-a",
            "refunded_by_merchant": "199.00",
            "advanced_by_platform": "103.00",
            "owed_to_platform": "103.00",
            "freight": "0.00",
            "penalties": "5.00",
            "total": "307.00",
            "entries": 4,
        },
    ]
    csv = run(store_url, "ledger", "--csv").splitlines()
    assert csv[0].startswith("merchant_id,refunded_by_merchant") and len(csv) == 3
    # A rebuild gives the same numbers.
    run(store_url, "project", "rebuild", "ledger")
    assert json.loads(run(store_url, "ledger", "--json"))["rows"] == rows


def test_reports_catch_up_first_unless_told_not_to(store_url: str) -> None:
    with Engine(store_url) as engine:
        scenario(engine)
        head = engine.store.recorder.max_notification_id()
    runner = CliRunner()
    stale = runner.invoke(cli, ["--store", store_url, "ledger", "--no-catch-up", "--json"])
    assert stale.exit_code == 0, stale.output
    assert json.loads(stale.stdout) == {"position": 0, "rows": []}
    assert "still to apply" in stale.stderr
    fresh = runner.invoke(cli, ["--store", store_url, "ledger", "--json"])
    assert fresh.exit_code == 0, fresh.output
    result = json.loads(fresh.stdout)
    assert result["position"] == head
    assert [r["merchant_id"] for r in result["rows"]] == ["shop-a", "shop-b"]
    assert "still to apply" not in fresh.stderr
    # A merchant with nothing says so to a person.
    none = runner.invoke(cli, ["--store", store_url, "ledger", "--merchant", "no-such-shop"])
    assert none.exit_code == 0 and none.stdout.strip() == "no money moved for merchant no-such-shop"
    none = runner.invoke(
        cli, ["--store", store_url, "report", "dashboard", "--merchant", "no-such-shop"]
    )
    assert none.stdout.startswith("no cases for merchant no-such-shop"), none.stdout
