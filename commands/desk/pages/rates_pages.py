"""Return rates on the desk: week by week, and broken down by SKU, category, reason or
merchant; and the platforms' own measures per shop over the 30 days up to the same end (dispute
rate, quality-return rate, the merchant's response time); each table also as CSV."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from aftersales.commands.cli.display import DATE, parse_day_or_time
from aftersales.commands.desk import views
from aftersales.commands.desk.page_reads import DisplayZone, Work, chosen_merchant, page, read
from aftersales.commands.desk.rendering import HEADERS, zone_of
from aftersales.commands.http.dependencies import ApiDep
from aftersales.commands.http.guards import allow
from aftersales.engine.access.scopes import RETURN_RATES, Principal, Scope
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.errors import BadInput
from aftersales.projections.platform_measures import COLUMNS as MEASURE_COLUMNS
from aftersales.projections.platform_measures import platform_measures

WEEKS = 8
# The platforms count their measures over the last 30 days.
MEASURE_DAYS = 30

router = APIRouter(include_in_schema=False)


def up_to(text: str, zone: tzinfo) -> datetime:
    """The end of the weeks shown: a date is read to its end in the viewer's zone (as report
    windows read dates, ``commands/cli/display.py``), a time with its offset as it is."""
    moment = parse_day_or_time(text, "until", zone)
    return moment + timedelta(days=1) if DATE.match(text.strip()) else moment


def clock_time(seconds: int | None) -> str:
    """A response time in hours to sort by, then exactly, to the second: ``3.35 h (3:20:45)``."""
    if seconds is None:
        return "-"
    hours, rest = divmod(seconds, 3600)
    return f"{seconds / 3600:.2f} h ({hours}:{rest // 60:02d}:{rest % 60:02d})"


def rates_work(request: Request, display: tzinfo) -> Work:
    asked = request.query_params.get("merchant")
    by = request.query_params.get("by")
    weeks_text = request.query_params.get("weeks", str(WEEKS))
    until = request.query_params.get("until")

    def work(engine: Engine, principal: Principal) -> dict[str, Any]:
        allow(principal, RETURN_RATES)
        merchant = chosen_merchant(principal, asked)
        if not weeks_text.isdigit() or not 1 <= int(weeks_text) <= 52:
            raise BadInput(f"weeks {weeks_text!r} must be a whole number from 1 to 52")
        weeks = int(weeks_text)
        choices = ("sku", "category", "reason") + (() if merchant else ("merchant",))
        grouping = by or ("sku" if merchant else "merchant")
        if grouping not in choices:
            raise BadInput(f"by {grouping!r} is not one of {'|'.join(choices)}")
        now = up_to(until, zone_of(request, display)) if until else datetime.now(UTC)
        return {
            "merchant": merchant,
            "until": until or "",
            "merchants": views.merchants(engine.store) if principal.scope is Scope.ALL else [],
            "by": grouping,
            "groupings": choices,
            "weeks": weeks,
            "weekly": views.weekly(engine.store, merchant, now, weeks),
            "breakdown": views.breakdown(engine.store, grouping, merchant, now, weeks),
            "columns": views.BREAKDOWN_COLUMNS,
            "measure_days": MEASURE_DAYS,
            "measures": [
                {
                    **row,
                    "median": clock_time(row["median_response_seconds"]),
                    "p90": clock_time(row["p90_response_seconds"]),
                }
                for row in platform_measures(
                    engine.store, now - timedelta(days=MEASURE_DAYS), now, merchant
                )
            ],
        }

    return work


@router.get("/desk/rates")
async def rates(request: Request, api: ApiDep, display: DisplayZone) -> Any:
    return await page(api, request, "rates.html", rates_work(request, display), display)


@router.get("/desk/rates.csv")
async def rates_csv(request: Request, api: ApiDep, display: DisplayZone) -> Any:
    data = await read(api, request, rates_work(request, display))
    if isinstance(data, Response):
        return data
    which = request.query_params.get("table")
    columns: Sequence[str]
    if which == "measures":
        rows, columns = data["measures"], MEASURE_COLUMNS
        name = "platform-measures"
    elif which == "weekly":
        rows, columns = data["weekly"], views.WEEKLY_COLUMNS
        name = "return-rates-weekly"
    else:
        rows, columns = data["breakdown"], views.BREAKDOWN_COLUMNS
        name = f"return-rates-{data['by']}"
    if data["merchant"]:
        name += "-" + re.sub(r"[^A-Za-z0-9._-]", "_", data["merchant"])
    return Response(
        views.to_csv(rows, columns),
        media_type="text/csv; charset=utf-8",
        headers={**HEADERS, "Content-Disposition": f'attachment; filename="{name}.csv"'},
    )
