"""A shop's settings act for it: return addresses for every approval of a return, and rules that
approve requests the moment they are opened, within the policy's bounds; every change is an event
on the shop, and each approval names who (or which rule, at which version) made it."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    AcceptOffer,
    ApproveCase,
    OfferChange,
    OpenCase,
    RemoveAutoRule,
    RemoveReturnAddress,
    SetAutoRule,
    SetReturnAddress,
    ShowShop,
    Tick,
)
from aftersales.engine.domain.errors import BadInput, NotAllowed
from aftersales.engine.domain.shop import shop_uuid
from aftersales.engine.integrity.audit_bundle import audit_case
from tests.conftest import at, place_delivered

WAREHOUSE = "Hangzhou: No. 1 Wensan Road"


def addresses(engine: Engine) -> None:
    engine.handle(
        SetReturnAddress(
            merchant_id="shop-1",
            address_id="HZ1",
            warehouse="Hangzhou",
            address="No. 1 Wensan Road",
            at=at(),
        )
    )
    engine.handle(
        SetReturnAddress(
            merchant_id="shop-1", address_id="SH2", warehouse="Shanghai", address="Pier 5", at=at()
        )
    )


def open_case(engine: Engine, order_id: str, case_type: str, reason: str, amount: str) -> Any:
    place_delivered(engine, order_id, lines=("MUG:1:39.90:home", "TOY:1:80.00:toys"))
    return engine.handle(
        OpenCase(
            order_id=order_id,
            type=case_type,
            reason=reason,
            amount=amount,
            lines=["MUG"] if Decimal(amount) <= Decimal("39.90") else ["MUG", "TOY"],
            at=at(days=3),
        )
    )


def kinds(engine: Engine, case_id: str) -> list[tuple[str, str, str]]:
    """Each stored event of a case: its type, and who acted (role, id)."""
    audit = audit_case(engine.store, case_id)
    return [(e["type"], e["actor"]["role"], e["actor"]["id"]) for e in audit.to_json()["events"]]


def test_the_settings_have_a_history_and_a_default(engine: Engine) -> None:
    assert engine.handle(ShowShop(merchant_id="shop-1"))["return_addresses"] == []
    addresses(engine)
    shown = engine.handle(ShowShop(merchant_id="shop-1"))
    assert [(a["address_id"], a["default"]) for a in shown["return_addresses"]] == [
        ("HZ1", True),
        ("SH2", False),
    ]
    moved = engine.handle(
        SetReturnAddress(
            merchant_id="shop-1",
            address_id="SH2",
            warehouse="Shanghai",
            address="Pier 6",
            default=True,
            at=at(days=1),
        )
    )
    assert [(a["address_id"], a["default"]) for a in moved["return_addresses"]] == [
        ("HZ1", False),
        ("SH2", True),
    ]
    with pytest.raises(NotAllowed, match="default return address: make another"):
        engine.handle(RemoveReturnAddress(merchant_id="shop-1", address_id="SH2", at=at(days=1)))
    before = engine.handle(ShowShop(merchant_id="shop-1"))
    with pytest.raises(NotAllowed, match="no return address 'XX'"):
        engine.handle(RemoveReturnAddress(merchant_id="shop-1", address_id="XX", at=at(days=1)))
    engine.handle(RemoveReturnAddress(merchant_id="shop-1", address_id="HZ1", at=at(days=1)))
    after = engine.handle(ShowShop(merchant_id="shop-1"))
    assert after["version"] == before["version"] + 1
    assert [a["address_id"] for a in after["return_addresses"]] == ["SH2"]


def test_the_clock_staff_and_an_accepted_offer_send_returns_to_the_default(
    engine: Engine,
) -> None:
    addresses(engine)
    # The clock approves a return at hour 48: to the default, recorded on the approval.
    by_clock = open_case(engine, "KS-1", "return_refund", "quality.colour", "39.90")
    engine.handle(Tick(now=at(days=5, minutes=1)))
    shown = engine.stored_case(by_clock["case_id"])
    assert (shown["status"], shown["return_address"]) == ("awaiting_buyer_shipment", WAREHOUSE)
    # Staff approving without naming an address: the default; naming one: that one.
    by_staff = open_case(engine, "KS-2", "return_refund", "quality.colour", "39.90")
    approved = engine.handle(ApproveCase(case_id=by_staff["case_id"], at=at(days=4)))
    assert approved["return_address"] == WAREHOUSE
    named = open_case(engine, "KS-3", "return_refund", "quality.colour", "39.90")
    approved = engine.handle(
        ApproveCase(case_id=named["case_id"], return_address="Dock 9", at=at(days=4))
    )
    assert approved["return_address"] == "Dock 9"
    # A refund only needs no address.
    refund = open_case(engine, "KS-4", "refund_only", "quality.colour", "39.90")
    assert (
        engine.handle(ApproveCase(case_id=refund["case_id"], at=at(days=4)))["return_address"]
        is None
    )
    # The buyer takes the merchant's offer of a return instead of a refund only.
    offered = open_case(engine, "KS-5", "refund_only", "quality.colour", "39.90")
    engine.handle(OfferChange(case_id=offered["case_id"], type="return_refund", at=at(days=4)))
    taken = engine.handle(AcceptOffer(case_id=offered["case_id"], at=at(days=4, hours=1)))
    assert (taken["status"], taken["return_address"]) == ("awaiting_buyer_shipment", WAREHOUSE)
    for case_id in (by_clock["case_id"], by_staff["case_id"], offered["case_id"]):
        assert audit_case(engine.store, case_id).verified


def test_a_rule_approves_what_it_matches_as_it_is_opened_and_says_so(engine: Engine) -> None:
    addresses(engine)
    engine.handle(
        SetAutoRule(
            merchant_id="shop-1",
            rule_id="small-refunds",
            types=("refund_only",),
            up_to="40.00",
            at=at(),
        )
    )
    engine.handle(  # a second version: quality only
        SetAutoRule(
            merchant_id="shop-1",
            rule_id="small-refunds",
            types=("refund_only",),
            up_to="40.00",
            reasons=("quality",),
            at=at(hours=1),
        )
    )
    engine.handle(
        SetAutoRule(
            merchant_id="shop-1",
            rule_id="home-returns",
            types=("return_refund",),
            categories=("home",),
            at=at(hours=1),
        )
    )
    refunded = open_case(engine, "KS-1", "refund_only", "quality.colour", "39.90")
    assert (refunded["status"], refunded["refunded_amount"]) == ("refunded", "39.90")
    assert kinds(engine, refunded["case_id"]) == [
        ("CaseOpened", "buyer", "buyer-1"),
        ("CaseApproved", "merchant", "rule:small-refunds"),
        ("CaseRefunded", "merchant", "rule:small-refunds"),
    ]
    events = audit_case(engine.store, refunded["case_id"]).to_json()["events"]
    assert events[1]["data"]["by_rule"] == "small-refunds@2"
    # The order's books: the line refunded, not held.
    lines = {line["sku"]: line for line in engine.get_order("KS-1")["lines"]}
    assert (lines["MUG"]["refunded"], lines["MUG"]["open_case_id"]) == ("39.90", None)
    # Not for another reason (version 2 of the rule), nor over the amount.
    other = open_case(engine, "KS-2", "refund_only", "logistics.damaged", "39.90")
    assert other["status"] == "awaiting_merchant"
    # A return of home goods: approved, to the default address.
    home = open_case(engine, "KS-3", "return_refund", "buyer.no_reason", "39.90")
    assert (home["status"], home["return_address"]) == ("awaiting_buyer_shipment", WAREHOUSE)
    # A return with a line in another category: people answer it.
    mixed = open_case(engine, "KS-4", "return_refund", "buyer.no_reason", "119.90")
    assert mixed["status"] == "awaiting_merchant"
    # Removed: people answer again.
    engine.handle(RemoveAutoRule(merchant_id="shop-1", rule_id="small-refunds", at=at(days=3)))
    again = open_case(engine, "KS-5", "refund_only", "quality.colour", "39.90")
    assert again["status"] == "awaiting_merchant"
    shop = engine.handle(ShowShop(merchant_id="shop-1"))
    assert [(r["rule_id"], r["version"]) for r in shop["rules"]] == [("home-returns", 1)]


def test_rules_stay_within_the_policys_bounds(engine: Engine) -> None:
    with pytest.raises(NotAllowed, match=r"up to 50\.00, not 60\.00"):
        engine.handle(
            SetAutoRule(
                merchant_id="shop-1", rule_id="r", types=("refund_only",), up_to="60.00", at=at()
            )
        )
    with pytest.raises(NotAllowed, match="lets no shop rule approve reship"):
        engine.handle(SetAutoRule(merchant_id="shop-1", rule_id="r", types=("reship",), at=at()))
    with pytest.raises(BadInput, match="not one of"):
        engine.handle(SetAutoRule(merchant_id="shop-1", rule_id="r", types=("gift",), at=at()))
    with pytest.raises(BadInput, match="needs the service types"):
        engine.handle(SetAutoRule(merchant_id="shop-1", rule_id="r", types=(), at=at()))
    # Nothing was recorded by the refusals.
    assert engine.handle(ShowShop(merchant_id="shop-1"))["version"] == 0
    # A rule that names no amount acts up to the bound: 80.00 is over a refund only's 50.00.
    engine.handle(SetAutoRule(merchant_id="shop-1", rule_id="r", types=("refund_only",), at=at()))
    big = open_case(engine, "KS-1", "refund_only", "quality.colour", "119.90")
    assert big["status"] == "awaiting_merchant"


def test_the_command_line_and_batch_reach_the_settings(store_url: str, tmp_path: Any) -> None:
    runner = CliRunner()

    def run(*args: str, code: int = 0, stdin: str | None = None) -> Any:
        result = runner.invoke(cli, ["--store", store_url, *args, "--json"], input=stdin)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        return [json.loads(line) for line in result.stdout.splitlines()]

    (shown,) = run(
        "shop", "set-address", "shop-9", "--address-id", "W1", "--warehouse", "Wuhan",
        "--address", "Lane 3", "--at", at(),
    )  # fmt: skip
    assert shown["return_addresses"][0]["default"] is True
    (refused,) = run(
        "shop", "set-rule", "shop-9", "--rule-id", "r1", "--types", "refund_only",
        "--up-to", "500.00", "--at", at(), code=3,
    )  # fmt: skip
    assert refused["error"]["code"] == "not_allowed"
    lines = "\n".join(
        json.dumps(line)
        for line in (
            {
                "action": "shop set-rule",
                "merchant_id": "shop-9",
                "rule_id": "r1",
                "types": ["refund_only", "return_refund"],
                "up_to": "20.00",
                "at": at(),
            },
            {"action": "shop remove-address", "merchant_id": "shop-9", "address_id": "W1"},
        )
    )
    results = run("batch", "-", stdin=lines)
    assert [r.get("ok", True) for r in results] == [True, True]
    (shop,) = run("shop", "show", "shop-9")
    assert shop["return_addresses"] == []
    assert shop["rules"][0]["types"] == ["refund_only", "return_refund"]


def test_over_http_a_shops_staff_change_their_own_settings_only(
    engine: Engine, store_url: str
) -> None:
    from fastapi.testclient import TestClient

    from aftersales.commands.http.app import create_app
    from tests.people import People

    people = People(engine)
    body = {"address_id": "HZ1", "warehouse": "Hangzhou", "address": "No. 1 Wensan Road"}
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:

        def post(who: str, shop: str, word: str, sent: dict[str, Any]) -> Any:
            return client.post(f"/v1/shops/{shop}/{word}", json=sent, headers=people.auth(who))

        made = post("staff-1", "shop-1", "set-address", body)
        assert made.status_code == 200, made.text
        assert made.json()["return_addresses"][0]["default"] is True
        # Another shop's staff: as if there were no such shop; a buyer may not; the operator may.
        assert post("staff-2", "shop-1", "set-address", body).status_code == 404
        assert post("buyer-1", "shop-1", "set-address", body).status_code == 403
        rule = {"rule_id": "small", "types": ["refund_only"], "up_to": "20.00"}
        assert post("ops", "shop-1", "set-rule", rule).status_code == 200
        over = post("staff-1", "shop-1", "set-rule", {**rule, "up_to": "80.00"})
        assert over.status_code == 409 and "up to 50.00" in over.json()["error"]["message"]
        bad = post("staff-1", "shop-1", "set-rule", {**rule, "types": []})
        assert bad.status_code == 422
        shown = client.get("/v1/shops/shop-1", headers=people.auth("staff-1"))
        assert shown.status_code == 200
        assert [(r["rule_id"], r["version"], r["up_to"]) for r in shown.json()["rules"]] == [
            ("small", 1, "20.00")
        ]
        assert client.get("/v1/shops/shop-1", headers=people.auth("staff-2")).status_code == 404
        assert client.get("/v1/shops/shop-1", headers=people.auth("buyer-1")).status_code == 403
    # Who changed what: the shop's history names the staff and the operator, in order.
    stored = engine.store.recorder.select_events(shop_uuid("shop-1"))
    assert [(e.topic.rpartition(":")[2], json.loads(e.state)["actor"]["id"]) for e in stored] == [
        ("ShopOpened", "staff-1"),
        ("ReturnAddressSet", "staff-1"),
        ("AutoRuleSet", "ops"),
    ]
