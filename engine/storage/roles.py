"""Least privilege inside a PostgreSQL store: the SQL that makes its roles (``aftersales db
roles``), run by the store's owner (or a superuser) on one schema.

- the **engine**'s role reads and appends events but can neither change nor delete them: it is
  granted SELECT and INSERT on the events table only, and a trigger refuses UPDATE, DELETE and
  TRUNCATE of that table to everyone, its owner included (defence in depth: a role granted too
  much later, or the owner's own mistake, still cannot rewrite history). The save call runs as
  the function's owner (``SECURITY DEFINER``, with a fixed ``search_path``), whatever the
  engine's grants say; the engine may only EXECUTE it. The engine's own tables (the
  case index, the projections, tracking, principals, keys, sessions, checkpoints) it may change;
  the command record and the access log it may only append to. It may CREATE in the schema, so
  projections and checkpoints make their tables as before (owned by it; the events table is
  not, so it can neither drop it nor disable its trigger);
- the **reporting** role may only SELECT the projections' tables, every row (the platform's
  reporting jobs);
- a **merchant's BI login** (a member of the merchant BI group) may only SELECT the projection
  tables that carry a ``merchant_id``, and row-level security shows it that merchant's rows
  only (``aftersales_bi_logins`` maps each login to its merchant). A table made after the roles
  (a projection added or rebuilt) is closed to these logins until the roles are made again;
- the **auditor**'s role may only SELECT the events (and the ``aftersales_event_log`` view).

Every statement can run again: running the roles again after new projection tables appear
grants on them too. Nothing here runs on SQLite, whose one file has no roles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg.sql import SQL, Composed, Identifier, Literal

from aftersales.engine.storage.sql import (
    ACCESS_LOG_TABLE,
    COMMANDS_TABLE,
    EVENT_LOG_VIEW,
    SAVE_FUNCTION,
)

EVENTS_TABLE = "aftersales_events"
BI_LOGINS_TABLE = "aftersales_bi_logins"
BI_MERCHANT_FUNCTION = "aftersales_bi_merchant"
APPEND_ONLY_FUNCTION = "aftersales_events_append_only"
SAVE_SIGNATURE = "uuid[], bigint[], text[], bytea[], jsonb, jsonb, uuid[], bigint[], bytea[]"


@dataclass(frozen=True)
class Roles:
    engine: str = "aftersales_engine"
    reporting: str = "aftersales_reporting"
    merchant_bi: str = "aftersales_merchant_bi"
    auditor: str = "aftersales_auditor"


def role_statements(
    schema: str,
    projection_tables: Sequence[tuple[str, bool]],
    *,
    roles: Roles | None = None,
    merchant_logins: Sequence[tuple[str, str]] = (),
    engine_only: bool = False,
) -> list[SQL | Composed]:
    """The statements, in order, for one schema. ``projection_tables``: each projection table's
    name and whether it has a ``merchant_id`` column (tables not made yet are passed over).
    ``merchant_logins``: (login, merchant) pairs to create and map. ``engine_only``: the
    engine's role and the events' trigger, nothing else."""
    roles = roles or Roles()
    s = Identifier(schema)
    events = SQL("{}.{}").format(s, Identifier(EVENTS_TABLE))
    out: list[SQL | Composed] = [
        # Roles are the cluster's, not the schema's: made once, by whichever run gets here first.
        SQL("SELECT pg_advisory_xact_lock(hashtext('aftersales:roles'))"),
    ]
    logins = [roles.engine] if engine_only else [roles.engine, roles.reporting, roles.auditor]
    for name in logins:
        out.append(_create_role(name, login=True))
    out += [
        # The engine.
        SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(s, Identifier(roles.engine)),
        SQL("REVOKE ALL ON {} FROM {}").format(events, Identifier(roles.engine)),
        SQL("GRANT SELECT, INSERT ON {} TO {}").format(events, Identifier(roles.engine)),
        SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
            s, Identifier(roles.engine)
        ),
        SQL(
            "DO $$ DECLARE r record; BEGIN "
            "FOR r IN SELECT c.relname, c.relname = ANY({append}) AS append_only "
            "FROM pg_class c WHERE c.relnamespace = {ns}::regnamespace "
            "AND c.relkind IN ('r', 'p', 'v') AND c.relname <> {events} LOOP "
            "EXECUTE format(CASE WHEN r.append_only THEN 'GRANT SELECT, INSERT ON %I.%I TO %I' "
            "ELSE 'GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO %I' END, "
            "{ns}, r.relname, {engine}); "
            "END LOOP; END $$"
        ).format(
            append=Literal([COMMANDS_TABLE, ACCESS_LOG_TABLE]),
            ns=Literal(schema),
            events=Literal(EVENTS_TABLE),
            engine=Literal(roles.engine),
        ),
        SQL(
            "ALTER FUNCTION {}.{}({}) SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
        ).format(s, Identifier(SAVE_FUNCTION), SQL(SAVE_SIGNATURE)),
        SQL("REVOKE ALL ON FUNCTION {}.{}({}) FROM PUBLIC").format(
            s, Identifier(SAVE_FUNCTION), SQL(SAVE_SIGNATURE)
        ),
        SQL("GRANT EXECUTE ON FUNCTION {}.{}({}) TO {}").format(
            s, Identifier(SAVE_FUNCTION), SQL(SAVE_SIGNATURE), Identifier(roles.engine)
        ),
        # History cannot be rewritten, by anyone: the trigger refuses before any row changes.
        SQL(
            "CREATE OR REPLACE FUNCTION {}.{}() RETURNS trigger LANGUAGE plpgsql AS $f$ "
            "BEGIN RAISE EXCEPTION 'the event log is append-only: % of %.% refused', "
            "TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege'; "
            "END $f$"
        ).format(s, Identifier(APPEND_ONLY_FUNCTION)),
        SQL("DROP TRIGGER IF EXISTS aftersales_append_only ON {}").format(events),
        SQL(
            "CREATE TRIGGER aftersales_append_only BEFORE UPDATE OR DELETE ON {} "
            "FOR EACH ROW EXECUTE FUNCTION {}.{}()"
        ).format(events, s, Identifier(APPEND_ONLY_FUNCTION)),
        SQL("DROP TRIGGER IF EXISTS aftersales_no_truncate ON {}").format(events),
        SQL(
            "CREATE TRIGGER aftersales_no_truncate BEFORE TRUNCATE ON {} "
            "FOR EACH STATEMENT EXECUTE FUNCTION {}.{}()"
        ).format(events, s, Identifier(APPEND_ONLY_FUNCTION)),
    ]
    if engine_only:
        return out
    out += [
        # The auditor: the events, read-only.
        SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, Identifier(roles.auditor)),
        SQL("GRANT SELECT ON {} TO {}").format(events, Identifier(roles.auditor)),
        SQL("GRANT SELECT ON {}.{} TO {}").format(
            s, Identifier(EVENT_LOG_VIEW), Identifier(roles.auditor)
        ),
        # Merchants' BI logins: a group, the map of login to merchant, read through a function
        # (a login cannot list the others).
        _create_role(roles.merchant_bi, login=False),
        SQL(
            "CREATE TABLE IF NOT EXISTS {}.{} (login name PRIMARY KEY, merchant_id text NOT NULL)"
        ).format(s, Identifier(BI_LOGINS_TABLE)),
        SQL(
            "CREATE OR REPLACE FUNCTION {s}.{f}() RETURNS text LANGUAGE sql STABLE "
            "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS "
            "$f$ SELECT merchant_id FROM {s}.{t} WHERE login = session_user $f$"
        ).format(s=s, f=Identifier(BI_MERCHANT_FUNCTION), t=Identifier(BI_LOGINS_TABLE)),
        SQL("REVOKE ALL ON FUNCTION {}.{}() FROM PUBLIC").format(
            s, Identifier(BI_MERCHANT_FUNCTION)
        ),
        SQL("GRANT EXECUTE ON FUNCTION {}.{}() TO {}").format(
            s, Identifier(BI_MERCHANT_FUNCTION), Identifier(roles.merchant_bi)
        ),
        SQL("GRANT USAGE ON SCHEMA {} TO {}, {}").format(
            s, Identifier(roles.reporting), Identifier(roles.merchant_bi)
        ),
    ]
    for table, by_merchant in projection_tables:
        out.append(_projection_grants(schema, table, by_merchant, roles))
    for login, merchant in merchant_logins:
        out += [
            _create_role(login, login=True),
            SQL("GRANT {} TO {}").format(Identifier(roles.merchant_bi), Identifier(login)),
            SQL(
                "INSERT INTO {}.{} VALUES ({}, {}) "
                "ON CONFLICT (login) DO UPDATE SET merchant_id = excluded.merchant_id"
            ).format(s, Identifier(BI_LOGINS_TABLE), Literal(login), Literal(merchant)),
        ]
    return out


def _create_role(name: str, *, login: bool) -> Composed:
    return SQL(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {name}) THEN "
        "CREATE ROLE {role} {login}; END IF; END $$"
    ).format(
        name=Literal(name),
        role=Identifier(name),
        login=SQL("LOGIN" if login else "NOLOGIN"),
    )


def _projection_grants(schema: str, table: str, by_merchant: bool, roles: Roles) -> Composed:
    """One projection table's grants and, where it has a merchant, its row-level security:
    every row to the engine (which writes it) and the reporting role, a merchant's own rows to
    its BI login. Passed over if the table is not there yet."""
    merchant = (
        "EXECUTE format('ALTER TABLE %I.%I ENABLE ROW LEVEL SECURITY', {ns}, {t}); "
        "EXECUTE format('DROP POLICY IF EXISTS aftersales_engine ON %I.%I', {ns}, {t}); "
        "EXECUTE format('CREATE POLICY aftersales_engine ON %I.%I TO %I "
        "USING (true) WITH CHECK (true)', {ns}, {t}, {engine}); "
        "EXECUTE format('DROP POLICY IF EXISTS aftersales_reporting ON %I.%I', {ns}, {t}); "
        "EXECUTE format('CREATE POLICY aftersales_reporting ON %I.%I FOR SELECT TO %I "
        "USING (true)', {ns}, {t}, {reporting}); "
        "EXECUTE format('DROP POLICY IF EXISTS aftersales_merchant ON %I.%I', {ns}, {t}); "
        "EXECUTE format('CREATE POLICY aftersales_merchant ON %I.%I FOR SELECT TO %I "
        "USING (merchant_id = %I.%I())', {ns}, {t}, {bi}, {ns}, {fn}); "
        "EXECUTE format('GRANT SELECT ON %I.%I TO %I', {ns}, {t}, {bi}); "
        if by_merchant
        else ""
    )
    return SQL(
        "DO $$ BEGIN IF to_regclass(format('%I.%I', {ns}, {t})) IS NOT NULL THEN "
        "EXECUTE format('GRANT SELECT ON %I.%I TO %I', {ns}, {t}, {reporting}); "
        + merchant
        + "END IF; END $$"
    ).format(
        ns=Literal(schema),
        t=Literal(table),
        engine=Literal(roles.engine),
        reporting=Literal(roles.reporting),
        bi=Literal(roles.merchant_bi),
        fn=Literal(BI_MERCHANT_FUNCTION),
    )
