"""The desk in a real browser: Debian's Chromium, headless, driven by Playwright, against a real
`aftersales serve` process and a real `aftersales project run --follow` on PostgreSQL.

One server, one browser, one test: sign in as a merchant, see only its cases, approve one from
its case page with a double submit (one approval), watch the open desk drop it without a
reload, see the return-rate chart drawn with its points, be refused another merchant's case,
and fit a phone's screen. Screenshots go to ``test-artifacts/desk/`` (ignored by git), or to
``$AFTERSALES_SCREENSHOTS``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import OpenCase
from tests.conftest import place_delivered, recently
from tests.people import People
from tests.test_serve import ROOT, Server

if TYPE_CHECKING:
    # What `BrowserContext.add_cookies` takes; the public API does not name it.
    from playwright._impl._api_structures import SetCookieParam

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ.get("AFTERSALES_SCREENSHOTS", ROOT / "test-artifacts" / "desk"))

pytestmark = [
    pytest.mark.parametrize("store_url", ["postgres"], indirect=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (see .ci/run)"),
]


@pytest.fixture
def live_desk(engine: Engine, store_url: str, tmp_path: Path) -> Iterator[tuple[str, People]]:
    """A store with two merchants' cases, served, its projections followed."""
    people = People(engine)
    for n, reason in enumerate(("quality.broken", "logistics.late", "buyer.changed_mind")):
        # Opened now: every read is as of now, and the merchant's 48 hours are still running.
        place_delivered(
            engine, f"KD-{n}", lines=(f"SKU-{n}:1:20.00:gadget",), delivered_at=recently()
        )
        engine.handle(
            OpenCase(order_id=f"KD-{n}", type="refund_only", reason=reason, amount="20.00")
        )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AFTERSALES_DESK_POLL_MS": "500"}
    follow = ["--store", store_url, "project", "run", "--follow"]
    with (tmp_path / "project.log").open("wb") as out:
        follower = subprocess.Popen(
            [sys.executable, "-m", "aftersales.commands.cli.main", *follow],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    os.environ["AFTERSALES_DESK_POLL_MS"] = "500"  # the server inherits it
    server = Server(store_url, tmp_path / "server.log")
    try:
        yield server.url, people
    finally:
        os.environ.pop("AFTERSALES_DESK_POLL_MS", None)
        server.stop()
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=30)


def test_the_desk_in_chromium(live_desk: tuple[str, People]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, people = live_desk
    own, other = people.cases["shop-1"], people.cases["shop-2"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    # What the page must come to show, it is given time to show on a loaded machine (the suite
    # runs beside it): a check that fails still fails, only later.
    expect.set_options(timeout=20_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 900}, timezone_id="Asia/Shanghai"
            )
            desk = context.new_page()
            desk.goto(f"{url}/login")
            desk.fill("#key", people.keys["staff-1"])
            desk.click("button[type=submit]")
            expect(desk.locator("#todo")).to_be_visible()
            # Only shop-1's cases, each with its time left; the key in no page or URL.
            rows = desk.locator("#todo tbody tr")
            expect(rows).to_have_count(4, timeout=10_000)
            assert other not in desk.content()
            assert people.keys["staff-1"] not in desk.content() + desk.url
            expect(desk.locator(f'tr[data-case="{own}"] td.left')).to_have_text("1 d 23 h left")
            cookie = next(c for c in context.cookies() if c["name"] == "aftersales_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            # The cookie holds a session's token, never the key, and expires.
            assert cookie["value"].startswith("ads_") and people.keys["staff-1"] not in str(cookie)
            assert cookie["expires"] > 0
            desk.evaluate("window.notReloaded = true")
            desk.screenshot(path=str(SHOTS / "desk.png"), full_page=True)

            # The case page: approve, submitted twice at once (a double click): one approval.
            case = context.new_page()
            case.goto(f"{url}/desk/cases/{own}")
            expect(case.locator("#status")).to_have_text("awaiting merchant")
            case.screenshot(path=str(SHOTS / "case.png"), full_page=True)
            stale = context.new_page()  # the same case in another tab, soon out of date
            stale.goto(f"{url}/desk/cases/{own}")
            with case.expect_navigation():
                case.evaluate(
                    """() => { const f = document.querySelector('form[data-action="approve"]');
                               f.requestSubmit(); f.requestSubmit(); }"""
                )
            expect(case.locator("#status")).not_to_have_text("awaiting merchant")
            timeline = case.locator("#timeline li").all_inner_texts()
            assert sum("CaseApproved" in t for t in timeline) == 1, timeline
            assert any("staff-1" in t and "CST" in t for t in timeline)  # the browser's zone
            assert "approve" not in [
                b.get_attribute("data-action") for b in case.locator("form.action").all()
            ]
            case.screenshot(path=str(SHOTS / "case-approved.png"), full_page=True)

            # The other tab still offers reject: the engine refuses it, and the tab shows the
            # case as it is now, saying so in the staff's words, with a reload link.
            form = stale.locator('form[data-action="reject"]')
            form.locator('input[name="reason"]').fill("worn")
            form.locator('input[name="communication"]').fill("chat:1")
            form.locator("button").click()
            expect(stale.locator("#changed")).to_contain_text(
                "This case changed since you opened it: it is now refunded."
            )
            expect(stale.locator("#changed a")).to_have_text("Reload")
            expect(stale.locator("#status")).to_have_text("refunded")
            timeline = case.locator("#timeline li").all_inner_texts()
            assert not any("CaseRejected" in t for t in timeline)

            # The open desk drops the case once the projections move, without a reload.
            expect(desk.locator(f'tr[data-case="{own}"]')).to_have_count(0, timeout=15_000)
            expect(rows).to_have_count(3)
            assert desk.evaluate("window.notReloaded") is True

            # Another merchant's case is not there for this merchant.
            refused = case.goto(f"{url}/desk/cases/{other}")
            assert refused is not None and refused.status == 404
            expect(case.locator(".refused")).to_have_text(f"no case {other}")

            # The return-rate chart: drawn (SVG), four lines, points for each week.
            rates = context.new_page()
            rates.goto(f"{url}/desk/rates")
            chart = rates.locator("#weekly-chart svg")
            expect(chart).to_be_visible()
            lines: Any = rates.evaluate(
                """() => echarts.getInstanceByDom(document.getElementById('weekly-chart'))
                          .getOption().series.map(s => s.data)"""
            )
            assert len(lines) == 4 and all(len(points) == 8 for points in lines)
            assert max(lines[0]) > 0  # a week with returns: the line is not flat at zero
            assert rates.locator("#weekly-chart svg path").count() >= 4
            expect(rates.locator("#breakdown tbody tr")).to_have_count(5)  # two SKUs and three
            rates.click("#breakdown th:nth-child(6)")  # sort by return rate
            rates.screenshot(path=str(SHOTS / "rates.png"), full_page=True)

            # Chinese is drawn with the CJK face the style sheet names, not boxes.
            assert rates.evaluate("document.documentElement.lang") == "en"
            assert "Noto Sans CJK SC" in rates.evaluate(
                "getComputedStyle(document.body).fontFamily"
            )
            assert rates.evaluate("""document.fonts.check('16px "Noto Sans CJK SC"', '退款')""")
            widths: Any = rates.evaluate(
                """() => ['inherit', '"Noto Sans CJK SC"'].map(f => {
                     const s = document.createElement('span');
                     s.textContent = '退款申请已处理'; s.style.fontFamily = f;
                     document.body.appendChild(s); const w = s.getBoundingClientRect().width;
                     s.remove(); return w; })"""
            )
            assert widths[0] == widths[1] > 0, widths

            # Readable on a laptop and on a phone: no page wider than the screen; the wide
            # tables scroll inside their own box.
            for width in (1366, 390):
                sized = browser.new_context(viewport={"width": width, "height": 900})
                sized.add_cookies([cast("SetCookieParam", {**cookie})])
                for path, name in (("/desk/rates", "rates"), ("/desk/cases", "cases")):
                    view = sized.new_page()
                    view.goto(f"{url}{path}")
                    expect(view.locator("table").first).to_be_visible()
                    assert view.evaluate(
                        "document.documentElement.scrollWidth <= window.innerWidth"
                    ), (name, width)
                    view.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
                sized.close()

            # A phone: the desk fits the screen's width (wide tables scroll inside their box).
            phone = browser.new_context(viewport={"width": 375, "height": 740})
            # The same session (a `Cookie`'s keys are all `SetCookieParam`'s, of the same types).
            phone.add_cookies([cast("SetCookieParam", {**cookie})])
            small = phone.new_page()
            small.goto(url)
            expect(small.locator("#todo")).to_be_visible()
            assert small.evaluate("document.documentElement.scrollWidth") <= 375
            small.screenshot(path=str(SHOTS / "desk-phone.png"), full_page=True)

            # Signing out on one screen ends the session in the store: the phone's copy of the
            # cookie is signed out too.
            desk.click("form[action='/logout'] button")
            expect(desk.locator("#key")).to_be_visible()
            # A new page of the phone's (the open one's live feed may itself be sending it to
            # the sign-in page at this moment, which would abort a navigation of ours).
            again = phone.new_page()
            again.goto(url)
            expect(again.locator("#key")).to_be_visible()
            assert again.url.endswith("/login")
        finally:
            browser.close()
