"""Every use of the `eventsourcing` library's private API, in one adapter.

The engine builds on the library's public classes (its application, recorders, mapper and
aggregates); where it needs more than they offer, it goes through here, so that a new release of
the library that changes its internals is met in one module:

- ``SQLiteRecorderWithRows``: the SQLite recorder's insert hook (``_insert_events``), so rows of
  the engine's own (the case index, the command record) are written in the transaction of the
  events (PostgreSQL's recorder, engine/storage/postgres.py, replaces the public
  ``insert_events`` instead);
- ``record``: the steps of the application's ``save`` after its protocol checks (``_record``,
  ``_take_snapshots``, ``_notify``), for aggregates already known to be the engine's;
- ``max_tracking_id`` and ``insert_tracking``: a tracking recorder's reads and writes of its
  position inside a transaction the caller holds (the projections' views, projections/base.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import Recording, StoredEvent, Tracking
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteTrackingRecorder


class SQLiteRecorderWithRows(SQLiteApplicationRecorder):
    """The library's SQLite recorder, writing rows of the engine's own (``insert_rows``) in the
    transaction it inserts events in."""

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        self.insert_rows(c, kwargs)
        return ids

    def insert_rows(self, c: SQLiteCursor, saved_with: Mapping[str, Any]) -> None:
        """Write what was saved with the events (the keyword arguments of ``save``)."""


def record(app: Application[UUID], processing: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
    """Record a processing event's events and tell the application's followers, as the
    library's ``save`` does after it has checked what it was given."""
    recordings = app._record(processing)
    app._take_snapshots(processing)
    app._notify(recordings)
    return recordings


if TYPE_CHECKING:  # PostgreSQL's side loads psycopg: only for a postgresql:// store
    from eventsourcing.postgres import PostgresTrackingRecorder


def max_tracking_id(
    recorder: PostgresTrackingRecorder | SQLiteTrackingRecorder, application_name: str, cursor: Any
) -> int | None:
    """The position a tracking recorder has recorded, read in the caller's transaction."""
    found: int | None = recorder._max_tracking_id(application_name, cursor)
    return found


def insert_tracking(
    recorder: PostgresTrackingRecorder | SQLiteTrackingRecorder, cursor: Any, tracking: Tracking
) -> None:
    """Record a tracking recorder's new position in the caller's transaction."""
    recorder._insert_tracking(cursor, tracking)
