"""Quarantine: stored events a person decided to set aside (never deleted), and why."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import aftersales.engine.domain.case
import aftersales.engine.domain.order  # noqa: F401
from aftersales.engine.domain.errors import BadInput, NotAllowed, NotFound
from aftersales.engine.domain.events import (
    Unreadable,
)
from aftersales.engine.integrity.reading import checked, read_rows
from aftersales.engine.storage.sql import parse_stored_time
from aftersales.engine.storage.store import AftersalesStore

# Quarantine -------------------------------------------------------------------------------------


def quarantined_positions(store: AftersalesStore) -> frozenset[int]:
    """The positions the operator quarantined (a handful: read whole)."""
    return frozenset(
        int(r["position"]) for r in store.query("SELECT position FROM {t}aftersales_quarantine")
    )


def list_quarantine(
    store: AftersalesStore, originator_id: UUID | None = None
) -> list[dict[str, Any]]:
    """Every quarantine decision (or those on one aggregate's events), in position order."""
    where = " WHERE originator_id = ?" if originator_id is not None else ""
    params = (str(originator_id),) if originator_id is not None else ()
    rows = store.query(
        "SELECT position, originator_id, originator_version, topic, why, reason, decided_by, "
        f"decided_at FROM {{t}}aftersales_quarantine{where} ORDER BY position",
        params,
    )
    return [_decision(row) for row in rows]


def _decision(row: dict[str, Any]) -> dict[str, Any]:
    decided_at = parse_stored_time(row["decided_at"])
    return {
        "position": int(row["position"]),
        "originator_id": str(row["originator_id"]),
        "version": int(row["originator_version"]),
        "event": str(row["topic"]).rpartition(":")[2],
        "why": row["why"],
        "reason": row["reason"],
        "decided_by": row["decided_by"],
        "decided_at": decided_at.isoformat() if decided_at else None,
    }


def quarantine(
    store: AftersalesStore, position: int, reason: str, decided_by: str, decided_at: datetime
) -> dict[str, Any]:
    """Record the operator's decision to leave the event at ``position`` out of projections.
    Refused (and nothing recorded) unless that event exists and does fail its checks, or if it
    is quarantined already."""
    if not reason.strip():
        raise BadInput("reason is required: say why this event is left out")
    if not decided_by.strip():
        raise BadInput("by is required: say who decided")
    rows = read_rows(store, position - 1, position, 1, None)
    if not rows or rows[0].position != position:
        raise NotFound(f"no stored event at position {position}")
    row = rows[0]
    for earlier in list_quarantine(store, row.originator_id):
        if earlier["position"] == position:
            raise NotAllowed(
                f"the event at position {position} was quarantined already, by "
                f"{earlier['decided_by']} at {earlier['decided_at']}: {earlier['reason']}"
            )
    try:
        checked(store, row, quarantined_positions(store))
    except Unreadable as exc:
        why = str(exc)
    else:
        raise NotAllowed(
            f"the event at position {position} ({row.name}, version {row.version} of "
            f"{store.describe(row.originator_id)}) reads and verifies: only an event that "
            "cannot be used may be quarantined"
        )
    values = (
        position,
        str(row.originator_id),
        row.version,
        row.topic,
        why,
        reason.strip(),
        decided_by.strip(),
        store.time_param(decided_at),
    )
    store.execute(
        "INSERT INTO {t}aftersales_quarantine (position, originator_id, originator_version, "
        "topic, why, reason, decided_by, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        values,
    )
    return _decision(
        dict(
            zip(
                (
                    "position",
                    "originator_id",
                    "originator_version",
                    "topic",
                    "why",
                    "reason",
                    "decided_by",
                    "decided_at",
                ),
                (*values[:7], decided_at),
                strict=True,
            )
        )
    )
