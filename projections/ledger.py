"""The money ledger: every movement of money or liability, and each merchant's totals.

``proj_ledger_entries`` has one row per money event: a buyer refunded by the merchant, a buyer
refunded by the platform first (owed by the merchant), freight the merchant bears, a late-shipment
penalty, an instant refund the platform advanced put on the buyer or borne by the platform
(``advance_reassigned``: the merchant no longer owes it). ``proj_ledger_cases`` names each case's
merchant. The totals are sums over the entries,
so they add up to the events by construction; money is kept in whole cents.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aftersales.engine.domain.case_events import (
    AdvanceReassigned,
    CaseOpened,
    CaseRefunded,
    FreightCharged,
    LateShipmentPenalty,
)
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.base import Changes, Folds, Table, View, cents, col, money

CASES = Table(
    "proj_ledger_cases",
    (
        col("case_id", "uuid", "key", "the case"),
        col("merchant_id", "text", "keep", "the shop that owes what its cases cost"),
        col("order_id", "text", "keep", "the order"),
    ),
    indexes=(("merchant_id",),),
    doc="Each case's merchant.",
)

ENTRIES = Table(
    "proj_ledger_entries",
    (
        col("case_id", "uuid", "key", "the case"),
        col("case_version", "int", "key", "the money event's version in the case"),
        col("at", "time", "keep", "when the money moved"),
        col(
            "kind",
            "text",
            "keep",
            "refund, freight, late_shipment_penalty or advance_reassigned",
        ),
        col("amount_cents", "int", "keep", "the amount, in cents"),
        col("payer", "text", "keep", "who paid: merchant, platform (an advance: its new debtor)"),
        col("payee", "text", "keep", "who received it: the buyer (an advance: the merchant)"),
        col("owed_by", "text", "keep", "who bears it in the end"),
    ),
    indexes=(("at",),),
    doc="One row per movement of money or liability.",
)

TOTALS = (
    "refunded_by_merchant",
    "advanced_by_platform",
    "owed_to_platform",
    "freight",
    "penalties",
    "total",
)


folds = Folds()


@folds.on(CaseOpened)
def _opened(e: CaseOpened, changes: Changes, seq: int) -> None:
    row = changes.row(CASES, e.originator_id)
    row["merchant_id"] = e.merchant_id
    row["order_id"] = e.order_id


Money = CaseRefunded | FreightCharged | LateShipmentPenalty | AdvanceReassigned


def _entry(e: Money, kind: str, payer: str, payee: str, owed_by: str, changes: Changes) -> None:
    entry = changes.row(ENTRIES, e.originator_id, e.originator_version)
    entry.update(
        at=e.at, kind=kind, amount_cents=cents(e.amount), payer=payer, payee=payee, owed_by=owed_by
    )


@folds.on(CaseRefunded)
def _refunded(e: CaseRefunded, changes: Changes, seq: int) -> None:
    _entry(e, "refund", e.paid_by.value, "buyer", e.owed_by.value, changes)


@folds.on(FreightCharged, LateShipmentPenalty)
def _charged(e: FreightCharged | LateShipmentPenalty, changes: Changes, seq: int) -> None:
    kind = "freight" if isinstance(e, FreightCharged) else "late_shipment_penalty"
    _entry(e, kind, e.payer.value, e.payee.value, e.payer.value, changes)


@folds.on(AdvanceReassigned)
def _reassigned(e: AdvanceReassigned, changes: Changes, seq: int) -> None:
    """The advance's new debtor relieves the merchant of it."""
    _entry(e, "advance_reassigned", e.owed_by.value, "merchant", e.owed_by.value, changes)


class Ledger(View):
    name = "ledger"
    tables = (CASES, ENTRIES)
    folds = folds
    doc = __doc__ or ""


# An advance no longer the merchant's to repay comes off what it owes.
_RELIEVED = "WHEN e.kind = 'advance_reassigned' THEN -e.amount_cents"


def ledger(
    store: AftersalesStore,
    merchant: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[dict[str, Any]]:
    """Each merchant's totals over the entries in [since, until)."""
    where: list[str] = []
    params: list[Any] = []
    if merchant:
        where.append("c.merchant_id = ?")
        params.append(merchant)
    if since is not None:
        where.append("e.at >= ?")
        params.append(store.time_param(since))
    if until is not None:
        where.append("e.at < ?")
        params.append(store.time_param(until))
    sql = (
        "SELECT c.merchant_id AS merchant_id, "
        "sum(CASE WHEN e.kind = 'refund' AND e.payer = 'merchant' THEN e.amount_cents ELSE 0 END)"
        " AS refunded_by_merchant, "
        "sum(CASE WHEN e.kind = 'refund' AND e.payer = 'platform' THEN e.amount_cents ELSE 0 END)"
        " AS advanced_by_platform, "
        "sum(CASE WHEN e.payer = 'platform' AND e.owed_by = 'merchant' THEN e.amount_cents "
        f"{_RELIEVED} ELSE 0 END) AS owed_to_platform, "
        "sum(CASE WHEN e.kind = 'freight' AND e.payer = 'merchant' THEN e.amount_cents "
        "ELSE 0 END) AS freight, "
        "sum(CASE WHEN e.kind = 'late_shipment_penalty' THEN e.amount_cents ELSE 0 END)"
        " AS penalties, "
        f"sum(CASE WHEN e.owed_by = 'merchant' THEN e.amount_cents {_RELIEVED} ELSE 0 END)"
        " AS total, "
        "count(*) AS entries "
        f"FROM {{t}}{ENTRIES.name} e JOIN {{t}}{CASES.name} c ON c.case_id = e.case_id"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " GROUP BY c.merchant_id ORDER BY c.merchant_id"
    return [
        {
            "merchant_id": r["merchant_id"],
            **{k: money(int(r[k] or 0)) for k in TOTALS},
            "entries": int(r["entries"]),
        }
        for r in store.query(sql, params)
    ]
