"""SQL written once for both backends.

Statements are written with ``?`` for each parameter and ``{t}`` before each table name; a
``Dialect`` turns them into what one store takes: on SQLite ``{t}`` goes and ``?`` stays; on
PostgreSQL ``{t}`` becomes the store's schema and ``?`` becomes psycopg's ``%s`` (so a literal
``%`` is doubled). ``?`` is therefore always a parameter: PostgreSQL's JSON ``?`` operators cannot
be written this way (none is used).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Dialect:
    postgres: bool
    schema: str = "public"

    def __call__(self, sql: str) -> str:
        """The statement as this store takes it."""
        if not self.postgres:
            return sql.replace("{t}", "")
        return sql.replace("%", "%%").replace("{t}", f'"{self.schema}".').replace("?", "%s")

    @staticmethod
    def marks(count: int) -> str:
        """``?, ?, ...``: one parameter each, for ``IN (...)`` lists."""
        return ", ".join("?" * count)


SQLITE = Dialect(postgres=False)


CASES_TABLE = "aftersales_cases"
COMMANDS_TABLE = "aftersales_commands"
QUARANTINE_TABLE = "aftersales_quarantine"
EVENT_LOG_VIEW = "aftersales_event_log"
PRINCIPALS_TABLE = "aftersales_principals"
KEYS_TABLE = "aftersales_keys"
ACCESS_LOG_TABLE = "aftersales_access_log"
SESSIONS_TABLE = "aftersales_sessions"
SAVE_FUNCTION = "aftersales_save"


# The case index and the command record, written with the events ------------------------------


def access_tables(serial: str, time: str) -> list[str]:
    """Principals, their keys (hashes only), the desk's sessions (hashes only) and the history
    of all three, in a backend's types. Rows of the first two change only by a key's
    revocation, a session's by its use (last seen) and its end; every change but use is also a
    row of the access log, which is never changed."""
    return [
        f"CREATE TABLE IF NOT EXISTS {{t}}{PRINCIPALS_TABLE} (principal_id TEXT PRIMARY KEY, "
        f"role TEXT NOT NULL, merchant_id TEXT, created_at {time} NOT NULL, "
        "created_by TEXT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {{t}}{KEYS_TABLE} (key_id TEXT PRIMARY KEY, "
        "principal_id TEXT NOT NULL, key_hash TEXT NOT NULL, "
        f"created_at {time} NOT NULL, expires_at {time}, revoked_at {time})",
        f"CREATE TABLE IF NOT EXISTS {{t}}{ACCESS_LOG_TABLE} (seq {serial}, "
        f"at {time} NOT NULL, change TEXT NOT NULL, principal_id TEXT NOT NULL, "
        "key_id TEXT, detail TEXT NOT NULL, by_user TEXT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {{t}}{SESSIONS_TABLE} (session_id TEXT PRIMARY KEY, "
        "token_hash TEXT NOT NULL, principal_id TEXT NOT NULL, key_id TEXT NOT NULL, "
        f"created_at {time} NOT NULL, last_seen_at {time} NOT NULL, "
        f"idle_seconds INTEGER NOT NULL, expires_at {time} NOT NULL, revoked_at {time}, "
        "ended_why TEXT)",
        f"CREATE INDEX IF NOT EXISTS {SESSIONS_TABLE}_principal ON {{t}}{SESSIONS_TABLE} "
        "(principal_id)",
        f"CREATE INDEX IF NOT EXISTS {SESSIONS_TABLE}_key ON {{t}}{SESSIONS_TABLE} (key_id)",
    ]


def utc_text(value: datetime | None) -> str | None:
    """SQLite keeps times as UTC text of one fixed shape, so they sort and compare as text."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def parse_stored_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))
