"""Bulk runs on several processes at once: each worker process runs its share of the same
input with its own engine, and the parent adds up their reports.

Python keeps one core busy per process; on a machine with more cores than that, and a
PostgreSQL that takes writers at once, several workers import faster. SQLite has one writer
at a time, so it gets one worker.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from eventsourcing.persistence import PersistenceError

from engine.bulk import MAX_ERRORS_KEPT, Failure, Report
from engine.errors import (
    AftersalesError,
    BadInput,
    Conflict,
    NotAllowed,
    NotFound,
    StoreUnavailable,
)
from engine.store import parse_store_url

# How long a worker waits for the others at a sync point before giving up on them.
SYNC_TIMEOUT = 600.0


@dataclass
class Worker:
    """What a worker process knows of the run: which it is, of how many, and how to report
    progress and wait for the others."""

    index: int
    workers: int
    done: Synchronized[int] | None
    barrier: threading.Barrier | None

    def progress(self, count: int) -> None:
        if self.done is not None:
            with self.done.get_lock():
                self.done.value += count

    def sync(self) -> None:
        """Return once every worker has called it (an error in one breaks it for all)."""
        if self.barrier is not None:
            self.barrier.wait(SYNC_TIMEOUT)


# Set in each worker process when it starts: shared by the workers of one run.
_shared: tuple[Synchronized[int], threading.Barrier] | None = None


def _start(done: Synchronized[int], barrier: threading.Barrier) -> None:
    global _shared
    _shared = (done, barrier)


def _run(job: Callable[..., Report], args: tuple[Any, ...], index: int, workers: int) -> Any:
    done, barrier = _shared if _shared is not None else (None, None)
    worker = Worker(index, workers, done, barrier)
    try:
        return {"report": asdict(job(*args, worker))}
    except AftersalesError as exc:
        kind, message = type(exc).__name__, exc.message
    except PersistenceError as exc:
        kind, message = "StoreUnavailable", " ".join(str(exc).split()) or type(exc).__name__
    except threading.BrokenBarrierError:
        kind, message = "StoreUnavailable", "another worker failed"
    except BaseException:
        if barrier is not None:
            barrier.abort()  # the others stop waiting for this one
        raise
    if barrier is not None:
        barrier.abort()
    return {"error": [kind, message]}


_ERRORS: dict[str, type[AftersalesError]] = {
    cls.__name__: cls for cls in (BadInput, NotAllowed, NotFound, Conflict, StoreUnavailable)
}


def in_processes(
    store: str | None,
    job: Callable[..., Report],
    args: tuple[Any, ...],
    *,
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Run ``job(*args, worker)`` on ``workers`` processes and add up their reports: lines,
    results and events summed, errors in line order. The time is the whole run's, process
    start included. ``job`` must be a module-level function (it is sent to the workers)."""
    if parse_store_url(store).kind != "postgresql":
        raise BadInput("more than one worker needs a PostgreSQL store (SQLite has one writer)")
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    done = context.Value("q", 0)
    barrier = context.Barrier(workers)
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start, initargs=(done, barrier)
    ) as pool:
        futures = [pool.submit(_run, job, args, k, workers) for k in range(workers)]
        reported = 0
        while not all(f.done() for f in futures):
            wait(futures, timeout=0.25)
            if progress is not None and done.value > reported:
                progress(done.value - reported)
                reported = done.value
        results = [f.result() for f in futures]
    report = Report()
    errors = [r["error"] for r in results if "error" in r]
    # The error that broke the run, not the "another worker failed" of the others.
    errors.sort(key=lambda e: e[1] == "another worker failed")
    if errors:
        kind, message = errors[0]
        raise _ERRORS.get(kind, AftersalesError)(message)
    for result in results:
        part = result["report"]
        report.lines += part["lines"]
        report.ok += part["ok"]
        report.failed += part["failed"]
        report.events += part["events"]
        report.failures += [Failure(**f) for f in part["failures"]]
    report.failures = sorted(report.failures, key=lambda f: f.line)[:MAX_ERRORS_KEPT]
    report.seconds = time.perf_counter() - started
    return report
