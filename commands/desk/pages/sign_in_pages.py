"""Signing in (a key, kept in the session cookie) and out."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from aftersales.commands.desk.rendering import HEADERS, ZONE_COOKIE, render, signed_out
from aftersales.commands.desk.session import COOKIE, offer_key, same_origin
from aftersales.commands.http.dependencies import ApiDep
from aftersales.engine.access.api_keys import Unauthenticated

MAX_FORM = 4096

router = APIRouter(include_in_schema=False)


@router.get("/login")
async def login_form(request: Request) -> Any:
    return render("login.html")


@router.post("/login")
async def login(request: Request, api: ApiDep) -> Any:
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


@router.post("/logout")
async def logout(request: Request) -> Any:
    if not same_origin(request):
        return render("error.html", 403, message="sign out from this site's own page")
    return signed_out()
