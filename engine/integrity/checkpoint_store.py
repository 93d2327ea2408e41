"""The checkpoint tables: the Merkle tree over the log, kept in chunks and nodes, and the signed
heads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from aftersales.engine.domain.events import leaf_bytes
from aftersales.engine.integrity.merkle import (
    CHUNK,
    CHUNK_LEVEL,
    Builder,
    decompose,
    leaf_hash,
    perfect_root,
)
from aftersales.engine.integrity.tree_heads import Head, TreeDamaged
from aftersales.engine.storage.sqlite import SQLiteCaseRecorder
from aftersales.engine.storage.store import AftersalesStore

CHECKPOINTS = "aftersales_checkpoints"
LEAVES = "aftersales_merkle_leaves"
NODES = "aftersales_merkle_nodes"
VERIFIED = "aftersales_checkpoint_verified"


# Events read per query while a checkpoint grows the tree; chunks kept per transaction.
READ_BATCH = 5000
FLUSH_CHUNKS = 512


# The tables -------------------------------------------------------------------------------------


class Tree:
    """The checkpoint tables of one store, and the log's events as leaves."""

    def __init__(self, store: AftersalesStore) -> None:
        self.store = store
        self.postgres = store.is_postgres
        self.dialect = store.dialect
        self._chunks: dict[int, bytes] = {}
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._ready = False

    # Plain SQL on either backend -----------------------------------------------------------

    def write(self, work: Callable[[Callable[[str, Sequence[Any]], None]], None]) -> None:
        """Run ``work(execute)`` in one write transaction (locked against other checkpoints
        on PostgreSQL; SQLite has one writer at a time)."""
        recorder: Any = self.store.recorder
        if self.store.is_postgres:
            with recorder.datastore.transaction(commit=True) as curs:
                lock = f"aftersales:{recorder.datastore.schema}:checkpoint"
                curs.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))

                def execute(sql: str, params: Sequence[Any]) -> None:
                    curs.execute(self.dialect(sql).encode(), params)

                work(execute)
            return
        assert isinstance(recorder, SQLiteCaseRecorder)
        with recorder.datastore.transaction(commit=True) as c:
            work(lambda sql, params: c.execute(self.dialect(sql), tuple(params)))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        recorder: Any = self.store.recorder
        if self.store.is_postgres:
            from psycopg.rows import tuple_row

            with (
                recorder.datastore.get_connection() as conn,
                conn.cursor(row_factory=tuple_row) as curs,
            ):
                curs.execute(self.dialect(sql).encode(), params)
                return list(curs.fetchall())
        assert isinstance(recorder, SQLiteCaseRecorder)
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(self.dialect(sql), tuple(params))
            return [tuple(r) for r in c.fetchall()]

    def _exists(self, table: str = CHECKPOINTS) -> bool:
        if self.postgres:
            rows = self.rows(
                "SELECT to_regclass(?) IS NOT NULL", (f"{self.dialect.schema}.{table}",)
            )
        else:
            rows = self.rows(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (table,),
            )
        return bool(rows and rows[0][0])

    def ensure(self) -> None:
        """Make the tables, once. The table made last is looked for, so a store whose
        checkpoint tables came before it gets it too."""
        if self._ready or self._exists(VERIFIED):
            self._ready = True
            return
        blob = "bytea" if self.postgres else "BLOB"
        statements = [
            f"CREATE TABLE IF NOT EXISTS {{t}}{CHECKPOINTS} (size bigint PRIMARY KEY, "
            "head text NOT NULL, signature text NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {{t}}{LEAVES} (chunk bigint PRIMARY KEY, "
            f"hashes {blob} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {{t}}{NODES} (level integer NOT NULL, "
            f"idx bigint NOT NULL, hash {blob} NOT NULL, PRIMARY KEY (level, idx))",
            f"CREATE TABLE IF NOT EXISTS {{t}}{VERIFIED} (size bigint PRIMARY KEY, "
            "verified_at text NOT NULL, key_id text NOT NULL)",
        ]

        def create(execute: Callable[[str, Sequence[Any]], None]) -> None:
            for s in statements:
                execute(s, ())

        self.write(create)
        self._ready = True

    # Heads -----------------------------------------------------------------------------------

    def heads(self) -> list[Head]:
        """Every signed head, oldest first (none if no checkpoint was ever taken)."""
        if not self._exists():
            return []
        rows = self.rows(f"SELECT head, signature FROM {{t}}{CHECKPOINTS} ORDER BY size")
        return [Head.parse(str(text), str(sig)) for text, sig in rows]

    def latest(self) -> Head | None:
        if not self._exists():
            return None
        rows = self.rows(
            f"SELECT head, signature FROM {{t}}{CHECKPOINTS} ORDER BY size DESC LIMIT 1"
        )
        return Head.parse(str(rows[0][0]), str(rows[0][1])) if rows else None

    # What was verified ----------------------------------------------------------------------

    def verified(self, key: str) -> int | None:
        """The size of the signed head up to which ``checkpoint verify`` with this key last
        found the log as signed, if it ever did."""
        if not self._exists(VERIFIED):
            return None
        rows = self.rows(f"SELECT max(size) FROM {{t}}{VERIFIED} WHERE key_id = ?", (key,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def record_verified(self, size: int, at: datetime, key: str) -> None:
        self.ensure()
        self.write(
            lambda execute: execute(
                f"INSERT INTO {{t}}{VERIFIED} (size, verified_at, key_id) VALUES (?, ?, ?) "
                "ON CONFLICT (size) DO UPDATE SET verified_at = excluded.verified_at, "
                "key_id = excluded.key_id",
                (size, at.astimezone(UTC).isoformat(), key),
            )
        )

    # The kept tree ---------------------------------------------------------------------------

    def prefetch(self, nodes: Sequence[tuple[int, int]], chunks: Sequence[int]) -> None:
        """Read these nodes and leaf rows with a query or two."""
        want_chunks = sorted({c for c in chunks if c not in self._chunks})
        for i in range(0, len(want_chunks), 500):
            part = want_chunks[i : i + 500]
            marks = self.dialect.marks(len(part))
            for chunk, hashes in self.rows(
                f"SELECT chunk, hashes FROM {{t}}{LEAVES} WHERE chunk IN ({marks})", part
            ):
                self._chunks[int(chunk)] = bytes(hashes)
        by_level: dict[int, set[int]] = {}
        for level, idx in nodes:
            if (level, idx) not in self._nodes:
                by_level.setdefault(level, set()).add(idx)
        for level, wanted in by_level.items():
            ids = sorted(wanted)
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = self.dialect.marks(len(part))
                for idx, h in self.rows(
                    f"SELECT idx, hash FROM {{t}}{NODES} WHERE level = ? AND idx IN ({marks})",
                    [level, *part],
                ):
                    self._nodes[(level, int(idx))] = bytes(h)

    def chunk_leaves(self, chunk: int) -> bytes:
        if chunk not in self._chunks:
            self.prefetch([], [chunk])
        if chunk not in self._chunks:
            raise TreeDamaged(
                f"the kept tree has lost the leaves of positions {chunk * CHUNK + 1} to "
                f"{(chunk + 1) * CHUNK}"
            )
        return self._chunks[chunk]

    def leaf(self, index: int) -> bytes | None:
        """The leaf hash kept for a position (index = position - 1), if kept."""
        hashes = self.chunk_leaves(index >> CHUNK_LEVEL)
        at = (index & (CHUNK - 1)) * 32
        return hashes[at : at + 32] if at + 32 <= len(hashes) else None

    def subtree(self, start: int, level: int) -> bytes:
        """The hash of the perfect subtree of 2**level leaves from ``start``, as kept."""
        if level >= CHUNK_LEVEL:
            key = (level, start >> level)
            if key not in self._nodes:
                self.prefetch([key], [])
            if key not in self._nodes:
                raise TreeDamaged(
                    f"the kept tree has lost the node over positions {start + 1} to "
                    f"{start + (1 << level)}"
                )
            return self._nodes[key]
        hashes = self.chunk_leaves(start >> CHUNK_LEVEL)
        offset = (start & (CHUNK - 1)) * 32
        count = 1 << level
        if offset + count * 32 > len(hashes):
            raise TreeDamaged(f"the kept tree has lost leaves from position {start + 1}")
        leaves = [hashes[offset + 32 * i : offset + 32 * (i + 1)] for i in range(count)]
        return perfect_root(leaves)

    def plan(self, work: Callable[[Callable[[int, int], bytes]], object]) -> None:
        """Prefetch everything ``work`` will ask ``subtree`` for, by running it once on
        placeholders (a proof's shape depends only on positions and sizes)."""
        nodes: list[tuple[int, int]] = []
        chunks: list[int] = []

        def note(start: int, level: int) -> bytes:
            if level >= CHUNK_LEVEL:
                nodes.append((level, start >> level))
            else:
                chunks.append(start >> CHUNK_LEVEL)
            return b"\0" * 32

        work(note)
        self.prefetch(nodes, chunks)

    def builder(self, size: int) -> Builder:
        """The tree of ``size`` leaves as kept, ready to grow."""
        full = size >> CHUNK_LEVEL << CHUNK_LEVEL
        parts = decompose(0, full)
        self.prefetch([(level, s >> level) for s, level in parts], [full >> CHUNK_LEVEL])
        frontier = [(s, level, self.subtree(s, level)) for s, level in parts]
        partial: list[bytes] = []
        if size > full:
            hashes = self.chunk_leaves(full >> CHUNK_LEVEL)
            if len(hashes) < (size - full) * 32:
                raise TreeDamaged(f"the kept tree has lost leaves before position {size}")
            partial = [hashes[32 * i : 32 * (i + 1)] for i in range(size - full)]
        return Builder(frontier=frontier, partial=partial, size=size)

    # The log as leaves -----------------------------------------------------------------------

    def events(
        self, after: int, stop: int, batch: int = READ_BATCH
    ) -> Iterator[tuple[int, bytes, str]]:
        """``(position, leaf hash, label)`` of each event at positions ``(after, stop]``, in
        order; the label names the event for a person (aggregate id and version)."""
        recorder = self.store.recorder
        table = recorder.events_table_name  # type: ignore[attr-defined]
        column = "notification_id" if self.postgres else "rowid"
        sql = (
            f"SELECT {column}, originator_id, originator_version, topic, state FROM {{t}}{table} "
            f"WHERE {column} > ? AND {column} <= ? ORDER BY {column} LIMIT ?"
        )
        while after < stop:
            rows = self.rows(sql, (after, stop, batch))
            if not rows:
                return
            for position, oid, version, topic, state in rows:
                uid = oid if isinstance(oid, UUID) else UUID(str(oid))
                data = leaf_bytes(uid, int(version), str(topic), bytes(state))
                yield int(position), leaf_hash(data), f"{uid} version {version}"
            after = int(rows[-1][0])

    def positions(self, ids: Sequence[UUID]) -> dict[tuple[UUID, int], int]:
        """The log position of every stored event of these aggregates."""
        if not ids:
            return {}
        recorder = self.store.recorder
        table = recorder.events_table_name  # type: ignore[attr-defined]
        column = "notification_id" if self.postgres else "rowid"
        params: list[Any] = [i if self.postgres else i.hex for i in ids]
        rows = self.rows(
            f"SELECT originator_id, originator_version, {column} FROM {{t}}{table} "
            f"WHERE originator_id IN ({self.dialect.marks(len(ids))})",
            params,
        )
        found: dict[tuple[UUID, int], int] = {}
        for oid, version, position in rows:
            uid = oid if isinstance(oid, UUID) else UUID(str(oid))
            found[(uid, int(version))] = int(position)
        return found

    def count(self, up_to: int) -> int:
        recorder = self.store.recorder
        table = recorder.events_table_name  # type: ignore[attr-defined]
        column = "notification_id" if self.postgres else "rowid"
        rows = self.rows(f"SELECT count(*) FROM {{t}}{table} WHERE {column} <= ?", (up_to,))
        return int(rows[0][0])
