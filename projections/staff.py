"""Staff queues: who of the shop's staff has each case, and each member's figures.

``proj_staff_cases`` keeps, per case ever assigned, its member now and how and when it came to
them (engine/domain/assignment.py). ``case list --assignee`` reads it (as far as it has read
the log: the command line, the HTTP API and the desk catch it up first), and the per-member
figures join it with the dashboard's cases (``proj_dashboard_cases``): a case counts for the
member who has it now.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from aftersales.engine.application.staff_queues import ASSIGNEES_TABLE
from aftersales.engine.domain.assignment import AssignmentEvent, AssignmentStarted, CaseAssigned
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.base import Changes, Folds, Table, View, col
from aftersales.projections.dashboard import CASES as DASHBOARD_CASES
from aftersales.projections.dashboard import FINAL

ASSIGNED = Table(
    ASSIGNEES_TABLE,
    (
        col("case_id", "uuid", "key", "the case"),
        col("merchant_id", "text", "keep", "the shop"),
        col("assignee", "text", "set", "the member who has the case now"),
        col("how", "text", "set", "round_robin, rule, claim or reassign"),
        col("assigned_at", "time", "set", "when it came to them"),
        col("assigned_by", "text", "set", "who gave it to them (assignment: the system)"),
        col("assignments", "int", "add", "how many times the case was assigned"),
    ),
    indexes=(("assignee",), ("merchant_id", "assignee")),
    doc="One row per case assigned to a member of its shop's staff.",
)

folds = Folds()


def _assigned(e: AssignmentEvent, changes: Changes) -> dict[str, Any]:
    row = changes.row(ASSIGNED, e.case_id)
    row["assignee"] = e.member
    row["how"] = e.how.value
    row["assigned_at"] = e.at
    row["assigned_by"] = e.actor.id
    row["assignments"] = (row.get("assignments") or 0) + 1
    return row


@folds.on(AssignmentStarted)
def _started(e: AssignmentStarted, changes: Changes, seq: int) -> None:
    row = _assigned(e, changes)
    row["merchant_id"] = e.merchant_id


@folds.on(CaseAssigned)
def _reassigned(e: CaseAssigned, changes: Changes, seq: int) -> None:
    _assigned(e, changes)


class Staff(View):
    name = "staff"
    tables = (ASSIGNED,)
    folds = folds
    doc = __doc__ or ""


# The per-member figures: read from the tables only ---------------------------------------------


def _median_seconds(values: list[float]) -> int | None:
    return round(statistics.median(values)) if values else None


def _dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def staff_figures(
    store: AftersalesStore,
    merchant: str | None,
    since: datetime,
    until: datetime,
    now: datetime,
) -> list[dict[str, Any]]:
    """Per member (the one who has each case now), by shop and member: the cases open now and
    of those the overdue (a deadline passed by ``now``); of the cases opened in [since, until),
    how many, the median time from the opening to the merchant's first action (seconds; not
    on a case the system approved first), and
    the timeouts (the system decided because the merchant did not: approved, refunded, or
    recorded a missed reship)."""
    final = ", ".join("?" for _ in FINAL)
    where, params = ("WHERE s.merchant_id = ?", [merchant]) if merchant else ("", [])
    rows = store.query(
        f"SELECT s.merchant_id, s.assignee, d.status, d.due_at, d.opened_at, "
        f"d.first_response_at, d.auto_approved_at, d.auto_refunded_at, d.reship_overdue_at, "
        f"CASE WHEN d.status IN ({final}) THEN 0 ELSE 1 END AS is_open "
        f"FROM {{t}}{ASSIGNED.name} s JOIN {{t}}{DASHBOARD_CASES.name} d "
        f"ON d.case_id = s.case_id {where} ORDER BY s.merchant_id, s.assignee",
        [*FINAL, *params],
    )
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    waits: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        key = (row["merchant_id"], row["assignee"])
        member = figures.setdefault(
            key,
            {
                "merchant_id": key[0],
                "member": key[1],
                "open": 0,
                "overdue": 0,
                "opened": 0,
                "median_first_response_seconds": None,
                "timeouts": 0,
            },
        )
        due_at = _dt(row["due_at"])
        if int(row["is_open"]):
            member["open"] += 1
            if due_at is not None and due_at <= now:
                member["overdue"] += 1
        opened_at = _dt(row["opened_at"])
        if opened_at is None or not since <= opened_at < until:
            continue
        member["opened"] += 1
        first = _dt(row["first_response_at"])
        approved = _dt(row["auto_approved_at"])
        # As the dashboard counts it: a case the system approved first is a timeout, not a
        # response.
        if first is not None and (approved is None or first < approved):
            waits.setdefault(key, []).append((first - opened_at).total_seconds())
        if any(row[k] is not None for k in ("auto_approved_at", "auto_refunded_at")) or (
            row["reship_overdue_at"] is not None
        ):
            member["timeouts"] += 1
    for key, member in figures.items():
        member["median_first_response_seconds"] = _median_seconds(waits.get(key, []))
    return list(figures.values())
