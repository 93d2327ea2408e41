"""`aftersales principal add/list/history/sessions/end-session` and `aftersales key
create/revoke`: who may act over HTTP (``engine/access/principal_store.py``) and the desk's
sessions (``engine/access/desk_sessions.py``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from aftersales.commands.cli.options import json_option
from aftersales.commands.cli.output import emit, table
from aftersales.engine.access.desk_sessions import end_session, list_sessions
from aftersales.engine.access.principal_store import (
    access_history,
    add_principal,
    create_key,
    list_principals,
    revoke_key,
)
from aftersales.engine.access.scopes import PrincipalRole
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.values import parse_time


def _now(engine: Engine) -> datetime:
    return engine.clock().astimezone(UTC)


@click.group("principal")
def principal_group() -> None:
    """Principals: who may act over HTTP, in which role, for which merchant."""


@principal_group.command("add")
@click.argument("principal_id")
@click.option(
    "--role",
    required=True,
    type=click.Choice([r.value for r in PrincipalRole]),
    help="What the principal may do (see docs/http.md).",
)
@click.option("--merchant", default=None, help="The merchant a merchant principal works for.")
@json_option
@click.pass_context
def principal_add(
    ctx: click.Context, /, principal_id: str, role: str, merchant: str | None, as_json: bool
) -> None:
    """Add a principal (a buyer principal's id is the buyer id used on orders)."""

    def call(engine: Engine) -> dict[str, Any]:
        return add_principal(engine.store, principal_id, role, merchant, _now(engine)).to_json()

    emit(ctx, as_json, call, lambda p: f"principal {p['principal']} added as {p['role']}")


@principal_group.command("list")
@json_option
@click.pass_context
def principal_list(ctx: click.Context, /, as_json: bool) -> None:
    """Every principal with its keys (ids and times; never a key or its hash)."""

    def render(rows: list[dict[str, Any]]) -> str:
        shown = [
            {
                **row,
                "keys": [
                    k["key_id"] + (" (revoked)" if k["revoked_at"] else "") for k in row["keys"]
                ],
            }
            for row in rows
        ]
        return table(shown, ["principal", "role", "merchant", "created_at", "keys"])

    emit(ctx, as_json, lambda engine: list_principals(engine.store), render)


@principal_group.command("history")
@json_option
@click.pass_context
def principal_history(ctx: click.Context, /, as_json: bool) -> None:
    """Every change to principals and keys, oldest first: who held which rights when."""
    emit(
        ctx,
        as_json,
        lambda engine: access_history(engine.store),
        lambda rows: table(rows, ["at", "change", "principal", "key_id", "detail", "by"]),
    )


@principal_group.command("sessions")
@click.argument("principal_id")
@json_option
@click.pass_context
def principal_sessions(ctx: click.Context, /, principal_id: str, as_json: bool) -> None:
    """A principal's desk sessions, newest first: active, idle, expired or ended (ids and
    times; never a token)."""

    def call(engine: Engine) -> list[dict[str, Any]]:
        return list_sessions(engine.store, principal_id, _now(engine))

    columns = ["session_id", "key_id", "state", "created_at", "last_seen_at", "expires_at"]
    emit(ctx, as_json, call, lambda rows: table(rows, [*columns, "ended_why"]))


@principal_group.command("end-session")
@click.argument("session_id")
@json_option
@click.pass_context
def principal_end_session(ctx: click.Context, /, session_id: str, as_json: bool) -> None:
    """End a desk session (as listed by `principal sessions`): its next request is refused and
    its browser is sent to sign in again."""
    emit(
        ctx,
        as_json,
        lambda engine: end_session(engine.store, session_id, _now(engine)),
        lambda r: f"session {r['session_id']} of {r['principal']} ended",
    )


@click.group("key")
def key_group() -> None:
    """Keys: the secrets principals present as `Authorization: Bearer KEY`."""


@key_group.command("create")
@click.argument("principal_id")
@click.option("--expires", default=None, help="When the key stops working, ISO-8601 with offset.")
@json_option
@click.pass_context
def key_create(
    ctx: click.Context, /, principal_id: str, expires: str | None, as_json: bool
) -> None:
    """Make a key for a principal; the key is printed once and never stored."""

    def call(engine: Engine) -> dict[str, Any]:
        until = parse_time(expires, "--expires") if expires is not None else None
        return create_key(engine.store, principal_id, _now(engine), until)

    def render(made: dict[str, Any]) -> str:
        return (
            f"key {made['key_id']} for {made['principal']} (shown once, keep it safe):\n"
            f"{made['key']}"
        )

    emit(ctx, as_json, call, render)


@key_group.command("revoke")
@click.argument("key_id")
@json_option
@click.pass_context
def key_revoke(ctx: click.Context, /, key_id: str, as_json: bool) -> None:
    """Revoke a key: the next request with it, or with a desk session signed in with it, is
    refused."""

    def said(r: dict[str, Any]) -> str:
        ended = r["sessions_ended"]
        return f"key {r['key_id']} of {r['principal']} revoked" + (
            f"; {len(ended)} desk session(s) ended" if ended else ""
        )

    emit(ctx, as_json, lambda engine: revoke_key(engine.store, key_id, _now(engine)), said)
