"""Store URLs to the library's recorders; events as readable JSON; the case index.

The event store is the `eventsourcing` library's own: its PostgreSQL recorder for
``postgresql://`` URLs and its SQLite recorder for ``sqlite://`` URLs. Two small tables are
written in the same transaction as the events, through the recorders' insert hook:

- ``aftersales_cases``: one row per case (status, merchant, due deadline), so that listing cases
  and finding due deadlines never replays the log;
- ``aftersales_commands``: one row per command id, so a retried command changes nothing.

Three more hold who may act over HTTP (``engine/access/principal_store.py``):
``aftersales_principals``, ``aftersales_keys`` (hashes only) and ``aftersales_access_log``, the
history of both.

A view ``aftersales_event_log`` shows every event as JSON for a person with ``psql``/``sqlite3``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import (
    Recording,
)
from eventsourcing.sqlite import SQLiteDatastore
from eventsourcing.utils import TopicError

from aftersales.engine.domain.errors import AftersalesError, Poisoned, StoreUnavailable
from aftersales.engine.domain.events import (
    GENESIS_HASH,
    Aggregate,
    Unreadable,
    check_times,
    verified_hash,
)
from aftersales.engine.domain.invariants import CaseReplay
from aftersales.engine.storage.case_index import Head, take_events
from aftersales.engine.storage.event_mapper import JsonTranscoder, PydanticMapper
from aftersales.engine.storage.library import record
from aftersales.engine.storage.sql import CASES_TABLE, SQLITE, Dialect, utc_text
from aftersales.engine.storage.sqlite import SQLiteCaseRecorder
from aftersales.engine.storage.urls import parse_store_url

APP_NAME = "Aftersales"


# The application -------------------------------------------------------------------------------


class AftersalesStore(Application[UUID]):
    """The library's application, configured from a store URL, with the JSON mapper."""

    name = APP_NAME
    env: ClassVar[dict[str, str]] = {}
    mapper: PydanticMapper

    def __init__(self, url: str | None = None, *, cache_size: int = 0, create: bool = True) -> None:
        """Open the store the URL names. With ``create`` (writers), a store that is not there
        yet is created (``self.created``); without it (readers), a missing store is refused
        and nothing is created."""
        self.url = parse_store_url(url)
        self.events_saved = 0
        # Every aggregate read is checked (``rebuild``); False only to measure what that
        # costs (scripts/bench_projections.py).
        self.verify_reads = True
        # ... and its history replayed through the audit's cheap checks, a case's against its
        # index row (``check_index``); False only to measure that (scripts/bench.py).
        self.replay_reads = True
        # ... and every save appends only on the stored events it builds on (``Head``); False
        # only to measure that (scripts/bench.py).
        self.check_heads = True
        # A standby's store (engine/storage/replica.py): read, never written, not even the
        # projections' tables or their catching up (the primary's projectors keep them).
        self.reads_only = False
        if self.url.kind == "postgresql":
            from aftersales.engine.storage.postgres import ensure_schema

            existed = ensure_schema(self.url, create=create)
        else:
            assert self.url.path is not None
            existed = self.url.path == ":memory:" or os.path.exists(self.url.path)
        if not existed and not create:
            raise StoreUnavailable(
                f"no store at {self.url.redacted} (a read creates nothing): create it with "
                "`aftersales init`, or any command that records an action"
            )
        self.created = not existed
        env = dict(self.url.env)
        if cache_size > 0:
            # The library's aggregate cache: what this process saved last, kept as saved (no
            # fast-forward read, no copy). A cached aggregate may be stale if another process
            # moved it on; saving on it then fails on its version, and the caller forgets it
            # and tries again on fresh state (see engine/application/handler.py).
            env.update(
                AGGREGATE_CACHE_MAXSIZE=str(cache_size),
                AGGREGATE_CACHE_FASTFORWARD="n",
                DEEPCOPY_FROM_AGGREGATE_CACHE="n",
            )
        super().__init__(env=env)

    def cached(self, uid: UUID) -> Any | None:
        """The aggregate as this process last saved it, if the cache has it."""
        cache = self.repository.cache
        if cache is None:
            return None
        try:
            return cache.get(uid)
        except KeyError:
            return None

    def forget(self, uid: UUID) -> None:
        """Drop an aggregate from the cache (its save failed: the store is the truth)."""
        cache = self.repository.cache
        if cache is not None:
            with contextlib.suppress(KeyError):
                cache.get(uid, evict=True)

    def construct_mapper(self) -> PydanticMapper:
        return PydanticMapper(transcoder=JsonTranscoder())

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """The library's save, for our aggregates only (so without its runtime protocol
        checks, a tenth of a single action's Python time), counting the events it recorded:
        bulk paths report how many events they appended from ``events_saved``, exactly,
        whatever else is being written to the store at the same time."""
        processing: ProcessingEvent[UUID] = ProcessingEvent()
        heads: list[Head] = []
        for obj in objs:
            if obj is not None:
                assert isinstance(obj, Aggregate)
                processing.events.extend(take_events([obj], heads))
                processing.aggregates[obj.id] = obj
        processing.saved_kwargs.update(kwargs)
        processing.saved_kwargs["heads"] = heads if self.check_heads else []
        recordings = record(self, processing)
        self.events_saved += len(recordings)
        return recordings

    # Plain SQL for the index tables ---------------------------------------------------------

    @property
    def dialect(self) -> Dialect:
        if self.is_postgres:
            return Dialect(postgres=True, schema=self.recorder.datastore.schema)  # type: ignore[attr-defined]
        return SQLITE

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read query on the store. Write ``{t}`` before a table name for its place
        (schema on PostgreSQL) and ``?`` for parameters on both backends
        (``engine.storage.sql``)."""
        recorder = self.recorder
        text = self.dialect(sql)
        if self.is_postgres:
            import aftersales.engine.storage.postgres as postgres

            return postgres.query(recorder, text, params)
        assert isinstance(recorder, SQLiteCaseRecorder)
        datastore: SQLiteDatastore = recorder.datastore
        with datastore.transaction(commit=False) as c:
            c.execute(text, tuple(params))
            return [dict(row) for row in c.fetchall()]

    def write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run write statements (written as for ``query``) in one transaction."""
        recorder = self.recorder
        dialect = self.dialect
        if self.is_postgres:
            import aftersales.engine.storage.postgres as postgres

            postgres.write(recorder, [(dialect(sql), params) for sql, params in statements])
            return
        assert isinstance(recorder, SQLiteCaseRecorder)
        with recorder.datastore.transaction(commit=True) as c:
            for sql, params in statements:
                c.execute(dialect(sql), tuple(params))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one write statement on the store, committed (``{t}`` and ``?`` as in ``query``)."""
        self.write([(sql, params)])

    def select_rows(
        self, ids: Sequence[UUID], *, first_only: bool = False
    ) -> list[tuple[UUID, int, str, bytes]]:
        """The stored events (aggregate, version, topic, bytes) of these aggregates in one
        query, in (aggregate, version) order; with ``first_only``, only each one's first."""
        if not ids:
            return []
        recorder = self.recorder
        if self.is_postgres:
            import aftersales.engine.storage.postgres as postgres

            return postgres.select_events(recorder, ids, first_only=first_only)
        assert isinstance(recorder, SQLiteCaseRecorder)
        marks = SQLITE.marks(len(ids))
        first = "AND originator_version = 1 " if first_only else ""
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT originator_id, originator_version, topic, state FROM "
                f"{recorder.events_table_name} WHERE originator_id IN ({marks}) {first}"
                "ORDER BY originator_id, originator_version",
                [i.hex for i in ids],
            )
            return [(UUID(r[0]), r[1], r[2], bytes(r[3])) for r in c.fetchall()]

    def load_many(
        self, ids: Sequence[UUID], poisoned: dict[UUID, Poisoned] | None = None
    ) -> dict[UUID, Any]:
        """Rebuild many aggregates with one query (for bulk paths); absent ids are left out.
        An aggregate with a stored event that cannot be used is left out too, and its refusal
        put in ``poisoned`` (raised at once if no such dict is given)."""
        by_id: dict[UUID, list[tuple[int, str, bytes]]] = {}
        rows, indexed = self.select_rows_with_index(ids)
        for uid, version, topic, state in rows:
            by_id.setdefault(uid, []).append((version, topic, state))
        aggregates: dict[UUID, Any] = {}
        for uid, events in by_id.items():
            try:
                self.check_index(uid, events, indexed.get(uid))
                aggregates[uid] = self.rebuild(uid, events)
            except Poisoned as exc:
                if poisoned is None:
                    raise
                poisoned[uid] = exc
        return aggregates

    def load(self, uid: UUID, version: int | None = None) -> Any | None:
        """One aggregate from its events (up to ``version``), or None if it has none: the
        library's repository without its per-event protocol checks, on the hot path of every
        single action. Its hash chain and the legality of its history are checked as it is
        read (``rebuild``), and a case's whole history against the case index, read in the
        same statement (``check_index``)."""
        if version is not None:
            events = [
                (s.originator_version, s.topic, bytes(s.state))
                for s in self.recorder.select_events(uid, lte=version)
            ]
            return self.rebuild(uid, events, whole=False) if events else None
        events, indexed = self.select_with_index(uid)
        if not events:
            if indexed is not None and self.replay_reads:
                raise Poisoned(
                    None,
                    f"case {uid}",
                    int(indexed),
                    f"the case index says version {indexed}, but the case has no stored "
                    "events: they were deleted",
                )
            return None
        self.check_index(uid, events, indexed)
        return self.rebuild(uid, events)

    def select_with_index(self, uid: UUID) -> tuple[list[tuple[int, str, bytes]], int | None]:
        """An aggregate's stored events and the version the case index names (one query)."""
        recorder = self.recorder
        if self.is_postgres:
            import aftersales.engine.storage.postgres as postgres

            return postgres.select_with_index(recorder, uid)
        assert isinstance(recorder, SQLiteCaseRecorder)
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT e.originator_version, e.topic, e.state, "
                f"(SELECT version FROM {CASES_TABLE} WHERE case_id = ?) "
                f"FROM (SELECT 1) AS one LEFT JOIN {recorder.events_table_name} e "
                "ON e.originator_id = ? ORDER BY e.originator_version",
                (str(uid), uid.hex),
            )
            rows = c.fetchall()
        indexed = rows[0][3] if rows else None
        return [(r[0], r[1], bytes(r[2])) for r in rows if r[0] is not None], indexed

    def select_rows_with_index(
        self, ids: Sequence[UUID]
    ) -> tuple[list[tuple[UUID, int, str, bytes]], dict[UUID, int]]:
        """``select_rows`` of these aggregates and the versions the case index names for them
        (those it has rows for), read from one snapshot."""
        if not ids:
            return [], {}
        recorder = self.recorder
        if self.is_postgres:
            import aftersales.engine.storage.postgres as postgres

            return postgres.select_events_with_index(recorder, ids)
        assert isinstance(recorder, SQLiteCaseRecorder)
        marks = SQLITE.marks(len(ids))
        # Both reads in one transaction: SQLite gives them the same snapshot.
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(
                "SELECT originator_id, originator_version, topic, state FROM "
                f"{recorder.events_table_name} WHERE originator_id IN ({marks}) "
                "ORDER BY originator_id, originator_version",
                [i.hex for i in ids],
            )
            rows = [(UUID(r[0]), r[1], r[2], bytes(r[3])) for r in c.fetchall()]
            c.execute(
                f"SELECT case_id, version FROM {CASES_TABLE} WHERE case_id IN ({marks})",
                [str(i) for i in ids],
            )
            indexed = {UUID(r[0]): int(r[1]) for r in c.fetchall()}
        return rows, indexed

    def check_index(
        self, uid: UUID, events: Sequence[tuple[int, str, bytes]], indexed: int | None
    ) -> None:
        """A case's stored events end where the case index, written in the same transaction
        by every save, says they end: a deleted last event, or one appended outside the
        engine, is poison (``Poisoned``, naming it), never read as the case."""
        if not self.replay_reads or not events or not events[0][1].endswith(":CaseOpened"):
            return
        last = events[-1][0]
        if indexed is None:
            raise Poisoned(
                self.position_of(uid, 1),
                f"CaseOpened of case {uid}",
                1,
                "the case index has no row for this case: it was not written by the engine",
            )
        if indexed > last:
            topic = events[-1][1]
            raise Poisoned(
                self.position_of(uid, last),
                f"{topic.rpartition(':')[2] or 'an event'} of case {uid}",
                last,
                f"the case index says version {indexed}, but the stored events end here: "
                "events are missing from the end (deleted?)",
            )
        if indexed < last:
            version = indexed + 1
            topic = next((t for v, t, _ in events if v == version), "")
            raise Poisoned(
                self.position_of(uid, version),
                f"{topic.rpartition(':')[2] or 'an event'} of case {uid}",
                version,
                f"the case index ends at version {indexed}: this event was not written by the "
                "engine (appended to the store from outside it)",
            )

    def rebuild(
        self, uid: UUID, events: Sequence[tuple[int, str, bytes]], *, whole: bool = True
    ) -> Any:
        """An aggregate from its stored events (version, topic, bytes) in version order, each
        checked before it is used: versions run 1, 2, 3 ..., each event's hash is its content's
        chained to the one before (``engine.domain.events.verified_hash``, the chain the audit
        checks), it reads as its class with times that convert to UTC, and the history it
        makes is one the engine could have written: for a case, the audit's cheap checks
        (``invariants.CaseReplay``: transitions, deadlines, time, money), for an order, no
        line refunded beyond what was paid. The first that fails refuses the whole aggregate
        with ``Poisoned``, naming it: nothing is guessed. ``whole``: the events are the whole
        history (not a prefix up to a version), so the last action's consequences are there."""
        aggregate: Any = None
        previous = GENESIS_HASH
        decode = self.mapper.decode
        replay: CaseReplay | None = None
        checked, replayed = self.verify_reads, self.replay_reads
        for expected, (version, topic, state) in enumerate(events, start=1):
            try:
                if version != expected:
                    raise Unreadable(f"version {expected} is missing before it (deleted?)")
                if checked:
                    previous = verified_hash(previous, uid, version, topic, state)
                event = decode(uid, version, topic, state)
                if checked:
                    check_times(event)
                if replayed:
                    if version == 1 and topic.endswith(":CaseOpened"):
                        replay = CaseReplay()
                    if replay is not None:
                        found = replay.step(event)  # type: ignore[arg-type]
                        if found:
                            raise Unreadable(f"not a history the engine writes: {found[0].message}")
                    elif aggregate is not None:
                        aggregate.check_new(event)
                aggregate = event.mutate(aggregate)
            except Exception as exc:
                raise self.poisoned(uid, events, version, exc) from None
        if aggregate is not None:
            aggregate.last_stored = events[-1][2]  # what a save on it builds on
        if replay is not None and whole:
            found = replay.finish()
            if found:
                version = found[0].version
                raise self.poisoned(
                    uid,
                    events,
                    version,
                    Unreadable(f"not a history the engine writes: {found[0].message}"),
                )
        return aggregate

    def poisoned(
        self,
        uid: UUID,
        events: Sequence[tuple[int, str, bytes]],
        version: int,
        exc: Exception,
    ) -> Poisoned:
        """The refusal naming one stored event of an aggregate that cannot be used."""
        why = (
            str(exc)
            if isinstance(exc, Unreadable)
            else f"not a history the engine writes: {exc.message}"
            if isinstance(exc, AftersalesError)
            else reason_of(exc)
        )
        topic = next((t for v, t, _ in events if v == version), "")
        what = f"{topic.rpartition(':')[2] or 'an event'} of {_aggregate_name(uid, events)}"
        return Poisoned(self.position_of(uid, version), what, version, why)

    def describe(self, uid: UUID) -> str:
        """An aggregate as a person knows it (``case <id>``, ``order <order id>``)."""
        first = [
            (s.originator_version, s.topic, bytes(s.state))
            for s in self.recorder.select_events(uid, lte=1)
        ]
        return _aggregate_name(uid, first)

    def position_of(self, uid: UUID, version: int) -> int | None:
        """The notification id (position in the log) of one stored event."""
        table = self.recorder.events_table_name  # type: ignore[attr-defined]
        rows = self.query(
            f"SELECT {'notification_id' if self.is_postgres else 'rowid'} AS position "
            f"FROM {{t}}{table} WHERE originator_id = ? AND originator_version = ?",
            (uid if self.is_postgres else uid.hex, version),
        )
        return int(rows[0]["position"]) if rows else None

    @property
    def is_postgres(self) -> bool:
        return self.url.kind == "postgresql"

    def time_param(self, value: datetime) -> Any:
        """A time as the store compares it: timestamptz on PostgreSQL, UTC text on SQLite."""
        return value if self.is_postgres else utc_text(value)


def reason_of(exc: BaseException) -> str:
    """Why a stored event could not be read, on one line."""
    if isinstance(exc, TopicError):
        return "its type (topic) is unknown to this engine"
    text = " ".join(str(exc).split())[:300]
    return f"it does not read as its class ({text or type(exc).__name__})"


def _aggregate_name(uid: UUID, events: Sequence[tuple[int, str, bytes]]) -> str:
    """An aggregate as a person knows it: ``case <id>``, or ``order <order id>`` (read from its
    first event, leniently: it may be the damaged one)."""
    first_topic = events[0][1] if events else ""
    if first_topic.rpartition(":")[2] == "CaseOpened":
        return f"case {uid}"
    try:
        order_id = json.loads(events[0][2]).get("order_id") if events else None
    except (ValueError, AttributeError, RecursionError):
        order_id = None
    return f"order {order_id}" if isinstance(order_id, str) else f"aggregate {uid}"
