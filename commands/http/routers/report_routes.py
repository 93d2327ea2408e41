"""Reports, read from the projections as the command line's `report` and `ledger` print them;
each answer says how far its projection lags (``X-Projection-Lag``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request

from aftersales.commands.http.dependencies import ApiDep, answer
from aftersales.commands.http.guards import allow, report_merchant
from aftersales.commands.http.openapi_models import (
    OPTIONAL_ID,
    TIME,
    DashboardView,
    LedgerRow,
    MeasuresRow,
    ReturnRateRow,
    StaffReport,
    responses,
)
from aftersales.engine.access.scopes import (
    DASHBOARD,
    LEDGER,
    RETURN_RATES,
    STAFF_FIGURES,
    Principal,
)
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.limits import check_id
from aftersales.engine.domain.values import parse_time
from aftersales.projections.base import View
from aftersales.projections.dashboard import Dashboard, dashboard
from aftersales.projections.ledger import Ledger, ledger
from aftersales.projections.platform_measures import PlatformMeasures, platform_measures
from aftersales.projections.return_rates import GROUPINGS, ReturnRates, return_rates
from aftersales.projections.runner import Projector
from aftersales.projections.staff import Staff, staff_figures

router = APIRouter()


def read_view(request: Request, engine: Engine, *views: type[View]) -> list[dict[str, Any]]:
    """Reports are read from projections: say how many events they have still to apply
    (``X-Projection-Lag``, the most of them), as the command line warns; their status rows."""
    rows = Projector(engine.store).status(list(views))
    request.state.projection_lag = max(row["lag"] for row in rows)
    return rows


def shop(principal: Principal, merchant: str | None) -> str | None:
    """The merchant a report is about, checked as an id is (``limits.check_id``)."""
    if merchant is not None:
        check_id(merchant, "merchant")
    return report_merchant(principal, merchant)


def when(value: str | None, key: str) -> datetime | None:
    return parse_time(value, key) if value is not None else None


def in_order(start: datetime | None, end: datetime | None) -> None:
    if start and end and start >= end:
        raise BadInput(f"since {start.isoformat()} is not before until {end.isoformat()}")


def period(since: str | None, until: str | None) -> tuple[datetime, datetime]:
    """[since, until), by default the 30 days before now."""
    end = when(until, "until") or datetime.now(UTC)
    start = when(since, "since") or end - timedelta(days=30)
    in_order(start, end)
    return start, end


LAG = ["X-Projection-Lag"]
MERCHANT = {
    "name": "merchant",
    "in": "query",
    "description": "One merchant's figures (a merchant's staff: its own only, 403 otherwise).",
    "schema": OPTIONAL_ID,
}
SINCE_UNTIL = [
    {"name": "since", "in": "query", "schema": TIME},
    {"name": "until", "in": "query", "schema": TIME},
]


@router.get(
    "/v1/reports/dashboard",
    tags=["reports"],
    response_model=None,
    responses=responses(DashboardView, 422, headers=LAG),
    openapi_extra={"parameters": [MERCHANT, {"name": "now", "in": "query", "schema": TIME}]},
)
async def dashboard_report(
    request: Request, api: ApiDep, merchant: str | None = None, now: str | None = None
) -> Any:
    """As `report dashboard --json`."""

    def work(engine: Engine, principal: Principal) -> Any:
        allow(principal, DASHBOARD)
        shop_id = shop(principal, merchant)
        read_view(request, engine, Dashboard)
        moment = when(now, "now") or datetime.now(UTC)
        # Open cases counted in the status the clock has put them in by then.
        return dashboard(engine.store, shop_id, moment, lambda ids: engine.cases_as_of(ids, moment))

    return await answer(api, request, work)


@router.get(
    "/v1/reports/return-rates",
    tags=["reports"],
    response_model=None,
    responses=responses(list[ReturnRateRow], 422, headers=LAG),
    openapi_extra={
        "parameters": [
            {"name": "by", "in": "query", "schema": {"type": "string", "enum": list(GROUPINGS)}},
            MERCHANT,
            *SINCE_UNTIL,
        ]
    },
)
async def return_rates_report(
    request: Request,
    api: ApiDep,
    by: str = "merchant",
    merchant: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Any:
    """As `report return-rates --json`."""

    def work(engine: Engine, principal: Principal) -> Any:
        allow(principal, RETURN_RATES)
        if by not in GROUPINGS:
            raise BadInput(f"by {by!r} is not one of {'|'.join(GROUPINGS)}")
        shop_id = shop(principal, merchant)
        start, end = period(since, until)
        read_view(request, engine, ReturnRates)
        return return_rates(engine.store, by, start, end, shop_id)

    return await answer(api, request, work)


@router.get(
    "/v1/reports/staff",
    tags=["reports"],
    response_model=None,
    responses=responses(StaffReport, 422, headers=LAG),
    openapi_extra={"parameters": [MERCHANT, *SINCE_UNTIL]},
)
async def staff_report(
    request: Request,
    api: ApiDep,
    merchant: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Any:
    """As `report staff --json`: per member of a shop's staff, the cases open and overdue now,
    and of those opened in [since, until) (default: the 30 days before now) the median first
    response and the timeouts. A shop's staff see their own shop's members."""

    def work(engine: Engine, principal: Principal) -> Any:
        allow(principal, STAFF_FIGURES)
        shop_id = shop(principal, merchant)
        start, end = period(since, until)
        _, staff = read_view(request, engine, Dashboard, Staff)
        members = staff_figures(engine.store, shop_id, start, end, datetime.now(UTC))
        return {
            "since": start.isoformat(),
            "until": end.isoformat(),
            "members": members,
            "position": staff["position"],
        }

    return await answer(api, request, work)


@router.get(
    "/v1/reports/measures",
    tags=["reports"],
    response_model=None,
    responses=responses(list[MeasuresRow], 422, headers=LAG),
    openapi_extra={"parameters": [MERCHANT, *SINCE_UNTIL]},
)
async def measures_report(
    request: Request,
    api: ApiDep,
    merchant: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Any:
    """As the rows of `report measures --json`: the platforms' own measures per shop (dispute
    rate, quality-return rate, the merchant's response time) over [since, until), by default
    the 30 days before now. Read with the return rates' right."""

    def work(engine: Engine, principal: Principal) -> Any:
        allow(principal, RETURN_RATES)
        shop_id = shop(principal, merchant)
        start, end = period(since, until)
        read_view(request, engine, PlatformMeasures)
        return platform_measures(engine.store, start, end, shop_id)

    return await answer(api, request, work)


@router.get(
    "/v1/reports/ledger",
    tags=["reports"],
    response_model=None,
    responses=responses(list[LedgerRow], 422, headers=LAG),
    openapi_extra={"parameters": [MERCHANT, *SINCE_UNTIL]},
)
async def ledger_report(
    request: Request,
    api: ApiDep,
    merchant: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Any:
    """As `ledger --json`."""

    def work(engine: Engine, principal: Principal) -> Any:
        allow(principal, LEDGER)
        shop_id = shop(principal, merchant)
        start, end = when(since, "since"), when(until, "until")
        in_order(start, end)
        read_view(request, engine, Ledger)
        return ledger(engine.store, shop_id, start, end)

    return await answer(api, request, work)
