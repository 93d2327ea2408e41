"""Projection speed on PostgreSQL beside a raw psycopg read of the same log, in one run.

    python scripts/bench_projections.py [--events 1000000] [--url postgresql://127.0.0.1:5432/test]

Writes a synthetic log through the real aggregates (bulk saves) into a schema of its own, then
measures: a raw sequential read of the events table with psycopg (the baseline); catching every
projection up from empty; a rebuild; catching up on freshly appended events; the merchant
dashboard query for one merchant and a return-rate report; and what checking every event read
costs (engine/integrity/reading.py): a rebuild and loading cases, each without and with the checks,
in turn, a few times in the same run (medians). Prints a Markdown table and drops the schema at
the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--append", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument(
        "--url",
        default=os.environ.get("AFTERSALES_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test"),
    )
    parser.add_argument(
        "--cases", type=int, default=2000, help="Cases loaded, with and without the checks."
    )
    parser.add_argument(
        "--pairs", type=int, default=3, help="Unchecked/checked runs of each, in turn."
    )
    parser.add_argument("--keep", action="store_true", help="Do not drop the schema.")
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

import psycopg
from psycopg.sql import SQL, Identifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.dashboard import dashboard
from aftersales.projections.registry import VIEWS
from aftersales.projections.return_rates import return_rates
from aftersales.projections.runner import Projector
from scripts.workload import START, generate, say


def raw_read(conninfo: str, schema: str) -> tuple[int, float]:
    """Every event, in notification order, through one server-side cursor."""
    started = time.perf_counter()
    rows = 0
    with psycopg.connect(conninfo) as conn, conn.cursor(name="raw") as curs:
        curs.itersize = 10_000
        curs.execute(
            SQL(
                "SELECT notification_id, originator_id, originator_version, topic, state "
                "FROM {}.aftersales_events ORDER BY notification_id"
            ).format(Identifier(schema))
        )
        for _ in curs:
            rows += 1
    return rows, time.perf_counter() - started


def timed_ms(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _ratios(pairs: list[tuple[float, float]]) -> str:
    """Each pair's checked / unchecked, in the order run."""
    return ", ".join(f"{checked / plain:.2f}" for plain, checked in pairs)


def _load(store: AftersalesStore, case_ids: list[uuid.UUID], verify: bool) -> float:
    """Seconds to load these cases one by one, checking each event read or not."""
    store.verify_reads = verify
    try:
        return _timed(lambda: [store.load(uid) for uid in case_ids])
    finally:
        store.verify_reads = True


def main() -> None:
    args = arguments().parse_args()

    conninfo = args.url.split("?", 1)[0]
    schema = f"bench_proj_{uuid.uuid4().hex[:8]}"
    url = f"{conninfo}?schema={schema}"

    store = AftersalesStore(url)
    try:
        say(f"writing {args.events:,} events into schema {schema} ...")
        started = time.perf_counter()
        written = generate(store, args.events, progress=lambda n: say(f"  {n:,} events"))
        write_s = time.perf_counter() - started
        say(f"  {written:,} events in {write_s:.1f} s")
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SQL("VACUUM ANALYZE {}.aftersales_events").format(Identifier(schema)))

        projector = Projector(store)
        say("raw sequential read (baseline) ...")
        rows, raw_s = raw_read(conninfo, schema)
        say("catching up from empty ...")
        started = time.perf_counter()
        projector.catch_up(VIEWS, args.batch_size)
        catch_s = time.perf_counter() - started
        say("rebuilding ...")
        started = time.perf_counter()
        projector.rebuild(VIEWS, args.batch_size)
        rebuild_s = time.perf_counter() - started
        say("raw sequential read again ...")
        rows2, raw2_s = raw_read(conninfo, schema)

        say(f"appending {args.append:,} events and catching up ...")
        appended = generate(store, args.append, seed=11, prefix="KS-B")
        started = time.perf_counter()
        projector.catch_up(VIEWS, args.batch_size)
        append_s = time.perf_counter() - started

        # Unchecked and checked in turn, --pairs times, so that the load of a shared machine
        # falls on both alike; medians, and the median of each pair's ratio.
        unchecked = Projector(store, verify=False)
        case_ids = [
            uuid.UUID(str(r["case_id"]))
            for r in store.query(
                "SELECT case_id FROM {t}aftersales_cases ORDER BY case_id LIMIT ?", (args.cases,)
            )
        ]
        rebuilds: list[tuple[float, float]] = []
        loads: list[tuple[float, float]] = []
        for pair in range(args.pairs):
            say(
                f"rebuild and {len(case_ids):,} case loads, unchecked then checked "
                f"({pair + 1}/{args.pairs}) ..."
            )
            rebuilds.append(
                (
                    _timed(lambda: unchecked.rebuild(VIEWS, args.batch_size)),
                    _timed(lambda: projector.rebuild(VIEWS, args.batch_size)),
                )
            )
            loads.append(
                (_load(store, case_ids, verify=False), _load(store, case_ids, verify=True))
            )
        rebuild_plain_s = statistics.median(p for p, _ in rebuilds)
        rebuild_checked_s = statistics.median(c for _, c in rebuilds)
        rebuild_ratio = statistics.median(c / p for p, c in rebuilds)
        load_plain_s = statistics.median(p for p, _ in loads)
        load_checked_s = statistics.median(c for _, c in loads)
        load_ratio = statistics.median(c / p for p, c in loads)

        merchant = "shop-007"
        now = START + timedelta(days=20)
        dash_ms = timed_ms(lambda: dashboard(store, merchant, now), 21)
        rates_ms = timed_ms(
            lambda: return_rates(store, "merchant", START, START + timedelta(days=30)), 5
        )
        sku_ms = timed_ms(
            lambda: return_rates(store, "sku", START, START + timedelta(days=30), merchant), 5
        )

        raw_rate = (rows + rows2) / (raw_s + raw2_s)
        head = projector.head()
        lines = [
            f"Projection benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
            f"{platform.node()} ({os.cpu_count()} cores, shared), PostgreSQL on loopback; "
            f"{written:,} events written through the aggregates in {write_s:.0f} s "
            f"({written / write_s:,.0f}/s); batch {args.batch_size} events per transaction.",
            "",
            "| what | events | seconds | events/s | vs raw read |",
            "|---|---:|---:|---:|---:|",
            f"| raw sequential read with psycopg (baseline, mean of 2) | {rows:,} | "
            f"{(raw_s + raw2_s) / 2:.2f} | {raw_rate:,.0f} | 1 |",
        ]
        for what, n, secs in (
            ("catch-up of both projections from empty", rows, catch_s),
            ("rebuild of both projections (`project rebuild`)", rows, rebuild_s),
            (f"catch-up on {appended:,} appended events", appended, append_s),
        ):
            rate = n / secs
            lines.append(f"| {what} | {n:,} | {secs:.2f} | {rate:,.0f} | 1/{raw_rate / rate:.1f} |")
        lines += [
            "",
            "What checking costs (each event's hash against its content and the event before "
            "it, its times; engine/integrity/reading.py), measured in this run:",
            "",
            f"| what | unchecked (median of {args.pairs}) | checked (median) | checked / "
            "unchecked (median of the pairs) |",
            "|---|---:|---:|---:|",
            f"| rebuild of every projection, {rows:,} events | {rebuild_plain_s:.2f} s "
            f"({rows / rebuild_plain_s:,.0f}/s) | {rebuild_checked_s:.2f} s "
            f"({rows / rebuild_checked_s:,.0f}/s) | {rebuild_ratio:.2f} "
            f"({_ratios(rebuilds)}) |",
            f"| loading {len(case_ids):,} cases one by one (`case show`'s read) | "
            f"{load_plain_s * 1000 / len(case_ids):.3f} ms each | "
            f"{load_checked_s * 1000 / len(case_ids):.3f} ms each | {load_ratio:.2f} "
            f"({_ratios(loads)}) |",
            "",
            "| query | median ms |",
            "|---|---:|",
            f"| `report dashboard --merchant {merchant}` (21 runs) | {dash_ms:.1f} |",
            f"| `report return-rates --by merchant`, 30-day cohort, all shops (5 runs) | "
            f"{rates_ms:.1f} |",
            f"| `report return-rates --by sku --merchant {merchant}` (5 runs) | {sku_ms:.1f} |",
            "",
            f"Log head {head:,}; goals: rebuild at no less than 1/10 of the raw read "
            f"({'met' if rows / rebuild_s >= raw_rate / 10 else 'NOT met'}), dashboard under "
            f"50 ms ({'met' if dash_ms < 50 else 'NOT met'}).",
        ]
        print("\n".join(lines))
    finally:
        store.close()
        if not args.keep:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


if __name__ == "__main__":
    main()
