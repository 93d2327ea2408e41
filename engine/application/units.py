"""Units of work: where an action's aggregates come from and how what it records is committed,
one strategy each (the engine, engine/application/handler.py, runs every action through one):

- ``SaveNow`` (the default): load (a case this engine saved last comes from the library's
  aggregate cache), act, save at once on the version loaded; a lost race is retried on fresh
  state, and a refusal is only ever decided on fresh state;
- ``Chunk`` (bulk paths, engine/application/bulk.py): aggregates prefetched and kept in memory,
  many actions saved in one transaction, possibly on another thread;
- ``Group`` (the tick, engine/application/tick.py): deadlines fired in memory and saved
  together, fired again one by one if anything in the group changed meanwhile;
- ``Together`` (``Engine.handle_together``, the HTTP server's group commit): concurrent actions
  run in memory one after the other and saved in one transaction; if any of them is refused, or
  the save fails, none is saved and each runs again alone (``SaveNow``).

One action under ``SaveNow``::

    Engine.handle          SaveNow.run                 domain              AftersalesStore
        |                      |                          |                       |
        |--run(cmd, attempt)-->|                          |                       |
        |                      |--attempt(command id)---->|                       |
        |                      |   get(case), get(order)  |                       |
        |                      |<-------------------------|--load (cache, or read |
        |                      |                          |  and check the chain)-|
        |                      |                          | deadlines due fire    |
        |                      |                          | first, then the       |
        |                      |                          | action (or a refusal) |
        |                      |<--aggregates, Act--------|                       |
        |                      |--save(events, case rows, command rows)---------->|
        |                      |                          |      one transaction  |
        |                      |<--IntegrityError (a lost race, a used id)--------|
        |                      |--replay: the first result of a used command id?->|
        |                      |--else attempt again on fresh state (at most      |
        |                      |  MAX_ATTEMPTS times, then Conflict)              |
        |<--result (to_json)---|                          |                       |

A refusal decided on cached state is decided again on fresh state; the others run the same
attempt but keep what it records in memory until their one save.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID, uuid4

from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent

from aftersales.engine.application.requests import (
    Action,
)
from aftersales.engine.domain.assignment import CaseAssignment
from aftersales.engine.domain.buyer import Buyer
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.errors import (
    AftersalesError,
    BadInput,
    Conflict,
    Poisoned,
)
from aftersales.engine.domain.events import Act
from aftersales.engine.domain.invariants import InvariantBroken
from aftersales.engine.domain.order import Order
from aftersales.engine.domain.shop import Shop
from aftersales.engine.storage.case_index import (
    CaseRow,
    CommandRow,
    Head,
    case_rows,
    command_rows,
    take_events,
)
from aftersales.engine.storage.sql import Dialect

if TYPE_CHECKING:  # the engine runs units of work and the tick; they only name it
    from aftersales.engine.application.handler import Engine


MAX_ATTEMPTS = 8

OrderOrCase = Order | ReturnCase | Shop | CaseAssignment | Buyer
# The same, for isinstance checks of what a cache or a read gave.
AGGREGATE_KINDS = (Order, ReturnCase, Shop, CaseAssignment, Buyer)
# One try at an action: the aggregate it is about, the others it changed, and its circumstances.
Attempt = Callable[[str], tuple[OrderOrCase, list[OrderOrCase], Act]]


class Pending(NamedTuple):
    """One unit of work's events, case index rows and command rows, ready to save."""

    stored: list[StoredEvent]
    cases: list[CaseRow]
    commands: list[CommandRow]
    heads: list[Head]


# Units of work -------------------------------------------------------------------------------


class UnitOfWork:
    """Where an action's aggregates come from, and how what it records is committed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Whether the last command's result was its first result given again (its command id
        # had been used), not something this command did.
        self.replayed = False

    def get(self, uid: UUID) -> OrderOrCase | None:
        aggregate: OrderOrCase | None = self.engine.store.load(uid)
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
        assert isinstance(aggregate, AGGREGATE_KINDS)
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

    def get(self, uid: UUID) -> OrderOrCase | None:
        if self.use_cache:
            cached = self.engine.store.cached(uid)
            if isinstance(cached, AGGREGATE_KINDS):
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
                    commands=command_rows(
                        command.command_id, command.action, main, fingerprint, act
                    ),
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
        self.aggregates: dict[UUID, OrderOrCase] = {}
        self.absent: set[UUID] = set()
        # Aggregates with a stored event that cannot be used: a line that needs one is
        # refused with its Poisoned, the others go on.
        self.poisoned: dict[UUID, Poisoned] = {}
        self.touched: dict[UUID, OrderOrCase] = {}
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
        for row in command_rows(command.command_id, command.action, main, fingerprint, act):
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

    def get(self, uid: UUID) -> OrderOrCase | None:
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
        heads: list[Head] = []
        stored = [mapper.to_stored_event(e) for e in take_events(touched, heads)]
        commands = [c for c, _ in self.commands.values()]
        pending = Pending(stored, case_rows(touched), commands, heads)
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
        recorder.insert_events(
            pending.stored, cases=pending.cases, commands=pending.commands, heads=pending.heads
        )
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
        self.changed: list[OrderOrCase] = []
        self.commands: list[CommandRow] = []
        # Aggregates read for the group ahead of its firings (``prefetch``), each handed out
        # once: a second read of one, and any read of one not here, goes to the store as
        # before, so every firing gets aggregates of its own, as read from the store.
        self.fetched: dict[UUID, OrderOrCase] = {}

    def prefetch(self, case_ids: Iterable[UUID]) -> None:
        """Read the group's cases, then their orders, with a query each instead of two per
        deadline (the round trips were most of a tick's time). Read the same way as one at a
        time (``load_many``: each checked against the case index and its chain and history
        verified); one that cannot be read is left to be read, and refused, on its own. Only the
        reads move: each aggregate is saved on the version read, as before, and a group whose
        cases or orders moved on meanwhile fails its save and is fired again one by one."""
        store = self.engine.store
        try:
            cases = store.load_many(list(dict.fromkeys(case_ids)), {})
            orders = store.load_many(
                list(
                    dict.fromkeys(c.order_ref for c in cases.values() if isinstance(c, ReturnCase))
                ),
                {},
            )
        except AftersalesError:  # the store unavailable, say: each firing meets it on its own
            return
        for found in (cases, orders):
            self.fetched.update(
                (uid, a) for uid, a in found.items() if isinstance(a, AGGREGATE_KINDS)
            )

    def get(self, uid: UUID) -> OrderOrCase | None:
        fetched = self.fetched.pop(uid, None)
        return fetched if fetched is not None else super().get(uid)

    def run(self, command: Action, attempt: Attempt) -> dict[str, Any]:
        # A deadline already fired shows up as a case that moved on (refused when loaded) or
        # as a failed group save (then fired again one by one, and replayed there).
        self.replayed = False
        fingerprint = command.fingerprint() if command.command_id else ""
        main, others, act = attempt(command.command_id or str(uuid4()))
        self.changed += [main, *others]
        self.commands += command_rows(command.command_id, command.action, main, fingerprint, act)
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
        self.served: dict[UUID, OrderOrCase] = {}
        self.touched: dict[UUID, OrderOrCase] = {}
        self.commands: list[CommandRow] = []

    def get(self, uid: UUID) -> OrderOrCase | None:
        if uid in self.served:
            return self.served[uid]
        found = self.engine.store.cached(uid)
        if not isinstance(found, AGGREGATE_KINDS):
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
        self.commands += command_rows(command.command_id, command.action, main, fingerprint, act)
        return main.to_json()

    def save(self) -> None:
        changed = list(self.touched.values())
        if changed:
            self.engine.store.save(*changed, cases=case_rows(changed), commands=self.commands)

    def forget(self) -> None:
        for uid in self.served:
            self.engine.store.forget(uid)
