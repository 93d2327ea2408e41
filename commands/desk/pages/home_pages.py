"""The desk itself: a merchant's figures and work to do, a buyer's own cases, the disputes
waiting for the platform; and the part of it that live refresh replaces."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from aftersales.commands.desk import views
from aftersales.commands.desk.page_reads import DisplayZone, Work, chosen_merchant, page, read
from aftersales.commands.http.dependencies import ApiDep
from aftersales.engine.access.scopes import DASHBOARD, Principal, Scope
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ListCases, ShowCase
from aftersales.engine.domain.values import Status

router = APIRouter(include_in_schema=False)


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
                "desk": views.desk(
                    engine.store, merchant, now, lambda ids: engine.cases_as_of(ids, now)
                ),
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


@router.get("/")
async def desk(request: Request, api: ApiDep, display: DisplayZone) -> Any:
    return await page(api, request, "desk.html", desk_work(request), display)


@router.get("/desk/live")
async def live(request: Request, api: ApiDep, display: DisplayZone) -> Any:
    """The part of the desk that live refresh replaces."""
    return await page(api, request, "live.html", desk_work(request), display)


@router.get("/desk/position")
async def where(request: Request, api: ApiDep) -> Any:
    """How far the projections have read: cheap to ask every few seconds."""
    data = await read(api, request, lambda engine, p: {"position": views.position(engine.store)})
    if isinstance(data, Response):
        return JSONResponse({"error": "signed out"}, status_code=401)
    return JSONResponse(data, headers={"Cache-Control": "no-store"})
