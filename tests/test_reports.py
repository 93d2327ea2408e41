"""Report numbers against numbers worked out by hand from a scenario's known facts.

The scenario (T0 = 2026-11-01 10:00 +08:00; "day N" = T0 + N days):

shop-a
  O1  MUG 1 x 30.00 (home), TEE 2 x 25.00 (apparel) = 80.00, delivered day 2
      C1  return_refund on TEE, quality.defective, opened day 3; merchant approves +4 h;
          buyer ships back day 4; merchant receives ok day 5 +6 h -> refunded 50.00 (merchant);
          buyer rates 4 on day 6
      C4  refund_only on MUG, logistics.late, 10.00, opened day 6; withdrawn day 6 +1 h
  O2  MUG 1 x 30.00 (home), delivered day 2
      C2  refund_only, logistics.damaged, 30.00, opened day 3; the merchant is silent: the
          system auto-approves at day 5 and refunds 30.00 (merchant); buyer rates 2 on day 6
  O3  TEE 1 x 25.00 (apparel), delivered day 2, no case
  O4  LAMP 1 x 100.00 (home), delivered day 2
      C3  refund_only, buyer.changed_mind, 100.00, opened day 3; merchant rejects +2 h;
          buyer escalates +5 h (under platform intervention)
  O7  MUG 1 x 30.00 (home), delivered day 35 (outside the cohort)
      C6  refund_only, quality.defective, opened day 36, awaiting the merchant
shop-b
  O5  BAG 1 x 200.00 (apparel), delivered day 2
      C5  return_refund, quality.colour_difference, opened day 3, awaiting the merchant
          (due day 5)

Cohort for return rates: delivered in [day 0, day 30): O1..O5.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    ApproveCase,
    DeliverOrder,
    EscalateCase,
    FireDeadline,
    OpenCase,
    PlaceOrder,
    RateCase,
    ReceiveGoods,
    RejectCase,
    ShipBack,
    WithdrawCase,
)
from aftersales.engine.domain.values import parse_time
from aftersales.projections.dashboard import dashboard
from aftersales.projections.registry import VIEWS
from aftersales.projections.return_rates import return_rates
from aftersales.projections.runner import Projector
from tests.conftest import T0, at

H = 3600


@dataclass
class Scenario:
    engine: Engine
    cases: dict[str, str]


def build(engine: Engine) -> dict[str, str]:
    """The scenario in the module docstring, through the engine's Python API."""
    e = engine
    cases: dict[str, str] = {}

    def order(oid: str, merchant: str, lines: list[str], delivered_day: float) -> None:
        e.handle(
            PlaceOrder(order_id=oid, merchant=merchant, buyer=f"b-{oid}", lines=lines, at=at())
        )
        e.handle(DeliverOrder(order_id=oid, at=at(days=delivered_day)))

    order("O1", "shop-a", ["MUG:1:30.00:home", "TEE:2:25.00:apparel"], 2)
    order("O2", "shop-a", ["MUG:1:30.00:home"], 2)
    order("O3", "shop-a", ["TEE:1:25.00:apparel"], 2)
    order("O4", "shop-a", ["LAMP:1:100.00:home"], 2)
    order("O5", "shop-b", ["BAG:1:200.00:apparel"], 2)
    e.handle(
        PlaceOrder(
            order_id="O7", merchant="shop-a", buyer="b-O7", lines=["MUG:1:30.00:home"], at=at()
        )
    )
    e.handle(DeliverOrder(order_id="O7", at=at(days=35)))

    c1 = e.handle(
        OpenCase(
            order_id="O1",
            type="return_refund",
            reason="quality.defective",
            amount="50.00",
            lines=["TEE"],
            at=at(days=3),
        )
    )["case_id"]
    e.handle(ApproveCase(case_id=c1, return_address="1 Road", at=at(days=3, hours=4)))
    e.handle(ShipBack(case_id=c1, carrier="SF", waybill="SF1", at=at(days=4)))
    assert e.handle(ReceiveGoods(case_id=c1, at=at(days=5, hours=6)))["refunded_amount"] == "50.00"
    e.handle(RateCase(case_id=c1, score=4, at=at(days=6)))

    c2 = e.handle(
        OpenCase(
            order_id="O2",
            type="refund_only",
            reason="logistics.damaged",
            amount="30.00",
            at=at(days=3),
        )
    )
    assert c2["due_at"] == parse_time(at(days=5)).isoformat()  # 48 h to answer
    c2_id = c2["case_id"]
    assert (
        e.handle(FireDeadline(case_id=c2_id, deadline="auto_approve", at=at(days=5)))["status"]
        == "refunded"
    )
    e.handle(RateCase(case_id=c2_id, score=2, at=at(days=6)))

    c3 = e.handle(
        OpenCase(
            order_id="O4",
            type="refund_only",
            reason="buyer.changed_mind",
            amount="100.00",
            at=at(days=3),
        )
    )["case_id"]
    e.handle(RejectCase(case_id=c3, reason="used", communication="chat:1", at=at(days=3, hours=2)))
    e.handle(
        EscalateCase(
            case_id=c3, claim="unjustified_rejection", evidence=["photo:1"], at=at(days=3, hours=5)
        )
    )

    c4 = e.handle(
        OpenCase(
            order_id="O1",
            type="refund_only",
            reason="logistics.late",
            amount="10.00",
            lines=["MUG"],
            at=at(days=6),
        )
    )["case_id"]
    e.handle(WithdrawCase(case_id=c4, at=at(days=6, hours=1)))

    c5 = e.handle(
        OpenCase(
            order_id="O5",
            type="return_refund",
            reason="quality.colour_difference",
            amount="200.00",
            at=at(days=3),
        )
    )
    assert c5["due_at"] == parse_time(at(days=5)).isoformat()
    c6 = e.handle(
        OpenCase(
            order_id="O7",
            type="refund_only",
            reason="quality.defective",
            amount="30.00",
            at=at(days=36),
        )
    )["case_id"]
    cases.update(c1=c1, c2=c2_id, c3=c3, c4=c4, c5=c5["case_id"], c6=c6)
    return cases


@pytest.fixture
def scenario(engine: Engine) -> Iterator[Scenario]:
    cases = build(engine)
    Projector(engine.store).catch_up(VIEWS)
    yield Scenario(engine, cases)


def row(*values: object) -> dict[str, object]:
    """key, orders, gmv, cases, orders_with_cases, return_rate, refunded_amount, refund_rate,
    quality_return_rate, dispute_rate, timeouts: the report's columns, in order."""
    return dict(zip(COLUMNS, values, strict=True))


COLUMNS = (
    "key",
    "orders",
    "gmv",
    "cases",
    "orders_with_cases",
    "return_rate",
    "refunded_amount",
    "refund_rate",
    "quality_return_rate",
    "dispute_rate",
    "timeouts",
)


SINCE, UNTIL = T0, T0 + timedelta(days=30)

# Worked out by hand from the docstring.
BY_MERCHANT = [
    # shop-a: O1..O4; cases C1,C4 (O1), C2 (O2), C3 (O4); refunds 50 + 30 of GMV 235;
    # O1's first case is quality; O4 disputed; C2 timed out.
    row("shop-a", 4, "235.00", 4, 3, 0.75, "80.00", 0.3404, 0.25, 0.25, 1),
    row("shop-b", 1, "200.00", 1, 1, 1.0, "0.00", 0.0, 1.0, 0.0, 0),
]
BY_SKU = [
    row("BAG", 1, "200.00", 1, 1, 1.0, "0.00", 0.0, 1.0, 0.0, 0),
    row("LAMP", 1, "100.00", 1, 1, 1.0, "0.00", 0.0, 0.0, 1.0, 0),
    # MUG in O1 (case C4, logistics) and O2 (C2, logistics, 30 refunded, timed out).
    row("MUG", 2, "60.00", 2, 2, 1.0, "30.00", 0.5, 0.0, 0.0, 1),
    # TEE in O1 (2 x 25, case C1 quality, 50 refunded) and O3 (no case).
    row("TEE", 2, "75.00", 1, 1, 0.5, "50.00", 0.6667, 0.5, 0.0, 0),
]
BY_CATEGORY = [
    # apparel: O1 (TEE 50), O3 (TEE 25), O5 (BAG 200); cases C1, C5, both quality first.
    row("apparel", 3, "275.00", 2, 2, 0.6667, "50.00", 0.1818, 0.6667, 0.0, 0),
    # home: O1 (MUG 30), O2 (MUG 30), O4 (LAMP 100); cases C4, C2, C3.
    row("home", 3, "160.00", 3, 3, 1.0, "30.00", 0.1875, 0.0, 0.3333, 1),
]
BY_REASON = [
    # Each order under its first case's reason group; denominator all 5 cohort orders, GMV 435.
    row("buyer", 5, "435.00", 1, 1, 0.2, "0.00", 0.0, 0.0, 0.2, 0),
    row("logistics", 5, "435.00", 1, 1, 0.2, "30.00", 0.069, 0.0, 0.0, 1),
    row("quality", 5, "435.00", 3, 2, 0.4, "50.00", 0.1149, 0.4, 0.0, 0),
]


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        ("merchant", BY_MERCHANT),
        ("sku", BY_SKU),
        ("category", BY_CATEGORY),
        ("reason", BY_REASON),
    ],
)
def test_return_rates_match_the_facts(
    scenario: Scenario, by: str, expected: list[dict[str, object]]
) -> None:
    assert return_rates(scenario.engine.store, by, SINCE, UNTIL) == expected


def test_return_rates_for_one_merchant_and_an_empty_window(scenario: Scenario) -> None:
    store = scenario.engine.store
    assert return_rates(store, "merchant", SINCE, UNTIL, "shop-b") == [BY_MERCHANT[1]]
    # O7 alone is delivered in [day 30, day 40): its case C6 (quality) counts.
    later = return_rates(store, "merchant", UNTIL, T0 + timedelta(days=40))
    assert later == [row("shop-a", 1, "30.00", 1, 1, 1.0, "0.00", 0.0, 1.0, 0.0, 0)]
    assert return_rates(store, "sku", T0 - timedelta(days=9), T0) == []


def test_dashboard_matches_the_facts(scenario: Scenario) -> None:
    store = scenario.engine.store
    now = T0 + timedelta(days=10)
    d = dashboard(store, "shop-a", now)
    assert d["open_cases"] == {
        "total": 2,
        "by_status": {"awaiting_merchant": 1, "escalated": 1},  # C6 (open now), C3
    }
    assert d["under_intervention"] == 1
    assert d["deadlines"]["due_within_24h"] == 0
    # C3, escalated on day 3, waits on the platform, whose 72 hours ran out on day 6.
    assert d["deadlines"]["overdue"] == 1
    assert d["rulings_overdue"]["count"] == 1
    assert [c["due_action"] for c in d["rulings_overdue"]["cases"]] == ["ruling_overdue"]
    assert d["system_decided_30d"] == {
        "auto_approved": 1,  # C2
        "auto_refunded": 0,
        "reship_overdue": 0,
        "cases": 1,
    }
    assert d["refunded_30d"] == {
        "total": "80.00",
        "paid_by_merchant": "80.00",
        "paid_by_platform": "0.00",
    }
    # First responses: C1 approved after 4 h, C3 rejected after 2 h (C2 never: auto-approved).
    assert d["median_first_response_seconds"] == 3 * H
    # Refunds: C1 after 2 days 6 h, C2 after 2 days.
    assert d["median_time_to_refund_seconds"] == 51 * H
    assert d["rating"] == {"average": 3.0, "count": 2}
    assert d["top_reasons"] == [
        {"reason": "buyer.changed_mind", "cases": 1},
        {"reason": "logistics.damaged", "cases": 1},
        {"reason": "logistics.late", "cases": 1},
        {"reason": "quality.defective", "cases": 1},
    ]


def test_dashboard_deadlines_and_windows(scenario: Scenario) -> None:
    store = scenario.engine.store
    c5 = scenario.cases["c5"]
    soon = dashboard(store, "shop-b", T0 + timedelta(days=4, hours=2))  # C5 due in 22 h
    assert soon["deadlines"]["due_within_24h"] == 1
    assert soon["deadlines"]["overdue"] == 0
    assert [c["case_id"] for c in soon["deadlines"]["due_soon_cases"]] == [c5]
    late = dashboard(store, "shop-b", T0 + timedelta(days=6))
    assert (late["deadlines"]["due_within_24h"], late["deadlines"]["overdue"]) == (0, 1)
    assert late["deadlines"]["overdue_cases"][0]["due_action"] == "auto_approve"
    # Sixty days on, the 30-day window holds nothing of shop-a's.
    quiet = dashboard(store, "shop-a", T0 + timedelta(days=70))
    assert quiet["refunded_30d"]["total"] == "0.00"
    assert quiet["system_decided_30d"]["cases"] == 0
    assert quiet["median_first_response_seconds"] is None
    assert quiet["rating"] == {"average": None, "count": 0}
    # The whole platform: shop-a's and shop-b's open cases together.
    everyone = dashboard(store, None, T0 + timedelta(days=10))
    assert everyone["open_cases"]["total"] == 3


def test_report_commands_json_csv_and_table(scenario: Scenario, store_url: str) -> None:
    runner = CliRunner()
    base = ["--store", store_url, "report"]
    window = ["--since", SINCE.isoformat(), "--until", UNTIL.isoformat()]
    out = runner.invoke(cli, [*base, "return-rates", "--by", "category", *window, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["rows"] == BY_CATEGORY

    out = runner.invoke(cli, [*base, "return-rates", "--by", "sku", *window, "--csv"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["key"] for r in rows] == ["BAG", "LAMP", "MUG", "TEE"]
    assert rows[3]["refund_rate"] == "0.6667" and rows[3]["gmv"] == "75.00"

    out = runner.invoke(cli, [*base, "return-rates", *window])
    assert out.exit_code == 0, out.output
    assert "shop-a" in out.output and "0.3404" in out.output

    now = ["--now", (T0 + timedelta(days=10)).isoformat()]
    out = runner.invoke(cli, [*base, "dashboard", "--merchant", "shop-a", *now, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["refunded_30d"]["total"] == "80.00"
    out = runner.invoke(cli, [*base, "dashboard", "--merchant", "shop-a", *now, "--csv"])
    metrics = {r["metric"]: r["value"] for r in csv.DictReader(io.StringIO(out.stdout))}
    assert metrics["median_first_response_seconds"] == str(3 * H)
    assert metrics["system_decided_30d.auto_approved"] == "1"
    out = runner.invoke(cli, [*base, "dashboard", "--merchant", "shop-a", *now])
    # As of day 10 the platform's ruling on O4's dispute has lapsed (overdue at day 6 hour 5,
    # 48 hours' grace): the clock refunded it, whether or not a tick recorded it.
    assert "under platform intervention: 0" in out.output
    assert "open cases: 1  awaiting_merchant=1" in out.output
    day_6 = ["--now", (T0 + timedelta(days=6)).isoformat()]
    out = runner.invoke(cli, [*base, "dashboard", "--merchant", "shop-a", *day_6])
    assert "under platform intervention: 1" in out.output

    # A date is that day's start in the display zone (+08:00 unless --tz says otherwise).
    day = runner.invoke(cli, [*base, "return-rates", "--since", "2026-11-01", "--json"])
    full = ["--since", "2026-11-01T00:00:00+08:00", "--json"]
    assert day.exit_code == 0, day.output
    assert json.loads(day.stdout) == json.loads(
        runner.invoke(cli, [*base, "return-rates", *full]).stdout
    )
    utc_day = runner.invoke(
        cli,
        [
            "--tz",
            "UTC",
            *base,
            "return-rates",
            "--since",
            "2026-11-01",
            "--until",
            "2026-11-02",
            "--json",
        ],
    )
    utc_full = ["--since", "2026-11-01T00:00:00Z", "--until", "2026-11-02T00:00:00Z", "--json"]
    assert json.loads(utc_day.stdout) == json.loads(
        runner.invoke(cli, [*base, "return-rates", *utc_full]).stdout
    )
    bad = runner.invoke(cli, [*base, "return-rates", "--since", "2026-11-01 10:00", "--json"])
    assert bad.exit_code == 2
    assert "offset" in json.loads(bad.stdout)["error"]["message"]
    bad = runner.invoke(cli, [*base, "return-rates", "--since", "1999-12-31", "--json"])
    assert bad.exit_code == 2
    assert "out of range" in json.loads(bad.stdout)["error"]["message"]
    bad = runner.invoke(cli, [*base, "return-rates", "--since", "2026-02-30", "--json"])
    assert bad.exit_code == 2
    assert "2026-02-30" in json.loads(bad.stdout)["error"]["message"]
    bad = runner.invoke(
        cli, [*base, "return-rates", "--since", UNTIL.isoformat(), "--until", SINCE.isoformat()]
    )
    assert bad.exit_code == 2


def test_the_documented_sql_gives_the_same_numbers(scenario: Scenario, store_url: str) -> None:
    """The return-rate SQL in docs/reports.md, run by hand as a BI tool would, matches the
    command."""
    if not store_url.startswith("postgresql"):
        pytest.skip("the documented SQL is written for PostgreSQL")
    doc = (Path(__file__).resolve().parent.parent / "docs" / "reports.md").read_text()
    section = doc[doc.index("## What the reports mean, as SQL") :]
    start = section.index("```sql\nWITH cohort") + len("```sql\n")
    sql = section[start : section.index("```", start)]
    schema = store_url.rsplit("schema=", 1)[1]
    text = sql.replace(":since", "%(since)s").replace(":until", "%(until)s")
    with psycopg.connect(store_url.split("?", 1)[0], row_factory=dict_row) as conn:
        conn.execute(SQL("SET search_path TO {}").format(Identifier(schema)))
        rows = conn.execute(text.encode(), {"since": SINCE, "until": UNTIL}).fetchall()
    by_hand = [
        {
            **r,
            "gmv": f"{r['gmv']:.2f}",
            "refunded_amount": f"{r['refunded_amount']:.2f}",
            **{k: float(r[k]) for k in COLUMNS if k.endswith("rate")},
        }
        for r in rows
    ]
    assert by_hand == BY_MERCHANT
