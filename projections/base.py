"""The machinery every projection shares: tables, batched changes, tracking, the library's hooks.

A projection (a *view*) is a class with a name, its tables and its ``Folds``: a table of event
class -> function that turns one event into row changes. Everything else is here:

- ``Fact``: one event as the projection sees it: its notification id and the typed event (the
  aggregates' own pydantic class, decoded and upcast by the store's mapper), whether it came from
  a bulk read of the notification log or from the library's subscription.
- ``Changes``: the rows one batch changes, keyed by primary key and merged in memory; each column
  says how a later change combines with what the table holds (``set``, ``keep``, ``add``, ``max``),
  so a batch's rows are written with one upsert statement per table.
- ``PostgresViewRecorder`` / ``SQLiteViewRecorder``: the library's ``TrackingRecorder`` subclasses
  that own a view's tables and its tracking table, and write a batch's rows and one tracking record
  (the batch's last notification id) in one transaction (a catch-up writes every view's batch of
  the same range in one, ``write_all``). The transaction first checks that each view's tracking
  record still says where its batch started, so a batch is applied exactly once even when a
  runner is killed, two runners race, or the view is rebuilt under a running follower.
- ``ViewProjection``: the library's ``Projection`` for its ``ProjectionRunner`` (``--follow`` on
  PostgreSQL); it collects the events the runner hands over one at a time into batches.

Adding a projection: write a module with a ``View`` subclass (tables + folds + its report
queries) and add it to ``projections.registry.VIEWS``.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from datetime import datetime
from decimal import Decimal
from functools import cache, cached_property
from typing import Any, ClassVar, Literal, TypeVar, overload

import orjson
from eventsourcing.persistence import (
    IntegrityError,
    OperationalError,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore, SQLiteTrackingRecorder
from eventsourcing.utils import get_topic
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

from aftersales.engine.domain.events import Event
from aftersales.engine.storage.library import insert_tracking, max_tracking_id
from aftersales.engine.storage.sql import SQLITE, Dialect, utc_text
from aftersales.engine.storage.store import APP_NAME

PREFIX = "proj_"

# Facts and folds ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fact:
    """One event at its place in the log: its notification id and the event itself, decoded to
    its class and upcast by the store's mapper (the one decoding the aggregates use), whether it
    came from a bulk read of the notification log or from the library's subscription."""

    id: int
    event: Event


E = TypeVar("E", bound=Event)
A = TypeVar("A", bound=Event)
B = TypeVar("B", bound=Event)
C = TypeVar("C", bound=Event)
Fold = Callable[[E, "Changes", int], None]
"""How one event changes a batch's rows: ``fold(event, changes, notification_id)``."""


class Folds:
    """A view's table of event class -> fold function, filled by decorating the functions:

        folds = Folds()

        @folds.on(CaseRefunded)
        def _refunded(e: CaseRefunded, changes: Changes, seq: int) -> None: ...

    An event is folded by the function of its exact class (one dict lookup per event, on the
    hot path of a rebuild), so a subclass needs its own entry; a function may take several
    classes, typed as their union or a common base."""

    def __init__(self) -> None:
        self.table: dict[type[Event], Fold[Any]] = {}

    # Several classes type the function's event as their union (mypy would otherwise infer
    # their common base, which may lack the fields the function reads).
    @overload
    def on(self, a: type[A], /) -> Callable[[Fold[A]], Fold[A]]: ...
    @overload
    def on(self, a: type[A], b: type[B], /) -> Callable[[Fold[A | B]], Fold[A | B]]: ...
    @overload
    def on(
        self, a: type[A], b: type[B], c: type[C], /
    ) -> Callable[[Fold[A | B | C]], Fold[A | B | C]]: ...
    @overload
    def on(self, *classes: type[E]) -> Callable[[Fold[E]], Fold[E]]: ...
    def on(self, *classes: type[Event]) -> Callable[[Fold[Any]], Fold[Any]]:
        def register(fold: Fold[Any]) -> Fold[Any]:
            for cls in classes:
                if cls in self.table:
                    raise TypeError(f"{cls.__name__} has two folds")
                self.table[cls] = fold
            return fold

        return register


# Values as the tables keep them -----------------------------------------------------------------


def cents(value: Decimal) -> int:
    """Money is kept as whole cents (bigint) on both backends: exact, and SUM works everywhere."""
    return int((value * 100).to_integral_value())


def money(value_cents: int | None) -> str:
    return f"{Decimal(value_cents or 0) / 100:.2f}"


# Tables ----------------------------------------------------------------------------------------

Kind = Literal["text", "time", "int", "uuid"]
Merge = Literal["key", "set", "keep", "add", "max"]
_PG_TYPES = {"text": "text", "time": "timestamptz", "int": "bigint", "uuid": "uuid"}
_LITE_TYPES = {"text": "TEXT", "time": "TEXT", "int": "INTEGER", "uuid": "TEXT"}


@dataclass(frozen=True)
class Column:
    """A column and how a batch's value merges into the row already there:
    ``set`` replaces it, ``keep`` keeps the first value that is not null, ``add`` adds to it,
    ``max`` keeps the larger; ``key`` columns form the primary key."""

    name: str
    kind: Kind
    merge: Merge = "set"
    doc: str = ""


def col(name: str, kind: Kind, merge: Merge = "set", doc: str = "") -> Column:
    return Column(name, kind, merge, doc)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    indexes: tuple[tuple[str, ...], ...] = ()
    doc: str = ""

    # Worked out once per table (a fold asks for them once per row).
    @cached_property
    def key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.merge == "key")

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @cached_property
    def _empty(self) -> dict[str, Any]:
        return {c.name: (0 if c.merge == "add" else None) for c in self.columns}

    def blank(self, key: tuple[Any, ...]) -> dict[str, Any]:
        row = self._empty.copy()
        for name, value in zip(self.key, key, strict=True):
            row[name] = value
        return row

    # DDL and the upsert, per backend ---------------------------------------------------------

    def ddl(self, postgres: bool) -> list[str]:
        types = _PG_TYPES if postgres else _LITE_TYPES
        cols = []
        for c in self.columns:
            null = " NOT NULL" if c.merge in ("key", "add") else ""
            default = " DEFAULT 0" if c.merge == "add" else ""
            cols.append(f"{c.name} {types[c.kind]}{null}{default}")
        cols.append(f"PRIMARY KEY ({', '.join(self.key)})")
        return [
            f"CREATE TABLE IF NOT EXISTS {{t}}{self.name} ({', '.join(cols)})",
            *self.index_ddl(),
        ]

    def index_ddl(self) -> list[str]:
        return [
            f"CREATE INDEX IF NOT EXISTS {self.name}_{'_'.join(index)} "
            f"ON {{t}}{self.name} ({', '.join(index)})"
            for index in self.indexes
        ]

    def upsert_json(self, postgres: bool = True) -> str:
        """The same upsert for a whole batch of rows sent as one JSON array of arrays: one
        statement (on PostgreSQL one round trip; the server parses JSON far faster than rows
        are bound; on SQLite one step instead of one per row, each of which lets go of the
        GIL and waits to take it back while the next batch is being read)."""
        if postgres:
            fields = ", ".join(
                f"(r->>{i})::{_PG_TYPES[c.kind]}" for i, c in enumerate(self.columns)
            )
            values = f"SELECT {fields} FROM json_array_elements(?::json) AS r"
        else:
            # ``WHERE true``: SQLite's parser needs it before ON CONFLICT after a SELECT.
            fields = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(self.columns)))
            values = f"SELECT {fields} FROM json_each(?) WHERE true"
        return self.upsert(postgres=postgres, values=values)

    def upsert(self, postgres: bool, values: str | None = None) -> str:
        """The upsert of one row (``?`` per column), or of the rows ``values`` selects;
        ``postgres`` picks the backend's spelling of ``max``."""
        sets = []
        for c in self.columns:
            old, new = f"{self.name}.{c.name}", f"excluded.{c.name}"
            if c.merge == "set":
                sets.append(f"{c.name} = {new}")
            elif c.merge == "keep":
                sets.append(f"{c.name} = COALESCE({old}, {new})")
            elif c.merge == "add":
                sets.append(f"{c.name} = {old} + {new}")
            elif c.merge == "max":
                if postgres:
                    sets.append(f"{c.name} = GREATEST({old}, {new})")
                else:
                    sets.append(f"{c.name} = MAX(COALESCE({old}, {new}), COALESCE({new}, {old}))")
        action = f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING"
        return (
            f"INSERT INTO {{t}}{self.name} ({', '.join(self.names)}) "
            + (values or f"VALUES ({Dialect.marks(len(self.columns))})")
            + " "
            f"ON CONFLICT ({', '.join(self.key)}) {action}"
        )


# A batch's changes -----------------------------------------------------------------------------


class Changes:
    """The rows one batch changes, merged in memory exactly as the upsert merges them."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        self.tables: dict[str, Table] = {}

    def row(self, table: Table, *key: Any) -> dict[str, Any]:
        rows = self.rows.get(table.name)
        if rows is None:
            rows = self.rows[table.name] = {}
            self.tables[table.name] = table
        found = rows.get(key)
        if found is None:
            found = rows[key] = table.blank(key)
        return found

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def batches(self, postgres: bool) -> Iterator[tuple[Table, list[list[Any]]]]:
        """Each table's rows as lists of column values in the table's order. On SQLite, times
        are UTC text and ids text, as its tables keep them; PostgreSQL gets them as they are:
        ``orjson`` writes a time as ``isoformat`` and an id as ``str`` would, and the server
        casts them (``Table.upsert_json``)."""
        for name, rows in self.rows.items():
            table = self.tables[name]
            names = table.names
            if postgres:
                yield table, [[row[n] for n in names] for row in rows.values()]
                continue
            convert = [
                (i, _converter(c.kind, postgres))
                for i, c in enumerate(table.columns)
                if c.kind in ("time", "uuid")
            ]
            values = []
            for row in rows.values():
                line = [row[n] for n in names]
                for i, f in convert:
                    if line[i] is not None:
                        line[i] = f(line[i])
                values.append(line)
            yield table, values


def keep(row: dict[str, Any], name: str, value: Any) -> None:
    """Within a batch, as in the table: the first value that is not null stays."""
    if row[name] is None:
        row[name] = value


def bigger(row: dict[str, Any], name: str, value: Any) -> None:
    if row[name] is None or (value is not None and value > row[name]):
        row[name] = value


def _converter(kind: str, postgres: bool) -> Callable[[Any], Any]:
    if kind == "uuid":
        return str
    if postgres:
        return datetime.isoformat
    return utc_text


# A view: what a projection module defines ------------------------------------------------------


class View(ABC):
    """One projection: its name, its tables, and its folds (the event classes it reads are
    the ones it has a fold for)."""

    name: ClassVar[str]
    tables: ClassVar[tuple[Table, ...]]
    folds: ClassVar[Folds]
    events: ClassVar[tuple[type[Event], ...]]
    doc: ClassVar[str] = ""
    # A rebuild's view writes its folds' rows into tables of other names (``shadow_view``):
    # the table each fold's table name is written to.
    renames: ClassVar[dict[str, Table]] = {}

    @classmethod
    def stored(cls, table: Table) -> Table:
        """The table a fold's rows for ``table`` are written to."""
        return cls.renames.get(table.name, table)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        folds = getattr(cls, "folds", None)
        if folds is not None:  # not on a base that leaves its folds to subclasses
            cls.events = tuple(folds.table)

    @classmethod
    def topics(cls) -> tuple[str, ...]:
        return tuple(get_topic(e) for e in cls.events)

    @classmethod
    def fold(cls, facts: Iterable[Fact], changes: Changes) -> None:
        """Merge these events (in log order) into the batch's row changes; events this view
        has no fold for are passed over (one read of the log serves several views)."""
        table = cls.folds.table
        for fact in facts:
            fold = table.get(type(fact.event))
            if fold is not None:
                fold(fact.event, changes, fact.id)

    @classmethod
    def tracking_table(cls) -> str:
        return f"{PREFIX}{cls.name}_tracking"


class StalePosition(Exception):
    """The tracking record moved since the batch was read (another runner, or a rebuild)."""

    def __init__(self, expected: int | None, found: int | None) -> None:
        super().__init__(f"expected position {expected}, found {found}")
        self.found = found


Write = tuple["ViewRecorder", Changes, int | None]
"""One view's part of a shared write: its recorder, its batch's rows, where its batch started."""

# The library's tracking recorders, owning a view's tables ---------------------------------------


class ViewRecorder(TrackingRecorder, ABC):
    view: ClassVar[type[View]]
    datastore: Any

    def write(self, changes: Changes, tracking: Tracking, after: int | None) -> None:
        """Write a batch's rows and its tracking record in one transaction, if the tracking
        record is still at ``after`` (else raise StalePosition and write nothing)."""
        self.write_all([(self, changes, after)], tracking)

    @classmethod
    @abstractmethod
    def write_all(cls, writes: Sequence[Write], tracking: Tracking) -> None:
        """``write`` for several views' batches of the same range of the log, in one
        transaction on their (shared) datastore: each view's rows are written and its tracking
        record set to ``tracking`` if that record is still where the view's batch started
        (else StalePosition, and nothing of any of them is written)."""

    @abstractmethod
    def reset(self) -> None:
        """Drop the view's tables and its tracking record, and create them empty."""

    @abstractmethod
    def pending(self, position: int | None, events_table: str) -> int:
        """How many events this view reads lie after ``position`` in the log."""

    @abstractmethod
    def swap_in(self, built: ViewRecorder, position: int) -> None:
        """In one transaction: drop this view's tables, put the tables ``built`` (its rebuild,
        ``shadow_view``) holds in their place with this view's indexes, and set this view's
        position to ``position``, where the rebuild stands."""

    def _swap_statements(self, built: ViewRecorder, postgres: bool) -> list[str]:
        statements = []
        for table in self.view.tables:
            new = built.view.stored(table).name
            statements += [
                f"DROP TABLE IF EXISTS {{t}}{table.name}",
                f"ALTER TABLE {{t}}{new} RENAME TO {table.name}",
            ]
            if postgres:
                statements.append(
                    f"ALTER INDEX IF EXISTS {{t}}{new}_pkey RENAME TO {table.name}_pkey"
                )
            statements += table.index_ddl()
        return statements


class PostgresViewRecorder(PostgresTrackingRecorder, ViewRecorder):
    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        tracking_table_name: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(datastore, tracking_table_name=self.view.tracking_table(), **kwargs)
        self.dialect = Dialect(postgres=True, schema=self.datastore.schema)
        self.sql_create_statements += [Composed([SQL(s)]) for s in self._ddl()]
        self._lock_key = f"aftersales:{self.datastore.schema}:{self.view.name}"
        self._upserts = {
            name: self.dialect(t.upsert_json()).encode()
            for name, t in {t.name: t for t in self.view.tables}.items()
        }
        for name, t in self.view.renames.items():
            self._upserts[name] = self.dialect(t.upsert_json()).encode()

    def _ddl(self) -> list[str]:
        return [self.dialect(s) for table in self.view.tables for s in table.ddl(postgres=True)]

    def create_table(self) -> None:
        """Create the tables in one transaction under the view's lock, so that several
        processes starting at once on a new store do not trip over each other. (The
        library's own create_table also migrates old multi-row tracking tables, which a
        view's own tracking table never was.)"""
        with self.datastore.transaction(commit=True) as curs:
            self._lock(curs)
            for statement in self.sql_create_statements:
                curs.execute(statement, prepare=False)
            curs.execute(
                SQL(
                    "INSERT INTO {0}.{1} VALUES (%s, 1) ON CONFLICT (application_name) DO NOTHING"
                ).format(Identifier(self.datastore.schema), Identifier(self.tracking_table_name)),
                (self.table_migration_identifier,),
            )

    def _lock(self, curs: Cursor[DictRow]) -> None:
        curs.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._lock_key,))

    @classmethod
    def write_all(cls, writes: Sequence[Write], tracking: Tracking) -> None:
        """In one transaction, pipelined: every view's lock and position are asked for at once
        (one round trip), then every view's rows and tracking record are sent at once (one
        more), then the commit: a handful of round trips a batch, however many views and
        tables, where one by one it was half a dozen per view, each waiting for the GIL while
        the next batch is decoded."""
        if not writes:
            return
        datastore = writes[0][0].datastore
        params = {
            "application_name": tracking.application_name,
            "notification_id": tracking.notification_id,
        }
        # The views' locks are taken in one order, whatever order the views come in: two
        # runners writing some of the same views wait for one another but never deadlock.
        writes = sorted(writes, key=lambda write: write[0]._lock_key)  # type: ignore[attr-defined]
        with (
            datastore.get_connection() as conn,
            conn.transaction(),
            conn.pipeline(),
        ):
            asked = []
            for recorder, _, after in writes:
                assert isinstance(recorder, PostgresViewRecorder)
                assert recorder.datastore is datastore
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (recorder._lock_key,))
                curs = conn.cursor()
                curs.execute(
                    recorder.max_tracking_id_statement, (tracking.application_name,), prepare=True
                )
                asked.append((curs, after))
            for curs, after in asked:
                row = curs.fetchone()
                found = row["max"] if row else None
                if found != after:
                    raise StalePosition(after, found)
            recorded = []
            for recorder, changes, _ in writes:
                assert isinstance(recorder, PostgresViewRecorder)
                for table, rows in changes.batches(postgres=True):
                    conn.execute(recorder._upserts[table.name], (orjson.dumps(rows).decode(),))
                curs = conn.cursor()
                curs.execute(recorder.insert_tracking_statement, params, prepare=True)
                recorded.append(curs)
            # The tracking statement returns the position it set (the library's single-row
            # tracking, as these views' tables are): none if it did not move forward.
            for curs in recorded if datastore.single_row_tracking else ():
                if curs.fetchone() is None:
                    raise IntegrityError(
                        f"Failed to record tracking for {tracking.application_name} "
                        f"{tracking.notification_id}"
                    )

    def reset(self) -> None:
        with self.datastore.transaction(commit=True) as curs:
            self._lock(curs)
            for table in self.view.tables:
                curs.execute(self.dialect(f"DROP TABLE IF EXISTS {{t}}{table.name}").encode())
            curs.execute(
                SQL("DELETE FROM {0}.{1} WHERE application_name = %s").format(
                    Identifier(self.datastore.schema), Identifier(self.tracking_table_name)
                ),
                (APP_NAME,),
            )
            for statement in self._ddl():
                curs.execute(statement.encode())

    def swap_in(self, built: ViewRecorder, position: int) -> None:
        assert isinstance(built, PostgresViewRecorder)
        tracking = SQL("DELETE FROM {0}.{1} WHERE application_name = %s")
        with self.datastore.transaction(commit=True) as curs:
            self._lock(curs)
            built._lock(curs)
            for statement in self._swap_statements(built, postgres=True):
                curs.execute(self.dialect(statement).encode())
            for recorder in (self, built):
                curs.execute(
                    tracking.format(
                        Identifier(self.datastore.schema), Identifier(recorder.tracking_table_name)
                    ),
                    (APP_NAME,),
                )
            if position:
                insert_tracking(self, curs, Tracking(APP_NAME, position))

    def pending(self, position: int | None, events_table: str) -> int:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                SQL(
                    "SELECT count(*) AS n FROM {0}.{1} WHERE notification_id > %s "
                    "AND topic = ANY(%s)"
                ).format(Identifier(self.datastore.schema), Identifier(events_table)),
                (position or 0, list(self.view.topics())),
            )
            row = curs.fetchone()
            return int(row["n"]) if row else 0


class SQLiteViewRecorder(SQLiteTrackingRecorder, ViewRecorder):
    def __init__(self, datastore: SQLiteDatastore, **kwargs: Any) -> None:
        self.tracking_table_name = self.view.tracking_table()
        super().__init__(datastore, **kwargs)
        t = self.tracking_table_name
        self.insert_tracking_statement = (
            f"INSERT INTO {t} VALUES (:application_name, :notification_id) "
            f"ON CONFLICT (application_name) DO UPDATE SET notification_id = :notification_id "
            f"WHERE {t}.notification_id < :notification_id RETURNING notification_id"
        )
        self.select_max_tracking_id_statement = (
            f"SELECT MAX(notification_id) FROM {t} WHERE application_name=?"
        )
        self._upserts: dict[str, str] = {}

    def construct_create_table_statements(self) -> list[str]:
        statements = [
            f"CREATE TABLE IF NOT EXISTS {self.tracking_table_name} ("
            "application_name TEXT, notification_id INTEGER, "
            "PRIMARY KEY (application_name)) WITHOUT ROWID"
        ]
        statements += self._ddl()
        return statements

    def _ddl(self) -> list[str]:
        return [SQLITE(s) for table in self.view.tables for s in table.ddl(postgres=False)]

    def create_table(self) -> None:
        """Create the tables in one transaction (see the PostgreSQL recorder); SQLite may
        refuse a second process's schema change for a moment, so try a few times."""
        for attempt in range(20):
            try:
                with self.datastore.transaction(commit=True) as c:
                    for statement in self.create_table_statements:
                        c.execute(statement)
                    c.execute(
                        f"INSERT INTO {self.tracking_table_name} VALUES (?, 1) "
                        "ON CONFLICT (application_name) DO NOTHING",
                        (self.table_migration_identifier,),
                    )
                return
            except OperationalError:
                if attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _lock(self, c: SQLiteCursor) -> None:
        # Take the write lock before reading the position (a no-op write does it).
        c.execute(
            f"UPDATE {self.tracking_table_name} SET notification_id = notification_id "
            "WHERE application_name = ?",
            (APP_NAME,),
        )

    @classmethod
    def write_all(cls, writes: Sequence[Write], tracking: Tracking) -> None:
        if not writes:
            return
        datastore = writes[0][0].datastore
        with datastore.transaction(commit=True) as c:
            for recorder, changes, after in writes:
                assert isinstance(recorder, SQLiteViewRecorder)
                assert recorder.datastore is datastore
                recorder._lock(c)
                found = max_tracking_id(recorder, tracking.application_name, c)
                if found != after:
                    raise StalePosition(after, found)
                for table, rows in changes.batches(postgres=False):
                    c.execute(recorder._upsert(table), (orjson.dumps(rows).decode(),))
                insert_tracking(recorder, c, tracking)

    def _upsert(self, table: Table) -> str:
        found = self._upserts.get(table.name)
        if found is None:
            found = self._upserts[table.name] = SQLITE(
                self.view.stored(table).upsert_json(postgres=False)
            )
        return found

    def reset(self) -> None:
        with self.datastore.transaction(commit=True) as c:
            self._lock(c)
            for table in self.view.tables:
                c.execute(f"DROP TABLE IF EXISTS {table.name}")
            c.execute(
                f"DELETE FROM {self.tracking_table_name} WHERE application_name = ?",
                (APP_NAME,),
            )
            for statement in self._ddl():
                c.execute(statement)

    def swap_in(self, built: ViewRecorder, position: int) -> None:
        assert isinstance(built, SQLiteViewRecorder)
        with self.datastore.transaction(commit=True) as c:
            self._lock(c)
            for statement in self._swap_statements(built, postgres=False):
                c.execute(SQLITE(statement))
            for recorder in (self, built):
                c.execute(
                    f"DELETE FROM {recorder.tracking_table_name} WHERE application_name = ?",
                    (APP_NAME,),
                )
            if position:
                insert_tracking(self, c, Tracking(APP_NAME, position))

    def pending(self, position: int | None, events_table: str) -> int:
        topics = list(self.view.topics())
        marks = SQLITE.marks(len(topics))
        with self.datastore.transaction(commit=False) as c:
            c.execute(
                f"SELECT count(*) FROM {events_table} WHERE rowid > ? AND topic IN ({marks})",
                [position or 0, *topics],
            )
            return int(c.fetchone()[0])


REBUILDING = "__new"


@cache
def shadow_view(view: type[View]) -> type[View]:
    """The view a rebuild builds: the same folds, writing into tables of their own (named
    ``<table>__new``, without indexes while they fill) with a tracking table of their own, so
    the view's tables serve until the rebuild reaches the head and is swapped in."""
    renames = {
        t.name: dataclass_replace(t, name=f"{t.name}{REBUILDING}", indexes=()) for t in view.tables
    }
    return type(
        f"{view.__name__}Rebuild",
        (view,),
        {
            "name": f"{view.name}{REBUILDING}",
            "tables": tuple(renames.values()),
            "renames": renames,
        },
    )


@cache
def recorder_class(view: type[View], postgres: bool) -> type[ViewRecorder]:
    """The tracking recorder class of one view on one backend (the library's factories
    construct recorders from a class, so each view gets its own)."""
    base: type[ViewRecorder] = PostgresViewRecorder if postgres else SQLiteViewRecorder
    return type(f"{view.__name__}{base.__name__}", (base,), {"view": view})


# Applying a batch ------------------------------------------------------------------------------


def apply_batch(
    view: type[View],
    recorder: ViewRecorder,
    facts: Sequence[Fact],
    last_id: int,
    after: int | None,
) -> None:
    """Fold a batch and write it with one tracking record at ``last_id``."""
    changes = Changes()
    view.fold(facts, changes)
    recorder.write(changes, Tracking(APP_NAME, last_id), after)


def apply_batches(
    views: Sequence[tuple[type[View], ViewRecorder, int | None]],
    facts: Sequence[Fact],
    last_id: int,
) -> None:
    """Fold the same batch for several views (each with its recorder and the position its
    batch starts after) and write them all in one transaction, each with its tracking record
    at ``last_id``."""
    if not views:
        return
    writes: list[Write] = []
    for view, recorder, after in views:
        changes = Changes()
        view.fold(facts, changes)
        writes.append((recorder, changes, after))
    type(writes[0][0]).write_all(writes, Tracking(APP_NAME, last_id))


# The library's Projection, for its ProjectionRunner (follow mode on PostgreSQL) ------------------

Reader = Callable[[int, int], tuple[list[Fact], int, BaseException | None]]


class ViewProjection(Projection[ViewRecorder]):
    """Collects the events the runner hands over one by one into batches: a batch is written
    when it is full, or shortly after the last event arrived (``linger`` seconds)."""

    view_class: ClassVar[type[View]]
    batch_size: ClassVar[int] = 1000
    linger: ClassVar[float] = 0.02
    # What reads a range of the log checked (the runner's ``read``), set by whoever starts
    # the projection: (after, up to) -> (facts, position covered, the event stopped before).
    reader: Reader | None = None

    def __init__(self, view: ViewRecorder) -> None:
        super().__init__(view)
        self.position: int | None = view.max_tracking_id(APP_NAME)
        self.buffer: list[Fact] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True)
        self._flusher.start()

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        if self.error is not None:
            raise self.error
        with self._lock:
            self.buffer.append(Fact(tracking.notification_id, domain_event))
            if len(self.buffer) >= self.batch_size:
                self._flush()
                return
        self._wake.set()

    def _flush(self) -> None:
        if not self.buffer:
            return
        last = self.buffer[-1].id
        facts: Sequence[Fact] = self.buffer
        poison: BaseException | None = None
        if self.reader is not None:
            # The events handed over were decoded by the library, unchecked: fold the same
            # range read again with every event checked, up to one that cannot be used.
            facts, last, poison = self.reader(self.position or 0, last)
        if last != (self.position or 0):
            apply_batch(self.view_class, self.view, facts, last, self.position)
            self.position = last
        self.buffer = []
        if poison is not None:
            raise poison

    def _flush_loop(self) -> None:
        while not self._closed.is_set():
            if not self._wake.wait(0.5):
                continue
            self._wake.clear()
            self._closed.wait(self.linger)
            try:
                with self._lock:
                    self._flush()
            except BaseException as exc:  # handed to the runner's owner
                self.error = exc
                return

    def close(self) -> None:
        """Write what is buffered and stop the flusher."""
        self._closed.set()
        self._wake.set()
        self._flusher.join()
        if self.error is None:
            with self._lock:
                self._flush()


@cache
def projection_class(view: type[View]) -> type[ViewProjection]:
    return type(
        f"{view.__name__}Projection",
        (ViewProjection,),
        {"view_class": view, "name": f"{PREFIX}{view.name}", "topics": view.topics()},
    )


@dataclass
class Progress:
    """A callback's view of a long run."""

    view: str
    done: int = 0
    head: int = 0
    started: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]
