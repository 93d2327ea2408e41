"""`aftersales webhook ...`: merchants' endpoints, signed deliveries, failures and replays."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from aftersales.commands.cli.options import json_option
from aftersales.commands.cli.output import emit, table
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.limits import MAX_POSITION
from aftersales.projections.webhooks import Settings, Webhooks


@click.group("webhook")
def webhook_group() -> None:
    """Signed webhooks: each merchant's events POSTed to its own systems (docs/events-out.md)."""


@webhook_group.command("add")
@click.option("--merchant", required=True, help="Whose events the endpoint gets.")
@click.option("--url", required=True, help="Where they are POSTed (http:// or https://).")
@click.option(
    "--events",
    default="",
    help="Comma-separated event types (e.g. CaseOpened,CaseRefunded); default: all.",
)
@json_option
@click.pass_context
def add(ctx: click.Context, /, merchant: str, url: str, events: str, as_json: bool) -> None:
    """Register an endpoint. Its signing secret is printed this once and never again."""

    def call(engine: Engine) -> dict[str, Any]:
        endpoint, secret = Webhooks(engine.store).add(merchant, url, events.split(","))
        return {**endpoint.public(), "secret": secret}

    emit(
        ctx,
        as_json,
        call,
        lambda r: (
            table([r], ["endpoint_id", "merchant_id", "url", "events"])
            + f"\nsigning secret (shown once, keep it safe): {r['secret']}"
        ),
    )


@webhook_group.command("list")
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, /, as_json: bool) -> None:
    """The endpoints (without their secrets)."""
    emit(
        ctx,
        as_json,
        lambda e: [x.public() for x in Webhooks(e.store).endpoints()],
        lambda rows: table(rows, ["endpoint_id", "merchant_id", "url", "events"]),
    )


@webhook_group.command("deliveries")
@click.option("--failed", is_flag=True, help="Only the dead ones and those being retried.")
@click.option("--endpoint", default=None, help="Only this endpoint's.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@json_option
@click.pass_context
def deliveries(
    ctx: click.Context, /, failed: bool, endpoint: str | None, limit: int, as_json: bool
) -> None:
    """Deliveries, newest first, with their status, tries and last error."""
    columns = ["endpoint_id", "notification_id", "event_type", "status", "attempts", "last_error"]
    emit(
        ctx,
        as_json,
        lambda e: Webhooks(e.store).deliveries(failed, endpoint, limit),
        lambda rows: table(rows, columns),
    )


@webhook_group.command("replay")
@click.option("--endpoint", default=None, help="Only this endpoint's dead deliveries.")
@click.option(
    "--event",
    "notification_id",
    type=click.IntRange(1, MAX_POSITION),
    default=None,
    help="Only this event's (its position in the log).",
)
@json_option
@click.pass_context
def replay(
    ctx: click.Context, /, endpoint: str | None, notification_id: int | None, as_json: bool
) -> None:
    """Send dead deliveries again (they get another day of tries); `webhook run` sends them."""
    emit(
        ctx,
        as_json,
        lambda e: {"replayed": Webhooks(e.store).replay(endpoint, notification_id)},
        lambda r: f"{r['replayed']} deliveries pending again",
    )


@webhook_group.command("run")
@click.option("--follow", is_flag=True, help="Keep queueing and sending until stopped.")
@click.option("--poll", type=click.FloatRange(0.01, 60), default=0.2, show_default=True)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 120),
    default=10.0,
    show_default=True,
    help="Seconds an endpoint has to answer one delivery.",
)
@json_option
@click.pass_context
def run(ctx: click.Context, /, follow: bool, poll: float, timeout: float, as_json: bool) -> None:
    """Queue new events for the endpoints and send what is due (each endpoint on its own)."""
    logging.basicConfig(level=logging.WARNING, format="webhook: %(message)s")

    def call(engine: Engine) -> dict[str, Any]:
        hooks = Webhooks(engine.store, Settings(timeout=timeout))

        async def go() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await hooks.run(stop, follow=follow, poll=poll)

        asyncio.run(go())
        rows = hooks.deliveries(limit=100_000)
        return {s: sum(r["status"] == s for r in rows) for s in ("pending", "delivered", "dead")}

    emit(ctx, as_json, call, lambda r: table([r], ["pending", "delivered", "dead"]))
