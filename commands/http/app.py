"""The engine over HTTP: the same typed commands, the same ``Engine.handle``, behind keys.

Routes are derived from the typed commands (``engine/commands.py``): every case action is
``POST /v1/cases/{case_id}/{its last word}``, every order fact ``POST /v1/orders/{order_id}/...``;
a body is parsed by the command's own model (``Command.parse``), so it is refused exactly as a
`batch` line or an option would be, with the same message, and the OpenAPI document shows each
command's model as its request schema.

Every request is authenticated by its key and authorized by the principal's role and reach
(``engine/access.py``) before anything is read for it; the actor recorded is the principal. A
refusal appends nothing, is logged with principal, route and reason (never the key), and counts
against the key and the client: too many in a minute and they get 429 for the rest of it.

One engine per worker process, used from one thread: a case this worker saved is in its
aggregate cache, so a warm action costs one store round trip for the save (and one small read
for the key). More workers (``--workers``) are more processes; a stale cache is caught by the
store's version check, as between any two processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from eventsourcing.persistence import PersistenceError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from aftersales.commands.cli.output import exit_code
from aftersales.commands.desk.session import session_key
from aftersales.engine.access import (
    AUDIT,
    DASHBOARD,
    LEDGER,
    PARTY,
    RETURN_RATES,
    Forbidden,
    Principal,
    Scope,
    Unauthenticated,
    authenticate_many,
    case_parties,
    key_id_of,
    order_parties,
    parties,
)
from aftersales.engine.audit import audit_case
from aftersales.engine.case import case_uuid
from aftersales.engine.commands import (
    COMMANDS,
    Action,
    CaseAction,
    Command,
    FireDeadline,
    ListCases,
    MessageCase,
    OpenCase,
    OrderAction,
    PlaceOrder,
    ShowCase,
    ShowOrder,
    key_of,
)
from aftersales.engine.errors import AftersalesError, BadInput, NotAllowed, NotFound
from aftersales.engine.policy import Policy, load_policy
from aftersales.engine.service import Engine
from aftersales.engine.values import parse_time
from aftersales.projections.base import View
from aftersales.projections.dashboard import Dashboard, dashboard
from aftersales.projections.ledger import Ledger, ledger
from aftersales.projections.return_rates import GROUPINGS, ReturnRates, return_rates
from aftersales.projections.runner import Projector

log = logging.getLogger("aftersales.http")

# The contract's statuses, by the command line's exit code (commands/cli/output.py): 2 bad input,
# 3 not allowed by the rules, 4 no such case or order, 5 a conflicting change, 1 the store.
STATUS_BY_EXIT: Mapping[int, int] = {2: 422, 3: 409, 4: 404, 5: 412, 1: 503}
# Codes only HTTP has.
STATUS_BY_CODE: Mapping[str, int] = {
    "unauthenticated": 401,
    "forbidden": 403,
    "rate_limited": 429,
}
MAX_BODY = 64 * 1024


def status_of(code: str) -> int:
    return STATUS_BY_CODE.get(code) or STATUS_BY_EXIT.get(exit_code(code), 500)


class RateLimited(AftersalesError):
    code = "rate_limited"

    def __init__(self, wait: int) -> None:
        super().__init__(f"too many refused requests: retry in {wait} s")
        self.wait = wait


def error(code: str, message: str, status: int, headers: Mapping[str, str] | None = None) -> Any:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


class Limiter:
    """Refusals per key and per client in a sliding window; past the limit, 429 until the
    window has moved on. Per worker process."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self.seen: dict[str, deque[float]] = {}

    def _recent(self, who: str, now: float) -> deque[float]:
        times = self.seen.setdefault(who, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def retry_after(self, *who: str) -> int | None:
        now = time.monotonic()
        waits = [
            int(times[0] + self.window - now) + 1
            for w in who
            if len(times := self._recent(w, now)) >= self.limit
        ]
        return max(waits) if waits else None

    def failed(self, *who: str) -> None:
        now = time.monotonic()
        for w in who:
            self._recent(w, now).append(now)
        if len(self.seen) > 100_000:  # keep memory flat under a flood of made-up keys
            self.seen = {k: v for k, v in self.seen.items() if self._recent(k, now)}


# Routes derived from the typed commands ----------------------------------------------------

# Commands that make what their route is about: POSTed to the collection.
CREATES: Mapping[type[Command], str] = {PlaceOrder: "/v1/orders", OpenCase: "/v1/cases"}
# Fields that come from the path or headers, or are the principal's, never from a body.
NOT_IN_BODY = ("by", "command_id", "expected_version")


def action_route(kind: type[Command]) -> str | None:
    """The path an action is POSTed to; None for what is not an HTTP action (the clock's)."""
    if kind in CREATES:
        return CREATES[kind]
    word = kind.name.split(" ")[-1]
    if issubclass(kind, OrderAction):
        return f"/v1/orders/{{order_id}}/{word}"
    if issubclass(kind, CaseAction) and kind is not FireDeadline:
        return f"/v1/cases/{{case_id}}/{word}"
    return None


def body_schema(kind: type[Command], components: dict[str, Any]) -> dict[str, Any]:
    """The command's model as a request body's JSON schema (its definitions shared)."""
    schema = kind.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    leave_out = {*NOT_IN_BODY, *(key_of(a) for a in kind.arguments if kind not in CREATES)}
    schema["properties"] = {
        k: v for k, v in schema.get("properties", {}).items() if k not in leave_out
    }
    schema["required"] = [k for k in schema.get("required", []) if k not in leave_out]
    schema["title"] = kind.__name__
    return schema


# The application ---------------------------------------------------------------------------


# Most actions saved in one transaction by one worker at a time (group commit).
MAX_GROUP = 64
GATHER_TURNS = 4


class Job(NamedTuple):
    """One request's work for the engine: ``work`` authorizes and, for an action, gives the
    command and how to answer with its result (``Prepared``); for anything else, the answer."""

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

    def __init__(self, store: str | None, policy: Policy | None, limit: int) -> None:
        self.store_url = store
        self.policy = policy
        self.engine: Engine | None = None
        self.pending: list[Job] = []
        self.flushing = False
        self.seen = self.waited = 0
        self.limiter = Limiter(limit)
        # Requests the engine has taken, and in how many groups (for operators).
        self.batches = 0
        self.grouped = 0

    def open(self) -> None:
        self.engine = Engine(self.store_url, policy=self.policy)

    def close(self) -> None:
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
        """Queue the work for the engine and wait for its answer."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.pending.append(Job(bearer(request), work, action, future, request))
        if not self.flushing:
            self.flushing = True
            loop.call_soon(self.flush)
        return await future

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
            principals = authenticate_many(
                engine.store, [job.key for job in batch], datetime.now(UTC)
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
                prepared = job.work(engine, principal)
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
                results = [(self.handle_one(engine, prepared.command), engine.uow.replayed)]
            else:
                results = engine.handle_together([p.command for _, p in actions])
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


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None if header else session_key(request)  # the desk's session (commands/desk)


def who(request: Request, client: bool = True) -> tuple[str, ...]:
    """What refusals count against: the key's id (if the key is shaped like one) and, for a
    key that does not authenticate, the client's address too. A principal's own refusals (403,
    404) count against its key only: one platform app's address carries many buyers' keys."""
    key = bearer(request)
    key_id = key_id_of(key) if key else None
    address = request.client.host if request.client else "unknown"
    return ((f"client:{address}",) if client else ()) + ((f"key:{key_id}",) if key_id else ())


def etag(result: Any) -> dict[str, str]:
    if isinstance(result, dict) and isinstance(result.get("version"), int):
        return {"ETag": f'"{result["version"]}"'}
    return {}


def expected_version(request: Request) -> int | None:
    value = request.headers.get("if-match")
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise BadInput(f'If-Match {value!r} must be a version as an ETag gives it, e.g. "3"')
    return int(text)


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadInput(f"the body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadInput("the body must be a JSON object of the action's options")
    return data


def refuse_unseen(principal: Principal, found: tuple[str, str] | None, what: str) -> None:
    """Not found, whether it is not there or the principal may not read it: ids do not leak."""
    if found is None or not principal.sees(*found):
        raise NotFound(f"no {what}")


def allow(principal: Principal, name: str) -> None:
    if not principal.may(name):
        raise Forbidden(f"the {principal.role.value} role may not {name}")


def build_action(
    principal: Principal,
    kind: type[Command],
    body: Mapping[str, Any],
    path: Mapping[str, str],
    idempotency_key: str | None,
    version: int | None,
) -> Command:
    """The command a request asks for: the body's options, the path's id, the headers'
    idempotency key and version, and the principal as the one acting."""
    for key in NOT_IN_BODY:
        if key in body:
            raise BadInput(
                f"{key} is not given in the body over HTTP (the actor is the key's principal; "
                "use the Idempotency-Key and If-Match headers)"
            )
    for name in path:
        if name in body:
            raise BadInput(f"{name} is given in the path, not in the body")
    if body.get("at") is not None and principal.scope is not Scope.ALL:
        raise Forbidden("only the platform's principals may say when an action happened (at)")
    values: dict[str, Any] = {**body, **path, "by": principal.principal_id}
    if kind is MessageCase and principal.role in PARTY and not ({"as", "party"} & set(body)):
        values["as"] = PARTY[principal.role].value
    if idempotency_key is not None:
        if not idempotency_key.strip() or len(idempotency_key) > 200:
            raise BadInput("Idempotency-Key must be 1 to 200 characters")
        # Each principal's keys are its own: another's cannot be replayed or probed.
        values["command_id"] = f"{principal.principal_id}/{idempotency_key}"
    if version is not None:
        values["expected_version"] = version
    command: Command = kind.parse(values)
    return command


def create_app(
    store: str | None = None, policy: Policy | None = None, *, failure_limit: int = 20
) -> FastAPI:
    """The HTTP application over one store (one engine per worker process)."""
    api = Api(store, policy, failure_limit)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        api.open()
        try:
            yield
        finally:
            api.close()

    app = FastAPI(
        title="aftersales",
        summary="Returns, refunds and exchanges: the after-sales engine over HTTP.",
        version="1",
        lifespan=lifespan,
    )
    app.state.api = api
    components: dict[str, Any] = {}

    def refused(request: Request, exc: AftersalesError) -> Any:
        status = status_of(exc.code)
        principal = getattr(request.state, "principal", None)
        if status in (401, 403, 429) or (status == 404 and principal is not None):
            log.warning(
                "refused %s %s principal=%s client=%s status=%d reason=%s",
                request.method,
                request.url.path,
                principal or "-",
                request.client.host if request.client else "-",
                status,
                exc.message,
            )
        if status in (401, 403) or (status == 404 and isinstance(exc, NotFound)):
            api.limiter.failed(*who(request, client=status == 401))
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.wait)}
        return error(exc.code, exc.message, status, headers)

    async def answer(
        request: Request,
        work: Callable[[Engine, Principal], Any],
        created: bool = False,
        action: bool = False,
    ) -> Any:
        wait = api.limiter.retry_after(*who(request))
        if wait is not None:
            return refused(request, RateLimited(wait))
        try:
            result = await api.run(request, work, action)
        except AftersalesError as exc:
            return refused(request, exc)
        except PersistenceError:
            log.exception("the store failed on %s %s", request.method, request.url.path)
            return error("store_unavailable", "the store failed; try again", 503)
        if isinstance(result, tuple):  # an action: its result, and whether it is new
            result, new = result
            created = created and new
        headers = etag(result)
        lag = getattr(request.state, "projection_lag", None)
        if lag is not None:
            headers["X-Projection-Lag"] = str(lag)
        return JSONResponse(result, status_code=201 if created else 200, headers=headers)

    # Actions, one route each, derived from the commands --------------------------------------

    def add_action(kind: type[Command], path: str) -> None:
        path_names = [a for a in kind.arguments if f"{{{a}}}" in path]

        async def endpoint(request: Request) -> Any:
            try:
                body = await json_body(request)
                version = expected_version(request)
            except BadInput as exc:
                return refused(request, exc)
            given = {n: request.path_params[n] for n in path_names}
            idempotency_key = request.headers.get("idempotency-key")

            def work(engine: Engine, principal: Principal) -> Prepared:
                allow(principal, kind.name)
                command = build_action(principal, kind, body, given, idempotency_key, version)
                assert isinstance(command, Action)
                found = parties(engine, command)
                if kind is not PlaceOrder:  # placing: operators only, nothing to find
                    target = given.get("case_id") or getattr(command, "order_id", "")
                    what = "case" if "case_id" in given else "order"
                    refuse_unseen(principal, found, f"{what} {target}")
                if found is not None and not principal.speaks_for(command.role):
                    raise Forbidden(
                        f"the {principal.role.value} role may not act as the {command.role}"
                    )
                return Prepared(command, lambda result, replayed: (result, not replayed))

            return await answer(request, work, created=kind in CREATES, action=True)

        doc = (kind.__doc__ or "").strip()
        app.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            name=kind.name,
            summary=doc.split("\n")[0],
            description=f"`{kind.name}` over HTTP. {doc}",
            tags=["orders" if "/orders" in path else "cases"],
            openapi_extra={
                "parameters": [
                    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                    for n in path_names
                ]
                + [
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                    {"name": "If-Match", "in": "header", "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "content": {"application/json": {"schema": body_schema(kind, components)}}
                },
            },
        )

    for kind in COMMANDS:
        route = action_route(kind)
        if route is not None:
            add_action(kind, route)

    # Reads ------------------------------------------------------------------------------------

    @app.get("/healthz", tags=["service"])
    async def healthz() -> Any:
        """Whether the service is up (no key needed)."""
        return {"ok": True, "store": api.engine.store.url.kind if api.engine else None}

    @app.get("/v1/cases/{case_id}", tags=["cases"], summary=ShowCase.__doc__)
    async def show_case(request: Request, case_id: str) -> Any:
        def work(engine: Engine, principal: Principal) -> Any:
            allow(principal, ShowCase.name)
            command = ShowCase.parse({"case_id": case_id})
            refuse_unseen(principal, case_parties(engine, command.case_id), f"case {case_id}")
            return engine.handle(command)

        return await answer(request, work)

    @app.get("/v1/cases", tags=["cases"], summary=ListCases.__doc__)
    async def list_cases(request: Request) -> Any:
        query = dict(request.query_params)

        def work(engine: Engine, principal: Principal) -> Any:
            allow(principal, ListCases.name)
            values: dict[str, Any] = dict(query)
            if principal.scope is Scope.MERCHANT:
                if values.get("merchant", principal.merchant_id) != principal.merchant_id:
                    return []
                values["merchant"] = principal.merchant_id
            elif principal.scope is Scope.BUYER:
                if values.get("buyer", principal.principal_id) != principal.principal_id:
                    return []
                values["buyer"] = principal.principal_id
            return engine.handle(ListCases.parse(values))

        return await answer(request, work)

    @app.get("/v1/orders/{order_id}", tags=["orders"], summary=ShowOrder.__doc__)
    async def show_order(request: Request, order_id: str) -> Any:
        def work(engine: Engine, principal: Principal) -> Any:
            allow(principal, ShowOrder.name)
            command = ShowOrder.parse({"order_id": order_id})
            refuse_unseen(principal, order_parties(engine, order_id), f"order {order_id}")
            return engine.handle(command)

        return await answer(request, work)

    @app.get("/v1/cases/{case_id}/audit", tags=["cases"])
    async def audit(
        request: Request, case_id: str, as_of: str | None = None, verify: bool = False
    ) -> Any:
        """A case's history replayed from its events, as `audit --json`; with verify=true,
        409 unless the history verifies."""

        def work(engine: Engine, principal: Principal) -> Any:
            allow(principal, AUDIT)
            uid = case_uuid(case_id)
            refuse_unseen(principal, case_parties(engine, uid), f"case {case_id}")
            when = parse_time(as_of, "as_of") if as_of is not None else None
            result = audit_case(engine.store, case_id, as_of=when)
            if verify and not result.verified:
                raise NotAllowed(
                    f"case {result.case_id} does not verify: {len(result.problems)} problem(s)"
                )
            return result.to_json()

        return await answer(request, work)

    def read_view(request: Request, engine: Engine, view: type[View]) -> None:
        """Reports are read from projections: say how many events one has still to apply
        (``X-Projection-Lag``), as the command line warns."""
        (row,) = Projector(engine.store).status([view])
        request.state.projection_lag = row["lag"]

    def report_merchant(principal: Principal, merchant: str | None) -> str | None:
        """A merchant's staff sees its own merchant's figures only."""
        if principal.scope is Scope.MERCHANT:
            if merchant not in (None, principal.merchant_id):
                raise Forbidden(f"a merchant's staff sees only {principal.merchant_id}'s reports")
            return principal.merchant_id
        return merchant

    def when(value: str | None, key: str) -> datetime | None:
        return parse_time(value, key) if value is not None else None

    def in_order(start: datetime | None, end: datetime | None) -> None:
        if start and end and start >= end:
            raise BadInput(f"since {start.isoformat()} is not before until {end.isoformat()}")

    @app.get("/v1/reports/dashboard", tags=["reports"])
    async def dashboard_report(
        request: Request, merchant: str | None = None, now: str | None = None
    ) -> Any:
        """As `report dashboard --json`."""

        def work(engine: Engine, principal: Principal) -> Any:
            allow(principal, DASHBOARD)
            shop = report_merchant(principal, merchant)
            read_view(request, engine, Dashboard)
            return dashboard(engine.store, shop, when(now, "now") or datetime.now(UTC))

        return await answer(request, work)

    @app.get("/v1/reports/return-rates", tags=["reports"])
    async def return_rates_report(
        request: Request,
        by: str = "merchant",
        merchant: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> Any:
        """As `report return-rates --json`."""

        def work(engine: Engine, principal: Principal) -> Any:
            allow(principal, RETURN_RATES)
            if by not in GROUPINGS:
                raise BadInput(f"by {by!r} is not one of {'|'.join(GROUPINGS)}")
            shop = report_merchant(principal, merchant)
            end = when(until, "until") or datetime.now(UTC)
            start = when(since, "since") or end - timedelta(days=30)
            in_order(start, end)
            read_view(request, engine, ReturnRates)
            return return_rates(engine.store, by, start, end, shop)

        return await answer(request, work)

    @app.get("/v1/reports/ledger", tags=["reports"])
    async def ledger_report(
        request: Request,
        merchant: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> Any:
        """As `ledger --json`."""

        def work(engine: Engine, principal: Principal) -> Any:
            allow(principal, LEDGER)
            shop = report_merchant(principal, merchant)
            start, end = when(since, "since"), when(until, "until")
            in_order(start, end)
            read_view(request, engine, Ledger)
            return ledger(engine.store, shop, start, end)

        return await answer(request, work)

    # One error shape, never a traceback -----------------------------------------------------

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Any:
        code = {404: "not_found", 405: "bad_input"}.get(exc.status_code, "bad_input")
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return error(code, message, exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def query_error(request: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error("bad_input", f"{where}: {first.get('msg', 'invalid')}", 422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Any:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error("internal", "internal error (logged on the server)", 500)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    from aftersales.commands.desk.web import mount_desk  # the desk's pages use this module's checks

    mount_desk(app, api)
    return app


def app_from_env() -> FastAPI:
    """The application `aftersales serve` runs in each worker: store and policy from the
    environment the command set."""
    return create_app(
        os.environ.get("AFTERSALES_STORE"),
        load_policy(os.environ.get("AFTERSALES_POLICY")),
        failure_limit=int(os.environ.get("AFTERSALES_FAILURE_LIMIT", "20")),
    )
