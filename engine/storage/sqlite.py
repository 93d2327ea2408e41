"""SQLite's side of the store: the recorder that writes the case index and the command record
in the transaction of the events, and the store's own tables there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from eventsourcing.persistence import IntegrityError
from eventsourcing.sqlite import SQLiteCursor

from aftersales.engine.storage.case_index import (
    BUILT_ON_MISSING,
    CASE_COLUMNS,
    COMMAND_COLUMNS,
    CaseRow,
    CommandRow,
    Head,
)
from aftersales.engine.storage.library import SQLiteRecorderWithRows
from aftersales.engine.storage.sql import (
    CASES_TABLE,
    COMMANDS_TABLE,
    EVENT_LOG_VIEW,
    QUARANTINE_TABLE,
    SQLITE,
    access_tables,
    utc_text,
)


def sqlite_values(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(utc_text(v) if isinstance(v, datetime) else v for v in row)


class SQLiteCaseRecorder(SQLiteRecorderWithRows):
    def construct_create_table_statements(self) -> list[str]:
        statements = super().construct_create_table_statements()
        statements += [
            f"CREATE TABLE IF NOT EXISTS {CASES_TABLE} ("
            "case_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, merchant_id TEXT NOT NULL, "
            "buyer_id TEXT NOT NULL, case_type TEXT NOT NULL, reason TEXT NOT NULL, "
            "status TEXT NOT NULL, amount TEXT NOT NULL, refunded_amount TEXT NOT NULL, "
            "due_at TEXT, due_action TEXT, opened_at TEXT NOT NULL, updated_at TEXT NOT NULL, "
            "version INTEGER NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {CASES_TABLE}_due ON {CASES_TABLE} (due_at) "
            "WHERE due_at IS NOT NULL",
            f"CREATE INDEX IF NOT EXISTS {CASES_TABLE}_merchant ON {CASES_TABLE} "
            "(merchant_id, status)",
            f"CREATE INDEX IF NOT EXISTS {CASES_TABLE}_order ON {CASES_TABLE} (order_id)",
            f"CREATE TABLE IF NOT EXISTS {COMMANDS_TABLE} ("
            "command_id TEXT PRIMARY KEY, action TEXT NOT NULL, target_id TEXT NOT NULL, "
            "fingerprint TEXT NOT NULL, version INTEGER NOT NULL, recorded_at TEXT NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {QUARANTINE_TABLE} ("
            "position INTEGER PRIMARY KEY, originator_id TEXT NOT NULL, "
            "originator_version INTEGER NOT NULL, topic TEXT NOT NULL, why TEXT NOT NULL, "
            "reason TEXT NOT NULL, decided_by TEXT NOT NULL, decided_at TEXT NOT NULL)",
            # The library keeps ids as 32 hex digits on SQLite; the view shows them as the
            # engine prints them (with dashes), so a case id can be pasted into a query.
            f"CREATE VIEW IF NOT EXISTS {EVENT_LOG_VIEW} AS SELECT rowid AS notification_id, "
            "substr(originator_id, 1, 8) || '-' || substr(originator_id, 9, 4) || '-' || "
            "substr(originator_id, 13, 4) || '-' || substr(originator_id, 17, 4) || '-' || "
            "substr(originator_id, 21) AS originator_id, "
            "originator_version, topic, CAST(state AS TEXT) AS data "
            f"FROM {self.events_table_name}",
            *(SQLITE(sql) for sql in access_tables("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT")),
        ]
        return statements

    def insert_rows(self, c: SQLiteCursor, saved_with: Mapping[str, Any]) -> None:
        """The case index rows and command rows saved with the events, once the events they
        build on are found as they were read (``Head``)."""
        heads: Sequence[Head] = saved_with.get("heads", ())
        for head in heads:
            c.execute(
                f"SELECT state FROM {self.events_table_name} "
                "WHERE originator_id = ? AND originator_version = ?",
                (head.originator_id.hex, head.version),
            )
            row = c.fetchone()
            if row is None or (head.state is not None and bytes(row[0]) != head.state):
                raise IntegrityError(BUILT_ON_MISSING)
        cases: Sequence[CaseRow] = saved_with.get("cases", ())
        if cases:
            columns = ", ".join(CASE_COLUMNS)
            marks = SQLITE.marks(len(CASE_COLUMNS))
            updates = ", ".join(f"{col} = excluded.{col}" for col in CASE_COLUMNS[1:])
            c.executemany(
                f"INSERT INTO {CASES_TABLE} ({columns}) VALUES ({marks}) "
                f"ON CONFLICT (case_id) DO UPDATE SET {updates}",
                [sqlite_values(row) for row in cases],
            )
        commands: Sequence[CommandRow] = saved_with.get("commands", ())
        if commands:
            c.executemany(
                f"INSERT INTO {COMMANDS_TABLE} ({', '.join(COMMAND_COLUMNS)}) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [sqlite_values(command) for command in commands],
            )
