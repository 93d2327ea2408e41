"""The relay's speed beside the projections' catch-up of the same log, and its latency, in one run.

    python scripts/bench_relay.py [--events 100000] [--backend postgres|sqlite]
                                  [--url postgresql://127.0.0.1:5432/test] [--nats nats://...]

Writes a synthetic log through the real aggregates into a store of its own (a new PostgreSQL
schema, or a SQLite file), then measures in the same run:

- catching every projection up from empty (the baseline);
- the relay publishing the whole log to a stream of its own, every batch acknowledged before its
  tracking record is written (the ratio relay / projections is the figure: the goal is >= 0.5);
- with the relay following the log (``run --follow``, the same loop), the time from a command's
  commit (``Engine.handle`` returned) to the broker's acknowledgement of its event (the relay's
  ``on_acked`` hook, called once the batch is acknowledged and tracked), over ``--commands``
  single commands a few milliseconds apart: p50 and p99.

Prints a Markdown table; drops the schema, the file and the stream at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--commands", type=int, default=300)
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument(
        "--url",
        default=os.environ.get("AFTERSALES_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test"),
    )
    parser.add_argument("--nats", help="the NATS server (default: the relay's, the local one)")
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

import nats
import psycopg
from psycopg.sql import SQL, Identifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import PlaceOrder
from aftersales.projections.registry import VIEWS
from aftersales.projections.relay import DEFAULT_NATS, Message, Relay, RelayConfig
from aftersales.projections.runner import Projector
from scripts.workload import generate, say


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drop_stream(servers: str, name: str) -> None:
    nc = await nats.connect(servers)
    try:
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


def main() -> None:
    args = arguments().parse_args()
    args.nats = args.nats or DEFAULT_NATS

    tag = uuid.uuid4().hex[:8]
    conninfo = args.url.split("?", 1)[0]
    folder = tempfile.TemporaryDirectory()
    url = (
        f"{conninfo}?schema=bench_relay_{tag}"
        if args.backend == "postgres"
        else f"sqlite:///{folder.name}/bench.db"
    )
    config = RelayConfig(servers=args.nats, stream=f"BENCH_{tag}", prefix=f"bench{tag}")
    engine = Engine(url)
    store = engine.store
    try:
        say(f"writing {args.events:,} events ...")
        written = generate(store, args.events)

        say("projections: catching up from empty ...")
        started = time.perf_counter()
        Projector(store).catch_up(VIEWS)
        project_s = time.perf_counter() - started

        say("relay: publishing the whole log ...")
        relay = Relay(store, config)
        started = time.perf_counter()
        published = asyncio.run(relay.run())
        relay_s = time.perf_counter() - started
        assert published == relay.position() or published > 0

        say(f"relay --follow: {args.commands} commands, commit -> acknowledgement ...")
        acked: dict[int, float] = {}

        def on_acked(messages: Sequence[Message]) -> None:
            now = time.perf_counter()
            for m in messages:
                acked[m.notification_id] = now

        follower = Relay(store, config, on_acked=on_acked)
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        thread = threading.Thread(
            target=lambda: loop.run_until_complete(follower.run(stop, follow=True, poll=0.005))
        )
        thread.start()
        committed: dict[int, float] = {}
        for i in range(args.commands):
            engine.handle(
                PlaceOrder(order_id=f"LAT-{i}", merchant="m", buyer="b", lines=["X:1:1.00"])
            )
            committed[store.recorder.max_notification_id() or 0] = time.perf_counter()
            time.sleep(0.01)
        deadline = time.monotonic() + 30
        while not committed.keys() <= acked.keys() and time.monotonic() < deadline:
            time.sleep(0.01)
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        latencies = [(acked[n] - t) * 1000 for n, t in committed.items() if n in acked]

        project_rate, relay_rate = written / project_s, published / relay_s
        lines = [
            f"Relay benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()} "
            f"({os.cpu_count()} cores, shared), {args.backend}, NATS on loopback; "
            f"{written:,} events; relay batch {config.batch_size}.",
            "",
            "| what | events | seconds | events/s | vs projections |",
            "|---|---:|---:|---:|---:|",
            f"| projections: catch-up from empty (baseline) | {written:,} | {project_s:.2f} | "
            f"{project_rate:,.0f} | 1 |",
            f"| relay: whole log published and acknowledged | {published:,} | {relay_s:.2f} | "
            f"{relay_rate:,.0f} | {relay_rate / project_rate:.2f} |",
            "",
            f"Commit -> broker acknowledgement with the relay following ({len(latencies)} of "
            f"{args.commands} commands, 10 ms apart, poll 5 ms): p50 "
            f"{statistics.median(latencies):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms, "
            f"max {max(latencies):.1f} ms.",
        ]
        print("\n".join(lines))
    finally:
        engine.close()
        asyncio.run(drop_stream(args.nats, config.stream))
        if args.backend == "postgres":
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(
                    SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(f"bench_relay_{tag}"))
                )
        folder.cleanup()


if __name__ == "__main__":
    main()
