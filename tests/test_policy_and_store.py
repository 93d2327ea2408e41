"""Policy files and versions; store URLs; events readable as JSON in the store."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.policy_file import load_policy
from aftersales.engine.application.requests import ApproveCase, ListCases, OpenCase
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.values import CaseType
from aftersales.engine.storage.urls import parse_store_url
from tests.conftest import PG_URL, at, drop_schema, place_delivered

POLICY = """
name = "kuaishou-2026"
no_reason_return_days = 3
no_reason_excluded_categories = ["fresh_food"]

[windows]
merchant_review_hours = 72

[by_type.refund_only.unshipped]
merchant_review_hours = 24
"""


def test_policy_file_windows_by_type_and_shipping(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    policy = load_policy(path)
    assert policy.window("merchant_review", CaseType.REFUND_ONLY, shipped=False) == timedelta(
        hours=24
    )
    assert policy.window("merchant_review", CaseType.REFUND_ONLY, shipped=True) == timedelta(
        hours=72
    )
    assert policy.window("merchant_review", CaseType.EXCHANGE, shipped=False) == timedelta(hours=72)
    assert policy.window("buyer_shipment", CaseType.EXCHANGE, shipped=True) == timedelta(days=10)
    assert policy.version.startswith("kuaishou-2026@")
    assert policy.version != Policy().version
    path.write_text(POLICY.replace("72", "71"))
    assert load_policy(path).version != policy.version  # content changes the version


@pytest.mark.parametrize(
    "text,message",
    [
        ("windows = 3", "windows"),
        ("[windows]\nmerchant_review_hours = -1", "merchant_review_hours"),
        ("[by_type.bogus]\nmerchant_review_hours = 1", "by_type"),
        ("surprise = 1", "surprise"),
        ("name = [", "cannot be read"),
    ],
)
def test_bad_policy_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(BadInput, match=message):
        load_policy(path)
    with pytest.raises(BadInput, match="does not exist"):
        load_policy(tmp_path / "missing.toml")


def test_policy_version_is_recorded_and_deadlines_do_not_move(
    store_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    with Engine(store_url, policy=load_policy(path)) as engine:
        place_delivered(engine, delivered=False)
        case = engine.handle(
            OpenCase(
                order_id="KS-1",
                type="refund_only",
                reason="quality.x",
                amount="1.00",
                at=at(days=1),
            )
        )
        assert case["policy_version"] == load_policy(path).version
        assert case["due_at"] == at(days=2)  # 24 h: refund only on an unshipped order
    with Engine(store_url) as engine:  # the default policy now: the deadline stays
        assert engine.stored_case(case["case_id"])["due_at"] == at(days=2)
        later = engine.handle(ApproveCase(case_id=case["case_id"], at=at(days=1, hours=1)))
        assert later["status"] == "refunded"


def test_store_urls() -> None:
    sqlite = parse_store_url("sqlite:///rel/a.db")
    assert sqlite.kind == "sqlite" and sqlite.path == "rel/a.db"
    assert parse_store_url("sqlite:////abs/a.db").path == "/abs/a.db"
    assert parse_store_url(None).path == "aftersales.db"
    pg = parse_store_url("postgresql://ann:s%40cret@db.example:6543/shop?schema=tenant_7")
    assert pg.env["POSTGRES_USER"] == "ann" and pg.env["POSTGRES_PASSWORD"] == "s@cret"
    assert pg.env["POSTGRES_HOST"] == "db.example" and pg.env["POSTGRES_PORT"] == "6543"
    assert pg.env["POSTGRES_DBNAME"] == "shop" and pg.schema == "tenant_7"
    for bad in (
        "mysql://x/y",
        "sqlite://a.db",
        "postgresql://host/",
        "postgresql://h/d?x=1",
        "postgresql://h/d?schema=Bad-Name",
        "postgresql://h:port/d",
    ):
        with pytest.raises(BadInput):
            parse_store_url(bad)


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_schemas_keep_stores_apart(store_url: str) -> None:
    other = store_url.rsplit("=", 1)[0] + "=" + store_url.rsplit("=", 1)[1] + "_b"
    try:
        with Engine(store_url) as a, Engine(other) as b:
            place_delivered(a)
            assert a.stored_order("KS-1")["order_id"] == "KS-1"
            assert b.handle(ListCases()) == []
            with pytest.raises(Exception, match="no order KS-1"):
                b.stored_order("KS-1")
    finally:
        drop_schema(other.rsplit("=", 1)[1])


def test_events_are_readable_json_with_actor_time_and_command_id(store_url: str) -> None:
    with Engine(store_url) as engine:
        place_delivered(engine)
        case = engine.handle(
            OpenCase(
                order_id="KS-1",
                type="refund_only",
                reason="quality.x",
                amount="1.50",
                at=at(days=3),
                by="buyer-1",
                command_id="c-1",
            )
        )
        engine.handle(ApproveCase(case_id=case["case_id"], by="staff-7", at=at(days=3, hours=1)))
        sql = (
            "SELECT originator_version, topic, data FROM {t}aftersales_event_log "
            "WHERE originator_id = ? ORDER BY originator_version"
        )
        if store_url.startswith("sqlite"):
            path = engine.store.url.path
            assert path
            with sqlite3.connect(path) as conn:
                # The view shows ids as the engine prints them, on SQLite too.
                rows = conn.execute(sql.replace("{t}", ""), (case["case_id"],)).fetchall()
            events = [(v, t, json.loads(d)) for v, t, d in rows]
        else:
            schema = engine.store.url.schema
            with psycopg.connect(PG_URL.split("?")[0]) as conn:
                rows = conn.execute(
                    sql.replace("{t}", f"{schema}.").replace("?", "%s"), (case["case_id"],)
                ).fetchall()
            events = [(v, t, d) for v, t, d in rows]
    assert [t for _, t, _ in events] == [
        "engine.case:CaseOpened",
        "engine.case:CaseApproved",
        "engine.case:CaseRefunded",
    ]
    opened = events[0][2]
    assert opened["actor"] == {"role": "buyer", "id": "buyer-1"}
    assert opened["at"] == at(days=3) and opened["command_id"] == "c-1"
    assert opened["amount"] == "1.50" and opened["status"] == "awaiting_merchant"
    assert opened["due"]["action"] == "auto_approve" and len(opened["hash"]) == 64
    refunded = events[2][2]
    assert refunded["actor"] == {"role": "merchant", "id": "staff-7"}
    assert refunded["paid_by"] == "merchant" and refunded["amount"] == "1.50"
