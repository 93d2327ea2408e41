"""Reading a page's data: through the API's own ``Api.run`` as the session's principal (the
session's key authenticated as a Bearer key is), refused as the API refuses, counted against
the key as the API counts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import tzinfo
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response

from aftersales.commands.desk.rendering import render, signed_out, zone_of
from aftersales.commands.http.batcher import Api
from aftersales.commands.http.error_responses import status_of
from aftersales.commands.http.rate_limits import who
from aftersales.commands.http.read_routing import route_read, with_read_headers
from aftersales.commands.http.request_parts import bearer
from aftersales.engine.access.api_keys import Forbidden, Unauthenticated
from aftersales.engine.access.scopes import Principal, Scope
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.errors import AftersalesError

Work = Callable[[Engine, Principal], dict[str, Any]]


def display_zone(request: Request) -> tzinfo:
    """The zone people's times are shown in, chosen when the desk was mounted
    (``commands/desk/web.py``)."""
    zone: tzinfo = request.app.state.desk_zone
    return zone


DisplayZone = Annotated[tzinfo, Depends(display_zone)]


def chosen_merchant(principal: Principal, asked: str | None) -> str | None:
    """Whose figures a report shows: a merchant's staff only their own, the platform's
    principals the one they pick (None: every merchant)."""
    asked = (asked or "").strip() or None
    if principal.scope is Scope.MERCHANT:
        if asked is not None and not principal.sees(asked, ""):
            raise Forbidden(f"a merchant's staff sees only {principal.merchant_id}'s reports")
        return principal.merchant_id
    return asked


def held_back(api: Api, request: Request) -> Response | None:
    """The page saying when to come back, for a client refused too often (as the API counts
    its refusals); None for one that may go on."""
    wait = api.limiter.retry_after(*who(request))
    if wait is None:
        return None
    limited = render("error.html", 429, message=f"too many refused requests: retry in {wait} s")
    limited.headers["Retry-After"] = str(wait)
    return limited


async def read(api: Api, request: Request, work: Work) -> dict[str, Any] | Response:
    """The page's data, read as the session's principal; a response if refused."""
    if bearer(request) is None:  # neither a session nor an Authorization header
        return signed_out()
    limited = held_back(api, request)
    if limited is not None:
        return limited
    try:
        await route_read(api, request)
        data: dict[str, Any] = await api.run(request, work)
    except Unauthenticated:
        api.limiter.failed(*who(request))  # a made-up cookie counts as a wrong key
        return signed_out()
    except AftersalesError as exc:
        status = status_of(exc.code)
        if status in (403, 404):
            api.limiter.failed(*who(request))
        return render("error.html", status, message=exc.message)
    return data


def work_with(request: Request, work: Work, display: tzinfo) -> Work:
    """The work, and what every page shows: who is signed in, their zone, the query."""
    zone = zone_of(request, display)
    query = dict(request.query_params)

    def wrapped(engine: Engine, principal: Principal) -> dict[str, Any]:
        data = work(engine, principal)
        return {"principal": principal, "zone": zone, "query": query, **data}

    return wrapped


async def page(api: Api, request: Request, template: str, work: Work, display: tzinfo) -> Any:
    """A page: its data read as the session's principal, rendered with its template."""
    data = await read(api, request, work_with(request, work, display))
    if isinstance(data, Response):
        return data
    return with_read_headers(render(template, **data), request)
