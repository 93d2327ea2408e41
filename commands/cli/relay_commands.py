"""`aftersales relay ...`: publish the event log to NATS JetStream, show the relay's position."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from aftersales.commands.cli.options import json_option
from aftersales.commands.cli.output import emit, table
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.errors import BadInput
from aftersales.projections.notify import NotifyRelay, default_language
from aftersales.projections.relay import (
    DEFAULT_BATCH,
    DEFAULT_NATS,
    DEFAULT_PREFIX,
    DEFAULT_STREAM,
    Relay,
    RelayConfig,
)

F = TypeVar("F", bound=Callable[..., Any])


def _checked(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A relay setting checked as it is parsed (exit 2, before the store is opened)."""
    try:
        settings: dict[str, Any] = {str(param.name): value}
        RelayConfig(**settings)
    except BadInput as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def relay_options(f: F) -> F:
    """Which broker, stream and subjects: the same for `run` and `status`."""
    f = click.option(
        "--name",
        default="nats",
        show_default=True,
        callback=_checked,
        help="The relay's name: its own position in the log (one per broker fed); lower-case "
        "letters, digits and '_'.",
    )(f)
    f = click.option(
        "--prefix",
        default=DEFAULT_PREFIX,
        show_default=True,
        callback=_checked,
        help="The subjects' first token(s): PREFIX.<merchant>.<case|order>.<EventType>.",
    )(f)
    f = click.option(
        "--stream",
        default=DEFAULT_STREAM,
        show_default=True,
        callback=_checked,
        help="The JetStream stream.",
    )(f)
    return click.option(
        "--nats",
        "servers",
        envvar="AFTERSALES_NATS",
        default=DEFAULT_NATS,
        show_default=True,
        help="The NATS server (default: $AFTERSALES_NATS, else the local one).",
    )(f)


def _render_status(rows: list[dict[str, Any]]) -> str:
    return table(rows, ["relay", "stream", "position", "head", "behind", "lag"])


def _render_run(result: dict[str, Any]) -> str:
    head = (
        f"published {result['published']:,} events and {result['messages']:,} buyer messages "
        f"in {result['seconds']:.2f} s"
    )
    return "\n".join((head, _render_status(result["relays"])))


def _relays(engine: Engine, config: RelayConfig, notify: bool) -> list[Relay]:
    """The relay of the log, and (unless left out) the one of the buyer messages."""
    relays = [Relay(engine.store, config)]
    if notify:
        relays.append(NotifyRelay(engine.store, config, language=default_language()))
    return relays


@click.group("relay")
def relay_group() -> None:
    """The relay: every event, in log order, to a NATS JetStream stream (docs/events-out.md)."""


@relay_group.command("run")
@click.option("--follow", is_flag=True, help="Keep publishing new events until stopped.")
@click.option(
    "--poll",
    type=click.FloatRange(0.005, 60),
    default=0.05,
    show_default=True,
    help="With --follow: seconds between looks at the log when it is at the head.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=DEFAULT_BATCH,
    show_default=True,
    help="Events per round (acknowledged together, one tracking record).",
)
@click.option(
    "--max-backoff",
    type=click.FloatRange(0.1, 3600),
    default=10.0,
    show_default=True,
    help="The longest wait, in seconds, between tries while the broker is down.",
)
@click.option(
    "--no-notify", is_flag=True, help="Leave out the buyer messages (aftersales.notify.*)."
)
@relay_options
@json_option
@click.pass_context
def run(
    ctx: click.Context,
    /,
    follow: bool,
    poll: float,
    batch_size: int,
    max_backoff: float,
    no_notify: bool,
    servers: str,
    stream: str,
    prefix: str,
    name: str,
    as_json: bool,
) -> None:
    """Publish every event after the relay's position and exit (with --follow, keep going).
    While the broker is down it waits and tries again; it never skips an event."""
    logging.basicConfig(level=logging.WARNING, format="relay: %(message)s")

    def call(engine: Engine) -> dict[str, Any]:
        config = RelayConfig(
            servers=servers,
            stream=stream,
            prefix=prefix,
            name=name,
            batch_size=batch_size,
            max_backoff=max_backoff,
        )
        relays = _relays(engine, config, not no_notify)
        started = time.monotonic()

        async def go() -> list[int]:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            if follow:
                click.echo("relaying the event log (Ctrl-C to stop)", err=True)
            return list(
                await asyncio.gather(*(r.run(stop, follow=follow, poll=poll) for r in relays))
            )

        published = asyncio.run(go())
        return {
            "published": published[0],
            "messages": sum(published[1:]),
            "seconds": round(time.monotonic() - started, 3),
            "relays": [r.status() for r in relays],
        }

    emit(ctx, as_json, call, _render_run)


@relay_group.command("status")
@relay_options
@json_option
@click.pass_context
def status(
    ctx: click.Context, /, servers: str, stream: str, prefix: str, name: str, as_json: bool
) -> None:
    """The relay's position in the log, and how many events it has yet to publish."""
    config = RelayConfig(servers=servers, stream=stream, prefix=prefix, name=name)
    emit(ctx, as_json, lambda e: [r.status() for r in _relays(e, config, True)], _render_status)
