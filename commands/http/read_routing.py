"""Reads from a standby over HTTP (``aftersales serve --read-store URL``).

Every read (the API's GETs, the desk's pages) goes to the read store and says what it reflects
in ``X-Read-*`` headers (``engine/storage/replica.py``). An action goes to the store and answers
with ``X-Read-After``, where it landed, also set as the ``aftersales_read_after`` cookie (the
desk keeps it): a read carrying the header (or, without it, the cookie) waits until the standby
has replayed that far, for at most ``AFTERSALES_READ_WAIT`` seconds and without holding up the
worker's other requests, else reads the primary. A read after an action within the same request
(the desk's settings page) reads the primary's answer in the same way.

Without a read store nothing here runs: every request reads and writes the store as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import Request

from aftersales.commands.http.batcher import Api
from aftersales.commands.http.openapi_models import HEADER_DOCS
from aftersales.commands.http.request_parts import bearer
from aftersales.engine.storage.replica import (
    POLL_SECONDS,
    check_token,
    headers_of,
    read_wait,
)

log = logging.getLogger("aftersales.http")
READ_AFTER_HEADER = "X-Read-After"
READ_AFTER_COOKIE = "aftersales_read_after"
# How long the desk's browser keeps an action's token: far longer than a standby lags.
COOKIE_MAX_AGE = 300


def token_of(request: Request) -> str | None:
    """The read-your-writes token a read carries: from an action earlier in the same request,
    else the header (a bad one is refused, 422), else the cookie (a bad one is left out)."""
    own: str | None = getattr(request.state, "read_after", None)
    if own is not None:
        return own
    header = request.headers.get(READ_AFTER_HEADER)
    if header is not None:
        return check_token(header)
    cookie = request.cookies.get(READ_AFTER_COOKIE)
    if cookie:
        try:
            return check_token(cookie)
        except Exception:
            return None
    return None


async def route_read(api: Api, request: Request) -> None:
    """Choose where this read goes (``request.state.read_engine``; None: the store) and what it
    will reflect (``request.state.read_headers``): the read store, once it has replayed the
    token the read carries, else the store."""
    if bearer(request) is None:  # no credential: refused before any read
        return
    token = token_of(request)  # a malformed X-Read-After is refused, read store or not
    reader = api.reader
    if reader is None:
        return
    replayed, waited = True, None
    started = time.monotonic()
    try:
        if token is not None:
            deadline = started + read_wait()
            while not (replayed := reader.replayed(token)) and time.monotonic() < deadline:
                await asyncio.sleep(POLL_SECONDS)
            waited = time.monotonic() - started
        standing = reader.standing(replayed, token, waited)
    except Exception as exc:  # the standby failed: the primary answers
        log.warning("the read store failed; reading the store: %s", exc)
        replayed, standing = False, reader.failed_over(exc, token, waited)
    request.state.read_engine = api.read_engine if replayed else None
    request.state.read_headers = headers_of(standing)


def read_headers(request: Request) -> dict[str, str]:
    """The headers an answer adds: what a read reflected, or where an action landed (its
    header, and the cookie the desk keeps)."""
    found: dict[str, str] = dict(getattr(request.state, "read_headers", None) or {})
    token: str | None = getattr(request.state, "read_after", None)
    if token is not None and not found:
        found[READ_AFTER_HEADER] = token
        found["Set-Cookie"] = (
            f"{READ_AFTER_COOKIE}={token}; Path=/; Max-Age={COOKIE_MAX_AGE}; "
            "SameSite=Strict; HttpOnly"
        )
    return found


def with_read_headers(response: Any, request: Request) -> Any:
    """A response (the desk's page) with the read's headers."""
    for name, value in read_headers(request).items():
        response.headers[name] = value
    return response


READ_HEADERS = ("X-Read-From", "X-Read-Position", "X-Read-Behind", "X-Replay-Lag", "X-Read-Waited")
READ_AFTER_PARAMETER = {
    "name": READ_AFTER_HEADER,
    "in": "header",
    "required": False,
    "description": "With a read store: an action's `X-Read-After`; the read waits until the "
    "standby has replayed that far (at most AFTERSALES_READ_WAIT seconds), else reads the "
    "primary. Without it, the `aftersales_read_after` cookie is read.",
    "schema": HEADER_DOCS[READ_AFTER_HEADER]["schema"],
}


def document_reads(method: str, operation: dict[str, Any]) -> None:
    """The OpenAPI operation of a keyed route with what a read store adds: a read's
    ``X-Read-After`` parameter and ``X-Read-*`` headers, an action's ``X-Read-After``."""
    if operation.get("security") == []:  # not keyed: read from the store as it stands
        return
    responses = operation.get("responses", {})
    success = [r for status, r in responses.items() if status in ("200", "201")]
    if method == "get":
        operation.setdefault("parameters", []).append(READ_AFTER_PARAMETER)
        names: tuple[str, ...] = READ_HEADERS
    else:
        names = (READ_AFTER_HEADER,)
    for response in success:
        response.setdefault("headers", {}).update({n: HEADER_DOCS[n] for n in names})
