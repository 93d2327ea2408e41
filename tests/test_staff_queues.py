"""Staff queues: a shop's roster and assignment mode are events on the shop; each case is
assigned as it is opened (round robin, or by rule), reassigned and claimed, each an event on
the case's assignment; lists by member, and each member's figures."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import pytest
from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    AddStaff,
    ApproveCase,
    AssignCase,
    ClaimCase,
    ListCases,
    OpenCase,
    RemoveStaff,
    SetAssignMode,
    ShowAssignment,
    ShowShop,
    Tick,
    WithdrawCase,
)
from aftersales.engine.domain.assignment import assignment_uuid, pick_member
from aftersales.engine.domain.errors import BadInput, Conflict, NotAllowed
from aftersales.engine.domain.shop import shop_uuid
from aftersales.projections.runner import Projector
from aftersales.projections.staff import Staff, staff_figures
from tests.conftest import T0, at, place_delivered


def open_case(
    engine: Engine, order_id: str, reason: str = "quality.colour", amount: str = "39.90"
) -> str:
    place_delivered(engine, order_id, lines=("MUG:1:39.90:home", "TOY:1:80.00:toys"))
    sku = "MUG" if amount == "39.90" else "TOY"
    case = engine.handle(
        OpenCase(
            order_id=order_id,
            type="return_refund",
            reason=reason,
            amount=amount,
            lines=[sku],
            command_id=f"open-{order_id}",
            at=at(days=3),
        )
    )
    return str(case["case_id"])


def assignee(engine: Engine, case_id: str) -> str | None:
    found: str | None = engine.handle(ShowAssignment(case_id=case_id))["assignee"]
    return found


def roster(engine: Engine, *members: str) -> None:
    for member in members:
        engine.handle(AddStaff(merchant_id="shop-1", member=member, at=at()))


def listed(engine: Engine, member: str) -> list[str]:
    Projector(engine.store).catch_up([Staff])
    return [r["case_id"] for r in engine.handle(ListCases(assignee=member))]


def test_a_shop_without_staff_assigns_nobody_and_the_roster_has_a_history(engine: Engine) -> None:
    case_id = open_case(engine, "KS-1")
    assert engine.handle(ShowAssignment(case_id=case_id))["assignee"] is None
    roster(engine, "staff-a")
    engine.handle(
        AddStaff(
            merchant_id="shop-1", member="staff-b", reasons=["quality"], up_to="50.00", at=at()
        )
    )
    engine.handle(SetAssignMode(merchant_id="shop-1", mode="by_rule", at=at()))
    engine.handle(RemoveStaff(merchant_id="shop-1", member="staff-a", at=at(), by="lead-1"))
    shop = engine.handle(ShowShop(merchant_id="shop-1"))
    assert shop["assign_mode"] == "by_rule"
    assert shop["staff"] == [
        {"member_id": "staff-b", "reasons": ["quality"], "up_to": "50.00", "skus": []}
    ]
    stored = engine.store.recorder.select_events(shop_uuid("shop-1"))
    assert [(e.topic.rpartition(":")[2], json.loads(e.state)["actor"]["id"]) for e in stored] == [
        ("ShopOpened", "shop-1"),
        ("StaffAdded", "shop-1"),
        ("StaffAdded", "shop-1"),
        ("AssignModeSet", "shop-1"),
        ("StaffRemoved", "lead-1"),
    ]
    with pytest.raises(NotAllowed, match="no staff member 'staff-a'"):
        engine.handle(RemoveStaff(merchant_id="shop-1", member="staff-a"))
    with pytest.raises(NotAllowed, match="by_rule already"):
        engine.handle(SetAssignMode(merchant_id="shop-1", mode="by_rule"))
    with pytest.raises(BadInput, match="reason"):
        engine.handle(AddStaff(merchant_id="shop-1", member="staff-c", reasons=["Quality!"]))


def test_cases_are_assigned_as_they_are_opened_spread_by_case_id(engine: Engine) -> None:
    roster(engine, "staff-a", "staff-b", "staff-c")
    shop = engine.find_shop("shop-1")
    assert shop is not None
    opened = [open_case(engine, f"KS-{n}") for n in range(1, 10)]
    got = {case_id: assignee(engine, case_id) for case_id in opened}
    # Each the member its id picks (no counter read), as recorded by the system at the opening.
    for case_id, member in got.items():
        assert (member, "round_robin") == (
            pick_member(shop, UUID(case_id), "quality.colour", shop_amount(), ["MUG"])
        )
    assert set(got.values()) <= {"staff-a", "staff-b", "staff-c"}
    assert len(set(got.values())) > 1
    first = engine.handle(ShowAssignment(case_id=opened[0]))
    assert first["history"] == [
        {
            "member": got[opened[0]],
            "how": "round_robin",
            "previous": None,
            "at": datetime.fromisoformat(at(days=3)).isoformat(),
            "by": "assignment",
        }
    ]
    # The opening and its assignment are one command: given again, nothing more is recorded.
    again = engine.handle(
        OpenCase(
            order_id="KS-1",
            type="return_refund",
            reason="quality.colour",
            amount="39.90",
            lines=["MUG"],
            command_id="open-KS-1",
            at=at(days=3),
        )
    )
    assert str(again["case_id"]) == opened[0]
    assert engine.handle(ShowAssignment(case_id=opened[0]))["version"] == 1


def shop_amount() -> Any:
    from decimal import Decimal

    return Decimal("39.90")


def test_by_rule_cases_go_to_the_members_whose_conditions_they_meet(engine: Engine) -> None:
    engine.handle(AddStaff(merchant_id="shop-1", member="quality-desk", reasons=["quality"]))
    engine.handle(
        AddStaff(
            merchant_id="shop-1", member="toys-desk", skus=["TOY"], up_to="100", reasons=["buyer"]
        )
    )
    engine.handle(SetAssignMode(merchant_id="shop-1", mode="by_rule"))
    mug = open_case(engine, "KS-1", reason="quality.colour")
    toy = open_case(engine, "KS-2", reason="buyer.changed_mind", amount="80.00")
    # Nobody's conditions: over the whole roster, as round robin.
    lost = open_case(engine, "KS-3", reason="logistics.damaged")
    shown = [engine.handle(ShowAssignment(case_id=c)) for c in (mug, toy, lost)]
    assert [(s["assignee"], s["how"]) for s in shown[:2]] == [
        ("quality-desk", "rule"),
        ("toys-desk", "rule"),
    ]
    assert shown[2]["how"] == "round_robin"


def test_staff_reassign_and_claim_and_lists_follow(engine: Engine) -> None:
    roster(engine, "staff-a", "staff-b")
    case_id = open_case(engine, "KS-1")
    first = assignee(engine, case_id)
    other = "staff-b" if first == "staff-a" else "staff-a"
    assert listed(engine, first or "") == [case_id]
    assert listed(engine, other) == []
    moved = engine.handle(AssignCase(case_id=case_id, member=other, by="lead-1", at=at(days=3.5)))
    assert (moved["assignee"], moved["how"], moved["version"]) == (other, "reassign", 2)
    assert moved["history"][-1]["previous"] == first
    assert listed(engine, other) == [case_id]
    assert listed(engine, first or "") == []
    # The case itself did not move: its version is the opening's.
    assert engine.handle(ApproveCase(case_id=case_id, expected_version=1, at=at(days=3.6)))
    taken = engine.handle(ClaimCase(case_id=case_id, by=first, at=at(days=3.7)))
    assert (taken["assignee"], taken["how"]) == (first, "claim")
    assert listed(engine, first or "") == [case_id]
    with pytest.raises(NotAllowed, match="already"):
        engine.handle(ClaimCase(case_id=case_id, by=first))
    with pytest.raises(NotAllowed, match="not on shop shop-1's staff"):
        engine.handle(ClaimCase(case_id=case_id, by="stranger"))
    with pytest.raises(BadInput, match="by is required"):
        engine.handle(ClaimCase(case_id=case_id))
    with pytest.raises(Conflict, match="assignment is at version 3"):
        engine.handle(AssignCase(case_id=case_id, member=other, expected_version=2))


def test_an_ended_case_is_in_no_ones_queue(engine: Engine) -> None:
    case_id = open_case(engine, "KS-1")  # before the shop had staff: nobody's
    roster(engine, "staff-a")
    claimed = engine.handle(ClaimCase(case_id=case_id, by="staff-a", at=at(days=3.1)))
    assert (claimed["how"], claimed["version"]) == ("claim", 1)
    engine.handle(WithdrawCase(case_id=case_id, at=at(days=3.2)))
    with pytest.raises(NotAllowed, match="no one's queue"):
        engine.handle(AssignCase(case_id=case_id, member="staff-a"))
    assert engine.store.load(assignment_uuid(UUID(case_id))) is not None


def test_each_members_figures_against_a_small_history(engine: Engine) -> None:
    """Three cases opened on day 3 (KS-1 at 0h, KS-2 at 1h, KS-3 at 2h): staff-a has KS-1,
    answered 2 hours after it opened, and KS-3, answered 6 hours after; staff-b has KS-2, which
    nobody answers and the clock approves at day 5 (a timeout), leaving it awaiting the buyer's
    shipment with a deadline ten days on. On day 16 KS-2's shipment deadline has passed
    (overdue, not yet ticked)."""
    roster(engine, "staff-a", "staff-b")
    ids = []
    for n, hour in ((1, 0), (2, 1), (3, 2)):
        place_delivered(engine, f"KS-{n}", lines=("MUG:1:39.90:home",))
        case = engine.handle(
            OpenCase(
                order_id=f"KS-{n}",
                type="return_refund",
                reason="quality.colour",
                amount="39.90",
                at=at(days=3, hours=hour),
            )
        )
        ids.append(str(case["case_id"]))
    for case_id, member in zip(ids, ("staff-a", "staff-b", "staff-a"), strict=True):
        if assignee(engine, case_id) != member:
            engine.handle(AssignCase(case_id=case_id, member=member, at=at(days=3, hours=3)))
    engine.handle(ApproveCase(case_id=ids[0], by="staff-a", at=at(days=3, hours=2)))
    engine.handle(ApproveCase(case_id=ids[2], by="staff-a", at=at(days=3, hours=8)))
    engine.handle(Tick(now=at(days=5, hours=2)))
    # staff-a's two cases: shipped back by neither buyer, the clock closes them on day 13+.
    from aftersales.projections.dashboard import Dashboard

    Projector(engine.store).catch_up([Dashboard, Staff])
    now = datetime.fromisoformat(at(days=16))
    figures = staff_figures(engine.store, "shop-1", T0, now, now)
    assert figures == [
        {
            "merchant_id": "shop-1",
            "member": "staff-a",
            "open": 2,
            "overdue": 2,
            "opened": 2,
            "median_first_response_seconds": 4 * 3600,
            "timeouts": 0,
        },
        {
            "merchant_id": "shop-1",
            "member": "staff-b",
            "open": 1,
            "overdue": 1,
            "opened": 1,
            "median_first_response_seconds": None,
            "timeouts": 1,
        },
    ]


def test_the_command_line_and_batch_reach_the_queues(store_url: str) -> None:
    runner = CliRunner()

    def run(*args: str, code: int = 0, stdin: str | None = None) -> Any:
        result = runner.invoke(cli, ["--store", store_url, *args, "--json"], input=stdin)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        return [json.loads(line) for line in result.stdout.splitlines()]

    (shop,) = run("shop", "add-staff", "shop-1", "--member", "staff-a", "--reasons", "quality")
    assert shop["staff"][0]["reasons"] == ["quality"]
    lines = "\n".join(
        json.dumps(line)
        for line in (
            {"action": "shop add-staff", "merchant_id": "shop-1", "member": "staff-b"},
            {"action": "shop set-assignment", "merchant_id": "shop-1", "mode": "by_rule"},
        )
    )
    assert [r.get("ok", True) for r in run("batch", "-", stdin=lines)] == [True, True]
    with Engine(store_url) as engine:
        case_id = open_case(engine, "KS-1")
    (shown,) = run("case", "assignment", case_id)
    assert shown["how"] == "rule"
    other = "staff-b" if shown["assignee"] == "staff-a" else "staff-a"
    (moved,) = run("case", "assign", case_id, "--member", other, "--by", "lead")
    assert moved["assignee"] == other
    (rows,) = run("case", "list", "--assignee", other)
    assert [r["case_id"] for r in rows] == [case_id]
    (claimed,) = run("case", "claim", case_id, "--by", shown["assignee"])
    assert claimed["how"] == "claim"
    (rows,) = run("case", "list", "--assignee", other)
    assert rows == []
    (refused,) = run("case", "claim", case_id, "--by", "stranger", code=3)
    assert "not on shop shop-1's staff" in refused["error"]["message"]
    (report,) = run("report", "staff", "--merchant", "shop-1", "--since", at(), "--until", at(9))
    members = [(f["member"], f["open"], f["opened"]) for f in report["members"]]
    assert members == [(shown["assignee"], 1, 1)]


def test_over_http_a_shops_staff_assign_and_claim_in_their_own_shop_only(
    engine: Engine, store_url: str
) -> None:
    from fastapi.testclient import TestClient

    from aftersales.commands.http.app import create_app
    from tests.people import People

    people = People(engine)  # shop-1's case opened before it had staff: nobody's
    case_1, case_2 = people.cases["shop-1"], people.cases["shop-2"]
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:

        def post(who: str, path: str, sent: dict[str, Any]) -> Any:
            return client.post(path, json=sent, headers=people.auth(who))

        member = {"member": "staff-1"}
        assert post("staff-1", "/v1/shops/shop-1/add-staff", member).status_code == 200
        assert post("staff-2", "/v1/shops/shop-1/add-staff", member).status_code == 404
        assert post("buyer-1", "/v1/shops/shop-1/add-staff", member).status_code == 403
        assert post("ops", "/v1/shops/shop-1/add-staff", {"member": "staff-9"}).status_code == 200
        claimed = post("staff-1", f"/v1/cases/{case_1}/claim", {})
        assert claimed.status_code == 200, claimed.text
        assert (claimed.json()["assignee"], claimed.json()["how"]) == ("staff-1", "claim")
        # Another shop's staff: as if there were no such case; a buyer may not; the operator
        # reassigns; a member of another shop's staff is not on this one's roster.
        assert post("staff-2", f"/v1/cases/{case_1}/claim", {}).status_code == 404
        assert post("staff-2", f"/v1/cases/{case_1}/assign", member).status_code == 404
        assert post("buyer-1", f"/v1/cases/{case_1}/claim", {}).status_code == 403
        assert post("staff-2", f"/v1/cases/{case_2}/claim", {}).status_code == 409
        moved = post("ops", f"/v1/cases/{case_1}/assign", {"member": "staff-9"})
        assert moved.status_code == 200, moved.text
        assert moved.json()["history"][-1] == {
            **moved.json()["history"][-1],
            "member": "staff-9",
            "how": "reassign",
            "previous": "staff-1",
            "by": "ops",
        }

        def listed(who: str, query: str) -> list[str]:
            answer = client.get(f"/v1/cases?{query}", headers=people.auth(who))
            assert answer.status_code == 200, answer.text
            return [r["case_id"] for r in answer.json()]

        assert listed("staff-1", "assignee=staff-9") == [case_1]
        assert listed("staff-1", "assignee=staff-1") == []
        assert listed("staff-2", "assignee=staff-9") == []  # not its shop's

        # Each member's figures: a shop's staff see their own shop's, the reporter every
        # shop's, a buyer none.
        ran = CliRunner().invoke(cli, ["--store", store_url, "project", "run"])
        assert ran.exit_code == 0, ran.output
        figures = client.get("/v1/reports/staff", headers=people.auth("staff-1"))
        assert figures.status_code == 200, figures.text
        rows = {(r["merchant_id"], r["member"]): r for r in figures.json()["members"]}
        assert rows[("shop-1", "staff-9")]["open"] == 1
        assert {shop for shop, _ in rows} == {"shop-1"}
        other = client.get("/v1/reports/staff?merchant=shop-2", headers=people.auth("staff-1"))
        assert other.status_code == 403
        assert client.get("/v1/reports/staff", headers=people.auth("reporter")).status_code == 200
        assert client.get("/v1/reports/staff", headers=people.auth("buyer-1")).status_code == 403


def test_the_desk_shows_a_member_their_own_cases_first(engine: Engine, store_url: str) -> None:
    from fastapi.testclient import TestClient

    from aftersales.commands.http.app import create_app
    from tests.people import People
    from tests.test_desk import sign_in

    people = People(engine)  # shop-1's first case: opened before it had staff
    engine.handle(AddStaff(merchant_id="shop-1", member="staff-1"))
    engine.handle(AddStaff(merchant_id="shop-1", member="staff-9"))
    first = people.cases["shop-1"]
    engine.handle(ClaimCase(case_id=first, by="staff-9"))
    people.place("KS-3", "shop-1", "buyer-1")
    mine = people.open("KS-3")
    if engine.handle(ShowAssignment(case_id=mine))["assignee"] != "staff-1":
        engine.handle(ClaimCase(case_id=mine, by="staff-1"))
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:
        sign_in(client, people, "staff-1")
        own = client.get("/desk/cases")
        assert own.status_code == 200, own.text
        assert mine in own.text and first not in own.text
        assert '<option value="me" selected>' in own.text
        everyone = client.get("/desk/cases?assignee=").text
        assert mine in everyone and first in everyone
        theirs = client.get("/desk/cases?assignee=staff-9").text
        assert first in theirs and mine not in theirs
        # The operator is on no roster: every case, filtered by a member when asked.
        sign_in(client, people, "ops")
        assert first in client.get("/desk/cases").text
        assert mine not in client.get("/desk/cases?assignee=staff-9").text
