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
    help="Refused requests a key (or, for requests with no key, an address) may make in a "
    "minute before it gets 429.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    envvar="AFTERSALES_TRUSTED_PROXIES",
    metavar="CIDR",
    help="A proxy whose X-Forwarded-For is believed (repeatable; the environment variable "
    "takes a list separated by spaces or commas). Without one, the client is the peer.",
)
@click.option(
    "--session-idle",
    default="12h",
    show_default=True,
    envvar="AFTERSALES_SESSION_IDLE",
    help="A desk session ends after this long without a request (90s, 30m, 12h, 7d).",
)
@click.option(
    "--session-lifetime",
    default="7d",
    show_default=True,
    envvar="AFTERSALES_SESSION_LIFETIME",
    help="A desk session ends this long after sign-in, however used.",
)
@click.option(
    "--key-cache",
    type=click.FloatRange(0, 3600),
    default=5.0,
    show_default=True,
    envvar="AFTERSALES_KEY_CACHE",
    metavar="SECONDS",
    help="A key or desk session the store granted is used again for up to this long without "
    "reading it, while revocations are heard (PostgreSQL's LISTEN: a revocation counts at once "
    "in every server); 0 reads it for every request.",
)
@click.option(
    "--read-store",
    envvar="AFTERSALES_READ_STORE",
    default=None,
    metavar="URL",
    help="A PostgreSQL standby of --store the reads go to (the API's GETs, the desk's pages), "
    "each answer saying what it reflects (X-Read-* headers); actions still go to --store and "
    "answer with X-Read-After, which a read waits for (docs/http.md).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    /,
    host: str,
    port: int,
    workers: int,
    failure_limit: int,
    trusted_proxies: tuple[str, ...],
    session_idle: str,
    session_lifetime: str,
    key_cache: float,
    read_store: str | None,
) -> None:
    """Serve the HTTP API until SIGINT or SIGTERM, then finish the requests in flight and exit
    0 (see docs/http.md)."""
    import uvicorn

    from aftersales.commands.http.rate_limits import parse_networks
    from aftersales.engine.access.desk_sessions import parse_duration
    from aftersales.engine.domain.errors import BadInput

    try:
        networks = parse_networks(trusted_proxies)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trusted-proxy") from None
    for value, name in ((session_idle, "--session-idle"), (session_lifetime, "--session-lifetime")):
        try:
            parse_duration(value, name)
        except BadInput as exc:
            raise click.BadParameter(exc.message, param_hint=name) from None
    state: State = ctx.find_object(State)  # type: ignore[assignment]
    engine = state.engine()  # a store that cannot be opened is said so now, before listening
    if read_store:
        from aftersales.commands.cli.output import fail_with, keep_secret
        from aftersales.engine.domain.errors import AftersalesError
        from aftersales.engine.storage.replica import ReadStore

        keep_secret(read_store)
        try:  # a read store that cannot be used is said so now too (exit 2, or 1 unreachable)
            ReadStore(read_store, engine.store).close()
        except AftersalesError as exc:
            fail_with(exc, as_json=False)
        os.environ["AFTERSALES_READ_STORE"] = read_store
    state.close()
    # The workers read these (commands.http.app.app_from_env): one engine each.
    if state.store is not None:
        os.environ["AFTERSALES_STORE"] = state.store
    if state.policy_path is not None:
        os.environ["AFTERSALES_POLICY"] = state.policy_path
    os.environ["AFTERSALES_FAILURE_LIMIT"] = str(failure_limit)
    os.environ["AFTERSALES_TRUSTED_PROXIES"] = " ".join(str(n) for n in networks)
    os.environ["AFTERSALES_SESSION_IDLE"] = session_idle
    os.environ["AFTERSALES_SESSION_LIFETIME"] = session_lifetime
    os.environ["AFTERSALES_KEY_CACHE"] = str(key_cache)
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
        # The client's address is ours to decide (rate_limits.client_address): uvicorn's own
        # reading of X-Forwarded-For would believe any local peer.
        proxy_headers=False,
    )
