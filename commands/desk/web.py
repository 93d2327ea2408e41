"""The merchant's after-sales desk: HTML pages on the HTTP API's application.

Pages are rendered on the server (Jinja2, ``rendering.py``) from what the projections and the
engine give (``views.py``); the buttons on a case page post to the API itself
(``/v1/cases/{case_id}/{action}``) with the session cookie, an Idempotency-Key and If-Match,
so an action taken on the desk is the API's action, refused or accepted by the same code.

Every page is read by the worker's engine through the API's own ``Api.run`` (``page_reads.py``),
which authenticates the session's key as it does a Bearer key (``bearer`` in
``commands/http/request_parts.py`` gives the cookie's key when there is no Authorization header),
and is authorized with the API's own checks (``allow``, ``refuse_unseen`` in
``commands/http/guards.py``, ``Principal`` in ``engine/access/principal_store.py``): a merchant's
staff reach only their merchant, a case out of reach is "no case", a role reads only what its rights
say.

The pages are one router per part of the desk (``pages/``): signing in and out, the desk
itself, a case, return rates, a shop's settings.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from aftersales.commands.desk import static_files
from aftersales.commands.desk.pages import (
    case_list_pages,
    case_pages,
    home_pages,
    rates_pages,
    settings_pages,
    sign_in_pages,
)
from aftersales.commands.http.batcher import Api
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.values import parse_zone


def mount_desk(app: FastAPI, api: Api) -> None:
    """Add the desk's pages and its static files to the API's application."""
    # Gzipped once, cached by content hash (static_files.py).
    app.include_router(static_files.router)
    # The zone people's times are shown in (page_reads.display_zone), chosen once.
    app.state.desk_zone = parse_zone(
        os.environ.get("AFTERSALES_TZ") or (api.policy or Policy()).display_zone
    )
    for pages in (
        sign_in_pages,
        home_pages,
        case_list_pages,
        case_pages,
        rates_pages,
        settings_pages,
    ):
        app.include_router(pages.router)
