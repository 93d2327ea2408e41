"""Reading the log with every event checked, and the operator's quarantine of a known-bad event.

A stored event that cannot be read or verified is *poison*: its bytes are not JSON, its type is
unknown, a time on it cannot be read as UTC, or its hash is not its content's chained to the
event before it. Whatever needs it stops there and says exactly what and where (its position in
the log, its aggregate and version, why); nothing is guessed around it, and nothing else stops:

- an aggregate (a case, an order) with such an event is refused as a whole
  (``AftersalesStore.rebuild``);
- a projection reads the log through ``read_checked`` and stops before the first such event it
  reads, while the projections that do not read it go on.

An operator who has looked at such an event may *quarantine* it: a decision recorded in the
store (``aftersales_quarantine``: the position, the event it named, why it could not be read
then, the reason given, who decided and when), listed by ``aftersales quarantine list`` and shown
by ``aftersales audit`` for the case it belongs to. Projections skip a quarantined event as long
as it fails its checks (a quarantined event that reads and verifies is folded all the same, so no
row in that table takes sound money out); an aggregate is still refused (leaving one event out of
a case's history would be a guess at its state). Only an event that does fail its checks can be
quarantined.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

import aftersales.engine.domain.case
import aftersales.engine.domain.order  # noqa: F401
from aftersales.engine.domain.errors import Poisoned
from aftersales.engine.domain.events import (
    GENESIS_HASH,
    Event,
    Unreadable,
    check_times,
    stored_hash,
    verified_hash,
)
from aftersales.engine.storage.sqlite import SQLiteCaseRecorder
from aftersales.engine.storage.store import AftersalesStore, reason_of


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One stored event at its position, with the tail of the event before it (its hash is
    there, in the form the store writes), read in the same query."""

    position: int
    originator_id: UUID
    version: int
    topic: str
    state: bytes
    previous_tail: bytes | None

    @property
    def name(self) -> str:
        return self.topic.rpartition(":")[2] or "an event"


# The last bytes of the event before: enough for its hash, as the store writes it.
_TAIL = 80


# The event before, in the same aggregate: one lookup on the events table's primary key.
_JOIN = (
    "LEFT JOIN {events} p ON p.originator_id = e.originator_id "
    "AND p.originator_version = e.originator_version - 1 "
)


def known_topics() -> tuple[str, ...]:
    """The topic of every event type this engine knows: every ``Event`` subclass (the cases'
    and the orders' are loaded with this module)."""
    found: set[str] = set()
    classes: list[type[Event]] = [Event]
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        found.add(get_topic(cls))
    return tuple(sorted(found))


def read_rows(
    store: AftersalesStore,
    after: int,
    stop: int,
    limit: int,
    topics: Sequence[str] | None,
    *,
    previous: bool = True,
    known: Sequence[str] = (),
) -> list[StoredRow]:
    """The stored events at positions in (after, stop] with these topics (all if None), and
    any whose topic is none of ``known`` (an event of a type nobody knows may be anybody's),
    in log order, at most ``limit``, each with the tail of the event before it in its
    aggregate (unless ``previous`` is False: only to measure what checking costs)."""
    recorder = store.recorder
    if store.is_postgres:
        from psycopg.rows import tuple_row
        from psycopg.sql import SQL, Identifier

        pg: Any = recorder
        events = Identifier(pg.datastore.schema, pg.events_table_name)
        query = SQL(
            "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state, "
            "{tail} FROM {events} e {join}"
            "WHERE e.notification_id > %s AND e.notification_id <= %s {topics}"
            "ORDER BY e.notification_id LIMIT %s"
        ).format(
            tail=SQL(
                f"substring(p.state from greatest(length(p.state) - {_TAIL - 1}, 1))"
                if previous
                else "NULL"
            ),
            events=events,
            join=SQL(_JOIN if previous else "").format(events=events),
            topics=SQL(
                ""
                if topics is None
                else "AND (e.topic = ANY(%s) OR e.topic <> ALL(%s)) "
                if known
                else "AND e.topic = ANY(%s) "
            ),
        )
        from aftersales.engine.storage.postgres import ride

        chosen = [] if topics is None else [list(topics), *([list(known)] if known else [])]
        params: tuple[Any, ...] = (after, stop, *chosen, limit)

        def run() -> list[StoredRow]:
            with pg.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as c:
                c.execute(query, params, prepare=True)
                return [
                    StoredRow(i, o, v, t, bytes(s), _bytes(p)) for i, o, v, t, s, p in c.fetchall()
                ]

        # A cluster's store reads through a failover, as its actions do.
        rows: list[StoredRow] = ride(pg.datastore, run)
        return rows
    assert isinstance(recorder, SQLiteCaseRecorder)
    table = recorder.events_table_name
    marks = ", ".join("?" * len(topics)) if topics is not None else ""
    others = ", ".join("?" * len(known))
    which = ""
    if topics is not None:
        which = (
            f"AND (e.topic IN ({marks}) OR e.topic NOT IN ({others})) "
            if known
            else (f"AND e.topic IN ({marks}) ")
        )
    tail = f"substr(p.state, max(length(p.state) - {_TAIL - 1}, 1))" if previous else "NULL"
    join = _JOIN.replace("{events}", table) if previous else ""
    statement = (
        "SELECT e.rowid, e.originator_id, e.originator_version, e.topic, e.state, "
        f"{tail} FROM {table} e {join}"
        "WHERE e.rowid > ? AND e.rowid <= ? " + which + "ORDER BY e.rowid LIMIT ?"
    )
    with recorder.datastore.transaction(commit=False) as c:
        values: list[Any] = [*topics, *known] if topics is not None else []
        c.execute(statement, [after, stop, *values, limit])
        return [
            StoredRow(r[0], UUID(r[1]), r[2], r[3], bytes(r[4]), _bytes(r[5])) for r in c.fetchall()
        ]


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def checked(store: AftersalesStore, row: StoredRow, quarantined: Collection[int] = ()) -> Event:
    """One stored event as its class, once its hash is checked against its content and the
    event before it, and its times convert to UTC; else ``Unreadable`` says why."""
    previous = GENESIS_HASH if row.version == 1 else _previous_hash(store, row, quarantined)
    if previous is not None:
        verified_hash(previous, row.originator_id, row.version, row.topic, row.state)
    try:
        event = store.mapper.decode(row.originator_id, row.version, row.topic, row.state)
    except Exception as exc:
        raise Unreadable(reason_of(exc)) from None
    check_times(event)
    return event


def check_link(store: AftersalesStore, row: StoredRow) -> None:
    """One stored event's hash checked against its content chained to the hash the event
    before it carries (read with it), and nothing more: nothing is decoded. ``Unreadable``
    says why not. What signing a checkpoint asks of every event it signs."""
    previous = GENESIS_HASH if row.version == 1 else _previous_hash(store, row, ())
    if previous is None:  # only for a quarantined event before it, and none is given
        raise Unreadable("the event before it carries no readable hash")
    verified_hash(previous, row.originator_id, row.version, row.topic, row.state)


def _previous_hash(
    store: AftersalesStore, row: StoredRow, quarantined: Collection[int]
) -> str | None:
    """The hash the event before this one carries (read from the tail fetched with it, or, in
    any other form, from the whole event). None when that event is quarantined and carries no
    readable hash: the operator's decision covers it, and this one is checked for the rest."""
    found = stored_hash(row.previous_tail) if row.previous_tail is not None else None
    if found is not None:
        return found
    position = store.position_of(row.originator_id, row.version - 1)
    if position is None:
        raise Unreadable(f"version {row.version - 1} is missing before it (deleted?)")
    previous = read_rows(store, position - 1, position, 1, None)
    found = stored_hash(previous[0].state) if previous else None
    if found is None:
        if position in quarantined:
            return None
        raise Unreadable(
            f"the event before it (position {position}) carries no readable hash, so it "
            "cannot be checked"
        )
    return found


def poisoned(store: AftersalesStore, row: StoredRow, why: str, consequence: str) -> Poisoned:
    """The refusal naming a stored event read at its position."""
    owner = store.describe(row.originator_id)
    return Poisoned(
        row.position,
        f"{row.name} of {owner}",
        row.version,
        why,
        consequence=consequence,
        topic=row.topic,
    )
