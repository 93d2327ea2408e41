"""The merchant's after-sales desk: HTML pages on the HTTP API's application.

Pages are rendered on the server (Jinja2) from what the projections and the engine give
(``commands/desk/views.py``); the buttons on a case page post to the API itself
(``/v1/cases/{case_id}/{action}``) with the session cookie, an Idempotency-Key and If-Match,
so an action taken on the desk is the API's action, refused or accepted by the same code.

Every page is read by the worker's engine through the API's own ``Api.run``, which
authenticates the session's key as it does a Bearer key (``bearer`` in
``commands/http/request_parts.py`` gives the cookie's key when there is no Authorization
header), and is authorized with the API's own checks (``allow``, ``refuse_unseen`` in
``commands/http/guards.py``, ``Principal`` in ``engine/access.py``): a merchant's staff reach
only their merchant, a case out of reach is "no case", a role reads only what its rights say.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.staticfiles import StaticFiles

from aftersales.commands.cli.display import DATE, parse_day_or_time
from aftersales.commands.desk import views
from aftersales.commands.desk.session import COOKIE, offer_key, same_origin
from aftersales.commands.http.batcher import Api
from aftersales.commands.http.error_responses import status_of
from aftersales.commands.http.guards import allow, refuse_unseen
from aftersales.commands.http.rate_limits import who
from aftersales.commands.http.request_parts import bearer
from aftersales.engine.access import (
    AUDIT,
    DASHBOARD,
    PARTY,
    RETURN_RATES,
    Forbidden,
    Principal,
    PrincipalRole,
    Scope,
    Unauthenticated,
    case_parties,
)
from aftersales.engine.audit import audit_case
from aftersales.engine.case import case_uuid
from aftersales.engine.commands import Command, ListCases, ShowCase
from aftersales.engine.errors import AftersalesError, BadInput
from aftersales.engine.policy import Policy
from aftersales.engine.service import Engine
from aftersales.engine.values import Role, Status, parse_zone

HERE = Path(__file__).resolve().parent
ZONE_COOKIE = "aftersales_zone"
MAX_FORM = 4096
WEEKS = 8
# How often an open desk asks whether the projections moved (milliseconds).
POLL_MS = int(os.environ.get("AFTERSALES_DESK_POLL_MS", "3000"))
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.globals["local"] = views.local

Work = Callable[[Engine, Principal], dict[str, Any]]


def zone_of(request: Request, default: tzinfo) -> tzinfo:
    """The viewer's time zone (chosen at sign-in from the browser's), else the display zone
    every person's output uses (``$AFTERSALES_TZ``, else the policy's ``display_zone``)."""
    name = request.cookies.get(ZONE_COOKIE)
    try:
        if name:
            return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    return default


def chosen_merchant(principal: Principal, asked: str | None) -> str | None:
    """Whose figures a report shows: a merchant's staff only their own, the platform's
    principals the one they pick (None: every merchant)."""
    asked = (asked or "").strip() or None
    if principal.scope is Scope.MERCHANT:
        if asked is not None and not principal.sees(asked, ""):
            raise Forbidden(f"a merchant's staff sees only {principal.merchant_id}'s reports")
        return principal.merchant_id
    return asked


def up_to(text: str, zone: tzinfo) -> datetime:
    """The end of the weeks shown: a date is read to its end in the viewer's zone (as report
    windows read dates, ``commands/cli/display.py``), a time with its offset as it is."""
    moment = parse_day_or_time(text, "until", zone)
    return moment + timedelta(days=1) if DATE.match(text.strip()) else moment


def may_take(principal: Principal, kind: type[Command]) -> bool:
    """Whether the principal may take this case action as the party it is taken for."""
    if not principal.may(kind.name):
        return False
    role = getattr(kind, "role", None)
    if isinstance(role, Role):
        return principal.speaks_for(role)
    # A message speaks for whoever sends it: a party's principal, or the operator.
    return principal.role in PARTY or principal.role is PrincipalRole.OPERATOR


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(name).render(poll_ms=POLL_MS, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def signed_out(to: str = "/login") -> RedirectResponse:
    response = RedirectResponse(to, status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def mount_desk(app: FastAPI, api: Api) -> None:
    """Add the desk's pages and its static files to the API's application."""
    app.mount("/desk/static", StaticFiles(directory=HERE / "static"), name="desk-static")
    display = parse_zone(os.environ.get("AFTERSALES_TZ") or (api.policy or Policy()).display_zone)

    async def read(request: Request, work: Work) -> dict[str, Any] | Response:
        """The page's data, read as the session's principal; a response if refused."""
        if bearer(request) is None:  # neither a session nor an Authorization header
            return signed_out()
        wait = api.limiter.retry_after(*who(request))
        if wait is not None:
            return render(
                "error.html", 429, message=f"too many refused requests: retry in {wait} s"
            )
        try:
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

    def page(template: str, work: Work) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Any:
            data = await read(request, work_with(request, work))
            if isinstance(data, Response):
                return data
            return render(template, **data)

        return endpoint

    def work_with(request: Request, work: Work) -> Work:
        """The work, and what every page shows: who is signed in, their zone, the query."""
        zone = zone_of(request, display)
        query = dict(request.query_params)

        def wrapped(engine: Engine, principal: Principal) -> dict[str, Any]:
            data = work(engine, principal)
            return {"principal": principal, "zone": zone, "query": query, **data}

        return wrapped

    # Signing in and out ---------------------------------------------------------------------

    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request) -> Any:
        return render("login.html")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Any:
        if not same_origin(request):
            return render("login.html", 403, error="sign in from this site's own page")
        client = (f"client:{request.client.host if request.client else 'unknown'}",)
        wait = api.limiter.retry_after(*client)
        if wait is not None:
            return render("login.html", 429, error=f"too many failures: retry in {wait} s")
        if "authorization" in request.headers:  # it would be the key checked, not the form's
            return render("login.html", 400, error="sign in without an Authorization header")
        raw = await request.body()
        form = parse_qs(raw[:MAX_FORM].decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        offer_key(request, key)
        try:
            await api.run(request, lambda engine, principal: principal)
        except Unauthenticated:
            api.limiter.failed(*client)
            return render("login.html", 401, error="unknown, revoked or expired key")
        response = RedirectResponse("/", status_code=303, headers=HEADERS)
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, key, path="/", httponly=True, samesite="strict", secure=secure)
        zone = (form.get("zone") or [""])[0]
        try:
            ZoneInfo(zone)
            response.set_cookie(ZONE_COOKIE, zone, path="/", samesite="strict", secure=secure)
        except (ZoneInfoNotFoundError, ValueError):
            pass
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Any:
        if not same_origin(request):
            return render("error.html", 403, message="sign out from this site's own page")
        return signed_out()

    # The desk --------------------------------------------------------------------------------

    def desk_work(request: Request) -> Work:
        asked = request.query_params.get("merchant")

        def work(engine: Engine, principal: Principal) -> dict[str, Any]:
            now = datetime.now(UTC)
            if principal.may(DASHBOARD):
                merchant = chosen_merchant(principal, asked)
                shops = views.merchants(engine.store) if principal.scope is Scope.ALL else []
                return {
                    "merchant": merchant,
                    "merchants": shops,
                    "desk": views.desk(engine.store, merchant, now),
                    "cases_readable": principal.may(ShowCase.name),
                }
            if principal.may(ListCases.name):
                # A buyer: its own cases; an agent: the disputes waiting for the platform.
                values: dict[str, Any] = {"limit": views.TODO_LIMIT}
                if principal.scope is Scope.BUYER:
                    values["buyer"] = principal.principal_id
                    shops, merchant = [], None
                else:
                    values["status"] = Status.ESCALATED.value
                    shops, merchant = views.merchants(engine.store), asked
                    if merchant:
                        values["merchant"] = merchant
                cases = engine.handle(ListCases.parse(values))
                return {
                    "merchants": shops,
                    "merchant": merchant,
                    "own_cases": cases,
                    "escalated": principal.scope is not Scope.BUYER,
                    "position": views.position(engine.store),
                }
            return {"position": views.position(engine.store)}  # an auditor: a case by its id

        return work

    @app.get("/", include_in_schema=False)
    async def desk(request: Request) -> Any:
        return await page("desk.html", desk_work(request))(request)

    @app.get("/desk/live", include_in_schema=False)
    async def live(request: Request) -> Any:
        """The part of the desk that live refresh replaces."""
        return await page("live.html", desk_work(request))(request)

    @app.get("/desk/position", include_in_schema=False)
    async def where(request: Request) -> Any:
        """How far the projections have read: cheap to ask every few seconds."""
        data = await read(request, lambda engine, p: {"position": views.position(engine.store)})
        if isinstance(data, Response):
            return JSONResponse({"error": "signed out"}, status_code=401)
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    # A case ----------------------------------------------------------------------------------

    @app.get("/desk/case", include_in_schema=False)
    async def find_case(request: Request) -> Any:
        case_id = request.query_params.get("id", "").strip()
        try:
            uid = case_uuid(case_id)
        except AftersalesError as exc:
            return render("error.html", 404, message=exc.message)
        return RedirectResponse(f"/desk/cases/{uid}", status_code=303)

    @app.get("/desk/cases/{case_id}", include_in_schema=False)
    async def case_page(request: Request, case_id: str) -> Any:
        def work(engine: Engine, principal: Principal) -> dict[str, Any]:
            uid = case_uuid(case_id)
            if not (principal.may(ShowCase.name) or principal.may(AUDIT)):
                raise Forbidden(f"the {principal.role.value} role may not read cases")
            refuse_unseen(principal, case_parties(engine, uid), f"case {case_id}")
            case = (
                engine.handle(ShowCase.parse({"case_id": str(uid)}))
                if principal.may(ShowCase.name)
                else None
            )
            timeline = (
                audit_case(engine.store, uid).to_json()["events"] if principal.may(AUDIT) else None
            )
            actions = (
                views.buttons(case["allowed_actions"], lambda k: may_take(principal, k))
                if case
                else []
            )
            entries = case["ledger"] if case else []
            return {
                "case_id": str(uid),
                "case": case,
                "ledger_columns": list(dict.fromkeys(k for e in entries for k in e)),
                "timeline": timeline,
                "buttons": actions,
                "idempotency": {b.action: str(uuid.uuid4()) for b in actions},
            }

        return await page("case.html", work)(request)

    # Return rates ----------------------------------------------------------------------------

    def rates_work(request: Request) -> Work:
        asked = request.query_params.get("merchant")
        by = request.query_params.get("by")
        weeks_text = request.query_params.get("weeks", str(WEEKS))
        until = request.query_params.get("until")

        def work(engine: Engine, principal: Principal) -> dict[str, Any]:
            allow(principal, RETURN_RATES)
            merchant = chosen_merchant(principal, asked)
            if not weeks_text.isdigit() or not 1 <= int(weeks_text) <= 52:
                raise BadInput(f"weeks {weeks_text!r} must be a whole number from 1 to 52")
            weeks = int(weeks_text)
            choices = ("sku", "category", "reason") + (() if merchant else ("merchant",))
            grouping = by or ("sku" if merchant else "merchant")
            if grouping not in choices:
                raise BadInput(f"by {grouping!r} is not one of {'|'.join(choices)}")
            now = up_to(until, zone_of(request, display)) if until else datetime.now(UTC)
            return {
                "merchant": merchant,
                "until": until or "",
                "merchants": views.merchants(engine.store) if principal.scope is Scope.ALL else [],
                "by": grouping,
                "groupings": choices,
                "weeks": weeks,
                "weekly": views.weekly(engine.store, merchant, now, weeks),
                "breakdown": views.breakdown(engine.store, grouping, merchant, now, weeks),
                "columns": views.BREAKDOWN_COLUMNS,
            }

        return work

    @app.get("/desk/rates", include_in_schema=False)
    async def rates(request: Request) -> Any:
        return await page("rates.html", rates_work(request))(request)

    @app.get("/desk/rates.csv", include_in_schema=False)
    async def rates_csv(request: Request) -> Any:
        data = await read(request, rates_work(request))
        if isinstance(data, Response):
            return data
        weekly = request.query_params.get("table") == "weekly"
        rows, columns = (
            (data["weekly"], views.WEEKLY_COLUMNS)
            if weekly
            else (data["breakdown"], views.BREAKDOWN_COLUMNS)
        )
        name = f"return-rates-{'weekly' if weekly else data['by']}"
        if data["merchant"]:
            name += "-" + re.sub(r"[^A-Za-z0-9._-]", "_", data["merchant"])
        return Response(
            views.to_csv(rows, columns),
            media_type="text/csv; charset=utf-8",
            headers={**HEADERS, "Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
