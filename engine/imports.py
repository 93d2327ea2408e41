"""Reading bulk inputs: orders from CSV or JSON Lines, and past case actions as JSON Lines."""

from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from eventsourcing.persistence import PersistenceError

from engine.bulk import MAX_ERRORS_KEPT, Failure, Item, Report, run_bulk
from engine.errors import (
    AftersalesError,
    BadInput,
    Conflict,
    NotAllowed,
    NotFound,
    StoreUnavailable,
)
from engine.order import OrderLine, order_uuid
from engine.service import Engine, new_case_id
from engine.store import parse_store_url
from engine.values import parse_money

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


def _owner(item: Item[OrderRecord], workers: int) -> int:
    """Which worker takes an item: by order id, so each order is one worker's alone."""
    payload = item.payload
    key = payload.order_id if isinstance(payload, OrderRecord) else str(item.line)
    return zlib.crc32(key.encode("utf-8")) % workers


def read_orders(path: Path, fmt: str) -> Iterator[Item[OrderRecord]]:
    with path.open(encoding="utf-8", newline="") as stream:
        yield from read_orders_csv(stream) if fmt == "csv" else read_orders_jsonl(stream)


# The count of orders done, shared by the workers of one import (set in each worker process).
_done: Synchronized[int] | None = None


def _start_worker(done: Synchronized[int]) -> None:
    global _done
    _done = done


def _order_worker(
    store: str | None, path: Path, fmt: str, chunk: int, worker: int, workers: int
) -> dict[str, Any]:
    """One worker's share of an order import, in its own process, with its own engine."""

    def progress(count: int) -> None:
        if _done is not None:
            with _done.get_lock():
                _done.value += count

    try:
        with Engine(store) as engine:
            report = run_bulk(
                engine,
                (i for i in read_orders(path, fmt) if _owner(i, workers) == worker),
                lambda e, r: r.apply(e),
                ids=OrderRecord.ids,
                chunk_size=chunk,
                progress=progress,
            )
    except AftersalesError as exc:
        return {"error": [type(exc).__name__, exc.message]}
    except PersistenceError as exc:
        return {"error": ["StoreUnavailable", " ".join(str(exc).split()) or type(exc).__name__]}
    return {"report": asdict(report)}


def import_orders_in_parallel(
    store: str | None,
    path: Path,
    fmt: str,
    *,
    chunk: int,
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Import orders on ``workers`` processes, each taking the orders whose id hashes to it
    (so an order is only ever one worker's, and its lines stay in file order), each streaming
    the file with its own engine and connections. The reports are added up; the time is the
    whole run's, process start included. PostgreSQL only: SQLite has one writer at a time."""
    if not parse_store_url(store).kind == "postgresql":
        raise BadInput("more than one worker needs a PostgreSQL store (SQLite has one writer)")
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    done = context.Value("q", 0)
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(done,)
    ) as pool:
        futures = [
            pool.submit(_order_worker, store, path, fmt, chunk, k, workers) for k in range(workers)
        ]
        reported = 0
        while not all(f.done() for f in futures):
            wait(futures, timeout=0.25)
            if progress is not None and done.value > reported:
                progress(done.value - reported)
                reported = done.value
        results = [f.result() for f in futures]
    report = Report()
    for result in results:
        if "error" in result:
            kind, message = result["error"]
            raise _ERRORS.get(kind, AftersalesError)(message)
        part = result["report"]
        report.lines += part["lines"]
        report.ok += part["ok"]
        report.failed += part["failed"]
        report.events += part["events"]
        report.failures += [Failure(**f) for f in part["failures"]]
    report.failures = sorted(report.failures, key=lambda f: f.line)[:MAX_ERRORS_KEPT]
    report.seconds = time.perf_counter() - started
    return report


_ERRORS: dict[str, type[AftersalesError]] = {
    cls.__name__: cls for cls in (BadInput, NotAllowed, NotFound, Conflict, StoreUnavailable)
}
