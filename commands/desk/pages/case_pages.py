"""A case on the desk: its state, its timeline, and the buttons for the actions the principal
may take on it (they post to the API itself)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from aftersales.commands.desk import views
from aftersales.commands.desk.page_reads import DisplayZone, page
from aftersales.commands.desk.rendering import render
from aftersales.commands.http.dependencies import ApiDep
from aftersales.commands.http.guards import refuse_unseen
from aftersales.engine.access.actor_checks import case_parties
from aftersales.engine.access.api_keys import Forbidden
from aftersales.engine.access.scopes import AUDIT, PARTY, Principal, PrincipalRole
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import Command, ShowCase
from aftersales.engine.domain.case import case_uuid
from aftersales.engine.domain.errors import AftersalesError
from aftersales.engine.domain.values import Role
from aftersales.engine.integrity.audit_bundle import audit_case

router = APIRouter(include_in_schema=False)


def may_take(principal: Principal, kind: type[Command]) -> bool:
    """Whether the principal may take this case action as the party it is taken for."""
    if not principal.may(kind.name):
        return False
    role = getattr(kind, "role", None)
    if isinstance(role, Role):
        return principal.speaks_for(role)
    # A message speaks for whoever sends it: a party's principal, or the operator.
    return principal.role in PARTY or principal.role is PrincipalRole.OPERATOR


@router.get("/desk/case")
async def find_case(request: Request) -> Any:
    case_id = request.query_params.get("id", "").strip()
    try:
        uid = case_uuid(case_id)
    except AftersalesError as exc:
        return render("error.html", 404, message=exc.message)
    return RedirectResponse(f"/desk/cases/{uid}", status_code=303)


def refusal(case: dict[str, Any] | None, seen: str, tried: str) -> str | None:
    """What staff read when their action was refused (``?tried=ACTION&seen=VERSION``, as the
    desk's script asks after a 409 or 412): the case as it is now, in their words."""
    if case is None or not tried:
        return None
    what = tried.replace("-", " ")
    status = str(case["status"]).replace("_", " ")
    if seen != str(case["version"]):
        return (
            f"This case changed since you opened it: it is now {status}. "
            f"Your {what} was not taken; below is the case as it stands now."
        )
    return f"Your {what} was not taken: the case is {status}, where it is not allowed."


@router.get("/desk/cases/{case_id}")
async def case_page(request: Request, case_id: str, api: ApiDep, display: DisplayZone) -> Any:
    seen = request.query_params.get("seen", "")
    tried = request.query_params.get("tried", "")[:40]

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
            views.buttons(case["allowed_actions"], lambda k: may_take(principal, k)) if case else []
        )
        entries = case["ledger"] if case else []
        return {
            "case_id": str(uid),
            "case": case,
            "ledger_columns": list(dict.fromkeys(k for e in entries for k in e)),
            "timeline": timeline,
            "buttons": actions,
            "idempotency": {b.action: str(uuid.uuid4()) for b in actions},
            "refused": refusal(case, seen, tried),
        }

    return await page(api, request, "case.html", work, display)
