"""A case's history replayed from its events, for those who may audit it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from aftersales.commands.http.dependencies import ApiDep, answer
from aftersales.commands.http.guards import allow, refuse_unseen
from aftersales.commands.http.openapi_models import TIME, AuditView, responses
from aftersales.engine.access.actor_checks import case_parties
from aftersales.engine.access.scopes import AUDIT, Principal
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.case import case_uuid
from aftersales.engine.domain.errors import NotAllowed
from aftersales.engine.domain.values import parse_time
from aftersales.engine.integrity.audit_bundle import audit_case

router = APIRouter()


@router.get(
    "/v1/cases/{case_id}/audit",
    tags=["cases"],
    response_model=None,
    responses=responses(AuditView, 404, 409, 422),
    openapi_extra={
        "parameters": [
            {
                "name": "case_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "format": "uuid"},
            },
            {"name": "as_of", "in": "query", "schema": TIME},
        ]
    },
)
async def audit(
    request: Request, case_id: str, api: ApiDep, as_of: str | None = None, verify: bool = False
) -> Any:
    """A case's history replayed from its events, as `audit --json`; with verify=true,
    409 unless the history verifies."""

    def work(engine: Engine, principal: Principal) -> Any:
        allow(principal, AUDIT)
        uid = case_uuid(case_id)
        refuse_unseen(principal, case_parties(engine, uid), f"case {case_id}")
        when = parse_time(as_of, "as_of") if as_of is not None else None
        result = audit_case(engine.store, case_id, as_of=when)
        if verify and not result.verified:
            raise NotAllowed(
                f"case {result.case_id} does not verify: {len(result.problems)} problem(s)"
            )
        return result.to_json()

    return await answer(api, request, work)
