"""`aftersales quarantine ...`: the operator's recorded decision to leave a known-bad stored
event out of the projections (engine/integrity/reading.py)."""

from __future__ import annotations

from typing import Any

import click

from aftersales.commands.cli.options import json_option
from aftersales.commands.cli.output import emit, table
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.values import parse_time
from aftersales.engine.integrity.quarantine_records import list_quarantine, quarantine

COLUMNS = ["position", "event", "version", "originator_id", "decided_by", "decided_at", "reason"]


def _render(rows: list[dict[str, Any]]) -> str:
    lines = [table(rows, COLUMNS)]
    lines += [f"{r['position']}: could not be used: {r['why']}" for r in rows]
    return "\n".join(lines)


@click.group("quarantine")
def quarantine_group() -> None:
    """Stored events an operator decided the projections pass over."""


@quarantine_group.command("add")
@click.argument("position", type=click.IntRange(1, 2**63 - 1))
@click.option("--reason", required=True, help="Why this event is left out (kept with it).")
@click.option("--by", "by", required=True, help="Who decided.")
@click.option("--at", default=None, help="When it was decided, ISO-8601 (default: now).")
@json_option
@click.pass_context
def add(
    ctx: click.Context, /, position: int, reason: str, by: str, at: str | None, as_json: bool
) -> None:
    """Quarantine the stored event at POSITION (its notification id): the projections pass
    over it from now on. Only an event that cannot be read or verified is taken; the case or
    order it belongs to stays refused."""

    def call(engine: Engine) -> dict[str, Any]:
        when = parse_time(at, "--at") if at is not None else engine.clock()
        return quarantine(engine.store, position, reason, by, when)

    emit(ctx, as_json, call, lambda row: _render([row]))


@quarantine_group.command("list")
@json_option
@click.pass_context
def list_(ctx: click.Context, /, as_json: bool) -> None:
    """Every quarantine decision: the event, why it could not be used, who decided, why."""
    emit(ctx, as_json, lambda engine: list_quarantine(engine.store), _render)
