"""What a signed checkpoint costs: the Merkle tree over a million events, proofs, and a real store.

    python scripts/bench_checkpoint.py [--events 1000000] [--store-events 100000]
                                       [--url postgresql://127.0.0.1:5432/test]

1. The tree itself, in memory, over ``--events`` synthetic stored events of a typical size (the
   leaf hashes of engine/domain/events.py's ``leaf_bytes``, grown with engine/integrity/merkle.py's
   ``Builder`` as ``aftersales checkpoint`` grows it), beside the baseline of hashing the same bytes
   once with SHA-256 and nothing else; then the size of an inclusion proof (what a bundle carries
   per event) and of a consistency proof, and the time to make and check one.
2. A real store: ``--store-events`` events of a rule-abiding workload (scripts/workload.py: a
   checkpoint signs only events that verify) written into a PostgreSQL schema of their own
   (dropped at the end), a raw psycopg read of them (the baseline), reading and hashing them
   only (the tree without the checks), the first checkpoint over all of them (reading, checking,
   rebuilding every aggregate, hashing, keeping the tree, signing), a first ``checkpoint
   verify`` (every event), one more checkpoint after 1% more events, ``checkpoint verify`` then
   (the 1% since the one verified) and with ``--full``, the proofs of 50 events from the kept
   tree, and the space the tree tables take.

Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--store-events", type=int, default=100_000)
    parser.add_argument(
        "--url",
        default=os.environ.get("AFTERSALES_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test"),
    )
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eventsourcing.utils import get_topic
from psycopg.sql import SQL, Identifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aftersales.engine.domain.case_events import CaseRefunded
from aftersales.engine.domain.events import leaf_bytes
from aftersales.engine.integrity.checkpoint_store import LEAVES, NODES, Tree
from aftersales.engine.integrity.checkpoint_verify import check_events, verify_log
from aftersales.engine.integrity.checkpoints import take_checkpoint
from aftersales.engine.integrity.merkle import (
    CHUNK_LEVEL,
    Builder,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    perfect_root,
    range_hash,
    verify_consistency,
    verify_inclusion,
)
from aftersales.engine.storage.store import AftersalesStore
from scripts.bench_projections import raw_read
from scripts.workload import generate, say

TOPIC = get_topic(CaseRefunded)


def state_of(i: int) -> bytes:
    """A stored event of about 640 bytes, as a refund's JSON is."""
    return (
        b'{"actor":{"id":"staff-7","role":"merchant"},"amount":"39.90","at":"2026-11-04T10:00:00'
        b'+08:00","command_id":"bench-%d","due":null,"hash":"%s","owed_by":"merchant","paid_by":'
        b'"merchant","payee":"buyer","status":"refunded","timestamp":"2026-11-04T02:00:00.000000'
        b'+00:00","lines":{"CASE-RED-15":"39.90"},"note":"%s"}'
        % (i, hashlib.sha256(b"%d" % i).hexdigest().encode(), b"x" * 260)
    )


def tree_in_memory(n: int) -> list[str]:
    ids = [uuid.uuid4() for _ in range(min(n, 100_000))]
    states = [state_of(i) for i in range(len(ids))]
    say(f"hashing {n:,} leaves ...")

    def data(i: int) -> bytes:
        k = i % len(ids)
        return leaf_bytes(ids[k], i + 1, TOPIC, states[k])

    started = time.perf_counter()
    for i in range(n):
        hashlib.sha256(data(i)).digest()
    baseline = time.perf_counter() - started

    chunks: dict[int, bytes] = {}
    nodes: dict[tuple[int, int], bytes] = {}
    built = Builder(
        on_chunk=lambda index, leaves: chunks.__setitem__(index, b"".join(leaves)),
        on_node=lambda level, index, h: nodes.__setitem__((level, index), h),
    )
    started = time.perf_counter()
    for i in range(n):
        built.append(leaf_hash(data(i)))
    root = built.root()
    tree_s = time.perf_counter() - started
    if built.partial:
        chunks[n >> CHUNK_LEVEL] = b"".join(built.partial)

    def subtree(start: int, level: int) -> bytes:
        if level >= CHUNK_LEVEL:
            return nodes[(level, start >> level)]
        kept = chunks[start >> CHUNK_LEVEL]
        at = (start & ((1 << CHUNK_LEVEL) - 1)) * 32
        return perfect_root([kept[at + 32 * j : at + 32 * (j + 1)] for j in range(1 << level)])

    index = n // 3
    samples_make, samples_check = [], []
    for _ in range(200):
        started = time.perf_counter()
        proof = inclusion_proof(index, n, subtree)
        samples_make.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert verify_inclusion(index, n, leaf_hash(data(index)), proof, root)
        samples_check.append(time.perf_counter() - started)
    old = n // 2 + 1
    consistency = consistency_proof(old, n, subtree)
    assert verify_consistency(old, n, range_hash(0, old, subtree), root, consistency)
    kept_bytes = sum(len(v) for v in chunks.values()) + 32 * len(nodes)
    hex_json = len(proof) * (64 + 3)
    return [
        f"Merkle tree in memory, {n:,} synthetic events of {len(states[0])} bytes, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()} "
        f"({os.cpu_count()} cores, shared):",
        "",
        "| what | seconds | events/s | vs baseline |",
        "|---|---:|---:|---:|",
        f"| SHA-256 of each event's leaf bytes, nothing else (baseline) | {baseline:.2f} | "
        f"{n / baseline:,.0f} | 1 |",
        f"| the checkpoint's tree: leaf hashes, inner nodes, chunks kept | {tree_s:.2f} | "
        f"{n / tree_s:,.0f} | {tree_s / baseline:.2f}x |",
        "",
        "| proof | hashes | bytes (raw) | bytes in a bundle (hex JSON) | make | check |",
        "|---|---:|---:|---:|---:|---:|",
        f"| inclusion of one event in {n:,} | {len(proof)} | {32 * len(proof)} | ~{hex_json} | "
        f"{statistics.median(samples_make) * 1e6:.0f} µs | "
        f"{statistics.median(samples_check) * 1e6:.0f} µs |",
        f"| consistency, {old:,} to {n:,} | {len(consistency)} | {32 * len(consistency)} | "
        f"~{len(consistency) * 67} | | |",
        "",
        f"Kept tree: {kept_bytes / 1e6:.1f} MB ({len(chunks):,} leaf rows of 256 hashes, "
        f"{len(nodes):,} nodes).",
    ]


def real_store(conninfo: str, n: int) -> list[str]:
    schema = f"bench_cp_{uuid.uuid4().hex[:8]}"
    url = f"{conninfo}?schema={schema}"
    key = Ed25519PrivateKey.generate()
    store = AftersalesStore(url)
    try:
        say(f"writing {n:,} stored events into schema {schema} ...")
        generate(store, n)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SQL("VACUUM ANALYZE {}.aftersales_events").format(Identifier(schema)))
        say("raw read ...")
        rows, raw_s = raw_read(conninfo, schema)
        say("reading and hashing only ...")
        started = time.perf_counter()
        hashed = sum(1 for _ in Tree(store).events(0, rows + 1_000_000))
        hash_s = time.perf_counter() - started
        assert hashed == rows
        say("first checkpoint ...")
        started = time.perf_counter()
        first = take_checkpoint(store, key, datetime.now(UTC))
        first_s = time.perf_counter() - started
        assert first.head is not None and first.head.events == rows
        say("first verify ...")
        public = key.public_key()
        started = time.perf_counter()
        verified = verify_log(store, public)
        verify_first_s = time.perf_counter() - started
        assert not verified.problems and verified.events_read == rows, verified
        more = generate(store, max(1, n // 100), prefix="MORE-", seed=8)
        started = time.perf_counter()
        second = take_checkpoint(store, key, datetime.now(UTC))
        second_s = time.perf_counter() - started
        assert second.new_events == more
        say("verify since, and --full ...")
        started = time.perf_counter()
        verified = verify_log(store, public)
        verify_next_s = time.perf_counter() - started
        assert not verified.problems and verified.events_read == more, verified
        started = time.perf_counter()
        verified = verify_log(store, public, full=True)
        verify_full_s = time.perf_counter() - started
        assert not verified.problems and verified.events_read == rows + more, verified
        wanted = [
            uuid.UUID(str(r["originator_id"]))
            for r in store.query(
                "SELECT DISTINCT originator_id FROM {t}aftersales_events "
                "WHERE notification_id <= 100"
            )
        ][:10]
        events = [
            # uid, not s.originator_id (UUID | str to the library): the events read are uid's.
            ("case", uid, s.originator_version, s.topic, bytes(s.state))
            for uid in wanted
            for s in store.recorder.select_events(uid)
        ][:50]
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            check = check_events(store, events, key.public_key())
            samples.append(time.perf_counter() - started)
            assert check.covered == len(events) and not check.findings and not check.whole, check
        counts = []
        for _ in range(5):
            started = time.perf_counter()
            Tree(store).count(second.head.size if second.head else 0)
            counts.append(time.perf_counter() - started)
        with psycopg.connect(conninfo) as conn:
            row = conn.execute(
                "SELECT pg_total_relation_size(%s) + pg_total_relation_size(%s), "
                "pg_total_relation_size(%s)",
                (f"{schema}.{LEAVES}", f"{schema}.{NODES}", f"{schema}.aftersales_events"),
            ).fetchone()
            assert row is not None
            tree_mb, events_mb = row[0] / 1e6, row[1] / 1e6
    finally:
        store.close()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))
    return [
        f"A real store: PostgreSQL on loopback, {rows:,} stored events "
        f"({events_mb:.0f} MB with indexes):",
        "",
        "| what | events | seconds | events/s | vs raw read |",
        "|---|---:|---:|---:|---:|",
        f"| raw sequential read with psycopg (baseline) | {rows:,} | {raw_s:.2f} | "
        f"{rows / raw_s:,.0f} | 1 |",
        f"| read and hash only (the tree without its checks) | {rows:,} | {hash_s:.2f} | "
        f"{rows / hash_s:,.0f} | {hash_s / raw_s:.1f}x |",
        f"| first checkpoint: read, check, rebuild every aggregate, hash, keep the tree, sign | "
        f"{rows:,} | {first_s:.2f} | {rows / first_s:,.0f} | {first_s / raw_s:.1f}x |",
        f"| `checkpoint verify`, nothing verified before: every event | {rows:,} | "
        f"{verify_first_s:.2f} | {rows / verify_first_s:,.0f} | {verify_first_s / raw_s:.1f}x |",
        f"| next checkpoint after 1% more events | {more:,} | {second_s:.2f} | "
        f"{more / second_s:,.0f} | |",
        f"| `checkpoint verify` then: the events since the checkpoint verified | {more:,} | "
        f"{verify_next_s:.2f} | {more / verify_next_s:,.0f} | |",
        f"| `checkpoint verify --full`: every event | {rows + more:,} | {verify_full_s:.2f} | "
        f"{(rows + more) / verify_full_s:,.0f} | {verify_full_s / raw_s:.1f}x |",
        f"| proofs of {len(events)} events against the latest checkpoint (`audit --verify`'s "
        f"check, median of 5) | {len(events)} | {statistics.median(samples):.3f} | | |",
        f"| of which counting the events under the checkpoint (a deletion shows) | {rows + more:,} "
        f"| {statistics.median(counts):.3f} | | |",
        "",
        f"Tree tables: {tree_mb:.1f} MB beside the events' {events_mb:.0f} MB.",
    ]


def main() -> None:
    args = arguments().parse_args()
    lines = tree_in_memory(args.events)
    if args.store_events:
        lines += ["", *real_store(args.url.split("?")[0], args.store_events)]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
