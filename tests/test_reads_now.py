"""Every read is as of now: a case, an order or a list is shown as the clock has made it by the
read's time (a deadline due is shown as taken, under ``pending_clock``), the allowed actions are
the ones that will succeed, and the read records nothing, nor leaves anything a later write
uses changed: a read followed by a write records what the write alone records."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote
from uuid import UUID

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from aftersales.commands.cli.main import cli
from aftersales.commands.http.app import create_app
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    DeliverOrder,
    ListCases,
    PlaceOrder,
    RejectCase,
    ShipBack,
    ShowCase,
    ShowOrder,
    Tick,
)
from aftersales.engine.domain.errors import NotAllowed
from aftersales.engine.domain.order import order_uuid
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector
from tests.conftest import at
from tests.people import People, days_ago
from tests.test_batch import run_batch
from tests.test_cli import Cli
from tests.test_clock_first import (
    CASE_A,
    SCENARIOS,
    _drop,
    _second_store,
    history,
    open_case,
    same_ids,
    setup_order,
)
from tests.test_desk import sign_in


def head(engine: Engine) -> int:
    return int(engine.store.recorder.max_notification_id() or 0)


def reads(engine: Engine, cid: str, when: str) -> list[Any]:
    """Every read of the case and its order, as of ``when``."""
    return [
        engine.handle(ShowCase.parse({"case_id": cid, "at": when})),
        engine.handle(ShowOrder.parse({"order_id": "KS-1", "at": when})),
        engine.handle(ListCases.parse({"at": when})),
        engine.handle(ListCases.parse({"at": when, "status": "awaiting_merchant"})),
        engine.handle(ListCases.parse({"at": when, "order": "KS-1", "limit": "1"})),
    ]


def test_a_lapsed_review_is_shown_approved_and_nothing_is_recorded(engine: Engine) -> None:
    setup_order(engine)
    cid = open_case(engine)
    before = head(engine)
    due = at(days=5)  # the merchant's 48 hours
    just_before = engine.handle(
        ShowCase.parse(
            {"case_id": cid, "at": (datetime.fromisoformat(due) - timedelta(seconds=1)).isoformat()}
        )
    )
    assert just_before["status"] == "awaiting_merchant" and just_before["pending_clock"] == []
    assert {"approve", "reject"} <= set(just_before["allowed_actions"])

    shown = engine.handle(ShowCase.parse({"case_id": cid, "at": at(days=5, hours=1)}))
    assert shown["status"] == "awaiting_buyer_shipment"
    assert shown["due_action"] == "auto_close"
    assert "approve" not in shown["allowed_actions"] and "reject" not in shown["allowed_actions"]
    assert "ship-back" in shown["allowed_actions"]
    assert shown["pending_clock"] == [
        {
            "case_id": cid,
            "action": "auto_approve",
            "due_at": datetime.fromisoformat(due).isoformat(),
            "from": "awaiting_merchant",
            "to": "awaiting_buyer_shipment",
        }
    ]
    assert datetime.fromisoformat(shown["as_of"]) == datetime.fromisoformat(at(days=5, hours=1))
    # The version is the stored one: what an expected version is checked on.
    assert shown["version"] == engine.stored_case(cid)["version"] == 1
    assert engine.stored_case(cid)["status"] == "awaiting_merchant"
    assert head(engine) == before

    # What the read says is allowed succeeds; what it no longer lists is refused.
    with pytest.raises(NotAllowed):
        engine.handle(
            RejectCase(case_id=cid, reason="worn", communication="chat:1", at=at(days=5, hours=1))
        )
    done = engine.handle(ShipBack(case_id=cid, carrier="SF", waybill="R1", at=at(days=5, hours=1)))
    assert done["status"] == "awaiting_merchant_receipt"


def test_a_case_due_twice_over_is_shown_in_its_final_state(engine: Engine) -> None:
    setup_order(engine)
    cid = open_case(engine)
    before = head(engine)
    # Review lapsed at day 5, then the buyer's ten days to ship back at day 15.
    shown = engine.get_case(cid, at=datetime.fromisoformat(at(days=16)))
    assert shown["status"] == "closed"
    assert [(p["action"], p["from"], p["to"]) for p in shown["pending_clock"]] == [
        ("auto_approve", "awaiting_merchant", "awaiting_buyer_shipment"),
        ("auto_close", "awaiting_buyer_shipment", "closed"),
    ]
    assert shown["allowed_actions"] == ["rate"]
    order = engine.get_order("KS-1", at=datetime.fromisoformat(at(days=16)))
    assert order["lines"][0]["open_case_id"] is None  # the closed case holds nothing
    assert [p["action"] for p in order["pending_clock"]] == ["auto_approve", "auto_close"]
    listed = engine.handle(ListCases.parse({"at": at(days=16)}))
    assert [(r["case_id"], r["status"]) for r in listed] == [(cid, "closed")]
    assert engine.handle(ListCases.parse({"at": at(days=16), "status": "awaiting_merchant"})) == []
    assert [
        r["case_id"]
        for r in engine.handle(ListCases.parse({"at": at(days=16), "status": "closed"}))
    ] == [cid]
    # As of day 4 it is still the merchant's to review, and listed so.
    early = engine.handle(ListCases.parse({"at": at(days=4), "status": "awaiting_merchant"}))
    assert [r["case_id"] for r in early] == [cid] and early[0]["pending_clock"] == []
    assert head(engine) == before
    # The tick then records exactly what the read showed.
    engine.handle(Tick(now=at(days=16)))
    recorded = engine.stored_case(cid)
    assert {k: v for k, v in recorded.items() if k != "version"} == {
        k: v for k, v in shown.items() if k not in ("version", "as_of", "pending_clock")
    }
    after = engine.get_case(cid, at=datetime.fromisoformat(at(days=16)))
    assert after["pending_clock"] == [] and after["version"] == recorded["version"]


def test_the_list_fills_its_limit_past_cases_the_clock_moved_out(engine: Engine) -> None:
    setup_order(engine)
    lapsed = open_case(engine, line=["CASE-RED"])
    fresh = open_case(
        engine,
        line=["STRAP"],
        amount="10.00",
        case_id=None,
        command_id="open-b",
        at=at(days=4),
    )
    # At day 5 hour 1 the first case's review has lapsed; the second's has not.
    rows = engine.handle(
        ListCases.parse({"at": at(days=5, hours=1), "status": "awaiting_merchant", "limit": "1"})
    )
    assert [r["case_id"] for r in rows] == [fresh]
    rows = engine.handle(
        ListCases.parse({"at": at(days=5, hours=1), "status": "awaiting_buyer_shipment"})
    )
    assert [r["case_id"] for r in rows] == [lapsed]
    assert rows[0]["pending_clock"][0]["action"] == "auto_approve"
    assert rows[0]["version"] == 1


def _late_actions() -> list[str]:
    return [name for name, (_, _, _, error, _) in SCENARIOS.items() if error is None]


def _run(store_url: str, name: str, read_first: bool) -> tuple[list[Any], list[Any], Any]:
    case_type, before, late, _, _ = SCENARIOS[name]
    # With the library's aggregate cache on, as a server runs: a read must leave it unchanged.
    with same_ids(), Engine(store_url, cache_size=100) as engine:
        setup_order(engine)
        cid = open_case(engine, case_type)
        before(engine, cid)
        action = late(cid)
        assert isinstance(action, ShipBack)
        shown = None
        if read_first:
            start = head(engine)
            cached = [engine.store.cached(u) for u in (UUID(cid), order_uuid("KS-1"))]
            kept = [(a.version, a.to_json()) for a in cached if a is not None]
            assert kept, "the engine's aggregate cache holds what it saved last"
            assert action.at is not None
            shown = reads(engine, cid, action.at.isoformat())
            shown += reads(engine, cid, action.at.isoformat())  # twice: nothing accumulates
            # And as of a month later (every wait lapsed): a read that left its state in
            # memory for the write would make the write find the case closed.
            shown += reads(engine, cid, (action.at + timedelta(days=30)).isoformat())
            shown.append(engine.get_case(cid))  # as of the wall clock
            assert head(engine) == start, "a read appended to the store"
            # The aggregate cache a later write starts from is as the last save left it.
            assert [(a.version, a.to_json()) for a in cached if a is not None] == kept
            assert all(not a.pending_events for a in cached if a is not None)
            assert "ship-back" in shown[0]["allowed_actions"]
        engine.handle(action)
        return history(engine, UUID(cid)), history(engine, order_uuid("KS-1")), shown


@pytest.mark.parametrize("name", _late_actions())
def test_a_read_then_a_write_records_what_the_write_alone_records(
    store_url: str, name: str
) -> None:
    read_case, read_order, shown = _run(store_url, name, read_first=True)
    other = _second_store(store_url)
    try:
        alone_case, alone_order, _ = _run(other, name, read_first=False)
    finally:
        _drop(other)
    assert read_case == alone_case
    assert read_order == alone_order
    # What the read showed as pending is what the write recorded before its own event.
    pending = [p["action"] for p in shown[0]["pending_clock"]]
    fired = [e for e in read_case if str(e.get("command_id", "")).startswith("deadline:")]
    assert len(pending) == len(fired) >= 1 and shown[0]["case_id"] == str(CASE_A)


# Through every interface, against the wall clock -------------------------------------------------


class Lapsed:
    """Beside People's orders: KS-8, whose return's review lapsed a day ago (the buyer's ten
    days to ship back now run), and KS-9, whose return lapsed twice over (review, then the
    buyer's ten days): neither ticked."""

    def __init__(self, people: People) -> None:
        engine = people.engine
        for order_id, delivered in (("KS-8", 4), ("KS-9", 14)):
            engine.handle(
                PlaceOrder(
                    order_id=order_id,
                    merchant="shop-1",
                    buyer="buyer-1",
                    lines=["LAMP:1:50.00"],
                    at=days_ago(delivered + 1),
                )
            )
            engine.handle(DeliverOrder(order_id=order_id, at=days_ago(delivered)))
        self.once = people.open("KS-8", type="return_refund", lines=["LAMP"], at=days_ago(3))
        self.twice = people.open("KS-9", type="return_refund", lines=["LAMP"], at=days_ago(13))
        Projector(engine.store).catch_up(VIEWS)


@pytest.fixture
def served(engine: Engine, store_url: str) -> Iterator[tuple[TestClient, People, Lapsed]]:
    people = People(engine)
    lapsed = Lapsed(people)
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:
        yield client, people, lapsed


def test_http_reads_show_the_clock_taken_and_record_nothing(
    served: tuple[TestClient, People, Lapsed],
) -> None:
    client, people, lapsed = served
    before = people.events()
    staff, buyer = people.auth("staff-1"), people.auth("buyer-1")

    once = client.get(f"/v1/cases/{lapsed.once}", headers=staff)
    assert once.status_code == 200
    shown = once.json()
    assert shown["status"] == "awaiting_buyer_shipment" and shown["due_action"] == "auto_close"
    assert [(p["action"], p["to"]) for p in shown["pending_clock"]] == [
        ("auto_approve", "awaiting_buyer_shipment")
    ]
    assert "approve" not in shown["allowed_actions"] and "ship-back" in shown["allowed_actions"]
    assert shown["version"] == 1
    earlier = client.get(f"/v1/cases/{lapsed.once}?at={quote(days_ago(2))}", headers=staff)
    assert earlier.json()["status"] == "awaiting_merchant"
    assert earlier.json()["pending_clock"] == []
    bad = client.get(f"/v1/cases/{lapsed.once}?at=2026-11-01%2010:00", headers=staff)
    assert bad.status_code == 422 and "offset" in bad.json()["error"]["message"]

    twice = client.get(f"/v1/cases/{lapsed.twice}", headers=buyer).json()
    assert twice["status"] == "closed" and twice["allowed_actions"] == ["rate"]
    assert [p["action"] for p in twice["pending_clock"]] == ["auto_approve", "auto_close"]
    order = client.get("/v1/orders/KS-9", headers=staff).json()
    assert order["lines"][0]["open_case_id"] is None and len(order["pending_clock"]) == 2

    def listed(query: str) -> list[str]:
        response = client.get(f"/v1/cases?{query}", headers=staff)
        assert response.status_code == 200, response.text
        return [r["case_id"] for r in response.json()]

    waiting = listed("status=awaiting_merchant")
    assert waiting == [people.cases["shop-1"]]
    assert listed("status=awaiting_buyer_shipment") == [lapsed.once]
    assert listed("status=closed") == [lapsed.twice]
    statuses = {r["case_id"]: r["status"] for r in client.get("/v1/cases", headers=staff).json()}
    assert statuses[lapsed.once] == "awaiting_buyer_shipment"
    assert statuses[lapsed.twice] == "closed"

    report = client.get("/v1/reports/dashboard?merchant=shop-1", headers=people.auth("ops"))
    assert report.status_code == 200, report.text
    assert report.json()["open_cases"]["by_status"] == {
        "awaiting_buyer_shipment": 1,
        "awaiting_merchant": 1,
    }
    assert report.json()["deadlines"]["overdue"] == 2  # for the tick to record
    assert people.events() == before, "a read appended to the store"

    # What the read refused to offer is refused; what it offered succeeds.
    refused = client.post(f"/v1/cases/{lapsed.once}/approve", json={}, headers=staff)
    assert refused.status_code == 409
    shipped = client.post(
        f"/v1/cases/{lapsed.once}/ship-back",
        json={"carrier": "SF", "waybill": "W9"},
        headers={**buyer, "If-Match": once.headers["ETag"]},
    )
    assert shipped.status_code == 200, shipped.text
    assert shipped.json()["status"] == "awaiting_merchant_receipt"


def test_the_desk_shows_the_clock_taken_and_records_nothing(
    served: tuple[TestClient, People, Lapsed],
) -> None:
    client, people, lapsed = served
    before = people.events()
    sign_in(client, people, "staff-1")
    home = client.get("/")
    assert home.status_code == 200
    # The lapsed review is not the merchant's to answer; the fresh one is.
    assert f'data-case="{people.cases["shop-1"]}"' in home.text
    assert f'data-case="{lapsed.once}"' not in home.text
    page = client.get(f"/desk/cases/{lapsed.once}")
    assert page.status_code == 200
    assert 'data-action="approve"' not in page.text and 'data-action="reject"' not in page.text
    assert 'data-action="refund"' in page.text  # the merchant may still refund
    assert 'class="pending-clock">auto approve fell due' in page.text
    sign_in(client, people, "buyer-1")
    page = client.get(f"/desk/cases/{lapsed.once}")
    assert 'data-action="ship-back"' in page.text
    closed = client.get(f"/desk/cases/{lapsed.twice}")
    assert 'data-action="ship-back"' not in closed.text and 'data-action="rate"' in closed.text
    mine = client.get("/")
    assert f'data-case="{lapsed.twice}"' in mine.text
    assert people.events() == before


def test_cli_and_batch_reads_show_the_clock_taken_and_record_nothing(
    engine: Engine, store_url: str
) -> None:
    people = People(engine)
    lapsed = Lapsed(people)
    before = people.events()
    run = Cli(store_url)
    shown = run.run("case", "show", lapsed.once)
    assert shown["status"] == "awaiting_buyer_shipment"
    assert shown["pending_clock"][0]["action"] == "auto_approve"
    assert "ship-back" in shown["allowed_actions"] and "approve" not in shown["allowed_actions"]
    assert run.run("case", "show", lapsed.twice)["status"] == "closed"
    assert run.run("case", "show", lapsed.once, "--at", days_ago(2))["status"] == (
        "awaiting_merchant"
    )
    waiting = run.run("case", "list", "--merchant", "shop-1", "--status", "awaiting_merchant")
    assert [r["case_id"] for r in waiting] == [people.cases["shop-1"]]
    order = run.run("order", "show", "KS-9")
    assert [p["action"] for p in order["pending_clock"]] == ["auto_approve", "auto_close"]
    text = CliRunner().invoke(cli, ["--store", store_url, "case", "show", lapsed.once]).stdout
    assert "awaiting_buyer_shipment" in text.splitlines()[0]
    assert "the clock: auto_approve fell due" in text and "allowed now: refund, ship-back" in text

    lines = [
        {"action": "case show", "case_id": lapsed.twice},
        {"action": "case list", "status": "awaiting_buyer_shipment"},
        {"action": "order show", "order_id": "KS-8"},
    ]
    code, out, _ = run_batch(store_url, "\n".join(json.dumps(x) for x in lines) + "\n")
    assert code == 0
    assert out[0]["result"]["status"] == "closed"
    assert [r["case_id"] for r in out[1]["result"]] == [lapsed.once]
    assert out[2]["result"]["pending_clock"][0]["to"] == "awaiting_buyer_shipment"

    dashboard_json = run.run("report", "dashboard", "--merchant", "shop-1", "--catch-up")
    assert dashboard_json["open_cases"]["by_status"] == {
        "awaiting_buyer_shipment": 1,
        "awaiting_merchant": 1,
    }
    assert people.events() == before

    # The action the read offered succeeds.
    shipped = run.run(
        "case", "ship-back", lapsed.once, "--carrier", "SF", "--waybill", "W9", "--by", "buyer-1"
    )
    assert shipped["status"] == "awaiting_merchant_receipt"
