"""Every scenario runs on SQLite and on a real PostgreSQL, each test in an empty store of its own.

On PostgreSQL a store's schema (its tables, stored function and view) costs far more to create
than the test that uses it, so each test process keeps a few schemas made once by the store itself
and empties one between tests: anything a test added to it is dropped, the store's own tables are
emptied and their sequences restarted, and the schema's shape is checked against the one the
store made. A schema that cannot be emptied at once, or whose shape changed, is dropped and never
handed out again. Either way the next test sees an empty store, with notification ids from 1.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.sql import SQL, Identifier, Literal

import aftersales.engine.domain.events as domain_events
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import DeliverOrder, OpenCase, PlaceOrder

# Every event sealed in the tests, in this process and those it starts, is encoded both by orjson
# and by the json module, and the two compared (engine/domain/events.py).
os.environ["AFTERSALES_CHECK_ENCODERS"] = "1"
domain_events.CHECK_ENCODERS = True

PG_URL = os.environ.get("AFTERSALES_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test")
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=CST)

# Test stores are thrown away, so no commit waits for the server's WAL flush: the same
# statements and transactions, without a disk sync each (this process and the CLI processes
# the tests start inherit it through libpq's PGOPTIONS).
_NO_SYNC = "-c synchronous_commit=off"
if _NO_SYNC not in os.environ.get("PGOPTIONS", ""):
    os.environ["PGOPTIONS"] = f"{os.environ.get('PGOPTIONS', '')} {_NO_SYNC}".strip()

# SQLite stores (and every other file a test writes under tmp_path) in memory where the machine
# has a tmpfs: the same files, without a disk sync on each commit. A root given to pytest
# (--basetemp, or PYTEST_DEBUG_TEMPROOT) is kept.
_SHM = Path("/dev/shm")
if _SHM.is_dir() and os.access(_SHM, os.W_OK):
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(_SHM))


def at(days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0) -> str:
    """A time on the test calendar, as the command line takes it."""
    return (T0 + timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)).isoformat()


def _pg_conninfo() -> str:
    return PG_URL.split("?", 1)[0]


def schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}schema={schema}"


def drop_schema(schema: str) -> None:
    with psycopg.connect(_pg_conninfo(), autocommit=True) as conn:
        conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


# Everything in a schema that makes up its shape: relations with their columns, functions
# with their source, and triggers. Two schemas made by the store have the same shape.
_SHAPE = """
SELECT md5(concat_ws('|',
  (SELECT string_agg(c.relname || ':' || c.relkind::text || ':' || coalesce(
      (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                         || ' ' || a.attnotnull::text, ',' ORDER BY a.attnum)
       FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
      ''), ';' ORDER BY c.relname)
   FROM pg_class c WHERE c.relnamespace = to_regnamespace({schema})),
  (SELECT string_agg(p.proname || ':' || md5(replace(p.prosrc, {schema}, '')), ';'
                     ORDER BY p.proname, p.prosrc)
   FROM pg_proc p WHERE p.pronamespace = to_regnamespace({schema})),
  (SELECT string_agg(t.tgname, ';' ORDER BY t.tgname)
   FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE c.relnamespace = to_regnamespace({schema}))
)) AS shape
"""

# Empty a schema in one statement: drop what a test added (projection tables, tracking tables,
# views, functions), keep what the store made (the relations and functions named in the two
# arrays), delete the store's rows and restart its sequences. For tables this small, DELETE
# is several times quicker than TRUNCATE, which makes new files for every table and index.
_EMPTY = """
DO $$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT c.relname, c.relkind FROM pg_class c
    WHERE c.relnamespace = to_regnamespace({schema}) AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
      AND NOT c.relname = ANY({relations})
  LOOP
    EXECUTE format('DROP %s IF EXISTS %I.%I CASCADE',
      CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                     WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
      {schema}, r.relname);
  END LOOP;
  FOR r IN
    SELECT p.oid::regprocedure AS signature FROM pg_proc p
    WHERE p.pronamespace = to_regnamespace({schema}) AND NOT p.proname = ANY({functions})
  LOOP
    EXECUTE format('DROP ROUTINE IF EXISTS %s CASCADE', r.signature);
  END LOOP;
  FOR r IN
    SELECT c.relname, c.relkind FROM pg_class c
    WHERE c.relnamespace = to_regnamespace({schema}) AND c.relkind IN ('r', 'S')
  LOOP
    IF r.relkind = 'r' THEN
      EXECUTE format('DELETE FROM %I.%I', {schema}, r.relname);
    ELSE
      EXECUTE format('ALTER SEQUENCE %I.%I RESTART', {schema}, r.relname);
    END IF;
  END LOOP;
END $$
"""


class SchemaPool:
    """This test process's PostgreSQL schemas, each made once by the store and emptied after
    every test that used it."""

    def __init__(self) -> None:
        self.clean: list[str] = []
        self.made: list[str] = []
        self.shape = ""
        self.relations: list[str] = []
        self.functions: list[str] = []
        self.conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def take(self) -> str:
        if self.clean:
            return self.clean.pop()
        schema = f"t_{uuid.uuid4().hex[:12]}"
        self.made.append(schema)
        with Engine(schema_url(schema)):
            pass  # the store creates its own tables, function and view, as it does for users
        if not self.shape:
            conn = self._admin()
            self.shape = self._shape(conn, schema)
            in_schema = "WHERE {0}namespace = to_regnamespace(%s)"
            self.relations = [
                r[0]
                for r in conn.execute(
                    "SELECT relname FROM pg_class " + in_schema.format("rel"), (schema,)
                )
            ]
            self.functions = [
                r[0]
                for r in conn.execute(
                    "SELECT proname FROM pg_proc " + in_schema.format("pro"), (schema,)
                )
            ]
        return schema

    def give_back(self, schema: str) -> None:
        """Empty the schema for the next test, or drop it if it cannot be made as new."""
        try:
            conn = self._admin()
            with conn.transaction():
                # A test that left a writer behind must not make the next one wait.
                conn.execute("SET LOCAL lock_timeout = '2s'")
                conn.execute(
                    SQL(_EMPTY).format(
                        schema=Literal(schema),
                        relations=Literal(self.relations),
                        functions=Literal(self.functions),
                    )
                )
            same = self._shape(conn, schema) == self.shape
        except psycopg.Error:
            self._close_admin()
            same = False
        if same:
            self.clean.append(schema)
        else:
            self.made.remove(schema)
            drop_schema(schema)

    def _admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(_pg_conninfo(), autocommit=True)
        return self.conn

    def _close_admin(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self._close_admin()
        for schema in self.made:
            with contextlib.suppress(psycopg.Error):
                drop_schema(schema)

    @staticmethod
    def _shape(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> str:
        row = conn.execute(SQL(_SHAPE).format(schema=Literal(schema))).fetchone()
        return str(row[0]) if row else ""


# The domain tests: the rules on the aggregates alone, with no store and no process, marked
# `domain` (pyproject.toml says how to run them alone).
DOMAIN_TESTS = frozenset({"test_domain.py", "test_negotiation.py"})
STORE_FIXTURES = frozenset({"store_url", "engine", "pg_schemas"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in DOMAIN_TESTS:
            used = STORE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            if used:
                raise pytest.UsageError(f"{item.nodeid} is a domain test but uses {sorted(used)}")
            item.add_marker(pytest.mark.domain)


@pytest.fixture(scope="session")
def pg_schemas() -> Iterator[SchemaPool]:
    pool = SchemaPool()
    yield pool
    pool.close()


# The scenarios of these modules run on PostgreSQL with the engine connected as its own role
# (`aftersales db roles`: events read and appended, never changed; the save call run as its
# owner), not as the superuser: what a production store runs as. With
# AFTERSALES_TEST_ENGINE_ROLE=all, every test's PostgreSQL store is reached that way.
ENGINE_ROLE_MODULES = frozenset(
    {
        "test_batch.py",
        "test_clock.py",
        "test_clock_first.py",
        "test_concurrency.py",
        "test_handle.py",
        "test_imports.py",
        "test_ledger.py",
        "test_negotiation_flow.py",
        "test_principals.py",
        "test_projections.py",
        "test_relay.py",
        "test_together.py",
        "test_transitions.py",
        "test_windows.py",
    }
)
# ... but for tests that play the part of something the engine's role may not be.
AS_OWNER = frozenset(
    {
        # writes events past the save call (with the table lock, which needs the owner)
        "test_follow_folds_an_event_whose_notification_nobody_heard",
    }
)
ENGINE_ROLE = "aftersales_engine"


def _as_engine_role(request: pytest.FixtureRequest) -> bool:
    if request.function.__name__ in AS_OWNER:
        return False
    every = os.environ.get("AFTERSALES_TEST_ENGINE_ROLE") == "all"
    return every or request.path.name in ENGINE_ROLE_MODULES


def as_role(url: str, role: str) -> str:
    """A store URL logged in as another role (the test server trusts loopback)."""
    head, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    return f"{head}{sep}{role}@{netloc.rpartition('@')[2]}{slash}{tail}"


def _engine_role(schema: str, *, on: bool) -> None:
    """Give a schema the engine's role (its grants, the save call run as the owner, the events'
    trigger), or take the trigger and the save call's change back so it can be emptied and
    handed out again (grants left are harmless)."""
    from aftersales.engine.storage.roles import SAVE_SIGNATURE, role_statements

    with psycopg.connect(_pg_conninfo(), autocommit=True) as conn, conn.transaction():
        if on:
            for statement in role_statements(schema, [], engine_only=True):
                conn.execute(statement)
            return
        events = SQL("{}.aftersales_events").format(Identifier(schema))
        for trigger in ("aftersales_append_only", "aftersales_no_truncate"):
            conn.execute(SQL("DROP TRIGGER IF EXISTS {} ON {}").format(Identifier(trigger), events))
        conn.execute(
            SQL("ALTER FUNCTION {}.aftersales_save({}) SECURITY INVOKER RESET ALL").format(
                Identifier(schema), SQL(SAVE_SIGNATURE)
            )
        )


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty store of the test's own: a new SQLite file, or an emptied PostgreSQL schema
    (reached as the engine's own role in ``ENGINE_ROLE_MODULES``)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    pool: SchemaPool = request.getfixturevalue("pg_schemas")
    schema = pool.take()
    if not _as_engine_role(request):
        yield schema_url(schema)
        pool.give_back(schema)
        return
    _engine_role(schema, on=True)
    try:
        yield as_role(schema_url(schema), ENGINE_ROLE)
    finally:
        try:
            _engine_role(schema, on=False)
        except psycopg.Error:
            pool.made.remove(schema)
            drop_schema(schema)
        else:
            pool.give_back(schema)


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
    delivered_at: str | None = None,
) -> None:
    """An order placed on the test calendar's first day and delivered on its third (or at
    ``delivered_at``: ``recently()`` for a test that opens cases now, within their window)."""
    engine.handle(
        PlaceOrder(order_id=order_id, merchant=merchant, buyer=buyer, lines=list(lines), at=at())
    )
    if delivered:
        engine.handle(DeliverOrder(order_id=order_id, at=delivered_at or at(days=2)))


def recently() -> str:
    """A day ago: an order delivered then is within every after-sales window now."""
    return (datetime.now(UTC) - timedelta(days=1)).isoformat()


def open_return(
    engine: Engine, order_id: str = "KS-1", *, merchant: str = "shop-1", buyer: str = "buyer-1"
) -> str:
    """A delivered order and a return-and-refund case on its line, opened on day 3."""
    place_delivered(engine, order_id, merchant=merchant, buyer=buyer)
    case = engine.handle(
        OpenCase(
            order_id=order_id,
            type="return_refund",
            reason="quality.colour",
            amount="39.90",
            at=at(days=3),
        )
    )
    return str(case["case_id"])
