"""Reading bulk inputs: orders from CSV or JSON Lines, and past case actions as JSON Lines."""

from __future__ import annotations

import contextlib
import csv
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from engine.bulk import Item, Report, run_bulk
from engine.errors import BadInput
from engine.order import OrderLine, order_uuid
from engine.service import Engine, new_case_id
from engine.values import parse_money
from engine.workers import Worker

ORDER_FIELDS = (
    "order_id",
    "merchant",
    "buyer",
    "sku",
    "quantity",
    "unit_price",
    "category",
    "placed_at",
    "shipped_at",
    "carrier",
    "waybill",
    "delivered_at",
)


@dataclass
class OrderRecord:
    order_id: str
    merchant: str
    buyer: str
    lines: list[OrderLine | str]
    placed_at: str | None = None
    shipped_at: str | None = None
    carrier: str | None = None
    waybill: str | None = None
    delivered_at: str | None = None

    def apply(self, engine: Engine) -> None:
        engine.import_order(
            self.order_id,
            merchant_id=self.merchant,
            buyer_id=self.buyer,
            lines=self.lines,
            placed_at=self.placed_at,
            shipped_at=self.shipped_at,
            carrier=self.carrier,
            waybill=self.waybill,
            delivered_at=self.delivered_at,
        )

    def ids(self) -> list[UUID]:
        return [order_uuid(self.order_id)]


def _text(value: Any, what: str, line: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"line {line}: {what} is required (a string)")
    return value.strip()


def _optional(value: Any) -> str | None:
    return str(value).strip() if value not in (None, "") else None


def _line_spec(value: Any, line: int) -> OrderLine | str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        try:
            price = value["unit_price"]
            if isinstance(price, float):
                raise BadInput(f"line {line}: unit_price must be a decimal string, not a float")
            return OrderLine(
                sku=str(value["sku"]),
                quantity=int(value["quantity"]),
                unit_price=parse_money(str(price), "unit price"),
                category=_optional(value.get("category")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"line {line}: a line needs sku, quantity, unit_price ({exc})") from None
    raise BadInput(f'line {line}: lines are "SKU:QTY:UNIT_PRICE[:CATEGORY]" or objects')


def read_orders_jsonl(stream: IO[str]) -> Iterator[Item[OrderRecord]]:
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise BadInput(f"line {number}: an order is a JSON object")
            lines = data.get("lines") or data.get("line")
            if not isinstance(lines, list) or not lines:
                raise BadInput(f'line {number}: an order needs "lines"')
            record = OrderRecord(
                order_id=_text(data.get("order_id"), "order_id", number),
                merchant=_text(data.get("merchant") or data.get("merchant_id"), "merchant", number),
                buyer=_text(data.get("buyer") or data.get("buyer_id"), "buyer", number),
                lines=[_line_spec(v, number) for v in lines],
                placed_at=_optional(data.get("placed_at") or data.get("at")),
                shipped_at=_optional(data.get("shipped_at")),
                carrier=_optional(data.get("carrier")),
                waybill=_optional(data.get("waybill")),
                delivered_at=_optional(data.get("delivered_at")),
            )
            yield Item(number, record)
        except json.JSONDecodeError as exc:
            yield Item(number, BadInput(f"line {number}: not JSON: {exc.msg}"))
        except BadInput as exc:
            yield Item(number, exc)


def read_orders_csv(stream: IO[str]) -> Iterator[Item[OrderRecord]]:
    """One row per order line; consecutive rows with the same order_id make one order."""
    reader = csv.DictReader(stream)
    missing = {"order_id", "merchant", "buyer", "sku", "quantity", "unit_price"} - set(
        reader.fieldnames or ()
    )
    if missing:
        raise BadInput(
            f"the CSV header lacks {', '.join(sorted(missing))} "
            f"(columns: {', '.join(ORDER_FIELDS)})"
        )
    current: OrderRecord | None = None
    first_line = 0
    for row in reader:
        number = reader.line_num
        order_id = (row.get("order_id") or "").strip()
        spec = ":".join(
            [row.get("sku") or "", row.get("quantity") or "", row.get("unit_price") or ""]
            + ([row["category"]] if row.get("category") else [])
        )
        if current is not None and order_id == current.order_id:
            current.lines.append(spec)
            continue
        if current is not None:
            yield Item(first_line, current)
        first_line = number
        current = OrderRecord(
            order_id=order_id,
            merchant=(row.get("merchant") or "").strip(),
            buyer=(row.get("buyer") or "").strip(),
            lines=[spec],
            placed_at=_optional(row.get("placed_at")),
            shipped_at=_optional(row.get("shipped_at")),
            carrier=_optional(row.get("carrier")),
            waybill=_optional(row.get("waybill")),
            delivered_at=_optional(row.get("delivered_at")),
        )
    if current is not None:
        yield Item(first_line, current)


def history_ids(data: dict[str, Any]) -> list[UUID]:
    """The aggregates a history line touches, so a chunk can load them with one query.
    Malformed ids are left to the action itself to report."""
    found: list[UUID] = []
    case_id = data.get("case_id")
    command_id = data.get("command_id")
    order_id = data.get("order_id")
    if isinstance(case_id, str):
        with contextlib.suppress(ValueError):
            found.append(UUID(case_id))
    if isinstance(order_id, str):
        with contextlib.suppress(BadInput):
            found.append(order_uuid(order_id))
        opening = str(data.get("action", "")).replace("_", "-").endswith("open")
        if opening and isinstance(command_id, str) and case_id is None:
            found.append(new_case_id(None, command_id))
    return found


# Order import on several processes ------------------------------------------------------------


def order_owner(order_id: str, workers: int) -> int:
    """Which of several workers takes an order: each order is one worker's alone."""
    return zlib.crc32(order_id.encode("utf-8")) % workers


def read_orders(path: Path, fmt: str) -> Iterator[Item[OrderRecord]]:
    with path.open(encoding="utf-8", newline="") as stream:
        yield from read_orders_csv(stream) if fmt == "csv" else read_orders_jsonl(stream)


def order_import_share(
    store: str | None, path: Path, fmt: str, chunk: int, worker: Worker
) -> Report:
    """One worker's share of an order import: the orders whose id hashes to it. Orders
    are independent of each other, so the workers need not wait for each other."""

    def mine(item: Item[OrderRecord]) -> bool:
        payload = item.payload
        key = payload.order_id if isinstance(payload, OrderRecord) else str(item.line)
        return order_owner(key, worker.workers) == worker.index

    with Engine(store) as engine:
        return run_bulk(
            engine,
            (i for i in read_orders(path, fmt) if mine(i)),
            lambda e, r: r.apply(e),
            ids=OrderRecord.ids,
            chunk_size=chunk,
            progress=worker.progress,
        )
