"""A shop's settings on the desk (`/desk/settings`), through the application (FastAPI's
TestClient), on both backends: staff add return addresses and rules and see them with their
history, a refusal is shown in the engine's words and changes nothing, another shop's staff can
neither see nor change them, and an operator chooses the shop and may."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from aftersales.commands.http.app import create_app
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ShowShop
from aftersales.engine.domain.shop import shop_uuid
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector
from tests.people import People
from tests.test_desk import ORIGIN, sign_in

FORM = {**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def desk(engine: Engine, store_url: str) -> Iterator[tuple[TestClient, People]]:
    people = People(engine)
    Projector(engine.store).catch_up(VIEWS)  # the operator's list of shops: those with cases
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:
        yield client, people


def hidden(page: str, form_id: str | None = None) -> dict[str, str]:
    """The hidden fields of the page's first settings form (or of the form with this id)."""
    text = page
    if form_id is not None:
        start = page.index(f'id="{form_id}"')
        text = page[start : page.index("</form>", start)]
    found = dict(
        re.findall(r'<input type="hidden" name="(shop|version|key)" value="([^"]*)"', text)
    )
    return found


def post(client: TestClient, word: str, page: str, form_id: str, **fields: Any) -> Any:
    """Submit one of the page's settings forms as a browser would: its hidden fields (the shop,
    the version shown, the form's key) and the fields typed."""
    sent: list[tuple[str, str]] = list(hidden(page, form_id).items())
    for name, value in fields.items():
        for one in value if isinstance(value, list) else [value]:
            sent.append((name, one))
    return client.post(
        f"/desk/settings/{word}", content=urlencode(sent), headers=FORM, follow_redirects=False
    )


def shop_events(engine: Engine, merchant: str) -> list[tuple[str, str]]:
    """The shop's stored events: each type and who acted."""
    return [
        (e.topic.rpartition(":")[2], json.loads(e.state)["actor"]["id"])
        for e in engine.store.recorder.select_events(shop_uuid(merchant))
    ]


def test_staff_add_addresses_and_a_rule_and_see_them(desk: tuple[TestClient, People]) -> None:
    client, people = desk
    engine = people.engine
    sign_in(client, people, "staff-1")
    home = client.get("/")
    assert '<a href="/desk/settings">Settings</a>' in home.text
    page = client.get("/desk/settings")
    assert page.status_code == 200
    assert "Settings (设置)" in page.text and "shop shop-1" in page.text
    assert "No return address yet" in page.text and "No rule" in page.text
    # The policy's bounds beside the rule form, before anything is submitted.
    bounds = page.text[page.text.index('id="bounds"') :]
    assert "refund only (仅退款): up to <b>50.00</b>" in bounds
    assert "return and refund (退货退款): up to <b>500.00</b>" in bounds

    made = post(
        client,
        "set-address",
        page.text,
        "address-form",
        address_id="HZ1",
        warehouse="杭州仓",
        address="文三路 1 号",
    )
    assert (made.status_code, made.headers["location"]) == (
        303,
        "/desk/settings?shop=shop-1&done=set-address",
    )
    page = client.get(made.headers["location"])
    assert "The return address is saved." in page.text
    row = re.search(r'<tr data-address="HZ1">.*?</tr>', page.text, re.S)
    assert row is not None and "default (默认)" in row.group(0) and "文三路 1 号" in row.group(0)
    assert "by staff-1" in row.group(0)
    second = post(
        client,
        "set-address",
        page.text,
        "address-form",
        address_id="SH2",
        warehouse="Shanghai",
        address="Pier 5",
    )
    assert second.status_code == 303
    page = client.get("/desk/settings")
    # Make SH2 the default with its row's button.
    start = page.text.index('<tr data-address="SH2">')
    row_html = page.text[start : page.text.index("</tr>", start)]
    assert "Make default" in row_html
    fields = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', row_html))
    assert fields["default"] == "true"
    moved = client.post(
        "/desk/settings/set-address", data=fields, headers=FORM, follow_redirects=False
    )
    assert moved.status_code == 303
    shown = engine.handle(ShowShop(merchant_id="shop-1"))
    assert [(a["address_id"], a["default"]) for a in shown["return_addresses"]] == [
        ("HZ1", False),
        ("SH2", True),
    ]

    page = client.get("/desk/settings")
    rule = post(
        client,
        "set-rule",
        page.text,
        "rule-form",
        rule_id="small",
        types=["refund_only"],
        up_to="20.00",
        reasons="quality, logistics",
    )
    assert rule.status_code == 303, rule.text
    page = client.get(rule.headers["location"])
    assert "The rule is saved." in page.text
    row = re.search(r'<tr data-rule="small">(.*?)</tr>', page.text, re.S)
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row.group(1))
    assert cells[:5] == ["<b>small</b>", "1", "refund only (仅退款)", "20.00", "quality, logistics"]
    # Changing it: its form starts from the rule (?rule=), and saving makes version 2.
    editing = client.get("/desk/settings?rule=small")
    assert 'value="20.00"' in editing.text and "Change rule small (a new version)" in editing.text
    again = post(
        client,
        "set-rule",
        editing.text,
        "rule-form",
        rule_id="small",
        types=["refund_only", "return_refund"],
        up_to="30.00",
    )
    assert again.status_code == 303
    rules = engine.handle(ShowShop(merchant_id="shop-1"))["rules"]
    assert [(r["rule_id"], r["version"], r["types"], r["up_to"], r["reasons"]) for r in rules] == [
        ("small", 2, ["refund_only", "return_refund"], "30.00", [])
    ]
    # The history: who changed what, newest first.
    page = client.get("/desk/settings")
    history = re.findall(r"<li>.*?</li>", page.text[page.text.index('id="history"') :], re.S)
    assert len(history) == 6
    assert "staff-1" in history[0] and "set rule small, version 2" in history[0]
    assert "began keeping the shop&#39;s settings" in history[-1]
    assert shop_events(engine, "shop-1") == [
        ("ShopOpened", "staff-1"),
        ("ReturnAddressSet", "staff-1"),
        ("ReturnAddressSet", "staff-1"),
        ("ReturnAddressSet", "staff-1"),
        ("AutoRuleSet", "staff-1"),
        ("AutoRuleSet", "staff-1"),
    ]
    # Removing the rule, then the address that is not the default.
    removed = post(client, "remove-rule", page.text, "rule-table", rule_id="small")
    assert removed.status_code == 303
    page = client.get("/desk/settings")
    gone = post(client, "remove-address", page.text, "address-table", address_id="HZ1")
    assert gone.status_code == 303
    shown = engine.handle(ShowShop(merchant_id="shop-1"))
    assert (shown["rules"], [a["address_id"] for a in shown["return_addresses"]]) == ([], ["SH2"])


def test_a_refusal_is_shown_in_words_and_changes_nothing(desk: tuple[TestClient, People]) -> None:
    client, people = desk
    engine = people.engine
    sign_in(client, people, "staff-1")
    page = client.get("/desk/settings")
    for address_id in ("HZ1", "SH2"):
        made = post(
            client,
            "set-address",
            page.text,
            "address-form",
            address_id=address_id,
            warehouse="W",
            address="A",
        )
        assert made.status_code == 303
        page = client.get("/desk/settings")
    before = people.events()

    # A rule beyond the policy's bounds: the engine's message, the form as sent, nothing kept.
    over = post(
        client,
        "set-rule",
        page.text,
        "rule-form",
        rule_id="big",
        types=["refund_only"],
        up_to="80.00",
    )
    assert over.status_code == 409
    assert (
        "Not changed: a shop rule may approve refund_only requests up to 50.00, not 80.00"
        in over.text
    )
    form = over.text[over.text.index('id="rule-form"') :]
    assert 'value="big"' in form and 'value="80.00"' in form
    assert 'value="refund_only" checked' in form
    assert "No rule" in over.text  # the settings as they stand
    # Removing the default while another address remains.
    default = post(client, "remove-address", page.text, "address-table", address_id="HZ1")
    assert default.status_code == 409
    assert "HZ1 is shop shop-1&#39;s default return address: make another the default" in (
        default.text
    )
    # What the command's own parsing refuses: no service type.
    untyped = post(client, "set-rule", page.text, "rule-form", rule_id="none", up_to="5.00")
    assert untyped.status_code == 422 and "Not changed: types is required" in (untyped.text)
    assert people.events() == before
    assert engine.handle(ShowShop(merchant_id="shop-1"))["rules"] == []

    # A page gone stale (saved meanwhile from another tab): refused, said so, the page as it is.
    stale = client.get("/desk/settings").text
    other_tab = client.get("/desk/settings").text
    fresh = post(client, "set-rule", other_tab, "rule-form", rule_id="a", types=["refund_only"])
    assert fresh.status_code == 303
    late = post(client, "set-rule", stale, "rule-form", rule_id="b", types=["exchange"])
    assert late.status_code == 412
    assert "These settings changed since you opened them" in late.text
    assert "your change to the rule was not taken" in late.text
    assert '<tr data-rule="a">' in late.text and '<tr data-rule="b">' not in late.text
    # The same form posted twice (a double click) acts once.
    page = client.get("/desk/settings")
    fields = {"rule_id": "twice", "types": "exchange"}
    first = post(client, "set-rule", page.text, "rule-form", **fields)
    repeat = post(client, "set-rule", page.text, "rule-form", **fields)
    assert (first.status_code, repeat.status_code) == (303, 303)
    assert [r["rule_id"] for r in engine.handle(ShowShop(merchant_id="shop-1"))["rules"]] == [
        "a",
        "twice",
    ]
    # From another site: refused before anything is read; nothing recorded.
    count = people.events()
    elsewhere = client.post(
        "/desk/settings/set-rule",
        data={"shop": "shop-1", "rule_id": "x", "types": "exchange"},
        headers={"Origin": "http://evil.test"},
    )
    assert elsewhere.status_code == 403
    assert client.post("/desk/settings/nothing", data={}, headers=ORIGIN).status_code == 404
    assert people.events() == count


def test_another_shops_staff_may_neither_see_nor_change(desk: tuple[TestClient, People]) -> None:
    client, people = desk
    engine = people.engine
    sign_in(client, people, "staff-1")
    page = client.get("/desk/settings")
    made = post(
        client,
        "set-address",
        page.text,
        "address-form",
        address_id="HZ1",
        warehouse="Hangzhou",
        address="Secret road 1",
    )
    assert made.status_code == 303
    before = people.events()

    sign_in(client, people, "staff-2")
    own = client.get("/desk/settings")
    assert own.status_code == 200 and "shop shop-2" in own.text
    assert "Secret road" not in own.text
    other = client.get("/desk/settings?shop=shop-1")
    assert other.status_code == 404 and "no shop shop-1" in other.text
    assert "Secret road" not in other.text
    # Its own page's form, pointed at shop-1: as if there were no such shop; nothing recorded.
    sent = {**hidden(own.text, "address-form"), "shop": "shop-1"}
    sent.update(address_id="HZ1", warehouse="Elsewhere", address="Stolen 9", default="true")
    moved = client.post("/desk/settings/set-address", data=sent, headers=FORM)
    assert moved.status_code == 404 and "no shop shop-1" in moved.text
    removed = client.post(
        "/desk/settings/remove-address",
        data={"shop": "shop-1", "address_id": "HZ1"},
        headers=FORM,
    )
    assert removed.status_code == 404
    assert people.events() == before
    assert engine.handle(ShowShop(merchant_id="shop-1"))["return_addresses"][0]["address"] == (
        "Secret road 1"
    )
    # Roles without the right: no link, and the page refused.
    for pid in ("buyer-1", "agent", "reporter"):
        sign_in(client, people, pid)
        assert 'href="/desk/settings"' not in client.get("/").text
        refused = client.get("/desk/settings?shop=shop-1")
        assert refused.status_code == 403, pid
        assert "may not shop show" in refused.text
        posted = client.post(
            "/desk/settings/set-rule",
            data={"shop": "shop-1", "rule_id": "x", "types": "exchange"},
            headers=FORM,
        )
        assert posted.status_code == 403, pid
    assert people.events() == before


def test_an_operator_chooses_the_shop_and_may_change_it(desk: tuple[TestClient, People]) -> None:
    client, people = desk
    engine = people.engine
    sign_in(client, people, "ops")
    picker = client.get("/desk/settings")
    assert picker.status_code == 200
    assert 'id="shop-pick"' in picker.text and "Choose the shop" in picker.text
    # The shops with cases are offered; any shop may be typed.
    assert '<option value="shop-1">' in picker.text and '<option value="shop-2">' in picker.text
    page = client.get("/desk/settings?shop=shop-2")
    assert page.status_code == 200 and "shop shop-2" in page.text
    assert hidden(page.text, "rule-form")["shop"] == "shop-2"
    made = post(
        client,
        "set-rule",
        page.text,
        "rule-form",
        rule_id="ops-rule",
        types=["exchange"],
        categories="home",
    )
    assert made.status_code == 303
    assert made.headers["location"] == "/desk/settings?shop=shop-2&done=set-rule"
    page = client.get(made.headers["location"])
    assert '<tr data-rule="ops-rule">' in page.text
    assert "by ops" in page.text
    assert shop_events(engine, "shop-2") == [("ShopOpened", "ops"), ("AutoRuleSet", "ops")]
    assert engine.handle(ShowShop(merchant_id="shop-1"))["version"] == 0
    # The shop's own staff see the operator's rule and who set it.
    sign_in(client, people, "staff-2")
    own = client.get("/desk/settings")
    assert '<tr data-rule="ops-rule">' in own.text and "by ops" in own.text
