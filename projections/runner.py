"""Running projections: catch up in batches, follow the log, rebuild, report positions.

Catching up reads the notification log in batches (one read serves every projection at the same
position) and writes each projection's batch with one tracking record. Following on PostgreSQL
hands over to the library's ``ProjectionRunner`` and its LISTEN/NOTIFY subscription; on SQLite,
which has no subscription, it catches up again every ``poll`` seconds with the same code.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.projection import ProjectionRunner
from psycopg.sql import SQL, Identifier

from aftersales.engine.domain.errors import Poisoned
from aftersales.engine.domain.events import Unreadable
from aftersales.engine.integrity.quarantine_records import quarantined_positions
from aftersales.engine.integrity.reading import checked, known_topics, poisoned, read_rows
from aftersales.engine.storage.store import APP_NAME, AftersalesStore
from aftersales.projections.base import (
    Fact,
    Progress,
    ProgressFn,
    StalePosition,
    View,
    ViewProjection,
    ViewRecorder,
    apply_batches,
    projection_class,
    recorder_class,
    shadow_view,
)

# A catch-up that applied this many events refreshes the tables' statistics.
ANALYZE_AFTER = 50_000
DEFAULT_BATCH = 5000
# While catching up, the garbage collector runs once per this many events (see _collector_paused).
COLLECT_EVERY = 50_000
# While catching up, the interval after which a thread holding the GIL hands it over (Python's
# default is 5 ms; see _quick_handover).
HANDOVER_S = 0.0002
# How many of a view's next events `status` reads to see whether it is stopped.
STATUS_LOOKAHEAD = 100


class Projector:
    """The projections of one store."""

    def __init__(self, store: AftersalesStore, *, verify: bool = True) -> None:
        self.store = store
        self._recorders: dict[str, ViewRecorder] = {}
        # Each event's hash is checked as it is read (``verify=False`` only to measure what
        # that costs: scripts/bench_projections.py).
        self.verify = verify
        # The views the last catch-up left stopped before an event they cannot use, by name.
        self.stopped: dict[str, Poisoned] = {}
        self._quarantined: frozenset[int] = frozenset()
        self._known = known_topics()

    @property
    def postgres(self) -> bool:
        return self.store.is_postgres

    def recorder(self, view: type[View]) -> ViewRecorder:
        found = self._recorders.get(view.name)
        if found is None:
            cls = recorder_class(view, self.postgres)
            found = cls(datastore=self.store.recorder.datastore)  # type: ignore[call-arg,attr-defined]
            if not self.store.reads_only:  # a standby has the primary's tables
                found.create_table()  # type: ignore[attr-defined]
            self._recorders[view.name] = found
        return found

    def position(self, view: type[View]) -> int | None:
        return self.recorder(view).max_tracking_id(APP_NAME)

    def head(self) -> int:
        return self.store.recorder.max_notification_id() or 0

    @property
    def events_table(self) -> str:
        return self.store.recorder.events_table_name  # type: ignore[attr-defined,no-any-return]

    # Catching up --------------------------------------------------------------------------------

    def catch_up(
        self,
        views: Sequence[type[View]],
        batch_size: int = DEFAULT_BATCH,
        progress: ProgressFn | None = None,
    ) -> int:
        """Bring these views up to the log's head as it is now; return the events read. A view
        that reaches an event it cannot use stops before it (``stopped`` names the event)
        while the others go on. On a standby's store, nothing: the views are as replayed."""
        if self.store.reads_only:
            return 0
        read = 0
        started = time.monotonic()
        self.stopped = {}
        self._quarantined = quarantined_positions(self.store)
        while True:
            head = self.head()
            positions = {v.name: self.position(v) for v in views}
            behind = [
                v for v in views if (positions[v.name] or 0) < head and v.name not in self.stopped
            ]
            if not behind:
                if read >= ANALYZE_AFTER:
                    self.analyze(views)
                return read
            start = min(positions[v.name] or 0 for v in behind)
            group = [v for v in behind if (positions[v.name] or 0) == start]
            after = {v.name: positions[v.name] for v in group}
            read += self._run(group, after, start, head, batch_size, progress, started, read)

    def analyze(self, views: Sequence[type[View]]) -> None:
        """Give PostgreSQL statistics on tables that just grew a lot, as autovacuum would some
        time later: without them a report's query may scan a table its index would answer."""
        recorder = self.store.recorder
        if not isinstance(recorder, PostgresApplicationRecorder):
            return
        schema = recorder.datastore.schema
        with recorder.datastore.get_connection() as conn:
            for view in views:
                for table in view.tables:
                    conn.execute(SQL("ANALYZE {}").format(Identifier(schema, table.name)))

    def _run(
        self,
        group: list[type[View]],
        after: dict[str, int | None],
        start: int,
        head: int,
        batch_size: int,
        progress: ProgressFn | None,
        started: float,
        read_before: int,
    ) -> int:
        """Read [start, head] once for a group of views at the same position.

        While one batch is being folded and written (the database works, the GIL is free) the
        next is read and decoded; batches are still written one after the other, in log order,
        every view's batch of a range in one transaction."""
        topics = sorted({t for v in group for t in v.topics()})
        recorders = {v.name: self.recorder(v) for v in group}
        read = 0
        position = start

        def write(facts: list[Fact], last: int, after_: dict[str, int | None]) -> None:
            apply_batches(
                [(view, recorders[view.name], after_[view.name]) for view in group], facts, last
            )

        with (
            _collector_paused() as collect,
            _quick_handover(),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="projection-writer") as pool,
        ):
            pending: Future[None] | None = None
            collected = 0
            while position < head:
                if read - collected >= COLLECT_EVERY:
                    collect()
                    collected = read
                facts, last, poison = self.read(position, head, batch_size, topics)
                if pending is not None and not _written(pending):
                    return read
                if poison is not None and last == position:  # nothing before it to write
                    self._stop(group, poison)
                    break
                pending = pool.submit(write, facts, last, dict(after))
                after = {v.name: last for v in group}
                read += len(facts)
                position = last
                if poison is not None:
                    self._stop(group, poison)
                    break
                if progress is not None:
                    progress(
                        Progress(
                            view=",".join(v.name for v in group),
                            done=position,
                            head=head,
                            started=started,
                            extra={"events": read_before + read},
                        )
                    )
            if pending is not None:
                _written(pending)
        return read

    def _stop(self, group: Sequence[type[View]], poison: Poisoned) -> None:
        """The views of a group that read the poisoned event's type stop before it."""
        unknown = poison.topic not in self._known
        for view in group:
            if unknown:  # a type nobody knows may be anybody's: every view reading it stops
                self.stopped[view.name] = poison.then(
                    f"the {view.name} projection stops before it (an event of a type this "
                    "engine does not know may be one it needs)"
                )
            elif poison.topic in view.topics():
                self.stopped[view.name] = poison.then(
                    f"the {view.name} projection stops before it (the others go on)"
                )

    def read(
        self, after: int, stop: int, limit: int, topics: Sequence[str]
    ) -> tuple[list[Fact], int, Poisoned | None]:
        """The next events of the notification log with these topics, each checked and decoded
        to its class by the store's mapper (``engine.integrity.reading``): the facts, the position
        they cover up to, and the event they stop before if one cannot be used (then the position
        is just before it). Quarantined events are passed over."""
        rows = read_rows(
            self.store, after, stop, limit, topics, previous=self.verify, known=self._known
        )
        end = stop if len(rows) < limit else rows[-1].position
        facts: list[Fact] = []
        quarantined = self._quarantined
        decode = self.store.mapper.decode
        for row in rows:
            try:
                if self.verify or row.position in quarantined:
                    event = checked(self.store, row, quarantined)
                else:
                    event = decode(row.originator_id, row.version, row.topic, row.state)
            except Unreadable as exc:
                if row.position in quarantined:
                    continue  # the operator's decision: pass over it
                return facts, row.position - 1, poisoned(self.store, row, str(exc), "")
            # A quarantined event that reads and verifies is folded all the same: a decision
            # (or a row written into the table by hand) never takes sound money out.
            facts.append(Fact(row.position, event))
        return facts, end, None

    def rebuild(
        self,
        views: Sequence[type[View]],
        batch_size: int = DEFAULT_BATCH,
        progress: ProgressFn | None = None,
    ) -> int:
        """Build these views again from the first event into new tables, and swap each in for
        the old one, in one transaction, once it reaches the head: a rebuild that stops (an
        event it cannot use, a crash) leaves the old tables serving."""
        shadows = [shadow_view(v) for v in views]
        for shadow in shadows:
            self.recorder(shadow).reset()
        read = self.catch_up(shadows, batch_size, progress)
        stopped = {}
        for view, shadow in zip(views, shadows, strict=True):
            if shadow.name in self.stopped:
                stopped[view.name] = self.stopped[shadow.name].then(
                    f"the rebuild of the {view.name} projection stops before it; its old "
                    "tables still serve"
                )
                continue
            position = self.position(shadow) or 0
            self.recorder(view).swap_in(self.recorder(shadow), position)
        self.stopped = stopped
        return read

    # Where they are -----------------------------------------------------------------------------

    def status(self, views: Sequence[type[View]]) -> list[dict[str, Any]]:
        """Each view's position, how far behind it is, and, if the next event it would read
        cannot be used, that it is stopped there and why."""
        head = self.head()
        self._quarantined = quarantined_positions(self.store)
        result = []
        for view in views:
            position = self.position(view)
            recorder = self.recorder(view)
            lag = recorder.pending(position, self.events_table) if (position or 0) < head else 0
            stopped_message = None
            if (position or 0) < head:  # what it would read next, checked
                _, _, poison = self.read(position or 0, head, STATUS_LOOKAHEAD, view.topics())
                if poison is not None:
                    stopped_message = poison.then(
                        f"the {view.name} projection is stopped before it"
                    ).message
            result.append(
                {
                    "projection": view.name,
                    "tables": [t.name for t in view.tables],
                    "position": position or 0,
                    "head": head,
                    "behind": head - (position or 0),
                    "lag": lag,
                    "stopped": stopped_message,
                }
            )
        return result

    # Following --------------------------------------------------------------------------------

    def follow(
        self,
        views: Sequence[type[View]],
        stop: threading.Event,
        batch_size: int = DEFAULT_BATCH,
        poll: float = 0.2,
        progress: ProgressFn | None = None,
        on_ready: Callable[[], None] | None = None,
        on_stop: Callable[[Poisoned], None] | None = None,
    ) -> None:
        """Keep these views current until ``stop`` is set. A view that reaches an event it
        cannot use stays stopped before it (``on_stop`` is told, once); the others go on."""
        told: set[tuple[str, int | None]] = set()

        def tell() -> None:
            for name, poison in self.stopped.items():
                if (name, poison.position) not in told:
                    told.add((name, poison.position))
                    if on_stop is not None:
                        on_stop(poison)

        self.catch_up(views, batch_size, progress)
        tell()
        if on_ready is not None:
            on_ready()
        if isinstance(self.store.recorder, PostgresApplicationRecorder):
            self._follow_subscription(views, stop, batch_size, tell)
            return
        while not stop.wait(poll):
            self.catch_up(views, batch_size)
            tell()

    def _follow_subscription(
        self,
        views: Sequence[type[View]],
        stop: threading.Event,
        batch_size: int,
        tell: Callable[[], None],
    ) -> None:
        """One library ProjectionRunner per view, restarted if its position is moved under it
        (a rebuild, or another runner writing the same view); a view stopped before an event
        it cannot use is not restarted."""
        url = self.store.url.text

        class FollowedStore(AftersalesStore):
            name = APP_NAME

            def __init__(self, env: Any = None) -> None:
                super().__init__(url)

        runners: dict[str, Any] = {}

        def start(view: type[View]) -> Any:
            runner: Any = ProjectionRunner(
                application_class=FollowedStore,
                projection_class=projection_class(view),
                view_class=recorder_class(view, True),
                env=self.store.url.env,
            )
            runner.projection.batch_size = batch_size
            runner.projection.reader = lambda after, upto: self.read(
                after, upto, upto - after, view.topics()
            )
            runner.__enter__()
            return runner

        from aftersales.engine.storage.postgres import lost_server, wake_listeners

        def restart(view: type[View]) -> Any:
            """``start``, again after a lost server, for as long as the store waits through a
            failover (a runner started in the middle of one fails at once: its tables are
            checked, and its position read, on a new connection)."""
            deadline = time.monotonic() + self.store.url.failover_timeout
            while True:
                try:
                    return start(view)
                except Exception as exc:
                    if not lost_server(exc) or time.monotonic() >= deadline:
                        raise
                    time.sleep(0.2)

        stopped = dict(self.stopped)
        # Every second, if the log grew or a runner (re)started since the last look, the
        # subscriptions are woken once more: one that started listening just after an event
        # was committed (and its notification sent) would otherwise wait for the next write.
        ticks, seen_head, started = 0, self.head(), True
        try:
            for view in views:
                if view.name not in stopped:
                    runners[view.name] = restart(view)
            while not stop.wait(0.1):
                ticks += 1
                if ticks % 10 == 0:
                    try:
                        head = self.head()
                        if head != seen_head or started:
                            wake_listeners(self.store.recorder)
                            seen_head, started = head, False
                    except (InterfaceError, OperationalError):
                        pass  # the store away a moment: the runners say so; look next second
                for view in views:
                    if view.name in stopped:
                        continue
                    runner = runners[view.name]
                    projection: ViewProjection = runner.projection
                    if projection.error is None and not runner.is_interrupted.is_set():
                        continue
                    del runners[view.name]
                    error = _close(runner)
                    if error is not None and lost_server(error):
                        # The server went away (a cluster's failover): start again from the
                        # position tracked, on whichever server takes writes now (the new
                        # runner's store waits for one, as an action does).
                        runners[view.name] = restart(view)
                        started = True
                        continue
                    if error is not None and not isinstance(error, StalePosition):
                        # Read again, checked: an event it cannot use stops this view only.
                        self.catch_up([view], batch_size)
                        if view.name not in self.stopped:
                            raise error
                        stopped[view.name] = self.stopped[view.name]
                        self.stopped = stopped
                        tell()
                        continue
                    runners[view.name] = start(view)
                    started = True
        finally:
            for runner in runners.values():
                _close(runner)
            self.stopped = stopped


@contextmanager
def _collector_paused() -> Iterator[Callable[[], object]]:
    """Pause the cyclic garbage collector for a catch-up, and yield what collects the young
    generations instead, called every ``COLLECT_EVERY`` events. A batch is thousands of
    decoded events (a dozen objects each) that all live until the batch is written: the
    collector, triggered every 700 allocations, walks them again and again for nothing and
    costs more than decoding them. Refcounting frees each batch as before; cycles are still
    collected, only less often."""
    if not gc.isenabled():  # someone else manages it: leave it to them
        yield lambda: None
        return
    gc.disable()
    try:
        yield lambda: gc.collect(1)
    finally:
        gc.enable()


_handover_lock = threading.Lock()
_handover_users = 0
_handover_saved = 0.0


@contextmanager
def _quick_handover() -> Iterator[None]:
    """Let threads take turns with the GIL every ``HANDOVER_S`` for a catch-up, instead of
    every 5 ms. Of a catch-up's two threads one decodes and folds (it holds the GIL) while the
    other waits for the database; each time the database answers, the waiting thread waits
    again, for the GIL, until the decoder's interval is up: with 5 ms, a catch-up spent about
    as long waiting so as working (measured: docs/performance.md). The interval is the
    process's: the first catch-up to start sets it and the last to end puts it back."""
    global _handover_users, _handover_saved
    with _handover_lock:
        if _handover_users == 0:
            _handover_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(HANDOVER_S, _handover_saved))
        _handover_users += 1
    try:
        yield
    finally:
        with _handover_lock:
            _handover_users -= 1
            if _handover_users == 0:
                sys.setswitchinterval(_handover_saved)


def _written(future: Future[None]) -> bool:
    """Wait for a batch's write: False if its position had moved (another runner, a rebuild),
    so catching up starts again from where the view is; other errors are raised."""
    try:
        future.result()
    except StalePosition:
        return False
    return True


def _close(runner: Any) -> BaseException | None:
    """Stop a runner, then write what its projection still holds; return what went wrong."""
    error: BaseException | None = None
    try:
        runner.__exit__(None, None, None)
    except Exception as exc:
        error = exc
    try:
        runner.projection.close()
    except Exception as exc:
        error = error or exc
    found: BaseException | None = error or runner.projection.error
    return found
