"""Bulk paths: many actions per transaction, every rule still checked.

Items are applied in chunks inside a unit of work (`Engine.begin_session`): the aggregates a
chunk needs are loaded with one query, the actions run in memory, and the whole chunk is saved
in one transaction. If that save loses a race with another writer, the chunk is run again item
by item through the ordinary path, which retries on the new state. Memory stays flat: the input
is streamed and the session keeps a bounded cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Generic, TypeVar
from uuid import UUID

from eventsourcing.persistence import IntegrityError, OperationalError

from engine.case import ReturnCase
from engine.errors import AftersalesError
from engine.service import Engine

T = TypeVar("T")
MAX_ERRORS_KEPT = 1000


@dataclass
class Failure:
    line: int
    code: str
    message: str
    exit_code: int


@dataclass
class Report:
    lines: int = 0
    ok: int = 0
    events: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    failed: int = 0

    @property
    def first_exit_code(self) -> int:
        return self.failures[0].exit_code if self.failures else 0

    def to_json(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "ok": self.ok,
            "failed": self.failed,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds) if self.seconds else None,
            "errors": [
                {"line": f.line, "code": f.code, "message": f.message} for f in self.failures
            ],
        }


@dataclass
class Item(Generic[T]):
    line: int
    payload: T | AftersalesError  # an input that could not even be parsed carries its error


def _chunks(items: Iterable[Item[T]], size: int) -> Iterator[list[Item[T]]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def run_bulk(
    engine: Engine,
    items: Iterable[Item[T]],
    apply: Callable[[Engine, T], None],
    *,
    ids: Callable[[T], Iterable[UUID]] = lambda _: (),
    command_ids: Callable[[T], Iterable[str]] = lambda _: (),
    barrier: Callable[[T], bool] = lambda _: False,
    chunk_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> Report:
    report = Report()
    started = time.perf_counter()

    def run_one(item: Item[T]) -> None:
        try:
            if isinstance(item.payload, AftersalesError):
                raise item.payload
            apply(engine, item.payload)
            report.ok += 1
        except AftersalesError as exc:
            report.failed += 1
            if len(report.failures) < MAX_ERRORS_KEPT:
                report.failures.append(Failure(item.line, exc.code, exc.message, exc.exit_code))

    session = engine.begin_session()
    try:
        for chunk in _chunks(items, chunk_size):
            payloads = [i.payload for i in chunk if not isinstance(i.payload, AftersalesError)]
            wanted = [uid for p in payloads for uid in ids(p)]
            session.prefetch(wanted)
            # Cases acted on need their orders (to free or take back their lines).
            cases = [session.aggregates.get(uid) for uid in wanted]
            session.prefetch(c.order_ref for c in cases if isinstance(c, ReturnCase))
            session.prefetch_commands(c for p in payloads for c in command_ids(p))
            ok, failed, kept = report.ok, report.failed, len(report.failures)
            for item in chunk:
                if isinstance(item.payload, AftersalesError) or not barrier(item.payload):
                    run_one(item)
                    continue
                # An item that reads the store as a whole (a tick finds due deadlines in the
                # case index) sees everything before it: save first, run it on its own.
                report.events += session.flush()
                engine.end_session()
                before = engine.store.recorder.max_notification_id() or 0
                run_one(item)
                report.events += (engine.store.recorder.max_notification_id() or 0) - before
                session.discard()  # what it changed is in the store, not in memory
                engine.session = session
            try:
                report.events += session.flush()
            except (IntegrityError, OperationalError):
                # Another writer got there first: redo this chunk one item at a time.
                session.discard()
                report.ok, report.failed = ok, failed
                del report.failures[kept:]
                engine.end_session()
                before = engine.store.recorder.max_notification_id() or 0
                for item in chunk:
                    run_one(item)
                report.events += (engine.store.recorder.max_notification_id() or 0) - before
                session = engine.begin_session()
            report.lines += len(chunk)
            if progress is not None:
                progress(len(chunk))
    finally:
        engine.end_session()
    report.seconds = time.perf_counter() - started
    return report
