"""Taking a checkpoint: the events after the last one checked, the tree grown over them, and
the new head signed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)

from aftersales.engine.domain.errors import Conflict, NotAllowed, Poisoned
from aftersales.engine.domain.events import Unreadable, leaf_bytes
from aftersales.engine.integrity.checkpoint_store import (
    CHECKPOINTS,
    FLUSH_CHUNKS,
    LEAVES,
    NODES,
    Tree,
)
from aftersales.engine.integrity.merkle import (
    CHUNK_LEVEL,
    EMPTY_LEAF,
    leaf_hash,
)
from aftersales.engine.integrity.reading import StoredRow, check_link, read_rows
from aftersales.engine.integrity.tree_heads import Head, TreeDamaged
from aftersales.engine.storage.store import AftersalesStore

# Events read per query while the events after a checkpoint are checked, so also at most as
# many aggregates rebuilt per query: memory stays flat however long the unsigned tail.
CHECK_BATCH = 1000
# Aggregates already rebuilt while a tail is checked, remembered (with the version they were
# rebuilt to) so an order whose events run all along the tail is rebuilt once, not per batch.
# Bounded: past it the oldest are forgotten and at worst rebuilt again.
REMEMBERED = 50_000
# Failures kept to be named (every one is counted).
SHOWN = 20


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
    - every aggregate those events belong to rebuilds (``AftersalesStore.load_many``, one query a
      batch: its whole chain checked, its history replayed through the audit's cheap checks,
      and a case's last version against its index row, read in the same snapshot: a case's
      last event deleted, or an event put after it that the index never knew, shows there).

    The failures are collected (the first ``SHOWN`` kept, all counted), not raised."""

    store: AftersalesStore
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


def take_checkpoint(store: AftersalesStore, key: Ed25519PrivateKey, now: datetime) -> Taken:
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
