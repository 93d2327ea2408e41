"""One error shape, never a traceback: ``{"error": {"code", "message"}}`` with the status the
contract gives each code, and the refusals logged and counted."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from aftersales.commands.cli.output import exit_code
from aftersales.commands.http.rate_limits import Limiter, client_address, who
from aftersales.engine.domain.errors import AftersalesError, NotFound

log = logging.getLogger("aftersales.http")

# The contract's statuses, by the command line's exit code (commands/cli/output.py): 2 bad
# input, 3 not allowed by the rules, 4 no such case or order, 5 a conflicting change, 1 the store.
STATUS_BY_EXIT: Mapping[int, int] = {2: 422, 3: 409, 4: 404, 5: 412, 1: 503}
# Codes only HTTP has.
STATUS_BY_CODE: Mapping[str, int] = {
    "unauthenticated": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "too_large": 413,
}


def status_of(code: str) -> int:
    return STATUS_BY_CODE.get(code) or STATUS_BY_EXIT.get(exit_code(code), 500)


class RateLimited(AftersalesError):
    code = "rate_limited"

    def __init__(self, wait: int) -> None:
        super().__init__(
            f"too many refused requests with this key or from this client: retry in {wait} s"
        )
        self.wait = wait


def error(code: str, message: str, status: int, headers: Mapping[str, str] | None = None) -> Any:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def refused(request: Request, exc: AftersalesError, limiter: Limiter) -> Any:
    """The answer to a refused request: logged (never the key) when it is about who asks, and
    counted against the key (or session) it presented, or, with nothing shaped like a key, the
    client's address (``rate_limits.who``). A 429 says when to come back (``Retry-After``)."""
    status = status_of(exc.code)
    principal = getattr(request.state, "principal", None)
    if status in (401, 403, 429) or (status == 404 and principal is not None):
        log.warning(
            "refused %s %s principal=%s client=%s status=%d reason=%s",
            request.method,
            request.url.path,
            principal or "-",
            client_address(request),
            status,
            exc.message,
        )
    if status in (401, 403) or (status == 404 and isinstance(exc, NotFound)):
        limiter.failed(*who(request))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.wait)}
    return error(exc.code, exc.message, status, headers)


async def http_error(request: Request, exc: HTTPException) -> Any:
    code = {404: "not_found", 405: "bad_input"}.get(exc.status_code, "bad_input")
    message = "no such route" if exc.status_code == 404 else str(exc.detail)
    headers = exc.headers
    if exc.status_code == 405:
        # Every method of the path, not only the first route's that matched it (reading a
        # collection and adding to it are routes of their own).
        headers = {**(headers or {}), "Allow": allowed_methods(request)}
    return error(code, message, exc.status_code, headers)


def allowed_methods(request: Request) -> str:
    """The methods the application's routes take on the request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def query_error(request: Request, exc: RequestValidationError) -> Any:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
    return error("bad_input", f"{where}: {first.get('msg', 'invalid')}", 422)


async def internal_error(request: Request, exc: Exception) -> Any:
    """The last resort: the error shape, and the traceback logged with the method and path
    only (not the query, the headers, the body, nor the key). Nothing a client sends is meant
    to get here: tests/test_http_contract.py fuzzes every route for it."""
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error("internal", "internal error (logged on the server)", 500)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, query_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)
