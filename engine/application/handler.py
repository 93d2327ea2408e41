"""The engine's Python API: one entry point, ``Engine.handle(command)``, over a unit of work.

Command scripts use this directly (one `Engine` per process, many commands through it); the
command line, `batch` and the imports are adapters that build typed commands
(engine/application/requests.py) and hand them here. The engine owns the clock: the domain is
handed the time of each action and never reads one itself. Where an action's aggregates come
from and how what it records is committed is the unit of work's business
(engine/application/units.py); a ``Tick`` command is the tick's (engine/application/tick.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from datetime import UTC, datetime
from decimal import Decimal
from functools import singledispatchmethod
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, OperationalError

from aftersales.engine.application.as_of import ReadCopies, as_of_time
from aftersales.engine.application.requests import (
    AcceptOffer,
    Action,
    ApproveCase,
    BuyerAction,
    CaseAction,
    CaseOrder,
    Command,
    EscalateCase,
    FireDeadline,
    ImportOrder,
    ListCases,
    OpenCase,
    OrderAction,
    PlaceOrder,
    QueueAction,
    RefuseDelivery,
    RuleCase,
    ShipBack,
    ShopAction,
    ShowAssignment,
    ShowBuyer,
    ShowCase,
    ShowOrder,
    ShowShop,
    Tick,
    new_case_id,
)
from aftersales.engine.application.staff_queues import assignee_filter
from aftersales.engine.application.tick import deadline_command_id, tick
from aftersales.engine.application.units import OrderOrCase, SaveNow, Together, UnitOfWork
from aftersales.engine.domain.assignment import CaseAssignment, assignment_uuid, pick_member
from aftersales.engine.domain.buyer import Buyer, buyer_uuid, refusal, unknown_buyer
from aftersales.engine.domain.case import ReturnCase, case_uuid, settle_order_lines
from aftersales.engine.domain.errors import (
    AftersalesError,
    BadInput,
    Conflict,
    NotAllowed,
    NotFound,
)
from aftersales.engine.domain.events import Act
from aftersales.engine.domain.order import Order, check_order_id, order_uuid
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.shop import Shop, shop_uuid
from aftersales.engine.domain.values import (
    FINAL_STATUSES,
    RETURN_TYPES,
    Actor,
    CaseType,
    DueAction,
    Party,
    Role,
    Status,
    money_str,
)
from aftersales.engine.storage.case_index import case_row, listed_case
from aftersales.engine.storage.sql import CASES_TABLE, parse_stored_time
from aftersales.engine.storage.store import AftersalesStore

WallClock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def _address_of(shop: Shop | None) -> str | None:
    """A shop's default return address, as an approval records it (None: it has none)."""
    found = shop.default_address if shop is not None else None
    return found.text() if found is not None else None


def _due_by(case: ReturnCase, until: datetime) -> bool:
    return case.due is not None and case.due.due_at <= until


class FiredDeadlines:
    """What the clock did before an action: the aggregates it changed, and what fired."""

    def __init__(self) -> None:
        self.touched: dict[UUID, OrderOrCase] = {}
        self.fired: dict[UUID, list[str]] = {}
        # The same, as a read shows it (``pending_clock``), in the order the deadlines fired.
        self.applied: list[dict[str, Any]] = []

    def changed(self, *, exclude: OrderOrCase) -> list[OrderOrCase]:
        return [a for a in self.touched.values() if a is not exclude]

    def explain(self, case: ReturnCase, refusal: AftersalesError) -> AftersalesError:
        """A refusal that came after the clock acted says what the clock did first."""
        fired = self.fired.get(case.id)
        if not fired:
            return refusal
        told = "; ".join(fired)
        return type(refusal)(f"the clock acted first: {told}. {refusal.message}")


# The engine ------------------------------------------------------------------------------------

# How many cases an ambiguous short case id names in its refusal.
AMBIGUOUS_SHOWN = 5


class Engine:
    """One store, one policy, one clock: the after-sales workflow behind every command."""

    def __init__(
        self,
        store: str | AftersalesStore | None = None,
        *,
        policy: Policy | None = None,
        clock: WallClock = system_clock,
        cache_size: int = 10_000,
        create: bool = True,
    ) -> None:
        self.store = (
            store
            if isinstance(store, AftersalesStore)
            else AftersalesStore(store, cache_size=cache_size, create=create)
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

    def handle_together(
        self, commands: Sequence[Action], snapshot: Callable[[Any], Any] | None = None
    ) -> list[tuple[Any, bool]]:
        """Run actions as one group commit: saved in one transaction, each seeing the ones
        before it. If any is refused or the save fails, nothing of the group is saved and each
        runs alone, as ``handle`` runs it. For each, in order: its result as ``snapshot`` took
        it (or the error it raised) and whether that was a command id's first result given
        again. A result shares lists with its aggregate, which the next command may change:
        ``snapshot`` takes what it needs of it at once (a copy, by default; the HTTP service
        encodes it as JSON)."""
        take = snapshot or json_copy
        group = Together(self)
        try:
            with self.unit_of_work(group):
                results = [take(self.handle(command)) for command in commands]
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
                alone.append((take(self.handle(command)), self.uow.replayed))
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
    def _check_expected(aggregate: OrderOrCase, command: Action, what: str) -> None:
        Engine._check_expected_version(aggregate.version, command, what)

    @staticmethod
    def _check_expected_version(version: int, command: Action, what: str) -> None:
        expected = command.expected_version
        if expected is not None and version != expected:
            raise Conflict(
                f"{what} is at version {version}, not the expected {expected}: "
                "it changed since you read it"
            )

    # The clock acts first ------------------------------------------------------------------

    def _clock_first(
        self, order: Order, cases: list[ReturnCase], until: datetime
    ) -> FiredDeadlines:
        """Fire, in the order they fell due, every deadline due by ``until`` on ``cases`` and
        on the other cases holding lines of ``order``, each exactly as the tick fires it (the
        system, at its due time, under the deadline's own command id), freeing or keeping the
        order's lines as each one leaves them. Every rule is then judged on the state the clock
        would have made, whenever the tick happens to run."""
        clock = FiredDeadlines()
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
            clock.applied.append(
                {
                    "case_id": str(case.id),
                    "action": deadline.action.value,
                    "due_at": deadline.due_at.isoformat(),
                    "from": before.value,
                    "to": case.status.value,
                }
            )
        return clock

    def _apply(self, command: CaseAction, case: ReturnCase, act: Act, order: Order) -> bool:
        """Take a case action, then free or take back the order's lines as it leaves them;
        True if the order recorded something."""
        holding, refunded = case.holds_lines, case.refunded_amount
        self._shop_terms(command, case)
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

        def attempt(command_id: str) -> tuple[OrderOrCase, list[OrderOrCase], Act]:
            case = self.load_case(uid)
            self._check_expected(case, command, f"case {uid}")
            act = self._act(command, default_actor(case, command.role), command_id)
            order: Order | None = None
            clock = FiredDeadlines()
            if not isinstance(command, FireDeadline) and _due_by(case, act.at):
                # The clock acts first: the deadlines due by this action's time fire now,
                # exactly as a tick would have fired them, and the action is judged after.
                order = self.load_order(case.order_id)
                clock = self._clock_first(order, [case], act.at)
            holding, refunded = case.holds_lines, case.refunded_amount
            # A rejected case that is escalated takes its lines back: check they are free
            # before acting, so every check comes before anything is recorded. (Only then: the
            # rejected case's other ways on, closed by the clock or withdrawn, hold nothing, and
            # another case may hold its lines meanwhile.)
            if case.status is Status.REJECTED and isinstance(command, EscalateCase):
                order = order or self.load_order(case.order_id)
                order.check_lines_free(list(case.lines))
            if command.needs_order:
                order = order or self.load_order(case.order_id)
            self._shop_terms(command, case)
            self._buyer_terms(command, case, act)
            try:
                command.apply(case, act, self.policy, order)
            except AftersalesError as exc:
                raise clock.explain(case, exc) from None
            lost = self._dispute_lost(command, case, act)
            if holding != case.holds_lines or refunded != case.refunded_amount:
                # The case let go of its lines or took them back, or refunded while it keeps
                # them (an instant refund): the order's books say so.
                order = order or self.load_order(case.order_id)
                settle_order_lines(
                    case, order, was_holding=holding, refunded_before=refunded, act=act
                )
                clock.touched.setdefault(order.id, order)
            if not isinstance(command, FireDeadline) and _due_by(case, act.at):
                # A deadline a person's action gave back already due (an offer declined after
                # the wait it interrupted ran out) fires at once, as the next tick would: no
                # case is left waiting on a party past its time. (One the clock gives back, an
                # offer lapsing, is fired by the same tick's next pass, and reported by it.)
                order = order or self.load_order(case.order_id)
                clock.touched.update(self._clock_first(order, [case], act.at).touched)
            return case, [*clock.changed(exclude=case), *lost], act

        return self.uow.run(command, attempt)

    @handle.register
    def _open_case(self, command: OpenCase) -> dict[str, Any]:
        new_id = command.new_case_id()
        named = command.case_id is not None or command.command_id is not None

        def attempt(command_id: str) -> tuple[OrderOrCase, list[OrderOrCase], Act]:
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
            # The shop's settings, read once: its rules may approve, its staff take the case.
            shop = self.find_shop(case.merchant_id)
            self._by_rule(case, order, act, shop)
            assigned = self._assign_new(case, act, shop)
            return case, [order, *clock.changed(exclude=order), *assigned], act

        return self.uow.run(command, attempt)

    # The shop's settings ---------------------------------------------------------------------

    def find_shop(self, merchant_id: str) -> Shop | None:
        shop = self.uow.get(shop_uuid(merchant_id))
        return shop if isinstance(shop, Shop) else None

    def _shop_terms(self, command: CaseAction, case: ReturnCase) -> None:
        """Before an action that may approve a return (staff approving without naming an
        address, the clock's approval, the buyer taking an offer of a return), what the shop
        says is its default return address now."""
        if isinstance(command, ApproveCase):
            approves = case.case_type if command.return_address is None else None
        elif isinstance(command, AcceptOffer):
            offered = case.offers[-1]["type"] if case.offers else None
            approves = CaseType(offered) if offered else None
        elif isinstance(command, FireDeadline) and command.deadline is DueAction.AUTO_APPROVE:
            approves = case.case_type
        else:
            approves = None
        # Read only when an address is needed: a return approved without one named.
        shop = self.find_shop(case.merchant_id) if approves in RETURN_TYPES else None
        case.default_address = _address_of(shop)

    def _by_rule(self, case: ReturnCase, order: Order, act: Act, shop: Shop | None) -> None:
        """A request one of the shop's rules approves is approved as it is opened, recorded as
        the rule's (the rule and its version), a return to the shop's default address."""
        if shop is None or not shop.rules:
            return
        # A line without a category is in none a rule may name.
        categories = {order.lines[line.sku].category or "" for line in case.lines}
        rule = shop.rule_for(self.policy, case.case_type, case.reason, case.amount, categories)
        if rule is None:
            return
        case.default_address = _address_of(shop)
        by_rule = act.by(Role.MERCHANT, f"rule:{rule.rule_id}")
        holding, refunded = case.holds_lines, case.refunded_amount
        case.approve(by_rule, self.policy, by_rule=rule.named)
        settle_order_lines(case, order, was_holding=holding, refunded_before=refunded, act=act)

    # A buyer's standing: instant refunds (engine/domain/buyer.py) ---------------------------

    def find_buyer(self, buyer_id: str) -> Buyer | None:
        buyer = self.uow.get(buyer_uuid(buyer_id))
        return buyer if isinstance(buyer, Buyer) else None

    def _buyer_terms(self, command: CaseAction, case: ReturnCase, act: Act) -> None:
        """Before goods are shipped back (the one action that asks), whether the buyer's
        standing lets the platform refund them at once: read only when the policy has it."""
        if isinstance(command, ShipBack):
            rules = self.policy.instant_refund
            buyer = self.find_buyer(case.buyer_id) if rules is not None else None
            case.instant_refund_refusal = refusal(buyer, rules, act.at)

    def _dispute_lost(self, command: CaseAction, case: ReturnCase, act: Act) -> list[Buyer]:
        """A ruling for the merchant is a dispute the buyer lost: recorded on the buyer with it."""
        if not isinstance(command, RuleCase) or command.in_favour_of is not Party.MERCHANT:
            return []
        buyer = self.find_buyer(case.buyer_id) or Buyer.note(case.buyer_id, act)
        buyer.dispute_lost(act, case.id)
        return [buyer]

    @handle.register
    def _buyer_action(self, command: BuyerAction) -> dict[str, Any]:
        def attempt(command_id: str) -> tuple[OrderOrCase, list[OrderOrCase], Act]:
            act = self._act(command, "platform", command_id)
            buyer = self.find_buyer(command.buyer_id) or Buyer.note(command.buyer_id, act)
            self._check_expected(buyer, command, f"buyer {command.buyer_id}")
            command.apply(buyer, act)
            return buyer, [], act

        return self.uow.run(command, attempt)

    @handle.register
    def _show_buyer(self, command: ShowBuyer) -> dict[str, Any]:
        buyer = self.find_buyer(command.buyer_id)
        shown = unknown_buyer(command.buyer_id) if buyer is None else buyer.to_json()
        rules = self.policy.instant_refund
        why = refusal(buyer, rules, command.at or self.clock())
        shown["instant_refund"] = {
            "eligible": why is None,
            "why_not": why,
            "up_to": money_str(rules.up_to) if rules is not None else None,
        }
        return shown

    @handle.register
    def _shop_action(self, command: ShopAction) -> dict[str, Any]:
        def attempt(command_id: str) -> tuple[OrderOrCase, list[OrderOrCase], Act]:
            act = self._act(command, command.merchant_id, command_id)
            shop = self.find_shop(command.merchant_id)
            if shop is None:
                shop = Shop.open(command.merchant_id, act)
            self._check_expected(shop, command, f"shop {command.merchant_id}")
            command.apply(shop, act, self.policy)
            return shop, [], act

        return self.uow.run(command, attempt)

    @handle.register
    def _show_shop(self, command: ShowShop) -> dict[str, Any]:
        shop = self.find_shop(command.merchant_id)
        if shop is None:  # no settings yet: none of either
            return {
                "merchant_id": command.merchant_id,
                "version": 0,
                "return_addresses": [],
                "rules": [],
                "assign_mode": "round_robin",
                "staff": [],
            }
        return shop.to_json()

    # Staff queues: who of the shop's staff has a case (engine/domain/assignment.py) ----------

    def _assign_new(self, case: ReturnCase, act: Act, shop: Shop | None) -> list[CaseAssignment]:
        """A new case still open is assigned to one of its shop's staff, if it has any (by
        the shop's mode), recorded as the system's, with the opening's command id."""
        if case.status in FINAL_STATUSES or shop is None:
            return []
        picked = pick_member(
            shop, case.id, case.reason, case.amount, [line.sku for line in case.lines]
        )
        if picked is None:
            return []
        member, how = picked
        by_system = act.by(Role.SYSTEM, "assignment")
        return [CaseAssignment.start(case.id, case.merchant_id, member, how, by_system)]

    def find_assignment(self, case_id: UUID) -> CaseAssignment | None:
        found = self.uow.get(assignment_uuid(case_id))
        return found if isinstance(found, CaseAssignment) else None

    @handle.register
    def _queue_action(self, command: QueueAction) -> dict[str, Any]:
        def attempt(command_id: str) -> tuple[OrderOrCase, list[OrderOrCase], Act]:
            case = self.load_case(command.case_id)
            act = self._act(command, default_actor(case, command.role), command_id)
            member = command.member_for()
            if case.status in FINAL_STATUSES:
                raise NotAllowed(
                    f"case {case.id} has ended ({case.status}): it is in no one's queue"
                )
            shop = self.find_shop(case.merchant_id)
            if shop is None or member not in shop.roster:
                raise NotAllowed(
                    f"{member} is not on shop {case.merchant_id}'s staff (shop add-staff adds them)"
                )
            assignment = self.find_assignment(case.id)
            if assignment is None:
                self._check_expected_version(0, command, f"case {case.id}'s assignment")
                assignment = CaseAssignment.start(
                    case.id, case.merchant_id, member, command.how, act
                )
            else:
                self._check_expected(assignment, command, f"case {case.id}'s assignment")
                assignment.assign(act, member, command.how)
            return assignment, [], act

        return self.uow.run(command, attempt)

    @handle.register
    def _show_assignment(self, command: ShowAssignment) -> dict[str, Any]:
        case = self.load_case(command.case_id)
        assignment = self.find_assignment(case.id)
        if assignment is None:
            return {
                "case_id": str(case.id),
                "merchant_id": case.merchant_id,
                "assignee": None,
                "how": None,
                "version": 0,
                "history": [],
            }
        return assignment.to_json()

    @handle.register
    def _refuse_delivery(self, command: RefuseDelivery) -> dict[str, Any]:
        def attempt(command_id: str) -> tuple[OrderOrCase, list[OrderOrCase], Act]:
            order = self.load_order(command.order_id)
            self._check_expected(order, command, f"order {command.order_id}")
            act = self._act(command, "order-system", command_id)
            clock = self._clock_first(order, [], act.at)
            cases: list[ReturnCase] = []
            # A refund only awaiting the merchant: the parcel coming back answers it.
            for holder in dict.fromkeys(order.holders.values()):
                case = self.uow.get(holder)
                if (
                    isinstance(case, ReturnCase)
                    and case.status is Status.AWAITING_MERCHANT
                    and case.case_type is CaseType.REFUND_ONLY
                ):
                    case.refuse_delivery(act, self.policy, order)
                    cases.append(case)
            free: list[tuple[str, int | None]] = [
                (sku, None) for sku in order.lines if sku not in order.holders
            ]
            lines = order.case_lines(free) if free else []
            worth = order.refundable(lines) if lines else Decimal(0)
            if worth > 0 and order.shipped_at is not None and order.delivered_at is None:
                # The buyer's own request for what no case holds: a refund only, opened as the
                # parcel was refused, and turned back at once.
                opened = act.by(Role.BUYER, order.buyer_id)
                case = ReturnCase.open(
                    new_case_id(None, f"refused:{command_id}"),
                    order,
                    case_type=CaseType.REFUND_ONLY,
                    reason="logistics.refused_delivery",
                    amount=worth,
                    lines=lines,
                    evidence=[],
                    note=None,
                    policy=self.policy,
                    act=opened,
                )
                order.link_case(case.id, lines, opened, holds_shipment=case.holds_shipment)
                case.refuse_delivery(act, self.policy, order)
                cases.append(case)
            if not cases:
                if order.shipped_at is None or order.delivered_at is not None:
                    state = "has not shipped" if order.shipped_at is None else "was delivered"
                    raise NotAllowed(
                        f"order {order.order_id} {state}: there is no parcel to refuse"
                    )
                raise NotAllowed(
                    f"every line of order {order.order_id} has a case that is not a refund "
                    "only awaiting the merchant: answer those"
                )
            return order, [*cases, *clock.changed(exclude=order)], act

        return self.uow.run(command, attempt)

    @handle.register
    def _order_action(self, command: OrderAction) -> dict[str, Any]:
        def attempt(command_id: str) -> tuple[OrderOrCase, list[OrderOrCase], Act]:
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
        self, order: Order, turned: list[UUID], act: Act, clock: FiredDeadlines
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
        def attempt(command_id: str) -> tuple[OrderOrCase, list[OrderOrCase], Act]:
            if self.uow.get(order_uuid(command.order_id)) is not None:
                raise NotAllowed(f"order {command.order_id} is already placed")
            act = self._act(command, "order-system", command_id)
            order = Order.place(
                command.order_id,
                merchant_id=command.merchant,
                buyer_id=command.buyer,
                lines=list(command.lines),
                act=act,
                freight_insurance=command.freight_insurance,
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

        def attempt(command_id: str) -> tuple[OrderOrCase, list[OrderOrCase], Act]:
            act = at(command.placed_at, command_id)
            order = self.uow.get(order_uuid(command.order_id))
            if not isinstance(order, Order):
                order = Order.place(
                    command.order_id,
                    merchant_id=command.merchant,
                    buyer_id=command.buyer,
                    lines=list(command.lines),
                    act=act,
                    freight_insurance=command.freight_insurance,
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
            cases: list[OrderOrCase] = []
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
        return self.get_case(command.case_id, at=command.at)

    @handle.register
    def _show_order(self, command: ShowOrder) -> dict[str, Any]:
        return self.get_order(command.order_id, at=command.at)

    @handle.register
    def _tick(self, command: Tick) -> dict[str, Any]:
        return tick(self, command.now or self.clock(), batch=command.batch).to_json()

    @handle.register
    def _list_cases(self, command: ListCases) -> list[dict[str, Any]]:
        """Rows of the case index, each as of the read's time: a row whose deadline is due by
        then is shown as the clock leaves its case (loaded and moved on in memory), so its
        indexed status is not the one it is listed, or filtered, by."""
        when = as_of_time(self, command.at)
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("merchant_id", command.merchant),
            ("buyer_id", command.buyer),
            ("order_id", command.order),
        ):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        wanted = command.status.value if command.status else None
        if wanted:
            # A case due by now may be in the wanted status once the clock has acted, whatever
            # its indexed status; it is decided row by row below.
            where.append("(status = ? OR (due_at IS NOT NULL AND due_at <= ?))")
            params += [wanted, self.store.time_param(when)]
        due = command.due_before
        if due is not None:
            where.append("due_at IS NOT NULL AND due_at <= ?")
            params.append(self.store.time_param(due))
        by_due = command.sort is CaseOrder.DUE or (command.sort is None and due is not None)
        more, more_params = list_filters(self.store, command, by_due)
        where += more
        params += more_params
        sql = "SELECT * FROM {t}aftersales_cases"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {DUE_ORDER}" if by_due else " ORDER BY opened_at, case_id"
        limit = command.limit
        listed: list[dict[str, Any]] = []
        offset = 0
        while True:
            # Paged by the limit: rows the clock moved out of the wanted status leave room.
            paged = f"{sql} LIMIT {int(limit)} OFFSET {offset}" if limit else sql
            rows = self.store.query(paged, params)
            for row in rows:
                shown = self._listed_as_of(row, when)
                if wanted is not None and shown["status"] != wanted:
                    continue
                if command.open and Status(shown["status"]) in FINAL_STATUSES:
                    continue  # the clock closed it by the read's time
                listed.append(shown)
                if limit and len(listed) == limit:
                    return listed
            if not limit or len(rows) < limit:
                return listed
            offset += len(rows)

    def _listed_as_of(self, row: dict[str, Any], when: datetime) -> dict[str, Any]:
        """A case index row as of ``when`` (``case list``'s row, with ``pending_clock``)."""
        due_at = parse_stored_time(row["due_at"])
        if due_at is None or due_at > when:
            return {**listed_case(row), "pending_clock": []}
        try:
            case, applied = self._case_as_of(UUID(str(row["case_id"])), when)
        except AftersalesError:
            # A case that cannot be read (poisoned, say) is listed as the index has it; its
            # show says why.
            return {**listed_case(row), "pending_clock": []}
        # The version stays the stored one: what an action's expected version is checked on.
        shown = {**listed_case(case_row(case)._asdict()), "version": int(row["version"])}
        return {**shown, "pending_clock": applied}

    def _case_as_of(self, uid: UUID, when: datetime) -> tuple[ReturnCase, list[dict[str, Any]]]:
        """The case as the clock leaves it by ``when``, on a copy, and the deadlines of its own
        that the clock took (each as ``pending_clock`` lists it)."""
        with self.unit_of_work(ReadCopies(self, self.uow)):
            case = self.load_case(uid)
            if not _due_by(case, when):
                return case, []
            order = self.load_order(case.order_id)
            try:
                clock = self._clock_first(order, [case], when)
            except AftersalesError as exc:
                refused = case.due
                held = exc
            else:
                return case, [a for a in clock.applied if a["case_id"] == str(uid)]
        # A deadline the rules refuse stays due (the tick reports it failed): the case is shown
        # as stored, saying so.
        with self.unit_of_work(ReadCopies(self, self.uow)):
            case = self.load_case(uid)
        return case, [
            {
                "case_id": str(uid),
                "action": refused.action.value if refused else None,
                "due_at": refused.due_at.isoformat() if refused else None,
                "refused": {"code": held.code, "message": held.message},
            }
        ]

    def cases_as_of(self, case_ids: Iterable[str], at: datetime) -> dict[str, dict[str, Any]]:
        """For dashboards: each case as the clock leaves it by ``at`` (its ``status``, and the
        ``due_at``/``due_action`` running then), by case id; a case that cannot be read is
        left out (the caller falls back on the case index)."""
        found: dict[str, dict[str, Any]] = {}
        for case_id in case_ids:
            try:
                case, _ = self._case_as_of(case_uuid(case_id), at)
            except AftersalesError:
                continue
            found[str(case_id)] = {
                "status": case.status.value,
                "due_at": case.due.due_at if case.due else None,
                "due_action": case.due.action.value if case.due else None,
            }
        return found

    @staticmethod
    def _stored_version(aggregate: OrderOrCase) -> int:
        """An aggregate's version less what the clock did to it in memory."""
        return aggregate.version - len(aggregate.pending_events)

    def get_case(self, case_id: str | UUID, at: datetime | None = None) -> dict[str, Any]:
        """A case as `case show --json` gives it: as of ``at`` (default: the engine's clock),
        every deadline due by then shown as taken and listed under ``pending_clock`` (a tick
        records them); the read records nothing."""
        when = as_of_time(self, at)
        uid = case_uuid(case_id)
        case, applied = self._case_as_of(uid, when)
        # The version stays the stored one: what an action's expected version is checked on
        # (before the clock acts), and what a tick moves on from.
        return {
            **case.to_json(),
            "version": self._stored_version(case),
            "as_of": when.isoformat(),
            "pending_clock": applied,
        }

    def stored_case(self, case_id: str | UUID) -> dict[str, Any]:
        """A case as its stored events leave it, without the deadlines due since (what the
        audit and the tick start from; ``get_case`` is what a person is shown)."""
        return self.load_case(case_id).to_json()

    def stored_order(self, order_id: str) -> dict[str, Any]:
        """An order as its stored events leave it (see ``stored_case``)."""
        return self.load_order(order_id).to_json()

    def get_order(self, order_id: str, at: datetime | None = None) -> dict[str, Any]:
        """An order as `order show --json` gives it, as of ``at`` (default: the engine's
        clock): the deadlines due by then of the cases holding its lines shown as taken."""
        when = as_of_time(self, at)
        check_order_id(order_id)
        due = self.store.query(
            f"SELECT case_id FROM {{t}}{CASES_TABLE} WHERE order_id = ? "
            "AND due_at IS NOT NULL AND due_at <= ? LIMIT 1",
            (order_id, self.store.time_param(when)),
        )
        applied: list[dict[str, Any]] = []
        with self.unit_of_work(ReadCopies(self, self.uow)):
            order = self.load_order(order_id)
            if due:
                try:
                    applied = self._clock_first(order, [], when).applied
                except AftersalesError as exc:
                    applied = [{"refused": {"code": exc.code, "message": exc.message}}]
        if applied and "refused" in applied[0]:
            with self.unit_of_work(ReadCopies(self, self.uow)):
                order = self.load_order(order_id)
        return {
            **order.to_json(),
            "version": self._stored_version(order),
            "as_of": when.isoformat(),
            "pending_clock": applied,
        }

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


# A deadline first (soonest first), then those without one; the case id last, so a page
# continues exactly where the one before ended (``list_filters``' keyset).
DUE_ORDER = "(CASE WHEN due_at IS NULL THEN 1 ELSE 0 END), due_at, opened_at, case_id"


def list_filters(
    store: AftersalesStore, command: ListCases, by_due: bool
) -> tuple[list[str], list[Any]]:
    """``case list``'s search, reason and open filters, and its keyset page (the cases after
    ``command.after`` in the order listed): conditions on the case index and their values."""
    where: list[str] = []
    params: list[Any] = []
    if command.search:
        text = command.search.strip()
        prefix = text.lower()
        by_id = len(prefix) >= 4 and re.fullmatch(r"[0-9a-f-]{4,36}", prefix) is not None
        where.append("(order_id = ? OR buyer_id = ?" + (" OR case_id LIKE ?)" if by_id else ")"))
        params += [text, text] + ([f"{prefix}%"] if by_id else [])
    if command.reason:
        group = re.sub(r"([\\%_])", r"\\\1", command.reason.rstrip("."))
        where.append("(reason = ? OR reason LIKE ? ESCAPE '\\')")
        params += [command.reason, f"{group}.%"]
    if command.open:
        where.append(f"status NOT IN ({', '.join('?' for _ in FINAL_STATUSES)})")
        params += [s.value for s in FINAL_STATUSES]
    if command.assignee:
        condition, values = assignee_filter(command.assignee)
        where.append(condition)
        params += values
    if command.after is not None:
        rows = store.query(
            "SELECT due_at, opened_at, case_id FROM {t}aftersales_cases WHERE case_id = ?",
            [str(command.after)],
        )
        if not rows:
            raise BadInput(f"after: no case {command.after} to continue after")
        last = rows[0]
        later = "(opened_at > ? OR (opened_at = ? AND case_id > ?))"
        tie = [last["opened_at"], last["opened_at"], last["case_id"]]
        if not by_due:
            where.append(later)
            params += tie
        elif last["due_at"] is None:
            where.append(f"(due_at IS NULL AND {later})")
            params += tie
        else:
            where.append(f"(due_at IS NULL OR due_at > ? OR (due_at = ? AND {later}))")
            params += [last["due_at"], last["due_at"], *tie]
    return where, params


def json_copy(value: Any) -> Any:
    """A copy of a JSON-ready result (dicts and lists of plain values) that shares nothing
    mutable with it: what ``deepcopy`` gives for such a value, several times faster (a group
    commit copies every result it answers)."""
    if isinstance(value, dict):
        return {key: json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_copy(item) for item in value]
    if isinstance(value, (str, int, float, bool, Decimal, type(None), datetime, UUID)):
        return value
    return deepcopy(value)


def default_actor(case: ReturnCase, role: Role) -> str:
    if role is Role.BUYER:
        return case.buyer_id
    if role is Role.MERCHANT:
        return case.merchant_id
    return role.value
