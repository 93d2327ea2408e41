"""The projection machinery: exactly once under kill -9, rebuild = incremental, follow, status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.postgres import PostgresAggregateRecorder

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import DeliverOrder, PlaceOrder
from aftersales.engine.storage.postgres import PostgresCaseRecorder
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.base import View, shadow_view
from aftersales.projections.dashboard import dashboard
from aftersales.projections.registry import VIEWS
from aftersales.projections.return_rates import GROUPINGS, return_rates
from aftersales.projections.runner import Projector
from scripts.workload import START, generate

ROOT = Path(__file__).resolve().parent.parent


def cli(store_url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aftersales.commands.cli.main", "--store", store_url, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tables(store: AftersalesStore) -> dict[str, list[tuple[str, ...]]]:
    """Every projection table's rows, as text, in key order."""
    dump = {}
    for view in VIEWS:
        for table in view.tables:
            rows = store.query(
                f"SELECT {', '.join(table.names)} FROM {{t}}{table.name} "
                f"ORDER BY {', '.join(table.key)}"
            )
            dump[table.name] = [tuple(str(r[c]) for c in table.names) for r in rows]
    return dump


def reports(store: AftersalesStore) -> dict[str, Any]:
    since, until = START, START + timedelta(days=30)
    result: dict[str, Any] = {by: return_rates(store, by, since, until) for by in GROUPINGS}
    for merchant in (None, "shop-001", "shop-002"):
        result[f"dashboard:{merchant}"] = dashboard(store, merchant, START + timedelta(days=12))
    return result


_PROJECTORS: dict[int, Projector] = {}


def positions(store: AftersalesStore) -> dict[str, int]:
    projector = _PROJECTORS.setdefault(id(store), Projector(store))
    return {v.name: projector.position(v) or 0 for v in VIEWS}


def test_kill_9_in_the_middle_of_catching_up_then_restart(store_url: str) -> None:
    with AftersalesStore(store_url) as store:
        generate(store, 2000, merchants=5)  # the runner is killed soon after its first batch
        head = store.recorder.max_notification_id() or 0
        projector = Projector(store)

        for _attempt in range(5):
            for view in VIEWS:
                projector.recorder(view).reset()
            run = cli(store_url, "project", "run", "--batch-size", "10")
            while run.poll() is None and not any(positions(store).values()):
                time.sleep(0.002)
            os.kill(run.pid, signal.SIGKILL)
            assert run.wait() == -signal.SIGKILL
            at_kill = positions(store)
            if 0 < min(at_kill.values()) < head or 0 < max(at_kill.values()) < head:
                break  # killed in the middle
        else:
            pytest.fail(f"could not kill the runner in the middle: {at_kill}, head {head}")

        restart = cli(store_url, "project", "run", "--json")
        out, err = restart.communicate(timeout=120)
        assert restart.returncode == 0, err
        status = json.loads(out)["projections"]
        assert [(s["position"], s["lag"]) for s in status] == [(head, 0)] * len(VIEWS)
        after_restart_tables, after_restart_reports = tables(store), reports(store)

        # One uninterrupted run from the first event.
        Projector(store).rebuild(VIEWS)
        assert tables(store) == after_restart_tables
        assert reports(store) == after_restart_reports
        assert after_restart_reports["merchant"], "the reports are empty"


def test_kill_9_in_the_middle_of_a_rebuild_leaves_the_old_tables_serving(store_url: str) -> None:
    """A rebuild fills tables of its own and swaps them in at the head: killed before that, the
    reports read the old tables, whole, and the projections stay where they were."""
    with AftersalesStore(store_url) as store:
        generate(store, 2000, merchants=5)
        head = store.recorder.max_notification_id() or 0
        projector = Projector(store)
        projector.catch_up(VIEWS)
        before_tables, before_reports = tables(store), reports(store)
        shadows = [shadow_view(v) for v in VIEWS]

        for _attempt in range(5):
            run = cli(store_url, "project", "rebuild", "--batch-size", "10")
            # (Reading a position creates the rebuild's tables if they are not there yet, as
            # the rebuild itself does, under the same lock.)
            while run.poll() is None and not any(projector.position(s) for s in shadows):
                time.sleep(0.002)
            os.kill(run.pid, signal.SIGKILL)
            assert run.wait() == -signal.SIGKILL
            if any(0 < (projector.position(s) or 0) < head for s in shadows):
                break  # killed in the middle of filling the new tables
        else:
            pytest.fail("could not kill the rebuild in the middle")

        assert positions(store) == {v.name: head for v in VIEWS}
        assert tables(store) == before_tables
        assert reports(store) == before_reports
        finished = cli(store_url, "project", "rebuild", "--json")
        _, err = finished.communicate(timeout=120)
        assert finished.returncode == 0, err
        assert tables(store) == before_tables
        assert reports(store) == before_reports


def test_rebuild_equals_incremental_updates(store_url: str) -> None:
    with AftersalesStore(store_url) as store:
        projector = Projector(store)
        generate(store, 1500, merchants=4, seed=1)
        projector.catch_up(VIEWS, batch_size=7)
        generate(store, 1500, merchants=4, seed=2, prefix="KS-2-")
        projector.catch_up(VIEWS[:1], batch_size=13)  # the views at different positions
        generate(store, 500, merchants=4, seed=3, prefix="KS-3-")
        projector.catch_up(VIEWS, batch_size=50)
        incremental = tables(store), reports(store)
        assert all(incremental[0].values())

        read = projector.rebuild(VIEWS)
        assert read > 0
        assert (tables(store), reports(store)) == incremental
        # Rebuilding one projection leaves the other as it is.
        projector.rebuild([VIEWS[1]], batch_size=100)
        assert (tables(store), reports(store)) == incremental


def test_two_runners_at_once_apply_each_event_once(store_url: str) -> None:
    with AftersalesStore(store_url) as store:
        generate(store, 3000, merchants=4, seed=5)
        runs = [cli(store_url, "project", "run", "--batch-size", "25") for _ in range(2)]
        for run in runs:
            _, err = run.communicate(timeout=120)
            assert run.returncode == 0, err
        raced = tables(store), reports(store)
        Projector(store).rebuild(VIEWS)
        assert (tables(store), reports(store)) == raced


def test_status_shows_position_and_lag(store_url: str) -> None:
    with Engine(store_url) as engine:
        engine.handle(PlaceOrder(order_id="S-1", merchant="m", buyer="b", lines=["X:1:1.00"]))
        projector = Projector(engine.store)
        before = {s["projection"]: s for s in projector.status(VIEWS)}
        assert before["return_rates"]["lag"] == 1  # OrderPlaced (OrderShipped is not read)
        assert before["dashboard"]["lag"] == 0
        assert before["dashboard"]["position"] == 0
        projector.catch_up(VIEWS)
        after = projector.status(VIEWS)
        head = engine.store.recorder.max_notification_id()
        expected = [(head, 0, 0)] * len(VIEWS)
        assert [(s["position"], s["behind"], s["lag"]) for s in after] == expected


def _wait_until(check: Any, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"not within {timeout} s")


def _follow(store_url: str) -> subprocess.Popen[str]:
    follower = cli(store_url, "project", "run", "--follow", "--poll", "0.05", "--json")
    with AftersalesStore(store_url) as store:
        _wait_until(lambda: all(positions(store).values()) or follower.poll() is not None, 30)
    assert follower.poll() is None, follower.communicate()
    return follower


def _stop(follower: subprocess.Popen[str]) -> dict[str, Any]:
    follower.send_signal(signal.SIGTERM)
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_follow_picks_up_a_new_event_within_a_second_on_postgres(store_url: str) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite is covered by the next test")
    with Engine(store_url) as engine:
        engine.handle(PlaceOrder(order_id="F-0", merchant="m", buyer="b", lines=["X:1:1.00"]))
        follower = _follow(store_url)
        try:
            engine.handle(PlaceOrder(order_id="F-1", merchant="m", buyer="b", lines=["X:1:2.00"]))
            placed = time.monotonic()
            head = engine.store.recorder.max_notification_id() or 0
            rates = Projector(engine.store).recorder(VIEWS[1])
            _wait_until(lambda: (rates.max_tracking_id("Aftersales") or 0) >= head - 1, 10)
            assert time.monotonic() - placed < 1.0
            # A burst, written by the library's runner in batches, lands as a rebuild would.
            for i in range(30):
                engine.handle(
                    PlaceOrder(order_id=f"F-B{i}", merchant="m", buyer="b", lines=["Y:2:3.00"])
                )
            engine.handle(DeliverOrder(order_id="F-B3"))
            head = engine.store.recorder.max_notification_id() or 0
            _wait_until(lambda: (rates.max_tracking_id("Aftersales") or 0) >= head, 10)
        finally:
            status = _stop(follower)
        followed = tables(engine.store)
        assert len(followed["proj_rates_orders"]) == 32
        assert status["projections"][1]["lag"] == 0
        Projector(engine.store).rebuild(VIEWS)
        assert tables(engine.store) == followed


def test_follow_folds_an_event_whose_notification_nobody_heard(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription reads what is recorded, then listens: an event committed between the
    two sent its notification before anyone listened. The follower wakes its subscriptions
    again when the log has grown, so such an event is folded within seconds, not whenever
    the next write comes (here: an event inserted with no notification at all)."""
    if not store_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    with Engine(store_url) as engine:
        engine.handle(PlaceOrder(order_id="N-0", merchant="m", buyer="b", lines=["X:1:1.00"]))
        follower = _follow(store_url)
        try:
            rates = Projector(engine.store).recorder(VIEWS[1])
            before = engine.store.recorder.max_notification_id() or 0
            _wait_until(lambda: (rates.max_tracking_id("Aftersales") or 0) >= before, 10)
            time.sleep(2)  # the subscriptions have read the log and listen

            def unheard(self: PostgresCaseRecorder, events: Any, **_: Any) -> None:
                with (
                    self.datastore.get_connection() as conn,
                    conn.transaction(),
                    conn.cursor() as curs,
                ):
                    self._lock_table(curs)
                    PostgresAggregateRecorder._insert_stored_events(self, curs, events)

            monkeypatch.setattr(PostgresCaseRecorder, "insert_events", unheard)
            engine.handle(PlaceOrder(order_id="N-1", merchant="m", buyer="b", lines=["X:1:2.00"]))
            monkeypatch.undo()
            assert (engine.store.recorder.max_notification_id() or 0) > before
            _wait_until(lambda: (rates.max_tracking_id("Aftersales") or 0) > before, 10)
        finally:
            _stop(follower)
        assert len(tables(engine.store)["proj_rates_orders"]) == 2


def test_follow_on_sqlite_polls_the_log(store_url: str) -> None:
    if not store_url.startswith("sqlite"):
        pytest.skip("the SQLite follower")
    with Engine(store_url) as engine:
        engine.handle(PlaceOrder(order_id="F-0", merchant="m", buyer="b", lines=["X:1:1.00"]))
        follower = _follow(store_url)
        try:
            engine.handle(PlaceOrder(order_id="F-1", merchant="m", buyer="b", lines=["X:1:2.00"]))
            head = engine.store.recorder.max_notification_id() or 0
            _wait_until(lambda: min(positions(engine.store).values()) >= head, 10)
        finally:
            _stop(follower)
        assert len(tables(engine.store)["proj_rates_orders"]) == 2


def test_follow_in_process_survives_a_rebuild_under_it(store_url: str) -> None:
    """A rebuild moves the tracking record under a running follower: its next batch is
    refused (exactly once), and it carries on from the rebuilt position."""
    with Engine(store_url) as engine:
        engine.handle(PlaceOrder(order_id="R-0", merchant="m", buyer="b", lines=["X:1:1.00"]))
        stop = threading.Event()
        follower = Projector(AftersalesStore(store_url))
        thread = threading.Thread(
            target=follower.follow, args=(VIEWS, stop), kwargs={"poll": 0.05}, daemon=True
        )
        thread.start()
        try:
            projector = Projector(engine.store)
            _wait_until(lambda: all(positions(engine.store).values()), 20)
            projector.rebuild(VIEWS)
            for i in range(5):
                engine.handle(
                    PlaceOrder(order_id=f"R-{i + 1}", merchant="m", buyer="b", lines=["X:1:1.00"])
                )
            head = engine.store.recorder.max_notification_id() or 0
            _wait_until(lambda: positions(engine.store)["return_rates"] >= head - 1, 20)
        finally:
            stop.set()
            thread.join(30)
            follower.store.close()
        assert not thread.is_alive()
        assert len(tables(engine.store)["proj_rates_orders"]) == 6


def test_unknown_projection_is_refused(store_url: str, tmp_path: Path) -> None:
    run = cli(store_url, "project", "rebuild", "nope")
    _, err = run.communicate(timeout=60)
    assert run.returncode == 2
    assert "nope" in err


def test_a_view_is_a_small_class() -> None:
    """Adding a projection means a View with tables and a fold: check the two there are."""
    for view in VIEWS:
        assert issubclass(view, View)
        assert view.tables and view.events
        assert all(t.name.startswith("proj_") and t.key for t in view.tables)


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_a_large_catch_up_leaves_statistics_for_the_reports(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aftersales.projections.runner as runner

    monkeypatch.setattr(runner, "ANALYZE_AFTER", 1)
    with Engine(store_url) as engine:
        engine.handle(PlaceOrder(order_id="S-1", merchant="m", buyer="b", lines=["X:1:1.00"]))
        assert Projector(engine.store).catch_up(VIEWS) >= 1
        schema = engine.store.url.schema
        rows = engine.store.query(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = ? "
            "AND starts_with(relname, 'proj_') AND last_analyze IS NOT NULL",
            (schema,),
        )
    analyzed = {r["relname"] for r in rows}
    assert {t.name for v in VIEWS for t in v.tables} <= analyzed
