"""What synchronous replication costs: raw commits and the engine's single actions on one
PostgreSQL server and on a Patroni cluster (scripts/cluster.py), in one run.

    python scripts/bench_cluster.py --single postgresql://127.0.0.1:5432/test \\
        --cluster "$(python scripts/cluster.py status --json | jq -r .url)" [--seconds 5]

For each store: single-row INSERT commits from 1 and 4 connections (synchronous_commit on, as
the cluster's store forces), then orders placed through the engine from 1 and 4 threads, each
thread an engine of its own; the ratio of each engine figure to the raw commits of the same
store and the same run.
"""

from __future__ import annotations

import argparse
import sys

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--single", default="postgresql://127.0.0.1:5432/test")
parser.add_argument("--cluster", required=True, help="the cluster's store URL")
parser.add_argument("--seconds", type=float, default=5.0, help="each measurement's length")
args = parser.parse_args()

import os
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
from psycopg.sql import SQL, Identifier

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import PlaceOrder

os.environ["PGOPTIONS"] = "-c synchronous_commit=on"


def with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    return parts._replace(query=urlencode([*query, ("schema", schema)])).geturl()


def libpq(url: str) -> str:
    """The URL as libpq takes it: the engine's own options left out."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k in ("target_session_attrs",)]
    return parts._replace(query=urlencode(query)).geturl()


def in_threads(count: int, work: Callable[[threading.Event], int], seconds: float) -> float:
    """``count`` threads doing ``work`` until told to stop; what they did, per second."""
    stop = threading.Event()
    done: list[int] = []
    threads = [threading.Thread(target=lambda: done.append(work(stop))) for _ in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def measure(name: str, url: str, seconds: float) -> list[tuple[str, float, float | None]]:
    schema = f"bench_cluster_{uuid.uuid4().hex[:8]}"
    store = with_schema(url, schema)
    table = Identifier(schema, "raw")
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(SQL("CREATE SCHEMA {}").format(Identifier(schema)))
        conn.execute(SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, data text)").format(table))

    def raw(stop: threading.Event) -> int:
        n = 0
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(SQL("INSERT INTO {} (data) VALUES (%s)").format(table), ("x" * 400,))
                n += 1
        return n

    def actions(stop: threading.Event) -> int:
        n = 0
        with Engine(store) as engine:
            while not stop.is_set():
                engine.handle(
                    PlaceOrder(
                        order_id=f"B-{uuid.uuid4().hex[:12]}",
                        merchant="shop-bench",
                        buyer="buyer-bench",
                        lines=["SKU:1:9.90:apparel"],
                    )
                )
                n += 1
        return n

    try:
        with Engine(store):
            pass
        rows: list[tuple[str, float, float | None]] = []
        raw1 = in_threads(1, raw, seconds)
        raw4 = in_threads(4, raw, seconds)
        rows += [(f"{name}: raw INSERT commits, 1 connection", raw1, None)]
        rows += [(f"{name}: raw INSERT commits, 4 connections", raw4, None)]
        act1 = in_threads(1, actions, seconds)
        act4 = in_threads(4, actions, seconds)
        rows += [(f"{name}: orders placed, 1 engine", act1, act1 / raw1)]
        rows += [(f"{name}: orders placed, 4 engines", act4, act4 / raw4)]
        return rows
    finally:
        with psycopg.connect(libpq(url), autocommit=True) as conn:
            conn.execute(SQL("DROP SCHEMA {} CASCADE").format(Identifier(schema)))


def main() -> None:
    rows = measure("one server", args.single, args.seconds)
    rows += measure("cluster", args.cluster, args.seconds)
    print("| what | per second | of raw commits, same store |")
    print("|---|---|---|")
    for what, value, ratio in rows:
        print(f"| {what} | {value:,.0f} | {f'{ratio:.2f}' if ratio is not None else ''} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
