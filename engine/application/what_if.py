"""What-if: a period's recorded actions replayed under another policy, in memory, changing
nothing in the store, and what would have ended differently.

For each order with a case opened in the period (``[since, until)``, one shop's or all), read
from the case index a batch of orders at a time, the order's and its cases' stored events are
read (one query a batch) and played twice, each on aggregates kept in memory only
(``Sandbox``, a unit of work that never saves):

- **as recorded**: the stored events up to ``until``, then the clock up to ``until`` under the
  policy in force (the deadlines due by then fire, as a read shows them);
- **under the new policy**: the stored events before ``since`` as they are (the rules changed at
  ``since``: a deadline already running keeps its recorded time), then, in time order, every
  action a person took from ``since`` to ``until`` (an event whose actor is the buyer, the
  merchant, the platform or the order system, the first of its command; the clock's own events
  and each action's consequences are left out) re-issued as its typed command through an
  ``Engine`` built with the new policy, so the clock acts first under the new deadlines exactly
  as it does for a live action; an action the new history no longer allows is refused and
  reported (the merchant's rejection at hour 60 of a case the clock approved at hour 48); then
  the clock up to ``until``.

The two ends of each case opened in the period are compared: status, type, what was refunded and
by whom, every amount in its ledger (refunds, freight, penalties) and the deadlines the clock
fired. Only one order's aggregates are in memory at a time, and the report keeps counters, per
shop, and at most ``limit`` changed cases: memory stays flat however long the period.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from aftersales.engine.application.fields import WantedLine
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    AcceptOffer,
    Action,
    ApproveCase,
    DeclineOffer,
    DeliverOrder,
    EscalateCase,
    ExtendReceipt,
    InterceptParcel,
    MessageCase,
    OfferChange,
    OpenCase,
    PlaceOrder,
    RateCase,
    ReceiveGoods,
    RecoverGoods,
    RefundCase,
    RefuseDelivery,
    RejectCase,
    Reship,
    RuleCase,
    ShipBack,
    ShipOrder,
    ShipReplacement,
    WithdrawCase,
)
from aftersales.engine.application.units import Attempt, OrderOrCase, UnitOfWork
from aftersales.engine.domain.buyer import Buyer, buyer_uuid
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.case_events import (
    CaseApproved,
    CaseEscalated,
    CaseEvent,
    CaseOpened,
    CaseRated,
    CaseRefunded,
    CaseRejected,
    CaseRuled,
    CaseWithdrawn,
    ChangeOffered,
    DeadlineFired,
    DeliveryRefused,
    GoodsReceived,
    GoodsRecovered,
    GoodsShippedBack,
    MessagePosted,
    MissingItemsReshipped,
    OfferAccepted,
    OfferDeclined,
    ParcelIntercepted,
    ReceiptExtended,
    ReplacementShipped,
    ReshipImpossible,
)
from aftersales.engine.domain.errors import AftersalesError, BadInput
from aftersales.engine.domain.events import GENESIS_HASH, Event, Unreadable, verified_hash
from aftersales.engine.domain.order import Order, order_uuid
from aftersales.engine.domain.order_events import OrderDelivered, OrderPlaced, OrderShipped
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.shop import Shop, shop_uuid
from aftersales.engine.domain.values import ZERO, DueAction, Party, Role, Status, money_str
from aftersales.engine.storage.sql import Dialect, parse_stored_time
from aftersales.engine.storage.store import AftersalesStore

# Orders read from the case index, and their events from the store, per query.
ORDER_BATCH = 200
# Changed cases listed by default (all are counted).
DEFAULT_LIMIT = 100

# The money of a case, as the ledger report names it (projections/ledger.py), plus what the
# platform bears itself.
MONEY_KEYS: tuple[str, ...] = (
    "refunded_by_merchant",
    "advanced_by_platform",
    "owed_to_platform",
    "freight",
    "penalties",
    "merchant_bears",
    "platform_bears",
    "buyers_owe",
)
# The measures of a shop, counted over its cases opened in the period.
COUNT_KEYS: tuple[str, ...] = (
    "cases",
    "not_opened",
    "refunded",
    "completed",
    "closed",
    "open",
    "escalated",
    "auto_approved",
    "auto_refunded",
    "auto_closed",
    "merchant_timeouts",
    "refused_actions",
)
# The deadlines the merchant lets run out (a timeout counted against the shop).
MERCHANT_DEADLINES = frozenset(
    {
        DueAction.AUTO_APPROVE.value,
        DueAction.AUTO_REFUND.value,
        DueAction.RESHIP_OVERDUE.value,
        DueAction.REPLACEMENT_OVERDUE.value,
    }
)
FOUR_PLACES = Decimal("0.0001")


# A unit of work that never saves ---------------------------------------------------------------

# What an order's replay reads as it was recorded at a time: a shop's settings, a buyer's standing.
AsOf = Callable[[datetime], Shop | Buyer | None]


class Sandbox(UnitOfWork):
    """Aggregates in memory only: an action is run on them and what it records stays there
    (``pending_events``); nothing is read from or written to the store."""

    def __init__(self, engine: Engine, recorded: Mapping[UUID, AsOf] | None = None) -> None:
        super().__init__(engine)
        self.aggregates: dict[UUID, OrderOrCase] = {}
        # What the order's actions read as it was recorded at ``now``, never changed here: its
        # shop's settings (its rules approve at an opening, its default address goes on an
        # approval) and its buyer's standing (an instant refund as the goods go back).
        self.recorded: Mapping[UUID, AsOf] = recorded or {}
        self.now: datetime | None = None

    def get(self, uid: UUID) -> OrderOrCase | None:
        read = self.recorded.get(uid)
        if read is not None:
            return read(self.now or self.engine.clock())
        return self.aggregates.get(uid)

    def find_command(self, command_id: str) -> dict[str, Any] | None:
        return None  # every re-issued command is new here

    def run(self, command: Action, attempt: Attempt) -> dict[str, Any]:
        self.replayed = False
        main, others, _ = attempt(command.command_id or str(uuid4()))
        for aggregate in (main, *others):
            if aggregate.id not in self.recorded:
                self.aggregates[aggregate.id] = aggregate
        return {}


# Recorded events back to the commands that recorded them ---------------------------------------


def _case_command(event: CaseEvent) -> Action | None:
    """The command a person's action on a case was, from the first event it recorded (None: the
    event is no person's action: the clock's, or a consequence)."""
    make = _CASE_COMMANDS.get(type(event))
    return None if make is None else make(event, _given(event, case_id=event.originator_id))


def _given(event: Event, **target: Any) -> dict[str, Any]:
    """What every re-issued command takes from the event: its target, when, who, and its
    command id (the one it was recorded under)."""
    return {
        **target,
        "at": event.at,
        "by": event.actor.id,
        "command_id": event.command_id,
        "expected_version": None,
    }


def _build(kind: type[Action], common: dict[str, Any], **fields: Any) -> Action:
    # The values come from stored events, each checked when it was first recorded.
    return kind.model_construct(**common, **fields)


def _opened(e: Any, c: dict[str, Any]) -> Action:
    e_: CaseOpened = e
    common = {k: v for k, v in c.items() if k != "case_id"}
    return _build(
        OpenCase,
        common,
        order_id=e_.order_id,
        type=e_.case_type,
        reason=e_.reason,
        amount=e_.amount,
        lines=tuple(WantedLine(line.sku, line.quantity) for line in e_.lines),
        evidence=e_.evidence,
        note=e_.note,
        case_id=e_.originator_id,
    )


_CASE_COMMANDS: dict[type[CaseEvent], Callable[[Any, dict[str, Any]], Action]] = {
    CaseOpened: _opened,
    CaseApproved: lambda e, c: _build(ApproveCase, c, return_address=e.return_address),
    CaseRejected: lambda e, c: _build(
        RejectCase, c, reason=e.reason, communication=e.communication
    ),
    GoodsShippedBack: lambda e, c: _build(
        ShipBack, c, carrier=e.shipment.carrier, waybill=e.shipment.waybill, freight=e.freight
    ),
    ParcelIntercepted: lambda e, c: _build(
        InterceptParcel,
        c,
        carrier=e.shipment.carrier if e.shipment else None,
        waybill=e.shipment.waybill if e.shipment else None,
    ),
    GoodsReceived: lambda e, c: _build(ReceiveGoods, c, condition=e.condition),
    CaseRefunded: lambda e, c: _build(RefundCase, c, amount=e.amount),
    ReplacementShipped: lambda e, c: _build(
        ShipReplacement, c, carrier=e.shipment.carrier, waybill=e.shipment.waybill
    ),
    MissingItemsReshipped: lambda e, c: _build(
        Reship,
        c,
        carrier=e.shipment.carrier,
        waybill=e.shipment.waybill,
        cannot=False,
        note=None,
    ),
    ReshipImpossible: lambda e, c: _build(
        Reship, c, carrier=None, waybill=None, cannot=True, note=e.note
    ),
    CaseWithdrawn: lambda e, c: _build(WithdrawCase, c),
    CaseEscalated: lambda e, c: _build(
        EscalateCase, c, claim=e.claim, evidence=e.evidence, note=e.note
    ),
    CaseRuled: lambda e, c: _build(RuleCase, c, in_favour_of=e.in_favour_of, note=e.note),
    CaseRated: lambda e, c: _build(RateCase, c, score=e.score, comment=e.comment),
    GoodsRecovered: lambda e, c: _build(RecoverGoods, c, note=e.note),
    MessagePosted: lambda e, c: _build(
        MessageCase, c, text=e.text, evidence=e.evidence, party=Party(e.actor.role.value)
    ),
    ChangeOffered: lambda e, c: _build(
        OfferChange, c, type=e.case_type, amount=e.offered_amount, note=e.note
    ),
    OfferAccepted: lambda e, c: _build(AcceptOffer, c),
    OfferDeclined: lambda e, c: _build(DeclineOffer, c),
    ReceiptExtended: lambda e, c: _build(ExtendReceipt, c, hours=e.hours, reason=e.reason),
}


def _fact(event: Event, order_id: str) -> Action | None:
    """The order system's fact an order event records (None: a case's consequence on the
    order). A shipment or a delivery is a fact: it is recorded under the new policy too,
    whatever case holds the order then (``anyway``)."""
    common = _given(event, order_id=order_id)
    if isinstance(event, OrderShipped):
        shipment = event.shipment
        return _build(
            ShipOrder,
            common,
            carrier=shipment.carrier if shipment else None,
            waybill=shipment.waybill if shipment else None,
            anyway=True,
        )
    if isinstance(event, OrderDelivered):
        return _build(DeliverOrder, common, anyway=True)
    if isinstance(event, OrderPlaced):
        return _build(
            PlaceOrder,
            common,
            merchant=event.merchant_id,
            buyer=event.buyer_id,
            lines=event.lines,
            freight_insurance=event.freight_insurance,
        )
    return None  # a case's consequence on the order: a line linked or let go


def person_actions(order_id: str, histories: dict[UUID, list[Event]]) -> list[tuple[Event, Action]]:
    """The actions people took on an order and its cases, each with the event it recorded
    first, in the order they happened (by time, then by when they were recorded; on a tie the
    order's facts first)."""
    found: list[tuple[tuple[datetime, datetime, int, UUID, int], Event, Action]] = []
    # A parcel refused at the door is one fact of the order system, whatever cases it turned
    # (and opened, in the buyer's name): re-issued once, as that fact.
    refused = {
        e.command_id: e
        for events in histories.values()
        for e in events
        if isinstance(e, DeliveryRefused)
    }
    issued: set[str] = set()
    for uid, events in histories.items():
        last_command = ""
        for event in events:
            first = event.command_id != last_command
            last_command = event.command_id
            if event.actor.role is Role.SYSTEM:
                continue
            if isinstance(event, CaseEvent) and event.command_id in refused:
                command = None
                if event.command_id not in issued:
                    issued.add(event.command_id)
                    event = refused[event.command_id]
                    command = _build(RefuseDelivery, _given(event, order_id=order_id))
                rank = 0
            elif isinstance(event, CaseEvent):
                # An action's first event names it; the rest are its consequences.
                command = _case_command(event) if first else None
                rank = 1
            else:
                # Each of the order system's facts is one (`order deliver` of an order not
                # shipped records its shipment too, under the same command id).
                command = _fact(event, order_id)
                rank = 0
            if command is not None:
                key = (event.at, event.timestamp, rank, uid, event.originator_version)
                found.append((key, event, command))
    found.sort(key=lambda item: item[0])
    return [(event, command) for _, event, command in found]


# How a case ended -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A case's end in one of the two histories (``status`` None: never opened)."""

    status: str | None
    type: str | None
    refunded: Decimal
    refund_paid_by: str | None
    money: dict[str, Decimal]
    fired: tuple[str, ...]
    escalated: bool

    @classmethod
    def of(cls, case: ReturnCase | None, events: Sequence[object]) -> Outcome:
        if case is None:
            return cls(None, None, ZERO, None, dict.fromkeys(MONEY_KEYS, ZERO), (), False)
        return cls(
            status=case.status.value,
            type=case.case_type.value,
            refunded=case.refunded_amount,
            refund_paid_by=case.refund_paid_by.value if case.refund_paid_by else None,
            money=case_money(case),
            fired=tuple(e.fired.action.value for e in events if isinstance(e, DeadlineFired)),
            escalated=any(isinstance(e, CaseEscalated) for e in events),
        )

    def differences(self, other: Outcome) -> list[str]:
        """What differs from ``other``, by name: the end (status, type, refunded, paid by,
        money) and the path (the deadlines the clock fired)."""
        changed = [
            name
            for name in ("status", "type", "refunded", "refund_paid_by")
            if getattr(self, name) != getattr(other, name)
        ]
        if self.money != other.money:
            changed.append("money")
        if self.fired != other.fired:
            changed.append("clock")
        return changed

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "type": self.type,
            "refunded": money_str(self.refunded),
            "refund_paid_by": self.refund_paid_by,
            "money": {k: money_str(v) for k, v in self.money.items()},
            "clock": list(self.fired),
        }


def case_money(case: ReturnCase) -> dict[str, Decimal]:
    """A case's ledger entries summed as the ledger report sums a merchant's."""
    money = dict.fromkeys(MONEY_KEYS, ZERO)
    for entry in case.ledger:
        amount = Decimal(entry["amount"])
        kind, payer = entry["type"], entry["payer"]
        owed_by = entry.get("owed_by", payer)
        if kind == "refund":
            key = "refunded_by_merchant" if payer == "merchant" else "advanced_by_platform"
            money[key] += amount
            if payer == "platform" and owed_by == "merchant":
                money["owed_to_platform"] += amount
        elif kind == "freight":
            money["freight"] += amount
        elif kind == "late_shipment_penalty":
            money["penalties"] += amount
        elif kind == "advance_reassigned":
            # An instant refund the merchant no longer owes: the buyer's now, or the platform's.
            money["owed_to_platform"] -= amount
            money["merchant_bears"] -= amount
            if owed_by == "buyer":
                money["buyers_owe"] += amount
        if owed_by == "merchant":
            money["merchant_bears"] += amount
        elif owed_by == "platform":
            money["platform_bears"] += amount
    return money


@dataclass
class Measures:
    """One shop's figures (or the platform's) in one history."""

    counts: Counter[str] = field(default_factory=Counter)
    money: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(MONEY_KEYS, ZERO))

    def add(self, outcome: Outcome, refused: int) -> None:
        counts = self.counts
        counts["cases"] += 1
        counts["refused_actions"] += refused
        if outcome.status is None:
            counts["not_opened"] += 1
            return
        status = Status(outcome.status)
        if status in (Status.REFUNDED, Status.COMPLETED, Status.CLOSED):
            counts[status.value] += 1
        else:
            counts["open"] += 1
        counts["escalated"] += outcome.escalated
        fired = set(outcome.fired)
        counts["auto_approved"] += DueAction.AUTO_APPROVE.value in fired
        counts["auto_refunded"] += DueAction.AUTO_REFUND.value in fired
        counts["auto_closed"] += bool(
            fired & {DueAction.AUTO_CLOSE.value, DueAction.ESCALATION_LAPSED.value}
        )
        counts["merchant_timeouts"] += sum(1 for f in outcome.fired if f in MERCHANT_DEADLINES)
        for key, value in outcome.money.items():
            self.money[key] += value

    def to_json(self) -> dict[str, Any]:
        cases = self.counts["cases"]
        rate = (Decimal(self.counts["refunded"]) / cases).quantize(FOUR_PLACES) if cases else ZERO
        return {
            **{k: self.counts[k] for k in COUNT_KEYS},
            "refund_rate": str(rate),
            **{k: money_str(v) for k, v in self.money.items()},
        }


def difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``after - before`` for each figure (counts as integers, money and rates as strings)."""
    diff: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, int):
            diff[key] = value - before[key]
        elif key == "refund_rate":
            diff[key] = str(Decimal(value) - Decimal(before[key]))
        else:
            diff[key] = money_str(Decimal(value) - Decimal(before[key]))
    return diff


# The run ----------------------------------------------------------------------------------------


@dataclass
class WhatIf:
    """The replay of one period under another policy, and its report (``to_json``)."""

    store: AftersalesStore
    current: Policy
    policy: Policy
    since: datetime
    until: datetime
    merchant: str | None = None
    limit: int = DEFAULT_LIMIT
    batch: int = ORDER_BATCH

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value: datetime = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() is None:
                raise BadInput(f"--{name} {value.isoformat()} has no offset: add one")
        if self.since >= self.until:
            raise BadInput(
                f"--since {self.since.isoformat()} is not before --until {self.until.isoformat()}"
            )
        self.since, self.until = self.since.astimezone(UTC), self.until.astimezone(UTC)

        def frozen() -> datetime:
            return self.until

        # Two engines on the store, neither of which ever saves (their units of work are
        # sandboxes): the policy in force, and the new one.
        self.recorded = Engine(self.store, policy=self.current, clock=frozen)
        self.replayed = Engine(self.store, policy=self.policy, clock=frozen)
        self.orders = 0
        self.events_read = 0
        self.actions = 0
        self.refused = 0
        self.changed_count = 0
        self.changed: list[dict[str, Any]] = []
        self.unreadable: list[dict[str, str]] = []
        self.unreadable_count = 0
        self.shops: dict[str, tuple[Measures, Measures]] = {}
        self._rows: dict[UUID, list[tuple[datetime, tuple[int, str, bytes]]]] = {}
        self.total = (Measures(), Measures())

    # Reading ---------------------------------------------------------------------------------

    def order_batches(self) -> Iterator[list[tuple[str, list[tuple[UUID, datetime]]]]]:
        """The orders with a case opened in the period, a batch at a time (by order id), each
        with all its cases (their ids and opening times), from the case index."""
        store = self.store
        last = ""
        while True:
            where = "opened_at >= ? AND opened_at < ? AND order_id > ?"
            params: list[Any] = [store.time_param(self.since), store.time_param(self.until), last]
            if self.merchant:
                where += " AND merchant_id = ?"
                params.append(self.merchant)
            rows = store.query(
                f"SELECT DISTINCT order_id FROM {{t}}aftersales_cases WHERE {where} "
                f"ORDER BY order_id LIMIT {int(self.batch)}",
                params,
            )
            if not rows:
                return
            ids = [str(r["order_id"]) for r in rows]
            last = ids[-1]
            cases: dict[str, list[tuple[UUID, datetime]]] = {i: [] for i in ids}
            for row in store.query(
                "SELECT case_id, order_id, opened_at FROM {t}aftersales_cases "
                f"WHERE order_id IN ({Dialect.marks(len(ids))}) ORDER BY opened_at, case_id",
                ids,
            ):
                opened = parse_stored_time(row["opened_at"])
                assert opened is not None
                cases[str(row["order_id"])].append((UUID(str(row["case_id"])), opened))
            yield list(cases.items())
            if len(rows) < self.batch:
                return

    def histories(
        self, batch: list[tuple[str, list[tuple[UUID, datetime]]]]
    ) -> dict[UUID, list[tuple[int, str, bytes]]]:
        ids = [order_uuid(o) for o, _ in batch] + [c for _, cases in batch for c, _ in cases]
        stored: dict[UUID, list[tuple[int, str, bytes]]] = {}
        for uid, version, topic, state in self.store.select_rows(ids):
            stored.setdefault(uid, []).append((version, topic, state))
        return stored

    # Replaying -------------------------------------------------------------------------------

    def run(self) -> WhatIf:
        for batch in self.order_batches():
            stored = self.histories(batch)
            for order_id, cases in batch:
                self.orders += 1
                try:
                    histories = self.decode(order_id, [c for c, _ in cases], stored)
                    self.replay_order(order_id, cases, histories)
                except Exception as exc:  # a stored event that cannot be used: say which order
                    self.unreadable_count += 1
                    if len(self.unreadable) < self.limit:
                        why = exc.message if isinstance(exc, AftersalesError) else repr(exc)
                        self.unreadable.append({"order_id": order_id, "error": why})
        return self

    def decode(
        self, order_id: str, case_ids: list[UUID], stored: dict[UUID, list[tuple[int, str, bytes]]]
    ) -> dict[UUID, list[Event]]:
        """Each aggregate's events up to ``until``, each checked as every read checks it
        (versions in sequence, its hash its content's chained to the one before): an event that
        fails refuses the whole order (``Unreadable``), as it refuses the aggregate elsewhere."""
        decode = self.store.mapper.decode
        histories: dict[UUID, list[Event]] = {}
        for uid in [order_uuid(order_id), *case_ids]:
            rows = stored.pop(uid, [])
            self.events_read += len(rows)
            events = []
            previous = GENESIS_HASH
            for expected, (version, topic, state) in enumerate(rows, start=1):
                if version != expected:
                    raise Unreadable(f"{uid}: version {expected} is missing (deleted?)")
                try:
                    previous = verified_hash(previous, uid, version, topic, state)
                except Unreadable as exc:
                    raise Unreadable(f"{uid} version {version}: {exc}") from None
                events.append(decode(uid, version, topic, state))
            histories[uid] = [e for e in events if e.at < self.until]
        return histories

    def replay_order(
        self,
        order_id: str,
        cases: list[tuple[UUID, datetime]],
        histories: dict[UUID, list[Event]],
    ) -> None:
        order_uid = order_uuid(order_id)
        placed = next((e for e in histories.get(order_uid, ()) if isinstance(e, OrderPlaced)), None)
        reads = (
            {}
            if placed is None
            else {
                uid: self.as_of(uid)
                for uid in (shop_uuid(placed.merchant_id), buyer_uuid(placed.buyer_id))
            }
        )
        # As recorded, the clock brought up to ``until``.
        recorded = Sandbox(self.recorded, reads)
        for uid, events in histories.items():
            aggregate = _built(events)
            if aggregate is not None:
                recorded.aggregates[uid] = aggregate
        self._clock(self.recorded, recorded, order_uid)
        # Under the new policy: what came before ``since`` as it was, the people's actions
        # since then re-issued, and the clock.
        sandbox = Sandbox(self.replayed, reads)
        before = {
            uid: [e for e in events if e.at < self.since] for uid, events in histories.items()
        }
        for uid, events in before.items():
            aggregate = _built(events)
            if aggregate is not None:
                sandbox.aggregates[uid] = aggregate
        later = {
            uid: [e for e in events if e.at >= self.since] for uid, events in histories.items()
        }
        refusals: dict[UUID, list[dict[str, Any]]] = {}
        with self.replayed.unit_of_work(sandbox):
            for event, command in person_actions(order_id, later):
                self.actions += 1
                sandbox.now = event.at
                try:
                    self.replayed.handle(command)
                except AftersalesError as exc:
                    self.refused += 1
                    refusals.setdefault(event.originator_id, []).append(
                        {
                            "action": command.name,
                            "at": event.at.isoformat(),
                            "by": event.actor.id,
                            "code": exc.code,
                            "message": exc.message,
                        }
                    )
        sandbox.now = None
        self._clock(self.replayed, sandbox, order_uid)
        order_refusals = refusals.get(order_uid, [])
        for case_id, opened_at in cases:
            if not self.since <= opened_at < self.until:
                continue
            was = recorded.aggregates.get(case_id)
            now = sandbox.aggregates.get(case_id)
            if not isinstance(was, ReturnCase):
                continue  # opened after ``until`` by its own time: not in the period
            before_events = before.get(case_id, [])
            outcome_was = Outcome.of(was, [*histories[case_id], *was.pending_events])
            outcome_now = Outcome.of(
                now if isinstance(now, ReturnCase) else None,
                [*before_events, *(now.pending_events if now is not None else [])],
            )
            refused = [*order_refusals, *refusals.get(case_id, [])]
            self._count(was.merchant_id, outcome_was, outcome_now, len(refused))
            changes = outcome_now.differences(outcome_was)
            if refused and not changes:
                changes = ["refused"]
            if not changes:
                continue
            self.changed_count += 1
            if len(self.changed) < self.limit:
                self.changed.append(
                    {
                        "case_id": str(case_id),
                        "order_id": order_id,
                        "merchant_id": was.merchant_id,
                        "opened_at": opened_at.isoformat(),
                        "changes": changes,
                        "recorded": outcome_was.to_json(),
                        "what_if": outcome_now.to_json(),
                        "refused": refused,
                    }
                )

    def as_of(self, uid: UUID) -> AsOf:
        """A shop's settings or a buyer's standing as they stood at a time: its stored events
        read once a run (such a history is short), checked as every read is, and rebuilt up to
        that time."""
        rows = self._rows.get(uid)
        if rows is None:
            stored = [
                (s.originator_version, s.topic, bytes(s.state))
                for s in self.store.recorder.select_events(uid)
            ]
            if stored:
                self.store.rebuild(uid, stored, whole=False)  # checked once, as every read is
            times = [self.store.mapper.decode(uid, v, t, b).at for v, t, b in stored]
            rows = self._rows[uid] = list(zip(times, stored, strict=True))

        def as_of(when: datetime) -> Shop | Buyer | None:
            upto = [row for at, row in rows if at <= when]
            found = self.store.rebuild(uid, upto, whole=False) if upto else None
            return found if isinstance(found, (Shop, Buyer)) else None

        return as_of

    @staticmethod
    def _clock(engine: Engine, sandbox: Sandbox, order_uid: UUID) -> None:
        """Every deadline due by ``until`` (the engine's frozen clock) on the order's cases
        fires, as a read as of then shows them; one the rules refuse stays due."""
        order = sandbox.aggregates.get(order_uid)
        if not isinstance(order, Order):
            return
        cases = [a for a in sandbox.aggregates.values() if isinstance(a, ReturnCase)]
        until = engine.clock()
        if not any(c.due is not None and c.due.due_at <= until for c in cases):
            return
        with engine.unit_of_work(sandbox), _suppressed():
            engine._clock_first(order, cases, until)

    def _count(self, merchant: str, was: Outcome, now: Outcome, refused: int) -> None:
        shop = self.shops.get(merchant)
        if shop is None:
            shop = self.shops[merchant] = (Measures(), Measures())
        for pair in (shop, self.total):
            pair[0].add(was, 0)
            pair[1].add(now, refused)

    # The report ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        def figures(pair: tuple[Measures, Measures]) -> dict[str, Any]:
            before, after = pair[0].to_json(), pair[1].to_json()
            return {"recorded": before, "what_if": after, "difference": difference(before, after)}

        return {
            "policy": {"name": self.policy.name, "version": self.policy.version},
            "current_policy": {"name": self.current.name, "version": self.current.version},
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "merchant": self.merchant,
            "orders": self.orders,
            "cases": self.total[0].counts["cases"],
            "events_read": self.events_read,
            "actions_replayed": self.actions,
            "actions_refused": self.refused,
            "changed_count": self.changed_count,
            "changed": self.changed,
            "listed": len(self.changed),
            "totals": figures(self.total),
            "merchants": [
                {"merchant_id": merchant, **figures(pair)}
                for merchant, pair in sorted(self.shops.items())
            ],
            "unreadable_count": self.unreadable_count,
            "unreadable": self.unreadable,
        }


def _built(events: list[Event]) -> OrderOrCase | None:
    """An aggregate from its recorded events (already checked as stored), or None."""
    aggregate: Any = None
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate if isinstance(aggregate, (Order, ReturnCase)) else None


class _suppressed:
    """A deadline the rules refuse stays due, as a read as of ``until`` shows it."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> bool:
        return kind is not None and issubclass(kind, AftersalesError)


def what_if(
    store: AftersalesStore,
    *,
    current: Policy,
    policy: Policy,
    since: datetime,
    until: datetime,
    merchant: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Replay the period under ``policy`` (``current``: the one the store was run under) and
    report what would have ended differently; nothing is written to the store."""
    return (
        WhatIf(store, current, policy, since, until, merchant=merchant, limit=limit).run().to_json()
    )
