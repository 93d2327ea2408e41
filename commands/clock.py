"""`aftersales tick` and `aftersales scheduler`: the clock that acts when people don't."""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any

import click
from eventsourcing.persistence import PersistenceError

from commands.options import json_option
from commands.output import State, emit, fail, table, to_json
from engine.deadlines import BATCH, Tick, tick
from engine.errors import AftersalesError
from engine.service import Engine
from engine.values import parse_time

# The scheduler sleeps in short slices so that a stop signal ends it promptly.
_NAP = 0.1


def _run_tick(engine: Engine, now: str | None, batch: int) -> dict[str, Any]:
    moment = parse_time(now, "--now") if now is not None else engine.clock()
    return tick(engine, moment, batch=batch).to_json()


def render_tick(result: dict[str, Any]) -> str:
    lines = [f"tick at {result['now']}: {len(result['fired'])} deadline(s) fired"]
    if result["fired"]:
        lines.append(table(result["fired"], ["case_id", "action", "due_at"]))
    if result["skipped"]:
        lines.append(f"{result['skipped']} already dealt with by someone else")
    for failed in result["failed"]:
        lines.append(
            f"failed {failed['case_id']} {failed['action']} due {failed['due_at']}: "
            f"{failed['error']['message']}"
        )
    if result["stopped"]:
        lines.append("stopped before the end; the next tick carries on")
    return "\n".join(lines)


def _batch_option(f: Any) -> Any:
    return click.option(
        "--batch",
        type=click.IntRange(min=1, max=10_000),
        default=BATCH,
        show_default=True,
        help="Due deadlines read from the index per query.",
    )(f)


@click.command("tick")
@click.option(
    "--now",
    default=None,
    help="Fire every deadline due at or before this time, ISO-8601 with offset (default: now).",
)
@_batch_option
@json_option
@click.pass_context
def tick_command(ctx: click.Context, /, now: str | None, batch: int, as_json: bool) -> None:
    """Fire every deadline that has fallen due: auto-approve, auto-close, auto-refund,
    reship overdue. Running it again fires nothing twice."""
    emit(ctx, as_json, lambda e: _run_tick(e, now, batch), render_tick)


class _Stop:
    """Set by SIGINT or SIGTERM; a second signal falls back to the default (ends at once)."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.restore()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.requested and (left := end - time.monotonic()) > 0:
            time.sleep(min(_NAP, left))


def _log(message: str) -> None:
    click.echo(f"scheduler: {message}", err=True)


@click.command("scheduler")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=30.0,
    show_default=True,
    help="Seconds from the end of one tick to the start of the next.",
)
@_batch_option
@json_option
@click.pass_context
def scheduler(ctx: click.Context, /, interval: float, batch: int, as_json: bool) -> None:
    """Tick against the wall clock until SIGINT or SIGTERM, which end it between ticks.

    With --json, one JSON object per tick on stdout (as `tick --json` prints); without it, a
    line for each tick that fired something. Several schedulers on one store fire each
    deadline once."""
    state: State = ctx.find_object(State)  # type: ignore[assignment]
    stop = _Stop()
    stop.install()
    try:
        try:
            engine = state.engine()
        except AftersalesError as exc:
            fail(exc.code, exc.message, exc.exit_code, as_json)
        _log(f"started, ticking every {interval:g} s")
        while not stop.requested:
            started = engine.clock()
            try:
                result = tick(engine, started, batch=batch, should_stop=lambda: stop.requested)
            except (AftersalesError, PersistenceError) as exc:
                # The store may come back: report, and try again at the next tick.
                _log(f"tick at {started.isoformat()} failed: {' '.join(str(exc).split())}")
            else:
                _report(result, as_json)
            stop.sleep(interval)
    finally:
        stop.restore()
    _log("stopped")


def _report(result: Tick, as_json: bool) -> None:
    data = result.to_json()
    if as_json:
        click.echo(to_json(data))
    elif result.fired or result.failed:
        click.echo(render_tick(data))
