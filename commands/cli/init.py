"""`aftersales init`: create the store (its file, or its PostgreSQL schema and tables)."""

from __future__ import annotations

import click

from aftersales.commands.cli.options import json_option
from aftersales.commands.cli.output import emit


@click.command("init")
@json_option
@click.pass_context
def init(ctx: click.Context, /, as_json: bool) -> None:
    """Create the store (and schema) if missing.

    Every write command creates the store too; read commands (show, list, reports, audit,
    status) never do, and say so when the store is missing.
    """
    emit(
        ctx,
        as_json,
        lambda engine: {"store": engine.store.url.redacted, "created": engine.store.created},
        lambda result: f"{'created' if result['created'] else 'ready'}: {result['store']}",
    )
