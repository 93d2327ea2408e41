"""The platforms' own measures of a shop, as the platforms define them (docs/reports.md).

Over a period [since, until), per merchant, each count by the time of its own event (as the
platforms' "last 30 days" figures are counted, not a cohort of orders):

- dispute rate (纠纷率): orders with a dispute the platform ruled against the merchant (a
  ruling for the buyer) in the period, over the orders paid (placed) in it;
- quality-return rate (品质退货率): orders with a quality (``quality.*``) case whose refund
  succeeded in the period, over the orders delivered in it;
- merchant response time: from a case's opening to the merchant's first answer (approve,
  reject, offer, refund, or a message), or to the clock's approval if that came first (the
  merchant's silence counts at its full length); median and 90th percentile, nearest rank, in
  whole seconds, of the answers given in the period.

``proj_measures_orders`` keeps each order's payment and delivery; ``proj_measures_cases`` each
case's opening, first answer, first ruling against the merchant and first refund.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from aftersales.engine.domain.case_events import (
    CaseApproved,
    CaseAutoApproved,
    CaseOpened,
    CaseRefunded,
    CaseRejected,
    CaseRuled,
    ChangeOffered,
    MessagePosted,
)
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.order_events import OrderDelivered, OrderPlaced
from aftersales.engine.domain.values import Party, Role, reason_group
from aftersales.engine.storage.sql import parse_stored_time
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.base import Changes, Folds, Table, View, cents, col, keep, money

ORDERS = Table(
    "proj_measures_orders",
    (
        col("order_ref", "uuid", "key", "the order's stored aggregate id"),
        col("merchant_id", "text", "keep", "the shop"),
        col("placed_at", "time", "keep", "when the order was placed (paid)"),
        col("delivered_at", "time", "keep", "when it was delivered (null until then)"),
    ),
    indexes=(("placed_at",), ("delivered_at",)),
    doc="One row per order.",
)

CASES = Table(
    "proj_measures_cases",
    (
        col("case_id", "uuid", "key", "the case"),
        col("order_ref", "uuid", "keep", "the order it is on"),
        col("merchant_id", "text", "keep", "the shop"),
        col("reason_group", "text", "keep", "quality, logistics, buyer, missing_items, ..."),
        col("opened_at", "time", "keep", "when the buyer opened it"),
        col("responded_at", "time", "keep", "the first answer: the merchant's, or the clock's"),
        col("responded_by", "text", "keep", "merchant, or clock (approved for the merchant)"),
        col("response", "text", "keep", "approve, reject, offer, refund, message, auto_approve"),
        col("ruled_against_at", "time", "keep", "the platform's first ruling for the buyer"),
        col("refunded_at", "time", "keep", "the first refund to the buyer"),
        col("refunded_cents", "int", "add", "refunded to the buyer on the case, in cents"),
    ),
    indexes=(("responded_at",), ("ruled_against_at",), ("refunded_at",)),
    doc="One row per case.",
)

folds = Folds()


@folds.on(OrderPlaced)
def _placed(e: OrderPlaced, changes: Changes, seq: int) -> None:
    order = changes.row(ORDERS, e.originator_id)
    keep(order, "merchant_id", e.merchant_id)
    keep(order, "placed_at", e.at)


@folds.on(OrderDelivered)
def _delivered(e: OrderDelivered, changes: Changes, seq: int) -> None:
    keep(changes.row(ORDERS, e.originator_id), "delivered_at", e.at)


@folds.on(CaseOpened)
def _opened(e: CaseOpened, changes: Changes, seq: int) -> None:
    case = changes.row(CASES, e.originator_id)
    keep(case, "order_ref", e.order_ref)
    keep(case, "merchant_id", e.merchant_id)
    keep(case, "reason_group", reason_group(e.reason).value)
    keep(case, "opened_at", e.at)


def _answered(case: dict[str, Any], at: datetime, by: str, response: str) -> None:
    """The first answer wins: the three columns are set together, once."""
    if case["responded_at"] is None:
        case.update(responded_at=at, responded_by=by, response=response)


# The merchant's answers to a request, by the event that records them.
ANSWERS: dict[type[Any], str] = {
    CaseApproved: "approve",
    CaseRejected: "reject",
    ChangeOffered: "offer",
    CaseRefunded: "refund",
    MessagePosted: "message",
}


@folds.on(CaseApproved, CaseRejected, ChangeOffered)
def _answer(e: CaseApproved | CaseRejected | ChangeOffered, changes: Changes, seq: int) -> None:
    if e.actor.role == Role.MERCHANT:
        _answered(changes.row(CASES, e.originator_id), e.at, "merchant", ANSWERS[type(e)])


@folds.on(MessagePosted)
def _message(e: MessagePosted, changes: Changes, seq: int) -> None:
    # A message from the buyer or the platform is no answer; only the merchant's row is touched.
    if e.actor.role == Role.MERCHANT:
        _answered(changes.row(CASES, e.originator_id), e.at, "merchant", "message")


@folds.on(CaseAutoApproved)
def _clock_answered(e: CaseAutoApproved, changes: Changes, seq: int) -> None:
    _answered(changes.row(CASES, e.originator_id), e.at, "clock", "auto_approve")


@folds.on(CaseRefunded)
def _refunded(e: CaseRefunded, changes: Changes, seq: int) -> None:
    case = changes.row(CASES, e.originator_id)
    keep(case, "refunded_at", e.at)
    case["refunded_cents"] += cents(e.amount)
    if e.actor.role == Role.MERCHANT:
        _answered(case, e.at, "merchant", "refund")


@folds.on(CaseRuled)
def _ruled(e: CaseRuled, changes: Changes, seq: int) -> None:
    if e.in_favour_of == Party.BUYER:
        keep(changes.row(CASES, e.originator_id), "ruled_against_at", e.at)


class PlatformMeasures(View):
    name = "measures"
    tables = (ORDERS, CASES)
    folds = folds
    doc = __doc__ or ""


# The report: read from the tables only ---------------------------------------------------------

FOUR = Decimal("0.0001")
COLUMNS = (
    "merchant_id",
    "paid_orders",
    "disputes_lost",
    "dispute_rate",
    "delivered_orders",
    "quality_refund_orders",
    "quality_refunded",
    "quality_return_rate",
    "responses",
    "answered_by_merchant",
    "answered_by_clock",
    "median_response_seconds",
    "p90_response_seconds",
)


def measure_rate(numerator: int, denominator: int) -> float | None:
    """A rate rounded half up to 4 places; None when there is nothing to divide by (a shop with
    no paid orders in the period has no dispute rate, whatever its disputes)."""
    if not denominator:
        return None
    return float((Decimal(numerator) / Decimal(denominator)).quantize(FOUR, ROUND_HALF_UP))


def nearest_rank(values: Sequence[int], percent: int) -> int | None:
    """The ``percent``-th percentile by nearest rank: the value at place ceil(percent/100 * n)
    of the values in ascending order (PostgreSQL's ``percentile_disc``); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[(percent * len(ordered) + 99) // 100 - 1]


def _where(merchant: str | None, column: str) -> str:
    extra = " AND merchant_id = ?" if merchant else ""
    return f"WHERE {column} >= ? AND {column} < ?{extra}"


def orders_sql(merchant: str | None) -> str:
    """Paid and delivered orders in the period, per merchant."""
    both = "(placed_at >= ? AND placed_at < ?) OR (delivered_at >= ? AND delivered_at < ?)"
    extra = " AND merchant_id = ?" if merchant else ""
    return (
        "SELECT merchant_id, "
        "sum(CASE WHEN placed_at >= ? AND placed_at < ? THEN 1 ELSE 0 END) AS paid_orders, "
        "sum(CASE WHEN delivered_at >= ? AND delivered_at < ? THEN 1 ELSE 0 END) "
        "AS delivered_orders "
        f"FROM {{t}}{ORDERS.name} WHERE ({both}){extra} GROUP BY merchant_id"
    )


def disputes_sql(merchant: str | None) -> str:
    """Orders with a case ruled against the merchant in the period, per merchant."""
    return (
        "SELECT merchant_id, count(DISTINCT order_ref) AS disputes_lost "
        f"FROM {{t}}{CASES.name} {_where(merchant, 'ruled_against_at')} GROUP BY merchant_id"
    )


def quality_sql(merchant: str | None) -> str:
    """Orders with a quality case refunded in the period, and those cases' refunds."""
    return (
        "SELECT merchant_id, count(DISTINCT order_ref) AS quality_refund_orders, "
        "sum(refunded_cents) AS quality_refunded_cents "
        f"FROM {{t}}{CASES.name} {_where(merchant, 'refunded_at')} "
        "AND reason_group = 'quality' GROUP BY merchant_id"
    )


def responses_sql(merchant: str | None) -> str:
    """The first answers given in the period (the durations are worked out from these)."""
    return (
        "SELECT merchant_id, opened_at, responded_at, responded_by "
        f"FROM {{t}}{CASES.name} {_where(merchant, 'responded_at')}"
    )


def _seconds(opened: Any, responded: Any) -> int:
    """Whole seconds from the opening to the answer, any fraction dropped."""
    start, end = parse_stored_time(opened), parse_stored_time(responded)
    assert start is not None and end is not None
    return (end - start) // timedelta(seconds=1)


def platform_measures(
    store: AftersalesStore,
    since: datetime,
    until: datetime,
    merchant: str | None = None,
) -> list[dict[str, Any]]:
    """One object per merchant with anything in the period: the measures and their counts."""
    if since >= until:
        raise BadInput(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    window = [store.time_param(since), store.time_param(until)]
    shop = [merchant] if merchant else []
    rows: dict[str, dict[str, Any]] = {}

    def row(merchant_id: str) -> dict[str, Any]:
        found = rows.get(merchant_id)
        if found is None:
            found = rows[merchant_id] = {
                "paid_orders": 0,
                "delivered_orders": 0,
                "disputes_lost": 0,
                "quality_refund_orders": 0,
                "quality_refunded_cents": 0,
                "durations": [],
                "by_merchant": 0,
            }
        return found

    for r in store.query(orders_sql(merchant), [*window * 4, *shop]):
        found = row(r["merchant_id"])
        found["paid_orders"] = int(r["paid_orders"])
        found["delivered_orders"] = int(r["delivered_orders"])
    for r in store.query(disputes_sql(merchant), [*window, *shop]):
        row(r["merchant_id"])["disputes_lost"] = int(r["disputes_lost"])
    for r in store.query(quality_sql(merchant), [*window, *shop]):
        found = row(r["merchant_id"])
        found["quality_refund_orders"] = int(r["quality_refund_orders"])
        found["quality_refunded_cents"] = int(r["quality_refunded_cents"] or 0)
    for r in store.query(responses_sql(merchant), [*window, *shop]):
        found = row(r["merchant_id"])
        found["durations"].append(_seconds(r["opened_at"], r["responded_at"]))
        found["by_merchant"] += r["responded_by"] == "merchant"

    result = []
    for merchant_id in sorted(rows):
        r = rows[merchant_id]
        durations: list[int] = r["durations"]
        result.append(
            {
                "merchant_id": merchant_id,
                "paid_orders": r["paid_orders"],
                "disputes_lost": r["disputes_lost"],
                "dispute_rate": measure_rate(r["disputes_lost"], r["paid_orders"]),
                "delivered_orders": r["delivered_orders"],
                "quality_refund_orders": r["quality_refund_orders"],
                "quality_refunded": money(r["quality_refunded_cents"]),
                "quality_return_rate": measure_rate(
                    r["quality_refund_orders"], r["delivered_orders"]
                ),
                "responses": len(durations),
                "answered_by_merchant": r["by_merchant"],
                "answered_by_clock": len(durations) - r["by_merchant"],
                "median_response_seconds": nearest_rank(durations, 50),
                "p90_response_seconds": nearest_rank(durations, 90),
            }
        )
    return result
