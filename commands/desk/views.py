"""What the desk shows, read from the projections and the engine: plain data, no HTML.

Each function takes the store (or engine) and a merchant already decided by the caller's
rights (``commands/desk/pages/``); none of them decides who may see what.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from weakref import WeakKeyDictionary

from aftersales.commands.cli.report import RATE_COLUMNS
from aftersales.engine.application.requests import BY_NAME, Command
from aftersales.engine.domain.values import FINAL_STATUSES, Status
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.dashboard import CASES as DASHBOARD_CASES
from aftersales.projections.dashboard import SOON as DUE_SOON
from aftersales.projections.dashboard import WINDOW as RATING_WINDOW
from aftersales.projections.dashboard import AsOf, moved_by_clock, recount
from aftersales.projections.ledger import ledger
from aftersales.projections.registry import VIEWS
from aftersales.projections.return_rates import group_sql, rate, return_rates
from aftersales.projections.runner import Projector

# The statuses in which the next move is the merchant's.
MERCHANT_TURN = (
    Status.AWAITING_MERCHANT,
    Status.AWAITING_MERCHANT_RECEIPT,
    Status.AWAITING_REPLACEMENT,
    Status.AWAITING_RESHIPMENT,
)
TODO_LIMIT = 100
WEEK = timedelta(days=7)


def time_left(due: datetime, now: datetime) -> tuple[str, bool]:
    """A deadline as people read it ("3 h 12 min left", "2 d 4 h overdue"), and whether it
    has passed."""
    seconds = int((due - now).total_seconds())
    overdue = seconds <= 0
    left = abs(seconds)
    days, rest = divmod(left, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        text = f"{days} d {hours} h"
    elif hours:
        text = f"{hours} h {minutes} min"
    else:
        text = f"{max(minutes, 0 if overdue else 1)} min"
    return (f"{text} overdue" if overdue else f"{text} left"), overdue


def stored_time(value: Any) -> datetime:
    """A projection's time: an aware datetime on PostgreSQL, UTC text on SQLite."""
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def local(value: str | datetime | None, zone: tzinfo) -> str:
    """A time in the viewer's zone, to the minute, with the zone's abbreviation."""
    if value is None:
        return ""
    moment = stored_time(value) if not isinstance(value, datetime) else value
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def zone_name(zone: tzinfo) -> str:
    """A zone as people read its name: ``Asia/Shanghai``, or ``UTC+08:00`` for an offset."""
    return str(getattr(zone, "key", None) or zone)


@dataclass(frozen=True)
class Todo:
    case_id: str
    order_id: str
    status: str
    reason: str
    due_at: datetime | None
    due_action: str | None
    left: str
    overdue: bool


def due_by(store: AftersalesStore, merchant: str | None, now: datetime) -> list[dict[str, Any]]:
    """The open cases with a deadline due by ``now`` that no tick has recorded yet."""
    where, params = ("merchant_id = ? AND ", [merchant]) if merchant else ("", [])
    finals = ", ".join(f"'{s.value}'" for s in FINAL_STATUSES)
    return store.query(
        "SELECT case_id, order_id, status, case_type, reason, due_at, due_action "
        f"FROM {{t}}{DASHBOARD_CASES.name} WHERE {where}status NOT IN ({finals}) "
        "AND due_at IS NOT NULL AND due_at <= ? ORDER BY due_at, case_id",
        [*params, store.time_param(now)],
    )


def todo(
    store: AftersalesStore, merchant: str | None, now: datetime, as_of: AsOf | None = None
) -> list[Todo]:
    """The cases waiting for the merchant as of ``now``, soonest deadline first (at most
    ``TODO_LIMIT``): a case whose deadline has passed is where the clock put it (a lapsed
    review is no longer the merchant's to answer), whether or not a tick has recorded it."""
    turn = ", ".join(f"'{s.value}'" for s in MERCHANT_TURN)
    where, params = ("merchant_id = ? AND ", [merchant]) if merchant else ("", [])
    select = (
        "SELECT case_id, order_id, status, reason, due_at, due_action "
        f"FROM {{t}}{DASHBOARD_CASES.name} WHERE {where}status IN ({turn}) AND due_at "
    )
    rows = store.query(
        f"{select}> ? ORDER BY due_at, case_id LIMIT {TODO_LIMIT}",
        [*params, store.time_param(now)],
    )
    lapsed = due_by(store, merchant, now)
    moved = moved_by_clock(lapsed, now, as_of)
    turns = {s.value for s in MERCHANT_TURN}
    # The due cases the clock leaves in the merchant's turn (an exchange's return received,
    # an unanswered offer back to the review), with the deadline running then.
    rows += [
        {**r, **moved[str(r["case_id"])]}
        for r in lapsed
        if moved[str(r["case_id"])]["status"] in turns
    ]
    # (A case moved one step by the table has no deadline known here: listed after.)
    dated = [r for r in rows if r["due_at"] is not None]
    undated = [r for r in rows if r["due_at"] is None]
    rows = sorted(dated, key=lambda r: (stored_time(r["due_at"]), str(r["case_id"])))[:TODO_LIMIT]
    rows += undated[: TODO_LIMIT - len(rows)]
    if len(rows) < TODO_LIMIT:  # then those with no deadline running, oldest first
        rows += store.query(
            f"{select}IS NULL ORDER BY opened_at, case_id LIMIT {TODO_LIMIT - len(rows)}",
            params,
        )
    items = []
    for r in rows:
        due = stored_time(r["due_at"]) if r["due_at"] is not None else None
        left, overdue = time_left(due, now) if due is not None else ("no deadline", False)
        items.append(
            Todo(
                str(r["case_id"]),
                r["order_id"],
                r["status"],
                r["reason"],
                due,
                r["due_action"],
                left,
                overdue,
            )
        )
    return items


def stages(
    store: AftersalesStore, merchant: str | None, now: datetime, as_of: AsOf | None = None
) -> dict[str, dict[str, int]]:
    """Per open status: its cases, those past their deadline, those due within 24 h (one
    pass over the merchant's open cases, counted by the database). A case past its deadline is
    counted (``n``) in the status the clock puts it in, recorded by a tick or not; ``overdue``
    stays with the status it waited in: the deadlines a tick has still to record."""
    where, params = ("merchant_id = ? AND ", [merchant]) if merchant else ("", [])
    finals = ", ".join(f"'{s.value}'" for s in FINAL_STATUSES)
    t = store.time_param
    rows = store.query(
        "SELECT status, count(*) AS n, "
        "sum(CASE WHEN due_at IS NOT NULL AND due_at <= ? THEN 1 ELSE 0 END) AS overdue, "
        "sum(CASE WHEN due_at > ? AND due_at < ? THEN 1 ELSE 0 END) AS soon "
        f"FROM {{t}}{DASHBOARD_CASES.name} WHERE {where}status NOT IN ({finals}) "
        "GROUP BY status ORDER BY status",
        [t(now), t(now), t(now + DUE_SOON), *params],
    )
    found = {r["status"]: {k: int(r[k] or 0) for k in ("n", "overdue", "soon")} for r in rows}
    due = due_by(store, merchant, now)
    counts = recount({k: v["n"] for k, v in found.items()}, due, moved_by_clock(due, now, as_of))
    for status in {*found, *counts}:
        found.setdefault(status, {"n": 0, "overdue": 0, "soon": 0})["n"] = counts.get(status, 0)
    return {k: found[k] for k in sorted(found) if found[k]["n"] or found[k]["overdue"]}


def satisfaction(store: AftersalesStore, merchant: str | None, now: datetime) -> dict[str, Any]:
    """The buyers' average score over the last 30 days, as the dashboard report has it."""
    where, params = ("merchant_id = ? AND ", [merchant]) if merchant else ("", [])
    since = store.time_param(now - RATING_WINDOW)
    (row,) = store.query(
        "SELECT count(rating) AS n, sum(rating) AS total "
        f"FROM {{t}}{DASHBOARD_CASES.name} WHERE {where}updated_at >= ? "
        "AND rating IS NOT NULL AND rated_at >= ? AND rated_at < ?",
        [*params, since, since, store.time_param(now)],
    )
    count = int(row["n"] or 0)
    average = (
        float((Decimal(int(row["total"])) / count).quantize(Decimal("0.01"), ROUND_HALF_UP))
        if count
        else None
    )
    return {"average": average, "count": count}


def timeouts_since(store: AftersalesStore, merchant: str | None, since: datetime) -> int:
    """Cases the system decided since ``since`` because the merchant did not act in time."""
    where, params = ("merchant_id = ? AND ", [merchant]) if merchant else ("", [])
    t = store.time_param(since)
    (row,) = store.query(
        f"SELECT count(*) AS n FROM {{t}}{DASHBOARD_CASES.name} WHERE {where}updated_at >= ? "
        "AND (auto_approved_at >= ? OR auto_refunded_at >= ? OR reship_overdue_at >= ?)",
        [*params, t, t, t, t],
    )
    return int(row["n"])


def merchants(store: AftersalesStore) -> list[str]:
    """Every merchant with a case, for the platform's principals to pick from."""
    return [
        r["merchant_id"]
        for r in store.query(
            f"SELECT DISTINCT merchant_id FROM {{t}}{DASHBOARD_CASES.name} ORDER BY merchant_id"
        )
    ]


_projectors: WeakKeyDictionary[AftersalesStore, Projector] = WeakKeyDictionary()


def position(store: AftersalesStore) -> int:
    """How far the desk's projections have read the log: what live refresh watches (one
    small read per projection; the projector, which makes its tables once, is kept)."""
    projector = _projectors.get(store)
    if projector is None:
        projector = _projectors[store] = Projector(store)
    return min(projector.position(v) or 0 for v in DESK_VIEWS)


# The projections the desk's live pages show: its figures, not those it reads only when asked
# (the staff queues', whose position moves only when a case is assigned).
DESK_VIEWS = tuple(v for v in VIEWS if v.name in ("dashboard", "return_rates", "ledger"))


def desk(
    store: AftersalesStore, merchant: str | None, now: datetime, as_of: AsOf | None = None
) -> dict[str, Any]:
    """Today's work and the figures beside it, as of ``now`` (``as_of``: the engine's view of
    the cases due by then; see ``projections.dashboard.moved_by_clock``)."""
    by_status = stages(store, merchant, now, as_of)
    money = ledger(store, merchant, None, None)
    totals = {
        k: sum((Decimal(row[k]) for row in money), Decimal("0.00"))
        for k in ("refunded_by_merchant", "advanced_by_platform", "owed_to_platform")
    }
    return {
        "todo": todo(store, merchant, now, as_of),
        "waiting": sum(by_status.get(s.value, {}).get("n", 0) for s in MERCHANT_TURN),
        "by_status": {s: counts["n"] for s, counts in by_status.items() if counts["n"]},
        "open": sum(counts["n"] for counts in by_status.values()),
        "overdue": sum(counts["overdue"] for counts in by_status.values()),
        "due_within_24h": sum(counts["soon"] for counts in by_status.values()),
        "timeouts_week": timeouts_since(store, merchant, now - WEEK),
        "money": {k: f"{v:.2f}" for k, v in totals.items()},
        "rating": satisfaction(store, merchant, now),
        "position": position(store),
    }


# Return rates --------------------------------------------------------------------------------

RATES = ("return_rate", "refund_rate", "quality_return_rate", "dispute_rate")


def week_start(moment: datetime) -> datetime:
    """The Monday 00:00 UTC of a moment's week."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def weekly(
    store: AftersalesStore, merchant: str | None, now: datetime, weeks: int
) -> list[dict[str, Any]]:
    """Per week of delivered orders (cohorts, oldest first): the four rates, over the merchant
    or over the whole platform."""
    first = week_start(now) - WEEK * (weeks - 1)
    series = []
    for n in range(weeks):
        start = first + WEEK * n
        params: list[Any] = [store.time_param(start), store.time_param(start + WEEK)]
        if merchant:
            params.append(merchant)
        sums = dict.fromkeys(
            (
                "orders",
                "orders_with_cases",
                "gmv_cents",
                "refunded_cents",
                "quality_orders",
                "disputed_orders",
            ),
            0,
        )
        for row in store.query(group_sql("merchant", merchant), params):
            for k in sums:
                sums[k] += int(row[k])
        series.append(
            {
                "week": start.date().isoformat(),
                "orders": sums["orders"],
                "return_rate": rate(sums["orders_with_cases"], sums["orders"]),
                "refund_rate": rate(sums["refunded_cents"], sums["gmv_cents"]),
                "quality_return_rate": rate(sums["quality_orders"], sums["orders"]),
                "dispute_rate": rate(sums["disputed_orders"], sums["orders"]),
            }
        )
    return series


def breakdown(
    store: AftersalesStore, by: str, merchant: str | None, now: datetime, weeks: int
) -> list[dict[str, Any]]:
    """The same weeks as one cohort, by SKU, category, reason (or merchant, ranked by return
    rate, worst first)."""
    start = week_start(now) - WEEK * (weeks - 1)
    rows = return_rates(store, by, start, start + WEEK * weeks, merchant)
    if by == "merchant":
        rows.sort(key=lambda r: (-r["return_rate"], r["key"]))
    return rows


BREAKDOWN_COLUMNS = tuple(RATE_COLUMNS)  # as `report return-rates` prints them
WEEKLY_COLUMNS = ("week", "orders", *RATES)


def to_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(c) for c in columns])
    return out.getvalue()


# A case's actions as forms -------------------------------------------------------------------

# Options a person never types on the desk: the path's, the principal's, the headers', the clock's.
NOT_ASKED = frozenset({"case_id", "by", "command_id", "expected_version", "at"})


@dataclass(frozen=True)
class Field:
    name: str
    required: bool
    many: bool  # a list: typed as words separated by commas
    choices: tuple[str, ...]
    flag: bool


@dataclass(frozen=True)
class Button:
    action: str
    label: str
    fields: tuple[Field, ...]


def fields_of(kind: type[Command]) -> tuple[Field, ...]:
    found = []
    for name, info in kind.model_fields.items():
        if name in NOT_ASKED:
            continue
        shown = str(info.annotation)
        choices: tuple[str, ...] = ()
        annotation = info.annotation
        members = getattr(annotation, "__members__", None)
        if isinstance(members, Mapping):
            choices = tuple(str(m.value) for m in members.values())
        found.append(
            Field(
                name,
                info.is_required(),
                shown.startswith("tuple["),
                choices,
                annotation is bool,
            )
        )
    return tuple(found)


def buttons(allowed: Iterable[str], may: Any) -> list[Button]:
    """A button for each action the engine allows now that the principal may take
    (``may(kind)`` says so), with the options the action asks for."""
    found = []
    for action in allowed:
        kind = BY_NAME.get(f"case {action}")
        if kind is not None and may(kind):
            found.append(Button(action, action.replace("-", " "), fields_of(kind)))
    return found
