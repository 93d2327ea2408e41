"""`aftersales notify ...`: what the buyer was or would be told, and in which language."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from aftersales.commands.cli.options import json_option
from aftersales.commands.cli.output import emit, table
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.values import parse_time
from aftersales.projections.notify import (
    LANGUAGES,
    check_language,
    default_language,
    preview,
    set_language,
)


def _render_preview(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(nothing to tell the buyer yet)"
    return "\n".join(f"{r['at']}  {r['kind']} -> {r['buyer_id']}\n  {r['text']}" for r in rows)


@click.group("notify")
def notify_group() -> None:
    """Telling the buyer: messages made from case events, in Chinese or English."""


@notify_group.command("preview")
@click.argument("case_id")
@click.option(
    "--language",
    type=click.Choice(LANGUAGES),
    default=None,
    help="For buyers with no language of their own (default: $AFTERSALES_NOTIFY_LANGUAGE, "
    "else zh).",
)
@click.option(
    "--at", "now", default=None, help="As of this time, ISO-8601 with offset (for the reminder)."
)
@json_option
@click.pass_context
def preview_cmd(
    ctx: click.Context, /, case_id: str, language: str | None, now: str | None, as_json: bool
) -> None:
    """Every message the case's buyer was told, and the reminder still to come."""

    def call(engine: Engine) -> list[dict[str, Any]]:
        chosen = check_language(language) if language else default_language()
        when = parse_time(now, "--at") if now else datetime.now(UTC)
        return [m.to_json() for m in preview(engine.store, case_id, when, chosen)]

    emit(ctx, as_json, call, _render_preview)


@notify_group.command("language")
@click.argument("buyer")
@click.argument("language", type=click.Choice(LANGUAGES))
@json_option
@click.pass_context
def language_cmd(ctx: click.Context, /, buyer: str, language: str, as_json: bool) -> None:
    """Tell this buyer in this language from now on."""

    def call(engine: Engine) -> dict[str, Any]:
        set_language(engine.store, buyer, language)
        return {"buyer_id": buyer, "language": language}

    emit(ctx, as_json, call, lambda r: table([r], ["buyer_id", "language"]))
