"""How the desk's pages are made: Jinja2 templates, the headers every page carries, the
viewer's time zone, and signing out."""

from __future__ import annotations

import os
from datetime import tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from aftersales.commands.desk import views
from aftersales.commands.desk.session import COOKIE
from aftersales.commands.desk.static_files import static_url

HERE = Path(__file__).resolve().parent
ZONE_COOKIE = "aftersales_zone"
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
templates.globals["static"] = static_url
templates.globals["zone_name"] = views.zone_name
# The language of the desk's words (its pages' <html lang>): English unless the platform says
# otherwise (zh-CN for a desk whose people read Chinese first).
templates.globals["lang"] = os.environ.get("AFTERSALES_DESK_LANG", "en")


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


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(name).render(poll_ms=POLL_MS, **context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def signed_out(to: str = "/login") -> RedirectResponse:
    response = RedirectResponse(to, status_code=303, headers=HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
