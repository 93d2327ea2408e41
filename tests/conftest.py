"""Every scenario runs on SQLite and on a real PostgreSQL, each test in a fresh store."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from engine.commands import DeliverOrder, PlaceOrder
from engine.service import Engine

PG_URL = os.environ.get("AFTERSALES_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=CST)


def at(days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0) -> str:
    """A time on the test calendar, as the command line takes it."""
    return (T0 + timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)).isoformat()


def _pg_conninfo() -> str:
    return PG_URL.split("?", 1)[0]


def drop_schema(schema: str) -> None:
    with psycopg.connect(_pg_conninfo(), autocommit=True) as conn:
        conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store: an SQLite file, or a new schema in the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}schema={schema}"
    drop_schema(schema)


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    with Engine(store_url) as e:
        yield e


def place_delivered(
    engine: Engine,
    order_id: str = "KS-1",
    *,
    lines: tuple[str, ...] = ("CASE-RED:1:39.90:phone_accessory",),
    merchant: str = "shop-1",
    buyer: str = "buyer-1",
    delivered: bool = True,
) -> None:
    engine.handle(
        PlaceOrder(order_id=order_id, merchant=merchant, buyer=buyer, lines=list(lines), at=at())
    )
    if delivered:
        engine.handle(DeliverOrder(order_id=order_id, at=at(days=2)))
