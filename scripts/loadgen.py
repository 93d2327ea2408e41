"""Generate a realistic after-sales workload as JSON lines for `batch` and `import-history`.

    python scripts/loadgen.py --orders 10000 --seed 7 > workload.jsonl

Deterministic from the seed. Merchants sell orders (placed, shipped, delivered); about a
quarter of the orders get a case, with the article's mix of service types and reasons; people
mostly act in time, but some merchants stay silent, some buyers never ship back, some merchants
never confirm receipt or miss a reship, so deadlines fire (``tick`` lines every few hours of
simulated time do that); some rejections go to the platform, and many buyers rate the end.
Lines come in time order; every action carries ``at`` and a ``command_id``, and cases are named
through their command id, so re-running the file changes nothing.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--merchants", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--tick-hours",
        type=float,
        default=6.0,
        help="simulated hours between tick lines; 0 for none",
    )
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aftersales.engine.application.requests import new_case_id

CST = timezone(timedelta(hours=8))
START = datetime(2026, 10, 1, 9, 0, tzinfo=CST)

CATALOGUE = [
    ("CASE", "phone_accessory", "39.90"),
    ("CHARGER", "electronics", "59.00"),
    ("EARBUDS", "electronics", "199.00"),
    ("SHIRT", "apparel", "129.00"),
    ("SCARF", "apparel", "45.00"),
    ("MUG", "home", "25.50"),
    ("LIPSTICK", "intimate", "89.00"),
    ("NAMEPLATE", "custom_made", "88.00"),
    ("TEA", "perishable", "66.60"),
    ("LAMP", "home", "149.00"),
]
REASONS = {
    "quality": ["colour_difference", "size_mismatch", "broken", "material"],
    "logistics": ["damaged_in_transit", "lost", "delayed"],
    "buyer": ["changed_mind", "no_longer_needed"],
    "missing_items": ["accessory", "gift"],
    "wrong_item": ["other_variant", "other_item"],
}
NO_REASON_EXCLUDED = {"custom_made", "perishable", "intimate", "digital"}


@dataclass(order=True)
class Action:
    at: datetime
    seq: int
    body: dict[str, Any] = field(compare=False)


class Workload:
    def __init__(self, seed: int, orders: int, merchants: int, tick_hours: float) -> None:
        self.rnd = random.Random(seed)
        self.seed = seed
        self.orders = orders
        self.merchants = merchants
        self.tick_hours = tick_hours
        self.seq = 0
        self.heap: list[Action] = []
        self.last = START

    def add(self, at: datetime, action: str, **body: Any) -> str:
        self.seq += 1
        command_id = f"lg{self.seed}-{self.seq}"
        line = {"action": action, **body, "at": at.isoformat(), "command_id": command_id}
        heapq.heappush(self.heap, Action(at, self.seq, line))
        self.last = max(self.last, at)
        return command_id

    def hours(self, low: float, high: float) -> timedelta:
        return timedelta(hours=self.rnd.uniform(low, high))

    def placed(self, n: int) -> datetime:
        """Orders are placed evenly over 30 days."""
        return START + timedelta(minutes=n * 60 * 24 * 30 / max(1, self.orders))

    def order(self, n: int) -> None:
        r = self.rnd
        order_id = f"LG{self.seed}-{n:07d}"
        merchant = f"shop-{r.randrange(self.merchants):04d}"
        buyer = f"buyer-{r.randrange(self.orders * 2):07d}"
        placed = self.placed(n)
        picks = r.sample(CATALOGUE, k=r.choice([1, 1, 1, 2, 3]))
        lines = [
            f"{sku}-{r.randrange(5)}:{r.choice([1, 1, 2])}:{price}:{category}"
            for sku, category, price in picks
        ]
        self.add(
            placed, "order place", order_id=order_id, merchant=merchant, buyer=buyer, line=lines
        )
        shipped = placed + self.hours(4, 48)
        if r.random() < 0.08:  # a refund asked before the order ships
            self.case(order_id, lines, placed + self.hours(1, 3), delivered=None)
            return
        self.add(shipped, "order ship", order_id=order_id, carrier="SF", waybill=f"SF{n:010d}")
        delivered = shipped + self.hours(24, 96)
        self.add(delivered, "order deliver", order_id=order_id)
        if r.random() < 0.25:
            self.case(order_id, lines, delivered + self.hours(2, 24 * 6), delivered)

    def case(
        self, order_id: str, lines: list[str], opened: datetime, delivered: datetime | None
    ) -> None:
        r = self.rnd
        sku, qty, price, category = lines[0].split(":")
        value = f"{float(price) * int(qty):.2f}"
        if delivered is None:
            kind, group = "refund_only", r.choice(["buyer", "quality"])
        else:
            kind = r.choices(
                ["refund_only", "return_refund", "exchange", "reship"], [40, 40, 15, 5]
            )[0]
            group = (
                "missing_items"
                if kind == "reship"
                else r.choices(["quality", "buyer", "logistics", "wrong_item"], [45, 30, 15, 10])[0]
            )
        if group == "buyer" and category in NO_REASON_EXCLUDED:
            group = "quality"
        reason = f"{group}.{r.choice(REASONS[group])}"
        open_id = self.add(
            opened,
            "case open",
            order_id=order_id,
            type=kind,
            reason=reason,
            amount=value,
            line=[sku],
            evidence=[f"photo:{order_id}.jpg"],
        )
        case_id = str(new_case_id(None, open_id))
        t = opened
        choice = r.random()
        if choice < 0.12:  # the merchant rejects after a call
            t += self.hours(1, 40)
            self.add(
                t,
                "case reject",
                case_id=case_id,
                reason="not covered",
                communication=f"call:{order_id}",
            )
            follow = r.random()
            if follow < 0.4:
                t += self.hours(2, 48)
                self.add(
                    t,
                    "case escalate",
                    case_id=case_id,
                    claim="unjustified_rejection",
                    evidence=[f"chat:{order_id}"],
                )
                t += self.hours(12, 72)
                self.add(
                    t,
                    "case rule",
                    case_id=case_id,
                    **{"for": r.choice(["buyer", "merchant"])},
                    by="agent-7",
                )
            elif follow < 0.7:
                t += self.hours(1, 24)
                self.add(t, "case withdraw", case_id=case_id)
            return
        if choice < 0.27:  # silent merchant: the system approves at 48 h
            approved = t + timedelta(hours=48)
            t = self.after_deadline(t, timedelta(hours=48))
        else:
            t += self.hours(0.5, 40)
            approved = t
            self.add(
                t,
                "case approve",
                case_id=case_id,
                return_address="returns dept",
                by=f"staff-{r.randrange(20)}",
            )
        if kind == "refund_only":
            self.rate(case_id, t)
            return
        if kind == "reship":
            # The merchant has 24 hours from the approval (the system's, when it was silent,
            # counts from the deadline, not from the tick that fired it).
            reshipped = max(t + timedelta(minutes=1), approved + self.hours(1, 20))
            if r.random() < 0.85 and reshipped < approved + timedelta(hours=24):
                t = reshipped
                self.add(
                    t,
                    "case reship",
                    case_id=case_id,
                    carrier="YTO",
                    waybill=f"R{r.randrange(10**9)}",
                )
            else:  # overdue: the platform pays first
                t = self.after_deadline(t, timedelta(hours=24))
            self.rate(case_id, t)
            return
        if r.random() < 0.08:  # the buyer never ships back: closed at 10 days
            self.rate(case_id, self.after_deadline(t, timedelta(days=10)))
            return
        t += self.hours(2, 24 * 6)
        self.add(
            t, "case ship-back", case_id=case_id, carrier="ZTO", waybill=f"Z{r.randrange(10**9)}"
        )
        receipt = r.random()
        if receipt < 0.07:  # the merchant never confirms: refunded at 10 days
            self.rate(case_id, self.after_deadline(t, timedelta(days=10)))
            return
        t += self.hours(12, 24 * 5)
        if receipt < 0.10:  # the goods came back damaged: the platform decides
            self.add(t, "case receive", case_id=case_id, condition="damaged")
            t += self.hours(12, 72)
            self.add(
                t,
                "case rule",
                case_id=case_id,
                **{"for": r.choice(["buyer", "merchant"])},
                by="agent-3",
            )
            self.rate(case_id, t)
            return
        self.add(t, "case receive", case_id=case_id, condition="ok")
        if kind == "exchange":
            t += self.hours(2, 30)
            self.add(
                t,
                "case ship-replacement",
                case_id=case_id,
                carrier="SF",
                waybill=f"X{r.randrange(10**9)}",
            )
        self.rate(case_id, t)

    def after_deadline(self, start: datetime, window: timedelta) -> datetime:
        """When a deadline from ``start`` has surely been fired by a tick."""
        return start + window + timedelta(hours=self.tick_hours or 1)

    def rate(self, case_id: str, after: datetime) -> None:
        if self.rnd.random() < 0.5:
            self.add(
                after + self.hours(1, 48),
                "case rate",
                case_id=case_id,
                score=self.rnd.choice([1, 2, 3, 4, 4, 5, 5, 5]),
            )

    def lines(self) -> Iterator[dict[str, Any]]:
        """Streams: an order's actions all come at or after its placing, and orders are
        placed in time order, so whatever is due before the next placing can go out."""
        next_tick = START + timedelta(hours=self.tick_hours)

        def until(limit: datetime | None) -> Iterator[dict[str, Any]]:
            nonlocal next_tick
            while self.heap and (limit is None or self.heap[0].at < limit):
                action = heapq.heappop(self.heap)
                while self.tick_hours and next_tick <= action.at:
                    yield {"action": "tick", "now": next_tick.isoformat()}
                    next_tick += timedelta(hours=self.tick_hours)
                yield action.body

        for n in range(self.orders):
            self.order(n)
            yield from until(self.placed(n + 1))
        yield from until(None)
        end = self.last + timedelta(days=11)
        while self.tick_hours and next_tick <= end:
            yield {"action": "tick", "now": next_tick.isoformat()}
            next_tick += timedelta(hours=self.tick_hours)


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    workload = Workload(args.seed, args.orders, args.merchants, args.tick_hours)
    out = sys.stdout
    try:
        for line in workload.lines():
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
        out.flush()
    except BrokenPipeError:
        # The reader stopped (`loadgen.py | head`): that is its choice, not an error. Point
        # stdout at nothing so the interpreter's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
