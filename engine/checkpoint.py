"""Signed checkpoints of the event log: forging history needs a key the store does not hold.

The hash chains (engine/events.py) show an event changed by someone who did not re-seal its
chain; whoever can write to the database can re-seal it. A checkpoint anchors the log outside
the database: a Merkle tree over every event up to a position of the log (engine/merkle.py, in
the manner of Certificate Transparency), its root signed with an Ed25519 key the store never
sees. The signed tree head names the position (``size``, the tree's leaves: one per notification
id from 1, a position no event holds being an empty leaf), the events it covers, the root, when
it was signed and the signing key's id.

What the store keeps (tables made on the first checkpoint):

- ``aftersales_checkpoints``: each signed head, as the exact text signed and its signature;
- ``aftersales_merkle_leaves``: the leaf hashes, 256 to a row;
- ``aftersales_merkle_nodes``: the hashes of the perfect subtrees above those rows;
- ``aftersales_checkpoint_verified``: up to which signed head ``checkpoint verify`` last found
  the stored events to be the ones signed (its size, when, with which key), so the next one
  starts there.

The tree tables only make proofs quick: nothing is trusted for being in them. A proof built from
them either verifies against the signed root or does not. A new checkpoint reads only the events
after the last one, on top of the kept tree, and first checks that tree still gives the last
signed root; so a rewritten history is never folded into a new checkpoint. And it signs those
events only once they verify (``TailCheck``): each one's hash chained to the event before it,
every aggregate they belong to rebuilt, every case's index row at its last stored version. A
signature vouches for what it signs: an event edited, a case's last event deleted or an event put
there by hand is refused, named, and nothing is signed, rather than proven by every later check.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import itertools
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from eventsourcing.persistence import PersistenceError

from aftersales.engine.audit import Audit, Problem
from aftersales.engine.errors import BadInput, Conflict, NotAllowed, Poisoned
from aftersales.engine.events import Unreadable, leaf_bytes
from aftersales.engine.integrity import StoredRow, check_link, read_rows
from aftersales.engine.merkle import (
    CHUNK,
    CHUNK_LEVEL,
    EMPTY_LEAF,
    Builder,
    consistency_proof,
    decompose,
    inclusion_proof,
    leaf_hash,
    perfect_root,
    verify_consistency,
    verify_inclusion,
)
from aftersales.engine.store import EventStore, SQLiteCaseRecorder

HEAD_FORMAT = "aftersales-checkpoint/1"
CHECKPOINTS = "aftersales_checkpoints"
LEAVES = "aftersales_merkle_leaves"
NODES = "aftersales_merkle_nodes"
VERIFIED = "aftersales_checkpoint_verified"
SIGNING_KEY_ENV = "AFTERSALES_SIGNING_KEY"
PUBLIC_KEY_ENV = "AFTERSALES_PUBLIC_KEY"
# Events read per query while a checkpoint grows the tree; chunks kept per transaction.
READ_BATCH = 5000
FLUSH_CHUNKS = 512
# Events read per query while the events after a checkpoint are checked, so also at most as
# many aggregates rebuilt per query: memory stays flat however long the unsigned tail.
CHECK_BATCH = 1000
# Aggregates already rebuilt while a tail is checked, remembered (with the version they were
# rebuilt to) so an order whose events run all along the tail is rebuilt once, not per batch.
# Bounded: past it the oldest are forgotten and at worst rebuilt again.
REMEMBERED = 50_000
# Failures kept to be named (every one is counted).
SHOWN = 20


class TreeDamaged(NotAllowed):
    """The kept tree does not give a signed root: the store was changed under a checkpoint."""


# Keys -------------------------------------------------------------------------------------------


def key_id(public: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of sha256 over its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _raw32(data: bytes) -> bytes | None:
    """A raw 32-byte key, as bytes or as 64 hex digits (or base64) on one line."""
    if len(data) == 32:
        return data
    text = data.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text.decode("ascii"))
        decoded = base64.b64decode(text, validate=True)
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded if len(decoded) == 32 else None


def _load_key(
    path: Path, what: str, pem: Callable[[bytes], object], raw: Callable[[bytes], object]
) -> object:
    """A key from a PEM file (read by ``pem``) or a raw 32-byte key (bytes, 64 hex digits or
    base64, read by ``raw``)."""
    data = _read_key_file(path, what)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            return pem(data)
        except (ValueError, TypeError) as exc:
            raise BadInput(f"{what} {path} is not a readable PEM key: {exc}") from None
    key = _raw32(data)
    if key is None:
        raise BadInput(f"{what} {path} is neither a PEM Ed25519 key nor a raw 32-byte key")
    return raw(key)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) file or a raw 32-byte key."""
    key = _load_key(
        path,
        "signing key",
        lambda data: serialization.load_pem_private_key(data, password=None),
        Ed25519PrivateKey.from_private_bytes,
    )
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput(f"signing key {path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file or a raw 32-byte key (bytes, hex or base64)."""
    key = _load_key(
        path, "public key", serialization.load_pem_public_key, Ed25519PublicKey.from_public_bytes
    )
    if not isinstance(key, Ed25519PublicKey):
        raise BadInput(f"public key {path} is not an Ed25519 public key")
    return key


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_key(out: Path) -> tuple[Path, Ed25519PublicKey]:
    """A new signing key written to ``out`` (PEM, mode 0600, never over an existing file) and
    its public key beside it (``out`` + ``.pub``)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_path = out.with_name(out.name + ".pub")
    for p in (out, pub_path):
        if p.exists():
            raise BadInput(f"{p} exists: a key is never written over")
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
        os.chmod(out, 0o600)  # whatever the umask
        pub_path.write_bytes(public_pem(key.public_key()))
    except OSError as exc:
        raise BadInput(f"cannot write the key to {out}: {exc.strerror or exc}") from None
    return pub_path, key.public_key()


# Signed tree heads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """A signed tree head, as stored: the exact text signed, and its signature."""

    text: str
    signature: str  # hex
    size: int
    events: int
    root: bytes
    signed_at: str
    key_id: str

    @classmethod
    def parse(cls, text: str, signature: str) -> Head:
        try:
            data = json.loads(text)
            if data.get("format") != HEAD_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            return cls(
                text=text,
                signature=signature,
                size=int(data["size"]),
                events=int(data["events"]),
                root=bytes.fromhex(data["root"]),
                signed_at=str(data["signed_at"]),
                key_id=str(data["key_id"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TreeDamaged(f"a stored checkpoint cannot be read ({exc}): {text[:200]}") from None

    @classmethod
    def sign(
        cls, key: Ed25519PrivateKey, size: int, events: int, root: bytes, at: datetime
    ) -> Head:
        content = {
            "events": events,
            "format": HEAD_FORMAT,
            "key_id": key_id(key.public_key()),
            "root": root.hex(),
            "signed_at": at.astimezone(UTC).isoformat(),
            "size": size,
        }
        text = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return cls.parse(text, key.sign(text.encode("utf-8")).hex())

    def check(self, public: Ed25519PublicKey) -> str | None:
        """Why this head's signature does not verify with ``public``, or None if it does."""
        wanted = key_id(public)
        if self.key_id != wanted:
            return (
                f"the checkpoint at position {self.size} was signed with key {self.key_id}, "
                f"not with the public key given ({wanted})"
            )
        try:
            public.verify(bytes.fromhex(self.signature), self.text.encode("utf-8"))
        except (InvalidSignature, ValueError):
            return (
                f"the checkpoint at position {self.size} does not verify with the public key "
                f"{wanted}: its signed head was altered or forged"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.size,
            "events": self.events,
            "root": self.root.hex(),
            "signed_at": self.signed_at,
            "key_id": self.key_id,
        }

    def for_bundle(self) -> dict[str, Any]:
        return {"head": self.text, "signature": self.signature}


# The tables -------------------------------------------------------------------------------------


class Tree:
    """The checkpoint tables of one store, and the log's events as leaves."""

    def __init__(self, store: EventStore) -> None:
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


# The events after a checkpoint, checked before they are signed --------------------------------


@dataclass(frozen=True)
class Failure:
    """A stored event (or a case's index row) the log cannot be verified past: where, what,
    which version, why."""

    position: int | None
    aggregate: str  # as a person knows it: case <id>, order <order id>
    version: int
    why: str
    event: str | None = None  # its type, when the event is there to name

    @property
    def message(self) -> str:
        where = f"position {self.position}" if self.position is not None else "a position unknown"
        what = f"{self.event} of {self.aggregate}" if self.event else self.aggregate
        return f"{where} ({what}, version {self.version}): {self.why}"

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "aggregate": self.aggregate,
            "event": self.event,
            "version": self.version,
            "why": self.why,
        }


class LogUnverified(NotAllowed):
    """The events after the last checkpoint do not verify: nothing is signed over them."""

    def __init__(self, since: int, failures: Sequence[Failure], count: int) -> None:
        shown = "; ".join(f.message for f in failures[:5])
        more = f"; and {count - 5} more" if count > 5 else ""
        after = f"after position {since}" if since else "of the log"
        super().__init__(
            f"nothing signed: {count} of the events {after} do not verify: {shown}{more}"
        )
        self.failures = list(failures)
        self.count = count

    def to_json(self) -> dict[str, object]:
        first = self.failures[0]
        return {
            **super().to_json(),
            "position": first.position,
            "version": first.version,
            "failures": self.count,
            "problems": [f.to_json() for f in self.failures],
        }


@dataclass
class TailCheck:
    """The events after a signed position, checked as signing needs them, in one pass in log
    order and in batches of ``CHECK_BATCH``:

    - each event's hash is its content's chained to the hash of the event before it in its
      aggregate (read in the same query, whether that event is in the tail or older than the
      last checkpoint): what is signed is what was sealed;
    - every aggregate those events belong to rebuilds (``EventStore.load_many``, one query a
      batch: its whole chain checked, its history replayed through the audit's cheap checks,
      and a case's last version against its index row, read in the same snapshot: a case's
      last event deleted, or an event put after it that the index never knew, shows there).

    The failures are collected (the first ``SHOWN`` kept, all counted), not raised."""

    store: EventStore
    failures: list[Failure] = field(default_factory=list)
    count: int = 0
    events_read: int = 0
    _named: set[tuple[UUID, int]] = field(default_factory=set)
    _rebuilt: OrderedDict[UUID, int] = field(default_factory=OrderedDict)

    def rows(self, after: int, stop: int) -> Iterator[StoredRow]:
        """The stored events at positions ``(after, stop]`` in log order, each batch checked
        before its events are handed on."""
        while after < stop:
            rows = read_rows(self.store, after, stop, CHECK_BATCH, None)
            if not rows:
                return
            self._check(rows)
            self.events_read += len(rows)
            yield from rows
            after = rows[-1].position

    def _check(self, rows: Sequence[StoredRow]) -> None:
        last: dict[UUID, int] = {}
        for row in rows:
            try:
                check_link(self.store, row)
            except Unreadable as exc:
                self._fail(row.originator_id, row.version, row.position, str(exc), row.name)
            last[row.originator_id] = max(row.version, last.get(row.originator_id, 0))
        # An aggregate rebuilt earlier in this pass to a version past this batch's events was
        # checked with them then.
        todo = [uid for uid, version in last.items() if self._rebuilt.get(uid, 0) < version]
        poisoned: dict[UUID, Poisoned] = {}
        rebuilt = self.store.load_many(todo, poisoned)
        for uid in todo:
            aggregate = rebuilt.get(uid)
            if aggregate is not None:
                self._remember(uid, int(aggregate.version))
            elif uid in poisoned:
                refused = poisoned[uid]
                event = refused.what.partition(" of ")[0]
                self._fail(uid, refused.version, refused.position, refused.why, event)
                self._remember(uid, 1 << 62)  # named once; its later events are still linked
            else:
                position = next(r.position for r in rows if r.originator_id == uid)
                self._fail(uid, last[uid], position, "its events were gone when it was rebuilt")

    def _remember(self, uid: UUID, version: int) -> None:
        self._rebuilt[uid] = version
        self._rebuilt.move_to_end(uid)
        if len(self._rebuilt) > REMEMBERED:
            self._rebuilt.popitem(last=False)

    def _fail(
        self, uid: UUID, version: int, position: int | None, why: str, event: str | None = None
    ) -> None:
        if (uid, version) in self._named:
            return  # an event that breaks its link also stops its aggregate's rebuild there
        self._named.add((uid, version))
        self.count += 1
        if len(self.failures) < SHOWN:
            self.failures.append(Failure(position, self.store.describe(uid), version, why, event))


# Taking a checkpoint ----------------------------------------------------------------------------


@dataclass
class Taken:
    head: Head | None  # the new head, or the latest if there was nothing new to sign
    previous: Head | None
    new_events: int = 0
    new: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.head.to_json() if self.head is not None else None,
            "new": self.new,
            "new_events": self.new_events,
            "previous_position": self.previous.size if self.previous is not None else None,
        }


@dataclass
class TreeRows:
    """Rows of the kept tree to write: leaf chunks and nodes, by their keys."""

    chunks: dict[int, bytes] = field(default_factory=dict)
    nodes: dict[tuple[int, int], bytes] = field(default_factory=dict)

    def write(self, execute: Callable[[str, Sequence[Any]], None]) -> None:
        upsert = "ON CONFLICT ({key}) DO UPDATE SET {col} = excluded.{col}"
        for chunk, hashes in self.chunks.items():
            execute(
                f"INSERT INTO {{t}}{LEAVES} (chunk, hashes) VALUES (?, ?) "
                + upsert.format(key="chunk", col="hashes"),
                (chunk, hashes),
            )
        for (level, idx), h in self.nodes.items():
            execute(
                f"INSERT INTO {{t}}{NODES} (level, idx, hash) VALUES (?, ?, ?) "
                + upsert.format(key="level, idx", col="hash"),
                (level, idx, h),
            )
        self.chunks.clear()
        self.nodes.clear()


def take_checkpoint(store: EventStore, key: Ed25519PrivateKey, now: datetime) -> Taken:
    """Sign the tree over every event up to the log's head, growing the kept tree from the last
    checkpoint. Nothing new since the last one: nothing is signed. The events since the last
    one are checked as they are read (``TailCheck``); if any fails, nothing is signed and
    ``LogUnverified`` names them."""
    tree = Tree(store)
    tree.ensure()
    previous = tree.latest()
    start = previous.size if previous is not None else 0
    head_position = store.recorder.max_notification_id() or 0
    builder = tree.builder(start)
    if previous is not None and builder.root() != previous.root:
        raise TreeDamaged(
            f"the kept tree no longer gives the root signed at position {previous.size}: the "
            "checkpoint tables were changed; run `aftersales checkpoint verify --full`"
        )
    if head_position <= start:
        return Taken(previous, previous)
    pending = TreeRows()
    builder.on_chunk = lambda index, leaves: pending.chunks.__setitem__(index, b"".join(leaves))
    builder.on_node = lambda level, index, h: pending.nodes.__setitem__((level, index), h)
    new_events = 0
    tail = TailCheck(store)
    for row in tail.rows(start, head_position):
        while builder.size < row.position - 1:
            builder.append(EMPTY_LEAF)
        builder.append(leaf_hash(leaf_bytes(row.originator_id, row.version, row.topic, row.state)))
        new_events += 1
        # Rows of the kept tree past the last signed head are written over by the next
        # checkpoint and trusted by nothing, so writing them before a refusal does no harm.
        if len(pending.chunks) >= FLUSH_CHUNKS:
            tree.write(lambda execute: pending.write(execute))
    if tail.count:
        raise LogUnverified(start, tail.failures, tail.count)
    while builder.size < head_position:
        builder.append(EMPTY_LEAF)
    if builder.partial:
        pending.chunks[builder.size >> CHUNK_LEVEL] = b"".join(builder.partial)
    events = (previous.events if previous is not None else 0) + new_events
    head = Head.sign(key, head_position, events, builder.root(), now)

    def finish(execute: Callable[[str, Sequence[Any]], None]) -> None:
        pending.write(execute)
        execute(
            f"INSERT INTO {{t}}{CHECKPOINTS} (size, head, signature) VALUES (?, ?, ?)",
            (head.size, head.text, head.signature),
        )

    try:
        tree.write(finish)
    except Exception as exc:
        if "unique" in str(exc).lower() or "duplicate" in str(exc).lower():
            raise Conflict(
                f"another checkpoint at position {head.size} was taken at the same time"
            ) from None
        raise
    return Taken(head, previous, new_events, True)


# Checking a case against the latest checkpoint --------------------------------------------------


@dataclass(frozen=True)
class Finding:
    aggregate: str  # case or order
    version: int
    message: str


@dataclass
class CaseCheck:
    """What the latest checkpoint says about one case's (and its order's) stored events."""

    head: Head | None
    checked: bool  # a public key was given and the head's signature verified
    covered: int = 0
    uncovered: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    whole: list[str] = field(default_factory=list)  # problems of the log as a whole
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.head.to_json() if self.head is not None else None,
            "checked": self.checked,
            "covered": self.covered,
            "uncovered": self.uncovered,
            "problems": [f.message for f in self.findings] + self.whole,
            "note": self.note,
        }


Stored = tuple[str, UUID, int, str, bytes]  # (aggregate, id, version, topic, state)


def check_events(
    store: EventStore, events: Sequence[Stored], public: Ed25519PublicKey | None
) -> CaseCheck:
    """Check each event against the latest checkpoint with an inclusion proof (a public key is
    needed to trust its root), and say which events no checkpoint covers yet."""
    tree = Tree(store)
    head = tree.latest()
    if head is None:
        return CaseCheck(
            None,
            False,
            uncovered=[
                {"aggregate": a, "version": v, "position": None} for a, _, v, _, _ in events
            ],
            note="no checkpoint has been taken: none of these events is anchored outside the store",
        )
    if public is None:
        return CaseCheck(
            head,
            False,
            note=f"not checked against the checkpoint: give --public-key (or ${PUBLIC_KEY_ENV})",
        )
    why = head.check(public)
    if why is not None:
        return CaseCheck(head, False, whole=[why])
    check = CaseCheck(head, True)
    positions = tree.positions(sorted({uid for _, uid, _, _, _ in events}))
    covered: list[tuple[Stored, int]] = []
    for e in events:
        aggregate, uid, version, _, _ = e
        position = positions.get((uid, version))
        if position is None or position > head.size:
            check.uncovered.append(
                {"aggregate": aggregate, "version": version, "position": position}
            )
        else:
            covered.append((e, position))
    try:
        tree.plan(lambda sub: [inclusion_proof(p - 1, head.size, sub) for _, p in covered])
        for (aggregate, uid, version, topic, state), position in covered:
            leaf = leaf_hash(leaf_bytes(uid, version, topic, state))
            proof = inclusion_proof(position - 1, head.size, tree.subtree)
            if verify_inclusion(position - 1, head.size, leaf, proof, head.root):
                check.covered += 1
                continue
            if tree.leaf(position - 1) != leaf:
                message = (
                    f"{aggregate} version {version} (log position {position}) is not the event "
                    f"the checkpoint at position {head.size} signed on {head.signed_at}: it was "
                    "changed, or put there, after it was signed"
                )
            else:
                message = (
                    f"the kept tree does not give the root signed at position {head.size}: "
                    f"{aggregate} version {version} (log position {position}) cannot be proven"
                )
            check.findings.append(Finding(aggregate, version, message))
        held = tree.count(head.size)
    except TreeDamaged as exc:
        check.whole.append(exc.message)
        return check
    if held < head.events:
        check.whole.append(
            f"the log holds {held} events up to position {head.size}, the checkpoint signed "
            f"{head.events}: {head.events - held} deleted since {head.signed_at}"
        )
    elif held > head.events:
        check.whole.append(
            f"the log holds {held} events up to position {head.size}, the checkpoint signed "
            f"{head.events}: {held - head.events} put there since {head.signed_at}"
        )
    return check


def bundle_section(store: EventStore, events: Sequence[Stored]) -> dict[str, Any] | None:
    """The latest signed head and an inclusion proof for each event it covers, for a dispute
    bundle (a verifier checks them offline with the public key); None if no checkpoint."""
    tree = Tree(store)
    head = tree.latest()
    if head is None:
        return None
    positions = tree.positions(sorted({uid for _, uid, _, _, _ in events}))
    entries: list[dict[str, Any]] = []
    wanted = [(a, v, positions.get((uid, v))) for a, uid, v, _, _ in events]
    tree.plan(
        lambda sub: [
            inclusion_proof(p - 1, head.size, sub) for _, _, p in wanted if p and p <= head.size
        ]
    )
    for aggregate, version, position in wanted:
        proof = None
        if position is not None and position <= head.size:
            proof = [h.hex() for h in inclusion_proof(position - 1, head.size, tree.subtree)]
        entries.append(
            {"aggregate": aggregate, "version": version, "position": position, "proof": proof}
        )
    return {**head.for_bundle(), "proofs": entries}


# Checking the whole log -------------------------------------------------------------------------


@dataclass
class LogCheck:
    heads: list[Head]
    problems: list[str] = field(default_factory=list)
    full: bool = False
    events_read: int = 0
    repaired: bool = False
    # The events re-read were those after ``start`` (a signed head's size, 0 for the whole log)
    # up to ``end``, the log's head when it was checked; ``unsigned`` of them after the latest
    # signed head. ``previously``: the signed size verified before this check, as recorded.
    start: int = 0
    end: int = 0
    unsigned: int = 0
    previously: int | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoints": len(self.heads),
            "latest": self.heads[-1].to_json() if self.heads else None,
            "full": self.full,
            "previously_verified": self.previously,
            "from": self.start + 1,
            "to": self.end,
            "events_read": self.events_read,
            "unsigned_events": self.unsigned,
            "repaired": self.repaired,
            "verified": not self.problems,
            "problems": self.problems,
            "note": self.note,
        }


def verify_log(
    store: EventStore,
    public: Ed25519PublicKey,
    *,
    full: bool = False,
    repair: bool = False,
    now: datetime | None = None,
) -> LogCheck:
    """Every signed head's signature and each head extending the one before (a consistency
    proof from the kept tree); the stored events from the last head verified with this key (or
    with ``full``, from position 1) up to the latest head against the signed roots, naming each
    position whose event is not the one signed; and the events after the latest head as
    signing checks them (``TailCheck``). When all is well, the latest head is recorded as
    verified (at ``now``), so the next check starts there. That record is only as good as the
    store it is kept in: whoever can write the store can move it on, so ``full`` (run now and
    then) trusts nothing of it.

    With ``repair`` (which implies ``full``), a kept tree that was lost or damaged is written
    again from the stored events, but only if those events give every signed root: a tree is
    never rebuilt over a history that differs from the one signed."""
    full = full or repair
    tree = Tree(store)
    heads = tree.heads()
    check = LogCheck(heads, full=full)
    for head in heads:
        why = head.check(public)
        if why is not None:
            check.problems.append(why)
    if check.problems:
        return check
    check.end = store.recorder.max_notification_id() or 0
    signed = heads[-1].size if heads else 0
    if heads:
        _check_signed(tree, heads, check, public, repair)
    tail = TailCheck(store)
    for _row in tail.rows(signed, check.end):
        pass
    check.events_read += tail.events_read
    check.unsigned = tail.events_read
    check.problems += [f"{f.message} (not yet signed)" for f in tail.failures]
    if tail.count > len(tail.failures):
        check.problems.append(f"... and {tail.count - len(tail.failures)} more not yet signed")
    if heads and not check.problems:
        try:
            tree.record_verified(signed, now or datetime.now(UTC), key_id(public))
        except PersistenceError as exc:
            # Verified all the same; the next check starts where the last recorded one did.
            why = " ".join(str(exc).split()) or type(exc).__name__
            check.note = f"verified, but not recorded (the store refused the write: {why})"
    return check


def _check_signed(
    tree: Tree, heads: list[Head], check: LogCheck, public: Ed25519PublicKey, repair: bool
) -> None:
    """The heads' consistency, then the stored events from the last verified head (or from
    position 1) against the signed roots."""
    try:
        for old, new in itertools.pairwise(heads):
            sizes = (old.size, new.size)
            tree.plan(functools.partial(_consistency, sizes))
            proof = _consistency(sizes, tree.subtree)
            if not verify_consistency(old.size, new.size, old.root, new.root, proof):
                check.problems.append(
                    f"the checkpoint at position {new.size} does not extend the one at "
                    f"position {old.size}: the kept tree or the history under it was rewritten"
                )
    except TreeDamaged as exc:
        check.problems.append(exc.message)
    check.previously = tree.verified(key_id(public))
    # A recorded size that is no signed head's (the table was written by hand) counts for
    # nothing: the check starts from position 1.
    if not check.full and check.previously in {h.size for h in heads}:
        check.start = check.previously or 0
    kept_problems, check.problems = check.problems, []
    pending = TreeRows() if repair else None
    differences = _recompute(tree, heads, check, pending, check.start)
    if pending is not None and not check.problems:
        tree.write(pending.write)
        check.repaired = True
    else:
        check.problems = kept_problems + check.problems + differences


def _consistency(sizes: tuple[int, int], subtree: Callable[[int, int], bytes]) -> list[bytes]:
    return consistency_proof(sizes[0], sizes[1], subtree)


def _recompute(
    tree: Tree, heads: list[Head], check: LogCheck, keep: TreeRows | None, start: int = 0
) -> list[str]:
    """Rebuild the tree from the stored events after position ``start`` (a signed head's size,
    the tree up to it taken from the kept tree once it gives that head's root) and compare it
    with every signed root past it (adding to ``check.problems``) and, to name what changed,
    with the kept leaves (returned). With ``keep`` (and ``start`` 0), the rebuilt tree's rows
    are collected there."""
    differences: list[str] = []
    labels: dict[int, str] = {}

    def compare(index: int, leaves: list[bytes]) -> None:
        try:
            kept = tree.chunk_leaves(index)
        except TreeDamaged:
            kept = b""
        base = index * CHUNK
        for i, leaf in enumerate(leaves):
            old = kept[32 * i : 32 * (i + 1)]
            if old == leaf or base + i >= heads[-1].size:
                continue
            position = base + i + 1
            label = labels.get(position)
            if len(old) < 32:
                differences.append(f"position {position}: no leaf kept for it")
            elif leaf == EMPTY_LEAF:
                differences.append(f"position {position}: the event signed there is gone (deleted)")
            elif old == EMPTY_LEAF:
                differences.append(
                    f"position {position} ({label}): an event was put where the checkpoint "
                    "signed none"
                )
            else:
                differences.append(
                    f"position {position} ({label}): not the event that was signed (changed)"
                )
        labels.clear()

    def chunk(index: int, leaves: list[bytes]) -> None:
        if keep is not None:
            keep.chunks[index] = b"".join(leaves)
        compare(index, leaves)

    def node(level: int, index: int, h: bytes) -> None:
        if keep is not None:
            keep.nodes[(level, index)] = h

    if start:
        try:
            builder = tree.builder(start)
        except TreeDamaged as exc:
            check.problems.append(exc.message)
            return []
        if builder.root() != next(h.root for h in heads if h.size == start):
            check.problems.append(
                f"the kept tree no longer gives the root signed at position {start}: run "
                "`aftersales checkpoint verify --full`"
            )
            return []
        builder.on_chunk, builder.on_node = chunk, node
    else:
        builder = Builder(on_chunk=chunk, on_node=node)
    pending = [h for h in heads if h.size > start]
    last = heads[-1].size

    def reached() -> None:
        while pending and builder.size == pending[0].size:
            head = pending.pop(0)
            if builder.root() != head.root:
                check.problems.append(
                    f"the events up to position {head.size} do not give the root signed on "
                    f"{head.signed_at}"
                )

    for position, leaf, label in tree.events(start, last):
        while builder.size < position - 1:
            builder.append(EMPTY_LEAF)
            reached()
        labels[position] = label
        builder.append(leaf)
        check.events_read += 1
        reached()
    while builder.size < last:
        builder.append(EMPTY_LEAF)
        reached()
    if builder.partial and builder.size > start:
        chunk(builder.size >> CHUNK_LEVEL, builder.partial)
    shown = differences[:SHOWN]
    more = len(differences) - len(shown)
    return shown + ([f"... and {more} more position(s)"] if more else [])


# An audit's events, anchored -------------------------------------------------------------------


def audited_events(audit: Audit) -> list[Stored]:
    """The case's stored events and its order's, as a checkpoint check takes them."""
    rows = [("case", e.stored) for e in audit.entries]
    rows += [("order", s) for s in audit.order_events]
    return [
        (
            aggregate,
            s.originator_id if isinstance(s.originator_id, UUID) else UUID(str(s.originator_id)),
            s.originator_version,
            s.topic,
            bytes(s.state),
        )
        for aggregate, s in rows
    ]


def anchor(store: EventStore, audit: Audit, public: Ed25519PublicKey | None) -> None:
    """Check an audit's events against the latest checkpoint and add what it finds to the
    audit: a problem for each event that is not the one signed (the case's own and its
    order's), and a line for the log as a whole (events deleted under it, a bad signature).
    Without a checkpoint in the store and without a key, the audit is left as it was."""
    check = check_events(store, audited_events(audit), public)
    if check.head is None and public is None:
        return
    for f in check.findings:
        if f.aggregate == "case":
            audit.problems.append(Problem("checkpoint", f.version, f.message))
        else:
            audit.problems.append(Problem("checkpoint", None, f.message, f.version))
    audit.problems += [Problem("checkpoint", None, m) for m in check.whole]
    audit.checkpoint = check.to_json()
