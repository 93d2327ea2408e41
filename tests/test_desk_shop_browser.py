"""A shop's settings page in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real `aftersales serve` process on PostgreSQL.

Sign in as a shop's staff, open Settings from the navigation, add a return address, fill the
rule form (its id, a service type ticked, an amount, a reason) and see the rule listed with its
version and the change in the history; a rule beyond the platform's bounds (shown beside the
form) is refused in the engine's words and not listed; the page fits 1,366 and 390 px screens.
Screenshots go to ``test-artifacts/desk/`` (ignored by git), or to ``$AFTERSALES_SCREENSHOTS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ShowShop
from tests.people import People
from tests.test_desk_browser import CHROMIUM, SHOTS
from tests.test_serve import Server

if TYPE_CHECKING:
    from playwright._impl._api_structures import SetCookieParam

pytestmark = [
    pytest.mark.parametrize("store_url", ["postgres"], indirect=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (see .ci/run)"),
]


@pytest.fixture
def served(engine: Engine, store_url: str, tmp_path: Path) -> Iterator[tuple[str, People]]:
    people = People(engine)
    server = Server(store_url, tmp_path / "server.log")
    try:
        yield server.url, people
    finally:
        server.stop()


def test_the_settings_page_in_chromium(served: tuple[str, People]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, people = served
    engine = people.engine
    SHOTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=20_000)  # a loaded machine is given time; a failure still fails
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(
                viewport={"width": 1366, "height": 900}, timezone_id="Asia/Shanghai"
            )
            page = context.new_page()
            page.goto(f"{url}/login")
            page.fill("#key", people.keys["staff-1"])
            page.click("button[type=submit]")
            page.click("header nav >> text=Settings")
            expect(page.locator("h1")).to_contain_text("Settings (设置)")
            expect(page.locator("#bounds")).to_contain_text("refund only (仅退款): up to 50.00")

            # A return address: typed, saved, listed as the default.
            address = page.locator("#address-form")
            address.locator('input[name="address_id"]').fill("HZ1")
            address.locator('input[name="warehouse"]').fill("杭州仓")
            address.locator('input[name="address"]').fill("文三路 1 号")
            address.locator("button[type=submit]").click()
            expect(page.locator("#done")).to_have_text("The return address is saved.")
            expect(page.locator('tr[data-address="HZ1"]')).to_contain_text("default (默认)")

            # A rule: the form filled as staff would, then listed with its version.
            rule = page.locator("#rule-form")
            rule.locator('input[name="rule_id"]').fill("small-refunds")
            rule.locator('input[name="types"][value="refund_only"]').check()
            rule.locator('input[name="up_to"]').fill("20.00")
            rule.locator('input[name="reasons"]').fill("quality")
            rule.locator("button[type=submit]").click()
            expect(page.locator("#done")).to_have_text("The rule is saved.")
            row = page.locator('tr[data-rule="small-refunds"]')
            expect(row.locator("td").nth(1)).to_have_text("1")
            expect(row).to_contain_text("refund only (仅退款)")
            expect(row).to_contain_text("20.00")
            expect(row).to_contain_text("by staff-1")
            expect(page.locator("#history li").first).to_contain_text(
                "set rule small-refunds, version 1"
            )
            page.screenshot(path=str(SHOTS / "settings.png"), full_page=True)

            # Beyond the bounds: refused in the engine's words, the form kept, nothing listed.
            rule = page.locator("#rule-form")
            rule.locator('input[name="rule_id"]').fill("big-refunds")
            rule.locator('input[name="types"][value="refund_only"]').check()
            rule.locator('input[name="up_to"]').fill("80.00")
            rule.locator("button[type=submit]").click()
            expect(page.locator("#refused")).to_have_text(
                "Not changed: a shop rule may approve refund_only requests up to 50.00, not 80.00"
            )
            expect(page.locator('#rule-form input[name="up_to"]')).to_have_value("80.00")
            expect(page.locator('tr[data-rule="big-refunds"]')).to_have_count(0)
            page.screenshot(path=str(SHOTS / "settings-refused.png"), full_page=True)
            rules = engine.handle(ShowShop(merchant_id="shop-1"))["rules"]
            assert [(r["rule_id"], r["version"]) for r in rules] == [("small-refunds", 1)]

            # Chinese drawn with the named CJK face; no page wider than a laptop's or a phone's
            # screen (the tables scroll inside their own box).
            assert "Noto Sans CJK SC" in page.evaluate("getComputedStyle(document.body).fontFamily")
            cookie = next(c for c in context.cookies() if c["name"] == "aftersales_session")
            for width in (1366, 390):
                sized = browser.new_context(viewport={"width": width, "height": 900})
                sized.add_cookies([cast("SetCookieParam", {**cookie})])
                view = sized.new_page()
                view.goto(f"{url}/desk/settings")
                expect(view.locator("#rule-form")).to_be_visible()
                expect(view.locator("#bounds")).to_be_visible()
                assert view.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), (
                    width
                )
                view.screenshot(path=str(SHOTS / f"settings-{width}.png"), full_page=True)
                sized.close()
        finally:
            browser.close()
