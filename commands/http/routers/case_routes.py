"""Reading cases: one by its id, or a list (a merchant's staff its merchant's, a buyer its own)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from aftersales.commands.http.dependencies import ApiDep, answer
from aftersales.commands.http.guards import allow, refuse_unseen
from aftersales.commands.http.openapi_models import (
    AS_OF_QUERY,
    LIST_CASES_QUERY,
    CaseView,
    ListedCase,
    responses,
)
from aftersales.engine.access.actor_checks import case_parties
from aftersales.engine.access.scopes import Principal, Scope
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ListCases, ShowCase
from aftersales.projections.staff_reads import staff_ready

router = APIRouter()
CASE_ID = {"type": "string", "format": "uuid"}


@router.get(
    "/v1/cases/{case_id}",
    tags=["cases"],
    summary=ShowCase.__doc__,
    response_model=None,
    responses=responses(CaseView, 404, 422, headers=["ETag"]),
    openapi_extra={
        "parameters": [
            {"name": "case_id", "in": "path", "required": True, "schema": CASE_ID},
            AS_OF_QUERY,
        ]
    },
)
async def show_case(request: Request, case_id: str, api: ApiDep, at: str | None = None) -> Any:
    # A read shows what the clock has done by now, or by ``?at=`` (engine/application/as_of.py).
    as_of = {"at": at} if at is not None else {}

    def work(engine: Engine, principal: Principal) -> Any:
        allow(principal, ShowCase.name)
        command = ShowCase.parse({"case_id": case_id, **as_of})
        refuse_unseen(principal, case_parties(engine, command.case_id), f"case {case_id}")
        return engine.handle(command)

    return await answer(api, request, work)


@router.get(
    "/v1/cases",
    tags=["cases"],
    summary=ListCases.__doc__,
    description="As `case list --json`, limited to what the caller may read (a merchant's "
    "staff: its merchant's; a buyer: its own; asking for others' is an empty list).",
    response_model=None,
    responses=responses(list[ListedCase], 422),
    openapi_extra={"parameters": LIST_CASES_QUERY},
)
async def list_cases(request: Request, api: ApiDep) -> Any:
    query = dict(request.query_params)

    def work(engine: Engine, principal: Principal) -> Any:
        allow(principal, ListCases.name)
        values: dict[str, Any] = dict(query)
        if "open" in values:  # a flag, written in a query string as true or false
            values["open"] = {"true": True, "false": False}.get(values["open"], values["open"])
        ListCases.parse(values)  # bad input is refused whoever asks
        if principal.scope is Scope.MERCHANT:
            if values.get("merchant", principal.merchant_id) != principal.merchant_id:
                return []
            values["merchant"] = principal.merchant_id
        elif principal.scope is Scope.BUYER:
            if values.get("buyer", principal.principal_id) != principal.principal_id:
                return []
            values["buyer"] = principal.principal_id
        return engine.handle(staff_ready(engine.store, ListCases.parse(values)))

    return await answer(api, request, work)
