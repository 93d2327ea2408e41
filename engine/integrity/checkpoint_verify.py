"""Signed checkpoints of the event log: forging history needs a key the store does not hold.

The hash chains (engine/domain/events.py) show an event changed by someone who did not re-seal its
chain; whoever can write to the database can re-seal it. A checkpoint anchors the log outside
the database: a Merkle tree over every event up to a position of the log
(engine/integrity/merkle.py, in the manner of Certificate Transparency), its root signed with an
Ed25519 key the store never sees. The signed tree head names the position (``size``, the tree's
leaves: one per notification id from 1, a position no event holds being an empty leaf), the events
it covers, the root, when it was signed and the signing key's id.

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

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)
from eventsourcing.persistence import PersistenceError

from aftersales.engine.domain.events import leaf_bytes
from aftersales.engine.integrity.checkpoint_store import Tree
from aftersales.engine.integrity.checkpoints import SHOWN, TailCheck, TreeRows
from aftersales.engine.integrity.merkle import (
    CHUNK,
    CHUNK_LEVEL,
    EMPTY_LEAF,
    Builder,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from aftersales.engine.integrity.signing_keys import PUBLIC_KEY_ENV, key_id
from aftersales.engine.integrity.tree_heads import Head, TreeDamaged
from aftersales.engine.storage.store import AftersalesStore

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
    store: AftersalesStore, events: Sequence[Stored], public: Ed25519PublicKey | None
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


def bundle_section(store: AftersalesStore, events: Sequence[Stored]) -> dict[str, Any] | None:
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
    store: AftersalesStore,
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
