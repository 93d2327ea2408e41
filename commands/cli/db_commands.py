"""`aftersales db roles`: least privilege inside a PostgreSQL store (engine/storage/roles.py)."""

from __future__ import annotations

import click

from aftersales.commands.cli.output import State, fail, fail_with
from aftersales.engine.domain.errors import AftersalesError, BadInput


@click.group("db")
def db_group() -> None:
    """The PostgreSQL store's database: its roles (least privilege for the engine, reporting,
    merchants' BI logins and auditors)."""


@db_group.command("roles")
@click.option("--print", "print_only", is_flag=True, help="Print the SQL; change nothing.")
@click.option(
    "--merchant-login",
    "merchant_logins",
    multiple=True,
    metavar="LOGIN=MERCHANT",
    help="A merchant's BI login, made and mapped to its merchant (repeatable).",
)
@click.option("--engine-role", default="aftersales_engine", show_default=True)
@click.option("--reporting-role", default="aftersales_reporting", show_default=True)
@click.option("--merchant-bi-role", default="aftersales_merchant_bi", show_default=True)
@click.option("--auditor-role", default="aftersales_auditor", show_default=True)
@click.pass_obj
def roles_command(
    state: State,
    /,
    print_only: bool,
    merchant_logins: tuple[str, ...],
    engine_role: str,
    reporting_role: str,
    merchant_bi_role: str,
    auditor_role: str,
) -> None:
    """Make the store's roles: the engine's (reads and appends events, never changes or deletes
    them: grants, and a trigger refusing UPDATE, DELETE and TRUNCATE of the events to everyone),
    the reporting role (SELECT on the projections' tables only), merchants' BI logins (their own
    rows only, by row-level security) and the auditor's (SELECT on the events only).

    Run it as the store's owner or a superuser, after the store exists (`aftersales init`), and
    again after new projection tables appear; then connect the engine as its role:
    postgresql://aftersales_engine@host/db?schema=NAME.
    """
    try:
        _roles(
            state,
            print_only,
            merchant_logins,
            (engine_role, reporting_role, merchant_bi_role, auditor_role),
        )
    except AftersalesError as exc:
        fail_with(exc, False)


def _roles(
    state: State,
    print_only: bool,
    merchant_logins: tuple[str, ...],
    names: tuple[str, str, str, str],
) -> None:
    from aftersales.engine.storage.urls import parse_store_url

    url = parse_store_url(state.store)
    if url.kind != "postgresql":
        raise BadInput("roles are PostgreSQL's: the store is SQLite (one file, no roles)")
    pairs = []
    for given in merchant_logins:
        login, _, merchant = given.partition("=")
        if not login or not merchant:
            raise BadInput(f"--merchant-login {given!r}: write LOGIN=MERCHANT")
        pairs.append((login, merchant))

    import psycopg
    from psycopg.conninfo import make_conninfo

    from aftersales.engine.storage.roles import Roles, role_statements
    from aftersales.projections.registry import VIEWS

    tables = [(table.name, "merchant_id" in table.names) for view in VIEWS for table in view.tables]
    tables += [(view.tracking_table(), False) for view in VIEWS]
    statements = role_statements(
        url.schema or "public", tables, roles=Roles(*names), merchant_logins=pairs
    )
    if print_only:
        for statement in statements:
            click.echo(statement.as_string(None) + ";")
        return
    try:
        with psycopg.connect(make_conninfo("", **url.conninfo)) as conn, conn.transaction():
            for statement in statements:
                conn.execute(statement)
    except psycopg.Error as exc:
        fail("store_unavailable", f"the roles were not made: {str(exc).strip()}", 1, False)
    click.echo(f"roles made on {url.redacted}: {', '.join(names)}")
