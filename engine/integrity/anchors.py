"""An audit's events anchored in the latest checkpoint: each one's inclusion in the signed tree."""

from __future__ import annotations

from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)

from aftersales.engine.integrity.audit_checks import Audit, Problem
from aftersales.engine.integrity.checkpoint_verify import Stored, check_events
from aftersales.engine.storage.store import AftersalesStore

# An audit's events, anchored -------------------------------------------------------------------


def audited_events(audit: Audit) -> list[Stored]:
    """The case's stored events and its order's, as a checkpoint check takes them."""
    rows = [("case", e.stored) for e in audit.entries]
    rows += [("order", s) for s in audit.order_events]
    return [
        (
            aggregate,
            s.originator_id if isinstance(s.originator_id, UUID) else UUID(str(s.originator_id)),
            s.originator_version,
            s.topic,
            bytes(s.state),
        )
        for aggregate, s in rows
    ]


def anchor(store: AftersalesStore, audit: Audit, public: Ed25519PublicKey | None) -> None:
    """Check an audit's events against the latest checkpoint and add what it finds to the
    audit: a problem for each event that is not the one signed (the case's own and its
    order's), and a line for the log as a whole (events deleted under it, a bad signature).
    Without a checkpoint in the store and without a key, the audit is left as it was."""
    check = check_events(store, audited_events(audit), public)
    if check.head is None and public is None:
        return
    for f in check.findings:
        if f.aggregate == "case":
            audit.problems.append(Problem("checkpoint", f.version, f.message))
        else:
            audit.problems.append(Problem("checkpoint", None, f.message, f.version))
    audit.problems += [Problem("checkpoint", None, m) for m in check.whole]
    audit.checkpoint = check.to_json()
