"""Return-rate metrics: delivered orders, their lines, the cases on them and what was refunded.

The cohort of a report is the orders delivered in [since, until). Each order counts once per group
(merchant), or once in each group it has a line in (sku, category) with that group's share of the
GMV; a case counts in a group if it concerns a line of that group, with the refund the engine
allocated to those lines. By reason, each order counts under the reason group of its first case.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from aftersales.engine.domain.case_events import (
    CaseAutoApproved,
    CaseAutoRefunded,
    CaseEscalated,
    CaseOpened,
    DeadlineFired,
    ReplacementOverdue,
    ReshipOverdue,
)
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.order_events import (
    CaseRefundBooked,
    CaseUnlinked,
    OrderDelivered,
    OrderPlaced,
)
from aftersales.engine.domain.values import reason_group
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.base import Changes, Folds, Table, View, bigger, cents, col, keep, money

ORDERS = Table(
    "proj_rates_orders",
    (
        col("order_ref", "uuid", "key", "the order's stored aggregate id"),
        col("order_id", "text", "keep", "the order system's id"),
        col("merchant_id", "text", "keep", "the shop"),
        col("placed_at", "time", "keep", "when the order was placed"),
        col("delivered_at", "time", "keep", "when it was delivered (null until then)"),
        col("gmv_cents", "int", "keep", "what the buyer paid, in cents"),
    ),
    indexes=(("delivered_at",), ("merchant_id", "delivered_at")),
    doc="One row per order.",
)

LINES = Table(
    "proj_rates_lines",
    (
        col("order_ref", "uuid", "key", "the order"),
        col("sku", "text", "key", "the line's SKU"),
        col("merchant_id", "text", "keep", "the shop"),
        col("category", "text", "keep", "the SKU's category, or null"),
        col("value_cents", "int", "keep", "quantity x unit price, in cents"),
    ),
    doc="One row per order line.",
)

CASES = Table(
    "proj_rates_cases",
    (
        col("case_id", "uuid", "key", "the case"),
        col("order_ref", "uuid", "keep", "the order it is on"),
        col("merchant_id", "text", "keep", "the shop"),
        col("reason", "text", "keep", "group.detail"),
        col("reason_group", "text", "keep", "quality, logistics, buyer, missing_items, ..."),
        col("opened_at", "time", "keep", "when it was opened"),
        col("opened_seq", "int", "keep", "its place in the log: the first case has the lowest"),
        col("escalated", "int", "max", "1 if the platform was asked to step in"),
        col("timed_out", "int", "max", "1 if the system decided because the merchant did not"),
    ),
    indexes=(("order_ref",),),
    doc="One row per case.",
)

CASE_LINES = Table(
    "proj_rates_case_lines",
    (
        col("case_id", "uuid", "key", "the case"),
        col("sku", "text", "key", "a line it concerns"),
        col("order_ref", "uuid", "keep", "the order"),
        col("merchant_id", "text", "keep", "the shop"),
        col("category", "text", "keep", "the SKU's category, or null"),
        col("value_cents", "int", "keep", "what the case's units of the line cost, in cents"),
        col("refunded_cents", "int", "add", "refunded on this line by this case, in cents"),
    ),
    indexes=(("order_ref",),),
    doc="One row per line a case concerns.",
)

folds = Folds()


@folds.on(OrderPlaced)
def _placed(e: OrderPlaced, changes: Changes, seq: int) -> None:
    order = changes.row(ORDERS, e.originator_id)
    order["order_id"] = e.order_id
    order["merchant_id"] = e.merchant_id
    order["placed_at"] = e.at
    total = 0
    for line in e.lines:
        value = cents(line.unit_price * line.quantity)
        total += value
        row = changes.row(LINES, e.originator_id, line.sku)
        row["merchant_id"] = e.merchant_id
        row["category"] = line.category
        row["value_cents"] = value
    order["gmv_cents"] = total


@folds.on(OrderDelivered)
def _delivered(e: OrderDelivered, changes: Changes, seq: int) -> None:
    keep(changes.row(ORDERS, e.originator_id), "delivered_at", e.at)


@folds.on(CaseOpened)
def _opened(e: CaseOpened, changes: Changes, seq: int) -> None:
    case = changes.row(CASES, e.originator_id)
    case["order_ref"] = e.order_ref
    case["merchant_id"] = e.merchant_id
    case["reason"] = e.reason
    case["reason_group"] = reason_group(e.reason).value
    case["opened_at"] = e.at
    case["opened_seq"] = seq
    bigger(case, "escalated", 0)
    bigger(case, "timed_out", 0)
    for line in e.lines:
        row = changes.row(CASE_LINES, e.originator_id, line.sku)
        row["order_ref"] = e.order_ref
        row["merchant_id"] = e.merchant_id
        row["category"] = line.category
        row["value_cents"] = cents(line.unit_price * line.quantity)


@folds.on(CaseUnlinked, CaseRefundBooked)
def _unlinked(e: CaseUnlinked | CaseRefundBooked, changes: Changes, seq: int) -> None:
    """The order's record of what the case refunded, line by line."""
    for sku, amount in e.refunded.items():
        changes.row(CASE_LINES, e.case_id, sku)["refunded_cents"] += cents(amount)


@folds.on(CaseEscalated)
def _escalated(e: CaseEscalated, changes: Changes, seq: int) -> None:
    bigger(changes.row(CASES, e.originator_id), "escalated", 1)


# The merchant's timeouts: the system decided because the merchant did not act in time.
@folds.on(CaseAutoApproved, CaseAutoRefunded, ReshipOverdue, ReplacementOverdue)
def _timed_out(e: DeadlineFired, changes: Changes, seq: int) -> None:
    bigger(changes.row(CASES, e.originator_id), "timed_out", 1)


class ReturnRates(View):
    name = "return_rates"
    tables = (ORDERS, LINES, CASES, CASE_LINES)
    folds = folds
    doc = __doc__ or ""


# The report: read from the tables only ---------------------------------------------------------

GROUPINGS = ("merchant", "sku", "category", "reason")
NO_CATEGORY = "(none)"
_KEY = {
    "merchant": "{a}.merchant_id",
    "sku": "{a}.sku",
    "category": f"COALESCE({{a}}.category, '{NO_CATEGORY}')",
}
FOUR = Decimal("0.0001")


def rate(numerator: int, denominator: int) -> float:
    """A rate as a decimal rounded half up to 4 places (0 when there is nothing to divide by)."""
    if not denominator:
        return 0.0
    return float((Decimal(numerator) / Decimal(denominator)).quantize(FOUR, ROUND_HALF_UP))


def _cohort(merchant: str | None) -> str:
    extra = " AND o.merchant_id = ?" if merchant else ""
    return (
        f"cohort AS (SELECT o.order_ref FROM {{t}}{ORDERS.name} o "
        f"WHERE o.delivered_at >= ? AND o.delivered_at < ?{extra})"
    )


def group_sql(by: str, merchant: str | None) -> str:
    """The query behind ``report return-rates --by merchant|sku|category`` (in docs/reports.md)."""
    kl, kc = _KEY[by].format(a="l"), _KEY[by].format(a="cl")
    return f"""
WITH {_cohort(merchant)},
og AS (
  SELECT l.order_ref, {kl} AS key, sum(l.value_cents) AS gmv_cents
  FROM {{t}}{LINES.name} l JOIN cohort ON cohort.order_ref = l.order_ref
  GROUP BY l.order_ref, {kl}),
cg AS (
  SELECT cl.order_ref, {kc} AS key, cl.case_id, sum(cl.refunded_cents) AS refunded_cents
  FROM {{t}}{CASE_LINES.name} cl JOIN cohort ON cohort.order_ref = cl.order_ref
  GROUP BY cl.order_ref, {kc}, cl.case_id),
ranked AS (
  SELECT cg.order_ref, cg.key, cg.refunded_cents, c.reason_group, c.escalated, c.timed_out,
         row_number() OVER (PARTITION BY cg.order_ref, cg.key ORDER BY c.opened_seq) AS n
  FROM cg JOIN {{t}}{CASES.name} c ON c.case_id = cg.case_id),
per AS (
  SELECT order_ref, key, count(*) AS cases, sum(refunded_cents) AS refunded_cents,
         max(escalated) AS disputed, sum(timed_out) AS timeouts,
         max(CASE WHEN n = 1 AND reason_group = 'quality' THEN 1 ELSE 0 END) AS quality
  FROM ranked GROUP BY order_ref, key)
SELECT og.key, count(*) AS orders, sum(og.gmv_cents) AS gmv_cents,
       coalesce(sum(per.cases), 0) AS cases, count(per.order_ref) AS orders_with_cases,
       coalesce(sum(per.refunded_cents), 0) AS refunded_cents,
       coalesce(sum(per.quality), 0) AS quality_orders,
       coalesce(sum(per.disputed), 0) AS disputed_orders,
       coalesce(sum(per.timeouts), 0) AS timeouts
FROM og LEFT JOIN per ON per.order_ref = og.order_ref AND per.key = og.key
GROUP BY og.key ORDER BY og.key"""


def reason_sql(merchant: str | None) -> str:
    """The query behind ``report return-rates --by reason`` (in docs/reports.md)."""
    return f"""
WITH {_cohort(merchant)},
totals AS (
  SELECT count(*) AS orders, coalesce(sum(o.gmv_cents), 0) AS gmv_cents
  FROM {{t}}{ORDERS.name} o JOIN cohort ON cohort.order_ref = o.order_ref),
refunds AS (
  SELECT cl.case_id, sum(cl.refunded_cents) AS refunded_cents
  FROM {{t}}{CASE_LINES.name} cl JOIN cohort ON cohort.order_ref = cl.order_ref
  GROUP BY cl.case_id),
ranked AS (
  SELECT c.order_ref, c.reason_group, c.escalated, c.timed_out,
         coalesce(r.refunded_cents, 0) AS refunded_cents,
         row_number() OVER (PARTITION BY c.order_ref ORDER BY c.opened_seq) AS n
  FROM {{t}}{CASES.name} c JOIN cohort ON cohort.order_ref = c.order_ref
  LEFT JOIN refunds r ON r.case_id = c.case_id),
per AS (
  SELECT order_ref, max(CASE WHEN n = 1 THEN reason_group END) AS key, count(*) AS cases,
         sum(refunded_cents) AS refunded_cents, max(escalated) AS disputed,
         sum(timed_out) AS timeouts
  FROM ranked GROUP BY order_ref)
SELECT per.key, totals.orders, totals.gmv_cents, sum(per.cases) AS cases,
       count(*) AS orders_with_cases, sum(per.refunded_cents) AS refunded_cents,
       sum(CASE WHEN per.key = 'quality' THEN 1 ELSE 0 END) AS quality_orders,
       sum(per.disputed) AS disputed_orders, sum(per.timeouts) AS timeouts
FROM per CROSS JOIN totals
GROUP BY per.key, totals.orders, totals.gmv_cents ORDER BY per.key"""


def return_rates(
    store: AftersalesStore,
    by: str,
    since: datetime,
    until: datetime,
    merchant: str | None = None,
) -> list[dict[str, Any]]:
    """One object per group with the counts and the rates the platforms watch."""
    if by not in GROUPINGS:
        raise BadInput(f"--by {by!r} is not one of {'|'.join(GROUPINGS)}")
    if since >= until:
        raise BadInput(f"--since {since.isoformat()} is not before --until {until.isoformat()}")
    sql = reason_sql(merchant) if by == "reason" else group_sql(by, merchant)
    params: list[Any] = [store.time_param(since), store.time_param(until)]
    if merchant:
        params.append(merchant)
    result = []
    for r in store.query(sql, params):
        orders, gmv, refunded = int(r["orders"]), int(r["gmv_cents"]), int(r["refunded_cents"])
        with_cases = int(r["orders_with_cases"])
        result.append(
            {
                "key": r["key"],
                "orders": orders,
                "gmv": money(gmv),
                "cases": int(r["cases"]),
                "orders_with_cases": with_cases,
                "return_rate": rate(with_cases, orders),
                "refunded_amount": money(refunded),
                "refund_rate": rate(refunded, gmv),
                "quality_return_rate": rate(int(r["quality_orders"]), orders),
                "dispute_rate": rate(int(r["disputed_orders"]), orders),
                "timeouts": int(r["timeouts"]),
            }
        )
    return result
