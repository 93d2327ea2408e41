"""`aftersales order import FILE` and `aftersales import-history FILE`: the bulk paths."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click

from commands.batch import LineError, Runner, parse_line
from commands.options import json_option
from commands.output import State, emit, table
from engine.bulk import Item, Report, run_bulk
from engine.imports import (
    OrderRecord,
    history_ids,
    import_orders_in_parallel,
    read_orders_csv,
    read_orders_jsonl,
)
from engine.service import Engine


def render_report(report: dict[str, Any]) -> str:
    head = (
        f"{report['lines']} lines: {report['ok']} ok, {report['failed']} failed; "
        f"{report['events']} events in {report['seconds']} s"
        + (f" ({report['events_per_second']}/s)" if report["events_per_second"] else "")
    )
    if not report["errors"]:
        return head
    return head + "\n" + table(report["errors"][:20], ["line", "code", "message"])


def _finish(ctx: click.Context, as_json: bool, run: Any) -> None:
    result: dict[str, Any] = {}

    def call(engine: Engine) -> dict[str, Any]:
        report: Report = run(engine)
        result["exit"] = report.first_exit_code
        return report.to_json()

    emit(ctx, as_json, call, render_report)
    if result.get("exit"):
        sys.exit(result["exit"])


@contextmanager
def _readable_path(source: IO[str]) -> Iterator[Path]:
    """A path each worker can open: the file's own, or standard input copied to a
    temporary file first (in pieces, so memory stays flat)."""
    if source.name not in ("<stdin>", "-") and Path(source.name).is_file():
        yield Path(source.name)
        return
    with tempfile.TemporaryDirectory(prefix="aftersales-import-") as folder:
        path = Path(folder) / "orders"
        with path.open("w", encoding="utf-8") as out:
            shutil.copyfileobj(source, out)
        yield path


def _progress(label: str) -> Any:
    return click.progressbar(length=0, label=label, file=sys.stderr, hidden=not sys.stderr.isatty())


@click.command("import")
@click.argument("source", type=click.File("r", encoding="utf-8"))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "csv", "jsonl"]),
    default="auto",
    help="CSV (one row per order line) or JSON Lines (one order per line).",
)
@click.option(
    "--chunk",
    type=click.IntRange(1, 100_000),
    default=2000,
    show_default=True,
    help="Orders per transaction.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes importing at once, each taking the orders whose id hashes to it "
    "(PostgreSQL only).",
)
@json_option
@click.pass_context
def import_orders(
    ctx: click.Context, /, source: IO[str], fmt: str, chunk: int, workers: int, as_json: bool
) -> None:
    """Import many orders at once (placed, and shipped or delivered where the file says)."""
    if fmt == "auto":
        fmt = "csv" if Path(source.name).suffix.lower() == ".csv" else "jsonl"
    state: State = ctx.find_object(State)  # type: ignore[assignment]

    def run(engine: Engine) -> Report:
        if workers > 1:
            with _readable_path(source) as path, _progress("orders") as bar:
                return import_orders_in_parallel(
                    state.store, path, fmt, chunk=chunk, workers=workers, progress=bar.update
                )
        items = read_orders_csv(source) if fmt == "csv" else read_orders_jsonl(source)
        with _progress("orders") as bar:
            return run_bulk(
                engine,
                items,
                lambda e, r: r.apply(e),
                ids=OrderRecord.ids,
                chunk_size=chunk,
                progress=bar.update,
            )

    _finish(ctx, as_json, run)


class HistoryLine:
    """One past action: the same JSON as a `batch` line, run through the same command."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def ids(self) -> list[Any]:
        return history_ids(self.data)

    def command_ids(self) -> list[str]:
        command_id = self.data.get("command_id")
        return [command_id] if isinstance(command_id, str) else []

    def reads_the_store(self) -> bool:
        return str(self.data.get("action", "")).strip() == "tick"


def _history(stream: IO[str]) -> Iterator[Item[HistoryLine]]:
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            yield Item(number, HistoryLine(parse_line(text)))
        except LineError as exc:
            yield Item(number, exc)


@click.command("import-history")
@click.argument("source", type=click.File("r", encoding="utf-8"))
@click.option(
    "--chunk",
    type=click.IntRange(1, 100_000),
    default=2000,
    show_default=True,
    help="Lines per transaction.",
)
@json_option
@click.pass_context
def import_history(ctx: click.Context, /, source: IO[str], chunk: int, as_json: bool) -> None:
    """Import past cases: JSON lines of actions with their times (as `batch` takes them)."""
    runner = Runner(ctx)

    def apply(engine: Engine, line: HistoryLine) -> None:
        runner.run(dict(line.data))  # a refusal raises LineError, which the report keeps

    def run(engine: Engine) -> Report:
        with _progress("actions") as bar:
            return run_bulk(
                engine,
                _history(source),
                apply,
                ids=HistoryLine.ids,
                command_ids=HistoryLine.command_ids,
                barrier=HistoryLine.reads_the_store,
                chunk_size=chunk,
                progress=bar.update,
            )

    _finish(ctx, as_json, run)
