"""Benchmark the clock on PostgreSQL: many open cases, a tick that finds nothing due, and the
rate at which due deadlines are fired, beside raw PostgreSQL baselines measured in the same run.

    python scripts/bench_tick.py [URL] [--cases 1000000] [--due 5000] [--max-build-seconds 900]

URL defaults to postgresql://127.0.0.1:5432/test. The benchmark works in a schema of its own,
dropped at the end. Prints a Markdown table on stdout; progress goes to stderr.

The open cases are built through the real aggregates (``Order.place``, ``ReturnCase.open``,
``Order.link_case``: the same events, hash chains and case-index rows the engine writes), saved
in bulk: one ``AftersalesStore.save`` of a few thousand new aggregates per transaction. Case
``i`` is a refund-only request opened at ``T0 + i`` seconds, so its merchant's 48 hours end at
``T0 + 48 h + i`` seconds: a tick at ``T0 + 48 h - 1 s`` finds nothing due among them all, and a
tick at ``T0 + 48 h + (n - 1) s`` finds exactly the first n due. Firing one is the heaviest
deadline there is: the auto-approval, the refund, and the order's lines released (three events on
two aggregates).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=5_000, help="deadlines fired in groups")
    parser.add_argument(
        "--due-single", type=int, default=2_000, help="deadlines then fired one per transaction"
    )
    parser.add_argument("--chunk", type=int, default=2_000, help="cases per bulk save")
    parser.add_argument("--runs", type=int, default=9, help="runs of the empty tick")
    parser.add_argument("--max-build-seconds", type=float, default=900.0)
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

import psycopg
from psycopg.sql import SQL, Identifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.tick import due_deadlines, tick
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.events import Act
from aftersales.engine.domain.order import Order
from aftersales.engine.domain.order_events import OrderLine
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.values import Actor, CaseType, Role
from aftersales.engine.storage.case_index import case_row
from scripts.workload import say

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=CST)
REVIEW = timedelta(hours=48)


def conninfo(url: str) -> str:
    return url.split("?", 1)[0]


# Building the open cases -----------------------------------------------------------------------


def build_chunk(start: int, size: int, policy: Policy) -> tuple[list[Any], list[Any]]:
    """Cases start..start+size-1, each on an order of its own, through the real aggregates."""
    recorded = datetime.now(UTC)
    aggregates: list[Any] = []
    rows = []
    lines = [OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("19.90"), category="apparel")]
    for i in range(start, start + size):
        opened_at = T0 + timedelta(seconds=i)
        placed = Act(
            at=opened_at - timedelta(hours=2),
            actor=Actor(role=Role.PLATFORM, id="order-system"),
            command_id=str(uuid.uuid4()),
            recorded_at=recorded,
        )
        order = Order.place(
            f"BT-{i:08d}",
            merchant_id=f"shop-{i % 1000}",
            buyer_id=f"buyer-{i}",
            lines=lines,
            act=placed,
        )
        act = Act(
            at=opened_at,
            actor=Actor(role=Role.BUYER, id=f"buyer-{i}"),
            command_id=str(uuid.uuid4()),
            recorded_at=recorded,
        )
        case_lines = order.case_lines([])
        case = ReturnCase.open(
            uuid.uuid4(),
            order,
            case_type=CaseType.REFUND_ONLY,
            reason="quality.bench",
            amount=Decimal("19.90"),
            lines=case_lines,
            evidence=[],
            note=None,
            policy=policy,
            act=act,
        )
        order.link_case(case.id, case_lines, act)
        aggregates += [order, case]
        rows.append(case_row(case))
    return aggregates, rows


def build(engine: Engine, cases: int, chunk: int, max_seconds: float) -> tuple[int, float, int]:
    """Build up to ``cases`` open cases; stop early at ``max_seconds``. Returns the number
    built, the seconds taken and the events written."""
    started = time.perf_counter()
    built = 0
    events = 0
    next_report = 50_000
    while built < cases:
        size = min(chunk, cases - built)
        aggregates, rows = build_chunk(built, size, engine.policy)
        events += sum(len(a.pending_events) for a in aggregates)
        engine.store.save(*aggregates, cases=rows)
        built += size
        elapsed = time.perf_counter() - started
        if built >= next_report:
            say(f"  built {built:,} cases in {elapsed:.0f} s ({built / elapsed:,.0f}/s)")
            next_report += 50_000
        if elapsed > max_seconds and built < cases:
            say(f"  stopping the build at {built:,} cases: over {max_seconds:.0f} s")
            break
    return built, time.perf_counter() - started, events


# Raw PostgreSQL baselines ---------------------------------------------------------------------


def raw_baselines(url: str, schema: str, seconds: float = 3.0) -> dict[str, float]:
    """Single-row INSERT with one commit each (what every fire must at least pay), and a
    round trip (SELECT 1): per second, one connection, psycopg, measured now."""
    out: dict[str, float] = {}
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        table = Identifier(schema, "bench_scratch")
        conn.execute(
            SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, body text NOT NULL)").format(table)
        )
        insert = SQL("INSERT INTO {} (body) VALUES (%s)").format(table)
        out["insert_commit"] = _rate(lambda: conn.execute(insert, ("x" * 200,)), seconds)
        out["round_trip"] = _rate(lambda: conn.execute("SELECT 1").fetchone(), seconds)
        conn.execute(SQL("DROP TABLE {}").format(table))
    return out


def _rate(call: Callable[[], object], seconds: float) -> float:
    n = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(50):
            call()
        n += 50
    return n / elapsed


# The measurements -------------------------------------------------------------------------------


def median_seconds(call: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = arguments()
    args = parser.parse_args()
    if not args.url.startswith("postgresql://") or "?" in args.url:
        parser.error("give a postgresql://host:port/db URL without options (the schema is ours)")

    # A stop signal unwinds through the finally below, which drops the schema.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))
    schema = f"bench_tick_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    store = f"{args.url}?schema={schema}"
    say(f"schema {schema}")
    try:
        with Engine(store) as engine:
            say(f"building {args.cases:,} open cases in chunks of {args.chunk:,}")
            built, build_s, events = build(engine, args.cases, args.chunk, args.max_build_seconds)
            if built < args.due + args.due_single:
                raise SystemExit(f"only {built} cases built: fewer than the deadlines to fire")
            # What autovacuum does some time after a bulk load, done now so the measurements
            # see a settled store. Without statistics on the events table, PostgreSQL plans the
            # library's prepared "events of one aggregate" query for thousands of rows (a
            # parallel bitmap scan, JIT-compiled): tens of milliseconds per case loaded.
            say("VACUUM ANALYZE")
            started = time.perf_counter()
            with psycopg.connect(conninfo(args.url), autocommit=True) as conn:
                for table in ("aftersales_events", "aftersales_cases", "aftersales_commands"):
                    conn.execute(SQL("VACUUM ANALYZE {}").format(Identifier(schema, table)))
            say(f"  {time.perf_counter() - started:.0f} s")

            say("raw baselines")
            raw = raw_baselines(args.url, schema)

            say("an empty tick")
            nothing_due = T0 + REVIEW - timedelta(seconds=1)
            assert tick(engine, nothing_due).fired == []
            empty_tick = median_seconds(lambda: tick(engine, nothing_due), args.runs)
            empty_query = median_seconds(lambda: due_deadlines(engine, nothing_due), args.runs)

            say(f"firing {args.due:,} due deadlines")
            now = T0 + REVIEW + timedelta(seconds=args.due - 1)
            started = time.perf_counter()
            fired = tick(engine, now)
            grouped_s = time.perf_counter() - started
            assert len(fired.fired) == args.due and not fired.failed, fired.to_json()["failed"]

            say(f"firing {args.due_single:,} more, one transaction each")
            now = T0 + REVIEW + timedelta(seconds=args.due + args.due_single - 1)
            started = time.perf_counter()
            single = tick(engine, now, group=1)
            single_s = time.perf_counter() - started
            assert len(single.fired) == args.due_single and not single.failed

            assert tick(engine, now).fired == []  # idempotent: nothing left due by then
            open_left = engine.store.query(
                "SELECT count(*) AS n FROM {t}aftersales_cases WHERE status = ?",
                ("awaiting_merchant",),
            )[0]["n"]
    finally:
        with psycopg.connect(conninfo(args.url), autocommit=True) as conn:
            conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))
        say(f"dropped schema {schema}")

    grouped_rate = args.due / grouped_s
    single_rate = args.due_single / single_s
    rt_ms = 1000 / raw["round_trip"]
    print(
        f"Clock benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"PostgreSQL on {args.url.split('/')[2]}"
    )
    print()
    print(
        f"Built {built:,} open cases ({events:,} events) in {build_s:.0f} s "
        f"({built / build_s:,.0f} cases/s, {events / build_s:,.0f} events/s); "
        f"{int(open_left):,} still open at the end."
    )
    print()
    print("| measure | result | raw PostgreSQL baseline (same run) | ratio |")
    print("|---|---|---|---|")
    print(
        f"| tick finding nothing due among {built:,} open cases (median of {args.runs}) "
        f"| {empty_tick * 1000:.2f} ms | round trip `SELECT 1`: {rt_ms:.3f} ms "
        f"| {empty_tick * 1000 / rt_ms:.1f} round trips |"
    )
    print(
        f"| of which the index query | {empty_query * 1000:.2f} ms | {rt_ms:.3f} ms "
        f"| {empty_query * 1000 / rt_ms:.1f} round trips |"
    )
    print(
        f"| firing {args.due:,} due auto-approvals (groups of 50 per transaction) "
        f"| {grouped_rate:,.0f} /s | single-row INSERT commits: {raw['insert_commit']:,.0f} /s "
        f"| {grouped_rate / raw['insert_commit']:.2f} |"
    )
    print(
        f"| firing {args.due_single:,} more, one transaction each (the path after a conflict) "
        f"| {single_rate:,.0f} /s | {raw['insert_commit']:,.0f} /s "
        f"| {single_rate / raw['insert_commit']:.2f} |"
    )


if __name__ == "__main__":
    main()
