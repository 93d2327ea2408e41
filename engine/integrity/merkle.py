"""A Merkle tree over the event log, in the manner of Certificate Transparency (RFC 6962).

Pure functions and one small builder: no I/O, no clock. ``engine/integrity/checkpoint_verify.py``
stores the tree and signs its roots.

- A leaf is ``SHA-256(0x00 || data)``, an inner node ``SHA-256(0x01 || left || right)``.
- The tree over ``n`` leaves splits at ``k``, the largest power of two below ``n``: the left
  subtree holds the first ``k`` leaves (a perfect tree), the right one the rest (RFC 6962,
  section 2.1). So every subtree starts at a multiple of its left part's size, and the tree of
  ``n`` leaves is the perfect subtrees of ``n``'s binary digits, largest first, folded from the
  right.
- An inclusion proof of leaf ``i`` in a tree of ``n`` leaves is the list of sibling hashes from
  the leaf up (RFC 6962 2.1.1, ``PATH``); a consistency proof between sizes ``m <= n`` shows the
  tree of ``n`` leaves begins with the tree of ``m`` (RFC 6962 2.1.2, ``PROOF``). Both are
  verified with the algorithms of RFC 9162 (2.1.3.2 and 2.1.4.2).

Subtree hashes come from a function ``subtree(start, level)``: the hash of the perfect subtree of
``2**level`` leaves beginning at leaf ``start``, however the caller keeps them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Subtree = Callable[[int, int], bytes]

# Leaves are kept in chunks of 2**CHUNK_LEVEL; the nodes above a chunk are kept one by one.
CHUNK_LEVEL = 8
CHUNK = 1 << CHUNK_LEVEL


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


# A position of the log that holds no event (an id a rolled-back transaction took) is a leaf of
# no data: no stored event's leaf data is empty.
EMPTY_LEAF = leaf_hash(b"")


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_root(leaves: Sequence[bytes]) -> bytes:
    """The root of a perfect tree over leaf hashes (their count a power of two)."""
    level = list(leaves)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def fold(perfect: Sequence[bytes]) -> bytes:
    """The root of a tree given the roots of its perfect subtrees, largest first."""
    root = perfect[-1]
    for h in reversed(perfect[:-1]):
        root = node_hash(h, root)
    return root


def decompose(start: int, size: int) -> list[tuple[int, int]]:
    """The perfect subtrees ``(start, level)`` of ``size`` leaves from ``start``, largest first
    (``start`` a multiple of the largest)."""
    parts = []
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            parts.append((start, level))
            start += 1 << level
    return parts


def range_hash(start: int, end: int, subtree: Subtree) -> bytes:
    """The root of the tree over leaves ``[start, end)`` (RFC 6962's MTH of that range)."""
    return fold([subtree(s, level) for s, level in decompose(start, end - start)])


def root_of(leaves: Sequence[bytes]) -> bytes:
    """The root of the tree over these leaf hashes (a plain, whole computation: for tests,
    small trees and the verifier)."""
    if not leaves:
        return hashlib.sha256(b"").digest()

    def subtree(start: int, level: int) -> bytes:
        return perfect_root(leaves[start : start + (1 << level)])

    return range_hash(0, len(leaves), subtree)


def inclusion_proof(index: int, size: int, subtree: Subtree) -> list[bytes]:
    """RFC 6962 ``PATH(index, D[0:size])``: the sibling hashes from the leaf up."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    path: list[bytes] = []
    start, n, m = 0, size, index
    while n > 1:
        k = _split(n)
        if m < k:
            path.append(range_hash(start + k, start + n, subtree))
            n = k
        else:
            path.append(subtree(start, k.bit_length() - 1))
            start, n, m = start + k, n - k, m - k
    path.reverse()
    return path


def consistency_proof(old: int, new: int, subtree: Subtree) -> list[bytes]:
    """RFC 6962 ``PROOF(old, D[0:new])``: what shows the tree of ``new`` leaves extends the
    tree of ``old`` leaves."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from {old} to {new}")
    proof: list[bytes] = []
    start, n, m, whole = 0, new, old, True
    while m != n:
        k = _split(n)
        if m <= k:
            proof.append(range_hash(start + k, start + n, subtree))
            n = k
        else:
            proof.append(subtree(start, k.bit_length() - 1))
            start, n, m, whole = start + k, n - k, m - k, False
    if not whole:
        proof.append(range_hash(start, start + m, subtree))
    proof.reverse()
    return proof


def _up_to_right_child(fn: int, sn: int) -> tuple[int, int]:
    """RFC 9162's "right-shift fn and sn equally until LSB(fn) is set or fn is 0"."""
    while fn and not fn & 1:
        fn >>= 1
        sn >>= 1
    return fn, sn


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 2.1.3.2: does ``proof`` show ``leaf`` at ``index`` in the tree with ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _up_to_right_child(fn, sn)
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: does ``proof`` show the tree of ``new`` leaves with ``new_root``
    extends the tree of ``old`` leaves with ``old_root``?"""
    if not 0 < old <= new:
        return False
    if old == new:
        return not proof and old_root == new_root
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old tree is a subtree of the new one
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            fn, sn = _up_to_right_child(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


@dataclass
class Builder:
    """The tree grown one leaf at a time, keeping only its right edge: the roots of the whole
    chunks' perfect subtrees (``frontier``, as ``(start, level, hash)``, largest first) and the
    leaves of the chunk being filled (``partial``). Each chunk completed and each node above
    the chunks completed is handed to ``on_chunk`` / ``on_node``, to be kept."""

    frontier: list[tuple[int, int, bytes]] = field(default_factory=list)
    partial: list[bytes] = field(default_factory=list)
    size: int = 0
    on_chunk: Callable[[int, list[bytes]], None] = lambda index, leaves: None
    on_node: Callable[[int, int, bytes], None] = lambda level, index, hash: None

    def append(self, leaf: bytes) -> None:
        self.partial.append(leaf)
        self.size += 1
        if len(self.partial) == CHUNK:
            start = self.size - CHUNK
            self.on_chunk(start >> CHUNK_LEVEL, self.partial)
            self._push(start, CHUNK_LEVEL, perfect_root(self.partial))
            self.partial = []

    def _push(self, start: int, level: int, h: bytes) -> None:
        self.on_node(level, start >> level, h)
        while self.frontier and self.frontier[-1][1] == level:
            left_start, _, left = self.frontier.pop()
            start, level, h = left_start, level + 1, node_hash(left, h)
            self.on_node(level, start >> level, h)
        self.frontier.append((start, level, h))

    def root(self) -> bytes:
        """The root of the tree over every leaf appended so far."""
        if self.size == 0:
            return hashlib.sha256(b"").digest()
        parts = [h for _, _, h in self.frontier]
        if self.partial:
            base = self.size - len(self.partial)

            def in_chunk(start: int, level: int) -> bytes:
                return perfect_root(self.partial[start - base : start - base + (1 << level)])

            parts += [in_chunk(s, lv) for s, lv in decompose(base, len(self.partial))]
        return fold(parts)
