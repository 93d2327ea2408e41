"""A model of the after-sales business, run against the engine in random sequences of actions.

``Model`` is a hypothesis state machine. It places two to four orders of one or two shops (lines
of one or several units, a free gift with a list price, an accessory sold under its list price),
and then, step by step, lets every party act at the model's current time through the engine's one
entry point, ``Engine.handle``:

- the order system ships and delivers orders, at random times;
- the buyer opens cases (every type and reason group, some lines or all, part of a line's units,
  the whole value or less, or more than it is worth), ships goods back, withdraws, escalates with
  each claim, answers offers, rates and writes messages;
- the merchant approves, rejects, refunds (all, or a smaller amount), receives goods as sent or
  not, ships replacements, reships or says it cannot, offers another service or amount, extends
  its receipt window and recovers goods;
- the platform's agent rules for the buyer or the merchant, and flags a buyer for abuse or
  clears the flag (the policy refunds small returns as their goods go back, an instant refund,
  for buyers in good standing);
- the clock moves on by minutes to twelve days, with or without a tick; every action is dated at
  the model's time, so the deadlines that fell due act first;
- an attacker who can write the database and has the project's hashing code appends a sealed
  event to an ended case (goods shipped back, a refund falling due now) or deletes a case's last
  stored event; the case is then left alone.

After every step, from what the engine shows (``case show``, ``order show``, ``case list``) and
from the store, with rules written here rather than taken from the engine:

1. no order line is refunded, across its cases, beyond what was paid for it (at its list price
   for gifts and accessories), for any group of lines, nor any case beyond what its units are
   worth; the order's books agree with its cases;
2. no case refunds more than it asked when it was opened, and one that ends refunded with less
   did so with the buyer's consent (an accepted offer, no less than offered) or by a ruling;
3. every waiting case (``awaiting_*``) has a running deadline, and the merchant's review never
   ends later than 48 hours after opening (offers do not stretch it);
4. a refund-only case opened before the order shipped is never refunded in full after the goods
   were shipped to the buyer;
5. disputes end: a case is escalated at most twice (one appeal), and no case sits escalated or
   rejected without a deadline;
6. a refused command appends nothing and leaves its case (or order) as it was;
7. ``case show`` agrees with another engine's rebuild from the store, with the copy the engine
   acts on (its cache) and with the case index; a tick leaves no deadline due;
8. a case the attacker touched is refused (shown by neither engine) and nothing is appended to
   it; at the end, the audit verifies every other case.

A broken rule raises a ``Hole`` of its own class, so that hypothesis reports and shrinks each
kind apart. The default run is deterministic (fixed seed) on SQLite and, smaller, on PostgreSQL;
``-m slow`` runs the SQLite one four times longer and longer random searches: the whole model,
and one search per known hole with only that hole's rule raising. Each run writes how many
sequences and steps it explored to stderr and to ``test-artifacts/model/runs.txt``. The six holes
the model found in the engine before its invariants (and a seventh besides them) are kept as
regression sequences (the shrunk sequences the searches found), replayed through the same rules:
each failed on that engine.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar, Protocol
from uuid import UUID, uuid5

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    AcceptOffer,
    Action,
    ApproveCase,
    ClearBuyer,
    DeclineOffer,
    DeliverOrder,
    EscalateCase,
    ExtendReceipt,
    FlagBuyer,
    InterceptParcel,
    ListCases,
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
    RemoveAutoRule,
    Reship,
    RuleCase,
    SetAutoRule,
    ShipBack,
    ShipOrder,
    ShipReplacement,
    WithdrawCase,
)
from aftersales.engine.application.tick import tick
from aftersales.engine.domain.errors import AftersalesError
from aftersales.engine.domain.events import chain_hash
from aftersales.engine.domain.order import order_uuid
from aftersales.engine.domain.policy import InstantRefund, Policy
from aftersales.engine.integrity.audit_bundle import audit_case
from tests.conftest import SchemaPool, schema_url

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "test-artifacts" / "model" / "runs.txt"

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=CST)
CENT = Decimal("0.01")
ZERO = Decimal("0.00")
CASE_IDS = UUID("5d1e0c7a-3b9f-4e2a-8c61-0f4b2d9e7a13")

# The business's numbers, restated here rather than read from the engine's policy.
REVIEW = timedelta(hours=48)  # the merchant's review, from opening
LISTED = ("gift", "accessory")  # made good at their list price
FINAL = frozenset({"refunded", "completed", "closed"})
HOLDING = frozenset(
    {
        "awaiting_merchant",
        "awaiting_buyer_answer",
        "awaiting_buyer_shipment",
        "awaiting_merchant_receipt",
        "awaiting_replacement",
        "awaiting_reshipment",
        "escalated",
    }
)
AGENT = "agent-7"
# The model's platform refunds returns of at most this much as their goods go back, for buyers
# with no abuse flag and no dispute lost (an instant refund).
INSTANT_UP_TO = Decimal("40.00")
BUYERS = ("buyer-1", "buyer-2")

# Lines an order is made of: SKU:QTY:UNIT_PRICE[:CATEGORY[:LIST_PRICE]].
LINE_POOL = (
    "MUG:1:39.90:home",
    "STRAP:3:10.00",
    "GIFT:1:0.00:gift:15.00",
    "CABLE:2:9.90:accessory:12.00",
    "NAME:1:88.00:custom_made",
)
CASE_TYPES = ("refund_only", "return_refund", "exchange", "reship")
REASONS = (
    "quality.colour_difference",
    "buyer.changed_mind",
    "missing_items.gift",
    "wrong_item.variant",
    "logistics.lost",
    "logistics.damaged",
)
CLAIMS = ("unjustified_rejection", "other", "missing_items", "wrong_item")
# The amount asked, offered or refunded, against what it could be.
ASKED = ("all", "less", "half", "none", "more")
SMALLER = ("all", "less", "half", "more")

# Every person's action, tried out of turn with plain arguments.
OUT_OF_TURN = (
    "approve",
    "reject",
    "refund",
    "ship-back",
    "receive",
    "ship-replacement",
    "reship",
    "withdraw",
    "escalate",
    "rule",
    "rate",
    "recover-goods",
    "offer",
    "accept-offer",
    "decline-offer",
    "extend",
)

PICK = st.integers(0, 7)
MINUTES = st.one_of(
    st.integers(1, 720),
    st.sampled_from((1440, 2879, 2880, 2881, 4320, 7 * 1440, 10 * 1440 + 1, 12 * 1440)),
)


# What the model says was broken ----------------------------------------------------------------


class Hole(AssertionError):
    """A rule of the model the engine broke; each kind is a class of its own, so that hypothesis
    keeps the kinds apart (and shrinks each to its own shortest sequence)."""

    kind: ClassVar[str] = "hole"


class LineOverRefunded(Hole):
    kind = "cases refunded a line beyond what was paid for it"


class OrderLineOverRefunded(Hole):
    kind = "order show: a line refunded beyond what was paid for it"


class LedgerDisagrees(Hole):
    kind = "the order's books disagree with its cases"


class RefundOverAsked(Hole):
    kind = "refunded beyond the amount asked"


class FreightOverOwed(Hole):
    kind = "postage back paid beyond what was owed"


class RefundWithoutConsent(Hole):
    kind = "refunded less than asked without the buyer's consent"


class NoDeadline(Hole):
    kind = "a waiting case with no deadline"


class ReviewStretched(Hole):
    kind = "the merchant's review stretched past 48 hours"


class ShippedUnderRefundOnly(Hole):
    kind = "refund only in full after the goods shipped"


class EndlessDispute(Hole):
    kind = "a dispute with no deadline"


class EndlessAppeals(Hole):
    kind = "a case escalated more than twice"


class RefusalAppended(Hole):
    kind = "a refusal that changed something"


class ShowDisagrees(Hole):
    kind = "case show disagrees with the store"


class ClockStuck(Hole):
    kind = "a deadline left due after a tick"


class InstantRefundAmiss(Hole):
    kind = (
        "a return refunded as its goods went back that should not have been, or not when it should"
    )


class Tampered(Hole):
    kind = "a tampered case shown or acted on"


class AuditFailed(Hole):
    kind = "the audit does not verify"


class Holes(Hole):
    """Several kinds found in one search (hypothesis reports each, shrunk, before this)."""

    kind = "several"


# What one process explored ------------------------------------------------------------------


@dataclass
class Explored:
    """Sequences (examples) and steps run, and where each kind of hole was first met."""

    examples: int = 0
    steps: int = 0
    refusals: int = 0
    first: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def saw(self, kind: type[Hole], message: str) -> None:
        self.first.setdefault(kind.__name__, (self.examples, self.steps, message))

    def report(self, name: str, seconds: float) -> str:
        lines = [
            f"{name}: explored {self.examples} sequences and {self.steps} steps "
            f"({self.refusals} refused) in {seconds:.1f} s"
        ]
        for kind, (example, step, message) in sorted(self.first.items(), key=lambda i: i[1]):
            lines.append(f"  {kind}: first met in sequence {example}, step {step}: {message}")
        for failure in self.failures:
            lines.append("  failed: " + failure.replace("\n", "\n    "))
        return "\n".join(lines)


EXPLORED = Explored()


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int
    unit_price: Decimal
    category: str | None
    list_price: Decimal | None

    @classmethod
    def parse(cls, spec: str) -> Line:
        parts = spec.split(":") + [""] * 2
        return cls(
            sku=parts[0],
            quantity=int(parts[1]),
            unit_price=Decimal(parts[2]),
            category=parts[3] or None,
            list_price=Decimal(parts[4]) if parts[4] else None,
        )

    def paid(self, units: int) -> Decimal:
        return (self.unit_price * units).quantize(CENT)

    def worth(self, units: int) -> Decimal:
        """The most these units may ever be refunded: what was paid for them, or their list
        price where a gift or accessory has one."""
        if self.category in LISTED and self.list_price is not None:
            return max(self.paid(units), (self.list_price * units).quantize(CENT))
        return self.paid(units)


@dataclass
class OrderModel:
    order_id: str
    merchant: str
    buyer: str
    lines: dict[str, Line]
    shipped_at: datetime | None = None
    delivered: bool = False
    # Cases already refunded (as shown) when the order shipped.
    refunded_when_shipped: frozenset[str] = frozenset()
    shown: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseModel:
    case_id: str
    order_id: str
    asked: Decimal  # the amount asked when it was opened
    opened_at: datetime
    kind: str  # its type when it was opened
    units: dict[str, int]  # SKU: how many units it concerns
    unshipped: bool  # opened before the order shipped
    shown: dict[str, Any] = field(default_factory=dict)
    escalations: int = 0
    attacked: str | None = None  # how the attacker touched it
    events_left: int = 0  # its stored events after the attack
    events_asked: int = -1  # its stored events when the engines were last asked to show it

    @property
    def uid(self) -> UUID:
        return UUID(self.case_id)


# Stores, one empty store per sequence ---------------------------------------------------------


class Scratch(Protocol):
    url: str

    def close(self) -> None: ...


def _scratch_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


class SqliteScratch:
    """A new SQLite file (in memory where the machine has a tmpfs), removed afterwards."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="aftersales-model-", dir=_scratch_root()))
        self.url = f"sqlite:///{self.folder / 'store.db'}"

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class PostgresScratch:
    """A PostgreSQL schema from the test process's pool, emptied when given back."""

    def __init__(self, pool: SchemaPool) -> None:
        self.pool = pool
        self.schema = pool.take()
        self.url = schema_url(self.schema)

    def close(self) -> None:
        self.pool.give_back(self.schema)


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


# The model -----------------------------------------------------------------------------------


class Model(RuleBasedStateMachine):
    """The business, played at random against the engine; see the module's docstring."""

    # The kinds of hole that stop a run (None: every kind); the others are counted and the run
    # goes on. The searches for one hole set it; the default run leaves it None.
    RAISES: ClassVar[frozenset[type[Hole]] | None] = None
    # Whether the attacker plays.
    ATTACKS: ClassVar[bool] = True
    # The engine's policy: the built-in one, with instant refunds.
    POLICY: ClassVar[Policy] = Policy(
        name="model", instant_refund=InstantRefund(up_to=INSTANT_UP_TO)
    )

    def __init__(self, *, keep_going: bool = False) -> None:
        """``keep_going``: count every hole met and go on (the regression sequences raise
        them at the end, with ``settle``)."""
        super().__init__()
        EXPLORED.examples += 1
        self.keep_going = keep_going
        self.found: list[Hole] = []
        self.stepped = False
        self.scratch = self.new_scratch()
        self.engine = Engine(self.scratch.url, policy=type(self).POLICY)
        # Another engine on the same store, with no cache: a rebuild from the stored events.
        self.reader = Engine(self.scratch.url, policy=type(self).POLICY, cache_size=0)
        self.now = T0
        self.orders: dict[str, OrderModel] = {}
        self.cases: dict[str, CaseModel] = {}
        self.serial = 0
        # Each buyer's standing, as the model's own actions made it.
        self.flagged: set[str] = set()
        self.lost: dict[str, int] = dict.fromkeys(BUYERS, 0)

    def new_scratch(self) -> Scratch:
        return SqliteScratch()

    # Reporting holes ---------------------------------------------------------------------------

    def hole(self, kind: type[Hole], message: str) -> None:
        EXPLORED.saw(kind, message)
        error = kind(f"{kind.kind}: {message}")
        raises = type(self).RAISES
        if self.keep_going or (raises is not None and kind not in raises):
            if not any(type(f) is kind and str(f) == str(error) for f in self.found):
                self.found.append(error)
            return
        raise error

    def settle(self, first: type[Hole]) -> None:
        """Raise what a ``keep_going`` run met: a hole of kind ``first`` if there is one (the
        hole a regression sequence is about), naming the others met on the way."""
        if not self.found:
            return
        chosen = next((f for f in self.found if isinstance(f, first)), self.found[0])
        others = [str(f) for f in self.found if f is not chosen]
        also = "".join(f"\n  also: {o}" for o in others)
        raise type(chosen)(f"{chosen}{also}")

    # Helpers ---------------------------------------------------------------------------------

    def position(self) -> int:
        return int(self.engine.store.recorder.max_notification_id() or 0)

    def live(self) -> list[CaseModel]:
        return [c for c in self.cases.values() if c.attacked is None]

    def has_live_case(self) -> bool:
        return any(c.attacked is None for c in self.cases.values())

    def fits(self, action: str) -> list[CaseModel]:
        """The live cases whose last showing allows ``action`` (the clock may have moved
        them on since: the engine then refuses, saying the clock acted first)."""
        return [c for c in self.live() if action in c.shown.get("allowed_actions", ())]

    def can(self, action: str) -> bool:
        return bool(self.fits(action))

    def pick(self, index: int, action: str) -> CaseModel | None:
        """A case for ``action``. In a search, the rule's precondition makes sure one fits; a
        sequence replayed against an engine that behaves otherwise (one with a hole fixed)
        tries the action on any live case instead, and is refused."""
        pool = self.fits(action) or self.live()
        return pool[index % len(pool)] if pool else None

    def order_at(self, index: int) -> OrderModel:
        orders = list(self.orders.values())
        return orders[index % len(orders)]

    def act(
        self, command: Action, case: CaseModel | None = None, order: OrderModel | None = None
    ) -> dict[str, Any] | None:
        """Run one command; a refusal must append nothing and leave the case or order it is
        about as the last step showed it."""
        before = self.position()
        try:
            result: dict[str, Any] = self.engine.handle(command)
        except AftersalesError as refusal:
            EXPLORED.refusals += 1
            what = f"{command.name} refused ({refusal.code}: {refusal.message[:160]})"
            after = self.position()
            if after != before:
                self.hole(RefusalAppended, f"{what}, yet the log grew from {before} to {after}")
            if case and (now := self.engine.stored_case(case.case_id)) != case.shown:
                self.hole(RefusalAppended, f"{what}, yet: {_diff(case.shown, now)}")
            if order and (now := self.engine.stored_order(order.order_id)) != order.shown:
                self.hole(RefusalAppended, f"{what}, yet: {_diff(order.shown, now)}")
            return None
        return result

    def amount(self, choice: str, full: Decimal) -> Decimal | None:
        found = {
            "all": full,
            "less": full - CENT,
            "half": (full / 2).quantize(CENT),
            "more": full + CENT,
            "none": None,
        }[choice]
        return None if found is None else max(found, ZERO)

    # The order system ----------------------------------------------------------------------------

    @initialize(
        orders=st.lists(
            st.tuples(
                st.sampled_from(("shop-1", "shop-2")),
                st.lists(st.integers(0, len(LINE_POOL) - 1), min_size=1, max_size=3, unique=True),
                st.sampled_from(("placed", "shipped", "delivered")),
            ),
            min_size=2,
            max_size=4,
        )
    )
    def place_orders(self, orders: list[tuple[str, list[int], str]]) -> None:
        for number, (merchant, lines, progress) in enumerate(orders, start=1):
            specs = [LINE_POOL[i] for i in lines]
            order = OrderModel(
                order_id=f"O{number}",
                merchant=merchant,
                buyer="buyer-1" if number % 2 else "buyer-2",
                lines={line.sku: line for line in map(Line.parse, specs)},
            )
            self.orders[order.order_id] = order
            self.engine.handle(
                PlaceOrder(
                    order_id=order.order_id,
                    merchant=order.merchant,
                    buyer=order.buyer,
                    lines=specs,
                    at=self.now,
                )
            )
            if progress != "placed":
                self.engine.handle(
                    ShipOrder(order_id=order.order_id, carrier="SF", waybill="S1", at=self.now)
                )
                order.shipped_at = self.now
            if progress == "delivered":
                self.engine.handle(DeliverOrder(order_id=order.order_id, at=self.now))
                order.delivered = True

    def shipped(self, order: OrderModel) -> None:
        """The order's shipment was recorded just now. The cases refunded by then include
        those the clock refunded first within that same command (a deadline due at its very
        time fires before the shipment is judged), so they are read from the store, not from
        what the last step showed."""
        if order.shipped_at is None:
            order.shipped_at = self.now
            order.refunded_when_shipped = frozenset(
                c.case_id
                for c in self.cases.values()
                if c.order_id == order.order_id and self.status_now(c) == "refunded"
            )

    def status_now(self, case: CaseModel) -> str | None:
        """A case's stored status (as the last step showed it if it cannot be read)."""
        try:
            status: str | None = self.engine.stored_case(case.case_id)["status"]
        except AftersalesError:
            status = case.shown.get("status")
        return status

    def unshipped(self) -> list[OrderModel]:
        return [o for o in self.orders.values() if o.shipped_at is None]

    def undelivered(self) -> list[OrderModel]:
        return [o for o in self.orders.values() if not o.delivered]

    @precondition(lambda self: bool(self.unshipped()))
    @rule(order=PICK)
    def ship_order(self, order: int) -> None:
        orders = self.unshipped() or list(self.orders.values())
        o = orders[order % len(orders)]
        command = ShipOrder(order_id=o.order_id, carrier="SF", waybill="S1", at=self.now)
        if self.act(command, order=o) is not None:
            self.shipped(o)

    @precondition(lambda self: bool(self.undelivered()))
    @rule(order=PICK)
    def deliver_order(self, order: int) -> None:
        orders = self.undelivered() or list(self.orders.values())
        o = orders[order % len(orders)]
        if self.act(DeliverOrder(order_id=o.order_id, at=self.now), order=o) is not None:
            self.shipped(o)
            o.delivered = True

    @precondition(lambda self: bool(self.undelivered()))
    @rule(order=PICK)
    def refuse_delivery(self, order: int) -> None:
        """The buyer refuses the parcel at the door (refused unless it travels)."""
        orders = self.undelivered()
        o = orders[order % len(orders)]
        result = self.act(RefuseDelivery(order_id=o.order_id, at=self.now), order=o)
        if result is None:
            return
        # The lines no case held are asked for by a case the engine opened for the buyer.
        for line in result["lines"]:
            held = line["open_case_id"]
            if held is not None and held not in self.cases:
                case = self.engine.stored_case(held)
                self.cases[held] = CaseModel(
                    case_id=held,
                    order_id=o.order_id,
                    asked=Decimal(case["amount"]),
                    opened_at=self.now,
                    kind="refund_only",
                    units={c["sku"]: c["quantity"] for c in case["lines"]},
                    unshipped=False,
                )

    # The buyer -----------------------------------------------------------------------------------

    @rule(
        order=PICK,
        kind=st.sampled_from(CASE_TYPES),
        reason=st.sampled_from(REASONS),
        lines=st.lists(st.integers(0, 2), max_size=3, unique=True),
        partial=st.booleans(),
        amount=st.sampled_from(ASKED),
    )
    def open_case(
        self, order: int, kind: str, reason: str, lines: list[int], partial: bool, amount: str
    ) -> None:
        o = self.order_at(order)
        skus = list(o.lines)
        named = list(dict.fromkeys(skus[i % len(skus)] for i in lines))
        # Named lines may be asked for in part (one unit); none named is every line in full.
        units = {sku: o.lines[sku].quantity for sku in skus}
        if named:
            units = {
                sku: 1 if partial and o.lines[sku].quantity > 1 else o.lines[sku].quantity
                for sku in named
            }
        missing = reason.startswith("missing_items.")
        full = sum(
            (o.lines[s].worth(n) if missing else o.lines[s].paid(n) for s, n in units.items()),
            ZERO,
        )
        self.serial += 1
        case_id = uuid5(CASE_IDS, f"case-{self.serial}")
        command = OpenCase(
            order_id=o.order_id,
            type=kind,
            reason=reason,
            amount=self.amount(amount, full),
            lines=[f"{sku}:{units[sku]}" for sku in named],
            case_id=case_id,
            at=self.now,
        )
        result = self.act(command, order=o)
        if result is None:
            return
        self.cases[str(case_id)] = CaseModel(
            case_id=str(case_id),
            order_id=o.order_id,
            asked=Decimal(result["amount"]),
            opened_at=self.now,
            kind=kind,
            units=units,
            unshipped=o.shipped_at is None,
        )

    @precondition(lambda self: self.can("ship-back"))
    @rule(case=PICK, freight=st.sampled_from((None, "0.00", "5.00", "30.00")))
    def ship_back(self, case: int, freight: str | None) -> None:
        """The goods go back, the postage claimed or not (0.00: refused)."""
        c = self.pick(case, "ship-back")
        if c is None:
            return
        waybill = f"R{self.serial}"
        command = ShipBack(
            case_id=c.uid, carrier="YTO", waybill=waybill, freight=freight, at=self.now
        )
        shipped = self.act(command, c)
        if shipped is not None and shipped["status"] == "awaiting_merchant_receipt":
            self.check_instant_refund(c, shipped)

    def check_instant_refund(self, c: CaseModel, shipped: dict[str, Any]) -> None:
        """Goods just shipped back: refunded at once exactly when the case is a return and
        refund of at most the policy's limit (its amount due, as far as the model knows it:
        a case taken to the platform may be due less) by a buyer with no flag and no dispute
        lost."""
        buyer = self.orders[c.order_id].buyer
        advanced = [
            e for e in shipped["ledger"] if e["type"] == "refund" and _time(e["at"]) == self.now
        ]
        paid = sum((Decimal(e["amount"]) for e in advanced), ZERO)
        standing = buyer not in self.flagged and self.lost[buyer] == 0
        fits = shipped["type"] == "return_refund" and standing
        if advanced and (not fits or paid > INSTANT_UP_TO):
            self.hole(
                InstantRefundAmiss,
                f"case {c.case_id} ({shipped['type']}, {buyer}: flagged "
                f"{buyer in self.flagged}, disputes lost {self.lost[buyer]}) refunded {paid} "
                "as its goods went back",
            )
        due = Decimal(shipped["amount"])
        if not advanced and fits and due <= INSTANT_UP_TO and shipped["escalation"] is None:
            self.hole(
                InstantRefundAmiss,
                f"case {c.case_id} (return_refund of {due}, {buyer} in good standing) was not "
                "refunded as its goods went back",
            )

    @precondition(lambda self: self.can("withdraw"))
    @rule(case=PICK)
    def withdraw(self, case: int) -> None:
        c = self.pick(case, "withdraw")
        if c is None:
            return
        self.act(WithdrawCase(case_id=c.uid, at=self.now), c)

    @precondition(lambda self: self.can("escalate"))
    @rule(case=PICK, claim=st.sampled_from(CLAIMS))
    def escalate(self, case: int, claim: str) -> None:
        c = self.pick(case, "escalate")
        if c is None:
            return
        self.act(EscalateCase(case_id=c.uid, claim=claim, evidence=["photo:1"], at=self.now), c)

    @precondition(lambda self: self.can("rate"))
    @rule(case=PICK, score=st.integers(1, 5))
    def rate(self, case: int, score: int) -> None:
        c = self.pick(case, "rate")
        if c is None:
            return
        self.act(RateCase(case_id=c.uid, score=score, at=self.now), c)

    @precondition(lambda self: self.can("accept-offer"))
    @rule(case=PICK)
    def accept_offer(self, case: int) -> None:
        c = self.pick(case, "accept-offer")
        if c is None:
            return
        self.act(AcceptOffer(case_id=c.uid, at=self.now), c)

    @precondition(lambda self: self.can("decline-offer"))
    @rule(case=PICK)
    def decline_offer(self, case: int) -> None:
        c = self.pick(case, "decline-offer")
        if c is None:
            return
        self.act(DeclineOffer(case_id=c.uid, at=self.now), c)

    @precondition(lambda self: self.can("message"))
    @rule(case=PICK, party=st.sampled_from(("buyer", "merchant", "platform")))
    def message(self, case: int, party: str) -> None:
        c = self.pick(case, "message")
        if c is None:
            return
        self.act(MessageCase(case_id=c.uid, text="any news?", party=party, at=self.now), c)

    # The merchant --------------------------------------------------------------------------------

    @precondition(lambda self: self.can("approve"))
    @rule(case=PICK)
    def approve(self, case: int) -> None:
        c = self.pick(case, "approve")
        if c is None:
            return
        self.act(ApproveCase(case_id=c.uid, return_address="Hangzhou W1", at=self.now), c)

    @rule(
        types=st.lists(st.sampled_from(CASE_TYPES), min_size=1, max_size=3, unique=True),
        up_to=st.sampled_from((None, "5.00", "40.00", "50.00", "500.00")),
        remove=st.booleans(),
    )
    def shop_rule(self, types: list[str], up_to: str | None, remove: bool) -> None:
        """The shop sets (a new version of) or removes its rule approving requests as they
        are opened (some beyond the policy's bounds: refused)."""
        if remove:
            self.act(RemoveAutoRule(merchant_id="shop-1", rule_id="auto", at=self.now))
        else:
            rule = SetAutoRule(
                merchant_id="shop-1", rule_id="auto", types=tuple(types), up_to=up_to, at=self.now
            )
            self.act(rule)

    @precondition(lambda self: self.can("intercept"))
    @rule(case=PICK)
    def intercept(self, case: int) -> None:
        c = self.pick(case, "intercept")
        if c is None:
            return
        self.act(InterceptParcel(case_id=c.uid, at=self.now), c)

    @precondition(lambda self: self.can("reject"))
    @rule(case=PICK)
    def reject(self, case: int) -> None:
        c = self.pick(case, "reject")
        if c is None:
            return
        command = RejectCase(case_id=c.uid, reason="worn", communication="chat:1", at=self.now)
        self.act(command, c)

    @precondition(lambda self: self.can("refund"))
    @rule(case=PICK, amount=st.sampled_from(SMALLER))
    def refund(self, case: int, amount: str) -> None:
        c = self.pick(case, "refund")
        if c is None:
            return
        money = None if amount == "all" else self.amount(amount, Decimal(c.shown["amount"]))
        self.act(RefundCase(case_id=c.uid, amount=money, at=self.now), c)

    @precondition(lambda self: self.can("receive"))
    @rule(case=PICK, condition=st.sampled_from(("ok", "damaged", "not_as_returned")))
    def receive(self, case: int, condition: str) -> None:
        c = self.pick(case, "receive")
        if c is None:
            return
        self.act(ReceiveGoods(case_id=c.uid, condition=condition, at=self.now), c)

    @precondition(lambda self: self.can("ship-replacement"))
    @rule(case=PICK)
    def ship_replacement(self, case: int) -> None:
        c = self.pick(case, "ship-replacement")
        if c is None:
            return
        command = ShipReplacement(case_id=c.uid, carrier="SF", waybill="N1", at=self.now)
        self.act(command, c)

    @precondition(lambda self: self.can("reship"))
    @rule(case=PICK, cannot=st.booleans())
    def reship(self, case: int, cannot: bool) -> None:
        c = self.pick(case, "reship")
        if c is None:
            return
        if cannot:
            self.act(Reship(case_id=c.uid, cannot=True, note="sold out", at=self.now), c)
        else:
            self.act(Reship(case_id=c.uid, carrier="SF", waybill="M1", at=self.now), c)

    @precondition(lambda self: self.can("offer"))
    @rule(case=PICK, kind=st.sampled_from(CASE_TYPES), amount=st.sampled_from(ASKED))
    def offer(self, case: int, kind: str, amount: str) -> None:
        c = self.pick(case, "offer")
        if c is None:
            return
        money = self.amount(amount, Decimal(c.shown["amount"]))
        self.act(OfferChange(case_id=c.uid, type=kind, amount=money, at=self.now), c)

    @precondition(lambda self: self.can("extend"))
    @rule(case=PICK, hours=st.sampled_from((1, 24, 72, 73)))
    def extend(self, case: int, hours: int) -> None:
        c = self.pick(case, "extend")
        if c is None:
            return
        command = ExtendReceipt(case_id=c.uid, hours=hours, reason="backlog", at=self.now)
        self.act(command, c)

    @precondition(lambda self: self.can("recover-goods"))
    @rule(case=PICK)
    def recover_goods(self, case: int) -> None:
        c = self.pick(case, "recover-goods")
        if c is None:
            return
        self.act(RecoverGoods(case_id=c.uid, at=self.now), c)

    # The platform --------------------------------------------------------------------------------

    @precondition(lambda self: self.can("rule"))
    @rule(case=PICK, party=st.sampled_from(("buyer", "merchant")))
    def rule_case(self, case: int, party: str) -> None:
        c = self.pick(case, "rule")
        if c is None:
            return
        command = RuleCase(case_id=c.uid, in_favour_of=party, by=AGENT, at=self.now)
        if self.act(command, c) is not None and party == "merchant":
            self.lost[self.orders[c.order_id].buyer] += 1

    @precondition(lambda self: self.can("ship-back"))  # when it matters: goods may go back
    @rule(buyer=st.just(BUYERS[1]), flag=st.booleans())
    def flag_buyer(self, buyer: str, flag: bool) -> None:
        """The platform flags a buyer for abuse, or clears the flag (refused when there is
        nothing to change). Only the second buyer: the first keeps its standing unless it
        loses a dispute, so both kinds of return are played."""
        command: Action = (
            FlagBuyer(buyer_id=buyer, reason="empty parcels", by=AGENT, at=self.now)
            if flag
            else ClearBuyer(buyer_id=buyer, note="checked", by=AGENT, at=self.now)
        )
        done = self.act(command)
        if done is not None:
            (self.flagged.add if flag else self.flagged.discard)(buyer)
        elif flag != (buyer in self.flagged):
            self.hole(InstantRefundAmiss, f"{command.name} {buyer} refused")

    # Anyone, out of turn ------------------------------------------------------------------------

    @precondition(lambda self: self.has_live_case())
    @rule(case=PICK, action=st.sampled_from(OUT_OF_TURN))
    def out_of_turn(self, case: int, action: str) -> None:
        """A person's action on any case, whatever its status: mostly refused."""
        live = self.live()
        c = live[case % len(live)]
        self.act(plain_command(action, c.uid, self.now), c)

    # The clock -----------------------------------------------------------------------------------

    @rule(minutes=MINUTES, ticks=st.booleans())
    def advance(self, minutes: int, ticks: bool) -> None:
        self.now += timedelta(minutes=minutes)
        if not ticks:
            return
        done = tick(self.engine, self.now)
        live = {c.case_id for c in self.live()}
        for due, error in done.failed:
            if due.case_id in live:
                self.hole(ClockStuck, f"tick at {self.now}: {due.action} of {due.case_id}: {error}")
        for row in self.engine.handle(ListCases(due_before=self.now)):
            if row["case_id"] in live:
                self.hole(
                    ClockStuck,
                    f"after a tick at {self.now.isoformat()}, case {row['case_id']} still has "
                    f"{row['due_action']} due at {row['due_at']}",
                )

    # The attacker --------------------------------------------------------------------------------

    def attackable(self, ended: bool) -> list[CaseModel]:
        if not type(self).ATTACKS:
            return []
        if ended:
            return [c for c in self.live() if c.shown.get("status") in FINAL]
        return [c for c in self.live() if int(c.shown.get("version", 0)) >= 2]

    def stored(self, case: CaseModel) -> list[Any]:
        return list(self.engine.store.recorder.select_events(case.uid))

    def events_table(self) -> str:
        name: str = self.engine.store.recorder.events_table_name  # type: ignore[attr-defined]
        return name

    def stored_id(self, case: CaseModel) -> Any:
        return case.uid if self.engine.store.is_postgres else case.uid.hex

    @precondition(lambda self: bool(self.attackable(ended=True)))
    @rule(case=PICK, index=st.booleans())
    def forge(self, case: int, index: bool) -> None:
        """Append to an ended case a sealed copy of goods shipped back, with the merchant's
        receipt (and so an automatic refund) due now; with ``index``, the case index says so
        too, for the tick to find."""
        candidates = self.attackable(ended=True)
        if not candidates:
            return
        c = candidates[case % len(candidates)]
        events = self.stored(c)
        last = events[-1]
        version = last.originator_version + 1
        topic = "engine.case:GoodsShippedBack"
        copied = next((e for e in events if e.topic == topic), None)
        state: dict[str, Any] = json.loads(copied.state) if copied else {}
        state.update(
            timestamp=self.now.isoformat(),
            at=self.now.isoformat(),
            actor={"role": "buyer", "id": c.shown["buyer_id"]},
            command_id=f"forged-{version}",
            status="awaiting_merchant_receipt",
            due={
                "due_at": self.now.isoformat(),
                "action": "auto_refund",
                "policy_version": self.engine.policy.version,
            },
        )
        state.setdefault("shipment", {"carrier": "YTO", "waybill": "R-FORGED"})
        state.pop("hash", None)
        state["hash"] = chain_hash(json.loads(last.state)["hash"], c.uid, version, topic, state)
        store = self.engine.store
        writes: list[tuple[str, tuple[Any, ...]]] = [
            (
                f"INSERT INTO {{t}}{self.events_table()} "
                "(originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)",
                (self.stored_id(c), version, topic, json.dumps(state).encode()),
            )
        ]
        if index:
            writes.append(
                (
                    "UPDATE {t}aftersales_cases SET status = ?, due_at = ?, due_action = ?, "
                    "version = ? WHERE case_id = ?",
                    (
                        "awaiting_merchant_receipt",
                        store.time_param(self.now),
                        "auto_refund",
                        version,
                        c.case_id,
                    ),
                )
            )
        store.write(writes)
        c.attacked = f"a forged GoodsShippedBack at version {version}"
        c.events_left = len(self.stored(c))

    @precondition(lambda self: bool(self.attackable(ended=False)))
    @rule(case=PICK)
    def delete_last(self, case: int) -> None:
        candidates = self.attackable(ended=False)
        if not candidates:
            return
        c = candidates[case % len(candidates)]
        last = self.stored(c)[-1]
        self.engine.store.execute(
            f"DELETE FROM {{t}}{self.events_table()} "
            "WHERE originator_id = ? AND originator_version = ?",
            (self.stored_id(c), last.originator_version),
        )
        c.attacked = f"its last event ({last.topic}, version {last.originator_version}) deleted"
        c.events_left = len(self.stored(c))

    # The rules, after every step ---------------------------------------------------------------

    @invariant()
    def the_rules_hold(self) -> None:
        if self.stepped:
            EXPLORED.steps += 1
        self.stepped = True
        if not self.orders:
            return
        self.look()
        self.check_money()
        self.check_freight()
        self.check_deadlines()
        self.check_refund_only_before_shipment()
        self.check_tampered()

    def look(self) -> None:
        """Read again every live case and order the store holds a new version of: from the
        engine (``case show`` is a rebuild from the stored events), from a second engine on a
        connection of its own, and from the copy the engine acts on (its cache); they must
        agree, and the case index must agree with every case."""
        stored = self.versions()
        for c in self.live():
            if stored.get(c.uid) != c.shown.get("version"):
                shown = self.engine.stored_case(c.case_id)
                rebuilt = self.reader.stored_case(c.case_id)
                if shown != rebuilt:
                    self.hole(ShowDisagrees, f"case {c.case_id}: {_diff(shown, rebuilt)}")
                cached = self.engine.store.cached(c.uid)
                if cached is not None and (copy := cached.to_json()) != shown:
                    self.hole(
                        ShowDisagrees,
                        f"case {c.case_id}, the engine's cached copy: {_diff(copy, shown)}",
                    )
                c.escalations = sum(e.topic.endswith(":CaseEscalated") for e in self.stored(c))
                c.shown = shown
        rows = {str(r["case_id"]): r for r in self.engine.handle(ListCases(at=self.now))}
        for c in self.live():
            row, shown = rows.get(c.case_id), c.shown
            if row is None:
                self.hole(ShowDisagrees, f"case {c.case_id} is not in case list")
                continue
            if row["pending_clock"]:
                # Listed as the clock leaves it by now, as case show shows it then.
                shown = self.engine.get_case(c.case_id, at=self.now)
            for key in ("status", "amount", "refunded_amount", "due_action", "version"):
                if row[key] != shown[key]:
                    self.hole(
                        ShowDisagrees,
                        f"case {c.case_id}: case list says {key} {row[key]}, "
                        f"case show {shown[key]}",
                    )
            if _time(row["due_at"]) != _time(shown["due_at"]):
                self.hole(
                    ShowDisagrees,
                    f"case {c.case_id}: case list says due {row['due_at']}, "
                    f"case show {shown['due_at']}",
                )
        for o in self.orders.values():
            if stored.get(order_uuid(o.order_id)) != o.shown.get("version"):
                shown = self.engine.stored_order(o.order_id)
                if shown != (rebuilt := self.reader.stored_order(o.order_id)):
                    self.hole(ShowDisagrees, f"order {o.order_id}: {_diff(shown, rebuilt)}")
                o.shown = shown

    def versions(self) -> dict[UUID, int]:
        """The last stored version of every aggregate, as the events table has it."""
        rows = self.engine.store.query(
            "SELECT originator_id AS id, MAX(originator_version) AS version "
            f"FROM {{t}}{self.events_table()} GROUP BY originator_id"
        )
        return {UUID(str(r["id"])): int(r["version"]) for r in rows}

    def check_money(self) -> None:
        for o in self.orders.values():
            cases = [c for c in self.cases.values() if c.order_id == o.order_id]
            refunded = {c.case_id: Decimal(c.shown.get("refunded_amount", "0")) for c in cases}
            for line in o.shown["lines"]:
                model = o.lines[line["sku"]]
                worth = model.worth(model.quantity)
                if Decimal(line["refunded"]) > worth:
                    self.hole(
                        OrderLineOverRefunded,
                        f"order {o.order_id} line {model.sku} refunded {line['refunded']}, "
                        f"worth {worth}",
                    )
            skus = list(o.lines)
            for size in range(1, len(skus) + 1):
                for group in combinations(skus, size):
                    inside = [c for c in cases if set(c.units) <= set(group)]
                    total = sum((refunded[c.case_id] for c in inside), ZERO)
                    worth = sum((o.lines[s].worth(o.lines[s].quantity) for s in group), ZERO)
                    if total > worth:
                        self.hole(
                            LineOverRefunded,
                            f"order {o.order_id} lines {'+'.join(group)} worth {worth}: "
                            f"its cases refunded {total} "
                            f"({', '.join(f'{c.case_id} {refunded[c.case_id]}' for c in inside)})",
                        )
            for c in cases:
                worth = sum((o.lines[s].worth(n) for s, n in c.units.items()), ZERO)
                if refunded[c.case_id] > worth:
                    self.hole(
                        LineOverRefunded,
                        f"case {c.case_id} refunded {refunded[c.case_id]} on units worth {worth}",
                    )
            on_lines = sum((Decimal(line["refunded"]) for line in o.shown["lines"]), ZERO)
            on_cases = sum(refunded.values(), ZERO)
            # An attacked case's history is not what the order booked (a refund event deleted
            # after the order recorded it): its books are the audit's to flag, not compared.
            if on_lines != on_cases and all(c.attacked is None for c in cases):
                self.hole(
                    LedgerDisagrees,
                    f"order {o.order_id}'s lines show {on_lines} refunded, its cases {on_cases}",
                )
        for c in self.live():
            shown = c.shown
            paid = Decimal(shown["refunded_amount"])
            if paid > c.asked:
                self.hole(RefundOverAsked, f"case {c.case_id} refunded {paid}, asked {c.asked}")
            if shown["status"] != "refunded" or shown["ruling"] is not None:
                continue
            agreed = [
                c.asked if o["amount"] is None else Decimal(o["amount"])
                for o in shown["offers"]
                if o["answer"] == "accepted"
            ]
            least = min(agreed) if agreed else c.asked
            if paid < least:
                consent = f"an accepted offer of {least}" if agreed else "no accepted offer"
                self.hole(
                    RefundWithoutConsent,
                    f"case {c.case_id} ended refunded with {paid} of the {c.asked} asked, "
                    f"{consent}, no ruling",
                )

    def check_freight(self) -> None:
        """The postage back is paid once a case, by the merchant up to the policy's cap (or
        both legs, once, on a wrong item the platform upheld), never by the insurer for an
        order that was not insured (the model's orders never are)."""
        cap = self.engine.policy.return_freight_cap
        for c in self.live():
            freight = [e for e in c.shown.get("ledger", ()) if e["type"] == "freight"]
            if len(freight) > 1:
                self.hole(FreightOverOwed, f"case {c.case_id} paid freight {len(freight)} times")
            for e in freight:
                most = cap if e.get("legs", 1) == 1 else self.engine.policy.freight_per_leg * 2
                if e["payer"] == "insurer" or Decimal(e["amount"]) > most:
                    self.hole(
                        FreightOverOwed,
                        f"case {c.case_id}: freight {e['amount']} from the {e['payer']}",
                    )

    def check_deadlines(self) -> None:
        for c in self.live():
            status, due = c.shown["status"], _time(c.shown["due_at"])
            if status.startswith("awaiting_") and due is None:
                self.hole(NoDeadline, f"case {c.case_id} is {status} with no deadline")
            if status == "awaiting_merchant" and due is not None and due > c.opened_at + REVIEW:
                self.hole(
                    ReviewStretched,
                    f"case {c.case_id} opened {c.opened_at.isoformat()} awaits the merchant "
                    f"until {due.isoformat()}",
                )
            if status in ("escalated", "rejected") and due is None:
                self.hole(EndlessDispute, f"case {c.case_id} is {status} with no deadline")
            if c.escalations > 2:
                self.hole(EndlessAppeals, f"case {c.case_id} was escalated {c.escalations} times")

    def check_refund_only_before_shipment(self) -> None:
        for c in self.live():
            shown = c.shown
            if not c.unshipped or c.kind != "refund_only" or shown["type"] != "refund_only":
                continue
            if shown["status"] != "refunded" or Decimal(shown["refunded_amount"]) < c.asked:
                continue
            o = self.orders[c.order_id]
            refunds = [e for e in shown["ledger"] if e["type"] == "refund"]
            if o.shipped_at is None or not refunds:
                continue
            refunded_at = _time(refunds[-1]["at"])
            assert refunded_at is not None
            if refunded_at > o.shipped_at or (
                refunded_at == o.shipped_at and c.case_id not in o.refunded_when_shipped
            ):
                self.hole(
                    ShippedUnderRefundOnly,
                    f"case {c.case_id} (refund only, opened {c.opened_at.isoformat()} before "
                    f"order {o.order_id} shipped) refunded {shown['refunded_amount']} in full at "
                    f"{refunded_at.isoformat()}, after the order shipped at "
                    f"{o.shipped_at.isoformat()}",
                )

    def check_tampered(self) -> None:
        """A case the attacker touched: nothing appended to it, and shown by no engine (asked
        again whenever its stored events change, which they must not)."""
        for c in self.cases.values():
            if c.attacked is None:
                continue
            now = len(self.stored(c))
            if now != c.events_left:
                self.hole(
                    Tampered,
                    f"case {c.case_id} ({c.attacked}) has {now} stored events, "
                    f"{c.events_left} after the attack: the engine appended to it",
                )
            if now == c.events_asked:
                continue
            c.events_asked = now
            for who, engine in (("the engine", self.engine), ("a second engine", self.reader)):
                try:
                    shown = engine.stored_case(c.case_id)
                except AftersalesError:
                    continue
                self.hole(
                    Tampered,
                    f"{who} shows case {c.case_id} ({c.attacked}): {shown['status']}, version "
                    f"{shown['version']}, refunded {shown['refunded_amount']}",
                )

    def teardown(self) -> None:
        failing = sys.exc_info()[1] is not None
        try:
            if not failing:
                for c in self.live():
                    audit = audit_case(self.engine.store, c.case_id)
                    if not audit.verified:
                        problems = "; ".join(p.message for p in audit.problems)
                        self.hole(AuditFailed, f"case {c.case_id}: {problems}")
        finally:
            self.engine.close()
            self.reader.close()
            self.scratch.close()


def plain_command(action: str, case_id: UUID, at: datetime) -> Action:
    """A person's action on a case with plain arguments."""
    made: dict[str, Callable[[], Action]] = {
        "approve": lambda: ApproveCase(case_id=case_id, at=at),
        "reject": lambda: RejectCase(case_id=case_id, reason="no", communication="chat:9", at=at),
        "refund": lambda: RefundCase(case_id=case_id, at=at),
        "ship-back": lambda: ShipBack(case_id=case_id, carrier="YTO", waybill="R9", at=at),
        "receive": lambda: ReceiveGoods(case_id=case_id, at=at),
        "ship-replacement": lambda: ShipReplacement(
            case_id=case_id, carrier="SF", waybill="N9", at=at
        ),
        "reship": lambda: Reship(case_id=case_id, carrier="SF", waybill="M9", at=at),
        "withdraw": lambda: WithdrawCase(case_id=case_id, at=at),
        "escalate": lambda: EscalateCase(case_id=case_id, claim="other", at=at),
        "rule": lambda: RuleCase(case_id=case_id, in_favour_of="buyer", by=AGENT, at=at),
        "rate": lambda: RateCase(case_id=case_id, score=3, at=at),
        "recover-goods": lambda: RecoverGoods(case_id=case_id, at=at),
        "offer": lambda: OfferChange(case_id=case_id, type="refund_only", at=at),
        "accept-offer": lambda: AcceptOffer(case_id=case_id, at=at),
        "decline-offer": lambda: DeclineOffer(case_id=case_id, at=at),
        "extend": lambda: ExtendReceipt(case_id=case_id, hours=24, reason="backlog", at=at),
    }
    return made[action]()


def _diff(one: dict[str, Any], other: dict[str, Any]) -> str:
    keys = sorted(k for k in one.keys() | other.keys() if one.get(k) != other.get(k))
    return "; ".join(f"{k}: {one.get(k)!r} against {other.get(k)!r}" for k in keys)


# Running it ----------------------------------------------------------------------------------


def hunting(kinds: frozenset[type[Hole]], *, attacks: bool) -> type[Model]:
    """The model with only ``kinds`` stopping a run (every other rule still checked and
    counted), the attacker playing or not. Named Model, so hypothesis prints the sequence it
    found as ``state = Model()`` and it can be pasted into a regression."""
    found: type[Model] = type("Model", (Model,), {"RAISES": kinds, "ATTACKS": attacks})
    return found


def explore(name: str, machine: Callable[[], Model], how: settings) -> None:
    """Run the state machine as a test, and say how much it explored (and what it met first)
    on stderr and in test-artifacts/model/runs.txt. Several distinct holes found in one run
    (hypothesis reports each, shrunk) are raised as one ``Holes``."""
    global EXPLORED
    EXPLORED = Explored()
    started = time.monotonic()
    try:
        run_state_machine_as_test(machine, settings=how)  # type: ignore[arg-type]
    except BaseException as error:
        found = list(_leaves(error))
        for one in found:  # what hypothesis found: the hole and the sequence, shrunk
            failed = "\n".join([f"{type(one).__name__}: {one}", *getattr(one, "__notes__", ())])
            EXPLORED.failures.append(failed)
        if len(found) > 1 and all(isinstance(e, Hole) for e in found):
            raise Holes("; ".join(str(e).splitlines()[0] for e in found)) from error
        raise
    finally:
        text = EXPLORED.report(name, time.monotonic() - started)
        sys.stderr.write(text + "\n")
        RUNS.parent.mkdir(parents=True, exist_ok=True)
        with RUNS.open("a", encoding="utf-8") as runs:
            runs.write(f"{datetime.now().isoformat(timespec='seconds')} {text}\n")


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for one in error.exceptions:
            yield from _leaves(one)
    else:
        yield error


def model_settings(examples: int, steps: int, *, fixed: bool, shrink: bool = True) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=fixed,
        database=None,
        # Shrinking a long sequence takes minutes: the default run reports the first hole as
        # it was met, the searches (-m slow) shrink what they find.
        phases=tuple(Phase) if shrink else (Phase.explicit, Phase.generate),
        report_multiple_bugs=shrink,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# The default run: a fixed seed, so that its result does not depend on luck; the same seed at
# four times the length under -m slow.
SQLITE_RUN = model_settings(30, 40, fixed=True, shrink=False)
SQLITE_LONGER_RUN = model_settings(120, 40, fixed=True, shrink=False)
POSTGRES_RUN = model_settings(15, 30, fixed=True, shrink=False)
# The long search (-m slow): random sequences, every hole counted, none stopping the search.
LONG_RUN = model_settings(1500, 60, fixed=False, shrink=False)
# One search per known hole (-m slow): random, stopped and shrunk at the first of its kind.
# Fifty steps: with thirty, 4,213 sequences did not meet hole 3 (a refund-only case opened
# before shipment needs its order shipped and then the case refunded); with fifty, the
# search met it after 2,295.
HUNT_RUN = model_settings(4000, 50, fixed=False)
# Searching, then shrinking (hypothesis gives up shrinking after five minutes).
SEARCH_TIME = pytest.mark.timeout(1800)

# The six holes the model found before they were closed, by the rule that found each: hole 5
# by two. The searches (-m slow) go on looking for them.
KNOWN: tuple[tuple[int, type[Hole]], ...] = (
    (1, LineOverRefunded),
    (2, RefundWithoutConsent),
    (3, ShippedUnderRefundOnly),
    (4, ReviewStretched),
    (5, EndlessDispute),
    (5, EndlessAppeals),
    (6, Tampered),
)


def on_backend(backend: str, request: pytest.FixtureRequest) -> Model:
    """A model for a regression sequence, on SQLite or on a PostgreSQL schema of its own."""
    if backend == "sqlite":
        return Model(keep_going=True)
    pool: SchemaPool = request.getfixturevalue("pg_schemas")

    class OnPostgres(Model):
        def new_scratch(self) -> Scratch:
            return PostgresScratch(pool)

    return OnPostgres(keep_going=True)


def test_the_model_on_sqlite() -> None:
    explore("model on SQLite", Model, SQLITE_RUN)


@pytest.mark.slow
def test_the_model_on_sqlite_longer() -> None:
    explore("model on SQLite, longer", Model, SQLITE_LONGER_RUN)


def test_the_model_on_postgres(pg_schemas: SchemaPool) -> None:
    class OnPostgres(Model):
        def new_scratch(self) -> Scratch:
            return PostgresScratch(pg_schemas)

    explore("model on PostgreSQL", OnPostgres, POSTGRES_RUN)


@pytest.mark.slow
@SEARCH_TIME
def test_a_long_search() -> None:
    """Many random sequences, every hole counted where it was first met and none stopping
    the search; at the end, every kind met is raised at once."""
    explore("long search", hunting(frozenset(), attacks=True), LONG_RUN)
    if EXPLORED.first:
        raise Holes("; ".join(f"{k}: {m}" for k, (_, _, m) in sorted(EXPLORED.first.items())))


# Instant refunds need long sequences (an order delivered, a return opened, approved and its
# goods shipped back before anything ends it): a search of its own, a hundred steps each.
INSTANT_RUN = model_settings(800, 100, fixed=False, shrink=False)


@pytest.mark.slow
@SEARCH_TIME
def test_a_search_for_instant_refunds_amiss() -> None:
    """Only the rules about money stop it: a return refunded at once when it should not be (or
    not when it should), the order's books against its cases, a line or a case refunded beyond
    its worth or its asking; every other rule counted."""
    kinds = frozenset({InstantRefundAmiss, LedgerDisagrees, LineOverRefunded, RefundOverAsked})
    explore("search for instant refunds amiss", hunting(kinds, attacks=False), INSTANT_RUN)


@pytest.mark.slow
@SEARCH_TIME
@pytest.mark.parametrize(
    ("hole", "kind"),
    [
        *(pytest.param(n, k, id=f"hole-{n}-{k.__name__}") for n, k in KNOWN),
        # Found by the long search besides the six: a deadline left due after a tick.
        pytest.param(0, ClockStuck, id="clock-ClockStuck"),
    ],
)
def test_a_search_for_each_known_hole(hole: int, kind: type[Hole]) -> None:
    """Only this rule stops the search (the others are counted); the attacker plays only in
    the search for hole 6, whose rule is about it. Hypothesis prints the shrunk sequence.

    A rule finds whatever breaks it: hole 1's rule (a line refunded beyond its worth by its
    cases) is broken both by hole 1 and by a second refund of a gift booked on the paid lines
    (found besides the six, below), and the search ends on whichever it meets first."""
    explore(
        f"search for {kind.__name__}" + (f" (hole {hole})" if hole else ""),
        hunting(frozenset({kind}), attacks=hole == 6),
        HUNT_RUN,
    )


# The holes the searches found, kept as the shortest sequences found -------------------------
#
# Each replays, through the model's own rules and checks, the sequence a search found and
# shrank (steps the hole does not need were then taken out, one at a time, replaying each
# time). Every rule is checked after every step; holes met on the way are counted, and the one
# the sequence is about is raised at the end (``settle``). Each failed on the engine the model
# found it in.


def test_hole_1_a_line_refunded_by_a_second_case_and_again_by_the_appeal_of_the_first() -> None:
    state = Model(keep_going=True)
    try:
        state.place_orders(orders=[("shop-1", [0], "delivered"), ("shop-1", [0], "delivered")])
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="refund_only",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.reject(case=0)
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="refund_only",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.refund(amount="all", case=0)
        state.the_rules_hold()
        state.escalate(case=0, claim="unjustified_rejection")
        state.the_rules_hold()
        state.rule_case(case=0, party="buyer")
        state.the_rules_hold()
    finally:
        state.teardown()
    state.settle(LineOverRefunded)


def test_hole_2_a_smaller_refund_ends_the_case_without_the_buyers_consent() -> None:
    state = Model(keep_going=True)
    try:
        state.place_orders(orders=[("shop-1", [0], "placed"), ("shop-1", [0], "placed")])
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="refund_only",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.refund(amount="less", case=0)
        state.the_rules_hold()
    finally:
        state.teardown()
    state.settle(RefundWithoutConsent)


def test_hole_3_a_refund_only_case_opened_before_shipment_is_refunded_after_delivery() -> None:
    state = Model(keep_going=True)
    try:
        state.place_orders(orders=[("shop-1", [0], "placed"), ("shop-1", [0], "placed")])
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="refund_only",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.deliver_order(order=0)
        state.the_rules_hold()
        state.approve(case=0)
        state.the_rules_hold()
    finally:
        state.teardown()
    state.settle(ShippedUnderRefundOnly)


def test_the_clock_refunds_first_when_the_order_ships_at_the_reviews_very_end() -> None:
    """Not a hole (a long search took it for hole 3 once): a refund only asked for before the
    order shipped, unanswered; the merchant ships it at the very moment the 48 hours end. The
    clock acts first, so the refund is owed and paid, then the shipment is recorded (the
    merchant shipped what it had refunded, its own doing)."""
    state = Model(keep_going=True)
    try:
        state.place_orders(orders=[("shop-1", [0], "placed"), ("shop-1", [0], "placed")])
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="refund_only",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.advance(minutes=48 * 60, ticks=False)
        state.the_rules_hold()
        state.ship_order(order=0)
        state.the_rules_hold()
        (case,) = state.cases.values()
        assert case.shown["status"] == "refunded"
        assert state.orders["O1"].shipped_at == state.now
    finally:
        state.teardown()
    state.settle(ShippedUnderRefundOnly)


def test_hole_4_a_declined_offer_starts_a_fresh_review() -> None:
    state = Model(keep_going=True)
    try:
        state.place_orders(
            orders=[
                ("shop-1", [0], "placed"),
                ("shop-1", [0], "delivered"),
                ("shop-1", [0, 1], "shipped"),
            ]
        )
        state.the_rules_hold()
        state.deliver_order(order=0)
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="return_refund",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.advance(minutes=1, ticks=False)
        state.the_rules_hold()
        state.offer(amount="all", case=0, kind="refund_only")
        state.the_rules_hold()
        state.decline_offer(case=0)
        state.the_rules_hold()
    finally:
        state.teardown()
    state.settle(ReviewStretched)


def test_hole_4_an_offer_declined_after_the_review_ran_out_left_the_case_with_the_merchant() -> (
    None
):
    """Found by the long search once the six were closed: the merchant's offer an hour before
    its review ran out, declined by the buyer twelve hours later. The case went back to the
    merchant with the review's deadline moved to the decline (it had passed): stored as
    awaiting the merchant 59 hours after the opening until a tick or an action came. The
    deadline now fires in the decline itself."""
    state = Model(keep_going=True)
    try:
        state.place_orders(orders=[("shop-1", [0], "delivered"), ("shop-1", [0], "delivered")])
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="return_refund",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.advance(minutes=47 * 60, ticks=False)
        state.the_rules_hold()
        state.offer(amount="less", case=0, kind="return_refund")
        state.the_rules_hold()
        state.advance(minutes=12 * 60, ticks=False)
        state.the_rules_hold()
        state.decline_offer(case=0)
        state.the_rules_hold()
        (case,) = state.cases.values()
        assert case.shown["status"] == "awaiting_buyer_shipment", case.shown["status"]
    finally:
        state.teardown()
    state.settle(ReviewStretched)


def test_hole_5_a_rejected_case_has_no_deadline() -> None:
    state = Model(keep_going=True)
    try:
        state.place_orders(orders=[("shop-1", [0], "placed"), ("shop-1", [0], "placed")])
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="refund_only",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.reject(case=0)
        state.the_rules_hold()
    finally:
        state.teardown()
    state.settle(EndlessDispute)


def test_hole_5_after_a_ruling_for_the_merchant_the_buyer_escalates_again_and_again() -> None:
    state = Model(keep_going=True)
    try:
        state.place_orders(orders=[("shop-1", [0], "delivered"), ("shop-1", [0], "shipped")])
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="exchange",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.approve(case=0)
        state.the_rules_hold()
        state.escalate(case=0, claim="other")
        state.the_rules_hold()
        state.rule_case(case=0, party="merchant")
        state.the_rules_hold()
        state.escalate(case=0, claim="unjustified_rejection")
        state.the_rules_hold()
        state.rule_case(case=0, party="merchant")
        state.the_rules_hold()
        state.escalate(case=0, claim="unjustified_rejection")
        state.the_rules_hold()
    finally:
        state.teardown()
    state.settle(EndlessAppeals)


def test_hole_6_a_deleted_last_event_is_read_silently() -> None:
    state = Model(keep_going=True)
    try:
        state.place_orders(orders=[("shop-1", [0], "placed"), ("shop-1", [0], "placed")])
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="refund_only",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.approve(case=0)
        state.the_rules_hold()
        state.delete_last(case=0)
        state.the_rules_hold()
    finally:
        state.teardown()
    state.settle(Tampered)


def test_hole_6_a_forged_event_on_a_refunded_case_is_shown_and_acted_on() -> None:
    """The sequence found (the attacker appending goods shipped back to a refunded case), with
    the attacker writing the case index too and the clock ticking after it: the engine shows
    the forged case and refunds it a second time."""
    state = Model(keep_going=True)
    try:
        state.place_orders(orders=[("shop-1", [0], "placed"), ("shop-1", [0], "placed")])
        state.the_rules_hold()
        state.deliver_order(order=0)
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="refund_only",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.approve(case=0)
        state.the_rules_hold()
        state.forge(case=0, index=True)
        state.the_rules_hold()
        state.advance(minutes=1, ticks=True)
        state.the_rules_hold()
    finally:
        state.teardown()
    state.settle(Tampered)


# Found by the model besides the six ----------------------------------------------------------


def test_found_a_rejected_case_never_closed_while_a_later_case_held_its_line() -> None:
    """A rejected case's lapse (closed by the clock after its 7 days) was refused while a
    later case on the same line was open (the check that an escalation may take the line back
    ran for every action on a rejected case), and the tick passed the refusal off as someone
    else's work: the case stayed due, and open, for ever."""
    state = Model(keep_going=True)
    try:
        state.place_orders(orders=[("shop-1", [0], "delivered"), ("shop-1", [0], "delivered")])
        state.the_rules_hold()
        for kind in ("refund_only", "return_refund"):
            state.open_case(
                amount="all",
                kind=kind,
                lines=[],
                order=0,
                partial=False,
                reason="quality.colour_difference",
            )
            state.the_rules_hold()
            if kind == "refund_only":
                state.reject(case=0)
                state.the_rules_hold()
        state.advance(minutes=8 * 24 * 60, ticks=True)
        state.the_rules_hold()
        statuses = sorted(c.shown["status"] for c in state.cases.values())
        assert statuses == ["awaiting_buyer_shipment", "closed"], statuses
    finally:
        state.teardown()
    state.settle(ClockStuck)


def test_found_a_gift_made_good_at_its_list_price_is_booked_on_the_paid_lines() -> None:
    """A missing gift is made good at its list price (15.00), but the order books the refund
    over the case's lines by what was paid for them: the gift (paid 0.00) gets the last cent,
    the mug 48.46 of the 39.90 paid and the strap 36.43 of 30.00. The order then shows the
    gift as not refunded, and a second missing-items case on it may take 14.99 more."""
    state = Model(keep_going=True)
    try:
        state.place_orders(orders=[("shop-1", [0, 1, 2], "placed"), ("shop-1", [0], "placed")])
        state.the_rules_hold()
        state.deliver_order(order=0)
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="refund_only",
            lines=[],
            order=0,
            partial=False,
            reason="missing_items.gift",
        )
        state.the_rules_hold()
        state.approve(case=0)
        state.the_rules_hold()
        # Approved and refunded (not refused), each line booked within its worth: the gift at
        # its list price, so no second missing-gift case can be paid on it.
        (case,) = state.cases.values()
        shown = state.engine.stored_case(case.case_id)
        assert (shown["status"], shown["refunded_amount"]) == ("refunded", "84.90")
        lines = {line["sku"]: line["refunded"] for line in state.engine.get_order("O1")["lines"]}
        assert sorted(lines.values()) == ["15.00", "30.00", "39.90"], lines
    finally:
        state.teardown()
    state.settle(OrderLineOverRefunded)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_hole_6_a_case_kept_in_memory_is_written_over_its_deleted_last_event(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Found by the long search on an engine that had closed the six: an engine that saved a
    case last keeps it in memory; the attacker then deletes the case's last event (an offer),
    and when the merchant's 48 hours have passed, the order's delivery fires the case's
    deadline first, from memory, and appends it over the gap. The store now appends only on
    the event a save was built on, as it was read."""
    state = on_backend(backend, request)
    try:
        state.place_orders(orders=[("shop-1", [0], "placed"), ("shop-1", [0], "placed")])
        state.the_rules_hold()
        state.open_case(
            amount="all",
            kind="refund_only",
            lines=[],
            order=0,
            partial=False,
            reason="quality.colour_difference",
        )
        state.the_rules_hold()
        state.offer(amount="less", case=0, kind="refund_only")
        state.the_rules_hold()
        state.delete_last(case=0)
        state.the_rules_hold()
        state.advance(minutes=48 * 60 + 1, ticks=False)
        state.the_rules_hold()
        state.deliver_order(order=0)
        state.the_rules_hold()
    finally:
        state.teardown()
    state.settle(Tampered)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_found_an_instant_refund_booked_only_when_its_case_let_go_of_its_lines(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """A return of a mug (39.90, within the model's instant limit) by a buyer in good standing
    is refunded as it goes back; the order must book that refund at once, not when the case
    lets go of its lines (the model's first run met the order showing 0.00 refunded against
    its case's 39.90). A ruling for the merchant on the goods received damaged then puts the
    advance on that buyer and ends their good standing; another buyer's return is still
    refunded at once."""
    state = on_backend(backend, request)
    try:
        state.place_orders(orders=[("shop-1", [0], "delivered"), ("shop-1", [0], "delivered")])
        state.the_rules_hold()
        for order in (0, 1):
            state.open_case(
                amount="all", kind="return_refund", lines=[], order=order, partial=False,
                reason="quality.colour_difference",
            )  # fmt: skip
            state.the_rules_hold()
            state.approve(case=order)
            state.the_rules_hold()
        first, second = state.cases.values()
        state.ship_back(case=0, freight=None)
        state.the_rules_hold()
        assert state.engine.get_order("O1")["lines"][0]["refunded"] == "39.90"
        assert state.engine.stored_case(first.case_id)["instant_refund"] is True
        state.receive(case=0, condition="damaged")
        state.the_rules_hold()
        state.rule_case(case=0, party="merchant")
        state.the_rules_hold()
        assert state.lost["buyer-1"] == 1
        state.ship_back(case=0, freight=None)  # O2 is buyer-2's: still in good standing
        state.the_rules_hold()
        assert state.engine.stored_case(second.case_id)["instant_refund"] is True
    finally:
        state.teardown()
    state.settle(InstantRefundAmiss)
