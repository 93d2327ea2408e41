"""Reading bulk inputs: orders from CSV or JSON Lines, and past case actions as JSON Lines."""

from __future__ import annotations

import csv
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from aftersales.engine.bulk import Item, Report, run_bulk
from aftersales.engine.commands import ImportOrder
from aftersales.engine.errors import BadInput
from aftersales.engine.order import order_uuid
from aftersales.engine.service import Engine
from aftersales.engine.workers import Worker

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
# An order's facts beyond its lines, each optional.
ORDER_FACTS = ("placed_at", "shipped_at", "carrier", "waybill", "delivered_at")


def order_ids(command: ImportOrder) -> list[UUID]:
    """The aggregate an imported order touches, so a chunk can load it with the others."""
    return [order_uuid(command.order_id)]


def apply_order(engine: Engine, command: ImportOrder) -> None:
    engine.handle(command)


def _optional(value: Any) -> str | None:
    return str(value).strip() if value not in (None, "") else None


def _order(number: int, data: dict[str, Any]) -> Item[ImportOrder]:
    """One order as a command, or the error that says why the line is not one."""
    try:
        return Item(number, ImportOrder.parse(data))
    except BadInput as exc:
        return Item(number, BadInput(f"line {number}: {exc.message}"))


def read_orders_jsonl(stream: IO[str]) -> Iterator[Item[ImportOrder]]:
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Item(number, BadInput(f"line {number}: not JSON: {exc.msg}"))
            continue
        if not isinstance(data, dict):
            yield Item(number, BadInput(f"line {number}: an order is a JSON object"))
            continue
        lines = data.get("lines") or data.get("line")
        if not isinstance(lines, list) or not lines:
            yield Item(number, BadInput(f'line {number}: an order needs "lines"'))
            continue
        yield _order(
            number,
            {
                "order_id": data.get("order_id"),
                "merchant": data.get("merchant") or data.get("merchant_id"),
                "buyer": data.get("buyer") or data.get("buyer_id"),
                "lines": lines,
                "placed_at": data.get("placed_at") or data.get("at") or None,
                **{k: data.get(k) or None for k in ORDER_FACTS if k != "placed_at"},
            },
        )


def read_orders_csv(stream: IO[str]) -> Iterator[Item[ImportOrder]]:
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
    current: dict[str, Any] | None = None
    first_line = 0
    for row in reader:
        number = reader.line_num
        order_id = (row.get("order_id") or "").strip()
        spec = ":".join(
            [row.get("sku") or "", row.get("quantity") or "", row.get("unit_price") or ""]
            + ([row["category"]] if row.get("category") else [])
        )
        if current is not None and order_id == current["order_id"]:
            current["lines"].append(spec)
            continue
        if current is not None:
            yield _order(first_line, current)
        first_line = number
        current = {
            "order_id": order_id,
            "merchant": (row.get("merchant") or "").strip(),
            "buyer": (row.get("buyer") or "").strip(),
            "lines": [spec],
            **{k: _optional(row.get(k)) for k in ORDER_FACTS},
        }
    if current is not None:
        yield _order(first_line, current)


# Order import on several processes ------------------------------------------------------------


def order_owner(order_id: str, workers: int) -> int:
    """Which of several workers takes an order: each order is one worker's alone."""
    return zlib.crc32(order_id.encode("utf-8")) % workers


def read_orders(path: Path, fmt: str) -> Iterator[Item[ImportOrder]]:
    with path.open(encoding="utf-8", newline="") as stream:
        yield from read_orders_csv(stream) if fmt == "csv" else read_orders_jsonl(stream)


def order_import_share(
    store: str | None, path: Path, fmt: str, chunk: int, worker: Worker
) -> Report:
    """One worker's share of an order import: the orders whose id hashes to it. Orders
    are independent of each other, so the workers need not wait for each other."""

    def mine(item: Item[ImportOrder]) -> bool:
        payload = item.payload
        key = payload.order_id if isinstance(payload, ImportOrder) else str(item.line)
        return order_owner(key, worker.workers) == worker.index

    with Engine(store) as engine:
        return run_bulk(
            engine,
            (i for i in read_orders(path, fmt) if mine(i)),
            apply_order,
            ids=order_ids,
            chunk_size=chunk,
            progress=worker.progress,
        )
