"""Benchmark: the audit of one case with 50 events, on PostgreSQL, among many other cases.

Builds, in its own schema (dropped at the end), N other cases (each an order placed and a
refund-only case opened on it: three events and a case-index row), written with bulk
``AftersalesStore.save(...)`` calls of many aggregates each; then one case with 50 events (opened,
rejected, then 24 rounds of escalation and a ruling for the merchant) through the engine.

Then, in the same run, the median of:

- the audit's own work (``engine.integrity.audit_bundle.audit_case``: reading the case's and its
  order's stored events and its index row, replaying, verifying, building the JSON) and of that
  work after the reads (``replay`` plus ``to_json``);
- a raw baseline: one psycopg SELECT of that case's 50 stored rows on a prepared statement;
- the library's own ``recorder.select_events`` for the same rows.

    python -m scripts.bench_audit [--cases 1000000] [--budget 900] [--runs 200]

If building N cases would take longer than ``--budget`` seconds, it stops there and says how
many it built.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--budget", type=float, default=900.0, help="seconds for building")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=200)
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

import psycopg
from psycopg.sql import SQL, Identifier

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    DeliverOrder,
    EscalateCase,
    OpenCase,
    PlaceOrder,
    RejectCase,
    RuleCase,
)
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.events import Act
from aftersales.engine.domain.order import Order
from aftersales.engine.domain.order_events import OrderLine
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.values import Actor, CaseType, Role
from aftersales.engine.integrity.audit_bundle import audit_case
from aftersales.engine.integrity.audit_checks import read_history
from aftersales.engine.integrity.replay import replay
from aftersales.engine.storage.case_index import case_row

PG = os.environ.get("AFTERSALES_BENCH_POSTGRES", "postgresql://127.0.0.1:5432/test")
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def build_others(engine: Engine, target: int, budget: float, batch: int) -> tuple[int, float]:
    """Bulk-write ``target`` other cases (or as many as fit in ``budget`` seconds)."""
    policy = Policy()
    store = engine.store
    line = OrderLine(sku="SKU-1", quantity=1, unit_price=Decimal("19.90"), category="apparel")
    started = time.perf_counter()
    built = 0
    while built < target and time.perf_counter() - started < budget:
        aggregates: list[Order | ReturnCase] = []
        rows = []
        for i in range(built, min(target, built + batch)):
            now = T0 + timedelta(seconds=i)
            placed = Act(
                at=now,
                actor=Actor(role=Role.PLATFORM, id="order-system"),
                command_id=f"p{i}",
                recorded_at=now,
            )
            order = Order.place(
                f"B-{i}",
                merchant_id=f"shop-{i % 997}",
                buyer_id=f"buyer-{i}",
                lines=[line],
                act=placed,
            )
            opened = Act(
                at=now + timedelta(hours=1),
                actor=Actor(role=Role.BUYER, id=f"buyer-{i}"),
                command_id=f"o{i}",
                recorded_at=now + timedelta(hours=1),
            )
            lines = order.case_lines([])
            case = ReturnCase.open(
                uuid.uuid4(),
                order,
                case_type=CaseType.REFUND_ONLY,
                reason="logistics.lost",
                amount=Decimal("19.90"),
                lines=lines,
                evidence=[],
                note=None,
                policy=policy,
                act=opened,
            )
            order.link_case(case.id, lines, opened)
            aggregates += [order, case]
            rows.append(case_row(case))
        store.save(*aggregates, cases=rows)
        built += len(rows)
        if built % (batch * 20) == 0:
            rate = built / (time.perf_counter() - started)
            print(f"  built {built:,} cases ({rate:,.0f} cases/s)", flush=True)
    return built, time.perf_counter() - started


def fifty_event_case(engine: Engine) -> str:
    engine.handle(
        PlaceOrder(
            order_id="AUDIT-50", merchant="shop-a", buyer="buyer-a", lines=["X:1:50.00"], at=T0
        )
    )
    engine.handle(DeliverOrder(order_id="AUDIT-50", at=T0 + timedelta(days=1)))
    t = T0 + timedelta(days=2)
    case = engine.handle(
        OpenCase(
            order_id="AUDIT-50", type="return_refund", reason="quality.broken", amount="50.00", at=t
        )
    )
    cid: str = case["case_id"]
    engine.handle(
        RejectCase(
            case_id=cid, reason="not broken", communication="chat:1", at=t + timedelta(hours=1)
        )
    )
    for n in range(24):
        t += timedelta(hours=2)
        engine.handle(EscalateCase(case_id=cid, claim="unjustified_rejection", at=t))
        engine.handle(
            RuleCase(
                case_id=cid, in_favour_of="merchant", note=f"round {n}", at=t + timedelta(hours=1)
            )
        )
    assert engine.get_case(cid)["version"] == 50
    return cid


def median_ms(fn: object, runs: int) -> float:
    assert callable(fn)
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    args = arguments().parse_args()

    schema = f"bench_audit_{uuid.uuid4().hex[:8]}"
    url = f"{PG}?schema={schema}"
    conninfo = PG.split("?", 1)[0]
    try:
        with Engine(url) as engine:
            print(f"schema {schema}: building {args.cases:,} other cases ...", flush=True)
            built, took = build_others(engine, args.cases, args.budget, args.batch)
            print(f"built {built:,} other cases in {took:,.0f} s", flush=True)
            cid = fifty_event_case(engine)
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(SQL("ANALYZE {}.aftersales_events").format(Identifier(schema)))
                conn.execute(SQL("ANALYZE {}.aftersales_cases").format(Identifier(schema)))
                events = conn.execute(
                    SQL("SELECT count(*) FROM {}.aftersales_events").format(Identifier(schema))
                ).fetchone()

            store = engine.store
            uid = uuid.UUID(cid)
            result = audit_case(store, uid)
            assert result.verified and len(result.entries) == 50, result.problems
            history = read_history(store, uid)

            def whole() -> None:
                json.dumps(audit_case(store, uid).to_json())

            def after_reads() -> None:
                json.dumps(replay(history, store.mapper).to_json())

            def library_select() -> None:
                assert len(store.recorder.select_events(uid)) == 50

            with psycopg.connect(conninfo) as raw:
                query = SQL(
                    "SELECT originator_id, originator_version, topic, state "
                    "FROM {}.aftersales_events WHERE originator_id = %s "
                    "ORDER BY originator_version"
                ).format(Identifier(schema))

                def raw_select() -> None:
                    with raw.cursor() as cur:
                        cur.execute(query, (uid,), prepare=True)
                        assert len(cur.fetchall()) == 50

                figures = {
                    "raw psycopg SELECT of the 50 rows": median_ms(raw_select, args.runs),
                    "library select_events (50 rows)": median_ms(library_select, args.runs),
                    "audit: replay + verify + JSON, after the reads": median_ms(
                        after_reads, args.runs
                    ),
                    "audit: the whole of its own work (3 reads included)": median_ms(
                        whole, args.runs
                    ),
                }
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))

    base = figures["raw psycopg SELECT of the 50 rows"]
    print()
    print(
        f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {built:,} other cases, "
        f"{events[0] if events else '?':,} events in the store; median of {args.runs} runs"
    )
    for name, ms in figures.items():
        print(f"  {name:<55} {ms:8.2f} ms  ({ms / base:5.1f} x raw)")


if __name__ == "__main__":
    main()
