"""Replaying one case for an auditor: the timeline, the case as of a time, verification, export.

Reading is one step (`read_history`: the case's stored events, its order's stored events and its
index row, through the library's recorder); everything after it is pure (`replay`), so the same
stored bytes give the same answer on either backend and under any clock.

Verification works on the stored bytes, never on re-serialised objects:

- the hash chain: each stored event's JSON is in the form the store writes (so any changed byte,
  even a space, shows), its hash is sha256 over that content, its id and version, chained to the
  previous event's hash; versions run 1, 2, 3 ... with none missing;
- the transitions: each action was allowed from the status the case stood in (`ALLOWED_FROM`,
  the same table the engine enforces), led to a status that action can lead to, and the
  consequences recorded with it (the refund of an approved refund-only case, say) are there;
  these tables are all derived from the one transition table, engine/domain/transitions.py;
- the deadlines: every system action fired the deadline then running, no earlier than it fell due;
  an action that leaves the status as it was leaves the deadline too, but for the merchant's one
  extension of its receipt window, which moves the running deadline later by the hours it records;
- the claims: every escalation's claim fits its case (`claim_misfit`: missing items and wrong item
  for cases opened for them, an unjustified rejection for a case escalated from `rejected`), and a
  missing-items ruling pays no more than the case's lines are worth (a history written before
  these rules is reported, never rewritten);
- the money: the amount asked matches what was paid for the order's lines (less earlier cases'
  refunds), offers and refunds never exceed the amount asked (refunds not the amount of an offer
  the buyer accepted either), the order's ledger agrees with the case, and no line of the order
  was ever refunded beyond what was paid for it;
- the index: the case's row in ``aftersales_cases`` names the last stored version and status, so a
  deleted last event shows too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from pydantic import BaseModel

from aftersales.engine.domain.case import HOLDING_STATUSES, case_uuid
from aftersales.engine.domain.case_events import (
    EVENT_CLASSES,
    CaseEscalated,
    CaseEvent,
    CaseOpened,
    CaseRefunded,
    CaseRuled,
)
from aftersales.engine.domain.errors import NotFound
from aftersales.engine.domain.events import GENESIS_HASH, Event, chain_hash
from aftersales.engine.domain.invariants import CaseReplay
from aftersales.engine.domain.order import Order, lines_worth
from aftersales.engine.domain.order_events import BOOKS_REFUNDS, CaseLinked, OrderPlaced
from aftersales.engine.domain.transitions import bind, claim_misfit
from aftersales.engine.domain.values import CENT, ZERO, Claim, Party, Status, money_str
from aftersales.engine.storage.store import AftersalesStore

S = Status


# The transition table's audit tables (engine/domain/transitions.py), with the event classes for the
# names there: which action each event records, the statuses each may leave the case in, the
# events one action records after its first in the same command (the refund an approval, a
# receipt, a ruling or a deadline makes, the escalation of goods received not as sent, the
# freight a ruling charges, the penalty for a missed reship) and the one a status calls for.
_TABLES = bind(EVENT_CLASSES)
ACTION_OF: Mapping[type[CaseEvent], str] = _TABLES.action_of
LEADS_TO: Mapping[type[CaseEvent], frozenset[Status]] = _TABLES.leads_to
CONSEQUENCES: Mapping[type[CaseEvent], frozenset[type[CaseEvent]]] = _TABLES.consequences
REQUIRED_CONSEQUENCE: Mapping[Status, type[CaseEvent]] = _TABLES.required_consequence
ADVANCE_REQUIRED: Mapping[Status, type[CaseEvent]] = _TABLES.advance_required
# Events recorded only as part of another action (money the action moves besides a refund).
CONSEQUENCE_ONLY: frozenset[type[CaseEvent]] = _TABLES.consequence_only
KNOWN: frozenset[type[CaseEvent]] = _TABLES.known
# Actions that leave the status as it was.
UNCHANGED: frozenset[type[CaseEvent]] = _TABLES.unchanged


# Reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """What the store holds about one case, as read: nothing here is interpreted yet."""

    case_id: UUID
    events: Sequence[StoredEvent]
    order_events: Sequence[StoredEvent]
    index_row: Mapping[str, Any] | None


def read_history(store: AftersalesStore, case_id: str | UUID) -> History:
    """The case's stored events in version order, its order's, and its row in the case index."""
    uid = case_uuid(case_id)
    recorder = store.recorder
    events = list(recorder.select_events(uid))
    if not events or not events[0].topic.startswith("engine.case:"):
        raise NotFound(f"no case {case_id}")
    order_events: list[StoredEvent] = []
    order_ref = _order_ref(events)
    if order_ref is not None:
        order_events = list(recorder.select_events(order_ref))
    rows = store.query(
        "SELECT status, version FROM {t}aftersales_cases WHERE case_id = ?", (str(uid),)
    )
    return History(uid, events, order_events, rows[0] if rows else None)


def _order_ref(events: Sequence[StoredEvent]) -> UUID | None:
    """The order named by the case's first readable CaseOpened (read leniently: it may be
    the tampered one, and verification says so)."""
    for stored in events:
        if stored.topic.endswith(":CaseOpened"):
            try:
                return UUID(json.loads(stored.state)["order_ref"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


# Results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    check: str  # chain, transition, claim, deadline, money, time, index, read
    version: int | None  # the case event's version (None: the case as a whole)
    message: str
    order_version: int | None = None  # set for a problem found in the order's events

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "version": self.version,
            "order_version": self.order_version,
            "message": self.message,
        }


@dataclass
class Entry:
    """One stored event of the case: as stored, and as read (None if it cannot be read)."""

    stored: StoredEvent
    event: Event | None
    error: str | None = None

    @property
    def version(self) -> int:
        return self.stored.originator_version

    @property
    def case_event(self) -> CaseEvent | None:
        return self.event if isinstance(self.event, CaseEvent) else None

    @property
    def type_name(self) -> str:
        return self.stored.topic.rpartition(":")[2]


@dataclass
class Audit:
    case_id: UUID
    entries: list[Entry]
    state: dict[str, Any] | None
    states: list[dict[str, Any]]
    problems: list[Problem]
    order_entries: list[Entry]
    as_of: dict[str, Any] | None = None
    order_events: Sequence[StoredEvent] = field(default_factory=list)
    # What the latest signed checkpoint says of these events
    # (engine/integrity/checkpoint_verify.py), when the store has one or a public key was given.
    checkpoint: dict[str, Any] | None = None

    @property
    def verified(self) -> bool:
        return not self.problems

    @property
    def head_hash(self) -> str | None:
        if not self.entries:
            return None
        return event_hash(self.entries[-1].stored)

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "case_id": str(self.case_id),
            "events": [timeline_row(e) for e in self.entries],
            "state": self.state,
            "verified": self.verified,
            "problems": [p.to_json() for p in self.problems],
            "head_hash": self.head_hash,
        }
        if self.as_of is not None:
            result["as_of"] = self.as_of
        if self.checkpoint is not None:
            result["checkpoint"] = self.checkpoint
        return result


# Checks -----------------------------------------------------------------------------------------


def event_hash(stored: StoredEvent) -> str | None:
    try:
        value = json.loads(stored.state)
    except ValueError:
        return None
    found = value.get("hash") if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def stored_form(state: Any) -> bytes:
    """The bytes the store writes for a JSON value (engine.storage.event_mapper.JsonTranscoder)."""
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def check_chain(events: Sequence[StoredEvent], label: str = "") -> list[Problem]:
    """Verify the hash chain from the stored bytes alone, naming the version at fault."""
    problems: list[Problem] = []

    def problem(version: int, message: str) -> None:
        if label:
            problems.append(
                Problem("chain", None, f"{label} version {version}: {message}", version)
            )
        else:
            problems.append(Problem("chain", version, f"version {version}: {message}"))

    states: list[dict[str, Any] | None] = []
    for stored in events:
        try:
            state = json.loads(bytes(stored.state).decode("utf-8"))
        except ValueError as exc:
            problem(stored.originator_version, f"stored bytes are not JSON ({one_line(exc)})")
            states.append(None)
            continue
        if not isinstance(state, dict) or not isinstance(state.get("hash"), str):
            problem(stored.originator_version, "stored JSON carries no hash")
            states.append(None)
            continue
        if stored_form(state) != bytes(stored.state):
            problem(stored.originator_version, "stored bytes are not as the store wrote them")
        states.append(state)
    known = {s["hash"]: i for i, s in enumerate(states) if s is not None}

    previous: str | None = GENESIS_HASH
    expected = 1
    for i, (stored, state) in enumerate(zip(events, states, strict=True)):
        version = stored.originator_version
        missing = list(range(expected, version))
        for gone in missing:
            problem(gone, "is missing (deleted?)")
        expected = max(expected, version + 1)
        if state is None:
            previous = None
            continue
        if previous is None:
            problem(version, "cannot be checked: the event before it is unreadable")
        elif (
            chain_hash(previous, stored.originator_id, version, stored.topic, state)
            != state["hash"]
        ):
            other = next(
                (
                    j
                    for h, j in known.items()
                    if j != i - 1
                    and chain_hash(h, stored.originator_id, version, stored.topic, state)
                    == state["hash"]
                ),
                None,
            )
            if missing:
                problem(version, f"does not chain to version {version - len(missing) - 1}")
            elif other is not None:
                problem(
                    version,
                    f"chains to the event stored as version {events[other].originator_version}, "
                    f"not to version {version - 1}: events reordered",
                )
            elif (sealed := _sealed_as(events, states, i, known)) is not None:
                problem(version, f"was sealed as version {sealed}: events moved")
            else:
                problem(version, "hash does not match its content (altered)")
        previous = state["hash"]
    return problems


def _sealed_as(
    events: Sequence[StoredEvent],
    states: list[dict[str, Any] | None],
    i: int,
    known: dict[str, int],
) -> int | None:
    """The version an event whose hash does not match was sealed as, if its content is intact
    and it was moved (looked for only on a failure, and only in a history of sensible size)."""
    state = states[i]
    if state is None or len(events) > 100:
        return None
    stored = events[i]
    last = max(e.originator_version for e in events) + 1
    for previous in [GENESIS_HASH, *known]:
        for version in range(1, last + 1):
            if version != stored.originator_version and (
                chain_hash(previous, stored.originator_id, version, stored.topic, state)
                == state["hash"]
            ):
                return version
    return None


def replay_checks(events: Sequence[CaseEvent], *, whole: bool = True) -> list[Problem]:
    """The checks every read of a case makes too (``invariants.CaseReplay``, stated once):
    each action allowed from the status the case stood in, leading where it can lead, with the
    consequences it calls for (unless the history shown stops between them, as a replay up to a
    version may); every system action firing the deadline then running, at or after it fell
    due; no person acting at or after a running deadline fell due (the clock acts first); an
    action that leaves the status as it was keeping the deadline, but for one extension of the
    receipt window; the events in the order they happened; offers and refunds within what was
    asked (refunds within an accepted offer's amount)."""
    replay = CaseReplay()
    found = [finding for event in events for finding in replay.step(event)]
    if whole:
        found += replay.finish()
    return [Problem(f.check, f.version, f.message) for f in found]


def check_transitions(events: Sequence[CaseEvent], *, whole: bool = True) -> list[Problem]:
    """The transition findings of ``replay_checks``."""
    return [p for p in replay_checks(events, whole=whole) if p.check == "transition"]


def check_deadlines(events: Sequence[CaseEvent]) -> list[Problem]:
    """The deadline and time findings of ``replay_checks``."""
    return [p for p in replay_checks(events, whole=False) if p.check in ("deadline", "time")]


def check_claims(events: Sequence[CaseEvent]) -> list[Problem]:
    """Every escalation's claim fits the case; a missing-items ruling for the buyer pays no
    more than the case's lines are worth (at list price where a line carries one)."""
    problems: list[Problem] = []
    opened = next((e for e in events if isinstance(e, CaseOpened)), None)
    if opened is None:
        return problems
    # The audit does not know the policy's categories: every line that carries a list price
    # may be made good at it, as the amount asked is checked.
    listed = tuple(line.category for line in opened.lines if line.category)
    worth = lines_worth(list(opened.lines), listed)
    ruling: CaseRuled | None = None
    paid = ZERO
    for event in events:
        v = event.originator_version
        if isinstance(event, CaseEscalated):
            misfit = claim_misfit(event.claim, opened.reason, event.from_status)
            if misfit is not None:
                problems.append(Problem("claim", v, f"version {v}: {misfit}"))
        elif isinstance(event, CaseRuled):
            upheld = event.in_favour_of is Party.BUYER and event.claim is Claim.MISSING_ITEMS
            ruling, paid = (event if upheld else None), ZERO
        elif isinstance(event, CaseRefunded) and ruling is not None:
            paid += event.amount
            if paid > worth:
                r = ruling.originator_version
                problems.append(
                    Problem(
                        "money",
                        v,
                        f"version {v}: the missing-items ruling of version {r} pays "
                        f"{money_str(paid)}, more than the {money_str(worth)} the case's lines "
                        "are worth",
                    )
                )
    return problems


def check_order(
    history: History,
    order_entries: list[Entry],
    events: Sequence[CaseEvent],
    *,
    whole: bool,
) -> list[Problem]:
    """Money never exceeds what was paid: the amount asked against the order's lines, refunds
    against the amount, the order's ledger against the case; and the order's own chain."""
    problems: list[Problem] = []
    opened = next((e for e in events if isinstance(e, CaseOpened)), None)
    if opened is None:
        return problems
    if not history.order_events:
        return [Problem("money", 1, f"version 1: the order {opened.order_id} is not in the store")]
    label = f"order {opened.order_id}"
    problems += check_chain(history.order_events, label)
    for e in order_entries:
        if e.error is not None:
            problems.append(
                Problem("read", None, f"{label} version {e.version}: {e.error}", e.version)
            )

    # The order as it stood just before this case was linked to it.
    order: Order | None = None
    linked_at: int | None = None
    unlinked = ZERO
    for e in order_entries:
        ev: Event | None = e.event
        if ev is None:
            continue
        if isinstance(ev, CaseLinked) and ev.case_id == history.case_id and linked_at is None:
            linked_at = e.version
            if order is not None:
                problems += _check_asked(opened, order)
        if isinstance(ev, BOOKS_REFUNDS) and ev.case_id == history.case_id:
            unlinked += sum(ev.refunded.values(), ZERO)
        try:
            if order is None:
                if isinstance(ev, OrderPlaced):
                    built = ev.mutate(None)
                    assert isinstance(built, Order)
                    order = built
            else:
                ev.apply(order)
                order.version = ev.originator_version
        except Exception as exc:
            problems.append(
                Problem(
                    "read",
                    None,
                    f"{label} version {e.version}: cannot be applied: {exc}",
                    e.version,
                )
            )
    if order is None:
        return [*problems, Problem("money", 1, f"version 1: {label} has no readable OrderPlaced")]
    if linked_at is None:
        problems.append(Problem("money", 1, f"version 1: {label} has no record of this case"))

    # Offers and refunds against the amount asked are ``replay_checks``'; here what the case
    # refunded in all, against the order's ledger below.
    refunded = sum((e.amount for e in events if isinstance(e, CaseRefunded)), ZERO)
    # Every line of the order: never refunded beyond what was paid for it.
    for sku, total in sorted(order.refunded.items()):
        line = order.lines.get(sku)
        if line is None:
            continue
        worth = line.total  # or its list price, at which missing gifts are made good
        if line.list_price is not None:
            worth = max(worth, (line.list_price * line.quantity).quantize(CENT))
        if total > worth:
            problems.append(
                Problem(
                    "money",
                    None,
                    f"{label}: line {sku} refunded {money_str(total)} in all, more than the "
                    f"{money_str(worth)} it is worth",
                )
            )
    # The order's ledger and the case agree (once the case let go of the lines).
    final = events[-1] if events else None
    if (
        whole
        and final is not None
        and final.status not in HOLDING_STATUSES
        and unlinked != refunded
    ):
        problems.append(
            Problem(
                "money",
                final.originator_version,
                f"version {final.originator_version}: the case refunded "
                f"{money_str(refunded)} but {label}'s ledger records {money_str(unlinked)}",
            )
        )
    return problems


def _check_asked(opened: CaseOpened, order: Order) -> list[Problem]:
    problems: list[Problem] = []
    for line in opened.lines:
        paid = order.lines.get(line.sku)
        if paid is None:
            problems.append(
                Problem("money", 1, f"version 1: line {line.sku} is not on order {order.order_id}")
            )
            return problems
        if line.quantity > paid.quantity or line.unit_price != paid.unit_price:
            problems.append(
                Problem(
                    "money",
                    1,
                    f"version 1: line {line.sku} {line.quantity} x {money_str(line.unit_price)} "
                    f"does not match the order's {paid.quantity} x {money_str(paid.unit_price)}",
                )
            )
            return problems
    # Missing items may be made good at their list price (the policy names the categories;
    # the audit allows it for every line that carries one).
    missing = opened.reason.startswith("missing_items.")
    listed = tuple(line.category for line in opened.lines if missing and line.category)
    refundable = order.refundable(list(opened.lines), listed)
    if opened.amount <= ZERO or opened.amount > refundable:
        problems.append(
            Problem(
                "money",
                1,
                f"version 1: {money_str(opened.amount)} asked, but at most "
                f"{money_str(refundable)} was paid and not yet refunded on these lines",
            )
        )
    return problems


def check_index(row: Mapping[str, Any] | None, entries: list[Entry]) -> list[Problem]:
    """The case index is written in the same transaction as the events: it names the last
    version, so events deleted from the end show up here."""
    if not entries:
        return []
    last = entries[-1]
    if row is None:
        return [Problem("index", None, "the case index has no row for this case")]
    problems = []
    if int(row["version"]) != last.version:
        problems.append(
            Problem(
                "index",
                int(row["version"]),
                f"the case index says version {int(row['version'])}, the events end at "
                f"version {last.version} (events missing from the end?)",
            )
        )
    elif last.case_event is not None and row["status"] != last.case_event.status.value:
        problems.append(
            Problem(
                "index",
                last.version,
                f"version {last.version}: the case index says {row['status']}, "
                f"the events {last.case_event.status}",
            )
        )
    return problems


def _sorted(problems: list[Problem]) -> list[Problem]:
    order = {
        "read": 0,
        "chain": 1,
        "transition": 2,
        "claim": 3,
        "deadline": 4,
        "time": 5,
        "money": 6,
    }
    keyed = sorted(
        enumerate(problems),
        key=lambda ip: (
            ip[1].version if ip[1].version is not None else 1 << 30,
            ip[1].order_version or 0,
            order.get(ip[1].check, 9),
            ip[0],
        ),
    )
    return [p for _, p in keyed]


# Timeline rows ----------------------------------------------------------------------------------


_COMMON = frozenset(
    {
        "originator_id",
        "originator_version",
        "originator_topic",
        "timestamp",
        "at",
        "actor",
        "command_id",
        "hash",
        "status",
        "due",
    }
)


def timeline_row(entry: Entry) -> dict[str, Any]:
    event = entry.case_event
    if event is None:
        return {
            "version": entry.version,
            "type": entry.type_name,
            "occurred_at": None,
            "recorded_at": None,
            "actor": None,
            "data": None,
            "status_after": None,
            "due": None,
            "command_id": None,
            "hash": event_hash(entry.stored),
            "unreadable": entry.error,
        }
    fields = type(event).model_fields
    return {
        "version": entry.version,
        "type": entry.type_name,
        "occurred_at": event.at.isoformat(),
        "recorded_at": event.timestamp.isoformat(),
        "actor": {"role": event.actor.role.value, "id": event.actor.id},
        "data": {k: plain_json(getattr(event, k)) for k in fields if k not in _COMMON},
        "status_after": event.status.value,
        "due": plain_json(event.due) if event.due is not None else None,
        "command_id": event.command_id,
        "hash": event.hash,
    }


def event_name(stored: StoredEvent) -> str:
    return stored.topic.rpartition(":")[2] or stored.topic


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def plain_json(value: Any) -> Any:
    """JSON values with one spelling for each kind, whatever backend the bytes came from."""
    if isinstance(value, BaseModel):
        return {k: plain_json(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return money_str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    return value
