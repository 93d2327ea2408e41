"""The case index and the command record, written in the same transaction as the events: one
row per case (``aftersales_cases``: status, merchant, the deadline due), so listing cases and
finding due deadlines never replays the log, and one per command id (``aftersales_commands``),
so a retried command changes nothing. The rows, and how they are made from the aggregates and
read back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.events import (
    Act,
    Aggregate,
)
from aftersales.engine.domain.values import money_str
from aftersales.engine.storage.sql import parse_stored_time


class CaseRow(NamedTuple):
    case_id: str
    order_id: str
    merchant_id: str
    buyer_id: str
    case_type: str
    reason: str
    status: str
    amount: str
    refunded_amount: str
    due_at: datetime | None
    due_action: str | None
    opened_at: datetime
    updated_at: datetime
    version: int


class CommandRow(NamedTuple):
    command_id: str
    action: str
    target_id: str
    fingerprint: str
    version: int
    recorded_at: datetime


class Head(NamedTuple):
    """The stored event a save builds on: the store appends the save's events only if the
    aggregate's event at ``version`` is still stored, as exactly these bytes when they are
    known (else nothing is saved, as on a lost race). So an engine holding an aggregate in
    memory never writes over an event deleted or changed in the store since it read it."""

    originator_id: UUID
    version: int
    state: bytes | None


BUILT_ON_MISSING = (
    "aftersales: the event this save builds on is not in the store as it was read "
    "(deleted or changed since)"
)


def take_events(aggregates: Iterable[Aggregate], heads: list[Head]) -> list[Any]:
    """The aggregates' pending events, and in ``heads`` what those of each build on."""
    events: list[Any] = []
    for aggregate in aggregates:
        pending = aggregate.collect_events()
        if pending and pending[0].originator_version > 1:
            assert aggregate.built_on is not None
            version, state = aggregate.built_on
            heads.append(Head(aggregate.id, version, state))
        events.extend(pending)
    return events


CASE_COLUMNS = CaseRow._fields
COMMAND_COLUMNS = CommandRow._fields


def command_rows(
    command_id: str | None, action: str, target: Aggregate, fingerprint: str, act: Act
) -> list[CommandRow]:
    """The record of a command id (``action``'s on ``target``), saved with the events the
    command made (if it has one)."""
    if command_id is None:
        return []
    return [
        CommandRow(
            command_id=command_id,
            action=action,
            target_id=str(target.id),
            fingerprint=fingerprint,
            version=target.version,
            recorded_at=act.recorded_at,
        )
    ]


def case_rows(aggregates: Sequence[Aggregate]) -> list[CaseRow]:
    return [case_row(a) for a in aggregates if isinstance(a, ReturnCase)]


def case_row(case: ReturnCase) -> CaseRow:
    return CaseRow(
        case_id=str(case.id),
        order_id=case.order_id,
        merchant_id=case.merchant_id,
        buyer_id=case.buyer_id,
        case_type=case.case_type.value,
        reason=case.reason,
        status=case.status.value,
        amount=money_str(case.amount),
        refunded_amount=money_str(case.refunded_amount),
        due_at=case.due.due_at if case.due else None,
        due_action=case.due.action.value if case.due else None,
        opened_at=case.opened_at,
        updated_at=case.last_at,
        version=case.version,
    )


def _utc_iso(value: Any) -> str | None:
    parsed = parse_stored_time(value)
    return parsed.astimezone(UTC).isoformat() if parsed else None


def listed_case(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "case_id": row["case_id"],
        "order_id": row["order_id"],
        "merchant_id": row["merchant_id"],
        "buyer_id": row["buyer_id"],
        "type": row["case_type"],
        "reason": row["reason"],
        "status": row["status"],
        "amount": money_str(Decimal(str(row["amount"]))),
        "refunded_amount": money_str(Decimal(str(row["refunded_amount"]))),
        "due_at": _utc_iso(row["due_at"]),
        "due_action": row["due_action"],
        "opened_at": _utc_iso(row["opened_at"]),
        "updated_at": _utc_iso(row["updated_at"]),
        "version": int(row["version"]),
    }
