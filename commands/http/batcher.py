"""The request batcher: one worker's engine, run on the event loop's own thread, taking the
requests that arrive together as one group (one transaction for their actions).

One engine per worker process, used from one thread: a case this worker saved is in its
aggregate cache, so a warm action costs one store round trip for the save; a credential the
store granted a moment ago is not read again while no revocation is heard
(``engine/access/credential_cache.py``). More workers (``--workers``) are more processes; a
stale cache is caught by the store's version check, as between any two processes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from fastapi import Request

from aftersales.commands.http.json_answers import encode_result
from aftersales.commands.http.rate_limits import Limiter
from aftersales.commands.http.request_parts import bearer
from aftersales.commands.http.revocations import RevocationListener
from aftersales.engine.access.api_keys import Unauthenticated
from aftersales.engine.access.credential_cache import MAX_AGE, CredentialCache
from aftersales.engine.access.desk_sessions import SessionTerms, grant_credentials
from aftersales.engine.access.scopes import Principal
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import Action
from aftersales.engine.domain.errors import AftersalesError
from aftersales.engine.domain.policy import Policy
from aftersales.engine.storage.replica import ReadStore, landed_at
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector

log = logging.getLogger("aftersales.http")

# Most actions saved in one transaction by one worker at a time (group commit).
MAX_GROUP = 64
GATHER_TURNS = 4


class Job(NamedTuple):
    """One request's work for the engine: ``work`` authorizes and, for an action, gives the
    command and how to answer with its result (``Prepared``); for anything else, the answer.
    ``key`` is the request's credential: a key, or a desk session's token."""

    key: str | None
    work: Callable[[Engine, Principal], Any]
    action: bool
    future: asyncio.Future[Any]
    request: Request


class Prepared(NamedTuple):
    command: Action
    answer: Callable[[Any, bool], Any]


class Api:
    """One worker's engine and the refusal limiter.

    The engine runs on the event loop's own thread: requests put their work in a list, and the
    first one schedules a flush; by the time it runs, every request that arrived meanwhile is in
    the list. The actions among them run together and are saved in one transaction
    (``Engine.handle_together``): each answered only once that transaction is committed, and if
    any is refused, or the save fails, each is run again alone, so one request's refusal sinks
    no other. While the engine waits on the store, no other request is read: the requests
    arriving then make the next group. (One thread, so no handing over between threads and no
    contention for the interpreter lock.)"""

    def __init__(
        self,
        store: str | None,
        policy: Policy | None,
        limit: int,
        key_cache: timedelta = MAX_AGE,
        read_store: str | None = None,
    ) -> None:
        self.store_url = store
        # A standby the reads go to (commands/http/read_routing.py), opened with the engine.
        self.read_store_url = read_store
        self.reader: ReadStore | None = None
        self.read_engine: Engine | None = None
        self.policy = policy
        self.engine: Engine | None = None
        # Credentials granted a moment ago, used while no revocation is heard (PostgreSQL).
        self.credentials = CredentialCache(key_cache)
        self.revocations: RevocationListener | None = None
        self.pending: list[Job] = []
        self.flushing = False
        self.seen = self.waited = 0
        self.limiter = Limiter(limit)
        # How long the desk's sessions last (``create_app``'s ``session_terms``).
        self.session_terms = SessionTerms()
        # What time it is for keys' and sessions' ends (a test may set another clock).
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)
        # Requests the engine has taken, and in how many groups (for operators).
        self.batches = 0
        self.grouped = 0

    def open(self) -> None:
        self.engine = Engine(self.store_url, policy=self.policy)
        if self.read_store_url:
            self.reader = ReadStore(self.read_store_url, self.engine.store)
            self.read_engine = Engine(self.reader.store, policy=self.policy)
        if self.credentials.max_age > timedelta(0):
            self.revocations = RevocationListener(self.engine.store, self.credentials)
            self.revocations.start()
        # The projections' tables, made once: the reports and the desk's pages read them, and
        # a new store has none until something projects.
        projector = Projector(self.engine.store)
        for view in VIEWS:
            projector.recorder(view)

    def close(self) -> None:
        if self.revocations is not None:
            self.revocations.stop()
            self.revocations = None
        if self.read_engine is not None:
            self.read_engine.close()
            self.read_engine = self.reader = None
        if self.engine is not None:
            log.warning(
                "engine took %d requests in %d groups; %d saves retried",
                self.grouped,
                self.batches,
                self.engine.retries,
            )
            self.engine.close()
            self.engine = None

    async def run(
        self, request: Request, work: Callable[[Engine, Principal], Any], action: bool = False
    ) -> Any:
        """Queue the work for the engine and wait for its answer. With a read store, an
        action's answer notes where it landed (``request.state.read_after``), and a read runs
        on the engine ``read_routing.route_read`` chose for it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append(Job(bearer(request), work, action, future, request))
        if not self.flushing:
            self.flushing = True
            loop.call_soon(self.flush)
        result = await future
        if action and self.reader is not None and self.engine is not None:
            request.state.read_after = landed_at(self.engine.store)
        return result

    def flush(self) -> None:
        # Requests that arrived together reach here over a few turns of the loop (reading,
        # routing, the body): wait while they keep coming, a few turns at most.
        loop = asyncio.get_running_loop()
        if len(self.pending) > self.seen and self.waited < GATHER_TURNS:
            self.seen, self.waited = len(self.pending), self.waited + 1
            loop.call_soon(self.flush)
            return
        self.seen = self.waited = 0
        batch, self.pending = self.pending[:MAX_GROUP], self.pending[MAX_GROUP:]
        if self.pending:
            loop.call_soon(self.flush)
        else:
            self.flushing = False
        self.batches += 1
        self.grouped += len(batch)
        self.run_batch(batch)

    def run_batch(self, batch: list[Job]) -> None:
        engine = self.engine
        assert engine is not None
        actions: list[tuple[Job, Prepared]] = []
        try:
            principals = self.credentials.authenticate(
                engine.store, [job.key for job in batch], self.now(), grant_credentials
            )
        except Exception as exc:
            for job in batch:
                settle(job, exc)
            return
        for job in batch:
            try:
                principal = principals[job.key]
                if isinstance(principal, Unauthenticated):
                    raise principal
                job.request.state.principal = principal.principal_id
                chosen = None if job.action else getattr(job.request.state, "read_engine", None)
                prepared = job.work(chosen or engine, principal)
            except Exception as exc:
                settle(job, exc)
                continue
            if job.action:
                actions.append((job, prepared))
            else:
                settle(job, prepared)
        if not actions:
            return
        try:
            if len(actions) == 1:
                ((job, prepared),) = actions
                found = self.handle_one(engine, prepared.command)
                if not isinstance(found, Exception):
                    found = encode_result(found)
                results = [(found, engine.uow.replayed)]
            else:
                results = engine.handle_together(
                    [p.command for _, p in actions], snapshot=encode_result
                )
        except Exception as exc:
            for job, _ in actions:
                settle(job, exc)
            return
        for (job, prepared), (result, replayed) in zip(actions, results, strict=True):
            if isinstance(result, Exception):
                settle(job, result)
            else:
                settle(job, prepared.answer(result, replayed))

    @staticmethod
    def handle_one(engine: Engine, command: Action) -> Any:
        try:
            return engine.handle(command)
        except AftersalesError as exc:
            return exc


def settle(job: Job, outcome: Any) -> None:
    """Answer a request (unless its client has gone: the work is done all the same)."""
    if job.future.done():
        return
    if isinstance(outcome, Exception):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)
