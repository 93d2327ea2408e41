"""Least privilege inside the database (`aftersales db roles`): the engine works as its own
role and cannot change or delete an event; the reporting role reads the projections and
nothing else; a merchant's BI login sees its own rows only; the auditor reads the events and
nothing else. Each refusal is PostgreSQL's own (a permission, a policy or the trigger)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.sql import SQL, Identifier

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ApproveCase
from tests.conftest import PG_URL, SchemaPool, as_role, at, drop_schema, open_return, schema_url


def connect(user: str | None = None) -> psycopg.Connection[tuple[Any, ...]]:
    base = PG_URL.split("?", 1)[0]
    return psycopg.connect(as_role(base, user) if user else base, autocommit=True)


@pytest.fixture
def schema(pg_schemas: SchemaPool) -> Iterator[str]:
    """A store schema of this test's own, dropped after it (its trigger keeps it from being
    emptied for the next test)."""
    name = pg_schemas.take()
    pg_schemas.made.remove(name)
    yield name
    drop_schema(name)


def make_roles(url: str, *extra: str) -> None:
    result = CliRunner().invoke(
        cli, ["--store", url, "db", "roles", "--merchant-login", "bi_shop_a=shop-a", *extra]
    )
    assert result.exit_code == 0, result.output


def refused(conn: psycopg.Connection[tuple[Any, ...]], statement: Any) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        conn.execute(statement)
    return str(caught.value)


def test_print_shows_the_sql_and_changes_nothing(schema: str) -> None:
    url = schema_url(schema)
    result = CliRunner().invoke(cli, ["--store", url, "db", "roles", "--print"])
    assert result.exit_code == 0, result.output
    assert "GRANT SELECT, INSERT ON" in result.output
    assert "BEFORE UPDATE OR DELETE ON" in result.output
    with connect() as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE c.relnamespace = to_regnamespace(%s) AND NOT t.tgisinternal",
            (schema,),
        ).fetchone()
    assert found == (0,)
    sqlite = CliRunner().invoke(cli, ["--store", "sqlite:///x.db", "db", "roles", "--print"])
    assert sqlite.exit_code == 2 and "SQLite" in sqlite.output


def test_each_role_may_do_what_it_needs_and_is_refused_the_rest(schema: str) -> None:
    url = schema_url(schema)
    make_roles(url)
    engine_url = as_role(url, "aftersales_engine")
    # The engine, as its own role: actions, then the projections (tables it makes itself).
    with Engine(engine_url) as engine:
        case_a = open_return(engine, "KS-A", merchant="shop-a")
        open_return(engine, "KS-B", merchant="shop-b")
        approve = ApproveCase(
            case_id=case_a, by="staff-a", command_id="approve-a", at=at(days=3, hours=1)
        )
        engine.handle(approve)
        again = engine.handle(approve)  # the same command id: its first result, nothing new
        assert again["status"] == "awaiting_buyer_shipment"
    ran = CliRunner().invoke(cli, ["--store", engine_url, "project", "run"])
    assert ran.exit_code == 0, ran.output
    make_roles(url)  # again: the projection tables made since get their grants and policies

    events = SQL("{}.aftersales_events").format(Identifier(schema))
    dashboard = SQL("{}.proj_dashboard_cases").format(Identifier(schema))
    with connect("aftersales_engine") as conn:
        assert "permission denied" in refused(conn, SQL("UPDATE {} SET topic = 'x'").format(events))
        assert "permission denied" in refused(conn, SQL("DELETE FROM {}").format(events))
        assert "permission denied" in refused(conn, SQL("TRUNCATE {}").format(events))
        refused(conn, SQL("DELETE FROM {}.aftersales_commands").format(Identifier(schema)))
        refused(conn, SQL("DROP TABLE {}").format(events))
    with connect() as admin:  # the owner, a superuser even: the trigger refuses it too
        for statement in ("UPDATE {} SET topic = topic", "DELETE FROM {}", "TRUNCATE {}"):
            assert "append-only" in refused(admin, SQL(statement).format(events))
        total = admin.execute(SQL("SELECT count(*) FROM {}").format(events)).fetchone()
    with connect("aftersales_reporting") as conn:
        rows = conn.execute(SQL("SELECT merchant_id FROM {}").format(dashboard)).fetchall()
        assert sorted(r[0] for r in rows) == ["shop-a", "shop-b"]
        refused(conn, SQL("SELECT 1 FROM {}").format(events))
        refused(conn, SQL("SELECT 1 FROM {}.aftersales_cases").format(Identifier(schema)))
        refused(conn, SQL("DELETE FROM {}").format(dashboard))
    with connect("bi_shop_a") as conn:
        rows = conn.execute(SQL("SELECT merchant_id FROM {}").format(dashboard)).fetchall()
        assert [r[0] for r in rows] == ["shop-a"]
        refused(conn, SQL("SELECT 1 FROM {}").format(events))
        refused(conn, SQL("SELECT 1 FROM {}.proj_dashboard_refunds").format(Identifier(schema)))
        refused(conn, SQL("SELECT * FROM {}.aftersales_bi_logins").format(Identifier(schema)))
    with connect("aftersales_auditor") as conn:
        found = conn.execute(SQL("SELECT count(*) FROM {}").format(events)).fetchone()
        assert found == total and found is not None and found[0] > 0
        log = SQL("SELECT count(*) FROM {}.aftersales_event_log").format(Identifier(schema))
        assert conn.execute(log).fetchone() == total
        refused(conn, SQL("DELETE FROM {}").format(events))
        refused(conn, SQL("SELECT 1 FROM {}").format(dashboard))
        refused(conn, SQL("SELECT 1 FROM {}.aftersales_cases").format(Identifier(schema)))
