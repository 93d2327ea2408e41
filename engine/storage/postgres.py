"""PostgreSQL's side of the store: the recorder that writes events and the case index in one
round trip, the schema check, and the queries the store runs there. Imported only for a
``postgresql://`` store (``engine.storage.store`` names the recorder by its topic), so commands on a
SQLite store never load psycopg."""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    ApplicationRecorder,
    InterfaceError,
    InternalError,
    Notification,
    OperationalError,
    StoredEvent,
    Subscription,
)
from eventsourcing.postgres import (
    ConnectionPool,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
    PostgresSubscription,
)
from eventsourcing.utils import Environment, EnvType, retry
from psycopg.conninfo import make_conninfo
from psycopg.sql import SQL, Composable, Composed, Identifier, Literal
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from aftersales.engine.domain.errors import StoreUnavailable
from aftersales.engine.storage.case_index import (
    BUILT_ON_MISSING,
    CASE_COLUMNS,
    CaseRow,
    CommandRow,
    Head,
)
from aftersales.engine.storage.sql import (
    ACCESS_LOG_TABLE,
    CASES_TABLE,
    COMMANDS_TABLE,
    EVENT_LOG_VIEW,
    QUARANTINE_TABLE,
    SAVE_FUNCTION,
    SESSIONS_TABLE,
    Dialect,
    access_tables,
)
from aftersales.engine.storage.urls import StoreUrl

T = TypeVar("T")


# A store of several hosts (a cluster) ---------------------------------------------------------


class PostgresStoreFactory(PostgresFactory):
    """The library's PostgreSQL factory, for a store URL that says more than the library reads:
    libpq's ``target_session_attrs`` and ``connect_timeout`` (a cluster's URL names every member
    and keeps the one that takes writes), and how long to wait through a failover."""

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        kwargs = self.datastore.pool.kwargs
        assert isinstance(kwargs, dict)
        attrs = self.env.get("AFTERSALES_TARGET_SESSION_ATTRS")
        if attrs:
            kwargs["target_session_attrs"] = attrs
        connect_timeout = self.env.get("AFTERSALES_LIBPQ_CONNECT_TIMEOUT")
        if connect_timeout:
            kwargs["connect_timeout"] = int(connect_timeout)
        failover = float(self.env.get("AFTERSALES_FAILOVER_TIMEOUT") or 0)
        if failover > 0:
            # Nothing acknowledged may be lost in a failover: every commit waits for the
            # synchronous standby, whatever a client's PGOPTIONS say.
            kwargs["options"] = "-c synchronous_commit=on"
            RIDERS[self.datastore] = Rider(self.datastore, failover)


class Rider:
    """Rides a datastore through a failover: an operation that lost its server (the primary
    died, or became a standby) waits for a server that takes writes again (a probe every
    tenth of a second, so the first moment the new primary answers is the moment it is used),
    then runs again on a fresh connection pool. Only operations that may safely run twice go
    through it: reads, and the save call, whose events and command rows are keyed (a save that
    did commit before its connection died fails again on its keys, and the unit of work then
    gives the command id's first result, engine/application/units.py). A fresh pool, not the
    old one's reconnection, whose back-off (1, 2, 4, 8 s) would add seconds to a failover."""

    PROBE_INTERVAL = 0.1

    def __init__(self, datastore: PostgresDatastore, timeout: float) -> None:
        self.datastore = datastore
        self.timeout = timeout
        self.lock = threading.Lock()
        self.generation = 0
        self.failovers = 0

    def run(self, operation: Callable[[], T]) -> T:
        deadline: float | None = None
        while True:
            generation = self.generation
            try:
                return operation()
            except (OperationalError, InterfaceError, InternalError) as exc:
                if not lost_server(exc):
                    raise
                now = time.monotonic()
                deadline = deadline or now + self.timeout
                if now >= deadline:
                    raise
                self.reconnect(generation, deadline)

    def reconnect(self, generation: int, deadline: float) -> None:
        """Wait for a server that takes writes, then swap in a fresh pool (once, whichever
        thread gets here first: the others find the generation moved on and just go again)."""
        with self.lock:
            if self.generation != generation:
                return
            old = self.datastore.pool
            assert isinstance(old.kwargs, dict)
            kwargs = dict(old.kwargs)
            kwargs.pop("row_factory", None)
            kwargs["connect_timeout"] = 1
            while time.monotonic() < deadline:
                try:
                    with psycopg.connect(**kwargs) as probe:
                        probe.execute("SELECT 1")
                    break
                except psycopg.Error:
                    time.sleep(self.PROBE_INTERVAL)
            self.datastore.pool = ConnectionPool(
                get_password_func=old.get_password_func,
                connection_class=old.connection_class,
                kwargs=old.kwargs,
                min_size=old.min_size,
                max_size=old.max_size,
                open=False,
                configure=self.datastore.after_connect_func(),
                timeout=old.timeout,
                max_waiting=old.max_waiting,
                max_lifetime=old.max_lifetime,
            )
            self.generation += 1
            self.failovers += 1
        # The old pool's connections are dead; closing it waits for its workers.
        threading.Thread(target=old.close, kwargs={"timeout": 2.0}, daemon=True).start()


# The riders of the datastores that have one (stores of several hosts).
RIDERS: weakref.WeakKeyDictionary[PostgresDatastore, Rider] = weakref.WeakKeyDictionary()

# SQLSTATEs of a server that is gone or does not take writes: the connection's failures
# (class 08), shutdowns and a server starting up (57P01-57P03), a read-only transaction.
_LOST = ("08", "57P01", "57P02", "57P03", "25006")


def lost_server(exc: BaseException) -> bool:
    """Whether an error says the server was lost, not that the statement was wrong or refused:
    the error itself or any it was raised from (the library wraps psycopg's errors, and a
    projection runner wraps the library's)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if _lost(link):
            return True
        link = link.__cause__ or link.__context__
    return False


def _lost(exc: BaseException) -> bool:
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:  # the client's own: a connection refused, reset or closed
        return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    return state.startswith(_LOST)


def ride(datastore: PostgresDatastore, operation: Callable[[], T]) -> T:
    """Run a read (or the save call) through the datastore's rider, if it has one."""
    rider = RIDERS.get(datastore)
    return rider.run(operation) if rider is not None else operation()


# Reading by position without the table lock ------------------------------------------------
#
# Writers do not serialize on a table lock, so notification ids are not given out in commit
# order: a reader must not pass a position that a transaction still running may fill. Each
# row carries its writer's top-level transaction id (``tx``, NULL on rows stored before the
# column came: all long finished), and a reader that advances by position reads only rows
# written by transactions older than the oldest one running when it reads (``HORIZON``, the
# xmin of its own statement's snapshot).
#
# That alone could still skip: transaction B takes id 99 and A id 100, A takes position 10
# and B 11, B commits; a reader sees 11 (99 < xmin = 100) and passes 10 before A commits. So
# every transaction that writes events takes its transaction id and all its positions in
# one critical section, under the save lock (``aftersales_save``): across event writers the
# order of transaction ids is the order of positions. The proof that a reader never passes
# a row that will be committed later: let the reader's statement run on snapshot S, whose
# xmin is X, and return a row at position p written by W (committed, tx(W) < X). Any position
# q < p was taken by W itself (committed with p: in S) or by a transaction V whose critical
# section came before W's, so tx(V) < tx(W) < X. A transaction older than X is not running at
# S: V either committed before S (its row at q is in S, and it passes the filter, tx(V) < X)
# or rolled back (its row at q never exists). So every row the log will ever hold below p is
# in S and read, in order, before p; the same holds for the highest readable position (the
# readable head, ``max_notification_id``), so reading up to it later never meets a new row.
# A transaction that wrote anything before its save would have taken its id outside the
# critical section, so the save refuses it (``FIRST_WRITE``; the engine's saves are one
# statement each, and a save is never the second of its transaction). The positions' sequence
# must hand out values in the order they are asked for, across sessions: no CACHE above 1 (a
# bigserial's sequence has none).
HORIZON = "(SELECT pg_snapshot_xmin(pg_current_snapshot()))"
FIRST_WRITE = "aftersales_save must be its transaction's first write"
# How long a reader that wants everything committed when it asked waits for transactions
# older than those rows to end (then it gives what is readable: later, never wrong). Any
# transaction of the cluster that holds a transaction id counts, so this is well above what
# the engine's own take (a save, a projection's batch).
SETTLE_TIMEOUT = 5.0
# How soon a subscription reads again while committed rows wait behind a running transaction
# that sends no notification when it ends.
HELD_POLL = 0.02


def readable(alias: str = "") -> str:
    """The condition on a row of the events table that a reader by position may read it."""
    tx = f"{alias}.tx" if alias else "tx"
    return f"({tx} IS NULL OR {tx} < {HORIZON})"


def save_lock_key(schema: str) -> SQL | Composed:
    """The advisory lock key under which a save takes its transaction id and positions: one
    per store (schema), worked out by the server from the schema's name."""
    return SQL("hashtextextended({}, 0)").format(Literal(f"aftersales:save:{schema}"))


def _quoted(*names: str) -> str:
    return ".".join('"' + name.replace('"', '""') + '"' for name in names)


class PostgresCaseRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        # The hot statements' text, composed once (``text``): psycopg composes a statement
        # given as SQL objects again at every call, quoting each identifier through libpq.
        self.texts: dict[str, bytes] = {}
        schema = Identifier(self.datastore.schema)
        fmt: dict[str, Any] = {
            "schema": schema,
            "cases": Identifier(CASES_TABLE),
            "commands": Identifier(COMMANDS_TABLE),
            "quarantine": Identifier(QUARANTINE_TABLE),
            "events": Identifier(self.events_table_name),
            "view": Identifier(EVENT_LOG_VIEW),
            "due_idx": Identifier(f"{CASES_TABLE}_due"),
            "merchant_idx": Identifier(f"{CASES_TABLE}_merchant"),
            "order_idx": Identifier(f"{CASES_TABLE}_order"),
        }
        self.sql_create_statements += [
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{cases} ("
                "case_id text PRIMARY KEY, order_id text NOT NULL, merchant_id text NOT NULL, "
                "buyer_id text NOT NULL, case_type text NOT NULL, reason text NOT NULL, "
                "status text NOT NULL, amount numeric(14,2) NOT NULL, "
                "refunded_amount numeric(14,2) NOT NULL, due_at timestamptz, due_action text, "
                "opened_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, "
                "version bigint NOT NULL)"
            ).format(**fmt),
            SQL(
                "CREATE INDEX IF NOT EXISTS {due_idx} ON {schema}.{cases} (due_at) "
                "WHERE due_at IS NOT NULL"
            ).format(**fmt),
            SQL(
                "CREATE INDEX IF NOT EXISTS {merchant_idx} ON {schema}.{cases} "
                "(merchant_id, status)"
            ).format(**fmt),
            SQL("CREATE INDEX IF NOT EXISTS {order_idx} ON {schema}.{cases} (order_id)").format(
                **fmt
            ),
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{commands} ("
                "command_id text PRIMARY KEY, action text NOT NULL, target_id text NOT NULL, "
                "fingerprint text NOT NULL, version bigint NOT NULL, "
                "recorded_at timestamptz NOT NULL)"
            ).format(**fmt),
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.{quarantine} ("
                "position bigint PRIMARY KEY, originator_id text NOT NULL, "
                "originator_version bigint NOT NULL, topic text NOT NULL, why text NOT NULL, "
                "reason text NOT NULL, decided_by text NOT NULL, "
                "decided_at timestamptz NOT NULL)"
            ).format(**fmt),
            SQL(
                "CREATE OR REPLACE VIEW {schema}.{view} AS SELECT notification_id, "
                "originator_id, originator_version, topic, "
                "convert_from(state, 'UTF8')::jsonb AS data FROM {schema}.{events}"
            ).format(**fmt),
        ]
        dialect = Dialect(postgres=True, schema=self.datastore.schema)
        self.sql_create_statements += [
            SQL(dialect(sql)).format()
            for sql in access_tables("bigserial PRIMARY KEY", "timestamptz")
        ]
        updates = SQL(", ").join(
            SQL("{0} = excluded.{0}").format(Identifier(c)) for c in CASE_COLUMNS[1:]
        )
        # One call saves everything in one round trip, as one statement in autocommit mode,
        # without a table lock: notification ids are not given out in commit order, and
        # readers never pass a position a running transaction may still fill (``HORIZON``).
        # Under a session-level advisory lock (released inside the call, so not held through
        # the commit: commits of concurrent writers overlap and share their WAL flushes) the
        # transaction takes its id and its positions, nothing else; everything else (the
        # rows, the case index, the command record) comes after. So a lost race (an
        # aggregate's version already written by a transaction still running) waits for the
        # winner and fails on the primary key outside the lock, not holding up every writer;
        # its positions stay empty, and readers pass them once it has ended. Any error or
        # cancel inside the section releases the lock before it is raised again (the release
        # is unconditional: a cancel could land between taking the lock and noting it; one
        # not held only warns), so a pooled connection never keeps it. The events a save
        # builds on (``Head``: id, version, stored bytes) must
        # be stored as they were read, else nothing is saved (integrity_constraint_violation,
        # as for a lost race).
        self.sql_create_statements += [
            SQL("ALTER TABLE {schema}.{events} ADD COLUMN IF NOT EXISTS tx xid8").format(**fmt),
            SQL(
                "ALTER TABLE {schema}.{events} ALTER COLUMN tx SET DEFAULT pg_current_xact_id()"
            ).format(**fmt),
            SQL("DROP FUNCTION IF EXISTS {schema}.{save}({old_args})").format(
                save=Identifier(SAVE_FUNCTION),
                old_args=SQL("uuid[], bigint[], text[], bytea[], jsonb, jsonb"),
                **fmt,
            ),
        ]
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {schema}.{save}("
                "ids uuid[], versions bigint[], topics text[], states bytea[], "
                "case_rows jsonb, command_rows jsonb, "
                "head_ids uuid[], head_versions bigint[], head_states bytea[]) "
                "RETURNS SETOF bigint "
                "LANGUAGE plpgsql AS $BODY$ "
                "DECLARE positions bigint[]; "
                "BEGIN "
                "  SET LOCAL lock_timeout = '{lock_timeout}s'; "
                "  IF pg_current_xact_id_if_assigned() IS NOT NULL THEN "
                "    RAISE EXCEPTION '{first_write}' USING ERRCODE = 'active_sql_transaction'; "
                "  END IF; "
                "  IF head_ids IS NOT NULL AND EXISTS ("
                "    SELECT 1 FROM unnest(head_ids, head_versions, head_states) "
                "      AS h(id, version, state) "
                "    WHERE NOT EXISTS (SELECT 1 FROM {schema}.{events} e "
                "      WHERE e.originator_id = h.id AND e.originator_version = h.version "
                "      AND (h.state IS NULL OR e.state = h.state))) THEN "
                "    RAISE EXCEPTION '{built_on_missing}' "
                "      USING ERRCODE = 'integrity_constraint_violation'; "
                "  END IF; "
                "  BEGIN "
                "    PERFORM pg_advisory_lock({key}); "
                "    PERFORM pg_current_xact_id(); "
                "    SELECT array_agg(nextval({sequence}::regclass)) INTO positions "
                "      FROM generate_series(1, cardinality(ids)); "
                "    PERFORM pg_advisory_unlock({key}); "
                "  EXCEPTION WHEN OTHERS OR query_canceled THEN "
                "    PERFORM pg_advisory_unlock({key}); "
                "    RAISE; "
                "  END; "
                "  IF case_rows IS NOT NULL THEN "
                "    INSERT INTO {schema}.{cases} SELECT * FROM "
                "      jsonb_populate_recordset(NULL::{schema}.{cases}, case_rows) "
                "      ON CONFLICT (case_id) DO UPDATE SET {updates}; "
                "  END IF; "
                "  IF command_rows IS NOT NULL THEN "
                "    INSERT INTO {schema}.{commands} SELECT * FROM "
                "      jsonb_populate_recordset(NULL::{schema}.{commands}, command_rows); "
                "  END IF; "
                "  RETURN QUERY INSERT INTO {schema}.{events} "
                "    (originator_id, originator_version, topic, state, notification_id, tx) "
                "    SELECT i, v, t, s, p, pg_current_xact_id() "
                "    FROM unnest(ids, versions, topics, states, positions) AS r(i, v, t, s, p) "
                "    RETURNING notification_id; "
                "END; $BODY$"
            ).format(
                save=Identifier(SAVE_FUNCTION),
                lock_timeout=self.datastore.lock_timeout,
                first_write=SQL(FIRST_WRITE.replace("'", "''")),
                built_on_missing=SQL(BUILT_ON_MISSING),
                key=save_lock_key(self.datastore.schema),
                sequence=Literal(
                    _quoted(self.datastore.schema, f"{self.events_table_name}_notification_id_seq")
                ),
                updates=updates,
                **fmt,
            )
        )
        # Listeners are woken after the save, in a transaction of its own that does not wait
        # for its commit to be flushed: PostgreSQL serializes the commits of transactions that
        # NOTIFY (a lock held through the commit, so notifications queue in commit order),
        # which inside the save would make saves commit one at a time again. A wake-up lost
        # with its process is made good by the followers' polling (projections.runner).
        self.call_notify = SQL(
            "SELECT set_config('synchronous_commit', 'off', true), pg_notify({}, '')"
        ).format(Literal(self.channel_name))
        self.call_save = SQL(
            "SELECT * FROM {schema}.{save}"
            "(%b, %b::bigint[], %b, %b, %s, %s, %b::uuid[], %b::bigint[], %b::bytea[])"
        ).format(save=Identifier(SAVE_FUNCTION), **fmt)

    def create_table(self) -> None:
        """Create the schema's objects, once: under an advisory lock and in one transaction,
        so several processes starting at once on a new store do not trip over each other,
        and not at all when they exist (DDL would wait on writers' locks)."""
        schema = self.datastore.schema
        save = (
            f'"{schema}".{SAVE_FUNCTION}'
            "(uuid[],bigint[],text[],bytea[],jsonb,jsonb,uuid[],bigint[],bytea[])"
        )
        quarantine = f'"{schema}".{QUARANTINE_TABLE}'
        with self.datastore.transaction(commit=True) as curs:
            # Tables that came later than the rest (the access tables, the quarantine, the
            # desk's sessions) and the events' transaction ids (with the save function that
            # writes them): a store made before has to get them.
            curs.execute(
                "SELECT to_regprocedure(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL "
                "AND to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL "
                "AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attname = 'tx' AND NOT attisdropped) AS found",
                (
                    save,
                    f'"{schema}".{ACCESS_LOG_TABLE}',
                    quarantine,
                    f'"{schema}".{SESSIONS_TABLE}',
                    _quoted(schema, self.events_table_name),
                ),
            )
            row = curs.fetchone()
            if row and row["found"]:
                return
        with self.datastore.transaction(commit=True) as curs:
            curs.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"aftersales:{schema}",))
            curs.execute(
                "SELECT to_regtype(%s) IS NOT NULL AS found",
                (f'"{schema}"."{self.stored_event_type_name}"',),
            )
            row = curs.fetchone()
            type_exists = bool(row and row["found"])
            for statement in self.sql_create_statements:
                is_type = "CREATE TYPE" in statement.as_string()
                if not (is_type and type_exists):
                    curs.execute(statement, prepare=False)
        self.datastore.register_type_adapters()

    # Reading by position: never past the horizon ----------------------------------------------

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """The library's reading of the log, of readable rows only (see ``HORIZON``). Rows
        committed when it is called but held behind an older transaction still running are
        waited for (``settle``), so a reader that acts and then reads sees its own events."""
        where = [SQL(readable())]
        params: list[Any] = []
        if start is not None:
            where.append(
                SQL("notification_id >= %s" if inclusive_of_start else "notification_id > %s")
            )
            params.append(start)
        if stop is not None:
            where.append(SQL("notification_id <= %s"))
            params.append(stop)
        if topics:
            where.append(SQL("topic = ANY(%s)"))
            params.append(list(topics))
        statement = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {}.{} WHERE {} ORDER BY notification_id LIMIT %s"
        ).format(
            Identifier(self.datastore.schema),
            Identifier(self.events_table_name),
            SQL(" AND ").join(where),
        )
        params.append(limit)

        def run() -> list[Notification]:
            with self.datastore.get_connection() as conn, conn.cursor() as curs:
                curs.execute(statement, params, prepare=True)
                return [
                    Notification(
                        id=row["notification_id"],
                        originator_id=row["originator_id"],
                        originator_version=row["originator_version"],
                        topic=row["topic"],
                        state=bytes(row["state"]),
                    )
                    for row in curs.fetchall()
                ]

        found = run()
        if len(found) < limit:
            readable_head, committed = self.heads()
            target = committed if stop is None else min(committed, stop)
            if target > readable_head and self.settle(target) > readable_head:
                found = run()
        return found

    def max_notification_id(self) -> int | None:
        """The readable head: the highest position below which every row the log will ever
        hold is committed and readable (see ``HORIZON``). Rows committed when it is called
        but held behind an older transaction are waited for (``settle``), so the head covers
        what was committed before the call, as with the table lock it did."""
        readable_head, committed = self.heads()
        if committed > readable_head:
            readable_head = self.settle(committed)
        return readable_head or None

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def heads(self) -> tuple[int, int]:
        """The readable head and the highest committed position (0: none)."""
        statement = SQL(
            "SELECT (SELECT max(notification_id) FROM {0}.{1} WHERE {2}) AS readable, "
            "(SELECT max(notification_id) FROM {0}.{1}) AS committed"
        ).format(
            Identifier(self.datastore.schema), Identifier(self.events_table_name), SQL(readable())
        )

        def run() -> tuple[int, int]:
            with self.datastore.get_connection() as conn, conn.cursor() as curs:
                curs.execute(statement, prepare=True)
                row = curs.fetchone()
                assert row is not None
                return int(row["readable"] or 0), int(row["committed"] or 0)

        return run()

    def settle(self, target: int) -> int:
        """Wait until the readable head reaches ``target`` (a committed position: the
        transactions older than it that still run end, most within milliseconds), at most
        ``SETTLE_TIMEOUT`` seconds; the readable head then."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        pause = 0.001
        while True:
            heads: tuple[int, int] = self.heads()
            readable_head = heads[0]
            if readable_head >= target or time.monotonic() >= deadline:
                return readable_head
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def held_back(self) -> bool:
        """Whether committed rows wait behind a transaction still running."""
        heads: tuple[int, int] = self.heads()
        return heads[1] > heads[0]

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return HorizonSubscription(recorder=self, gt=gt, topics=topics)

    def text(
        self, name: str, statement: Callable[[], Composable], conn: psycopg.Connection[Any]
    ) -> bytes:
        """A statement's text, composed on its first use and kept under ``name``."""
        found = self.texts.get(name)
        if found is None:
            found = self.texts[name] = statement().as_bytes(conn)
        return found

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        if not stored_events:
            return []
        rider = RIDERS.get(self.datastore)
        if rider is not None:
            ids: Sequence[int] = rider.run(lambda: self._call_save(stored_events, kwargs))
            return ids
        saved: Sequence[int] = self._call_save_retried(stored_events, kwargs)
        return saved

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def _call_save_retried(
        self, stored_events: Sequence[StoredEvent], kwargs: dict[str, Any]
    ) -> Sequence[int]:
        return self._call_save(stored_events, kwargs)

    def _call_save(
        self, stored_events: Sequence[StoredEvent], kwargs: dict[str, Any]
    ) -> Sequence[int]:
        cases: Sequence[CaseRow] = kwargs.get("cases", ())
        commands: Sequence[CommandRow] = kwargs.get("commands", ())
        heads: Sequence[Head] = kwargs.get("heads", ())
        params = (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
            Jsonb([_jsonable(row) for row in cases]) if cases else None,
            Jsonb([_jsonable(row) for row in commands]) if commands else None,
            [h.originator_id for h in heads] if heads else None,
            [h.version for h in heads] if heads else None,
            [h.state for h in heads] if heads else None,
        )
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                self.text("save", lambda: self.call_save, conn), params, prepare=True, binary=True
            )
            saved = [row[SAVE_FUNCTION] for row in curs.fetchall()]
            with contextlib.suppress(psycopg.Error):  # saved all the same
                curs.execute(self.text("notify", lambda: self.call_notify, conn), prepare=True)
            return saved


class HorizonSubscription(PostgresSubscription):
    """The library's subscription, woken by the store's notifications, that also reads again
    soon while committed rows wait behind a transaction still running: when that transaction
    is not a save (or is another database's) its end sends no notification."""

    def _pull(self) -> None:
        super()._pull()
        recorder = self._recorder
        assert isinstance(recorder, PostgresCaseRecorder)
        if not self._has_been_stopped and recorder.held_back():
            self._has_been_notified.wait(HELD_POLL)
            self._has_been_notified.set()


def _jsonable(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in row._asdict().items()  # type: ignore[attr-defined]
    }


def ensure_schema(url: StoreUrl, *, create: bool = True) -> bool:
    """Whether the store a PostgreSQL URL names was there (its case table in its schema, or
    in the search path); with ``create``, create its schema if missing. A server that cannot be
    reached is said so at once, not after the connection pool's retries (a cluster's store
    waits through a failover for its primary first, as its actions do)."""
    deadline = time.monotonic() + url.failover_timeout
    while True:
        try:
            return _ensure_schema(url, create=create)
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline or not lost_server(exc):
                raise StoreUnavailable(
                    f"cannot connect to PostgreSQL: {str(exc).strip()}"
                ) from None
            time.sleep(Rider.PROBE_INTERVAL)


def _ensure_schema(url: StoreUrl, *, create: bool) -> bool:
    conninfo = make_conninfo("", **url.conninfo)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        table = f"{url.schema}.{CASES_TABLE}" if url.schema else CASES_TABLE
        found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
        existed = bool(found and found[0])
        if existed or not create or not url.schema:
            return existed
        exists = conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (url.schema,)
        ).fetchone()
        if not exists:
            # Another process may create it at the same moment.
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(url.schema)))
        return False


# The store's queries there (engine/storage/store.py, on a PostgreSQL store) ------------------


def _ours(recorder: ApplicationRecorder) -> PostgresCaseRecorder:
    assert isinstance(recorder, PostgresCaseRecorder)
    return recorder


def query(recorder: ApplicationRecorder, text: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    datastore = _ours(recorder).datastore

    def run() -> list[dict[str, Any]]:
        with datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(text.encode(), params)
            return [dict(row) for row in curs.fetchall()]

    return ride(datastore, run)


def write(recorder: ApplicationRecorder, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Statements (in the dialect's final text) run in one transaction."""
    with _ours(recorder).datastore.transaction(commit=True) as curs:
        for text, params in statements:
            curs.execute(text.encode(), params)


def select_events(
    store_recorder: ApplicationRecorder, ids: Sequence[UUID], *, first_only: bool = False
) -> list[tuple[UUID, int, str, bytes]]:
    """Stored events of these aggregates in (aggregate, version) order, in one query (only
    each one's first with ``first_only``)."""
    recorder = _ours(store_recorder)
    statement = SQL(
        "SELECT originator_id, originator_version, topic, state FROM {}.{} "
        "WHERE originator_id = ANY(%s) {} ORDER BY originator_id, originator_version"
    ).format(
        Identifier(recorder.datastore.schema),
        Identifier(recorder.events_table_name),
        SQL("AND originator_version = 1" if first_only else ""),
    )

    def run() -> list[tuple[UUID, int, str, bytes]]:
        with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, (list(ids),))
            return [
                (r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"]))
                for r in curs.fetchall()
            ]

    return ride(recorder.datastore, run)


def select_with_index(
    store_recorder: ApplicationRecorder, uid: UUID
) -> tuple[list[tuple[int, str, bytes]], int | None]:
    """One aggregate's stored events in version order and, read in the same statement (so
    from the same snapshot), the version the case index names for it (None: no row, as for
    an order). A row of the index comes back even when no event does."""
    recorder = _ours(store_recorder)

    def run() -> list[Any]:
        with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            text = recorder.text("select_with_index", lambda: _select_with_index(recorder), conn)
            curs.execute(text, (str(uid), uid), prepare=True)
            return curs.fetchall()

    rows = ride(recorder.datastore, run)
    indexed = rows[0]["indexed"] if rows else None
    events = [
        (r["originator_version"], r["topic"], bytes(r["state"]))
        for r in rows
        if r["originator_version"] is not None
    ]
    return events, indexed


def _select_with_index(recorder: PostgresCaseRecorder) -> Composed:
    return SQL(
        "SELECT e.originator_version, e.topic, e.state, "
        "(SELECT c.version FROM {schema}.{cases} c WHERE c.case_id = %s) AS indexed "
        "FROM (VALUES (1)) AS one(x) LEFT JOIN {schema}.{events} e "
        "ON e.originator_id = %s ORDER BY e.originator_version"
    ).format(
        schema=Identifier(recorder.datastore.schema),
        cases=Identifier(CASES_TABLE),
        events=Identifier(recorder.events_table_name),
    )


def select_events_with_index(
    store_recorder: ApplicationRecorder, ids: Sequence[UUID]
) -> tuple[list[tuple[UUID, int, str, bytes]], dict[UUID, int]]:
    """The stored events of these aggregates in (aggregate, version) order and the versions
    the case index names for them, in one statement (one snapshot: an action committed
    meanwhile, which writes both, cannot make them differ)."""
    recorder = _ours(store_recorder)
    statement = SQL(
        "SELECT e.originator_id, e.originator_version, e.topic, e.state, c.version AS indexed "
        "FROM {schema}.{events} e LEFT JOIN {schema}.{cases} c "
        "ON e.originator_version = 1 AND c.case_id = e.originator_id::text "
        "WHERE e.originator_id = ANY(%s) ORDER BY e.originator_id, e.originator_version"
    ).format(
        schema=Identifier(recorder.datastore.schema),
        events=Identifier(recorder.events_table_name),
        cases=Identifier(CASES_TABLE),
    )

    def run() -> list[Any]:
        with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, (list(ids),))
            return curs.fetchall()

    rows = ride(recorder.datastore, run)
    indexed = {r["originator_id"]: int(r["indexed"]) for r in rows if r["indexed"] is not None}
    events = [
        (r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"])) for r in rows
    ]
    return events, indexed


def wake_listeners(store_recorder: ApplicationRecorder) -> None:
    """NOTIFY the store's channel, as every save does after it: each subscription listening
    reads the log again. A subscription reads what is recorded before it starts listening, so
    an event committed between the two is seen only at the next notification (or this one)."""
    recorder = _ours(store_recorder)
    with recorder.datastore.get_connection() as conn:
        conn.execute(recorder.call_notify)
