"""The platforms' own measures (dispute rate, quality-return rate, the merchant's response time)
against numbers worked out by hand from a small history, on both backends; the command, the HTTP
route, the desk and the SQL documented in docs/reports.md give the same.

The history (T0 = 2026-11-01 10:00 +08:00; "day N" = T0 + N days; the period is [day 0, day 30)):

shop-a (orders placed day 0 unless said, delivered day 2 unless said)
  A1  MUG 30.55: a1 refund_only quality.defective opened day 3; the merchant approves at
      day 3 +2:15:30 (8130 s, approve) and so refunds 30.55
  A2  TEE 25.00: a2 refund_only quality.colour_difference opened day 4; the merchant is silent,
      the clock approves at day 6 (172800 s, clock) and refunds 25.00
  A3  LAMP 100.00: a3 refund_only buyer.changed_mind opened day 3; rejected at day 3 +1:00
      (3600 s, reject); escalated day 3 +5:00; ruled for the buyer day 4 (a dispute lost):
      the platform refunds 100.00
  A4  BAG 200.00: a4 return_refund quality.broken opened day 5; the merchant's message at
      day 5 +0:10:05 (605 s, message), approval day 5 +1:00; shipped back day 6; received ok
      day 8: refunds 200.00
  A5  CUP 10.00: no case
  A6  CUP 10.00 placed day 29, never delivered: paid in the period, not delivered in it
  A7  CUP 10.00 placed day -5, delivered day 1: delivered in the period, not paid in it
  A8  MUG 15.00, delivered day 20: a8 refund_only quality.defective opened day 29 +12:00;
      approved day 30 +1:00: its answer and its refund fall after the period
shop-b (placed day 0, delivered day 2)
  B1  KETTLE 129.00: b1 refund_only quality.broken opened day 3; rejected day 3 +0:30 (1800 s);
      escalated day 3 +1:00; ruled for the merchant day 4 (not a dispute lost); appealed
      day 5; ruled for the buyer day 6 (a dispute lost): the platform refunds 129.00
  B2  CUP 10.00: no case
  B3  PLUG 20.00: b3 refund_only logistics.damaged opened day 3; the buyer's message at
      day 3 +1:00 (no answer); the merchant refunds at day 3 +3:20:45 (12045 s, refund)
  B4  SOCK 30.45: b4 refund_only quality.size opened day 3; the merchant offers 20.00 at
      day 3 +20:00 (72000 s, offer); declined day 4; the review lapses at day 5: the clock
      approves and refunds 30.45 (the first answer stays the offer)

By hand:
  shop-a: paid A1-A6, A8 = 7; disputes lost A3 = 1 -> 1/7 = 0.1429; delivered A1-A5, A7, A8 = 7;
          quality refunds A1, A2, A4 = 3 -> 3/7 = 0.4286, 30.55 + 25.00 + 200.00 = 255.55;
          answers 605, 3600, 8130, 172800 (3 merchant, 1 clock): median (2nd of 4) 3600,
          p90 (4th of 4) 172800
  shop-b: paid 4; disputes lost B1 = 1 -> 0.25; delivered 4; quality refunds B1, B4 = 2 -> 0.5,
          129.00 + 30.45 = 159.45; answers 1800, 12045, 72000 (3 merchant): median 12045,
          p90 (3rd of 3) 72000
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier

from aftersales.commands.cli.main import cli
from aftersales.commands.http.app import create_app
from aftersales.engine.access.principal_store import add_principal, create_key
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    ApproveCase,
    DeclineOffer,
    DeliverOrder,
    EscalateCase,
    FireDeadline,
    MessageCase,
    OfferChange,
    OpenCase,
    PlaceOrder,
    ReceiveGoods,
    RefundCase,
    RejectCase,
    RuleCase,
    ShipBack,
)
from aftersales.projections.platform_measures import (
    COLUMNS,
    PlatformMeasures,
    measure_rate,
    nearest_rank,
    platform_measures,
)
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector
from tests.conftest import T0, at

SINCE, UNTIL = T0, T0 + timedelta(days=30)
ORIGIN = {"Origin": "http://testserver"}


def build(e: Engine) -> dict[str, str]:
    """The history in the module docstring, through the engine's Python API."""
    cases: dict[str, str] = {}

    def order(
        oid: str, merchant: str, line: str, placed: float = 0, delivered: float | None = 2
    ) -> None:
        e.handle(
            PlaceOrder(
                order_id=oid, merchant=merchant, buyer=f"b-{oid}", lines=[line], at=at(placed)
            )
        )
        if delivered is not None:
            e.handle(DeliverOrder(order_id=oid, at=at(delivered)))

    def open_(name: str, oid: str, reason: str, amount: str, days: float, hours: float = 0,
              type: str = "refund_only") -> str:  # fmt: skip
        case_id: str = e.handle(
            OpenCase(order_id=oid, type=type, reason=reason, amount=amount, at=at(days, hours))
        )["case_id"]
        cases[name] = case_id
        return case_id

    for oid, line in (
        ("A1", "MUG:1:30.55:home"),
        ("A2", "TEE:1:25.00:apparel"),
        ("A3", "LAMP:1:100.00:home"),
        ("A4", "BAG:1:200.00:apparel"),
        ("A5", "CUP:1:10.00:home"),
    ):
        order(oid, "shop-a", line)
    order("A8", "shop-a", "MUG:1:15.00:home", delivered=20)
    order("A6", "shop-a", "CUP:1:10.00:home", placed=29, delivered=None)
    order("A7", "shop-a", "CUP:1:10.00:home", placed=-5, delivered=1)
    for oid, line in (
        ("B1", "KETTLE:1:129.00:home"),
        ("B2", "CUP:1:10.00:home"),
        ("B3", "PLUG:1:20.00:electronics"),
        ("B4", "SOCK:1:30.45:apparel"),
    ):
        order(oid, "shop-b", line)

    a1 = open_("a1", "A1", "quality.defective", "30.55", 3)
    done = e.handle(ApproveCase(case_id=a1, by="staff-a", at=at(3, 2, 15, 30)))
    assert done["refunded_amount"] == "30.55"

    a2 = open_("a2", "A2", "quality.colour_difference", "25.00", 4)
    fired = e.handle(FireDeadline(case_id=a2, deadline="auto_approve", at=at(6)))
    assert fired["status"] == "refunded"

    a3 = open_("a3", "A3", "buyer.changed_mind", "100.00", 3)
    e.handle(RejectCase(case_id=a3, reason="used", communication="chat:1", at=at(3, 1)))
    e.handle(EscalateCase(case_id=a3, claim="unjustified_rejection", at=at(3, 5)))
    ruled = e.handle(RuleCase(case_id=a3, in_favour_of="buyer", by="agent-1", at=at(4)))
    assert ruled["status"] == "refunded"

    a4 = open_("a4", "A4", "quality.broken", "200.00", 5, type="return_refund")
    e.handle(
        MessageCase(case_id=a4, text="please send it back", party="merchant", at=at(5, 0, 10, 5))
    )
    e.handle(ApproveCase(case_id=a4, return_address="1 Road", at=at(5, 1)))
    e.handle(ShipBack(case_id=a4, carrier="SF", waybill="SF1", at=at(6)))
    assert e.handle(ReceiveGoods(case_id=a4, at=at(8)))["refunded_amount"] == "200.00"

    a8 = open_("a8", "A8", "quality.defective", "15.00", 29, 12)
    assert e.handle(ApproveCase(case_id=a8, at=at(30, 1)))["status"] == "refunded"

    b1 = open_("b1", "B1", "quality.broken", "129.00", 3)
    e.handle(RejectCase(case_id=b1, reason="no crack", communication="call:1", at=at(3, 0, 30)))
    e.handle(EscalateCase(case_id=b1, claim="unjustified_rejection", at=at(3, 1)))
    e.handle(RuleCase(case_id=b1, in_favour_of="merchant", by="agent-1", at=at(4)))
    e.handle(EscalateCase(case_id=b1, claim="unjustified_rejection", at=at(5)))
    ruled = e.handle(RuleCase(case_id=b1, in_favour_of="buyer", by="agent-2", at=at(6)))
    assert ruled["status"] == "refunded" and ruled["refunded_amount"] == "129.00"

    b3 = open_("b3", "B3", "logistics.damaged", "20.00", 3)
    e.handle(MessageCase(case_id=b3, text="where is my refund", at=at(3, 1)))
    assert e.handle(RefundCase(case_id=b3, at=at(3, 3, 20, 45)))["status"] == "refunded"

    b4 = open_("b4", "B4", "quality.size", "30.45", 3)
    e.handle(OfferChange(case_id=b4, type="refund_only", amount="20.00", at=at(3, 20)))
    e.handle(DeclineOffer(case_id=b4, at=at(4)))
    fired = e.handle(FireDeadline(case_id=b4, deadline="auto_approve", at=at(5)))
    assert fired["status"] == "refunded" and fired["refunded_amount"] == "30.45"
    return cases


def row(*values: Any) -> dict[str, Any]:
    return dict(zip(COLUMNS, values, strict=True))


# Worked out by hand from the docstring.
EXPECTED = [
    row("shop-a", 7, 1, 0.1429, 7, 3, "255.55", 0.4286, 4, 3, 1, 3600, 172800),
    row("shop-b", 4, 1, 0.25, 4, 2, "159.45", 0.5, 3, 3, 0, 12045, 72000),
]


@dataclass
class History:
    engine: Engine
    cases: dict[str, str]


@pytest.fixture
def history(engine: Engine) -> Iterator[History]:
    cases = build(engine)
    Projector(engine.store).catch_up(VIEWS)
    yield History(engine, cases)


def test_the_measures_match_the_history(history: History) -> None:
    assert platform_measures(history.engine.store, SINCE, UNTIL) == EXPECTED
    assert platform_measures(history.engine.store, SINCE, UNTIL, "shop-b") == EXPECTED[1:]
    assert platform_measures(history.engine.store, SINCE, UNTIL, "shop-z") == []


def test_each_measure_counts_its_own_events_in_the_period(history: History) -> None:
    store = history.engine.store
    # Days 0-4 (to day 5 10:00): A1's and A3's answers, refunds and ruling; a2 opened, not
    # answered; b1's first ruling was for the merchant, b3's refund and b4's offer.
    (a, b) = platform_measures(store, SINCE, T0 + timedelta(days=5))
    assert (a["paid_orders"], a["disputes_lost"], a["dispute_rate"]) == (6, 1, 0.1667)
    assert (a["quality_refund_orders"], a["quality_refunded"]) == (1, "30.55")
    assert (a["responses"], a["median_response_seconds"], a["p90_response_seconds"]) == (
        2,
        3600,
        8130,
    )
    assert (b["disputes_lost"], b["quality_refund_orders"], b["quality_return_rate"]) == (0, 0, 0.0)
    assert (b["median_response_seconds"], b["p90_response_seconds"]) == (12045, 72000)
    # After the period: A8's answer and refund (day 30 +1:00, 13 h after the opening),
    # nothing paid or delivered.
    (late,) = platform_measures(store, UNTIL, UNTIL + timedelta(days=5))
    assert late == row("shop-a", 0, 0, None, 0, 1, "15.00", None, 1, 1, 0, 46800, 46800)


def test_a_rate_needs_something_to_divide_by_and_ranks_are_nearest() -> None:
    assert measure_rate(1, 0) is None
    assert measure_rate(1, 7) == 0.1429 and measure_rate(2, 3) == 0.6667
    assert measure_rate(1, 8) == 0.125 and measure_rate(1, 16) == 0.0625
    assert measure_rate(1, 32) == 0.0313  # 0.03125, half up
    assert nearest_rank([], 50) is None
    assert nearest_rank([5], 90) == 5
    assert nearest_rank([4, 1, 3, 2], 50) == 2  # the 2nd of 4, not their mean
    assert nearest_rank(list(range(1, 11)), 90) == 9
    assert nearest_rank(list(range(1, 12)), 90) == 10  # ceil(9.9) = 10th


def test_the_projection_rebuilds_to_the_same_rows_and_shows_in_status(history: History) -> None:
    store = history.engine.store
    projector = Projector(store)
    (status,) = projector.status([PlatformMeasures])
    assert status["projection"] == "measures"
    assert status["tables"] == ["proj_measures_orders", "proj_measures_cases"]
    assert status["lag"] == 0 and status["position"] == store.recorder.max_notification_id()
    before = _dump(history.engine)
    # Folding the same events again changes nothing (exactly once), and a rebuild gives
    # the same tables.
    projector.catch_up([PlatformMeasures])
    assert _dump(history.engine) == before
    projector.rebuild([PlatformMeasures])
    assert _dump(history.engine) == before
    assert platform_measures(store, SINCE, UNTIL) == EXPECTED


def _dump(engine: Engine) -> dict[str, list[tuple[str, ...]]]:
    dump = {}
    for table in PlatformMeasures.tables:
        rows = engine.store.query(
            f"SELECT {', '.join(table.names)} FROM {{t}}{table.name} "
            f"ORDER BY {', '.join(table.key)}"
        )
        dump[table.name] = [tuple(str(r[c]) for c in table.names) for r in rows]
    return dump


def test_the_first_answer_is_recorded_with_who_gave_it(history: History) -> None:
    rows = history.engine.store.query(
        "SELECT case_id, responded_by, response FROM {t}proj_measures_cases"
    )
    answers = {str(r["case_id"]): (r["responded_by"], r["response"]) for r in rows}
    names = {v: k for k, v in history.cases.items()}
    assert {names[c]: a for c, a in answers.items()} == {
        "a1": ("merchant", "approve"),
        "a2": ("clock", "auto_approve"),
        "a3": ("merchant", "reject"),
        "a4": ("merchant", "message"),
        "a8": ("merchant", "approve"),
        "b1": ("merchant", "reject"),
        "b3": ("merchant", "refund"),
        "b4": ("merchant", "offer"),
    }


def test_the_command_prints_json_csv_and_a_table(history: History, store_url: str) -> None:
    runner = CliRunner()
    base = ["--store", store_url, "--tz", "+08:00", "report", "measures"]
    window = ["--since", SINCE.isoformat(), "--until", UNTIL.isoformat()]
    out = runner.invoke(cli, [*base, *window, "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["rows"] == EXPECTED
    assert result["position"] == history.engine.store.recorder.max_notification_id()
    assert (result["since"], result["until"]) == (SINCE.isoformat(), UNTIL.isoformat())
    # Dates are days in the display zone: the same period.
    by_day = runner.invoke(cli, [*base, "--since", "2026-11-01", "--until", "2026-12-01", "--json"])
    assert json.loads(by_day.stdout)["rows"][1] == EXPECTED[1]
    out = runner.invoke(cli, [*base, *window, "--csv", "--merchant", "shop-b"])
    assert out.exit_code == 0, out.output
    (shop_b,) = list(csv.DictReader(io.StringIO(out.stdout)))
    assert shop_b == {k: "" if v is None else str(v) for k, v in EXPECTED[1].items()}
    out = runner.invoke(cli, [*base, *window])
    assert out.exit_code == 0, out.output
    assert "14.29% (1/7 paid)" in out.stdout
    assert "42.86% (3/7 delivered, 255.55)" in out.stdout
    assert "1 h 00 min 00 s" in out.stdout and "48 h 00 min 00 s" in out.stdout
    assert "3 merchant, 1 clock" in out.stdout
    empty = runner.invoke(cli, [*base, "--since", "2027-01-01", "--until", "2027-01-02"])
    assert empty.exit_code == 0 and "no orders or cases in this window" in empty.stdout
    bad = runner.invoke(cli, [*base, "--since", UNTIL.isoformat(), "--until", SINCE.isoformat()])
    assert bad.exit_code == 2


def test_the_documented_sql_gives_the_same_numbers(history: History, store_url: str) -> None:
    """The measures' SQL in docs/reports.md, run by hand as a BI tool would, matches the
    command to the cent and to the second."""
    if not store_url.startswith("postgresql"):
        pytest.skip("the documented SQL is written for PostgreSQL")
    doc = (Path(__file__).resolve().parent.parent / "docs" / "reports.md").read_text()
    section = doc[doc.index("## The platforms' own measures") :]
    start = section.index("```sql\nWITH paid") + len("```sql\n")
    sql = section[start : section.index("```", start)]
    schema = store_url.rsplit("schema=", 1)[1]
    text = sql.replace(":since", "%(since)s").replace(":until", "%(until)s")
    with psycopg.connect(store_url.split("?", 1)[0], row_factory=dict_row) as conn:
        conn.execute(SQL("SET search_path TO {}").format(Identifier(schema)))
        rows = conn.execute(text.encode(), {"since": SINCE, "until": UNTIL}).fetchall()

    def plain(value: Any) -> Any:
        if isinstance(value, Decimal):
            return float(value) if value != value.to_integral_value() else int(value)
        return value

    by_hand = [
        {
            **{k: plain(v) for k, v in r.items()},
            "quality_refunded": f"{r['quality_refunded']:.2f}",
        }
        for r in rows
    ]
    assert by_hand == EXPECTED


# Over HTTP and on the desk, with their role rules ----------------------------------------------

STAFF = {"ops": ("operator", None), "staff-a": ("merchant", "shop-a"), "buyer": ("buyer", None)}


def _keys(engine: Engine) -> dict[str, dict[str, str]]:
    now = datetime.now(UTC)
    keys = {}
    for pid, (role, merchant) in STAFF.items():
        add_principal(engine.store, pid, role, merchant, now)
        keys[pid] = {"Authorization": f"Bearer {create_key(engine.store, pid, now, None)['key']}"}
    return keys


PERIOD = urlencode({"since": SINCE.isoformat(), "until": UNTIL.isoformat()})


def test_the_http_route_answers_each_role_its_own_rows(history: History, store_url: str) -> None:
    keys = _keys(history.engine)
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:
        path = f"/v1/reports/measures?{PERIOD}"
        everyone = client.get(path, headers=keys["ops"])
        assert everyone.status_code == 200, everyone.text
        assert everyone.json() == EXPECTED
        assert everyone.headers["x-projection-lag"] == "0"
        # A merchant's staff sees its own shop only, asked for or not.
        own = client.get(path, headers=keys["staff-a"])
        assert own.status_code == 200 and own.json() == EXPECTED[:1]
        other = client.get(f"{path}&merchant=shop-b", headers=keys["staff-a"])
        assert other.status_code == 403
        assert client.get(path, headers=keys["buyer"]).status_code == 403
        chosen = client.get(f"{path}&merchant=shop-b", headers=keys["ops"])
        assert chosen.json() == EXPECTED[1:]
        backwards = urlencode({"since": UNTIL.isoformat(), "until": SINCE.isoformat()})
        refused = client.get(f"/v1/reports/measures?{backwards}", headers=keys["ops"])
        assert refused.status_code == 422


def test_the_desk_shows_the_measures_per_shop(history: History, store_url: str) -> None:
    keys = _keys(history.engine)
    until = urlencode({"until": UNTIL.isoformat()})
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:
        for pid, shops in (("ops", ["shop-a", "shop-b"]), ("staff-a", ["shop-a"])):
            client.cookies.clear()
            token = keys[pid]["Authorization"].removeprefix("Bearer ")
            signed = client.post(
                "/login",
                content=urlencode({"key": token, "zone": "Asia/Shanghai"}),
                headers={**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"},
                follow_redirects=False,
            )
            assert signed.status_code == 303, signed.text
            page = client.get(f"/desk/rates?{until}")
            assert page.status_code == 200, page.text
            table = page.text[page.text.index('id="measures-table"') :]
            table = table[table.index("<tbody>") : table.index("</tbody>")]
            cells = [
                [re.sub(r"\s+", " ", c).strip() for c in re.findall(r"<td>(.*?)</td>", r, re.S)]
                for r in re.findall(r"<tr>(.*?)</tr>", table, re.S)
            ]
            assert [c[0] for c in cells] == shops
            assert cells[0] == [
                "shop-a",
                "14.29%",
                "1 / 7",
                "42.86%",
                "3 / 7",
                "255.55",
                "1.00 h (1:00:00)",
                "48.00 h (48:00:00)",
                "1 of 4",
            ]
            if pid == "ops":
                assert cells[1][6:8] == ["3.35 h (3:20:45)", "20.00 h (20:00:00)"]
            response = client.get(f"/desk/rates.csv?table=measures&{until}")
            assert response.status_code == 200
            name = "platform-measures" + ("" if pid == "ops" else "-shop-a")
            assert f'filename="{name}.csv"' in response.headers["content-disposition"]
            rows = list(csv.DictReader(io.StringIO(response.text)))
            assert rows == [
                {k: "" if v is None else str(v) for k, v in r.items()}
                for r in EXPECTED
                if r["merchant_id"] in shops
            ]
        assert client.get("/desk/rates?merchant=shop-b").status_code == 403
