"""`aftersales order import FILE` and `aftersales import-history FILE`: the bulk paths."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import click

from aftersales.commands.cli.options import bulk_options, json_option, source_argument, source_path
from aftersales.commands.cli.output import State, emit, exit_code, table
from aftersales.engine.application.bulk import Item, Report, Share, run_bulk
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.inputs import (
    apply_order,
    order_ids,
    order_import_share,
    order_owner,
    read_orders_csv,
    read_orders_jsonl,
)
from aftersales.engine.application.lines import json_lines, parse_line
from aftersales.engine.application.requests import Command, OpenCase, Tick
from aftersales.engine.application.workers import Worker, in_processes
from aftersales.engine.domain.errors import AftersalesError
from aftersales.engine.domain.limits import UNREADABLE
from aftersales.engine.domain.order import order_uuid
from aftersales.engine.storage.sql import Dialect


def render_report(report: dict[str, Any], noun: str = "lines") -> str:
    """An import's summary; ``noun`` names what was counted (orders, or history lines)."""
    head = (
        f"{report['lines']} {noun}: {report['ok']} ok, {report['failed']} failed; "
        f"{report['events']} events in {report['seconds']} s"
        + (f" ({report['events_per_second']}/s)" if report["events_per_second"] else "")
    )
    if not report["errors"]:
        return head
    return head + "\n" + table(report["errors"][:20], ["line", "code", "message"])


def _finish(ctx: click.Context, as_json: bool, run: Any, noun: str) -> None:
    result: dict[str, Any] = {}

    def call(engine: Engine) -> dict[str, Any]:
        report: Report = run(engine)
        code = report.first_code
        result["exit"] = exit_code(code) if code else 0
        return report.to_json()

    emit(ctx, as_json, call, lambda report: render_report(report, noun))
    if result.get("exit"):
        sys.exit(result["exit"])


@contextmanager
def _readable_path(source: IO[str]) -> Iterator[Path]:
    """A path each worker can open: the file's own, or standard input copied to a
    temporary file first (in pieces, so memory stays flat)."""
    given = source_path(source)
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="aftersales-import-") as folder:
        path = Path(folder) / "orders"
        with path.open("w", encoding="utf-8", errors=UNREADABLE) as out:
            shutil.copyfileobj(source, out)
        yield path


def _progress(label: str, source: IO[str] | None) -> Any:
    """A progress bar on a terminal's stderr that moves as the work is saved. Its length is
    the file's line count when each line is one item and the source is a file (a quick count of
    newlines first); otherwise it counts, without a percentage."""
    hidden = not sys.stderr.isatty()
    total = None if hidden or source is None else _count_lines(source)
    if total is None:
        return click.progressbar(
            length=sys.maxsize,
            label=label,
            file=sys.stderr,
            hidden=hidden,
            show_percent=False,
            show_eta=False,
            show_pos=True,
            width=0,
        )
    return click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)


def _count_lines(source: IO[str]) -> int | None:
    if source.name in ("<stdin>", "-") or not Path(source.name).is_file():
        return None
    count = 0
    with Path(source.name).open("rb") as raw:
        while block := raw.read(1 << 20):
            count += block.count(b"\n")
    return count


@click.command("import")
@source_argument
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "csv", "jsonl"]),
    default="auto",
    help="CSV (one row per order line) or JSON Lines (one order per line).",
)
@bulk_options("Orders", "the orders whose id hashes to it")
@json_option
@click.pass_context
def import_orders(
    ctx: click.Context, /, source: IO[str], fmt: str, chunk: int, workers: int, as_json: bool
) -> None:
    """Import many orders at once (placed, and shipped or delivered where the file says)."""
    if fmt == "auto":
        name = str(getattr(source, "name", ""))
        fmt = "csv" if Path(name).suffix.lower() == ".csv" else "jsonl"
    state: State = ctx.find_object(State)  # type: ignore[assignment]
    # A JSON Lines file holds an order a line; a CSV file an order line a row.
    per_line = source if fmt == "jsonl" else None

    def run(engine: Engine) -> Report:
        if workers > 1:
            with _readable_path(source) as path, _progress("orders", per_line) as bar:
                return in_processes(
                    state.store,
                    order_import_share,
                    (state.store, path, fmt, chunk),
                    workers=workers,
                    progress=bar.update,
                )
        items = read_orders_csv(source) if fmt == "csv" else read_orders_jsonl(source)
        with _progress("orders", per_line) as bar:
            return run_bulk(
                engine,
                items,
                apply_order,
                ids=order_ids,
                chunk_size=chunk,
                progress=bar.update,
            )

    _finish(ctx, as_json, run, "orders")


class HistoryLine:
    """One past action: the same JSON as a `batch` line, as its typed command."""

    def __init__(self, command: Command) -> None:
        self.command = command

    def ids(self) -> list[UUID]:
        """The aggregates the line touches, so a chunk can load them with one query."""
        found: list[UUID] = []
        case = self.case
        if case is not None:
            found.append(case)
        if self.order_id is not None:
            found.append(order_uuid(self.order_id))
        opened = self.opens()
        if opened is not None:
            found.append(opened)
        return found

    def command_ids(self) -> list[str]:
        command_id = getattr(self.command, "command_id", None)
        return [command_id] if isinstance(command_id, str) else []

    def reads_the_store(self) -> bool:
        return isinstance(self.command, Tick)

    @property
    def order_id(self) -> str | None:
        order_id = getattr(self.command, "order_id", None)
        return order_id if isinstance(order_id, str) else None

    @property
    def case(self) -> UUID | None:
        if isinstance(self.command, OpenCase):
            return None
        case_id = getattr(self.command, "case_id", None)
        return case_id if isinstance(case_id, UUID) else None

    def opens(self) -> UUID | None:
        """The id of the case this line opens, if it opens one with an id known beforehand."""
        command = self.command
        if isinstance(command, OpenCase) and (command.case_id or command.command_id):
            return command.new_case_id()
        return None


def _run_history(
    engine: Engine,
    stream: IO[str],
    chunk: int,
    progress: Callable[[int], None],
    share: Share[HistoryLine] | None = None,
) -> Report:
    """Run history lines through ``Engine.handle`` as `batch` does, in chunks (``share``: as
    one of several workers); a refusal is kept in the report."""
    return run_bulk(
        engine,
        _history(stream),
        lambda e, line: e.handle(line.command),
        ids=HistoryLine.ids,
        command_ids=HistoryLine.command_ids,
        barrier=HistoryLine.reads_the_store,
        chunk_size=chunk,
        progress=progress,
        share=share,
    )


def history_owners(engine: Engine, workers: int) -> Callable[[list[Item[HistoryLine]]], list[int]]:
    """Which worker takes each line of a chunk: the worker of the order the line concerns,
    named on the line, or the order of the case it names (opened in this chunk or the one
    before, or else in the store, where every worker has saved the chunks before those).
    Every worker works out the same answer, and all of an order's lines go to one worker,
    in file order."""

    # Cases the last chunk opened: its saves may not be in the store yet.
    before: dict[UUID, str] = {}

    def owners(chunk: list[Item[HistoryLine]]) -> list[int]:
        nonlocal before
        lines = [i.payload if isinstance(i.payload, HistoryLine) else None for i in chunk]
        mine: dict[UUID, str] = {}
        for line in lines:
            if line is not None and line.order_id is not None and (case := line.opens()):
                mine[case] = line.order_id
        opened, before = {**before, **mine}, mine
        asked = {
            line.case
            for line in lines
            if line is not None and line.order_id is None and line.case is not None
        } - opened.keys()
        found: dict[UUID, str] = {}
        if asked:
            marks = Dialect.marks(len(asked))
            rows = engine.store.query(
                f"SELECT case_id, order_id FROM {{t}}aftersales_cases WHERE case_id IN ({marks})",
                [str(c) for c in asked],
            )
            found = {UUID(str(r["case_id"])): r["order_id"] for r in rows}
        result: list[int] = []
        for line in lines:
            key: str | None = None
            if line is not None:
                case = line.case
                key = line.order_id
                if key is None and case is not None:
                    key = opened.get(case) or found.get(case) or str(case)
            result.append(order_owner(key, workers) if key else 0)
        return result

    return owners


def history_share(
    store: str | None, policy_path: str | None, path: Path, chunk: int, worker: Worker
) -> Report:
    """One worker's share of an import-history run (see ``history_owners``)."""
    state = State(store, policy_path)
    try:
        engine = state.engine()
        share = Share(worker.index, history_owners(engine, worker.workers), worker.sync)
        with path.open(encoding="utf-8", errors=UNREADABLE) as stream:
            return _run_history(engine, stream, chunk, worker.progress, share)
    finally:
        state.close()


def _history(stream: IO[str]) -> Iterator[Item[HistoryLine]]:
    for number, text in json_lines(stream):
        try:
            yield Item(number, HistoryLine(parse_line(text)))
        except AftersalesError as exc:
            yield Item(number, exc)


@click.command("import-history")
@source_argument
@bulk_options("Lines", "the lines of the orders whose id hashes to it")
@json_option
@click.pass_context
def import_history(
    ctx: click.Context, /, source: IO[str], chunk: int, workers: int, as_json: bool
) -> None:
    """Import past cases: JSON lines of actions with their times (as `batch` takes them)."""
    state: State = ctx.find_object(State)  # type: ignore[assignment]

    def run(engine: Engine) -> Report:
        if workers > 1:
            with _readable_path(source) as path, _progress("actions", source) as bar:
                return in_processes(
                    state.store,
                    history_share,
                    (state.store, state.policy_path, path, chunk),
                    workers=workers,
                    progress=bar.update,
                )
        with _progress("actions", source) as bar:
            return _run_history(engine, source, chunk, bar.update)

    _finish(ctx, as_json, run, "lines")
