"""A synthetic but rule-abiding event log, written fast: real aggregates, bulk saves.

Orders are placed, shipped and delivered; about a quarter get a case that runs one of several
realistic paths (return and refund, refund only, the merchant silent and the system approving,
a rejection escalated and ruled for the buyer, an exchange), each through the aggregates' own
methods, so every event is one the engine itself would record. Many aggregates are saved per
``AftersalesStore.save(...)`` call, with the case index rows the engine writes alongside.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID, uuid4


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(
        prog="python scripts/workload.py",
        description="Write a synthetic, rule-abiding event log into a store (for benchmarks "
        "and trying the reports): orders, and cases on about a quarter of them.",
    )
    parser.add_argument("--store", required=True, help="the store URL to write into")
    parser.add_argument("--events", type=int, default=10_000, help="at least this many events")
    parser.add_argument("--merchants", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

from aftersales.engine.domain.assignment import CaseAssignment, How
from aftersales.engine.domain.case import ReturnCase, settle_order_lines
from aftersales.engine.domain.events import Act
from aftersales.engine.domain.order import Order
from aftersales.engine.domain.order_events import OrderLine, Shipment
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.values import Actor, CaseType, Claim, DueAction, Party, Role
from aftersales.engine.storage.case_index import case_row
from aftersales.engine.storage.store import AftersalesStore

CST = timezone(timedelta(hours=8))
START = datetime(2026, 9, 1, 9, 0, tzinfo=CST)
REASONS = {
    "quality": ["quality.colour_difference", "quality.defective", "quality.size_wrong"],
    "logistics": ["logistics.damaged", "logistics.late"],
    "buyer": ["buyer.changed_mind", "buyer.no_longer_needed"],
}
CATEGORIES = ["phone_accessory", "apparel", "beauty", "home", "food"]


class Writer:
    """Collects changed aggregates and saves them many at a time."""

    def __init__(self, store: AftersalesStore, chunk: int = 1000) -> None:
        self.store = store
        self.chunk = chunk
        self.pending: dict[UUID, Order | ReturnCase | CaseAssignment] = {}
        self.events = 0

    def add(self, *aggregates: Order | ReturnCase | CaseAssignment) -> None:
        for a in aggregates:
            self.pending[a.id] = a
        if len(self.pending) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        items = list(self.pending.values())
        self.events += sum(len(a.pending_events) for a in items)
        cases = [case_row(a) for a in items if isinstance(a, ReturnCase)]
        self.store.save(*items, cases=cases)
        self.pending = {}


class Story:
    """One order's life, acted through the aggregates as the engine's service does."""

    def __init__(self, policy: Policy, rng: random.Random) -> None:
        self.policy = policy
        self.rng = rng

    def act(self, role: Role, who: str, at: datetime) -> Act:
        return Act(at=at, actor=Actor(role=role, id=who), command_id=str(uuid4()), recorded_at=at)

    def case_step(
        self, case: ReturnCase, order: Order, act: Act, do: Callable[[ReturnCase], None]
    ) -> None:
        holding, refunded = case.holds_lines, case.refunded_amount
        do(case)
        settle_order_lines(case, order, was_holding=holding, refunded_before=refunded, act=act)

    def order(self, n: int, merchant: str, at: datetime, prefix: str = "KS-") -> Order:
        rng = self.rng
        lines = []
        for i in range(rng.choice((1, 1, 1, 2, 3))):
            lines.append(
                OrderLine(
                    sku=f"{merchant}-SKU{rng.randrange(40)}-{i}",
                    quantity=rng.choice((1, 1, 2)),
                    unit_price=Decimal(rng.randrange(990, 29990)) / 100,
                    category=rng.choice(CATEGORIES),
                )
            )
        order = Order.place(
            f"{prefix}{n}",
            merchant_id=merchant,
            buyer_id=f"buyer-{rng.randrange(100000)}",
            lines=lines,
            act=self.act(Role.PLATFORM, "order-system", at),
        )
        order.ship(Shipment(carrier="SF", waybill=f"SF{n}"), self.act(Role.PLATFORM, "os", at))
        order.deliver(self.act(Role.PLATFORM, "order-system", at + timedelta(days=2)))
        return order

    def open_case(self, order: Order, kind: CaseType, reason: str, at: datetime) -> ReturnCase:
        """The buyer opens a case on all of the order's lines, for all they are worth."""
        lines = order.case_lines([])
        buyer = self.act(Role.BUYER, order.buyer_id, at)
        case = ReturnCase.open(
            uuid4(),
            order,
            case_type=kind,
            reason=reason,
            amount=order.refundable(lines),
            lines=lines,
            evidence=[],
            note=None,
            policy=self.policy,
            act=buyer,
        )
        order.link_case(case.id, lines, buyer, holds_shipment=case.holds_shipment)
        return case

    def case(self, order: Order, at: datetime) -> ReturnCase:
        rng = self.rng
        group = rng.choice(("quality", "quality", "logistics", "buyer"))
        path = rng.choice(("return", "return", "refund_only", "silent", "dispute", "exchange"))
        kind = {
            "return": CaseType.RETURN_REFUND,
            "refund_only": CaseType.REFUND_ONLY,
            "silent": CaseType.RETURN_REFUND,
            "dispute": CaseType.REFUND_ONLY,
            "exchange": CaseType.EXCHANGE,
        }[path]
        case = self.open_case(order, kind, rng.choice(REASONS[group]), at)
        t = at
        merchant = order.merchant_id

        def step(role: Role, who: str, hours: float, do: Callable[[ReturnCase, Act], None]) -> None:
            nonlocal t
            t = t + timedelta(hours=hours)
            act = self.act(role, who, t)
            self.case_step(case, order, act, lambda c: do(c, act))

        p = self.policy
        if path in ("return", "exchange"):
            step(Role.MERCHANT, merchant, rng.uniform(1, 30), lambda c, a: c.approve(a, p))
            ship = Shipment(carrier="YTO", waybill=f"YT{rng.randrange(10**9)}")
            step(Role.BUYER, order.buyer_id, 24, lambda c, a: c.ship_back(a, p, ship))
            step(Role.MERCHANT, merchant, 48, lambda c, a: c.receive(a, p))
            if path == "exchange":
                again = Shipment(carrier="SF", waybill=f"SF{rng.randrange(10**9)}")
                step(Role.MERCHANT, merchant, 5, lambda c, a: c.ship_replacement(a, again))
        elif path == "refund_only":
            step(Role.MERCHANT, merchant, rng.uniform(1, 40), lambda c, a: c.approve(a, p))
        elif path == "silent":
            for action in (DueAction.AUTO_APPROVE, DueAction.AUTO_CLOSE):
                assert case.due is not None
                wait = (case.due.due_at - t).total_seconds() / 3600

                def fire(c: ReturnCase, a: Act, x: DueAction = action) -> None:
                    c.fire(a, p, x)

                step(Role.SYSTEM, "system", wait, fire)
        else:
            step(
                Role.MERCHANT,
                merchant,
                rng.uniform(1, 40),
                lambda c, a: c.reject(a, p, reason="used", communication="chat:1"),
            )
            step(
                Role.BUYER,
                order.buyer_id,
                10,
                lambda c, a: c.escalate(
                    a, p, claim=Claim.UNJUSTIFIED_REJECTION, evidence=[], order=order
                ),
            )
            step(
                Role.PLATFORM,
                "agent-1",
                30,
                lambda c, a: c.rule(a, p, in_favour_of=Party.BUYER),
            )
        if case.status.value in ("refunded", "completed", "closed") and rng.random() < 0.5:
            score = rng.randint(1, 5)
            step(Role.BUYER, order.buyer_id, 3, lambda c, a: c.rate(a, score=score))
        return case


def _assigned(
    story: Story, cases: list[Order | ReturnCase | CaseAssignment]
) -> list[CaseAssignment]:
    """Each case in one of its shop's two staff's queues (by its id: the workload's random
    draws, and so its orders and cases, stay as they were; not counted towards ``events``)."""
    return [
        CaseAssignment.start(
            case.id,
            case.merchant_id,
            f"{case.merchant_id}-staff-{case.id.int % 2}",
            How.ROUND_ROBIN,
            story.act(Role.SYSTEM, "assignment", case.opened_at),
        )
        for case in cases
        if isinstance(case, ReturnCase)
    ]


def generate(
    store: AftersalesStore,
    events: int,
    *,
    merchants: int = 50,
    case_share: float = 0.25,
    seed: int = 7,
    chunk: int = 1000,
    prefix: str = "KS-",
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write at least ``events`` events; return how many were written."""
    rng = random.Random(seed)
    story = Story(Policy(), rng)
    writer = Writer(store, chunk)
    total = 0
    for n, (merchant, at) in enumerate(_orders(rng, merchants), 1):
        order = story.order(n, merchant, at, prefix)
        aggregates: list[Order | ReturnCase | CaseAssignment] = [order]
        if rng.random() < case_share:
            aggregates.append(story.case(order, at + timedelta(days=2, hours=rng.uniform(1, 90))))
        total += sum(len(a.pending_events) for a in aggregates)
        writer.add(*aggregates, *_assigned(story, aggregates[1:]))
        if total >= events:
            break
        if progress is not None and n % 10000 == 0:
            progress(writer.events)
    writer.flush()
    return writer.events


def _orders(rng: random.Random, merchants: int) -> Iterator[tuple[str, datetime]]:
    at = START
    while True:
        at += timedelta(seconds=rng.uniform(5, 40))
        yield f"shop-{rng.randrange(merchants):03d}", at


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    store = AftersalesStore(args.store)
    try:
        written = generate(store, args.events, merchants=args.merchants, seed=args.seed)
    finally:
        store.close()
    print(f"wrote {written} events to {store.url.redacted}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def say(message: str) -> None:
    """A benchmark's progress line, on stderr as it happens (its figures go to stdout)."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def scratch_schema(server: str, prefix: str) -> Iterator[str]:
    """The store URL of a new schema ``<prefix>_<8 hex>`` on the PostgreSQL server ``server``
    names (its own ``?schema=`` is dropped), for a benchmark's run; the schema is dropped
    afterwards, however the run ends."""
    import psycopg
    from psycopg.sql import SQL, Identifier

    conninfo = server.split("?", 1)[0]
    schema = f"{prefix}_{uuid4().hex[:8]}"
    try:
        yield f"{conninfo}?schema={schema}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))
