"""`aftersales project ...`: catch the projections up, follow the log, rebuild, show positions."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import click

from aftersales.commands.cli.options import json_option
from aftersales.commands.cli.output import emit, table
from aftersales.engine.application.handler import Engine
from aftersales.projections.base import Progress
from aftersales.projections.registry import VIEWS, select
from aftersales.projections.runner import DEFAULT_BATCH, Projector

_NAMES = click.Choice([v.name for v in VIEWS])


def _progress() -> Any:
    """Progress on stderr, only when a person is watching it."""
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(p: Progress) -> None:
        now = time.monotonic()
        if now - last[0] < 0.5 and p.done < p.head:
            return
        last[0] = now
        rate = p.extra.get("events", 0) / max(now - p.started, 1e-9)
        click.echo(
            f"\r{p.view}: {p.done:,} / {p.head:,} ({rate:,.0f} events/s)   ",
            err=True,
            nl=p.done >= p.head,
        )

    return show


STATUS_LEGEND = (
    "position: the last log position the projection has applied; head: the log's last "
    "position;\nbehind: positions between the two; lag: of those, the events this projection "
    "still has to apply (the others are events it does not read)"
)


def _render_status(rows: list[dict[str, Any]]) -> str:
    lines = [table(rows, ["projection", "position", "head", "behind", "lag"])]
    lines += [f"{r['projection']}: STOPPED: {r['stopped']}" for r in rows if r.get("stopped")]
    return "\n".join([*lines, STATUS_LEGEND])


def _stopped(projector: Projector, rebuilding: bool = False) -> None:
    """A run that left a projection stopped before an event it cannot use ends with exit 3,
    naming the event (the first, when several stopped); the others are caught up by then."""
    if not projector.stopped:
        return
    first = min(projector.stopped.values(), key=lambda p: p.position or 0)
    names = ", ".join(sorted(projector.stopped))
    what = (
        f"the rebuild of {names} stopped before it, and their old tables still serve (the "
        "others were rebuilt)"
        if rebuilding
        else f"{names} stopped before it (the other projections went on)"
    )
    raise first.then(
        f"{what}; once it is decided, `aftersales quarantine add {first.position} --reason "
        "... --by ...` lets them pass over it"
    )


def _render_run(result: dict[str, Any]) -> str:
    head = (
        f"read {result['events_read']:,} events in {result['seconds']:.2f} s"
        if result.get("events_read") is not None
        else ""
    )
    return "\n".join(x for x in (head, _render_status(result["projections"])) if x)


batch_option = click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Events per transaction (one tracking record each).",
)


@click.group("project")
def project_group() -> None:
    """Projections: the tables reports read, kept up to date from the event log."""


@project_group.command("run")
@click.option("--follow", is_flag=True, help="Keep them current until stopped (Ctrl-C, SIGTERM).")
@click.option(
    "--poll",
    type=click.FloatRange(0.01, 60),
    default=0.2,
    show_default=True,
    help="On SQLite with --follow: seconds between looks at the log.",
)
@batch_option
@json_option
@click.pass_context
def run(ctx: click.Context, /, follow: bool, poll: float, batch_size: int, as_json: bool) -> None:
    """Catch every projection up with the log and exit (or, with --follow, keep going)."""

    def call(engine: Engine) -> dict[str, Any]:
        projector = Projector(engine.store)
        started = time.monotonic()
        if not follow:
            read = projector.catch_up(VIEWS, batch_size, _progress())
            _stopped(projector)
            return {
                "events_read": read,
                "seconds": round(time.monotonic() - started, 3),
                "projections": projector.status(VIEWS),
            }
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        projector.follow(
            VIEWS,
            stop,
            batch_size=batch_size,
            poll=poll,
            progress=_progress(),
            on_ready=lambda: click.echo("following the event log (Ctrl-C to stop)", err=True),
            on_stop=lambda poison: click.echo(f"error: {poison.message}", err=True),
        )
        return {"events_read": None, "seconds": None, "projections": projector.status(VIEWS)}

    emit(ctx, as_json, call, _render_run)


@project_group.command("rebuild")
@click.argument("name", required=False, type=_NAMES)
@batch_option
@json_option
@click.pass_context
def rebuild(ctx: click.Context, /, name: str | None, batch_size: int, as_json: bool) -> None:
    """Build a projection (default: all) again from the first event, into new tables swapped
    in for the old ones only once they reach the head (the old ones serve until then)."""

    def call(engine: Engine) -> dict[str, Any]:
        projector = Projector(engine.store)
        views = select(name)
        started = time.monotonic()
        read = projector.rebuild(views, batch_size, _progress())
        _stopped(projector, rebuilding=True)
        return {
            "events_read": read,
            "seconds": round(time.monotonic() - started, 3),
            "projections": projector.status(views),
        }

    emit(ctx, as_json, call, _render_run)


@project_group.command("status")
@json_option
@click.pass_context
def status(ctx: click.Context, /, as_json: bool) -> None:
    """Each projection's position in the log, and how many of its events it has yet to apply.

    \b
    position  the last log position (notification id) the projection has applied
    head      the log's last position
    behind    head - position: positions the projection has not passed yet
    lag       of those, the events this projection reads and still has to apply
    """
    emit(ctx, as_json, lambda e: Projector(e.store).status(VIEWS), _render_status, creates=False)
