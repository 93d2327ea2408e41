"""The engine's Python API: one entry point, ``Engine.handle(command)``, over a unit of work.

Command scripts use this directly (one `Engine` per process, many commands through it); the
command line, `batch` and the imports are adapters that build typed commands
(``engine/commands.py``) and hand them here. The service owns the clock: the domain is handed
the time of each action and never reads one itself.

Where an action's aggregates come from and how what it records is committed is the unit of
work's business, with one strategy each:

- ``SaveNow`` (the default): load (a case this engine saved last comes from the library's
  aggregate cache), act, save at once on the version loaded; a lost race is retried on fresh
  state, and a refusal is only ever decided on fresh state;
- ``Chunk`` (bulk paths, ``engine/bulk.py``): aggregates prefetched and kept in memory, many
  actions saved in one transaction, possibly on another thread;
- ``Group`` (the tick, ``engine/deadlines.py``): deadlines fired in memory and saved together,
  fired again one by one if anything in the group changed meanwhile;
- ``Together`` (``Engine.handle_together``, the HTTP server's group commit): concurrent
  actions run in memory one after the other and saved in one transaction; if any of them is
  refused, or the save fails, none is saved and each runs again alone (``SaveNow``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from datetime import UTC, datetime
from decimal import Decimal
from functools import singledispatchmethod
from typing import Any, NamedTuple
from uuid import UUID, uuid4

from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent

from aftersales.engine.case import ReturnCase, case_uuid, settle_order_lines
from aftersales.engine.commands import (
    Action,
    CaseAction,
    Command,
    FireDeadline,
    ImportOrder,
    ListCases,
    OpenCase,
    OrderAction,
    PlaceOrder,
    ShowCase,
    ShowOrder,
    Tick,
    new_case_id,
)
from aftersales.engine.errors import (
    AftersalesError,
    BadInput,
    Conflict,
    NotAllowed,
    NotFound,
    Poisoned,
)
from aftersales.engine.events import Act
from aftersales.engine.invariants import InvariantBroken
from aftersales.engine.order import Order, check_order_id, order_uuid
from aftersales.engine.policy import Policy
from aftersales.engine.sql import Dialect
from aftersales.engine.store import (
    CASES_TABLE,
    CaseRow,
    CommandRow,
    EventStore,
    parse_stored_time,
)
from aftersales.engine.values import Actor, DueAction, Role, Status, money_str

__all__ = ["Engine", "new_case_id"]

WallClock = Callable[[], datetime]
MAX_ATTEMPTS = 8

Aggregate = Order | ReturnCase
# One try at an action: the aggregate it is about, the others it changed, and its circumstances.
Attempt = Callable[[str], tuple[Aggregate, list[Aggregate], Act]]


def system_clock() -> datetime:
    return datetime.now(UTC)


class Pending(NamedTuple):
    """One unit of work's events, case index rows and command rows, ready to save."""

    stored: list[StoredEvent]
    cases: list[CaseRow]
    commands: list[CommandRow]


def deadline_command_id(case_id: UUID, version: int, action: DueAction) -> str:
    """The command id a deadline fires under: the same deadline gives the same id in every
    process, whether a tick fires it or an action that came after it."""
    return f"deadline:{case_id}:{version}:{action.value}"


def _due_by(case: ReturnCase, until: datetime) -> bool:
    return case.due is not None and case.due.due_at <= until


class Clock:
    """What the clock did before an action: the aggregates it changed, and what fired."""

    def __init__(self) -> None:
        self.touched: dict[UUID, Aggregate] = {}
        self.fired: dict[UUID, list[str]] = {}

    def changed(self, *, exclude: Aggregate) -> list[Aggregate]:
        return [a for a in self.touched.values() if a is not exclude]

    def explain(self, case: ReturnCase, refusal: AftersalesError) -> AftersalesError:
        """A refusal that came after the clock acted says what the clock did first."""
        fired = self.fired.get(case.id)
        if not fired:
            return refusal
        told = "; ".join(fired)
        return type(refusal)(f"the clock acted first: {told}. {refusal.message}")


# Units of work -------------------------------------------------------------------------------


class UnitOfWork:
    """Where an action's aggregates come from, and how what it records is committed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Whether the last command's result was its first result given again (its command id
        # had been used), not something this command did.
        self.replayed = False

    def get(self, uid: UUID) -> Aggregate | None:
        aggregate: Aggregate | None = self.engine.store.load(uid)
        return aggregate

    def find_command(self, command_id: str) -> dict[str, Any] | None:
        return self.engine.find_command(command_id)

    def run(self, command: Action, attempt: Attempt) -> dict[str, Any]:
        raise NotImplementedError

    def replay(self, command: Action, fingerprint: str) -> dict[str, Any] | None:
        """The first result of a command id already used, or None if it is new."""
        if command.command_id is None:
            return None
        row = self.find_command(command.command_id)
        if not row:
            return None
        if row["fingerprint"] != fingerprint:
            raise BadInput(
                f"command id {command.command_id} was already used for a different "
                f"{row['action']} (on {row['target_id']}); use a new command id"
            )
        self.replayed = True
        return self.first_result(row, command.command_id)

    def first_result(self, row: dict[str, Any], command_id: str) -> dict[str, Any]:
        version = int(row["version"])
        aggregate = self.engine.store.load(UUID(row["target_id"]), version=version)
        assert isinstance(aggregate, (Order, ReturnCase))
        return aggregate.to_json()


class SaveNow(UnitOfWork):
    """Each action saved at once, on the version its aggregates were loaded at.

    A command id is looked up only when something fails: a repeat of a command is either
    refused by the rules (the case has moved on) or fails to save on the command id's primary
    key, and then the first result is given again."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.use_cache = False
        self.used_cache = False
        # Aggregates this attempt took from the cache: an attempt that fails may have changed
        # them (the clock fires deadlines before the action is judged), so they are forgotten.
        self.served: set[UUID] = set()

    def get(self, uid: UUID) -> Aggregate | None:
        if self.use_cache:
            cached = self.engine.store.cached(uid)
            if isinstance(cached, (Order, ReturnCase)):
                self.used_cache = True
                self.served.add(uid)
                return cached
        return super().get(uid)

    def forget_served(self) -> None:
        for uid in self.served:
            self.engine.store.forget(uid)
        self.served.clear()

    def run(self, command: Action, attempt: Attempt) -> dict[str, Any]:
        """Run one attempt after another until one saves: a concurrent writer makes the save
        fail on the aggregate's version, and the next attempt sees the new state (and may
        then be refused by the rules). Retrying that does not resolve it is a conflict."""
        engine = self.engine
        fingerprint = command.fingerprint() if command.command_id else ""
        command_id = command.command_id or str(uuid4())
        self.replayed = False
        fresh = False
        invariant_retried = False
        for _ in range(MAX_ATTEMPTS):
            self.use_cache, self.used_cache = not fresh, False
            self.served.clear()
            try:
                main, others, act = attempt(command_id)
            except AftersalesError as exc:
                self.forget_served()
                # Decided on cached state: decide again on fresh state. An invariant broken on
                # fresh state may be two reads on either side of another writer's commit (the
                # case before it, the order after): decided again once on what is there now.
                if self.used_cache or (isinstance(exc, InvariantBroken) and not invariant_retried):
                    invariant_retried = invariant_retried or not self.used_cache
                    fresh = True
                    continue
                replayed = self.replay(command, fingerprint)
                if replayed is not None:
                    return replayed
                raise
            finally:
                self.use_cache = False
            changed = [main, *others]
            try:
                engine.store.save(
                    *changed,
                    cases=case_rows(changed),
                    commands=command_rows(command, main, fingerprint, act),
                )
            except (IntegrityError, OperationalError):
                for aggregate in changed:
                    engine.store.forget(aggregate.id)
                replayed = self.replay(command, fingerprint)
                if replayed is not None:
                    return replayed
                engine.retries += 1
                fresh = True
                continue
            return main.to_json()
        raise Conflict(
            f"{command.action} {command.target()}: it kept changing under concurrent writers"
        )


class Chunk(UnitOfWork):
    """A unit of work for bulk paths: actions run against aggregates kept in memory, and
    everything they record is saved in one transaction (``take``, then ``write``). Every rule
    is checked as usual; the domain checks before it records, so a refused action leaves the
    aggregates as they were. Nothing is saved yet, so nothing can conflict: the command ids a
    chunk uses were fetched with it, and are checked first."""

    def __init__(self, engine: Engine, cache_size: int) -> None:
        super().__init__(engine)
        self.cache_size = cache_size
        self.aggregates: dict[UUID, Aggregate] = {}
        self.absent: set[UUID] = set()
        # Aggregates with a stored event that cannot be used: a line that needs one is
        # refused with its Poisoned, the others go on.
        self.poisoned: dict[UUID, Poisoned] = {}
        self.touched: dict[UUID, Aggregate] = {}
        self.commands: dict[str, tuple[CommandRow, dict[str, Any]]] = {}
        self.known_commands: dict[str, dict[str, Any]] = {}
        # Commands taken to be saved and not known to be saved yet (see ``take``).
        self.saving: dict[str, dict[str, Any]] = {}
        # An action refused for breaking an invariant may have changed an aggregate in memory
        # before the check (an invariant is checked as each event is recorded): what this
        # chunk holds is then not to be saved; the bulk path runs it again item by item.
        self.tainted = False

    def run(self, command: Action, attempt: Attempt) -> dict[str, Any]:
        fingerprint = command.fingerprint() if command.command_id else ""
        self.replayed = False
        replayed = self.replay(command, fingerprint)
        if replayed is not None:
            return replayed
        try:
            main, others, act = attempt(command.command_id or str(uuid4()))
        except InvariantBroken:
            self.tainted = True
            raise
        changed = [main, *others]
        for aggregate in changed:
            self.aggregates[aggregate.id] = aggregate
            self.absent.discard(aggregate.id)
            self.touched[aggregate.id] = aggregate
        for row in command_rows(command, main, fingerprint, act):
            self.commands[row.command_id] = (row, row._asdict())
        return {}  # bulk paths print no per-line results

    def first_result(self, row: dict[str, Any], command_id: str) -> dict[str, Any]:
        return {"replayed": command_id}  # bulk paths print no per-line results

    def prefetch(self, ids: Iterable[UUID]) -> None:
        """Load, with one query, the aggregates not yet in memory; remember the absent."""
        wanted = [
            i
            for i in dict.fromkeys(ids)
            if i not in self.aggregates and i not in self.absent and i not in self.poisoned
        ]
        if not wanted:
            return
        found = self.engine.store.load_many(wanted, self.poisoned)
        self.aggregates.update(found)
        self.absent.update(i for i in wanted if i not in found and i not in self.poisoned)

    def prefetch_commands(self, command_ids: Iterable[str]) -> None:
        wanted = [c for c in dict.fromkeys(command_ids) if c not in self.known_commands]
        if not wanted:
            return
        marks = Dialect.marks(len(wanted))
        rows = self.engine.store.query(
            "SELECT command_id, action, target_id, fingerprint, version "
            f"FROM {{t}}aftersales_commands WHERE command_id IN ({marks})",
            wanted,
        )
        found = {row["command_id"]: row for row in rows}
        for command_id in wanted:
            self.known_commands[command_id] = found.get(command_id, {})

    def find_command(self, command_id: str) -> dict[str, Any] | None:
        if command_id in self.commands:
            return self.commands[command_id][1]
        if command_id in self.saving:
            return self.saving[command_id]
        known = self.known_commands.get(command_id)
        if known is not None:
            return known or None
        return self.engine.find_command(command_id)

    def get(self, uid: UUID) -> Aggregate | None:
        if uid in self.aggregates:
            return self.aggregates[uid]
        if uid in self.absent:
            return None
        self.prefetch([uid])
        if uid in self.poisoned:
            raise self.poisoned[uid]
        return self.aggregates.get(uid)

    def take(self) -> Pending | None:
        """Everything recorded since the last take, ready to save (``write``), or None. The
        unit of work goes on from the state in memory; the commands taken stay known until
        saved."""
        touched = list(self.touched.values())
        self.touched.clear()
        if not touched:
            self.commands.clear()
            return None
        mapper = self.engine.store.mapper
        stored = [mapper.to_stored_event(e) for a in touched for e in a.collect_events()]
        pending = Pending(stored, case_rows(touched), [c for c, _ in self.commands.values()])
        self.saving.update((c, row) for c, (_, row) in self.commands.items())
        self.commands.clear()
        self.known_commands.clear()
        if len(self.aggregates) > self.cache_size:  # keep memory flat on long imports
            # Not those being saved: until they are, the store has them at older versions.
            saving = {a.id for a in touched}
            oldest = [uid for uid in self.aggregates if uid not in saving]
            for uid in oldest[: len(self.aggregates) - self.cache_size // 2]:
                del self.aggregates[uid]
        if len(self.absent) > self.cache_size:
            self.absent.clear()
        return pending

    def write(self, pending: Pending | None) -> int:
        """Save what ``take`` gave, in one transaction; safe to run on another thread while
        the unit of work goes on (PostgreSQL only: its recorder takes a pooled connection)."""
        if pending is None:
            return 0
        recorder = self.engine.store.recorder
        recorder.insert_events(pending.stored, cases=pending.cases, commands=pending.commands)
        return len(pending.stored)

    def written(self, pending: Pending | None) -> None:
        """What ``write`` saved is in the store now: its commands are found there."""
        if pending is not None:
            for command in pending.commands:
                self.saving.pop(command.command_id, None)

    def discard(self) -> None:
        """Forget what was not saved (after a failed write): the store is the truth."""
        self.tainted = False
        self.aggregates.clear()
        self.absent.clear()
        self.poisoned.clear()
        self.touched.clear()
        self.commands.clear()
        self.known_commands.clear()
        self.saving.clear()


class Group(UnitOfWork):
    """Deadlines fired in memory and saved together in one transaction (``save``): one commit
    for many. Safe because every aggregate in it is saved on the version it was loaded at: if
    a person or another tick changed any of them meanwhile, the save fails as a whole, nothing
    is written, and the tick fires that group's deadlines again one by one (``SaveNow``)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.changed: list[Aggregate] = []
        self.commands: list[CommandRow] = []

    def run(self, command: Action, attempt: Attempt) -> dict[str, Any]:
        # A deadline already fired shows up as a case that moved on (refused when loaded) or
        # as a failed group save (then fired again one by one, and replayed there).
        self.replayed = False
        fingerprint = command.fingerprint() if command.command_id else ""
        main, others, act = attempt(command.command_id or str(uuid4()))
        self.changed += [main, *others]
        self.commands += command_rows(command, main, fingerprint, act)
        return {}

    def save(self) -> bool:
        """Save the group's changes and command ids in one transaction; False if anything in
        it had changed (or another tick recorded one of its command ids first)."""
        if not self.changed:
            return True
        try:
            self.engine.store.save(
                *self.changed, cases=case_rows(self.changed), commands=self.commands
            )
        except (IntegrityError, OperationalError):
            for aggregate in self.changed:
                self.engine.store.forget(aggregate.id)
            self.engine.retries += 1
            return False
        return True


class Together(UnitOfWork):
    """Actions run one after the other on aggregates in memory (cached where this process has
    them, each action seeing the ones before it) and saved in one transaction (``save``).
    Nothing is saved unless all of them are: an action refused, or the save failing (a case
    moved on elsewhere, a command id used before), and ``forget`` puts the cache back, so
    each can be run alone on fresh state."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.served: dict[UUID, Aggregate] = {}
        self.touched: dict[UUID, Aggregate] = {}
        self.commands: list[CommandRow] = []

    def get(self, uid: UUID) -> Aggregate | None:
        if uid in self.served:
            return self.served[uid]
        found = self.engine.store.cached(uid)
        if not isinstance(found, (Order, ReturnCase)):
            found = super().get(uid)
        if found is not None:
            self.served[uid] = found
        return found

    def run(self, command: Action, attempt: Attempt) -> dict[str, Any]:
        self.replayed = False
        fingerprint = command.fingerprint() if command.command_id else ""
        main, others, act = attempt(command.command_id or str(uuid4()))
        for aggregate in (main, *others):
            self.touched[aggregate.id] = aggregate
        self.commands += command_rows(command, main, fingerprint, act)
        return main.to_json()

    def save(self) -> None:
        changed = list(self.touched.values())
        if changed:
            self.engine.store.save(*changed, cases=case_rows(changed), commands=self.commands)

    def forget(self) -> None:
        for uid in self.served:
            self.engine.store.forget(uid)


# The engine ------------------------------------------------------------------------------------

# How many cases an ambiguous short case id names in its refusal.
AMBIGUOUS_SHOWN = 5


class Engine:
    """One store, one policy, one clock: the after-sales workflow behind every command."""

    def __init__(
        self,
        store: str | EventStore | None = None,
        *,
        policy: Policy | None = None,
        clock: WallClock = system_clock,
        cache_size: int = 10_000,
        create: bool = True,
    ) -> None:
        self.store = (
            store
            if isinstance(store, EventStore)
            else EventStore(store, cache_size=cache_size, create=create)
        )
        self.policy = policy or Policy()
        self.clock = clock
        # How many saves lost a race and were retried on the new state (for operators).
        self.retries = 0
        self.uow: UnitOfWork = SaveNow(self)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def unit_of_work(self, uow: UnitOfWork) -> Iterator[UnitOfWork]:
        """Run the commands handled inside under another unit of work."""
        previous, self.uow = self.uow, uow
        try:
            yield uow
        finally:
            self.uow = previous

    def handle_together(self, commands: Sequence[Action]) -> list[tuple[Any, bool]]:
        """Run actions as one group commit: saved in one transaction, each seeing the ones
        before it. If any is refused or the save fails, nothing of the group is saved and each
        runs alone, as ``handle`` runs it. For each, in order: its result (or the error it
        raised) and whether that was a command id's first result given again."""
        group = Together(self)
        try:
            with self.unit_of_work(group):
                # Copies: a result shares lists with its aggregate, which the next may change.
                results = [deepcopy(self.handle(command)) for command in commands]
                group.save()
            return [(result, False) for result in results]
        except Exception as exc:
            group.forget()
            if not isinstance(exc, (AftersalesError, IntegrityError, OperationalError)):
                raise
            self.retries += 1
        alone: list[tuple[Any, bool]] = []
        for command in commands:
            try:
                alone.append((deepcopy(self.handle(command)), self.uow.replayed))
            except AftersalesError as exc:
                alone.append((exc, False))
        return alone

    # Loading -----------------------------------------------------------------------------------

    def find_order(self, order_id: str) -> Order | None:
        """The order, or None if the store has none by that id."""
        order = self.uow.get(order_uuid(check_order_id(order_id)))
        return order if isinstance(order, Order) else None

    def load_order(self, order_id: str) -> Order:
        check_order_id(order_id)
        order = self.uow.get(order_uuid(order_id))
        if not isinstance(order, Order):
            raise NotFound(f"no order {order_id}")
        return order

    def load_case(self, case_id: str | UUID, version: int | None = None) -> ReturnCase:
        uid = case_uuid(case_id)
        case = self.uow.get(uid) if version is None else self.store.load(uid, version=version)
        if not isinstance(case, ReturnCase):
            raise NotFound(f"no case {case_id}")
        return case

    def find_command(self, command_id: str) -> dict[str, Any] | None:
        rows = self.store.query(
            "SELECT action, target_id, fingerprint, version FROM {t}aftersales_commands "
            "WHERE command_id = ?",
            (command_id,),
        )
        return rows[0] if rows else None

    def _act(
        self, command: Action, actor_id: str, command_id: str, at: datetime | None = None
    ) -> Act:
        """An action's circumstances: when (``at``, else the command's, else now), who, and
        under which command id."""
        now = self.clock()
        return Act(
            at=at or command.at or now,
            actor=Actor(role=command.role, id=command.by or actor_id),
            command_id=command_id,
            recorded_at=now,
        )

    @staticmethod
    def _check_expected(aggregate: Aggregate, command: Action, what: str) -> None:
        expected = command.expected_version
        if expected is not None and aggregate.version != expected:
            raise Conflict(
                f"{what} is at version {aggregate.version}, not the expected {expected}: "
                "it changed since you read it"
            )

    # The clock acts first ------------------------------------------------------------------

    def _clock_first(self, order: Order, cases: list[ReturnCase], until: datetime) -> Clock:
        """Fire, in the order they fell due, every deadline due by ``until`` on ``cases`` and
        on the other cases holding lines of ``order``, each exactly as the tick fires it (the
        system, at its due time, under the deadline's own command id), freeing or keeping the
        order's lines as each one leaves them. Every rule is then judged on the state the clock
        would have made, whenever the tick happens to run."""
        clock = Clock()
        involved = {case.id: case for case in cases}
        for holder in dict.fromkeys(order.holders.values()):
            if holder not in involved:
                found = self.uow.get(holder)
                if isinstance(found, ReturnCase):
                    involved[holder] = found
        while due := [c for c in involved.values() if _due_by(c, until)]:
            case = min(due, key=lambda c: (c.due.due_at if c.due else until, str(c.id)))
            assert case.due is not None
            deadline = case.due
            fire = FireDeadline(
                case_id=case.id,
                deadline=deadline.action,
                at=deadline.due_at,
                command_id=deadline_command_id(case.id, case.version, deadline.action),
            )
            assert fire.command_id is not None
            act = self._act(fire, default_actor(case, fire.role), fire.command_id)
            before = case.status
            if self._apply(fire, case, act, order):
                clock.touched[order.id] = order
            clock.touched[case.id] = case
            clock.fired.setdefault(case.id, []).append(
                f"{deadline.action.value} fell due at {deadline.due_at.isoformat()} and fired "
                f"then ({before} to {case.status})"
            )
        return clock

    def _apply(self, command: CaseAction, case: ReturnCase, act: Act, order: Order) -> bool:
        """Take a case action, then free or take back the order's lines as it leaves them;
        True if the order recorded something."""
        holding, refunded = case.holds_lines, case.refunded_amount
        command.apply(case, act, self.policy, order)
        return settle_order_lines(
            case, order, was_holding=holding, refunded_before=refunded, act=act
        )

    # The one entry point -------------------------------------------------------------------

    @singledispatchmethod
    def handle(self, command: Command) -> Any:
        """Run a command: an action (its JSON-ready result), or a query."""
        raise TypeError(f"no handler for {type(command).__name__}")

    @handle.register
    def _case_action(self, command: CaseAction) -> dict[str, Any]:
        uid = command.case_id

        def attempt(command_id: str) -> tuple[Aggregate, list[Aggregate], Act]:
            case = self.load_case(uid)
            self._check_expected(case, command, f"case {uid}")
            act = self._act(command, default_actor(case, command.role), command_id)
            order: Order | None = None
            clock = Clock()
            if not isinstance(command, FireDeadline) and _due_by(case, act.at):
                # The clock acts first: the deadlines due by this action's time fire now,
                # exactly as a tick would have fired them, and the action is judged after.
                order = self.load_order(case.order_id)
                clock = self._clock_first(order, [case], act.at)
            holding = case.holds_lines
            refunded = case.refunded_amount
            # A rejected case that is escalated takes its lines back: check they are free
            # before acting, so every check comes before anything is recorded.
            if case.status is Status.REJECTED:
                order = order or self.load_order(case.order_id)
                order.check_lines_free(list(case.lines))
            try:
                command.apply(case, act, self.policy, order)
            except AftersalesError as exc:
                raise clock.explain(case, exc) from None
            if holding != case.holds_lines:
                order = order or self.load_order(case.order_id)
                settle_order_lines(
                    case, order, was_holding=holding, refunded_before=refunded, act=act
                )
                clock.touched.setdefault(order.id, order)
            return case, clock.changed(exclude=case), act

        return self.uow.run(command, attempt)

    @handle.register
    def _open_case(self, command: OpenCase) -> dict[str, Any]:
        new_id = command.new_case_id()
        named = command.case_id is not None or command.command_id is not None

        def attempt(command_id: str) -> tuple[Aggregate, list[Aggregate], Act]:
            order = self.load_order(command.order_id)
            self._check_expected(order, command, f"order {command.order_id}")
            act = self._act(command, order.buyer_id, command_id)
            # Cases holding this order's lines whose deadlines fell due by now have acted (a
            # case auto-closed at day 10 holds nothing at day 12), whether or not a tick ran.
            clock = self._clock_first(order, [], act.at)
            case_lines = order.case_lines([(w.sku, w.quantity) for w in command.lines])
            # A case id given or derived from the command id may be taken. Saving over it
            # fails on its first version and the action is tried again on fresh state: only
            # then is it worth a read (in a chunk, reads are from memory anyway).
            uow = self.uow
            reread = not (isinstance(uow, SaveNow) and uow.use_cache)
            held = new_id in order.holders.values() or new_id in clock.touched
            if named and (held or (reread and self.uow.get(new_id) is not None)):
                raise NotAllowed(f"case {new_id} exists already")
            case = ReturnCase.open(
                new_id,
                order,
                case_type=command.type,
                reason=command.reason,
                amount=command.amount,
                lines=case_lines,
                evidence=list(command.evidence),
                note=command.note,
                policy=self.policy,
                act=act,
            )
            order.link_case(case.id, case_lines, act, holds_shipment=case.holds_shipment)
            return case, [order, *clock.changed(exclude=order)], act

        return self.uow.run(command, attempt)

    @handle.register
    def _order_action(self, command: OrderAction) -> dict[str, Any]:
        def attempt(command_id: str) -> tuple[Aggregate, list[Aggregate], Act]:
            order = self.load_order(command.order_id)
            self._check_expected(order, command, f"order {command.order_id}")
            act = self._act(command, "order-system", command_id)
            # Deadlines of the cases holding the order's lines that fell due by now have acted
            # (a refund-only request auto-approved at hour 48 holds nothing at hour 50).
            clock = self._clock_first(order, [], act.at)
            turned = command.apply(order, act)
            cases = self._turn_returns(order, turned, act, clock)
            return order, [*cases, *clock.changed(exclude=order)], act

        return self.uow.run(command, attempt)

    def _turn_returns(
        self, order: Order, turned: list[UUID], act: Act, clock: Clock
    ) -> list[ReturnCase]:
        """The refund-only cases a shipment recorded anyway turned into returns, each recording
        so (as the order system, at the shipment's time)."""
        cases = []
        for case_id in turned:
            case = clock.touched.get(case_id) or self.load_case(case_id)
            assert isinstance(case, ReturnCase)
            case.turn_return(act)
            cases.append(case)
        return cases

    @handle.register
    def _place_order(self, command: PlaceOrder) -> dict[str, Any]:
        def attempt(command_id: str) -> tuple[Aggregate, list[Aggregate], Act]:
            if self.uow.get(order_uuid(command.order_id)) is not None:
                raise NotAllowed(f"order {command.order_id} is already placed")
            act = self._act(command, "order-system", command_id)
            order = Order.place(
                command.order_id,
                merchant_id=command.merchant,
                buyer_id=command.buyer,
                lines=list(command.lines),
                act=act,
            )
            return order, [], act

        return self.uow.run(command, attempt)

    @handle.register
    def _import_order(self, command: ImportOrder) -> dict[str, Any]:
        """Place an order, and ship and deliver it as far as the facts given go, as one action
        saved at once. The order id is the key: what the store has already is kept, so
        importing the same facts again changes nothing; an order that is there with other
        facts (merchant, buyer or lines) is refused, not merged."""
        shipment = command.shipment()
        # The placing, as `order place` would record it (its fields are checked already).
        placing = PlaceOrder.model_construct(
            order_id=command.order_id,
            merchant=command.merchant,
            buyer=command.buyer,
            lines=command.lines,
            at=command.placed_at,
            by=command.by,
            command_id=None,
            expected_version=None,
        )
        shipped_at = command.shipped_at or command.delivered_at
        ships = command.shipped_at is not None or command.carrier is not None

        def at(when: datetime | None, command_id: str) -> Act:
            return self._act(placing, "order-system", command_id, at=when)

        def attempt(command_id: str) -> tuple[Aggregate, list[Aggregate], Act]:
            act = at(command.placed_at, command_id)
            order = self.uow.get(order_uuid(command.order_id))
            if not isinstance(order, Order):
                order = Order.place(
                    command.order_id,
                    merchant_id=command.merchant,
                    buyer_id=command.buyer,
                    lines=list(command.lines),
                    act=act,
                )
            elif (order.merchant_id, order.buyer_id, list(order.lines.values())) != (
                command.merchant,
                command.buyer,
                list(command.lines),
            ):
                raise NotAllowed(
                    f"order {command.order_id} was imported before with other facts "
                    "(merchant, buyer or lines); it is not changed"
                )
            # The order system's facts are what happened: a shipment under a refund-only case
            # opened before it is recorded all the same, and turns that case into a return.
            cases: list[Aggregate] = []
            if ships and order.shipped_at is None:
                act = at(shipped_at, command_id)
                clock = self._clock_first(order, [], act.at)
                turned = order.ship(shipment, act, anyway=True)
                cases += [
                    *self._turn_returns(order, turned, act, clock),
                    *clock.changed(exclude=order),
                ]
            if command.delivered_at is not None and order.delivered_at is None:
                act = at(command.delivered_at, command_id)
                clock = self._clock_first(order, [], act.at)
                turned = order.deliver(act, anyway=True)
                cases += [
                    *self._turn_returns(order, turned, act, clock),
                    *clock.changed(exclude=order),
                ]
            unique = list({a.id: a for a in cases if a is not order}.values())
            return order, unique, act

        return self.uow.run(placing, attempt)

    # Queries -------------------------------------------------------------------------------

    @handle.register
    def _show_case(self, command: ShowCase) -> dict[str, Any]:
        return self.get_case(command.case_id)

    @handle.register
    def _show_order(self, command: ShowOrder) -> dict[str, Any]:
        return self.get_order(command.order_id)

    @handle.register
    def _tick(self, command: Tick) -> dict[str, Any]:
        from aftersales.engine.deadlines import tick  # the clock is built on the engine

        return tick(self, command.now or self.clock(), batch=command.batch).to_json()

    @handle.register
    def _list_cases(self, command: ListCases) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("merchant_id", command.merchant),
            ("buyer_id", command.buyer),
            ("order_id", command.order),
            ("status", command.status.value if command.status else None),
        ):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        due = command.due_before
        if due is not None:
            where.append("due_at IS NOT NULL AND due_at <= ?")
            params.append(self.store.time_param(due))
        sql = "SELECT * FROM {t}aftersales_cases"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY due_at, opened_at, case_id" if due else " ORDER BY opened_at, case_id"
        if command.limit:
            sql += f" LIMIT {int(command.limit)}"
        return [listed_case(row) for row in self.store.query(sql, params)]

    def get_case(self, case_id: str | UUID) -> dict[str, Any]:
        """A case as `case show --json` gives it."""
        return self.load_case(case_id).to_json()

    def get_order(self, order_id: str) -> dict[str, Any]:
        """An order as `order show --json` gives it."""
        return self.load_order(order_id).to_json()

    def complete_case_id(self, given: str) -> str:
        """The case id a person means by the start of one (at least four characters, as git
        takes a short commit id); a whole id is returned as given. A start shared by several
        cases is refused, naming them."""
        text = given.strip().lower()
        if len(text) == 36 or not re.fullmatch(r"[0-9a-f-]{4,35}", text):
            return given
        rows = self.store.query(
            f"SELECT case_id FROM {{t}}{CASES_TABLE} WHERE case_id LIKE ? ORDER BY case_id LIMIT ?",
            (f"{text}%", AMBIGUOUS_SHOWN + 1),
        )
        if not rows:
            raise NotFound(f"no case starts with {given}")
        if len(rows) > 1:
            shown = ", ".join(str(r["case_id"]) for r in rows[:AMBIGUOUS_SHOWN])
            more = " and more" if len(rows) > AMBIGUOUS_SHOWN else ""
            raise BadInput(f"case id {given} is ambiguous: {shown}{more}; give more of it")
        return str(rows[0]["case_id"])


def command_rows(
    command: Action, target: Aggregate, fingerprint: str, act: Act
) -> list[CommandRow]:
    """The record of a command id, saved with the events the command made (if it has one)."""
    if command.command_id is None:
        return []
    return [
        CommandRow(
            command_id=command.command_id,
            action=command.action,
            target_id=str(target.id),
            fingerprint=fingerprint,
            version=target.version,
            recorded_at=act.recorded_at,
        )
    ]


def default_actor(case: ReturnCase, role: Role) -> str:
    if role is Role.BUYER:
        return case.buyer_id
    if role is Role.MERCHANT:
        return case.merchant_id
    return role.value


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
