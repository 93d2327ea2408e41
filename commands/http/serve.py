"""`aftersales serve`: the HTTP API (``commands/http/app.py``) on uvicorn."""

from __future__ import annotations

import os
import signal

import click

from aftersales.commands.cli.output import State


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 32),
    default=1,
    show_default=True,
    help="Worker processes, each with its own engine and store connections.",
)
@click.option(
    "--failure-limit",
    type=click.IntRange(1, 100_000),
    default=20,
    show_default=True,
    help="Refused requests a key or a client may make in a minute before it gets 429.",
)
@click.pass_context
def serve(ctx: click.Context, /, host: str, port: int, workers: int, failure_limit: int) -> None:
    """Serve the HTTP API until SIGINT or SIGTERM, then finish the requests in flight and exit
    0 (see docs/http.md)."""
    import uvicorn

    state: State = ctx.find_object(State)  # type: ignore[assignment]
    state.engine()  # a store that cannot be opened is said so now, before listening
    state.close()
    # The workers read these (commands.http.app.app_from_env): one engine each.
    if state.store is not None:
        os.environ["AFTERSALES_STORE"] = state.store
    if state.policy_path is not None:
        os.environ["AFTERSALES_POLICY"] = state.policy_path
    os.environ["AFTERSALES_FAILURE_LIMIT"] = str(failure_limit)
    # uvicorn stops gracefully on SIGINT/SIGTERM and then raises the signal again under the
    # handlers it found: these make that a clean exit 0, as the contract says.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: None)
    uvicorn.run(
        "aftersales.commands.http.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        timeout_graceful_shutdown=30,
    )
