"""The engine's Python API: load, act, save; idempotent command ids; retry on conflict.

Command scripts use this directly (one `Engine` per process, many actions through it); the
command line is a thin layer over it. The service owns the clock: the domain is handed the time
of each action and never reads one itself.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, NamedTuple, TypeVar
from uuid import UUID, uuid4, uuid5

from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent

from engine.case import ReturnCase, case_uuid, settle_order_lines
from engine.errors import AftersalesError, BadInput, Conflict, NotAllowed, NotFound
from engine.events import Act
from engine.order import (
    Order,
    OrderLine,
    Shipment,
    check_order_id,
    order_uuid,
    parse_case_line,
    parse_order_line,
)
from engine.policy import Policy
from engine.store import CaseRow, CommandRow, EventStore, parse_stored_time
from engine.values import (
    Actor,
    CaseType,
    Claim,
    Condition,
    DueAction,
    Party,
    Role,
    Status,
    money_str,
    parse_money,
    parse_reason,
    parse_time,
)

E = TypeVar("E", bound=Enum)
Clock = Callable[[], datetime]
MAX_ATTEMPTS = 8


def system_clock() -> datetime:
    return datetime.now(UTC)


def _enum(kind: type[E], value: str | E, what: str) -> E:
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        words = "|".join(str(m.value) for m in kind)
        raise BadInput(f"{what} {value!r} is not one of {words}") from None


def _money(value: Decimal | str | None, what: str = "amount") -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return parse_money(str(value), what)
    if isinstance(value, float):  # never money: refuse rather than round
        raise BadInput(f"{what} must be a decimal string such as 12.50, not a float")
    return parse_money(str(value), what)


def _time(value: datetime | str | None, what: str = "--at") -> datetime | None:
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            raise BadInput(f"{what} has no time zone")
        return value
    return parse_time(value, what)


def _text(value: str | None, what: str) -> str:
    if value is None or not str(value).strip():
        raise BadInput(f"{what} is required")
    return str(value).strip()


def _shipment(carrier: str | None, waybill: str | None) -> Shipment:
    return Shipment(carrier=_text(carrier, "--carrier"), waybill=_text(waybill, "--waybill"))


def _plain(value: Any) -> Any:
    """Arguments as JSON-comparable values, for a command's fingerprint."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return money_str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, OrderLine):
        return value.model_dump(mode="json")
    return value


# json.dumps(sort_keys=True, separators=(",", ":")) with its encoder made once. Fingerprints
# are stored with command ids, so this form must not change.
_fingerprint_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


class Common:
    """The options every action takes: --at, --by, --command-id, --expected-version."""

    __slots__ = ("at", "by", "command_id", "expected_version")

    def __init__(
        self,
        at: datetime | str | None = None,
        by: str | None = None,
        command_id: str | None = None,
        expected_version: int | None = None,
    ) -> None:
        self.at = _time(at)
        self.by = by.strip() if by is not None and by.strip() else None
        if by is not None and self.by is None:
            raise BadInput("--by must not be empty")
        self.command_id = command_id
        if command_id is not None and not command_id.strip():
            raise BadInput("--command-id must not be empty")
        if expected_version is not None and (
            not isinstance(expected_version, int) or expected_version < 0
        ):
            raise BadInput("--expected-version must be a whole number")
        self.expected_version = expected_version

    def fingerprint(self, action: str, target: str, args: dict[str, Any]) -> str:
        data = {
            "action": action,
            "target": target,
            "args": {k: _plain(v) for k, v in sorted(args.items())},
            "by": self.by,
            "at": self.at.isoformat() if self.at else None,
        }
        return hashlib.sha256(_fingerprint_json(data).encode()).hexdigest()


Aggregate = Order | ReturnCase


class Session:
    """A unit of work for bulk paths: actions run against aggregates kept in memory, and
    everything they record is saved in one transaction (``take``, then ``write``). Every rule is
    checked as usual; the domain checks before it records, so a refused action leaves the
    aggregates as they were."""

    def __init__(self, engine: Engine, cache_size: int) -> None:
        self.engine = engine
        self.cache_size = cache_size
        self.aggregates: dict[UUID, Aggregate] = {}
        self.absent: set[UUID] = set()
        self.touched: dict[UUID, Aggregate] = {}
        self.commands: dict[str, tuple[CommandRow, dict[str, Any]]] = {}
        self.known_commands: dict[str, dict[str, Any]] = {}
        # Commands taken to be saved and not known to be saved yet (see ``take``).
        self.saving: dict[str, dict[str, Any]] = {}

    def prefetch(self, ids: Iterable[UUID]) -> None:
        """Load, with one query, the aggregates not yet in memory; remember the absent."""
        wanted = [
            i for i in dict.fromkeys(ids) if i not in self.aggregates and i not in self.absent
        ]
        if not wanted:
            return
        found = self.engine.store.load_many(wanted)
        self.aggregates.update(found)
        self.absent.update(i for i in wanted if i not in found)

    def prefetch_commands(self, command_ids: Iterable[str]) -> None:
        wanted = [c for c in dict.fromkeys(command_ids) if c not in self.known_commands]
        if not wanted:
            return
        marks = ", ".join("?" for _ in wanted)
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
        return self.aggregates.get(uid)

    def stage(self, aggregates: Sequence[Aggregate | None], command: CommandRow | None) -> None:
        for aggregate in aggregates:
            if aggregate is not None:
                self.aggregates[aggregate.id] = aggregate
                self.absent.discard(aggregate.id)
                self.touched[aggregate.id] = aggregate
        if command is not None:
            row = command._asdict()
            self.commands[command.command_id] = (command, row)

    def take(self) -> Pending | None:
        """Everything recorded since the last take, ready to save (``write``), or None. The
        session goes on from the state in memory; the commands taken stay known until saved."""
        touched = list(self.touched.values())
        self.touched.clear()
        if not touched:
            self.commands.clear()
            return None
        mapper = self.engine.store.mapper
        stored = [mapper.to_stored_event(e) for a in touched for e in a.collect_events()]
        pending = Pending(
            stored,
            [case_row(a) for a in touched if isinstance(a, ReturnCase)],
            [c for c, _ in self.commands.values()],
        )
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
        the session goes on (PostgreSQL only: its recorder takes a pooled connection)."""
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
        self.aggregates.clear()
        self.absent.clear()
        self.touched.clear()
        self.commands.clear()
        self.known_commands.clear()
        self.saving.clear()


class Pending(NamedTuple):
    """One unit of work's events, case index rows and command rows, ready to save."""

    stored: list[StoredEvent]
    cases: list[CaseRow]
    commands: list[CommandRow]


class Engine:
    """One store, one policy, one clock: the after-sales workflow behind every command."""

    def __init__(
        self,
        store: str | EventStore | None = None,
        *,
        policy: Policy | None = None,
        clock: Clock = system_clock,
        cache_size: int = 10_000,
    ) -> None:
        self.store = store if isinstance(store, EventStore) else EventStore(store)
        self.policy = policy or Policy()
        self.clock = clock
        # How many saves lost a race and were retried on the new state (for operators).
        self.retries = 0
        self.session: Session | None = None
        # Aggregates this engine saved last, so a script acting on a case again does not
        # read it again; see _remember. Not shared between threads: one Engine per thread.
        self.cache_size = cache_size
        self._cache: OrderedDict[UUID, Aggregate] = OrderedDict()
        self._fresh = True  # reads are always fresh; only an action's attempt may use the cache
        self._used_cache = False

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def begin_session(self, cache_size: int = 4_000) -> Session:
        """Start a unit of work: actions from now on are kept in memory until the session's
        ``take`` gives them to ``write`` (see engine/bulk.py)."""
        self.session = Session(self, cache_size)
        return self.session

    def end_session(self) -> None:
        self.session = None

    def _get(self, uid: UUID) -> Aggregate | None:
        if self.session is not None:
            return self.session.get(uid)
        if not self._fresh:
            cached = self._cache.get(uid)
            if cached is not None:
                self._cache.move_to_end(uid)
                self._used_cache = True
                return cached
        aggregate: Aggregate | None = self.store.load(uid)
        return aggregate

    def _remember(self, aggregates: Iterable[Aggregate | None]) -> None:
        """Keep aggregates just saved. A cached one may be stale (another process may have
        moved it on): saving on it then fails on the version and is retried fresh, and a
        refusal is only ever reported from fresh state."""
        for aggregate in aggregates:
            if aggregate is not None:
                self._cache[aggregate.id] = aggregate
                self._cache.move_to_end(aggregate.id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # Loading -----------------------------------------------------------------------------------

    def find_order(self, order_id: str) -> Order | None:
        """The order, or None if the store has none by that id (fresh, or from the session)."""
        order = self._get(order_uuid(check_order_id(order_id)))
        return order if isinstance(order, Order) else None

    def load_order(self, order_id: str) -> Order:
        check_order_id(order_id)
        order = self._get(order_uuid(order_id))
        if not isinstance(order, Order):
            raise NotFound(f"no order {order_id}")
        return order

    def load_case(self, case_id: str | UUID, version: int | None = None) -> ReturnCase:
        uid = case_uuid(case_id)
        case = self._get(uid) if version is None else self.store.load(uid, version=version)
        if not isinstance(case, ReturnCase):
            raise NotFound(f"no case {case_id}")
        return case

    # The common path of every action ---------------------------------------------------------

    def _act(self, role: Role, actor_id: str, common: Common, command_id: str) -> Act:
        now = self.clock()
        return Act(
            at=common.at or now,
            actor=Actor(role=role, id=actor_id),
            command_id=command_id,
            recorded_at=now,
        )

    def find_command(self, command_id: str) -> dict[str, Any] | None:
        rows = self.store.query(
            "SELECT action, target_id, fingerprint, version FROM {t}aftersales_commands "
            "WHERE command_id = ?",
            (command_id,),
        )
        return rows[0] if rows else None

    def _replay(self, common: Common, fingerprint: str) -> dict[str, Any] | None:
        """The first result of a command id already used, or None if it is new."""
        if common.command_id is None:
            return None
        session = self.session
        if session is not None:
            row = session.find_command(common.command_id)
        else:
            row = self.find_command(common.command_id)
        if row is None:
            return None
        if row["fingerprint"] != fingerprint:
            raise BadInput(
                f"command id {common.command_id} was already used for a different "
                f"{row['action']} (on {row['target_id']}); use a new command id"
            )
        if session is not None:
            return {"replayed": common.command_id}  # bulk paths print no per-line results
        version = int(row["version"])
        if row["action"].startswith("order "):
            order = self.store.load(UUID(row["target_id"]), version=version)
            assert isinstance(order, Order)
            return order.to_json()
        return self.load_case(row["target_id"], version=version).to_json()

    def _save(
        self,
        action: str,
        target: Order | ReturnCase,
        others: Sequence[Order | ReturnCase | None],
        common: Common,
        fingerprint: str,
        act: Act,
    ) -> None:
        command = command_row(action, target, common, fingerprint, act)
        if self.session is not None:
            self.session.stage([target, *others], command)
            return
        cases = [case_row(a) for a in (target, *others) if isinstance(a, ReturnCase)]
        self.store.save(
            target, *others, cases=cases, commands=[command] if command is not None else []
        )

    def _retrying(
        self,
        action: str,
        target: str,
        args: dict[str, Any],
        common: Common,
        attempt: Callable[[str], tuple[Order | ReturnCase, list[Order | ReturnCase | None], Act]],
    ) -> dict[str, Any]:
        """Run one attempt after another until one saves: a concurrent writer makes the
        save fail on the aggregate's version, and the next attempt sees the new state (and
        may then be refused by the rules). Retrying that does not resolve it is a conflict.

        A command id is looked up only when something fails: a repeat of a command is either
        refused by the rules (the case has moved on) or fails to save on the command id's
        primary key, and then the first result is given again."""
        fingerprint = common.fingerprint(action, target, args) if common.command_id else ""
        command_id = common.command_id or str(uuid4())
        if self.session is not None:
            return self._in_session(action, common, fingerprint, command_id, attempt)
        fresh = False
        for _ in range(MAX_ATTEMPTS):
            self._fresh, self._used_cache = fresh, False
            try:
                main, others, act = attempt(command_id)
            except AftersalesError:
                if self._used_cache:  # decided on cached state: decide again on fresh state
                    fresh = True
                    continue
                replayed = self._replay(common, fingerprint)
                if replayed is not None:
                    return replayed
                raise
            finally:
                self._fresh = True
            try:
                self._save(action, main, others, common, fingerprint, act)
            except (IntegrityError, OperationalError):
                for aggregate in (main, *others):
                    if aggregate is not None:
                        self._cache.pop(aggregate.id, None)
                replayed = self._replay(common, fingerprint)
                if replayed is not None:
                    return replayed
                self.retries += 1
                fresh = True
                continue
            self._remember((main, *others))
            return main.to_json()
        raise Conflict(f"{action} {target}: the case kept changing under concurrent writers")

    def _in_session(
        self,
        action: str,
        common: Common,
        fingerprint: str,
        command_id: str,
        attempt: Callable[[str], tuple[Order | ReturnCase, list[Order | ReturnCase | None], Act]],
    ) -> dict[str, Any]:
        """In a unit of work nothing is saved yet, so nothing can conflict: the command ids
        the chunk uses were fetched with it, and are checked first."""
        replayed = self._replay(common, fingerprint)
        if replayed is not None:
            return replayed
        main, others, act = attempt(command_id)
        self._save(action, main, others, common, fingerprint, act)
        return {}  # bulk paths print no per-line results

    def _check_expected(self, aggregate: Order | ReturnCase, common: Common, what: str) -> None:
        expected = common.expected_version
        if expected is not None and aggregate.version != expected:
            raise Conflict(
                f"{what} is at version {aggregate.version}, not the expected {expected}: "
                "it changed since you read it"
            )

    def _case_action(
        self,
        case_id: str | UUID,
        action: str,
        role: Role,
        common: Common,
        args: dict[str, Any],
        do: Callable[[ReturnCase, Act], None],
    ) -> dict[str, Any]:
        uid = case_uuid(case_id)

        def attempt(command_id: str) -> tuple[ReturnCase, list[Order | ReturnCase | None], Act]:
            case = self.load_case(uid)
            self._check_expected(case, common, f"case {uid}")
            act = self._act(role, common.by or default_actor(case, role), common, command_id)
            holding = case.holds_lines
            refunded = case.refunded_amount
            # A rejected case that is escalated takes its lines back: check they are free
            # before acting, so every check comes before anything is recorded.
            order = self.load_order(case.order_id) if case.status is Status.REJECTED else None
            if order is not None:
                order.check_lines_free(list(case.lines))
            do(case, act)
            if holding == case.holds_lines:
                return case, [], act
            order = order or self.load_order(case.order_id)
            settle_order_lines(case, order, was_holding=holding, refunded_before=refunded, act=act)
            return case, [order], act

        return self._retrying(f"case {action}", str(uid), args, common, attempt)

    def _order_action(
        self,
        order_id: str,
        action: str,
        common: Common,
        args: dict[str, Any],
        do: Callable[[Order, Act], None],
    ) -> dict[str, Any]:
        def attempt(command_id: str) -> tuple[Order, list[Order | ReturnCase | None], Act]:
            order = self.load_order(order_id)
            self._check_expected(order, common, f"order {order_id}")
            act = self._act(Role.PLATFORM, common.by or "order-system", common, command_id)
            do(order, act)
            return order, [], act

        return self._retrying(f"order {action}", order_id, args, common, attempt)

    # Orders --------------------------------------------------------------------------------------

    def place_order(
        self,
        order_id: str,
        *,
        merchant_id: str,
        buyer_id: str,
        lines: Iterable[OrderLine | str],
        **common: Any,
    ) -> dict[str, Any]:
        c = Common(**common)
        check_order_id(order_id)
        parsed = [x if isinstance(x, OrderLine) else parse_order_line(x) for x in lines]
        args = {"merchant": merchant_id, "buyer": buyer_id, "lines": parsed}

        def attempt(command_id: str) -> tuple[Order, list[Order | ReturnCase | None], Act]:
            if self._get(order_uuid(order_id)) is not None:
                raise NotAllowed(f"order {order_id} is already placed")
            act = self._act(Role.PLATFORM, c.by or "order-system", c, command_id)
            order = Order.place(
                order_id, merchant_id=merchant_id, buyer_id=buyer_id, lines=parsed, act=act
            )
            return order, [], act

        return self._retrying("order place", order_id, args, c, attempt)

    def ship_order(
        self,
        order_id: str,
        *,
        carrier: str | None = None,
        waybill: str | None = None,
        **common: Any,
    ) -> dict[str, Any]:
        c = Common(**common)
        if (carrier is None) != (waybill is None):
            raise BadInput("give both --carrier and --waybill, or neither")
        shipment = _shipment(carrier, waybill) if carrier is not None else None
        return self._order_action(
            order_id,
            "ship",
            c,
            {"carrier": carrier, "waybill": waybill},
            lambda order, act: order.ship(shipment, act),
        )

    def deliver_order(self, order_id: str, **common: Any) -> dict[str, Any]:
        c = Common(**common)
        return self._order_action(order_id, "deliver", c, {}, lambda o, act: o.deliver(act))

    def import_order(
        self,
        order_id: str,
        *,
        merchant_id: str,
        buyer_id: str,
        lines: Iterable[OrderLine | str],
        placed_at: datetime | str | None = None,
        shipped_at: datetime | str | None = None,
        carrier: str | None = None,
        waybill: str | None = None,
        delivered_at: datetime | str | None = None,
        by: str | None = None,
    ) -> dict[str, Any]:
        """Place an order, and ship and deliver it as far as the facts given go, as one action
        saved at once. The order id is the key: what the store has already is kept, so
        importing the same facts again changes nothing; an order that is there with other
        facts (merchant, buyer or lines) is refused, not merged."""
        check_order_id(order_id)
        parsed = [x if isinstance(x, OrderLine) else parse_order_line(x) for x in lines]
        if (carrier is None) != (waybill is None):
            raise BadInput("give both carrier and waybill, or neither")
        shipment = _shipment(carrier, waybill) if carrier is not None else None
        placed = Common(at=placed_at, by=by)
        shipped = Common(at=shipped_at or delivered_at, by=by) if shipped_at or carrier else None
        delivered = Common(at=delivered_at, by=by) if delivered_at else None
        actor = placed.by or "order-system"
        args = {"merchant": merchant_id, "buyer": buyer_id, "lines": parsed}

        def attempt(command_id: str) -> tuple[Order, list[Order | ReturnCase | None], Act]:
            act = self._act(Role.PLATFORM, actor, placed, command_id)
            order = self._get(order_uuid(order_id))
            if not isinstance(order, Order):
                order = Order.place(
                    order_id, merchant_id=merchant_id, buyer_id=buyer_id, lines=parsed, act=act
                )
            elif (order.merchant_id, order.buyer_id, list(order.lines.values())) != (
                merchant_id,
                buyer_id,
                parsed,
            ):
                raise NotAllowed(
                    f"order {order_id} was imported before with other facts "
                    "(merchant, buyer or lines); it is not changed"
                )
            if shipped is not None and order.shipped_at is None:
                act = self._act(Role.PLATFORM, actor, shipped, command_id)
                order.ship(shipment, act)
            if delivered is not None and order.delivered_at is None:
                act = self._act(Role.PLATFORM, actor, delivered, command_id)
                order.deliver(act)
            return order, [], act

        return self._retrying("order import", order_id, args, placed, attempt)

    def get_order(self, order_id: str) -> dict[str, Any]:
        return self.load_order(order_id).to_json()

    # Cases: the buyer ---------------------------------------------------------------------------

    def open_case(
        self,
        order_id: str,
        *,
        case_type: CaseType | str,
        reason: str,
        amount: Decimal | str | None = None,
        lines: Iterable[str] = (),
        evidence: Iterable[str] = (),
        note: str | None = None,
        case_id: str | UUID | None = None,
        **common: Any,
    ) -> dict[str, Any]:
        """Open a case. Its id is ``case_id`` if given, else derived from the command id (so
        a script can name the case before it exists), else new."""
        c = Common(**common)
        new_id = new_case_id(case_id, c.command_id)
        kind = _enum(CaseType, case_type, "--type")
        parse_reason(_text(reason, "--reason"))
        asked = _money(amount)
        wanted = [parse_case_line(x) for x in lines]
        proofs = [_text(e, "--evidence") for e in evidence]
        args = {
            "type": kind,
            "reason": reason,
            "amount": asked,
            "lines": [f"{s}:{q}" for s, q in wanted],
            "evidence": proofs,
            "note": note,
            "case_id": str(new_id) if case_id is not None else None,
        }

        def attempt(command_id: str) -> tuple[ReturnCase, list[Order | ReturnCase | None], Act]:
            order = self.load_order(order_id)
            self._check_expected(order, c, f"order {order_id}")
            act = self._act(Role.BUYER, c.by or order.buyer_id, c, command_id)
            case_lines = order.case_lines(wanted)
            # A case id given or derived from the command id may be taken. Saving over it
            # fails on its first version and the action is tried again on fresh state: only
            # then is it worth a read (in a unit of work, reads are from memory anyway).
            named = case_id is not None or c.command_id is not None
            if named and (self._fresh or self.session is not None) and self._get(new_id):
                raise NotAllowed(f"case {new_id} exists already")
            case = ReturnCase.open(
                new_id,
                order,
                case_type=kind,
                reason=reason,
                amount=asked,
                lines=case_lines,
                evidence=proofs,
                note=note,
                policy=self.policy,
                act=act,
            )
            order.link_case(case.id, case_lines, act)
            return case, [order], act

        return self._retrying("case open", order_id, args, c, attempt)

    def ship_back(
        self, case_id: str, *, carrier: str | None, waybill: str | None, **common: Any
    ) -> dict[str, Any]:
        shipment = _shipment(carrier, waybill)
        return self._case_action(
            case_id,
            "ship-back",
            Role.BUYER,
            Common(**common),
            shipment.model_dump(),
            lambda case, act: case.ship_back(act, self.policy, shipment),
        )

    def withdraw(self, case_id: str, **common: Any) -> dict[str, Any]:
        return self._case_action(
            case_id,
            "withdraw",
            Role.BUYER,
            Common(**common),
            {},
            lambda case, act: case.withdraw(act),
        )

    def escalate(
        self,
        case_id: str,
        *,
        claim: Claim | str,
        evidence: Iterable[str] = (),
        note: str | None = None,
        **common: Any,
    ) -> dict[str, Any]:
        kind = _enum(Claim, claim, "--claim")
        proofs = [_text(e, "--evidence") for e in evidence]
        return self._case_action(
            case_id,
            "escalate",
            Role.BUYER,
            Common(**common),
            {"claim": kind, "evidence": proofs, "note": note},
            lambda case, act: case.escalate(act, claim=kind, evidence=proofs, note=note),
        )

    def rate(
        self, case_id: str, *, score: int | str, comment: str | None = None, **common: Any
    ) -> dict[str, Any]:
        try:
            value = int(score)
        except (TypeError, ValueError):
            raise BadInput(f"--score {score!r} must be a whole number 1 to 5") from None
        if not 1 <= value <= 5:
            raise BadInput(f"--score {value} must be 1 to 5")
        return self._case_action(
            case_id,
            "rate",
            Role.BUYER,
            Common(**common),
            {"score": value, "comment": comment},
            lambda case, act: case.rate(act, score=value, comment=comment),
        )

    # Cases: the merchant ------------------------------------------------------------------------

    def approve(
        self, case_id: str, *, return_address: str | None = None, **common: Any
    ) -> dict[str, Any]:
        return self._case_action(
            case_id,
            "approve",
            Role.MERCHANT,
            Common(**common),
            {"return_address": return_address},
            lambda case, act: case.approve(act, self.policy, return_address=return_address),
        )

    def reject(
        self, case_id: str, *, reason: str | None, communication: str | None, **common: Any
    ) -> dict[str, Any]:
        why = _text(reason, "--reason")
        talk = _text(communication, "--communication")
        return self._case_action(
            case_id,
            "reject",
            Role.MERCHANT,
            Common(**common),
            {"reason": why, "communication": talk},
            lambda case, act: case.reject(act, reason=why, communication=talk),
        )

    def receive(
        self, case_id: str, *, condition: Condition | str = Condition.OK, **common: Any
    ) -> dict[str, Any]:
        state = _enum(Condition, condition, "--condition")
        return self._case_action(
            case_id,
            "receive",
            Role.MERCHANT,
            Common(**common),
            {"condition": state},
            lambda case, act: case.receive(act, self.policy, condition=state),
        )

    def refund(
        self, case_id: str, *, amount: Decimal | str | None = None, **common: Any
    ) -> dict[str, Any]:
        value = _money(amount)
        return self._case_action(
            case_id,
            "refund",
            Role.MERCHANT,
            Common(**common),
            {"amount": value},
            lambda case, act: case.refund(act, amount=value),
        )

    def ship_replacement(
        self, case_id: str, *, carrier: str | None, waybill: str | None, **common: Any
    ) -> dict[str, Any]:
        shipment = _shipment(carrier, waybill)
        return self._case_action(
            case_id,
            "ship-replacement",
            Role.MERCHANT,
            Common(**common),
            shipment.model_dump(),
            lambda case, act: case.ship_replacement(act, shipment),
        )

    def reship(
        self,
        case_id: str,
        *,
        carrier: str | None = None,
        waybill: str | None = None,
        cannot: bool = False,
        note: str | None = None,
        **common: Any,
    ) -> dict[str, Any]:
        if cannot and (carrier or waybill):
            raise BadInput("--cannot takes no --carrier or --waybill")
        shipment = None if cannot else _shipment(carrier, waybill)
        return self._case_action(
            case_id,
            "reship",
            Role.MERCHANT,
            Common(**common),
            {"carrier": carrier, "waybill": waybill, "cannot": cannot, "note": note},
            lambda case, act: case.reship(act, shipment, note=note),
        )

    def recover_goods(
        self, case_id: str, *, note: str | None = None, **common: Any
    ) -> dict[str, Any]:
        return self._case_action(
            case_id,
            "recover-goods",
            Role.MERCHANT,
            Common(**common),
            {"note": note},
            lambda case, act: case.recover_goods(act, note=note),
        )

    # Cases: the platform and the clock ----------------------------------------------------------

    def rule(
        self,
        case_id: str,
        *,
        in_favour_of: Party | str,
        note: str | None = None,
        **common: Any,
    ) -> dict[str, Any]:
        party = _enum(Party, in_favour_of, "--for")
        if party is Party.PLATFORM:
            raise BadInput("--for is buyer or merchant")
        return self._case_action(
            case_id,
            "rule",
            Role.PLATFORM,
            Common(**common),
            {"for": party, "note": note},
            lambda case, act: case.rule(act, self.policy, in_favour_of=party, note=note),
        )

    def fire(self, case_id: str | UUID, action: DueAction | str, **common: Any) -> dict[str, Any]:
        """Fire a case's running deadline as the system (what the tick does for each one)."""
        kind = _enum(DueAction, action, "deadline action")
        return self._case_action(
            case_id,
            kind.value,
            Role.SYSTEM,
            Common(**common),
            {},
            lambda case, act: case.fire(act, self.policy, kind),
        )

    # Reading -------------------------------------------------------------------------------------

    def get_case(self, case_id: str) -> dict[str, Any]:
        return self.load_case(case_id).to_json()

    def list_cases(
        self,
        *,
        merchant: str | None = None,
        buyer: str | None = None,
        order_id: str | None = None,
        status: Status | str | None = None,
        due_before: datetime | str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        if merchant:
            where.append("merchant_id = ?")
            params.append(merchant)
        if buyer:
            where.append("buyer_id = ?")
            params.append(buyer)
        if order_id:
            where.append("order_id = ?")
            params.append(order_id)
        if status:
            where.append("status = ?")
            params.append(_enum(Status, status, "--status").value)
        due = _time(due_before, "--due-before")
        if due is not None:
            where.append("due_at IS NOT NULL AND due_at <= ?")
            params.append(self.store.time_param(due))
        if limit is not None and limit <= 0:
            raise BadInput("--limit must be above 0")
        sql = "SELECT * FROM {t}aftersales_cases"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += (
            " ORDER BY due_at, opened_at, case_id"
            if due is not None
            else (" ORDER BY opened_at, case_id")
        )
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [listed_case(row) for row in self.store.query(sql, params)]


CASE_NAMESPACE = UUID("0c7b5f3e-8d1a-4f6e-a2b9-5e4d3c2b1a09")


def new_case_id(case_id: str | UUID | None, command_id: str | None) -> UUID:
    if case_id is not None:
        if isinstance(case_id, UUID):
            return case_id
        try:
            return UUID(str(case_id))
        except ValueError:
            raise BadInput(f"--case-id {case_id!r} is not a UUID") from None
    if command_id is not None:
        return uuid5(CASE_NAMESPACE, f"case:{command_id}")
    return uuid4()


def command_row(
    action: str, target: Aggregate, common: Common, fingerprint: str, act: Act
) -> CommandRow | None:
    """The record of a command id, saved with the events the command made (if it has one)."""
    if common.command_id is None:
        return None
    return CommandRow(
        command_id=common.command_id,
        action=action,
        target_id=str(target.id),
        fingerprint=fingerprint,
        version=target.version,
        recorded_at=act.recorded_at,
    )


def default_actor(case: ReturnCase, role: Role) -> str:
    if role is Role.BUYER:
        return case.buyer_id
    if role is Role.MERCHANT:
        return case.merchant_id
    return role.value


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
