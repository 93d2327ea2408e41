"""Saves without the table lock: readers by position never skip or repeat an event.

Positions are not given out in commit order any more (engine/storage/postgres.py, ``HORIZON``):
a reader reads only rows written by transactions older than the oldest one running. Here many
writers, each on its own connection, call the save function inside explicit transactions with
random pauses before and after the call, and roll some back, while readers poll the log all the
time through the engine's own reading code:

- the library's LISTEN/NOTIFY subscription as the store makes it (what a following projection
  runner reads);
- ``select_notifications`` from the last position (what the relay and the webhook queue read);
- the readable head, then the rows up to it (``max_notification_id`` and ``read_rows``: what a
  projection's catch-up and a checkpoint read).

Every reader must see every committed event exactly once, in log order, and never a rolled-back
one. The same harness must catch the holes the design closes: a naive reader (by position, no
horizon) skips, and so does the engine's reader when writers take their transaction ids apart
from their positions (what the save's critical section prevents).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg.sql import SQL, Composed, Identifier

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import PlaceOrder
from aftersales.engine.integrity.reading import read_rows
from aftersales.engine.storage import postgres
from aftersales.engine.storage.postgres import FIRST_WRITE, PostgresCaseRecorder, save_lock_key
from aftersales.engine.storage.store import AftersalesStore
from tests.conftest import _pg_conninfo, drop_schema, schema_url

EVENTS = "aftersales_events"
TOPIC = "tests.lockfree:Written"


@pytest.fixture
def pg_store() -> Iterator[AftersalesStore]:
    """A PostgreSQL store of the test's own, reached as its owner."""
    schema = f"lf_{uuid.uuid4().hex[:10]}"
    try:
        with Engine(schema_url(schema)) as engine:
            yield engine.store
    finally:
        drop_schema(schema)


def save_call(schema: str) -> Composed:
    """The save function called with events only (no case or command rows, no heads)."""
    return SQL(
        "SELECT * FROM {}.aftersales_save(%s, %s::bigint[], %s, %s, NULL, NULL, NULL, NULL, NULL)"
    ).format(Identifier(schema))


def new_events(n: int = 1) -> tuple[list[uuid.UUID], list[int], list[str], list[bytes]]:
    """The save's parameters for ``n`` events, each the first of a new aggregate."""
    return [uuid.uuid4() for _ in range(n)], [1] * n, [TOPIC] * n, [b"{}"] * n


def _recorder(store: AftersalesStore) -> PostgresCaseRecorder:
    recorder = store.recorder
    assert isinstance(recorder, PostgresCaseRecorder)
    return recorder


@dataclass
class Log:
    """What the writers did: the positions committed and those rolled back."""

    committed: set[int] = field(default_factory=set)
    rolled_back: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _writer(
    schema: str,
    log: Log,
    stop: threading.Event,
    seed: int,
    pause: float,
    failures: list[str],
    notify: Composed,
    unordered: bool = False,
) -> None:
    """Save one to three events of new aggregates per transaction, with random pauses inside
    the transaction before and after the call; roll back one transaction in eight.
    ``unordered``: take the transaction id first, outside any critical section, and the
    positions later by a plain INSERT (what the save refuses), so that transaction ids and
    positions no longer come in the same order."""
    rng = random.Random(seed)
    write = save_call(schema)
    if unordered:
        write = SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::bytea[]) "
            "RETURNING notification_id"
        ).format(Identifier(schema), Identifier(EVENTS))
    try:
        with psycopg.connect(_pg_conninfo()) as conn:
            while not stop.is_set():
                with conn.transaction(force_rollback=rng.random() < 0.125) as tx:
                    if unordered:
                        conn.execute("SELECT pg_current_xact_id()")
                    if unordered or rng.random() < 0.5:
                        conn.execute("SELECT pg_sleep(%s)", (rng.random() * pause,))
                    rows = conn.execute(write, new_events(rng.randint(1, 3))).fetchall()
                    if rng.random() < 0.7:
                        conn.execute("SELECT pg_sleep(%s)", (rng.random() * pause,))
                    positions = {int(r[0]) for r in rows}
                    rolled_back = tx.force_rollback
                with log.lock:
                    (log.rolled_back if rolled_back else log.committed).update(positions)
                conn.execute(notify)  # as the engine wakes listeners after a save
                conn.commit()
    except Exception as exc:  # pragma: no cover - reported by the test
        failures.append(f"writer: {exc!r}")
        stop.set()


def _other_writer(stop: threading.Event, pause: float) -> None:
    """Transactions that hold a transaction id but write no event, so send no notification
    when they end: readers must not wait for the next save to read what they held back."""
    with psycopg.connect(_pg_conninfo()) as conn:
        conn.execute("CREATE TEMP TABLE other (x int)")
        conn.commit()
        rng = random.Random(7)
        while not stop.is_set():
            with conn.transaction():
                conn.execute("INSERT INTO other VALUES (1)")
                time.sleep(rng.random() * pause * 4)


Reader = Callable[[AftersalesStore, Callable[[int], None], threading.Event], None]


def subscription_reader(
    store: AftersalesStore, seen: Callable[[int], None], stop: threading.Event
) -> None:
    with store.recorder.subscribe(gt=0) as subscription:

        def stopper() -> None:
            stop.wait()
            subscription.stop()

        watcher = threading.Thread(target=stopper)
        watcher.start()
        try:
            for notification in subscription:
                seen(notification.id)
        finally:
            stop.set()
            watcher.join()


def notifications_reader(
    store: AftersalesStore, seen: Callable[[int], None], stop: threading.Event
) -> None:
    position = 0
    while not stop.is_set():
        notes = store.recorder.select_notifications(
            start=position, limit=50, inclusive_of_start=False
        )
        for note in notes:
            seen(note.id)
        if notes:
            position = notes[-1].id


def catch_up_reader(
    store: AftersalesStore, seen: Callable[[int], None], stop: threading.Event
) -> None:
    position = 0
    while not stop.is_set():
        head = store.recorder.max_notification_id() or 0
        while position < head:
            rows = read_rows(store, position, head, 50, None, previous=False)
            for row in rows:
                seen(row.position)
            position = head if len(rows) < 50 else rows[-1].position


def naive_reader(
    store: AftersalesStore, seen: Callable[[int], None], stop: threading.Event
) -> None:
    """By position, as the log was read under the table lock: no horizon."""
    recorder = _recorder(store)
    statement = SQL(
        "SELECT notification_id FROM {}.{} WHERE notification_id > %s "
        "ORDER BY notification_id LIMIT 50"
    ).format(Identifier(recorder.datastore.schema), Identifier(EVENTS))
    position = 0
    with psycopg.connect(_pg_conninfo(), autocommit=True) as conn:
        while not stop.is_set():
            rows = conn.execute(statement, (position,)).fetchall()
            for (found,) in rows:
                seen(int(found))
            if rows:
                position = int(rows[-1][0])


@dataclass
class Trial:
    log: Log
    seen: dict[str, list[int]]
    failures: list[str]


def trial(
    store: AftersalesStore,
    readers: dict[str, Reader],
    *,
    events: int,
    writers: int = 8,
    unordered: bool = False,
    pause: float = 0.004,
    drain: float = 20.0,
) -> Trial:
    """Writers save until ``events`` events are committed, readers read all along; then each
    reader is given ``drain`` seconds to reach the last committed position."""
    recorder = _recorder(store)
    schema = recorder.datastore.schema
    log = Log()
    failures: list[str] = []
    seen: dict[str, list[int]] = {name: [] for name in readers}
    writing, reading = threading.Event(), threading.Event()

    def reader_thread(name: str, read: Reader) -> threading.Thread:
        def see(position: int) -> None:
            seen[name].append(position)

        def run() -> None:
            try:
                read(store, see, reading)
            except Exception as exc:  # pragma: no cover - reported by the test
                failures.append(f"{name}: {exc!r}")

        return threading.Thread(target=run, name=name)

    reader_threads = [reader_thread(name, read) for name, read in readers.items()]
    writer_threads = [
        threading.Thread(
            target=_writer,
            args=(schema, log, writing, i, pause, failures, recorder.call_notify, unordered),
        )
        for i in range(writers)
    ]
    other = threading.Thread(target=_other_writer, args=(writing, pause))
    for t in [*reader_threads, other, *writer_threads]:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while len(log.committed) < events and not writing.is_set():
            assert time.monotonic() < deadline, "the writers took too long"
            time.sleep(0.05)
    finally:
        writing.set()
        for t in [other, *writer_threads]:
            t.join()
    last = max(log.committed)
    until = time.monotonic() + drain
    while time.monotonic() < until and any((s[-1] if s else 0) < last for s in seen.values()):
        time.sleep(0.05)
    time.sleep(0.2)  # anything read twice, or read late, is in by now
    reading.set()
    for t in reader_threads:
        t.join(30)
    return Trial(log, seen, failures)


def assert_exact(result: Trial, name: str) -> None:
    seen = result.seen[name]
    assert seen == sorted(set(seen)), f"{name} read a position twice, or out of order"
    rolled_back = set(seen) & result.log.rolled_back
    assert not rolled_back, f"{name} read rolled-back positions {sorted(rolled_back)[:5]}"
    assert seen and seen[-1] == max(result.log.committed), f"{name} did not reach the end"
    missed = result.log.committed - set(seen)  # all below a position read: passed over
    assert not missed, f"{name} skipped {len(missed)} committed positions: {sorted(missed)[:5]}"


READERS: dict[str, Reader] = {
    "subscription": subscription_reader,
    "notifications": notifications_reader,
    "notifications 2": notifications_reader,
    "catch-up": catch_up_reader,
}


def _run_readers(store: AftersalesStore, events: int) -> None:
    result = trial(store, READERS, events=events)
    assert not result.failures, result.failures
    assert result.log.rolled_back, "no transaction was rolled back"
    for name in READERS:
        assert_exact(result, name)


def test_readers_never_skip_or_repeat_under_concurrent_writers(pg_store: AftersalesStore) -> None:
    _run_readers(pg_store, events=6000)


@pytest.mark.slow
def test_readers_never_skip_or_repeat_long(pg_store: AftersalesStore) -> None:
    _run_readers(pg_store, events=60_000)


def test_the_harness_catches_a_reader_without_the_horizon(pg_store: AftersalesStore) -> None:
    """The naive reader passes positions that commit after it read past them: the harness sees
    it (so its silence about the engine's readers means something)."""
    result = trial(pg_store, {"naive": naive_reader}, events=3000)
    assert not result.failures, result.failures
    with pytest.raises(AssertionError, match="skipped"):
        assert_exact(result, "naive")


def test_the_horizon_alone_skips_when_ids_are_taken_out_of_order(
    pg_store: AftersalesStore,
) -> None:
    """Why the save takes its transaction id and positions together: writers that take their
    transaction id first and their positions later, unordered, make the engine's own reader
    (horizon and all) skip, as the issue's example says (B's id below A's, A's position below
    B's, B committed first)."""
    result = trial(
        pg_store,
        {"notifications": notifications_reader},
        events=3000,
        unordered=True,
        drain=5.0,
    )
    assert not result.failures, result.failures
    with pytest.raises(AssertionError, match="skipped"):
        assert_exact(result, "notifications")


def test_a_save_must_be_its_transactions_first_write(pg_store: AftersalesStore) -> None:
    """Its transaction id would be taken outside the save's critical section: refused."""
    schema = _recorder(pg_store).datastore.schema
    with psycopg.connect(_pg_conninfo()) as conn:
        conn.execute("CREATE TEMP TABLE before_save (x int)")
        conn.execute("INSERT INTO before_save VALUES (1)")
        with pytest.raises(psycopg.errors.ActiveSqlTransaction, match=FIRST_WRITE):
            conn.execute(save_call(schema), new_events())


def test_the_save_lock_is_not_held_after_an_error(pg_store: AftersalesStore) -> None:
    """A save that fails (here: a lost race on one aggregate's version) leaves no advisory
    lock behind on its connection: the next writer on another connection gets through."""
    recorder = _recorder(pg_store)
    schema = recorder.datastore.schema
    save = save_call(schema)
    once = new_events()
    with psycopg.connect(_pg_conninfo(), autocommit=True) as one:
        one.execute(save, once)
        with pytest.raises(psycopg.errors.UniqueViolation):
            one.execute(save, once)
        held = one.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ).fetchone()
        assert held == (0,)
        with psycopg.connect(_pg_conninfo(), autocommit=True) as two:
            two.execute("SET lock_timeout = '2s'")
            two.execute(save, new_events())
    assert recorder.max_notification_id() == 3  # the lost race's position is a gap


def test_a_save_cancelled_in_its_critical_section_leaves_no_lock(pg_store: AftersalesStore) -> None:
    """A save cancelled while it waits for the save lock (statement_timeout here) leaves its
    connection holding nothing, and the saves after it go through."""
    recorder = _recorder(pg_store)
    schema = recorder.datastore.schema
    lock = SQL("SELECT pg_advisory_lock({})").format(save_lock_key(schema))
    unlock = SQL("SELECT pg_advisory_unlock({})").format(save_lock_key(schema))
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    with (
        psycopg.connect(_pg_conninfo(), autocommit=True) as blocker,
        psycopg.connect(_pg_conninfo(), autocommit=True) as saver,
    ):
        blocker.execute(lock)  # a writer inside its critical section
        saver.execute("SET statement_timeout = '200ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            saver.execute(save_call(schema), new_events())
        assert saver.execute(held).fetchone() == (0,)
        blocker.execute(unlock)
        saver.execute(save_call(schema), new_events())
        assert saver.execute(held).fetchone() == (0,)
    assert recorder.max_notification_id() == 1  # the cancelled save took no position


def test_a_writer_reads_its_own_event_at_once_past_a_running_transaction(
    pg_store: AftersalesStore,
) -> None:
    """A transaction older than the save still runs: the save's own position is held back
    until it ends, and the readable head waits for it (briefly) rather than leaving it out."""
    recorder = _recorder(pg_store)
    schema = recorder.datastore.schema
    save = save_call(schema)
    with (
        psycopg.connect(_pg_conninfo()) as older,
        psycopg.connect(_pg_conninfo(), autocommit=True) as writer,
    ):
        older.execute("SELECT pg_current_xact_id()")  # a transaction id, and running
        writer.execute(save, new_events())
        assert recorder.heads() == (0, 1)
        assert recorder.select_notifications(start=0, limit=10, stop=0) == []
        timer = threading.Timer(0.3, older.rollback)
        timer.start()
        started = time.monotonic()
        assert recorder.max_notification_id() == 1
        assert 0.2 < time.monotonic() - started < 2.0
        timer.join()
    assert [n.id for n in recorder.select_notifications(start=0, limit=10)] == [1]


def test_a_subscription_reads_what_a_transaction_without_events_held_back(
    pg_store: AftersalesStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event committed while an older transaction that writes no event runs is held back
    (longer than a reader waits for it: ``SETTLE_TIMEOUT``, shortened here so as not to hold
    back the readers of the tests running beside this one); that transaction's end sends no
    notification, and the subscription still reads the event soon after (it reads again while
    rows are held back), not at the next save."""
    monkeypatch.setattr(postgres, "SETTLE_TIMEOUT", 0.2)
    recorder = _recorder(pg_store)
    seen: list[int] = []
    with recorder.subscribe(gt=0) as subscription:
        reader = threading.Thread(target=lambda: seen.extend(n.id for n in subscription))
        reader.start()
        try:
            with (
                psycopg.connect(_pg_conninfo()) as older,
                psycopg.connect(_pg_conninfo(), autocommit=True) as writer,
            ):
                older.execute("SELECT pg_current_xact_id()")
                writer.execute(save_call(recorder.datastore.schema), new_events())
                writer.execute(recorder.call_notify)
                time.sleep(0.8)
                assert seen == []
                older.rollback()
                deadline = time.monotonic() + 5
                while not seen and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert seen == [1]
        finally:
            subscription.stop()
            reader.join()


def test_a_store_made_before_the_transaction_ids_gets_them(pg_store: AftersalesStore) -> None:
    """A store whose events have no ``tx`` column (made before it came) gets it when the
    engine opens it; its old rows (NULL) read as long finished."""
    schema = _recorder(pg_store).datastore.schema
    url = schema_url(schema)
    with Engine(url) as engine:
        engine.handle(PlaceOrder(order_id="O-1", merchant="m", buyer="b", lines=["X:1:1.00"]))
    with psycopg.connect(_pg_conninfo(), autocommit=True) as conn:
        conn.execute(
            SQL("ALTER TABLE {}.{} DROP COLUMN tx").format(Identifier(schema), Identifier(EVENTS))
        )
    with Engine(url) as engine:
        engine.handle(PlaceOrder(order_id="O-2", merchant="m", buyer="b", lines=["X:1:1.00"]))
        rows = engine.store.query(
            f"SELECT notification_id, tx IS NULL AS old FROM {{t}}{EVENTS} ORDER BY notification_id"
        )
        assert [r["old"] for r in rows] == [True, False]
        assert engine.store.recorder.max_notification_id() == 2
        notes = engine.store.recorder.select_notifications(start=0, limit=10)
        assert [n.id for n in notes] == [1, 2]
