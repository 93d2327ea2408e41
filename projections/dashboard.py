"""The merchant dashboard: one row per case as the merchant watches it, one row per refund.

``proj_dashboard_cases`` keeps each case's current status and running deadline, and the moments
that matter to a merchant: the first response, the refund, the system's decisions where the
merchant did not act, the platform's intervention and the buyer's rating.
``proj_dashboard_refunds`` keeps each refund: how much, when, who paid and who owes it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from aftersales.engine.domain.case_events import (
    CaseApproved,
    CaseAutoApproved,
    CaseAutoClosed,
    CaseAutoRefunded,
    CaseEscalated,
    CaseEvent,
    CaseOpened,
    CaseRated,
    CaseRefunded,
    CaseRejected,
    CaseRuled,
    CaseTurnedReturn,
    CaseWithdrawn,
    ChangeOffered,
    DeadlineFired,
    EscalationLapsed,
    GoodsReceived,
    GoodsShippedBack,
    MessagePosted,
    MissingItemsReshipped,
    OfferAccepted,
    OfferDeclined,
    OfferLapsed,
    ReceiptExtended,
    ReplacementOverdue,
    ReplacementShipped,
    ReshipImpossible,
    ReshipOverdue,
    RulingLapsed,
    RulingOverdue,
)
from aftersales.engine.domain.transitions import outcome
from aftersales.engine.domain.values import FINAL_STATUSES, CaseType, Role, Status
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.base import (
    Changes,
    Folds,
    Table,
    View,
    bigger,
    cents,
    col,
    keep,
    money,
)

CASES = Table(
    "proj_dashboard_cases",
    (
        col("case_id", "uuid", "key", "the case"),
        col("merchant_id", "text", "keep", "the shop"),
        col("order_id", "text", "keep", "the order the case is on"),
        col("case_type", "text", "keep", "refund_only, return_refund, exchange or reship"),
        col("reason", "text", "keep", "group.detail, e.g. quality.colour_difference"),
        col("status", "text", "set", "the status now"),
        col("due_at", "time", "set", "the running deadline, or null"),
        col("due_action", "text", "set", "what the system does at due_at if nobody acts"),
        col("opened_at", "time", "keep", "when the buyer opened the case"),
        col("updated_at", "time", "max", "the latest event's time"),
        col("first_response_at", "time", "keep", "the merchant's first action on the case"),
        col("refunded_at", "time", "keep", "the first refund"),
        col("auto_approved_at", "time", "keep", "the system approved: the merchant did not answer"),
        col("auto_refunded_at", "time", "keep", "the system refunded: receipt not confirmed"),
        col("reship_overdue_at", "time", "keep", "the merchant missed the 24 h reship"),
        col("auto_closed_at", "time", "keep", "the system closed: the buyer did not ship back"),
        col("escalated_at", "time", "keep", "the platform was first asked to step in"),
        col("ruled_at", "time", "keep", "the platform's first ruling"),
        col("rating", "int", "keep", "the buyer's score, 1 to 5"),
        col("rated_at", "time", "keep", "when the buyer rated"),
    ),
    indexes=(("merchant_id", "status"), ("merchant_id", "updated_at"), ("merchant_id", "due_at")),
    doc="One row per case.",
)

REFUNDS = Table(
    "proj_dashboard_refunds",
    (
        col("case_id", "uuid", "key", "the case"),
        col("case_version", "int", "key", "the refund event's version in the case"),
        col("refunded_at", "time", "keep", "when the money went back"),
        col("amount_cents", "int", "keep", "the refund, in cents"),
        col("paid_by", "text", "keep", "merchant or platform"),
        col("owed_by", "text", "keep", "who owes it in the end"),
    ),
    indexes=(("refunded_at",),),
    doc="One row per refund.",
)

folds = Folds()
Row = dict[str, Any]


def _now(e: CaseEvent, changes: Changes) -> Row:
    """What every case event sets: the status now, the deadline running now, the latest time."""
    row = changes.row(CASES, e.originator_id)
    row["status"] = e.status.value
    due = e.due
    row["due_at"] = due.due_at if due else None
    row["due_action"] = due.action.value if due else None
    bigger(row, "updated_at", e.at)
    return row


def _case(e: CaseEvent, changes: Changes) -> Row:
    """A later event on the case: ``_now``, and the merchant's first action if it is one."""
    row = _now(e, changes)
    if e.actor.role == Role.MERCHANT:
        keep(row, "first_response_at", e.at)
    return row


@folds.on(CaseOpened)
def _opened(e: CaseOpened, changes: Changes, seq: int) -> None:
    row = _now(e, changes)
    row["merchant_id"] = e.merchant_id
    row["order_id"] = e.order_id
    row["case_type"] = e.case_type.value
    row["reason"] = e.reason
    row["opened_at"] = e.at


@folds.on(
    CaseApproved,
    CaseRejected,
    GoodsShippedBack,
    GoodsReceived,
    ReplacementShipped,
    MissingItemsReshipped,
    ReshipImpossible,
    CaseWithdrawn,
    MessagePosted,
    ChangeOffered,
    OfferAccepted,
    OfferDeclined,
    ReceiptExtended,
    CaseTurnedReturn,
)
def _moved(e: CaseEvent, changes: Changes, seq: int) -> None:
    _case(e, changes)


@folds.on(OfferLapsed, ReplacementOverdue, EscalationLapsed, RulingOverdue, RulingLapsed)
def _lapsed(e: DeadlineFired, changes: Changes, seq: int) -> None:
    """Deadlines the dashboard keeps no time of its own for: the status and deadline move."""
    _case(e, changes)


_AUTO: dict[type[DeadlineFired], str] = {
    CaseAutoApproved: "auto_approved_at",
    CaseAutoRefunded: "auto_refunded_at",
    ReshipOverdue: "reship_overdue_at",
    CaseAutoClosed: "auto_closed_at",
}


@folds.on(*_AUTO)
def _decided(e: DeadlineFired, changes: Changes, seq: int) -> None:
    """The system acted because nobody else did: the first time of each kind is kept."""
    keep(_case(e, changes), _AUTO[type(e)], e.at)


@folds.on(CaseRefunded)
def _refunded(e: CaseRefunded, changes: Changes, seq: int) -> None:
    keep(_case(e, changes), "refunded_at", e.at)
    refund = changes.row(REFUNDS, e.originator_id, e.originator_version)
    refund["refunded_at"] = e.at
    refund["amount_cents"] = cents(e.amount)
    refund["paid_by"] = e.paid_by.value
    refund["owed_by"] = e.owed_by.value


@folds.on(CaseEscalated)
def _escalated(e: CaseEscalated, changes: Changes, seq: int) -> None:
    keep(_case(e, changes), "escalated_at", e.at)


@folds.on(CaseRuled)
def _ruled(e: CaseRuled, changes: Changes, seq: int) -> None:
    keep(_case(e, changes), "ruled_at", e.at)


@folds.on(CaseRated)
def _rated(e: CaseRated, changes: Changes, seq: int) -> None:
    row = _case(e, changes)
    keep(row, "rating", e.score)
    keep(row, "rated_at", e.at)


class Dashboard(View):
    name = "dashboard"
    tables = (CASES, REFUNDS)
    folds = folds
    doc = __doc__ or ""


# The report: read from the tables only ---------------------------------------------------------

WINDOW = timedelta(days=30)
SOON = timedelta(hours=24)
FINAL = tuple(sorted(s.value for s in FINAL_STATUSES))
LIST_LIMIT = 10
TOP_REASONS = 5


def _dt(value: Any) -> datetime | None:
    """A stored time: timestamptz arrives as an aware datetime, SQLite's as UTC text."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _iso(value: Any) -> str | None:
    parsed = _dt(value)
    return parsed.astimezone(UTC).isoformat() if parsed else None


def _median_seconds(values: list[float]) -> int | None:
    return round(statistics.median(values)) if values else None


# Counts as of the read's moment ----------------------------------------------------------------

# What the clock leaves each of some cases in by the dashboard's moment, by case id: its
# ``status``, and the ``due_at``/``due_action`` running then. The engine gives it exactly
# (``Engine.cases_as_of``: each case loaded and its due deadlines applied in memory).
AsOf = Callable[[Sequence[str]], Mapping[str, Mapping[str, Any]]]
# At most this many due cases are loaded for a read; beyond it (a clock that has not ticked for
# long), each is placed one step on, by the transition table.
AS_OF_LIMIT = 500


def one_step(status: str, case_type: str, due_action: str) -> str:
    """The status a due deadline leads to by the transition table: one step, and only where
    the table decides it from what a dashboard row keeps (an unanswered offer resumes a status
    the row does not keep: left as it is)."""
    try:
        row = outcome(due_action, Status(status), case_type=CaseType(case_type))
    except (LookupError, ValueError):
        return status
    return row.after.value if row.after is not None else status


def moved_by_clock(
    rows: Iterable[Mapping[str, Any]], now: datetime, as_of: AsOf | None
) -> dict[str, dict[str, Any]]:
    """For the rows (``case_id, status, case_type, due_at, due_action``) due by ``now``: the
    status and deadline the clock leaves each in, by case id (a tick records it later)."""
    due = [r for r in rows if r["due_at"] is not None and _dt(r["due_at"]) <= now]  # type: ignore[operator]
    ids = [str(r["case_id"]) for r in due]
    exact = as_of(ids[:AS_OF_LIMIT]) if as_of and ids else {}
    moved: dict[str, dict[str, Any]] = {}
    for r in due:
        cid = str(r["case_id"])
        if cid in exact:
            moved[cid] = dict(exact[cid])
        else:
            after = one_step(r["status"], r["case_type"], r["due_action"])
            moved[cid] = {"status": after, "due_at": None, "due_action": None}
    return moved


def recount(
    counts: Mapping[str, int], rows: Iterable[Mapping[str, Any]], moved: Mapping[str, Any]
) -> dict[str, int]:
    """Open cases by status, each moved case counted in the status the clock leaves it in
    (and no longer counted once that status is final)."""
    result = dict(counts)
    for r in rows:
        after = moved.get(str(r["case_id"]))
        if after is None or after["status"] == r["status"]:
            continue
        result[r["status"]] = result.get(r["status"], 0) - 1
        if after["status"] not in FINAL:
            result[after["status"]] = result.get(after["status"], 0) + 1
    return {k: v for k, v in sorted(result.items()) if v > 0}


def dashboard(
    store: AftersalesStore, merchant: str | None, now: datetime, as_of: AsOf | None = None
) -> dict[str, Any]:
    """The merchant's (or, with no merchant, the whole platform's) after-sales dashboard at
    ``now``: what is open, what falls due, and the last 30 days. Open cases are counted in the
    status the clock has put them in by ``now`` (``as_of``, else one step by the table), whether
    or not a tick has recorded it; ``deadlines.overdue`` counts the deadlines it took."""
    since = now - WINDOW
    t = store.time_param
    where, params = ("c.merchant_id = ? AND ", [merchant]) if merchant else ("", [])
    finals = ", ".join(f"'{s}'" for s in FINAL)

    by_status = {
        r["status"]: int(r["n"])
        for r in store.query(
            f"SELECT c.status, count(*) AS n FROM {{t}}{CASES.name} c "
            f"WHERE {where}c.status NOT IN ({finals}) GROUP BY c.status ORDER BY c.status",
            params,
        )
    }
    due_rows = store.query(
        f"SELECT c.case_id, c.order_id, c.status, c.case_type, c.due_at, c.due_action "
        f"FROM {{t}}{CASES.name} c WHERE {where}c.due_at IS NOT NULL AND c.due_at < ? "
        "ORDER BY c.due_at, c.case_id",
        [*params, t(now + SOON)],
    )
    overdue = [r for r in due_rows if _dt(r["due_at"]) <= now]  # type: ignore[operator]
    due_soon = [r for r in due_rows if _dt(r["due_at"]) > now]  # type: ignore[operator]
    open_due = [r for r in overdue if r["status"] not in FINAL]
    moved = moved_by_clock(open_due, now, as_of)
    by_status = recount(by_status, open_due, moved)
    # The platform's own lateness: disputes past their ruling deadline, not yet ruled (once
    # overdue, the deadline running is the grace before the platform pays).
    rulings_overdue = store.query(
        f"SELECT c.case_id, c.order_id, c.status, c.due_at, c.due_action "
        f"FROM {{t}}{CASES.name} c WHERE {where}c.status = 'escalated' AND "
        "(c.due_action = 'ruling_lapsed' OR (c.due_action = 'ruling_overdue' AND c.due_at <= ?)) "
        "ORDER BY c.due_at, c.case_id",
        [*params, t(now)],
    )

    recent = store.query(
        f"SELECT c.reason, c.opened_at, c.first_response_at, c.refunded_at, "
        f"c.auto_approved_at, c.auto_refunded_at, c.reship_overdue_at, c.rating, c.rated_at "
        f"FROM {{t}}{CASES.name} c WHERE {where}c.updated_at >= ?",
        [*params, t(since)],
    )

    def within(value: Any) -> bool:
        moment = _dt(value)
        return moment is not None and since <= moment < now

    decided = {"auto_approved": 0, "auto_refunded": 0, "reship_overdue": 0, "cases": 0}
    responses: list[float] = []
    refunds: list[float] = []
    ratings: list[int] = []
    reasons: dict[str, int] = {}
    for r in recent:
        hit = False
        for key in ("auto_approved", "auto_refunded", "reship_overdue"):
            if within(r[f"{key}_at"]):
                decided[key] += 1
                hit = True
        decided["cases"] += hit
        opened = _dt(r["opened_at"])
        first = _dt(r["first_response_at"])
        auto = _dt(r["auto_approved_at"])
        if opened and first and within(first) and (auto is None or first < auto):
            responses.append((first - opened).total_seconds())
        refunded = _dt(r["refunded_at"])
        if opened and refunded and within(refunded):
            refunds.append((refunded - opened).total_seconds())
        if r["rating"] is not None and within(r["rated_at"]):
            ratings.append(int(r["rating"]))
        if within(r["opened_at"]):
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1

    paid = {"merchant": 0, "platform": 0}
    for r in store.query(
        f"SELECT r.paid_by, sum(r.amount_cents) AS cents FROM {{t}}{REFUNDS.name} r "
        f"JOIN {{t}}{CASES.name} c ON c.case_id = r.case_id "
        # A refund in the window means its case was updated in it: that narrows the join.
        f"WHERE {where}c.updated_at >= ? AND r.refunded_at >= ? AND r.refunded_at < ? "
        "GROUP BY r.paid_by",
        [*params, t(since), t(since), t(now)],
    ):
        paid[r["paid_by"]] = paid.get(r["paid_by"], 0) + int(r["cents"])

    def listed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "case_id": str(r["case_id"]),
                "order_id": r["order_id"],
                # As of now: the deadline listed is the one the clock took.
                "status": moved.get(str(r["case_id"]), r)["status"],
                "due_at": _iso(r["due_at"]),
                "due_action": r["due_action"],
            }
            for r in rows[:LIST_LIMIT]
        ]

    # Whether the projection knows any case of this merchant at all (a typo'd merchant id
    # shows as no cases rather than as a quiet row of zeros).
    whose = "WHERE c.merchant_id = ?" if merchant else ""
    has_cases = bool(by_status or recent) or bool(
        store.query(f"SELECT 1 AS one FROM {{t}}{CASES.name} c {whose} LIMIT 1", params)
    )
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    average = (
        float((Decimal(sum(ratings)) / len(ratings)).quantize(Decimal("0.01"), ROUND_HALF_UP))
        if ratings
        else None
    )
    return {
        "merchant_id": merchant,
        "has_cases": has_cases,
        "now": now.isoformat(),
        "window_days": WINDOW.days,
        "open_cases": {"total": sum(by_status.values()), "by_status": by_status},
        "under_intervention": by_status.get("escalated", 0),
        "rulings_overdue": {"count": len(rulings_overdue), "cases": listed(rulings_overdue)},
        "deadlines": {
            "due_within_24h": len(due_soon),
            "overdue": len(overdue),
            "overdue_cases": listed(overdue),
            "due_soon_cases": listed(due_soon),
        },
        "system_decided_30d": decided,
        "refunded_30d": {
            "total": money(sum(paid.values())),
            "paid_by_merchant": money(paid.get("merchant", 0)),
            "paid_by_platform": money(paid.get("platform", 0)),
        },
        "median_first_response_seconds": _median_seconds(responses),
        "median_time_to_refund_seconds": _median_seconds(refunds),
        "rating": {"average": average, "count": len(ratings)},
        "top_reasons": [{"reason": k, "cases": v} for k, v in top],
    }
