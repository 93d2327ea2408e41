"""An audit as output: the timeline's rows, and the dispute bundle exported for a third party
(scripts/verify_bundle.py checks one with the standard library only).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from aftersales.engine.domain.case_events import (
    DeadlineFired,
)
from aftersales.engine.domain.policy import Policy
from aftersales.engine.integrity.audit_checks import Audit, read_history
from aftersales.engine.integrity.replay import replay
from aftersales.engine.storage.store import AftersalesStore

BUNDLE_FORMAT = "aftersales-dispute-bundle/1"


# Output -----------------------------------------------------------------------------------------


def policy_versions(audit: Audit) -> list[str]:
    """The policy versions recorded on the case's events (deadlines set and fired)."""
    seen: list[str] = []
    for e in audit.entries:
        ev = e.case_event
        if ev is None:
            continue
        for d in (ev.due, ev.fired if isinstance(ev, DeadlineFired) else None):
            if d is not None and d.policy_version not in seen:
                seen.append(d.policy_version)
    return seen


def stored_json(stored: StoredEvent) -> dict[str, Any]:
    """A stored event for a bundle: the bytes kept exactly, as the stored JSON text (or, for
    bytes that are not even UTF-8, in hexadecimal)."""
    kept: dict[str, Any] = {
        "originator_id": str(stored.originator_id),
        "originator_version": stored.originator_version,
        "topic": stored.topic,
    }
    try:
        kept["state"] = bytes(stored.state).decode("utf-8")
    except UnicodeDecodeError:
        kept["state_hex"] = bytes(stored.state).hex()
    return kept


def bundle(audit: Audit, policy: Policy, exported_at: datetime) -> dict[str, Any]:
    """The dispute bundle: the events as stored, the policy in force, the replayed states."""
    versions = policy_versions(audit)
    return {
        "format": BUNDLE_FORMAT,
        "case_id": str(audit.case_id),
        "exported_at": exported_at.isoformat(),
        "head_hash": audit.head_hash,
        "events": [stored_json(e.stored) for e in audit.entries],
        "order_events": [stored_json(s) for s in audit.order_events],
        "policy": {
            "name": policy.name,
            "version": policy.version,
            "content": policy.model_dump(mode="json"),
            "versions_on_events": versions,
            "note": (
                "the engine's policy at export; every deadline on these events was set under it"
                if versions in ([], [policy.version])
                else "the engine's policy at export; deadlines on these events were set under "
                "the versions listed, whose content is not kept in the store"
            ),
        },
        "states": audit.states,
        "audit": audit.to_json(),
    }


def bundle_bytes(content: dict[str, Any]) -> bytes:
    """The one form a bundle is written in; the verifier checks the file is in it."""
    return (json.dumps(content, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def audit_case(
    store: AftersalesStore,
    case_id: str | UUID,
    *,
    as_of: datetime | None = None,
    version: int | None = None,
    with_states: bool = False,
) -> Audit:
    """Read and replay one case (what `aftersales audit` does)."""
    history = read_history(store, case_id)
    return replay(history, store.mapper, as_of=as_of, version=version, with_states=with_states)
