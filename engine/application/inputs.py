"""Reading bulk inputs: orders from CSV or JSON Lines, and past case actions as JSON Lines."""

from __future__ import annotations

import csv
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from aftersales.engine.application.bulk import Item, Report, run_bulk
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.lines import bounded_lines, json_lines, load_json_line, too_long
from aftersales.engine.application.requests import ImportOrder
from aftersales.engine.application.workers import Worker
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.limits import MAX_ORDER_LINES, UNREADABLE
from aftersales.engine.domain.order import order_uuid

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
    for number, text in json_lines(stream):
        try:
            data = load_json_line(text)
        except BadInput as exc:
            yield Item(number, BadInput(f"line {number}: {exc.message}"))
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


def _csv_rows(stream: IO[str]) -> Iterator[tuple[int, dict[str, Any] | BadInput]]:
    """The rows of a CSV file with their line numbers, or why a row cannot be read: a line
    longer than ``limits.MAX_LINE_CHARS`` (never held in memory whole), or bad CSV."""
    overlong: list[int] = []

    def lines() -> Iterator[str]:
        for number, text in bounded_lines(stream):
            if text is None:
                overlong.append(number)
            yield "\n" if text is None else text  # a blank line keeps the numbering

    reader = csv.DictReader(lines())
    try:
        fields = reader.fieldnames or ()
    except csv.Error as exc:
        raise BadInput(f"the CSV header cannot be read: {exc}") from None
    missing = {"order_id", "merchant", "buyer", "sku", "quantity", "unit_price"} - set(fields)
    if missing:
        raise BadInput(
            f"the CSV header lacks {', '.join(sorted(missing))} "
            f"(columns: {', '.join(ORDER_FIELDS)})"
        )
    done = False
    while not done:
        row: dict[str, Any] | BadInput | None = None
        try:
            row = next(reader)
        except StopIteration:
            done = True
        except csv.Error as exc:
            row = BadInput(f"line {reader.line_num}: not CSV: {exc}")
        while overlong:
            number = overlong.pop(0)
            yield number, BadInput(f"line {number}: {too_long().message}")
        if row is not None:
            yield reader.line_num, row


def read_orders_csv(stream: IO[str]) -> Iterator[Item[ImportOrder]]:
    """One row per order line; consecutive rows with the same order_id make one order."""
    current: dict[str, Any] | None = None
    first_line = 0
    for number, row in _csv_rows(stream):
        if isinstance(row, BadInput):
            yield Item(number, row)
            continue
        order_id = (row.get("order_id") or "").strip()
        spec = ":".join(
            [row.get("sku") or "", row.get("quantity") or "", row.get("unit_price") or ""]
            + ([row["category"]] if row.get("category") else [])
        )
        if current is not None and order_id == current["order_id"]:
            # Beyond the most lines an order may have, the order is refused: no need to
            # hold more of them.
            if len(current["lines"]) <= MAX_ORDER_LINES:
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
    with path.open(encoding="utf-8", errors=UNREADABLE, newline="") as stream:
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
