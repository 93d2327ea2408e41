"""Replaying one case for an auditor from its read history: the timeline, the case as of a
time, and every check of engine/integrity/audit_checks.py over it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent

from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.case_events import (
    CaseEvent,
    CaseOpened,
)
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.events import Deadline, Event
from aftersales.engine.integrity.audit_checks import (
    Audit,
    Entry,
    History,
    Problem,
    _sorted,
    check_chain,
    check_claims,
    check_index,
    check_order,
    event_name,
    one_line,
    plain_json,
    replay_checks,
)

# Replay -----------------------------------------------------------------------------------------


def replay(
    history: History,
    mapper: Mapper[UUID],
    *,
    as_of: datetime | None = None,
    version: int | None = None,
    with_states: bool = False,
) -> Audit:
    """Rebuild the case from its stored events (all, those up to ``as_of`` by when they
    happened, or those up to ``version``) and verify them."""
    if as_of is not None and version is not None:
        raise BadInput("a case is replayed as of a time or up to a version, not both")
    if as_of is not None and as_of.tzinfo is None:
        raise BadInput("the time to replay the case as of has no time zone")
    entries = [_read(s, mapper) for s in history.events]
    whole = as_of is None and version is None
    if version is not None:
        last = entries[-1].version
        if version < 1 or version > last:
            raise BadInput(f"no version {version}: case {history.case_id} has versions 1 to {last}")
        entries = [e for e in entries if e.version <= version]
    elif as_of is not None:
        entries = _up_to(entries, as_of)

    problems: list[Problem] = []
    problems += check_chain([e.stored for e in entries])
    for e in entries:
        if e.error is not None:
            problems.append(Problem("read", e.version, f"version {e.version}: {e.error}"))

    case, states = _rebuild(entries, problems, with_states)
    events = [e.case_event for e in entries if e.case_event is not None]
    problems += replay_checks(events, whole=version is None)
    problems += check_claims(events)

    order_entries = [_read_order(s, mapper) for s in history.order_events]
    problems += check_order(history, order_entries, events, whole=whole)
    if whole:
        problems += check_index(history.index_row, entries)

    state = case.to_json() if case is not None else None
    audit = Audit(
        case_id=history.case_id,
        entries=entries,
        state=state,
        states=states,
        problems=_sorted(problems),
        order_entries=order_entries,
        order_events=history.order_events,
    )
    if not whole:
        audit.as_of = _as_of_view(entries, as_of, version)
    return audit


def _up_to(entries: list[Entry], as_of: datetime) -> list[Entry]:
    """The events that had happened by ``as_of``: the prefix of the history up to it."""
    kept = []
    for e in entries:
        if e.event is not None and e.event.at > as_of:
            break
        kept.append(e)
    return kept


def _as_of_view(
    entries: list[Entry], as_of: datetime | None, version: int | None
) -> dict[str, Any]:
    due: Deadline | None = None
    for e in entries:
        if e.case_event is not None:
            due = e.case_event.due
    return {
        "time": plain_json(as_of) if as_of is not None else None,
        "version": entries[-1].version if entries else 0,
        "deadline": plain_json(due) if due is not None else None,
        # The deadline had fallen due but nobody (not even the clock) had acted yet.
        "deadline_passed": (due.due_at <= as_of) if (due is not None and as_of) else None,
        "requested_version": version,
    }


def _read(stored: StoredEvent, mapper: Mapper[UUID]) -> Entry:
    try:
        event = mapper.to_domain_event(stored)
    except Exception as exc:  # a tampered or foreign event: report it, never crash
        return Entry(stored, None, f"cannot be read as {event_name(stored)}: {one_line(exc)}")
    if not isinstance(event, CaseEvent):
        return Entry(stored, None, f"{event_name(stored)} is not a case event")
    return Entry(stored, event)


def _read_order(stored: StoredEvent, mapper: Mapper[UUID]) -> Entry:
    try:
        event = mapper.to_domain_event(stored)
    except Exception as exc:
        return Entry(stored, None, f"cannot be read as {event_name(stored)}: {one_line(exc)}")
    if not isinstance(event, Event):
        return Entry(stored, None, f"{event_name(stored)} is not an event")
    return Entry(stored, event)


def _rebuild(
    entries: list[Entry], problems: list[Problem], with_states: bool
) -> tuple[ReturnCase | None, list[dict[str, Any]]]:
    """Apply the events as the library does; where the sequence is broken (a missing or
    unreadable event), carry on with the next one so the rest of the history is still shown."""
    case: ReturnCase | None = None
    states: list[dict[str, Any]] = []
    for e in entries:
        event = e.event
        if event is None:
            continue
        try:
            if case is None:
                if not isinstance(event, CaseOpened):
                    continue  # nothing to build on; the chain check names what is missing
                built = event.mutate(None)
                assert isinstance(built, ReturnCase)
                case = built
            elif isinstance(event, CaseOpened):
                continue  # opened again: the transition check names it
            elif event.originator_version == case.version + 1:
                event.mutate(case)
            else:  # a gap the chain check reports: apply without the library's sequence check
                event.apply(case)
                case.version = event.originator_version
        except Exception as exc:
            problems.append(
                Problem("read", e.version, f"version {e.version}: cannot be applied: {exc}")
            )
            continue
        if with_states:
            states.append({"version": e.version, "state": case.to_json()})
    return case, states
