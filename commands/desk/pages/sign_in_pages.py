"""Signing in (a key exchanged for a session kept in the store; the cookie holds the session's
token, never the key) and out (the session ended in the store, the cookie deleted)."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from aftersales.commands.desk.rendering import HEADERS, ZONE_COOKIE, render, signed_out
from aftersales.commands.desk.session import COOKIE, offer_key, same_origin
from aftersales.commands.http.dependencies import ApiDep
from aftersales.commands.http.rate_limits import behind_https, who
from aftersales.engine.access.api_keys import Unauthenticated
from aftersales.engine.access.desk_sessions import end_session, session_id_of, start_session
from aftersales.engine.access.scopes import Principal
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.errors import AftersalesError

MAX_FORM = 4096

router = APIRouter(include_in_schema=False)


@router.get("/login")
async def login_form(request: Request) -> Any:
    return render("login.html")


@router.post("/login")
async def login(request: Request, api: ApiDep) -> Any:
    if not same_origin(request):
        return render("login.html", 403, error="sign in from this site's own page")
    if "authorization" in request.headers:  # it would be the key checked, not the form's
        return render("login.html", 400, error="sign in without an Authorization header")
    raw = await request.body()
    form = parse_qs(raw[:MAX_FORM].decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    offer_key(request, key)
    # Counted as the API counts: against the key's id, or the address for what is no key.
    wait = api.limiter.retry_after(*who(request))
    if wait is not None:
        limited = render("login.html", 429, error=f"too many failures: retry in {wait} s")
        limited.headers["Retry-After"] = str(wait)
        return limited
    terms, now = api.session_terms, api.now()

    def begin(engine: Engine, principal: Principal) -> tuple[str, dict[str, Any]]:
        return start_session(engine.store, principal, key, now, terms)

    try:
        token, _ = await api.run(request, begin)
    except Unauthenticated:
        api.limiter.failed(*who(request))
        return render("login.html", 401, error="unknown, revoked or expired key")
    response = RedirectResponse("/", status_code=303, headers=HEADERS)
    secure = behind_https(request)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(terms.lifetime.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    zone = (form.get("zone") or [""])[0]
    try:
        ZoneInfo(zone)
        response.set_cookie(ZONE_COOKIE, zone, path="/", samesite="strict", secure=secure)
    except (ZoneInfoNotFoundError, ValueError):
        pass
    return response


@router.post("/logout")
async def logout(request: Request, api: ApiDep) -> Any:
    """Sign out: the session ends in the store (its cookie, if kept or copied, no longer
    counts), and the cookie is deleted."""
    if not same_origin(request):
        return render("error.html", 403, message="sign out from this site's own page")
    if "authorization" in request.headers:  # it would be the key checked, not the session
        return render("error.html", 400, message="sign out without an Authorization header")
    session_id = session_id_of(request.cookies.get(COOKIE, ""))
    if session_id is not None:
        now = api.now()

        def end(engine: Engine, principal: Principal) -> dict[str, Any]:
            return end_session(engine.store, session_id, now, "signed out")

        with contextlib.suppress(AftersalesError):  # already ended or expired: nothing to end
            await api.run(request, end)
    return signed_out()
