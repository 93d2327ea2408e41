"""Running projections: catch up in batches, follow the log, rebuild, report positions.

Catching up reads the notification log in batches (one read serves every projection at the same
position) and writes each projection's batch with one tracking record. Following on PostgreSQL
hands over to the library's ``ProjectionRunner`` and its LISTEN/NOTIFY subscription; on SQLite,
which has no subscription, it catches up again every ``poll`` seconds with the same code.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.projection import ProjectionRunner
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from aftersales.engine.store import APP_NAME, EventStore
from aftersales.projections.base import (
    Fact,
    Progress,
    ProgressFn,
    StalePosition,
    View,
    ViewProjection,
    ViewRecorder,
    apply_batch,
    projection_class,
    recorder_class,
)

# A catch-up that applied this many events refreshes the tables' statistics.
ANALYZE_AFTER = 50_000
DEFAULT_BATCH = 5000
# While catching up, the garbage collector runs once per this many events (see _collector_paused).
COLLECT_EVERY = 50_000


class Projector:
    """The projections of one store."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._recorders: dict[str, ViewRecorder] = {}

    @property
    def postgres(self) -> bool:
        return self.store.is_postgres

    def recorder(self, view: type[View]) -> ViewRecorder:
        found = self._recorders.get(view.name)
        if found is None:
            cls = recorder_class(view, self.postgres)
            found = cls(datastore=self.store.recorder.datastore)  # type: ignore[call-arg,attr-defined]
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
        """Bring these views up to the log's head as it is now; return the events read."""
        read = 0
        started = time.monotonic()
        while True:
            head = self.head()
            positions = {v.name: self.position(v) for v in views}
            behind = [v for v in views if (positions[v.name] or 0) < head]
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

        While one batch is being written (the database works, the GIL is free) the next is
        read and decoded; batches are still written one after the other, in log order."""
        topics = sorted({t for v in group for t in v.topics()})
        recorders = {v.name: self.recorder(v) for v in group}
        read = 0
        position = start

        def write(facts: list[Fact], last: int, after_: dict[str, int | None]) -> None:
            for view in group:
                apply_batch(view, recorders[view.name], facts, last, after_[view.name])

        with (
            _collector_paused() as collect,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="projection-writer") as pool,
        ):
            pending: Future[None] | None = None
            collected = 0
            while position < head:
                if read - collected >= COLLECT_EVERY:
                    collect()
                    collected = read
                facts = self.read(position, head, batch_size, topics)
                last = head if len(facts) < batch_size else facts[-1].id
                if pending is not None and not _written(pending):
                    return read
                pending = pool.submit(write, facts, last, dict(after))
                after = {v.name: last for v in group}
                read += len(facts)
                position = last
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

    def read(self, after: int, stop: int, limit: int, topics: Sequence[str]) -> list[Fact]:
        """The next events of the notification log with these topics, decoded to their classes
        by the store's mapper. On PostgreSQL this is the library's notification query with
        plain tuple rows (it is the hot loop of a rebuild); on SQLite the library's
        ``select_notifications``."""
        recorder = self.store.recorder
        decode = self.store.mapper.decode
        if not isinstance(recorder, PostgresApplicationRecorder):
            notes = recorder.select_notifications(
                start=after, limit=limit, stop=stop, topics=topics, inclusive_of_start=False
            )
            return [
                Fact(n.id, decode(n.originator_id, n.originator_version, n.topic, n.state))  # type: ignore[arg-type]
                for n in notes
            ]
        query = SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {0}.{1} WHERE notification_id > %s AND notification_id <= %s "
            "AND topic = ANY(%s) ORDER BY notification_id LIMIT %s"
        ).format(Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
        with recorder.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as c:
            c.execute(query, (after, stop, list(topics), limit), prepare=True)
            return [Fact(i, decode(o, v, t, s)) for i, o, v, t, s in c.fetchall()]

    def rebuild(
        self,
        views: Sequence[type[View]],
        batch_size: int = DEFAULT_BATCH,
        progress: ProgressFn | None = None,
    ) -> int:
        """Drop these views' tables and tracking, and build them again from the first event."""
        for view in views:
            self.recorder(view).reset()
        return self.catch_up(views, batch_size, progress)

    # Where they are -----------------------------------------------------------------------------

    def status(self, views: Sequence[type[View]]) -> list[dict[str, Any]]:
        head = self.head()
        result = []
        for view in views:
            position = self.position(view)
            recorder = self.recorder(view)
            lag = recorder.pending(position, self.events_table) if (position or 0) < head else 0
            result.append(
                {
                    "projection": view.name,
                    "tables": [t.name for t in view.tables],
                    "position": position or 0,
                    "head": head,
                    "behind": head - (position or 0),
                    "lag": lag,
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
    ) -> None:
        """Keep these views current until ``stop`` is set."""
        self.catch_up(views, batch_size, progress)
        if on_ready is not None:
            on_ready()
        if isinstance(self.store.recorder, PostgresApplicationRecorder):
            self._follow_subscription(views, stop, batch_size)
            return
        while not stop.wait(poll):
            self.catch_up(views, batch_size)

    def _follow_subscription(
        self, views: Sequence[type[View]], stop: threading.Event, batch_size: int
    ) -> None:
        """One library ProjectionRunner per view, restarted if its position is moved under it
        (a rebuild, or another runner writing the same view)."""
        url = self.store.url.text

        class FollowedStore(EventStore):
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
            runner.__enter__()
            return runner

        try:
            for view in views:
                runners[view.name] = start(view)
            while not stop.wait(0.1):
                for view in views:
                    runner = runners[view.name]
                    projection: ViewProjection = runner.projection
                    if projection.error is None and not runner.is_interrupted.is_set():
                        continue
                    del runners[view.name]
                    error = _close(runner)
                    if error is not None and not isinstance(error, StalePosition):
                        raise error
                    runners[view.name] = start(view)
        finally:
            for runner in runners.values():
                _close(runner)


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
