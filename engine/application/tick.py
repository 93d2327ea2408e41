"""The clock: find the deadlines that fell due and fire each one as the system.

Every waiting status records its deadline on the event that starts the wait, and the case index
(``aftersales_cases``, written in the same transaction as the events) carries it as ``due_at`` and
``due_action``. The tick reads that index in bounded batches, in ``due_at`` order, and never
loads a case that is not due.

Each deadline is fired through the engine like any other action, as the ``system`` actor:

- at the deadline's own ``due_at``, not at the moment the tick happens to run, so the wait that
  follows (the auto-approved return's 10 days for the buyer) counts from the deadline, and a
  late or re-run tick writes the same history as a punctual one;
- with a command id derived from the deadline (``deadline:{case}:{version}:{action}``), recorded
  on the events it writes;
- only while it is still the case's running deadline: a case that moved on before its deadline
  was fired (the merchant approved at hour 47) is refused by the rules and skipped, never an
  error; a refusal while the deadline still runs is the tick's failure, reported and left due
  for the next tick, never passed off as someone else's work.

Exactly once, with any number of ticks and schedulers on one store, rests on the event store's
optimistic concurrency: every save is of the case (and order) at the version it was loaded at,
so of two writers acting on the same version one save fails; the loser loads the new state and
the rules refuse a deadline that is no longer running (or, for a deadline fired one by one, the
command id shows it done).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from aftersales.engine.application.requests import (
    FireDeadline,
)
from aftersales.engine.application.units import Group, SaveNow
from aftersales.engine.domain.errors import (
    AftersalesError,
    BadInput,
    NotAllowed,
)
from aftersales.engine.domain.invariants import InvariantBroken
from aftersales.engine.domain.values import DueAction
from aftersales.engine.storage.sql import parse_stored_time

if TYPE_CHECKING:  # the engine runs units of work and the tick; they only name it
    from aftersales.engine.application.handler import Engine


BATCH = 500
# Deadlines fired per transaction: one commit for many, and a small loss when a group must be
# fired again one by one because something in it changed meanwhile.
GROUP = 50


@dataclass(frozen=True)
class Due:
    """One deadline as the index shows it."""

    case_id: str
    action: DueAction
    due_at: datetime
    version: int

    @property
    def command_id(self) -> str:
        """The same deadline gives the same command id in every process, on every run."""
        return deadline_command_id(UUID(self.case_id), self.version, self.action)

    def to_json(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "action": self.action.value,
            "due_at": self.due_at.isoformat(),
        }


@dataclass
class TickReport:
    """What one tick did: the deadlines it fired, and those it found already dealt with."""

    now: datetime
    fired: list[Due] = field(default_factory=list)
    # Due when read, but resolved first by someone else: a person acting on the case, or
    # another tick that fired the same deadline.
    skipped: list[Due] = field(default_factory=list)
    # Refused for a reason other than the case moving on; retried by the next tick.
    failed: list[tuple[Due, AftersalesError]] = field(default_factory=list)
    # Stopped (by a signal to the scheduler) before every due deadline was looked at.
    stopped: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "fired": [d.to_json() for d in self.fired],
            "skipped": len(self.skipped),
            "failed": [
                {**d.to_json(), "error": {"code": e.code, "message": e.message}}
                for d, e in self.failed
            ],
            "stopped": self.stopped,
        }


def due_deadlines(
    engine: Engine,
    now: datetime,
    *,
    limit: int = BATCH,
    after: tuple[Any, str] | None = None,
) -> tuple[list[Due], tuple[Any, str] | None]:
    """Up to ``limit`` deadlines due at or before ``now``, in (due_at, case_id) order, after
    the cursor ``after``; and the cursor to read the next batch from."""
    sql = (
        "SELECT case_id, due_at, due_action, version FROM {t}aftersales_cases "
        "WHERE due_at IS NOT NULL AND due_at <= ?"
    )
    params: list[Any] = [engine.store.time_param(now)]
    if after is not None:
        # Keyset paging: the index gives the order, and a deadline that could not be fired
        # is not read again in the same tick. (due_at >= ? lets the index start there.)
        sql += " AND due_at >= ? AND (due_at > ? OR case_id > ?)"
        params += [after[0], after[0], after[1]]
    sql += f" ORDER BY due_at, case_id LIMIT {int(limit)}"
    rows = engine.store.query(sql, params)
    found = []
    for row in rows:
        due_at = parse_stored_time(row["due_at"])
        assert due_at is not None
        found.append(
            Due(
                case_id=str(row["case_id"]),
                action=DueAction(row["due_action"]),
                due_at=due_at.astimezone(UTC),
                version=int(row["version"]),
            )
        )
    cursor = (rows[-1]["due_at"], str(rows[-1]["case_id"])) if rows else after
    return found, cursor


def tick(
    engine: Engine,
    now: datetime,
    *,
    batch: int = BATCH,
    group: int = GROUP,
    should_stop: Callable[[], bool] = lambda: False,
) -> TickReport:
    """Fire every deadline due at or before ``now`` (including deadlines that firing an
    earlier one starts and that are themselves due by ``now``). ``should_stop`` is asked
    between groups: a stopped tick leaves the rest for the next one."""
    if now.tzinfo is None:
        raise BadInput("the tick's time has no time zone")
    if batch < 1 or group < 1:
        raise BadInput("the batch and group sizes must be at least 1")
    result = TickReport(now=now)
    # Passes over the due deadlines until one fires nothing: firing a deadline may start the
    # next wait, due by ``now`` too, but behind the pass's cursor (a backlog longer than it).
    while True:
        fired_before = len(result.fired)
        after: tuple[Any, str] | None = None
        while True:
            found, after = due_deadlines(engine, now, limit=batch, after=after)
            for start in range(0, len(found), group):
                if should_stop():
                    result.stopped = True
                    return result
                _fire_group(engine, found[start : start + group], result)
            if len(found) < batch:
                break
        if len(result.fired) == fired_before:
            return result


def _fire_group(engine: Engine, dues: list[Due], result: TickReport) -> None:
    """Fire a group of deadlines in memory and save them in one transaction; if anything in
    the group changed meanwhile, fire them again one by one, each saved on its own."""
    with engine.unit_of_work(Group(engine)) as grouped:
        assert isinstance(grouped, Group)
        grouped.prefetch(UUID(d.case_id) for d in dues)
        outcomes = [_fire_one(engine, due) for due in dues]
    saved = grouped.save()
    # Fired again one by one, on fresh state: the whole group if its save failed, and any
    # firing refused for an invariant (it may have read a case and its order on either side of
    # a person's action; alone, it is decided again on what is there now).
    again = [(o is True and not saved) or isinstance(o, InvariantBroken) for o in outcomes]
    if any(again):
        with engine.unit_of_work(SaveNow(engine)):
            outcomes = [
                _fire_one(engine, d) if redo else o
                for d, o, redo in zip(dues, outcomes, again, strict=True)
            ]
    failed = {d.command_id for d, _ in result.failed}
    for due, outcome in zip(dues, outcomes, strict=True):
        if isinstance(outcome, AftersalesError):
            if due.command_id not in failed:  # a later pass tries it again
                result.failed.append((due, outcome))
        elif outcome:
            result.fired.append(due)
        else:
            result.skipped.append(due)


def _fire_one(engine: Engine, due: Due) -> bool | AftersalesError:
    """True if this tick fired the deadline (or, in a group, will with the group's save),
    False if someone else dealt with it first, the error if it was refused otherwise."""
    command = FireDeadline(
        case_id=due.case_id, deadline=due.action, at=due.due_at, command_id=due.command_id
    )
    try:
        engine.handle(command)
    except InvariantBroken as exc:  # a firing that would break an invariant: refused, kept due
        return exc
    except NotAllowed as exc:
        # Refused by the rules: because the deadline is no longer running (a person acted, or
        # another tick fired it), or for a reason of its own, which must not pass for that.
        return exc if still_running(engine, due) else False
    except AftersalesError as exc:
        return exc
    return not engine.uow.replayed


def still_running(engine: Engine, due: Due) -> bool:
    """Whether the case, as the tick's unit of work has it (the state the refusal was decided
    on, or the store's), still has this deadline running: a refusal of it is then the tick's
    failure, not someone else's work."""
    try:
        case = engine.uow.get(UUID(due.case_id))
    except AftersalesError:
        return True
    running = getattr(case, "due", None)
    return running is not None and (running.action, running.due_at) == (due.action, due.due_at)


def deadline_command_id(case_id: UUID, version: int, action: DueAction) -> str:
    """The command id a deadline fires under: the same deadline gives the same id in every
    process, whether a tick fires it or an action that came after it."""
    return f"deadline:{case_id}:{version}:{action.value}"
