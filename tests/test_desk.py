"""The desk's pages through the application (FastAPI's TestClient), on both backends: signing
in and out, what each role sees, a case page's buttons, actions posted with the session
cookie, return rates and their CSV, live refresh's position."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from aftersales.commands.desk import views
from aftersales.commands.desk.session import COOKIE, session_key
from aftersales.commands.desk.views import time_left
from aftersales.commands.http.app import create_app
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ApproveCase, EscalateCase, RateCase, RejectCase
from aftersales.projections.dashboard import dashboard
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector
from tests.people import People, days_ago

ORIGIN = {"Origin": "http://testserver"}


@pytest.fixture
def desk(engine: Engine, store_url: str) -> Iterator[tuple[TestClient, People]]:
    people = People(engine)
    Projector(engine.store).catch_up(VIEWS)
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:
        yield client, people


def sign_in(client: TestClient, people: People, pid: str, zone: str = "Asia%2FShanghai") -> None:
    client.cookies.clear()
    response = client.post(
        "/login",
        content=f"key={people.keys[pid]}&zone={zone}",
        headers={**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"
    assert people.keys[pid] not in response.text


def test_time_left_as_people_read_it() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert time_left(now + timedelta(hours=3, minutes=12, seconds=30), now) == (
        "3 h 12 min left",
        False,
    )
    assert time_left(now + timedelta(days=2, hours=5), now) == ("2 d 5 h left", False)
    assert time_left(now + timedelta(seconds=20), now) == ("1 min left", False)
    assert time_left(now - timedelta(minutes=45), now) == ("45 min overdue", True)
    assert time_left(now, now) == ("0 min overdue", True)


def test_sign_in_cookie_and_sign_out(desk: tuple[TestClient, People]) -> None:
    client, people = desk
    # Not signed in: the desk sends you to the form.
    response = client.get("/", follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/login")
    form = client.get("/login")
    assert form.status_code == 200 and 'type="password"' in form.text
    # A wrong key, or a form posted from another site, sets no cookie.
    bad = client.post("/login", data={"key": "ask_nope"}, headers=ORIGIN)
    assert bad.status_code == 401 and "unknown, revoked or expired key" in bad.text
    elsewhere = client.post(
        "/login", data={"key": people.keys["staff-1"]}, headers={"Origin": "http://evil.test"}
    )
    assert elsewhere.status_code == 403
    with_header = client.post(
        "/login",
        data={"key": people.keys["staff-1"]},
        headers={**ORIGIN, **people.auth("staff-2")},
    )
    assert with_header.status_code == 400
    assert COOKIE not in client.cookies
    # The right key: an HTTP-only, SameSite=Strict cookie, and the key in no page.
    response = client.post(
        "/login",
        data={"key": people.keys["staff-1"], "zone": "Asia/Shanghai"},
        headers=ORIGIN,
        follow_redirects=False,
    )
    assert response.status_code == 303
    set_cookie = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    session = next(c for c in set_cookie if c.startswith(f"{COOKIE}="))
    assert "httponly" in session.lower() and "samesite=strict" in session.lower()
    page = client.get("/")
    assert page.status_code == 200
    assert people.keys["staff-1"] not in page.text
    assert "staff-1" in page.text
    # Signing out is a POST from the site itself; the cookie is gone after it.
    assert client.post("/logout", follow_redirects=False).status_code == 403
    out = client.post("/logout", headers=ORIGIN, follow_redirects=False)
    assert (out.status_code, out.headers["location"]) == (303, "/login")
    assert client.get("/", follow_redirects=False).status_code == 303


def test_merchant_sees_its_own_desk_and_cases_only(desk: tuple[TestClient, People]) -> None:
    client, people = desk
    own, other = people.cases["shop-1"], people.cases["shop-2"]
    sign_in(client, people, "staff-1")
    page = client.get("/")
    assert page.status_code == 200
    assert f'data-case="{own}"' in page.text and other not in page.text
    # Opened just now, the merchant has 48 h to answer: not red yet.
    assert 'class="left">1 d 23 h left<' in page.text
    assert client.get("/?merchant=shop-2").status_code == 403
    # The live part and its position.
    assert f'data-case="{own}"' in client.get("/desk/live").text
    assert isinstance(client.get("/desk/position").json()["position"], int)
    # The case page: facts, timeline in the chosen zone, a button per allowed action.
    case = client.get(f"/desk/cases/{own}")
    assert case.status_code == 200
    assert 'data-action="approve"' in case.text and 'data-action="reject"' in case.text
    assert 'data-action="withdraw"' not in case.text  # the buyer's
    assert "CST" in case.text  # Asia/Shanghai
    # Another merchant's case is not there at all.
    refused = client.get(f"/desk/cases/{other}")
    assert refused.status_code == 404 and f"no case {other}" in refused.text


def test_without_the_browsers_zone_the_desk_shows_the_display_zone(
    desk: tuple[TestClient, People], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sign-in that sends no zone gets the zone every person's output uses: the policy's
    display_zone (+08:00), or $AFTERSALES_TZ where the server runs."""
    client, people = desk
    own = people.cases["shop-1"]
    sign_in(client, people, "staff-1", zone="")
    assert "UTC+08:00" in client.get(f"/desk/cases/{own}").text
    monkeypatch.setenv("AFTERSALES_TZ", "+05:00")
    with TestClient(create_app(people.engine.store.url.text, failure_limit=10)) as other:
        sign_in(other, people, "staff-1", zone="")
        assert "UTC+05:00" in other.get(f"/desk/cases/{own}").text


def test_actions_with_the_cookie_act_once_and_only_from_the_site(
    desk: tuple[TestClient, People],
) -> None:
    client, people = desk
    own = people.cases["shop-1"]
    sign_in(client, people, "staff-1")
    before = people.events()
    # The cookie alone, with no Origin (as a cross-site form would be, were the cookie sent):
    # no principal, nothing appended.
    forged = client.post(f"/v1/cases/{own}/approve", json={})
    assert forged.status_code == 401
    assert people.events() == before
    said = client.post(
        f"/v1/cases/{own}/message",
        json={"text": "<b>refunded</b> today"},
        headers={**ORIGIN, "Idempotency-Key": "k-0"},
    )
    assert said.status_code == 200, said.text
    before = people.events()
    # The cookie reaches what the key reaches, no further: another merchant's case is not there.
    other = people.cases["shop-2"]
    assert client.get(f"/v1/cases/{other}").status_code == 404
    elsewhere = client.post(f"/v1/cases/{other}/approve", json={}, headers=ORIGIN)
    assert elsewhere.status_code == 404
    assert people.events() == before
    # From the site, twice with one Idempotency-Key (a double click): one approval.
    headers = {**ORIGIN, "Idempotency-Key": "k-1", "If-Match": '"2"'}
    first = client.post(f"/v1/cases/{own}/approve", json={}, headers=headers)
    assert first.status_code == 200, first.text
    after = people.events()
    again = client.post(f"/v1/cases/{own}/approve", json={}, headers=headers)
    assert again.status_code == 200 and again.json() == first.json()
    assert people.events() == after > before
    # A refused action says the engine's reason; the case page offers what is allowed now.
    refused = client.post(
        f"/v1/cases/{own}/reject",
        json={"reason": "late", "communication": "x"},
        headers={**ORIGIN, "Idempotency-Key": "k-2"},
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["message"]
    page = client.get(f"/desk/cases/{own}").text
    assert 'data-action="approve"' not in page
    assert "&lt;b&gt;refunded&lt;/b&gt; today" in page  # escaped, never markup
    assert "<td>39.90</td>" in page  # the refund in the case's ledger
    # The desk moves once the projections do.
    position = client.get("/desk/position").json()["position"]
    assert f'data-case="{own}"' in client.get("/").text
    Projector(people.engine.store).catch_up(VIEWS)
    assert client.get("/desk/position").json()["position"] > position
    assert f'data-case="{own}"' not in client.get("/").text
    # The actor recorded is the session's principal.
    audit = client.get(f"/v1/cases/{own}/audit").json()
    assert audit["events"][-1]["actor"] == {"role": "merchant", "id": "staff-1"}


def test_roles_on_the_desk(desk: tuple[TestClient, People]) -> None:
    client, people = desk
    own, other = people.cases["shop-1"], people.cases["shop-2"]
    # An auditor: a case's timeline and its export, no facts and no buttons, no reports.
    sign_in(client, people, "auditor")
    page = client.get(f"/desk/cases/{other}")
    assert page.status_code == 200 and 'id="timeline"' in page.text
    assert 'id="facts"' not in page.text and "data-action" not in page.text
    assert client.get(f"/v1/cases/{other}/audit").status_code == 200
    assert client.get("/desk/rates").status_code == 403
    # A reporter: every merchant's figures, ranked; no case pages.
    sign_in(client, people, "reporter")
    assert client.get(f"/desk/cases/{own}").status_code == 403
    desk_page = client.get("/?merchant=shop-2")
    assert desk_page.status_code == 200 and 'value="shop-2" selected' in desk_page.text
    # An agent: the disputes waiting for the platform, and the platform's buttons on a case.
    sign_in(client, people, "agent")
    assert own not in client.get("/").text
    people.engine.handle(
        RejectCase(case_id=own, reason="worn", communication="chat:1", by="staff-1")
    )
    people.engine.handle(EscalateCase(case_id=own, claim="unjustified_rejection", by="buyer-1"))
    disputes = client.get("/?merchant=shop-1")
    assert f'data-case="{own}"' in disputes.text and other not in disputes.text
    assert own not in client.get("/?merchant=shop-2").text
    buttons = client.get(f"/desk/cases/{own}").text
    assert 'data-action="rule"' in buttons and 'data-action="approve"' not in buttons
    # A buyer: its own cases, and the buyer's buttons on them.
    sign_in(client, people, "buyer-1")
    mine = client.get("/")
    assert own in mine.text and other not in mine.text
    mine_case = client.get(f"/desk/cases/{own}").text
    assert 'data-action="message"' in mine_case and 'data-action="rule"' not in mine_case
    assert client.get(f"/desk/cases/{other}").status_code == 404


def test_return_rates_page_and_csv(desk: tuple[TestClient, People]) -> None:
    client, people = desk
    sign_in(client, people, "staff-1")
    # The orders were delivered five days ago: the weeks up to today have them.
    today = datetime.now(UTC).date().isoformat()
    page = client.get(f"/desk/rates?weeks=4&until={today}")
    assert page.status_code == 200
    found = re.search(r'id="weekly-data">(.*?)</script>', page.text, re.S)
    assert found is not None
    weekly = json.loads(found.group(1))
    assert len(weekly) == 4
    assert sum(w["orders"] for w in weekly) == 1  # shop-1's one delivered order
    assert any(w["return_rate"] == 1.0 for w in weekly)
    assert "/desk/static/echarts.min.js" in page.text
    assert client.get("/desk/rates?merchant=shop-2").status_code == 403
    assert client.get("/desk/rates?until=2026-13-01").status_code == 422
    assert client.get("/desk/rates?by=merchant").status_code == 422  # one merchant: no ranking
    response = client.get(f"/desk/rates.csv?by=sku&weeks=4&until={today}")
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["key"] for r in rows} == {"CASE-RED", "CASE-BLUE"}
    assert "attachment" in response.headers["content-disposition"]
    # The platform's view ranks merchants.
    sign_in(client, people, "reporter")
    ranked = client.get(f"/desk/rates.csv?weeks=4&until={today}T23:59:59Z")
    keys = [r["key"] for r in csv.DictReader(io.StringIO(ranked.text))]
    assert sorted(keys) == ["shop-1", "shop-2"]
    # The chart library is served by the application itself.
    script = client.get("/desk/static/echarts.min.js")
    assert script.status_code == 200 and len(script.content) > 500_000


def test_desk_figures_agree_with_the_dashboard_report(engine: Engine) -> None:
    """The desk counts in SQL what the dashboard report counts row by row: the same figures."""
    people = People(engine)
    lapsed = []
    for n in range(3, 6):
        people.place(f"KS-{n}", "shop-1", "buyer-1")
        lapsed.append(people.open(f"KS-{n}", at=days_ago(4)))  # past its deadline
    engine.handle(ApproveCase(case_id=people.cases["shop-1"], by="staff-1"))
    engine.handle(RateCase(case_id=people.cases["shop-1"], score=4, by="buyer-1"))
    Projector(engine.store).catch_up(VIEWS)
    now = datetime.now(UTC)
    for merchant in ("shop-1", "shop-2", None):
        mine = views.desk(engine.store, merchant, now)
        report = dashboard(engine.store, merchant, now)
        assert mine["by_status"] == report["open_cases"]["by_status"]
        assert mine["open"] == report["open_cases"]["total"]
        assert mine["overdue"] == report["deadlines"]["overdue"]
        assert mine["due_within_24h"] == report["deadlines"]["due_within_24h"]
        assert mine["rating"] == report["rating"]
    shop = views.desk(engine.store, "shop-1", now)
    # As of now the three reviews have lapsed and the clock approved (so refunded) them, ticked
    # or not: none waits for the merchant; their deadlines are the tick's still to record.
    assert (shop["overdue"], shop["waiting"], shop["rating"]["count"]) == (3, 0, 1)
    assert shop["todo"] == [] and shop["by_status"] == {}
    exact = views.desk(engine.store, "shop-1", now, lambda ids: engine.cases_as_of(ids, now))
    assert (exact["by_status"], exact["waiting"], exact["todo"]) == ({}, 0, [])
    # A case waiting with a deadline still running, and one with none, which comes after.
    people.place("KS-6", "shop-1", "buyer-1")
    fresh = people.open("KS-6")
    Projector(engine.store).catch_up(VIEWS)
    first = lapsed[0]
    engine.store.write(
        [
            (
                "UPDATE {t}proj_dashboard_cases SET due_at = NULL, due_action = NULL "
                "WHERE case_id = ?",
                [first],
            )
        ]
    )
    listed = views.todo(engine.store, "shop-1", now)
    assert [t.case_id for t in listed] == [fresh, first]
    assert (listed[-1].left, listed[-1].overdue) == ("no deadline", False)
    assert listed[0].overdue is False
    assert shop["money"]["refunded_by_merchant"] == "39.90"


@pytest.mark.parametrize(
    ("method", "headers", "counts"),
    [
        ("GET", {}, True),  # reading: SameSite=Strict is enough
        ("POST", {"origin": "http://desk.test"}, True),
        ("POST", {"referer": "http://desk.test/desk/cases/x"}, True),  # no Origin: the Referer
        ("POST", {}, False),
        ("POST", {"origin": "null"}, False),
        ("POST", {"origin": "http://evil.test"}, False),
        ("POST", {"origin": "https://desk.test"}, True),  # the same host, behind TLS
        ("POST", {"origin": "http://desk.test.evil.test"}, False),
        ("DELETE", {"referer": "http://evil.test/desk.test"}, False),
    ],
)
def test_the_cookie_counts_only_from_the_site_itself(
    method: str, headers: dict[str, str], counts: bool
) -> None:
    from starlette.requests import Request

    token = "ads_0123456789abcdef_" + "x" * 43
    raw = {"host": "desk.test", "cookie": f"{COOKIE}={token}", **headers}
    scope = {
        "type": "http",
        "method": method,
        "path": "/",
        "headers": [(k.encode(), v.encode()) for k, v in raw.items()],
    }
    assert session_key(Request(scope)) == (token if counts else None)
