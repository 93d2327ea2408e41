"""`aftersales report ...`: the merchant dashboard, return rates and the platforms' own measures,
read from projections."""

from __future__ import annotations

import contextlib
import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from eventsourcing.persistence import IntegrityError

from aftersales.commands.cli.display import parse_day_or_time
from aftersales.commands.cli.options import json_option
from aftersales.commands.cli.output import State, emit, table
from aftersales.commands.cli.read_side import read_options
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.errors import BadInput
from aftersales.projections.base import View
from aftersales.projections.dashboard import Dashboard, dashboard
from aftersales.projections.ledger import TOTALS, Ledger, ledger
from aftersales.projections.platform_measures import COLUMNS as MEASURE_COLUMNS
from aftersales.projections.platform_measures import PlatformMeasures, platform_measures
from aftersales.projections.return_rates import GROUPINGS, ReturnRates, return_rates
from aftersales.projections.runner import Projector
from aftersales.projections.staff import Staff, staff_figures

RATE_COLUMNS = [
    "key",
    "orders",
    "gmv",
    "cases",
    "orders_with_cases",
    "return_rate",
    "refunded_amount",
    "refund_rate",
    "quality_return_rate",
    "dispute_rate",
    "timeouts",
]


def csv_option(f: Any) -> Any:
    return click.option("--csv", "as_csv", is_flag=True, help="Print CSV (a header row first).")(f)


def _one_format(as_csv: bool, as_json: bool) -> None:
    if as_csv and as_json:
        raise click.UsageError("give --json or --csv, not both")


def catch_up_option(f: Any) -> Any:
    return click.option(
        "--catch-up/--no-catch-up",
        default=True,
        show_default=True,
        help="Apply the log's new events to the projection before answering, or read it as it "
        "stands.",
    )(f)


def _window(ctx: click.Context, value: str | None, what: str) -> datetime | None:
    """A window's edge: a full time, or a date (that day's start in the display zone)."""
    if value is None:
        return None
    state: State = ctx.find_object(State)  # type: ignore[assignment]
    return parse_day_or_time(value, what, state.zone())


def _period(ctx: click.Context, since: str | None, until: str | None) -> tuple[datetime, datetime]:
    """A report's period: [--since, --until), by default the 30 days before now."""
    end = _window(ctx, until, "--until") or datetime.now(UTC)
    start = _window(ctx, since, "--since") or end - timedelta(days=30)
    if start >= end:
        raise BadInput(f"--since {start.isoformat()} is not before --until {end.isoformat()}")
    return start, end


def reflecting(engine: Engine, view: type[View], catch_up: bool) -> int:
    """Catch the projection up with the log (unless told not to) and return the log position
    the report reflects; say so on stderr when it has events still to apply."""
    projector = Projector(engine.store)
    if catch_up:
        # Another process may apply the same events just now: then read what it wrote.
        with contextlib.suppress(IntegrityError):
            projector.catch_up([view])
    (row,) = projector.status([view])
    if row.get("stopped"):
        click.echo(
            f"warning: projection {view.name} is stopped at position {row['position']}: "
            f"{row['stopped']}; this report reflects the log up to there",
            err=True,
        )
    elif row["lag"] and engine.store.reads_only:
        click.echo(
            f"warning: projection {view.name} on the read store has {row['lag']} events still "
            "to apply (the primary's `aftersales project run` applies them; then replayed)",
            err=True,
        )
    elif row["lag"]:
        click.echo(
            f"warning: projection {view.name} has {row['lag']} events still to apply "
            "(run `aftersales project run`, or drop --no-catch-up)",
            err=True,
        )
    position: int = row["position"]
    return position


def _nothing(what: str, merchant: str | None, windowed: bool) -> str:
    whose = f" for merchant {merchant}" if merchant else ""
    when = " in this window" if windowed else ""
    return f"no {what}{whose}{when}"


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return out.getvalue().rstrip("\n")


@click.group("report")
def report_group() -> None:
    """Reports for merchants and reporting jobs (from the projections; see `project run`)."""


# The dashboard -----------------------------------------------------------------------------------


def dashboard_metrics(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The dashboard as metric/value rows (for CSV and for a person)."""
    rows: list[dict[str, Any]] = [{"metric": "open_cases", "value": d["open_cases"]["total"]}]
    rows += [
        {"metric": f"open_cases.{status}", "value": n}
        for status, n in d["open_cases"]["by_status"].items()
    ]
    rows.append({"metric": "under_intervention", "value": d["under_intervention"]})
    rows.append({"metric": "rulings_overdue", "value": d["rulings_overdue"]["count"]})
    rows.append({"metric": "due_within_24h", "value": d["deadlines"]["due_within_24h"]})
    rows.append({"metric": "overdue", "value": d["deadlines"]["overdue"]})
    for key, n in d["system_decided_30d"].items():
        rows.append({"metric": f"system_decided_30d.{key}", "value": n})
    for key, amount in d["refunded_30d"].items():
        rows.append({"metric": f"refunded_30d.{key}", "value": amount})
    rows.append(
        {"metric": "median_first_response_seconds", "value": d["median_first_response_seconds"]}
    )
    rows.append(
        {"metric": "median_time_to_refund_seconds", "value": d["median_time_to_refund_seconds"]}
    )
    rows.append({"metric": "rating.average", "value": d["rating"]["average"]})
    rows.append({"metric": "rating.count", "value": d["rating"]["count"]})
    for i, r in enumerate(d["top_reasons"], 1):
        rows.append({"metric": f"top_reason.{i}", "value": f"{r['reason']} ({r['cases']})"})
    return rows


def _hours(seconds: int | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f} h"


def render_dashboard(d: dict[str, Any]) -> str:
    who = d["merchant_id"] or "all merchants"
    open_ = d["open_cases"]
    dl = d["deadlines"]
    sd = d["system_decided_30d"]
    rf = d["refunded_30d"]
    rating = d["rating"]
    lines = [
        f"after-sales dashboard: {who}, at {d['now']} (last {d['window_days']} days)",
        f"  open cases: {open_['total']}"
        + "".join(f"  {s}={n}" for s, n in open_["by_status"].items()),
        f"  under platform intervention: {d['under_intervention']} "
        f"({d['rulings_overdue']['count']} past the platform's ruling deadline)",
        f"  deadlines: {dl['due_within_24h']} due within 24 h, {dl['overdue']} overdue",
        f"  decided by the system because the merchant did not: {sd['cases']} cases "
        f"(auto-approved {sd['auto_approved']}, auto-refunded {sd['auto_refunded']}, "
        f"reship overdue {sd['reship_overdue']})",
        f"  refunded: {rf['total']} (merchant paid {rf['paid_by_merchant']}, "
        f"platform paid {rf['paid_by_platform']})",
        f"  median time to first response: {_hours(d['median_first_response_seconds'])}; "
        f"to refund: {_hours(d['median_time_to_refund_seconds'])}",
        f"  buyer rating: {rating['average'] if rating['average'] is not None else '-'} "
        f"({rating['count']} ratings)",
        "  top reasons: "
        + (", ".join(f"{r['reason']} ({r['cases']})" for r in d["top_reasons"]) or "-"),
    ]
    for title, key in (("overdue", "overdue_cases"), ("due within 24 h", "due_soon_cases")):
        if dl[key]:
            lines.append(f"  {title}:")
            lines += [
                "    " + line
                for line in table(
                    dl[key], ["case_id", "order_id", "status", "due_at", "due_action"]
                ).splitlines()
            ]
    return "\n".join(lines)


@report_group.command("dashboard")
@click.option("--merchant", default=None, help="One shop (default: every shop together).")
@click.option(
    "--now", default=None, help="The moment the dashboard is for: a time or a date (default: now)."
)
@catch_up_option
@read_options
@csv_option
@json_option
@click.pass_context
def dashboard_cmd(
    ctx: click.Context,
    /,
    merchant: str | None,
    now: str | None,
    catch_up: bool,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Open cases, deadlines, the system's decisions, refunds, response times, ratings."""
    _one_format(as_csv, as_json)

    def call(engine: Engine) -> dict[str, Any]:
        moment = _window(ctx, now, "--now") or datetime.now(UTC)
        position = reflecting(engine, Dashboard, catch_up)
        # Open cases counted in the status the clock has put them in by then.
        counted = dashboard(
            engine.store, merchant, moment, lambda ids: engine.cases_as_of(ids, moment)
        )
        return {**counted, "position": position}

    def render(d: dict[str, Any]) -> str:
        if as_csv:
            return _csv(dashboard_metrics(d), ["metric", "value"])
        if not d["has_cases"]:
            return _nothing("cases", merchant, False) + f" (log position {d['position']})"
        return render_dashboard(d)

    emit(ctx, as_json, call, render, creates=False)


# Return rates ------------------------------------------------------------------------------------


@report_group.command("return-rates")
@click.option(
    "--by", type=click.Choice(GROUPINGS), default="merchant", show_default=True, help="Grouping."
)
@click.option("--merchant", default=None, help="Only this shop's orders.")
@click.option(
    "--since",
    default=None,
    help="Cohort: orders delivered from here, a time or a date (default: until - 30 days).",
)
@click.option("--until", default=None, help="... up to here, excluded (default: now).")
@catch_up_option
@read_options
@csv_option
@json_option
@click.pass_context
def return_rates_cmd(
    ctx: click.Context,
    /,
    by: str,
    merchant: str | None,
    since: str | None,
    until: str | None,
    catch_up: bool,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Return, refund, quality-return and dispute rates of the orders delivered in a window."""
    _one_format(as_csv, as_json)

    def call(engine: Engine) -> dict[str, Any]:
        start, end = _period(ctx, since, until)
        position = reflecting(engine, ReturnRates, catch_up)
        rows = return_rates(engine.store, by, start, end, merchant)
        return {"position": position, "rows": rows}

    def render(result: dict[str, Any]) -> str:
        if as_csv:
            return _csv(result["rows"], RATE_COLUMNS)
        if not result["rows"]:
            return _nothing("delivered orders", merchant, True)
        return table(result["rows"], RATE_COLUMNS)

    emit(ctx, as_json, call, render, creates=False)


# The platforms' own measures ---------------------------------------------------------------------


def _duration(seconds: int | None) -> str:
    """A response time as a person reads it: ``5 h 02 min 07 s``, ``48 h 00 min 00 s``."""
    if seconds is None:
        return "-"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def render_measures(rows: list[dict[str, Any]]) -> str:
    """One line a shop: the three measures, each with what it is counted from."""
    shown = [
        {
            "merchant_id": r["merchant_id"],
            "dispute_rate": f"{_percent(r['dispute_rate'])} "
            f"({r['disputes_lost']}/{r['paid_orders']} paid)",
            "quality_return_rate": f"{_percent(r['quality_return_rate'])} "
            f"({r['quality_refund_orders']}/{r['delivered_orders']} delivered, "
            f"{r['quality_refunded']})",
            "response_median": _duration(r["median_response_seconds"]),
            "response_p90": _duration(r["p90_response_seconds"]),
            "answered": f"{r['answered_by_merchant']} merchant, {r['answered_by_clock']} clock",
        }
        for r in rows
    ]
    return table(shown, list(shown[0]))


@report_group.command("measures")
@click.option("--merchant", default=None, help="Only this shop (default: every shop).")
@click.option(
    "--since",
    default=None,
    help="The period from here, a time or a date (default: until - 30 days).",
)
@click.option("--until", default=None, help="... up to here, excluded (default: now).")
@catch_up_option
@read_options
@csv_option
@json_option
@click.pass_context
def measures_cmd(
    ctx: click.Context,
    /,
    merchant: str | None,
    since: str | None,
    until: str | None,
    catch_up: bool,
    as_csv: bool,
    as_json: bool,
) -> None:
    """The platforms' own measures per shop: dispute rate (纠纷率), quality-return rate
    (品质退货率), the merchant's response time (median and 90th percentile)."""
    _one_format(as_csv, as_json)

    def call(engine: Engine) -> dict[str, Any]:
        start, end = _period(ctx, since, until)
        position = reflecting(engine, PlatformMeasures, catch_up)
        rows = platform_measures(engine.store, start, end, merchant)
        return {
            "position": position,
            "since": start.isoformat(),
            "until": end.isoformat(),
            "rows": rows,
        }

    def render(result: dict[str, Any]) -> str:
        if as_csv:
            return _csv(result["rows"], list(MEASURE_COLUMNS))
        if not result["rows"]:
            return _nothing("orders or cases", merchant, True)
        return render_measures(result["rows"])

    emit(ctx, as_json, call, render, creates=False)


# The ledger --------------------------------------------------------------------------------------

LEDGER_COLUMNS = ["merchant_id", *TOTALS, "entries"]


@click.command("ledger")
@click.option("--merchant", default=None, help="One shop (default: every shop).")
@click.option(
    "--since",
    default=None,
    help="Money moved from here, a time or a date (default: the beginning).",
)
@click.option("--until", default=None, help="... up to here, excluded (default: no end).")
@catch_up_option
@read_options
@csv_option
@json_option
@click.pass_context
def ledger_cmd(
    ctx: click.Context,
    /,
    merchant: str | None,
    since: str | None,
    until: str | None,
    catch_up: bool,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Each merchant's money: refunded itself, advanced by the platform and owed, freight,
    penalties (from the ledger projection)."""
    _one_format(as_csv, as_json)

    def call(engine: Engine) -> dict[str, Any]:
        start, end = _window(ctx, since, "--since"), _window(ctx, until, "--until")
        if start and end and start >= end:
            raise BadInput(f"--since {start.isoformat()} is not before --until {end.isoformat()}")
        position = reflecting(engine, Ledger, catch_up)
        return {"position": position, "rows": ledger(engine.store, merchant, start, end)}

    def render(result: dict[str, Any]) -> str:
        if as_csv:
            return _csv(result["rows"], LEDGER_COLUMNS)
        if not result["rows"]:
            return _nothing("money moved", merchant, bool(since or until))
        return table(result["rows"], LEDGER_COLUMNS)

    emit(ctx, as_json, call, render, creates=False)


# Staff queues: each member's figures -------------------------------------------------------------


@report_group.command("staff")
@click.option("--merchant", default=None, help="One shop (default: every shop).")
@click.option(
    "--since",
    default=None,
    help="Cases opened from here, a time or a date (default: until - 30 days).",
)
@click.option("--until", default=None, help="... up to here, excluded (default: now).")
@catch_up_option
@read_options
@csv_option
@json_option
@click.pass_context
def staff_cmd(
    ctx: click.Context,
    /,
    merchant: str | None,
    since: str | None,
    until: str | None,
    catch_up: bool,
    as_csv: bool,
    as_json: bool,
) -> None:
    """Per member of a shop's staff (the one who has each case now): cases open and overdue
    now; of the cases opened in the period, the median time to the first response and the
    timeouts (the system decided because the shop did not)."""
    _one_format(as_csv, as_json)

    def call(engine: Engine) -> dict[str, Any]:
        start, end = _period(ctx, since, until)
        reflecting(engine, Dashboard, catch_up)
        position = reflecting(engine, Staff, catch_up)
        members = staff_figures(engine.store, merchant, start, end, datetime.now(UTC))
        return {
            "since": start.isoformat(),
            "until": end.isoformat(),
            "members": members,
            "position": position,
        }

    columns = [
        "merchant_id",
        "member",
        "open",
        "overdue",
        "opened",
        "median_first_response_seconds",
        "timeouts",
    ]

    def render(d: dict[str, Any]) -> str:
        if as_csv:
            return _csv(d["members"], columns)
        if not d["members"]:
            return _nothing("assigned cases", merchant, False) + f" (log position {d['position']})"
        return table(d["members"], columns)

    emit(ctx, as_json, call, render, creates=False)
