"""Bulk runs on several processes at once: each worker process runs its share of the same
input with its own engine, and the parent adds up their reports.

Python keeps one core busy per process; on a machine with more cores than that, and a
PostgreSQL that takes writers at once, several workers import faster. SQLite has one writer
at a time, so it gets one worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import multiprocessing.queues
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.sharedctypes import Synchronized
from queue import Empty
from typing import Any

from eventsourcing.persistence import PersistenceError

from aftersales.engine.application.bulk import MAX_ERRORS_KEPT, Failure, Report
from aftersales.engine.domain.errors import (
    AftersalesError,
    BadInput,
    Conflict,
    NotAllowed,
    NotFound,
    StoreUnavailable,
)
from aftersales.engine.storage.urls import parse_store_url


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
        """Return once every worker has called it. A worker that fails, or dies, breaks it
        for all (the parent aborts it for one that died)."""
        if self.barrier is not None:
            self.barrier.wait()


# What a worker says when the run broke because of another worker.
ANOTHER_FAILED = "another worker failed"


# prctl's option asking the kernel for a signal when the parent ends (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """End this worker when the process that started it ends, however it ends (``kill -9``
    included), so no worker goes on writing for a run nobody waits for: on Linux the kernel
    sends SIGKILL (prctl PR_SET_PDEATHSIG); elsewhere a thread checks the parent twice a
    second. A parent already gone ends it at once."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            _watch_parent(parent)
    else:
        _watch_parent(parent)
    if os.getppid() != parent:  # it ended before the request was made
        os._exit(1)


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _main(
    job: Callable[..., Report],
    args: tuple[Any, ...],
    worker: Worker,
    results: multiprocessing.queues.Queue[tuple[int, dict[str, Any]]],
    parent: int,
) -> None:
    """A worker process: run its share and send back its report or its error."""
    die_with_parent(parent)
    barrier = worker.barrier
    try:
        result: dict[str, Any] = {"report": asdict(job(*args, worker))}
    except AftersalesError as exc:
        result = {"error": [type(exc).__name__, exc.message]}
    except PersistenceError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        result = {"error": ["StoreUnavailable", message]}
    except threading.BrokenBarrierError:
        result = {"error": ["StoreUnavailable", ANOTHER_FAILED]}
    except BaseException as exc:
        result = {"error": ["AftersalesError", f"worker {worker.index} failed: {exc!r}"]}
    if "error" in result and barrier is not None:
        barrier.abort()  # the others stop waiting for this one
    results.put((worker.index, result))


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
    queue: multiprocessing.queues.Queue[tuple[int, dict[str, Any]]] = context.Queue()
    processes = [
        context.Process(
            target=_main,
            args=(job, args, Worker(k, workers, done, barrier), queue, os.getpid()),
            name=f"aftersales-worker-{k}",
            daemon=True,
        )
        for k in range(workers)
    ]
    for process in processes:
        process.start()
    got: dict[int, dict[str, Any]] = {}
    reported = 0
    try:
        while len(got) < workers:
            try:
                index, result = queue.get(timeout=0.25)
                got[index] = result
                continue
            except Empty:
                pass
            if progress is not None and done.value > reported:
                progress(done.value - reported)
                reported = done.value
            ended = [k for k, p in enumerate(processes) if k not in got and p.exitcode is not None]
            if ended:
                # What an ended worker sent is in the pipe by the time it ends: read it first.
                while True:
                    try:
                        index, result = queue.get(timeout=0.5)
                        got[index] = result
                    except Empty:
                        break
            for k, process in enumerate(processes):
                if k not in got and process.exitcode is not None:
                    # Ended without a word (killed, out of memory): wait no longer for it.
                    got[k] = {
                        "error": [
                            "AftersalesError",
                            f"worker {k} ended unexpectedly (exit code {process.exitcode})",
                        ]
                    }
                    barrier.abort()
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    results = [got[k] for k in range(workers)]
    report = Report()
    errors = [r["error"] for r in results if "error" in r]
    # The error that broke the run, not the "another worker failed" of the others.
    errors.sort(key=lambda e: e[1] == ANOTHER_FAILED)
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
