"""The engine over HTTP: the same typed commands, the same ``Engine.handle``, behind keys.

The application is assembled here from one router per resource (``routers/``): the actions,
derived from the typed commands (``routers/action_routes.py``), and the reads of cases, orders,
audits and reports; the desk's pages (``commands/desk``) are mounted on the same application.
Each route is given the worker's ``Api`` (``dependencies.py``): the request batcher
(``batcher.py``) and the refusal limiter (``rate_limits.py``).

Every request is authenticated by its key and authorized by the principal's role and reach
(``engine/access/principal_store.py``, ``guards.py``) before anything is read for it; the actor
recorded is the principal. A refusal appends nothing, is logged with principal, route and reason
(never the key), and counts against the key (or, for what is no key, the client's address): too
many in a minute and that one gets 429 until the window frees (``rate_limits.py``,
``error_responses.py``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI

from aftersales.commands.http.batcher import Api
from aftersales.commands.http.error_responses import add_error_handlers
from aftersales.commands.http.rate_limits import parse_networks
from aftersales.commands.http.read_routing import document_reads
from aftersales.commands.http.routers import (
    action_routes,
    audit_routes,
    buyer_routes,
    case_routes,
    health_routes,
    order_routes,
    report_routes,
    shop_routes,
)
from aftersales.engine.access.credential_cache import MAX_AGE
from aftersales.engine.access.desk_sessions import SessionTerms, parse_duration
from aftersales.engine.application.policy_file import load_policy
from aftersales.engine.domain.policy import Policy


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The worker's engine: opened when the worker starts serving, closed when it stops."""
    api: Api = app.state.api
    api.open()
    try:
        yield
    finally:
        api.close()


def one_each(operation: dict[str, Any]) -> None:
    """A parameter a route describes itself (``openapi_extra``, with its limits) replaces the
    one FastAPI derived from the endpoint's signature; FastAPI's own 422 goes."""
    responses = operation.get("responses", {})
    if "HTTPValidationError" in str(responses.get("422", "")):
        del responses["422"]  # FastAPI's default, for a route that never answers 422
    if "parameters" in operation:
        found = {(p["name"].lower(), p["in"]): p for p in operation["parameters"]}
        operation["parameters"] = list(found.values())


def create_app(
    store: str | None = None,
    policy: Policy | None = None,
    *,
    failure_limit: int = 20,
    trusted_proxies: Iterable[str] = (),
    session_terms: SessionTerms | None = None,
    key_cache: timedelta = MAX_AGE,
    read_store: str | None = None,
) -> FastAPI:
    """The HTTP application over one store (one engine per worker process). A client's address
    is read from ``X-Forwarded-For`` only when its peer is in ``trusted_proxies`` (CIDRs). A
    credential granted is used again for up to ``key_cache`` while revocations are heard
    (``engine/access/credential_cache.py``; zero reads it for every request). With a
    ``read_store`` (a standby), the reads go there (``read_routing.py``)."""
    app = FastAPI(
        title="aftersales",
        summary="Returns, refunds and exchanges: the after-sales engine over HTTP.",
        version="1",
        lifespan=lifespan,
    )
    app.state.api = Api(store, policy, failure_limit, key_cache, read_store)
    app.state.trusted_proxies = parse_networks(trusted_proxies)
    if session_terms is not None:
        app.state.api.session_terms = session_terms
    for routes in (
        action_routes,
        health_routes,
        case_routes,
        order_routes,
        audit_routes,
        report_routes,
        shop_routes,
        buyer_routes,
    ):
        # The routes themselves, not the router: FastAPI walks every included router's routes
        # on each request to see whether they changed (a tenth of the server's CPU).
        app.router.routes.extend(routes.router.routes)
    add_error_handlers(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(action_routes.BODY_SCHEMAS)
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
            for operations in schema.get("paths", {}).values():
                for method, operation in operations.items():
                    one_each(operation)
                    document_reads(method, operation)
            # FastAPI's own 422 body is never answered (error_responses.py answers them all).
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    from aftersales.commands.desk.web import mount_desk  # the desk's pages use the API's checks

    mount_desk(app, app.state.api)
    return app


def app_from_env() -> FastAPI:
    """The application `aftersales serve` runs in each worker: store and policy from the
    environment the command set."""
    return create_app(
        os.environ.get("AFTERSALES_STORE"),
        load_policy(os.environ.get("AFTERSALES_POLICY")),
        failure_limit=int(os.environ.get("AFTERSALES_FAILURE_LIMIT", "20")),
        trusted_proxies=[os.environ.get("AFTERSALES_TRUSTED_PROXIES", "")],
        session_terms=SessionTerms(
            parse_duration(os.environ.get("AFTERSALES_SESSION_IDLE", "12h"), "session idle"),
            parse_duration(os.environ.get("AFTERSALES_SESSION_LIFETIME", "7d"), "session lifetime"),
        ),
        key_cache=timedelta(seconds=float(os.environ.get("AFTERSALES_KEY_CACHE", "5"))),
        read_store=os.environ.get("AFTERSALES_READ_STORE") or None,
    )
