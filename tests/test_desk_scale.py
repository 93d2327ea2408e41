"""The desk with a thousand open cases, on both backends: `case list`'s search, filters, sort by
deadline and keyset pages (engine, HTTP and the desk's Cases page agree), the static files'
compression and caching, and a refused action's wording."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from aftersales.commands.cli.main import cli
from aftersales.commands.desk.static_files import IMMUTABLE, assets
from aftersales.commands.http.app import create_app
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ApproveCase, ListCases, new_case_id
from aftersales.engine.domain.errors import BadInput
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector
from tests.people import People
from tests.test_desk import sign_in

MANY = 1_010
# The last few cases' 48 hours have passed with no tick run: every read shows them as the clock
# leaves them (refunded, so no longer open), the case index still has them awaiting the merchant.
LAPSED = 10
OPEN = MANY - LAPSED + 1  # and People's own case on KS-1
REASONS = ("quality.broken", "logistics.late", "buyer.changed_mind")
NOW = datetime.now(UTC)
# A row of the Cases page: its case, whether overdue, its time left.
ROW = re.compile(r'<tr data-case="([0-9a-f-]{36})">\s*<td class="(\w+)">([^<]*)<')


def generated(n: int) -> str:
    """History lines for ``n`` delivered orders of shop-1, each with a case opened on it: the
    openings spread over the last 47 hours, so some deadlines (48 h to answer) fall within a
    day and most later, and the last ``LAPSED`` 50 hours ago, their deadlines passed; reasons
    and buyers in turns."""
    lines = []
    for i in range(n):
        if i < n - LAPSED:
            opened = NOW - timedelta(minutes=5 + (i * 2_800 // n))  # 5 min to ~47 h ago
        else:
            opened = NOW - timedelta(hours=50, minutes=i - (n - LAPSED))
        order = f"BK-{i:05d}"
        lines += [
            {
                "action": "order place",
                "order_id": order,
                "merchant": "shop-1",
                "buyer": f"buyer-{i % 7}",
                "line": ["SKU-A:1:10.00"],
                "at": (NOW - timedelta(days=7)).isoformat(),
                "by": "ops",
            },
            {
                "action": "order deliver",
                "order_id": order,
                "at": (NOW - timedelta(days=6)).isoformat(),
                "by": "ops",
            },
            {
                "action": "case open",
                "order_id": order,
                "type": "refund_only",
                "reason": REASONS[i % 3],
                "amount": "10.00",
                "at": opened.isoformat(),
                "command_id": f"bk-{i}",
            },
        ]
    return "\n".join(json.dumps(line) for line in lines) + "\n"


def bk(i: int) -> str:
    return str(new_case_id(None, f"bk-{i}"))


@pytest.fixture
def many(engine: Engine, store_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, People]]:
    people = People(engine)
    path = tmp_path / "history.jsonl"
    path.write_text(generated(MANY))
    result = CliRunner().invoke(
        cli, ["--store", store_url, "import-history", str(path), "--chunk", "500", "--json"]
    )
    report = json.loads(result.stdout)
    assert report["failed"] == 0 and report["ok"] == 3 * MANY, report["errors"][:3]
    Projector(engine.store).catch_up(VIEWS)
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:
        yield client, people


@pytest.fixture
def few(engine: Engine, store_url: str) -> Iterator[tuple[TestClient, People]]:
    """The desk over People's cases alone, for what needs no thousand cases."""
    people = People(engine)
    Projector(engine.store).catch_up(VIEWS)
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:
        yield client, people


def lapsed() -> set[str]:
    return {bk(i) for i in range(MANY - LAPSED, MANY)}


def due_key(row: dict[str, Any]) -> tuple[bool, str, str, str]:
    # Listed by the deadline the case index holds: one the clock has taken (shown so, a tick to
    # record it) is the one that was due.
    pending = row["pending_clock"]
    due = pending[0]["due_at"] if pending else row["due_at"]
    return (due is None, due or "", row["opened_at"], row["case_id"])


def test_pages_by_key_list_every_case_once_in_deadline_order(
    many: tuple[TestClient, People], engine: Engine
) -> None:
    whole = engine.handle(ListCases(merchant="shop-1", open=True, sort="due"))
    assert len(whole) == OPEN and not lapsed() & {r["case_id"] for r in whole}
    assert [due_key(r) for r in whole] == sorted(due_key(r) for r in whole)
    for order in ("due", "opened"):
        paged: list[dict[str, Any]] = []
        after = None
        while True:
            page = engine.handle(
                ListCases(merchant="shop-1", open=True, sort=order, limit=137, after=after)
            )
            paged += page
            if len(page) < 137:
                break
            after = page[-1]["case_id"]
        assert paged == engine.handle(ListCases(merchant="shop-1", open=True, sort=order))
    # The old order without sort: opened first; with due_before: the deadline's.
    every = engine.handle(ListCases(merchant="shop-1"))
    assert len(every) == MANY + 1
    assert every == sorted(every, key=lambda r: (r["opened_at"], r["case_id"]))
    assert {r["case_id"] for r in every if r["status"] == "refunded"} == lapsed()
    with pytest.raises(BadInput, match=r"no case .* to continue after"):
        engine.handle(ListCases(after=str(new_case_id(None, "nobody"))))


def test_search_and_filters(many: tuple[TestClient, People], engine: Engine) -> None:
    def ids(**options: Any) -> set[str]:
        return {r["case_id"] for r in engine.handle(ListCases(merchant="shop-1", **options))}

    one = bk(42)
    assert ids(search="BK-00042") == {one}  # an order id
    assert ids(search=one[:8]) == {one}  # a case id's start
    assert ids(search=one[:8].upper()) == {one}
    assert len(ids(search="buyer-3")) == len(range(3, MANY, 7))  # a buyer id
    assert ids(search="BK-0004") == set()  # an order id is whole
    _, people = many
    quality = ids(reason="quality")  # People's case: quality.colour_difference
    assert ids(reason="quality.broken") == {bk(i) for i in range(0, MANY, 3)}
    assert quality == ids(reason="quality.broken") | {people.cases["shop-1"]}
    assert ids(reason="quality.") == quality
    assert ids(reason="qual") == set() and ids(reason="quality.br") == set()
    assert ids(reason="logistics.late") == {bk(i) for i in range(1, MANY, 3)}
    engine.handle(ApproveCase(case_id=bk(0)))  # refunded: closed to `open`
    assert bk(0) not in ids(open=True) and bk(0) in ids()
    assert ids(status="refunded") == {bk(0)} | lapsed()  # the clock's, shown before a tick
    soon = NOW + timedelta(hours=24)
    due_soon = engine.handle(ListCases(merchant="shop-1", due_before=soon.isoformat()))
    # By the deadline the index holds (what a tick by then fires), each shown as of now.
    held = [due_key(r)[1] for r in due_soon]
    assert due_soon and all(d <= soon.isoformat() for d in held) and held == sorted(held)
    assert lapsed() <= {r["case_id"] for r in due_soon}


def test_the_desk_pages_through_a_thousand_open_cases(many: tuple[TestClient, People]) -> None:
    client, people = many
    sign_in(client, people, "staff-1")
    seen: list[str] = []
    url: str | None = "/desk/cases"
    pages = 0
    lefts: list[str] = []
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.text
        rows = re.findall(ROW, page.text)
        assert 0 < len(rows) <= 50
        seen += [r[0] for r in rows]
        lefts += [r[2] for r in rows if r[1] == "overdue"]
        found = re.search(r'href="([^"]+)" rel="next"', page.text)
        url = found.group(1).replace("&amp;", "&") if found else None
        pages += 1
    assert pages == (OPEN + 49) // 50
    assert len(seen) == len(set(seen)) == OPEN  # every open case once, none the clock closed
    # Least time left first: the oldest openings lead, the newest close the list.
    assert seen[0] == bk(MANY - LAPSED - 1) and seen[-1] == people.cases["shop-1"]
    assert lefts == []  # a deadline passed is shown taken, not overdue
    assert "1\N{EN DASH}50, more follow" in client.get("/desk/cases").text
    # Search, filters, and bad input.
    only = client.get("/desk/cases", params={"q": "BK-00007"}).text
    assert re.findall(r'data-case="([0-9a-f-]{36})"', only) == [bk(7)]
    by_buyer = client.get("/desk/cases", params={"q": "buyer-2", "reason": "logistics"}).text
    assert set(re.findall(r'data-case="([0-9a-f-]{36})"', by_buyer)) <= {
        bk(i) for i in range(MANY) if i % 7 == 2 and i % 3 == 1
    }
    # Past their deadline, no tick run: listed as the clock leaves them (refunded, not open).
    overdue = client.get("/desk/cases", params={"due": "overdue", "status": "all"}).text
    assert set(re.findall(r'data-case="([0-9a-f-]{36})"', overdue)) == lapsed()
    assert "refunded" in overdue
    assert "data-case" not in client.get("/desk/cases", params={"due": "overdue"}).text
    assert client.get("/desk/cases", params={"due": "soon"}).status_code == 422
    assert client.get("/desk/cases", params={"status": "bogus"}).status_code == 422
    # A merchant's staff never list another merchant's cases, whatever they ask.
    other = client.get("/desk/cases", params={"merchant": "shop-2", "status": "all"}).text
    assert people.cases["shop-2"] not in other
    # The same options over HTTP, with the API's keys.
    auth = people.auth("staff-1")
    asked = {"open": "true", "sort": "due", "limit": "3"}
    first = client.get("/v1/cases", params=asked, headers=auth)
    assert first.status_code == 200, first.text
    assert [r["case_id"] for r in first.json()] == seen[:3]
    after = client.get(
        "/v1/cases",
        params={"open": "true", "sort": "due", "limit": 3, "after": seen[2]},
        headers=auth,
    )
    assert [r["case_id"] for r in after.json()] == seen[3:6]
    searched = client.get("/v1/cases", params={"search": bk(9)[:6]}, headers=auth).json()
    assert bk(9) in [r["case_id"] for r in searched]
    unknown = str(new_case_id(None, "nobody"))
    assert client.get("/v1/cases", params={"after": unknown}, headers=auth).status_code == 422


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # files, not the store
def test_static_files_gzipped_and_cached_by_content(few: tuple[TestClient, People]) -> None:
    client, people = few
    sign_in(client, people, "staff-1")
    page = client.get("/desk/rates").text
    version = assets()["echarts.min.js"].version
    assert f'src="/desk/static/echarts.min.js?v={version}"' in page
    assert re.search(r'href="/desk/static/desk\.css\?v=[0-9a-f]{12}"', page)
    raw = client.get(
        f"/desk/static/echarts.min.js?v={version}",
        headers={"Accept-Encoding": "gzip"},
    )
    assert raw.headers["content-encoding"] == "gzip"
    assert int(raw.headers["content-length"]) < 400_000  # of about 1 MB
    assert raw.headers["cache-control"] == IMMUTABLE == "public, max-age=31536000, immutable"
    assert raw.headers["vary"] == "Accept-Encoding"
    assert len(raw.content) > 1_000_000  # decoded by the client
    assert gzip.decompress(assets()["echarts.min.js"].gzipped or b"") == raw.content
    # Without gzip: the bytes as they are. Without the current hash: revalidated every time.
    plain = client.get("/desk/static/desk.css", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.headers["cache-control"] == "no-cache"
    etag = plain.headers["etag"]
    again = client.get("/desk/static/desk.css", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/desk/static/../web.py").status_code == 404
    assert client.get("/desk/static/nothing.js").status_code == 404
    # The page names its language and a CJK face.
    assert '<html lang="en">' in page
    assert '"Noto Sans CJK SC", "Noto Sans SC", "PingFang SC", "Microsoft YaHei"' in plain.text


def test_a_refused_action_shows_the_case_as_it_is_now(few: tuple[TestClient, People]) -> None:
    client, people = few
    own = people.cases["shop-1"]
    sign_in(client, people, "staff-1")
    opened = client.get(f"/desk/cases/{own}").text
    version = re.search(r'data-version="(\d+)"', opened)
    assert version is not None
    approved = client.post(
        f"/v1/cases/{own}/approve",
        json={},
        headers={"Origin": "http://testserver", "If-Match": f'"{version.group(1)}"'},
    )
    assert approved.status_code == 200, approved.text
    stale = client.post(
        f"/v1/cases/{own}/reject",
        json={"reason": "worn", "communication": "chat:1"},
        headers={"Origin": "http://testserver", "If-Match": f'"{version.group(1)}"'},
    )
    assert stale.status_code in (409, 412)
    # What the desk's script opens then: the fresh case, the refusal in the staff's words.
    shown = client.get(f"/desk/cases/{own}?seen={version.group(1)}&tried=reject").text
    assert (
        "This case changed since you opened it: it is now refunded. "
        "Your reject was not taken; below is the case as it stands now." in shown
    )
    assert f'<a href="/desk/cases/{own}">Reload</a>' in shown
    assert '<dd id="status">refunded</dd>' in shown
    fresh = re.search(r'data-version="(\d+)"|version (\d+)</small>', shown)
    assert fresh is not None and fresh.group(0) != f"version {version.group(1)}</small>"
    # Nothing tried: no notice. The zone without a cookie is named (the policy's +08:00).
    assert "not taken" not in client.get(f"/desk/cases/{own}").text
    sign_in(client, people, "auditor", zone="")
    assert "times in UTC+08:00" in client.get(f"/desk/cases/{own}").text
