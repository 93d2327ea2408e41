"""What a route is given: the worker's ``Api`` (kept on ``app.state``), and how it answers with
the engine's work for a request."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from eventsourcing.persistence import PersistenceError
from fastapi import Depends, Request

from aftersales.commands.http.batcher import Api
from aftersales.commands.http.error_responses import RateLimited, error, refused
from aftersales.commands.http.json_answers import Encoded, json_answer
from aftersales.commands.http.rate_limits import who
from aftersales.commands.http.read_routing import read_headers, route_read
from aftersales.commands.http.request_parts import etag
from aftersales.engine.access.scopes import Principal
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.errors import AftersalesError

log = logging.getLogger("aftersales.http")


async def current_api(request: Request) -> Api:
    """The worker's engine and refusal limiter, made with the application (``create_app``).
    (A coroutine: FastAPI runs a plain function dependency on a thread of its pool, a hand-over
    to another thread and back for every request.)"""
    api: Api = request.app.state.api
    return api


ApiDep = Annotated[Api, Depends(current_api)]


async def answer(
    api: Api,
    request: Request,
    work: Callable[[Engine, Principal], Any],
    created: bool = False,
    action: bool = False,
) -> Any:
    """Run the request's work on the engine (authenticated, rate limited) and answer with its
    result as JSON: 201 for what an action created anew, 200 otherwise, an ETag for a version
    and ``X-Projection-Lag`` for a report (with a read store, what a read reflects, where an
    action landed: ``read_routing.py``); a refusal in the one error shape."""
    wait = api.limiter.retry_after(*who(request))
    if wait is not None:
        return refused(request, RateLimited(wait), api.limiter)
    try:
        if not action:
            await route_read(api, request)
        result = await api.run(request, work, action)
    except AftersalesError as exc:
        return refused(request, exc, api.limiter)
    except PersistenceError:
        log.exception("the store failed on %s %s", request.method, request.url.path)
        return error("store_unavailable", "the store failed; try again", 503)
    if isinstance(result, tuple):  # an action: its result, and whether it is new
        result, new = result
        created = created and new
    if isinstance(result, Encoded):  # an action's result, encoded by its group commit
        headers = {} if result.version is None else {"ETag": f'"{result.version}"'}
    else:
        headers = etag(result)
    lag = getattr(request.state, "projection_lag", None)
    if lag is not None:
        headers["X-Projection-Lag"] = str(lag)
    headers.update(read_headers(request))
    return json_answer(result, 201 if created else 200, headers)
