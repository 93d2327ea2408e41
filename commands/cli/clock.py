"""`aftersales tick` and `aftersales scheduler`: the clock that acts when people don't."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click
from eventsourcing.persistence import PersistenceError

from aftersales.commands.cli.actions import click_command
from aftersales.commands.cli.checkpoint import (
    checkpoint_once,
    read_signing_key,
    render_taken,
    signing_key_option,
)
from aftersales.commands.cli.options import json_option
from aftersales.commands.cli.output import State, fail_with, render_tick, to_json
from aftersales.engine.application.requests import Tick as TickCommand
from aftersales.engine.application.tick import BATCH, TickReport, tick
from aftersales.engine.domain.errors import AftersalesError

# The scheduler sleeps in short slices so that a stop signal ends it promptly.
_NAP = 0.1


def _batch_option(f: Any) -> Any:
    return click.option(
        "--batch",
        type=click.IntRange(min=1, max=10_000),
        default=BATCH,
        show_default=True,
        help="Due deadlines read from the index per query.",
    )(f)


tick_command = click_command(TickCommand)


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


def _seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A number of seconds (FloatRange lets "nan" through: it compares false with both ends)."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds from 0.05 to 86400")
    return value


@click.command("scheduler")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05, max=86_400),
    callback=_seconds,
    default=30.0,
    show_default=True,
    help="Seconds from the end of one tick to the start of the next.",
)
@_batch_option
@signing_key_option
@click.option(
    "--checkpoint-every",
    "checkpoint_every",
    type=click.FloatRange(min=0.05),
    default=300.0,
    show_default=True,
    help="With a signing key: seconds between checkpoints (taken after a tick, when the log "
    "has grown).",
)
@json_option
@click.pass_context
def scheduler(
    ctx: click.Context,
    /,
    interval: float,
    batch: int,
    signing_key: Path | None,
    checkpoint_every: float,
    as_json: bool,
) -> None:
    """Tick against the wall clock until SIGINT or SIGTERM, which end it between ticks; with a
    signing key, also sign a checkpoint of the log every --checkpoint-every seconds.

    With --json, one JSON object per tick on stdout (as `tick --json` prints); without it, a
    line for each tick that fired something. Several schedulers on one store fire each
    deadline once."""
    state: State = ctx.find_object(State)  # type: ignore[assignment]
    stop = _Stop()
    stop.install()
    try:
        try:
            engine = state.engine()
            key = read_signing_key(signing_key) if signing_key is not None else None
        except AftersalesError as exc:
            fail_with(exc, as_json)
        _log(f"started, ticking every {interval:g} s")
        if key is not None:
            _log(f"signing a checkpoint every {checkpoint_every:g} s")
        signed: float | None = None
        while not stop.requested:
            started = engine.clock()
            try:
                result = tick(engine, started, batch=batch, should_stop=lambda: stop.requested)
            except (AftersalesError, PersistenceError) as exc:
                # The store may come back: report, and try again at the next tick.
                _log(f"tick at {started.isoformat()} failed: {' '.join(str(exc).split())}")
            else:
                _report(result, as_json)
            if key is not None and (
                signed is None or time.monotonic() - signed >= checkpoint_every
            ):
                signed = time.monotonic()
                try:
                    taken = checkpoint_once(engine, key)
                except (AftersalesError, PersistenceError) as exc:
                    _log(f"checkpoint failed: {' '.join(str(exc).split())}")
                else:
                    if taken.new:
                        _log(render_taken(taken))
            stop.sleep(interval)
    finally:
        stop.restore()
    _log("stopped")


def _report(result: TickReport, as_json: bool) -> None:
    data = result.to_json()
    if as_json:
        click.echo(to_json(data))
    elif result.fired or result.failed:
        click.echo(render_tick(data))
