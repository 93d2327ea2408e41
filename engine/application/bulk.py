"""Bulk paths: many actions per transaction, every rule still checked.

Items are applied in chunks inside a unit of work (`engine.application.units.Chunk`): the aggregates
a chunk needs are loaded with one query, the actions run in memory, and the whole chunk is saved
in one transaction. If that save loses a race with another writer, the chunk is run again item
by item through the ordinary path, which retries on the new state. Memory stays flat: the input
is streamed and the session keeps a bounded cache.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import islice
from typing import Generic, TypeVar
from uuid import UUID

from eventsourcing.persistence import IntegrityError, OperationalError

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.units import Chunk, Pending, SaveNow
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.errors import AftersalesError

T = TypeVar("T")
MAX_ERRORS_KEPT = 1000


class Tainted(Exception):
    """A chunk in memory that is not to be saved (see ``Chunk.tainted``)."""


@dataclass
class Failure:
    line: int
    code: str
    message: str


@dataclass
class Report:
    lines: int = 0
    ok: int = 0
    events: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    failed: int = 0

    @property
    def first_code(self) -> str | None:
        """The error code of the first line that failed, if any did."""
        return self.failures[0].code if self.failures else None

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
class Share(Generic[T]):
    """One process's share of a bulk run done by several at once (see ``run_bulk``)."""

    worker: int
    # Which worker takes each item of a chunk (the same answer in every process). The store
    # has everything up to the chunk before the last one seen.
    owners: Callable[[list[Item[T]]], list[int]]
    # Returns once every process has called it.
    sync: Callable[[], None]


@dataclass
class InFlight(Generic[T]):
    """A chunk whose save runs while the next chunk is worked out; how to undo its count."""

    chunk: list[Item[T]]
    pending: Pending | None
    saving: Future[int]
    counts: tuple[int, int, int]  # ok, failed and failures kept before the chunk ran


@dataclass
class Item(Generic[T]):
    line: int
    payload: T | AftersalesError  # an input that could not even be parsed carries its error


# The cyclic garbage collector's first threshold on bulk paths: objects allocated, less those
# freed, before a young collection. The default (700) ran one every few items, each walking a
# chunk's live events and aggregates, with a full collection of the whole session every hundred
# or so: a sixth of an order import's CPU. Garbage without cycles (nearly all of it) is freed
# at once whatever the threshold; the session's cache is bounded, so memory stays flat.
BULK_GC_THRESHOLD = 20_000


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """The garbage collector's young threshold raised for a bulk run, restored after it."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], BULK_GC_THRESHOLD), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


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
    share: Share[T] | None = None,
) -> Report:
    """Apply items in chunks, each chunk's actions in memory and saved at once. With
    ``share``, this process is one of several doing the same run: it takes the items the
    share's ``owners`` gives it; before a chunk's owners are worked out, every process has
    saved its part of the chunk before the one just done (so ``owners`` must know what the
    last chunk it saw opened); and an item that reads the store as a whole (``barrier``) is
    run by worker 0 alone once everything before it is saved everywhere."""
    with _fewer_collections():
        return _run_bulk(
            engine, items, apply, ids, command_ids, barrier, chunk_size, progress, share
        )


def _run_bulk(
    engine: Engine,
    items: Iterable[Item[T]],
    apply: Callable[[Engine, T], None],
    ids: Callable[[T], Iterable[UUID]],
    command_ids: Callable[[T], Iterable[str]],
    barrier: Callable[[T], bool],
    chunk_size: int,
    progress: Callable[[int], None] | None,
    share: Share[T] | None,
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
                report.failures.append(Failure(item.line, exc.code, exc.message))

    def one_by_one(chunks: list[list[Item[T]]]) -> None:
        """Run items through the ordinary path, each saved on its own (retried on a lost
        race), and count the events they appended."""
        engine.uow = SaveNow(engine)
        before = engine.store.events_saved
        for chunk in chunks:
            for item in chunk:
                run_one(item)
        report.events += engine.store.events_saved - before

    # On PostgreSQL a chunk is saved on another thread while the next one runs in memory, so
    # the database and Python work at once. If that save fails (another writer got there
    # first), the chunk and everything worked out on top of it are run again item by item.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bulk-save")
    in_flight: InFlight[T] | None = None
    previous = engine.uow
    session = engine.uow = Chunk(engine, cache_size=4_000)

    def submit(done: list[Item[T]], counts: tuple[int, int, int]) -> None:
        nonlocal in_flight
        pending = session.take()
        saving: Future[int] = Future()
        if session.tainted:
            # An item broke an invariant after changing something in memory: save nothing of
            # this chunk; it is run again item by item, each refusal clean.
            saving.set_exception(Tainted())
        elif engine.store.is_postgres:
            saving = writer.submit(session.write, pending)
        else:
            try:
                saving.set_result(session.write(pending))
            except Exception as exc:
                saving.set_exception(exc)
        in_flight = InFlight(done, pending, saving, counts)

    def settle(on_top: list[Item[T]]) -> bool:
        """Wait for the chunk being saved. True if it was; if it lost a race, it and the
        items run since (``on_top``) are redone one by one, and False is returned."""
        nonlocal in_flight, session
        if in_flight is None:
            return True
        flight, in_flight = in_flight, None
        try:
            report.events += flight.saving.result()
            session.written(flight.pending)
            return True
        except (IntegrityError, OperationalError, Tainted):
            report.ok, report.failed = flight.counts[:2]
            del report.failures[flight.counts[2] :]
            session.discard()
            one_by_one([flight.chunk, on_top])
            session = engine.uow = Chunk(engine, cache_size=4_000)
            return False

    def counts() -> tuple[int, int, int]:
        return report.ok, report.failed, len(report.failures)

    def sync() -> None:
        if share is not None:
            share.sync()

    def is_barrier(item: Item[T]) -> bool:
        return not isinstance(item.payload, AftersalesError) and barrier(item.payload)

    def prefetch(segment: list[Item[T]]) -> None:
        """Load what a run of items needs with a few queries, not one per item."""
        payloads = [i.payload for i in segment if not isinstance(i.payload, AftersalesError)]
        wanted = [uid for p in payloads for uid in ids(p)]
        session.prefetch(wanted)
        # Cases acted on need their orders (to free or take back their lines).
        cases = [session.aggregates.get(uid) for uid in wanted]
        session.prefetch(c.order_ref for c in cases if isinstance(c, ReturnCase))
        session.prefetch_commands(c for p in payloads for c in command_ids(p))

    try:
        for whole in _chunks(items, chunk_size):
            chunk = whole
            if share is not None:
                owned = share.owners(whole)
                chunk = [
                    i
                    for i, owner in zip(whole, owned, strict=True)
                    if owner == share.worker or is_barrier(i)
                ]
            # The items up to the first barrier item, and after each one up to the next.
            cuts = [n for n, item in enumerate(chunk) if is_barrier(item)]
            prefetch(chunk[: cuts[0] if cuts else len(chunk)])
            before = counts()
            done: list[Item[T]] = []
            for n, item in enumerate(chunk):
                if not is_barrier(item):
                    run_one(item)
                    done.append(item)
                    continue
                # An item that reads the store as a whole (a tick finds due deadlines in the
                # case index) sees everything before it saved, and runs on its own.
                if settle(done) and done:
                    submit(done, before)
                    settle([])
                sync()
                if share is None or share.worker == 0:
                    one_by_one([[item]])
                else:
                    report.lines -= 1  # counted by worker 0
                sync()
                session.discard()  # what it changed is in the store, not in memory
                engine.uow = session
                later = [c for c in cuts if c > n]
                prefetch(chunk[n + 1 : later[0] if later else len(chunk)])
                before, done = counts(), []
            saved = settle(done)
            # Every process has saved its part of the chunk before this one (so the next
            # chunk's owners are found in the store, but for the cases opened in this one).
            sync()
            if saved:
                submit(done, before)
            report.lines += len(chunk)
            if progress is not None:
                progress(len(chunk))
        settle([])
    finally:
        if in_flight is not None:  # an error is on its way up: let the save end first
            wait([in_flight.saving])
        writer.shutdown(wait=True)
        engine.uow = previous
    report.seconds = time.perf_counter() - started
    return report
