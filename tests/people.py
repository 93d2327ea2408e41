"""Principals, keys and two merchants' orders in a store, for the HTTP tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aftersales.engine.access.principal_store import add_principal, create_key
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import DeliverOrder, OpenCase, PlaceOrder


def days_ago(days: float) -> str:
    """A time this many days before now, as the command line takes it."""
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


# principal id: (role, merchant)
PEOPLE: dict[str, tuple[str, str | None]] = {
    "ops": ("operator", None),
    "staff-1": ("merchant", "shop-1"),
    "staff-2": ("merchant", "shop-2"),
    "buyer-1": ("buyer", None),
    "buyer-2": ("buyer", None),
    "agent": ("agent", None),
    "auditor": ("auditor", None),
    "reporter": ("reporter", None),
}


class People:
    """Every principal with a key; order KS-1 (shop-1, buyer-1) and KS-2 (shop-2, buyer-2),
    delivered, each with a case open on it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        now = datetime.now(UTC)
        self.keys: dict[str, str] = {}
        self.key_ids: dict[str, str] = {}
        for pid, (role, merchant) in PEOPLE.items():
            add_principal(engine.store, pid, role, merchant, now)
            made = create_key(engine.store, pid, now, None)
            self.keys[pid], self.key_ids[pid] = made["key"], made["key_id"]
        self.cases: dict[str, str] = {}
        for n in (1, 2):
            self.place(f"KS-{n}", f"shop-{n}", f"buyer-{n}")
            self.cases[f"shop-{n}"] = self.open(f"KS-{n}")

    def place(self, order_id: str, merchant: str, buyer: str) -> None:
        self.engine.handle(
            PlaceOrder(
                order_id=order_id,
                merchant=merchant,
                buyer=buyer,
                lines=["CASE-RED:1:39.90", "CASE-BLUE:1:39.90"],
                at=days_ago(6),
                by="ops",
            )
        )
        # Delivered days ago: cases opened now are within the after-sales window.
        self.engine.handle(DeliverOrder(order_id=order_id, at=days_ago(5), by="ops"))

    def open(self, order_id: str, **fields: Any) -> str:
        case = self.engine.handle(
            OpenCase(
                order_id=order_id,
                type=fields.pop("type", "refund_only"),
                reason="quality.colour_difference",
                amount="39.90",
                lines=fields.pop("lines", ["CASE-RED"]),
                **fields,
            )
        )
        return str(case["case_id"])

    def auth(self, pid: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[pid]}"}

    def events(self) -> int:
        table = self.engine.store.recorder.events_table_name  # type: ignore[attr-defined]
        rows = self.engine.store.query(f"SELECT count(*) AS n FROM {{t}}{table}")
        return int(rows[0]["n"])
