"""Every case the principal may read, a page at a time: searched by case id, order or buyer,
filtered by status, reason and deadline, soonest deadline first (or oldest first). Read through
the engine's ``case list`` (``ListCases``), as ``GET /v1/cases`` and the command line read it:
a merchant's staff only their merchant's cases, a buyer only its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request

from aftersales.commands.desk import views
from aftersales.commands.desk.page_reads import DisplayZone, Work, page
from aftersales.commands.http.dependencies import ApiDep
from aftersales.commands.http.guards import allow
from aftersales.engine.access.scopes import Principal, Scope
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ListCases, ShowCase
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.values import Status
from aftersales.projections.staff_reads import staff_ready

PAGE = 50
# The deadline filter's choices: how far ahead a deadline falls (overdue: already passed).
DUE_WITHIN = {"overdue": timedelta(0), "24h": timedelta(hours=24), "72h": timedelta(hours=72)}
# What the query string may hold (anything else is ignored, as a browser's extras are).
ASKED = ("q", "status", "reason", "due", "sort", "merchant", "assignee")
# Staff queues: the member filter's word for the signed-in member's own cases.
MINE = "me"

router = APIRouter(include_in_schema=False)


def list_values(asked: dict[str, str], principal: Principal, now: datetime) -> dict[str, Any]:
    """The ``case list`` a page of the desk asks for: the filters given, in the principal's
    reach, a row more than a page (so the page knows whether another follows)."""
    values: dict[str, Any] = {"limit": PAGE + 1, "sort": asked.get("sort") or "due"}
    status = asked.get("status") or "open"
    if status == "open":
        values["open"] = True
    elif status != "all":
        values["status"] = status
    for key, option in (("q", "search"), ("reason", "reason"), ("after", "after")):
        if asked.get(key, "").strip():
            values[option] = asked[key].strip()
    due = asked.get("due") or ""
    if due:
        if due not in DUE_WITHIN:
            raise BadInput(f"due {due!r} is not one of {'|'.join(DUE_WITHIN)}")
        values["due_before"] = now + DUE_WITHIN[due]
    member = asked.get("assignee", "").strip()
    if member:
        values["assignee"] = principal.principal_id if member == MINE else member
    if principal.scope is Scope.MERCHANT:
        values["merchant"] = principal.merchant_id
    elif principal.scope is Scope.BUYER:
        values["buyer"] = principal.principal_id
    elif asked.get("merchant"):
        values["merchant"] = asked["merchant"]
    return values


def staff_members(engine: Engine, principal: Principal) -> list[str]:
    """The member filter's choices: the signed-in merchant's staff (others type an id)."""
    if principal.scope is not Scope.MERCHANT or principal.merchant_id is None:
        return []
    shop = engine.find_shop(principal.merchant_id)
    return sorted(shop.roster) if shop is not None else []


def listed_row(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    due = views.stored_time(row["due_at"]) if row["due_at"] else None
    left, overdue = views.time_left(due, now) if due is not None else ("no deadline", False)
    return {**row, "left": left, "overdue": overdue}


def cases_work(request: Request) -> Work:
    asked = {k: v for k, v in request.query_params.items() if k in (*ASKED, "after", "start")}

    def work(engine: Engine, principal: Principal) -> dict[str, Any]:
        allow(principal, ListCases.name)
        now = datetime.now(UTC)
        members = staff_members(engine, principal)
        if "assignee" not in asked and principal.principal_id in members:
            asked["assignee"] = MINE  # a member of the shop's staff sees their own queue first
        rows = engine.handle(
            staff_ready(engine.store, ListCases.parse(list_values(asked, principal, now)))
        )
        shown = [listed_row(r, now) for r in rows[:PAGE]]
        # An empty member filter (anyone's) is kept: it is not the member's own queue.
        kept = {k: asked[k] for k in ASKED if asked.get(k) or (k == "assignee" and k in asked)}
        start = int(asked["start"]) if asked.get("start", "").isdigit() else 1
        later = None
        if len(rows) > PAGE:
            later = "/desk/cases?" + urlencode(
                {**kept, "after": shown[-1]["case_id"], "start": start + PAGE}
            )
        return {
            "cases": shown,
            "asked": kept,
            "start": start,
            "next_url": later,
            "first_url": ("/desk/cases?" + urlencode(kept)) if "after" in asked else None,
            "statuses": [s.value for s in Status],
            "due_choices": tuple(DUE_WITHIN),
            "merchants": views.merchants(engine.store) if principal.scope is Scope.ALL else [],
            "cases_readable": principal.may(ShowCase.name),
            "members": members,
        }

    return work


@router.get("/desk/cases")
async def case_list(request: Request, api: ApiDep, display: DisplayZone) -> Any:
    return await page(api, request, "cases.html", cases_work(request), display)
