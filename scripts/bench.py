"""The engine against PostgreSQL's own limits, measured in one run on one machine.

    python scripts/bench.py [--store postgresql://127.0.0.1:5432/test] [--scale 1.0]

Prints a Markdown table: raw psycopg baselines on a scratch table (single-row INSERT commits
per second on 1 and 4 connections, COPY rows per second, sequential read rows per second, and a
single action's statements with no Python work) and the engine's figures beside them with
the ratio: single actions on 1 and 4 clients, batch, order import and import-history on one
worker and on two, projection catch-up, and on a store of a million open cases the tick, an
audit and a dashboard; peak memory of the imports and the catch-up. Everything runs in a schema
of its own, dropped at the end. ``--scale`` shrinks or grows every size (the defaults take
about a quarter of an hour; ``--skip-large`` leaves out the million cases).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="postgresql://127.0.0.1:5432/test")  # DEFAULT_STORE
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--skip-large",
        action="store_true",
        help="Leave out the store of a million open cases (tick, audit, dashboard).",
    )
    parser.add_argument(
        "--only-http",
        action="store_true",
        help="The raw baselines and the HTTP figures only (a few minutes).",
    )
    parser.add_argument(
        "--http-workers", type=int, default=1, help="`serve --workers` for the HTTP figures."
    )
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="After the HTTP figures, one more run of 16 clients with py-spy sampling the "
        "server: its stacks written to PATH (collapsed, one per line) and summarised (needs "
        "py-spy, `pip install py-spy`, and leave to trace the server).",
    )
    parser.add_argument(
        "--only-single",
        action="store_true",
        help="The raw baselines, a single action's statements alone and single actions on 1 "
        "and 4 clients (a minute or two).",
    )
    parser.add_argument(
        "--only-write",
        action="store_true",
        help="The raw baselines and the write paths: single actions, what the checks cost an "
        "action (its client CPU), order import, import-history, and the tick firing due "
        "deadlines in groups on a store of 20,000 open cases (times --scale).",
    )
    parser.add_argument(
        "--only-projections",
        action="store_true",
        help="The raw baselines and projection catch-up on synthetic logs (scripts/workload.py) "
        "of 20,000 and 200,000 events on PostgreSQL and on SQLite (a few minutes).",
    )
    parser.add_argument(
        "--only-checks",
        action="store_true",
        help="The raw baselines and what the invariants and read checks cost an action.",
    )
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

import psycopg  # noqa: E402
from psycopg.sql import SQL, Identifier  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aftersales.engine.domain.invariants as invariants  # noqa: E402
from aftersales.engine.access.principal_store import add_principal, authenticate, create_key  # noqa: E402
from aftersales.engine.application.handler import Engine  # noqa: E402
from aftersales.engine.application.requests import (  # noqa: E402
    ApproveCase,
    ListCases,
    MessageCase,
    OpenCase,
    PlaceOrder,
    ReceiveGoods,
    ShipBack,
    new_case_id,
)

DEFAULT_STORE = "postgresql://127.0.0.1:5432/test"
T0 = "2026-11-01T10:00:00+08:00"
T1 = "2026-11-02T10:00:00+08:00"
# Orders that actions taken now act on: delivered a day ago, within every after-sales window.
PLACED_RECENTLY = (datetime.now(UTC) - timedelta(days=2)).isoformat()
DELIVERED_RECENTLY = (datetime.now(UTC) - timedelta(days=1)).isoformat()


@dataclass
class Row:
    what: str
    value: float
    unit: str
    baseline: str = ""
    base_value: float | None = None

    def cells(self) -> list[str]:
        ratio = f"{self.value / self.base_value:.2f}" if self.base_value else ""
        return [
            self.what,
            f"{self.value:,.0f} {self.unit}"
            if self.value >= 100
            else f"{self.value:,.2f} {self.unit}",
            self.baseline,
            ratio,
        ]


class Bench:
    def __init__(self, url: str, scale: float) -> None:
        self.base_url = url.split("?", 1)[0]
        self.schema = f"bench_{uuid.uuid4().hex[:10]}"
        self.url = f"{self.base_url}?schema={self.schema}"
        self.scale = scale
        self.rows: list[Row] = []
        self.raw: dict[str, float] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="aftersales-bench-"))
        self.http_workers = 1
        self.profile: Path | None = None
        self.notes: list[str] = []

    def n(self, size: int) -> int:
        return max(10, int(size * self.scale))

    def conn(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.base_url, autocommit=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.what}: {row.cells()[1]}", file=sys.stderr, flush=True)

    # Raw baselines --------------------------------------------------------------------------------

    def raw_baselines(self) -> None:
        # In the benchmark's own schema, so it goes with it whatever happens.
        table = Identifier(self.schema, "raw_scratch")
        payload = "x" * 400
        with self.conn() as c:
            c.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(self.schema)))
            c.execute(
                SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, k uuid, data text)").format(table)
            )

        def inserts(count: int) -> None:
            with self.conn() as c:
                for _ in range(count):
                    c.execute(
                        SQL("INSERT INTO {} (k, data) VALUES (%s, %s)").format(table),
                        (uuid.uuid4(), payload),
                        prepare=True,
                    )

        n1 = self.n(3000)
        started = time.perf_counter()
        inserts(n1)
        self.raw["insert1"] = n1 / (time.perf_counter() - started)
        self.add(Row("raw: single-row INSERT commits, 1 connection", self.raw["insert1"], "/s"))
        n4 = self.n(6000)
        self.raw["insert4"] = n4 // 4 * 4 / _in_threads([lambda: inserts(n4 // 4)] * 4)
        self.add(Row("raw: single-row INSERT commits, 4 connections", self.raw["insert4"], "/s"))
        rows = self.n(200_000)
        with self.conn() as c, c.cursor() as cur:
            started = time.perf_counter()
            with cur.copy(SQL("COPY {} (k, data) FROM STDIN").format(table)) as copy:
                for _ in range(rows):
                    copy.write_row((uuid.uuid4(), payload))
            self.raw["copy"] = rows / (time.perf_counter() - started)
        self.add(Row("raw: COPY rows", self.raw["copy"], "/s"))
        with psycopg.connect(self.base_url) as c, c.cursor(name="scan") as cur:
            started = time.perf_counter()
            cur.itersize = 5000
            cur.execute(SQL("SELECT * FROM {} ORDER BY id").format(table))
            count = sum(1 for _ in cur)
            self.raw["read"] = count / (time.perf_counter() - started)
        self.add(Row("raw: sequential read rows", self.raw["read"], "/s"))
        with self.conn() as c:
            c.execute(SQL("DROP TABLE {}").format(table))

    # The engine -----------------------------------------------------------------------------------

    def orders_file(self, count: int, name: str, prefix: str, *, recent: bool = False) -> Path:
        """Orders as `order import` reads them, placed and delivered on the benchmark's
        calendar (``recent``: a day ago, for cases opened now)."""
        placed, delivered = (PLACED_RECENTLY, DELIVERED_RECENTLY) if recent else (T0, T1)
        path = self.tmp / name
        with path.open("w") as out:
            for i in range(count):
                out.write(
                    json.dumps(
                        {
                            "order_id": f"{prefix}{i}",
                            "merchant": f"shop-{i % 97}",
                            "buyer": f"buyer-{i}",
                            "at": placed,
                            "delivered_at": delivered,
                            "lines": [
                                f"SKU-{i % 300}:1:39.90:apparel",
                                f"GIFT-{i % 7}:1:0.00:gift:9.90",
                            ],
                        }
                    )
                    + "\n"
                )
        return path

    def cli(self, *args: str, store: str | None = None) -> tuple[float, int, str]:
        """Run the command line in a fresh process (on this benchmark's store, or ``store``):
        seconds, its peak RSS (KiB), stdout."""
        out_path, err_path = self.tmp / "out.txt", self.tmp / "err.txt"
        started = time.perf_counter()
        with out_path.open("w") as out, err_path.open("w") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aftersales.commands.cli.main",
                    "--store",
                    store or self.url,
                    *args,
                ],
                cwd=ROOT,
                stdout=out,
                stderr=err,
            )
            _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"aftersales {' '.join(args)} failed: {err_path.read_text()[-500:]}")
        return seconds, usage.ru_maxrss, out_path.read_text()

    def order_import(self) -> None:
        small, large = self.n(10_000), self.n(100_000)
        for count, label in ((small, "small"), (large, "large")):
            path = self.orders_file(count, f"orders-{label}.jsonl", f"OI{label}-")
            _, rss, out = self.cli("order", "import", str(path), "--json")
            report = json.loads(out)
            if label == "large":
                self.add(
                    Row(
                        "order import, 1 worker",
                        report["events_per_second"],
                        "events/s",
                        "COPY rows/s",
                        self.raw["copy"],
                    )
                )
            self.add(Row(f"order import peak RSS, {count:,} orders", rss / 1024, "MiB"))
        path = self.orders_file(large, "orders-workers.jsonl", "OIW-")
        _, _, out = self.cli("order", "import", str(path), "--json", "--workers", "2")
        self.add(
            Row(
                "order import, 2 workers",
                json.loads(out)["events_per_second"],
                "events/s",
                "COPY rows/s",
                self.raw["copy"],
            )
        )

    def history(self) -> None:
        """Cases on imported orders: open, approve, ship back, receive, as past actions; on
        one worker, then (other cases) on two."""
        count = self.n(20_000)
        for workers, prefix in ((1, "H"), (2, "G")):
            path = self.orders_file(count, f"orders-history-{prefix}.jsonl", f"{prefix}-")
            self.cli("order", "import", str(path))
            lines = self.history_file(count, prefix)
            _, rss, out = self.cli(
                "import-history", str(lines), "--json", "--workers", str(workers)
            )
            report = json.loads(out)
            assert report["failed"] == 0, report["errors"][:3]
            self.add(
                Row(
                    f"import-history (case actions), {workers} worker{'s' if workers > 1 else ''}",
                    report["events_per_second"],
                    "events/s",
                    "COPY rows/s",
                    self.raw["copy"],
                )
            )
            if workers == 1:
                self.add(Row(f"import-history peak RSS, {count * 4:,} actions", rss / 1024, "MiB"))

    def history_file(self, count: int, prefix: str) -> Path:
        lines = self.tmp / f"history-{prefix}.jsonl"
        with lines.open("w") as out:
            for i in range(count):
                key = f"hist-{prefix}-{i}"
                case_id = str(new_case_id(None, f"{key}-open"))
                actions: list[dict[str, object]] = [
                    {
                        "action": "case open",
                        "order_id": f"{prefix}-{i}",
                        "type": "return_refund",
                        "reason": "quality.colour_difference",
                        "amount": "39.90",
                        "line": [f"SKU-{i % 300}"],
                        "at": "2026-11-03T10:00:00+08:00",
                    },
                    {
                        "action": "case approve",
                        "case_id": case_id,
                        "at": "2026-11-03T12:00:00+08:00",
                    },
                    {
                        "action": "case ship-back",
                        "case_id": case_id,
                        "carrier": "SF",
                        "waybill": f"SF{i}",
                        "at": "2026-11-04T10:00:00+08:00",
                    },
                    {
                        "action": "case receive",
                        "case_id": case_id,
                        "at": "2026-11-06T10:00:00+08:00",
                    },
                ]
                for n, line in enumerate(actions):
                    suffix = "open" if n == 0 else str(n)
                    out.write(json.dumps({**line, "command_id": f"{key}-{suffix}"}) + "\n")
        return lines

    def single_actions(self) -> None:
        count = self.n(2_000)
        path = self.orders_file(count * 2, "orders-single.jsonl", "S-", recent=True)
        self.cli("order", "import", str(path))
        with Engine(self.url) as engine:
            started = time.perf_counter()
            for i in range(count):
                engine.handle(_opening(f"S-{i}"))
            rate = count / (time.perf_counter() - started)
        self.add(
            Row(
                "single actions, 1 client (case open)",
                rate,
                "/s",
                "INSERT commits/s, 1 conn",
                self.raw["insert1"],
            )
        )
        ctx = multiprocessing.get_context("spawn")
        parts = [[f"S-{i}" for i in range(count + k, count * 2, 4)] for k in range(4)]
        start_at = time.time() + 3
        with ctx.Pool(4) as pool:
            results = pool.starmap(_client, [(self.url, part, start_at) for part in parts])
        total = sum(n for n, _ in results)
        seconds = max(s for _, s in results)
        self.add(
            Row(
                "single actions, 4 clients (case open)",
                total / seconds,
                "/s",
                "INSERT commits/s, 4 conns",
                self.raw["insert4"],
            )
        )

    def checks_cost(self) -> None:
        """What the invariants (checked on every event written), the read checks (each
        case's history replayed through the audit's cheap checks, against its index row) and
        the save's check of the stored events it builds on cost a single action: a return's
        four actions (open, approve, ship back, receive), each loading what it acts on from
        the store (no cache), with every check on and with them off, in turns of a few cases
        each, so the machine's load falls on both alike. Wall and client CPU time per action,
        medians of the turns, and their ratio."""
        turns, per_turn = 8, self.n(40)
        path = self.orders_file(turns * per_turn * 2, "orders-checks.jsonl", "K-", recent=True)
        self.cli("order", "import", str(path))
        walls: dict[bool, list[float]] = {True: [], False: []}
        cpus: dict[bool, list[float]] = {True: [], False: []}
        with Engine(self.url, cache_size=0) as engine:
            n = 0
            for turn in range(turns * 2):
                on = turn % 2 == 0
                store = engine.store
                invariants.ENFORCED = store.replay_reads = store.check_heads = on
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(per_turn):
                    _a_return(engine, f"K-{n}")
                    n += 1
                actions = per_turn * 4
                walls[on].append((time.perf_counter() - wall) / actions)
                cpus[on].append((time.process_time() - cpu) / actions)
            invariants.ENFORCED = engine.store.replay_reads = engine.store.check_heads = True
        for what, seconds in (("wall", walls), ("client CPU", cpus)):
            checked, unchecked = (statistics.median(seconds[k]) * 1000 for k in (True, False))
            self.add(
                Row(
                    f"an action's {what} with every check (return: 4 actions, no cache)",
                    checked,
                    "ms",
                    "the same actions unchecked, ms",
                    unchecked,
                )
            )

    def http_actions(self) -> None:
        """Warm actions over HTTP (`aftersales serve`, a client process with 1, 4, 16 and 64
        connections kept alive), and the same actions in process: the handler alone, and
        with the key check each request makes."""
        cases = self.n(400)
        path = self.orders_file(cases, "orders-http.jsonl", "W-", recent=True)
        self.cli("order", "import", str(path))
        with Engine(self.url) as engine:
            now = datetime.now(UTC)
            add_principal(engine.store, "bench-ops", "operator", None, now)
            key = create_key(engine.store, "bench-ops", now, None)["key"]
            ids = [str(engine.handle(_opening(f"W-{i}"))["case_id"]) for i in range(cases)]
            # In process: each case once to warm the cache, then timed.
            count = self.n(2000)

            def message(i: int) -> None:
                engine.handle(MessageCase(case_id=ids[i % cases], text="m", party="platform"))

            for i in range(cases):
                message(i)
            started = time.perf_counter()
            for i in range(count):
                message(i)
            rate = count / (time.perf_counter() - started)
            self.add(
                Row(
                    "in process: warm action, 1 client (case message, Engine.handle)",
                    rate,
                    "/s",
                    "INSERT commits/s, 1 conn",
                    self.raw["insert1"],
                )
            )
            started, cpu = time.perf_counter(), time.process_time()
            for i in range(count):
                authenticate(engine.store, key, now)
                message(i)
            rate = count / (time.perf_counter() - started)
            per_action = (time.process_time() - cpu) / count * 1000
            self.notes.append(
                f"in process, key check and action: CPU {per_action:.2f} ms per action "
                "(the rest of its time is waiting on the store)"
            )
            self.add(
                Row(
                    "in process: the same with the key check of each request",
                    rate,
                    "/s",
                    "INSERT commits/s, 1 conn",
                    self.raw["insert1"],
                )
            )
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log = (self.tmp / "serve.log").open("wb")
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "aftersales.commands.cli.main", "--store", self.url, "serve",
             "--port", str(port), "--workers", str(self.http_workers)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            self.add(Row("serve: seconds until /healthz answers", _answered(base, started), "s"))
            for clients in (1, 4, 16, 64):
                ctx = multiprocessing.get_context("spawn")
                server_cpu = _cpu_seconds(server.pid)
                with ctx.Pool(1) as pool:
                    done, seconds, latencies, client_cpu = pool.apply(
                        _http_client, (base, key, ids, clients, self.n(3000))
                    )
                server_cpu = _cpu_seconds(server.pid) - server_cpu
                print(
                    f"    CPU per request: server (all workers) {server_cpu / done * 1000:.2f} ms, "
                    f"client {client_cpu / done * 1000:.2f} ms; machine: 2 cores",
                    file=sys.stderr,
                )
                self.notes.append(
                    f"{clients} client(s): server CPU {server_cpu / done * 1000:.2f} ms and "
                    f"client CPU {client_cpu / done * 1000:.2f} ms per request, "
                    f"{os.cpu_count()} cores"
                )
                latencies.sort()
                p50 = latencies[len(latencies) // 2] * 1000
                p99 = latencies[int(len(latencies) * 0.99)] * 1000
                self.add(
                    Row(
                        f"HTTP: warm action, {clients} client(s), {self.http_workers} worker(s) "
                        f"(p50 {p50:.1f} ms, p99 {p99:.1f} ms)",
                        done / seconds,
                        "/s",
                        "INSERT commits/s, 4 conns" if clients > 1 else "INSERT commits/s, 1 conn",
                        self.raw["insert4" if clients > 1 else "insert1"],
                    )
                )
            if self.profile is not None:
                self.profile_server(server.pid, base, key, ids)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
            log.close()

    def profile_server(self, pid: int, base: str, key: str, ids: list[str]) -> None:
        """16 clients once more, with py-spy sampling the server (not timed: sampling slows
        it); the samples by where their CPU went."""
        assert self.profile is not None
        spy_exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spy = subprocess.Popen(
            [spy_exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
             "--nonblocking", "--output", str(self.profile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # attached
        try:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(1) as pool:
                pool.apply(_http_client, (base, key, ids, 16, self.n(3000)))
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        for line in profile_summary(self.profile.read_text()):
            print(f"    {line}", file=sys.stderr)
            self.notes.append(f"profile: {line}")

    def statements_floor(self) -> None:
        """The statements of a single action (read an aggregate's events, call the save
        function with a case's two events and its index row, wake the listeners) from psycopg
        with no Python domain work, on one connection and on four (threads, as the raw
        baseline): the most single actions could reach with this shape. In a schema of its
        own, so its rows stay out of the rest of the run."""
        schema = f"{self.schema}_floor"
        url = f"{self.base_url}?schema={schema}"
        with Engine(url) as engine:
            engine.handle(
                PlaceOrder(order_id="F-1", merchant="m", buyer="b", lines=["A:1:1.00"], at=T0)
            )
        state = json.dumps({"x": "y" * 400}).encode()
        row = {
            "order_id": "F-1",
            "merchant_id": "m",
            "buyer_id": "b",
            "case_type": "refund_only",
            "reason": "quality.x",
            "status": "awaiting_merchant",
            "amount": "1.00",
            "refunded_amount": "0",
            "due_at": T1,
            "due_action": "auto_approve",
            "opened_at": T0,
            "updated_at": T0,
            "version": 1,
        }

        def loop(count: int, tag: str) -> None:
            with self.conn() as c:
                c.execute(SQL("SET search_path TO {}").format(Identifier(schema)))
                order = c.execute("SELECT originator_id FROM aftersales_events LIMIT 1").fetchone()
                assert order is not None
                for i in range(count):
                    c.execute(
                        "SELECT originator_id, originator_version, topic, state "
                        "FROM aftersales_events WHERE originator_id = %s "
                        "ORDER BY originator_version",
                        (order[0],),
                        prepare=True,
                    ).fetchall()
                    c.execute(
                        "SELECT * FROM aftersales_save"
                        "(%b, %b::bigint[], %b, %b, %s, NULL, NULL, NULL, NULL)",
                        (
                            [uuid.uuid4(), uuid.uuid4()],
                            [1, 1],
                            ["t:CaseOpened", "t:CaseLinked"],
                            [state, state],
                            Jsonb([{**row, "case_id": f"floor-{tag}-{i}"}]),
                        ),
                        prepare=True,
                    ).fetchall()
                    # The listeners' wake-up the engine sends after each save.
                    c.execute(
                        "SELECT set_config('synchronous_commit', 'off', true), "
                        "pg_notify('aftersales_events', '')",
                        prepare=True,
                    )

        try:
            for connections, total, raw in (
                (1, self.n(2_000), "insert1"),
                (4, self.n(4_000), "insert4"),
            ):
                each = total // connections
                calls = [
                    functools.partial(loop, each, f"{connections}-{k}") for k in range(connections)
                ]
                rate = each * connections / _in_threads(calls)
                self.add(
                    Row(
                        f"raw: a single action's statements, no Python domain work, "
                        f"{connections} connection{'s' if connections > 1 else ''}",
                        rate,
                        "/s",
                        f"INSERT commits/s, {connections} conn{'s' if connections > 1 else ''}",
                        self.raw[raw],
                    )
                )
        finally:
            with self.conn() as c:
                c.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))

    def batch(self) -> None:
        count = self.n(2_000)
        path = self.orders_file(count, "orders-batch.jsonl", "B-", recent=True)
        self.cli("order", "import", str(path))
        lines = self.tmp / "batch.jsonl"
        with lines.open("w") as out:
            for i in range(count):
                out.write(
                    json.dumps(
                        {
                            "action": "case open",
                            "order_id": f"B-{i}",
                            "type": "refund_only",
                            "reason": "quality.x",
                            "amount": "39.90",
                            "line": [f"SKU-{i % 300}"],
                            "command_id": f"batch-{i}",
                        }
                    )
                    + "\n"
                )
        seconds, _, printed = self.cli("batch", str(lines))
        assert printed.count('"ok": true') == count
        self.add(
            Row(
                "batch actions (one process, one per line)",
                count / seconds,
                "/s",
                "INSERT commits/s, 1 conn",
                self.raw["insert1"],
            )
        )

    def catch_up(self, label: str) -> None:
        """Projections catch up with the whole log so far, in a fresh process."""
        with self.conn() as c:
            events = c.execute(
                SQL("SELECT count(*) FROM {}.aftersales_events").format(Identifier(self.schema))
            ).fetchone()
        count = int(events[0]) if events else 0
        seconds, rss, _ = self.cli("project", "run")
        self.add(
            Row(
                f"projection catch-up, {count:,} events ({label})",
                count / seconds,
                "events/s",
                "sequential read rows/s",
                self.raw["read"],
            )
        )
        self.add(Row(f"projection catch-up peak RSS, {count:,} events", rss / 1024, "MiB"))

    def projection_logs(self) -> None:
        """Projection catch-up from empty, in a fresh process, on a synthetic log of every
        kind of event the views read (orders, cases on many of them, assignments), on
        PostgreSQL and on SQLite, at two sizes ten times apart: events/s beside the raw
        sequential read, and peak RSS (flat as the log grows)."""
        from aftersales.engine.storage.store import AftersalesStore
        from scripts.workload import generate

        for backend in ("PostgreSQL", "SQLite"):
            for size in (self.n(20_000), self.n(200_000)):
                if backend == "PostgreSQL":
                    url = f"{self.base_url}?schema={self.schema}_p{size}"
                else:
                    url = f"sqlite:///{self.tmp / f'projections-{size}.db'}"
                store = AftersalesStore(url)
                try:
                    written = generate(store, size, case_share=0.5)
                finally:
                    store.close()
                if backend == "PostgreSQL":
                    with self.conn() as c:
                        c.execute(
                            SQL("VACUUM ANALYZE {}").format(
                                Identifier(f"{self.schema}_p{size}", "aftersales_events")
                            )
                        )
                try:
                    seconds, rss, _ = self.cli("project", "run", store=url)
                finally:
                    if backend == "PostgreSQL":
                        with self.conn() as c:
                            c.execute(
                                SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                                    Identifier(f"{self.schema}_p{size}")
                                )
                            )
                self.add(
                    Row(
                        f"projection catch-up, {backend}, {written:,} events",
                        written / seconds,
                        "events/s",
                        "sequential read rows/s",
                        self.raw["read"],
                    )
                )
                self.add(
                    Row(
                        f"projection catch-up peak RSS, {backend}, {written:,} events",
                        rss / 1024,
                        "MiB",
                    )
                )

    def large_store(self) -> None:
        """A store with many open cases: the tick that finds nothing, firing, one audit, one
        merchant's dashboard, and the catch-up of the whole log."""
        from aftersales.engine.application.tick import tick
        from aftersales.engine.integrity.audit_bundle import audit_case
        from aftersales.projections.dashboard import dashboard
        from scripts.bench_audit import fifty_event_case
        from scripts.bench_tick import REVIEW, build
        from scripts.bench_tick import T0 as TICK_T0

        cases = self.n(1_000_000)
        with Engine(self.url) as engine:
            print(f"  building {cases:,} open cases ...", file=sys.stderr, flush=True)
            built, seconds, events = build(engine, cases, 2_000, 3_600)
            self.add(
                Row(
                    f"bulk build of {built:,} open cases (3 events each)",
                    events / seconds,
                    "events/s",
                    "COPY rows/s",
                    self.raw["copy"],
                )
            )
            with self.conn() as c:
                for table in ("aftersales_events", "aftersales_cases", "aftersales_commands"):
                    c.execute(SQL("VACUUM ANALYZE {}").format(Identifier(self.schema, table)))
            nothing_due = TICK_T0 + REVIEW - timedelta(seconds=1)
            empty = _median(lambda: tick(engine, nothing_due), 9)
            self.add(
                Row(
                    f"tick finding nothing due among {built:,} open cases",
                    empty * 1000,
                    "ms",
                    "INSERT commit, ms",
                    1000 / self.raw["insert1"],
                )
            )
            self.fire_due(engine, built, "")
            case_id = fifty_event_case(engine)
            audit = _median(lambda: audit_case(engine.store, case_id), 50)
            self.add(Row(f"audit of one 50-event case among {built:,}", audit * 1000, "ms"))
        self.catch_up("the large store")
        with Engine(self.url) as engine:
            at = datetime.now(UTC)
            board = _median(lambda: dashboard(engine.store, "shop-7", at), 20)
            self.add(Row("dashboard query, one merchant", board * 1000, "ms"))

    def fire_due(self, engine: Engine, built: int, note: str) -> None:
        """One tick firing the first 5,000 (or all) of ``bench_tick.build``'s open cases'
        deadlines, in groups: deadlines fired per second."""
        from aftersales.engine.application.tick import tick
        from scripts.bench_tick import REVIEW
        from scripts.bench_tick import T0 as TICK_T0

        due = min(5_000, built)
        now = TICK_T0 + REVIEW + timedelta(seconds=due - 1)
        started = time.perf_counter()
        fired = tick(engine, now)
        rate = len(fired.fired) / (time.perf_counter() - started)
        self.add(
            Row(
                f"tick firing {len(fired.fired):,} due deadlines{note}",
                rate,
                "/s",
                "INSERT commits/s, 1 conn",
                self.raw["insert1"],
            )
        )

    def tick_firing(self) -> None:
        """The tick firing due deadlines in groups, on a store of its own of open cases (a
        smaller one than ``large_store``'s: the firing does not depend on the store's size)."""
        from scripts.bench_tick import build

        schema = f"{self.schema}_tick"
        url = f"{self.base_url}?schema={schema}"
        try:
            with Engine(url) as engine:
                built, _, _ = build(engine, self.n(20_000), 2_000, 3_600)
                self.fire_due(engine, built, f" (among {built:,})")
        finally:
            with self.conn() as c:
                c.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))

    def run(self, parts: list[Callable[[], None]]) -> None:
        try:
            for part in parts:
                part()
        finally:
            with self.conn() as c:
                c.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(self.schema)))

    def table(self) -> str:
        head = ["what", "figure", "baseline", "ratio"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            cells = row.cells()
            if row.base_value:
                base = row.base_value
                cells[2] = (
                    f"{row.baseline}: {base:,.0f}"
                    if base >= 100
                    else (f"{row.baseline}: {base:,.2f}")
                )
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _in_threads(calls: Sequence[Callable[[], None]]) -> float:
    """Run each call on a thread of its own, all at once; the seconds until all are done."""
    threads = [threading.Thread(target=call) for call in calls]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def _median(call: Callable[[], object], runs: int) -> float:
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def _client(url: str, orders: list[str], start_at: float) -> tuple[int, float]:
    with Engine(url) as engine:
        engine.handle(ListCases(limit=1))
        time.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()
        for order_id in orders:
            engine.handle(_opening(order_id))
        return len(orders), time.perf_counter() - started


def _a_return(engine: Engine, order_id: str) -> None:
    """A return through its four actions: opened, approved, shipped back, received (refunded)."""
    sku = f"SKU-{int(order_id.split('-')[1]) % 300}"
    case = engine.handle(
        OpenCase(order_id=order_id, type="return_refund", reason="quality.x", amount="39.90",
                 lines=[sku])
    )["case_id"]  # fmt: skip
    engine.handle(ApproveCase(case_id=case))
    engine.handle(ShipBack(case_id=case, carrier="SF", waybill="W1"))
    engine.handle(ReceiveGoods(case_id=case))


def _opening(order_id: str) -> OpenCase:
    """A refund-only case on the order an orders file has under this id."""
    sku = f"SKU-{int(order_id.split('-')[1]) % 300}"
    return OpenCase(
        order_id=order_id, type="refund_only", reason="quality.x", amount="39.90", lines=[sku]
    )


def _answered(base: str, started: float) -> float:
    """Seconds from ``started`` until ``GET /healthz`` answers 200 (polled every 10 ms)."""
    import urllib.error
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5) as reply:
                if reply.status == 200:
                    return time.perf_counter() - started
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.01)


def _cpu_seconds(pid: int) -> float:
    """CPU time (user and system) of a process and its children that have exited and been
    waited for, and of its live children: what `serve` and its workers used so far."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / tick
    return total


def _http_client(
    base: str, key: str, ids: list[str], clients: int, count: int
) -> tuple[int, float, list[float], float]:
    """``clients`` connections at once from this process, each sending warm actions (a
    message on a case of its own) until ``count`` are done: done, seconds, each latency, and
    this process's CPU.

    The client is HTTP/1.1 written on asyncio's streams (connections kept alive, one request
    in flight on each, the answer read whole by its Content-Length): about a tenth of a
    millisecond of CPU per request, where httpx took 2 to 7 ms, more than the server it
    measured, on the same two cores."""
    import asyncio
    from urllib.parse import urlsplit

    where = urlsplit(base)
    host, port = where.hostname or "127.0.0.1", where.port or 80
    body = json.dumps({"text": "m", "as": "platform"}).encode()

    def request(method: str, path: str, data: bytes = b"") -> bytes:
        return (
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data

    async def exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes
    ) -> tuple[int, bytes]:
        writer.write(message)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await reader.readexactly(length)

    async def run() -> tuple[int, float, list[float], float]:
        for _ in range(100):  # until the server answers
            try:
                reader, writer = await asyncio.open_connection(host, port)
                await exchange(reader, writer, request("GET", "/healthz"))
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.2)
        messages = [request("POST", f"/v1/cases/{case}/message", body) for case in ids]
        latencies: list[float] = []
        streams = [await asyncio.open_connection(host, port) for _ in range(clients)]

        async def one(n: int, todo: int, timed: bool) -> None:
            reader, writer = streams[n]
            for i in range(todo):
                message = messages[(n + i * clients) % len(ids)]
                started = time.perf_counter()
                status, answer = await exchange(reader, writer, message)
                if status != 200:
                    raise SystemExit(f"HTTP {status}: {answer.decode(errors='replace')}")
                if timed:
                    latencies.append(time.perf_counter() - started)

        # Every case once, so each worker's cache has seen what it will be asked for.
        warm = len(ids) // clients + 1
        await asyncio.gather(*(one(n, warm, False) for n in range(clients)))
        started = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(one(n, count // clients, True) for n in range(clients)))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        for _, writer in streams:
            writer.close()
        return len(latencies), seconds, latencies, cpu

    return asyncio.run(run())


# Where a sampled stack's CPU went, by the first of these found in it from the innermost frame
# out (self time), and by any frame in it (inclusive); a frame is "function (path:line)".
PROFILE_PARTS: Sequence[tuple[str, str]] = (
    ("the key check", "authenticate"),
    ("the engine's work (Engine.handle, the group's save)", "engine/application/handler.py"),
    ("psycopg (statements, adapting values)", "(psycopg/"),
    ("the json module", "(json/"),
    ("FastAPI (routing, dependencies, validation)", "(fastapi/"),
    ("Starlette (requests, responses)", "(starlette/"),
    ("uvicorn (HTTP parsing, ASGI)", "(uvicorn/protocols/"),
)


def profile_summary(collapsed: str) -> list[str]:
    """py-spy's collapsed stacks (``frame;frame;... count``, a frame ``function (path:line)``)
    summarised: the share of samples with a frame of each part of ``PROFILE_PARTS`` on the
    stack (inclusive), and by the package or module of the innermost frame (self time)."""
    total = 0
    inclusive: dict[str, int] = {}
    leaves: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        for name, mark in PROFILE_PARTS:
            if mark in stack:
                inclusive[name] = inclusive.get(name, 0) + count
        leaf = stack.rsplit(";", 1)[-1]
        path = leaf[leaf.rfind("(") + 1 :].rsplit(":", 1)[0]
        package = path.split("/")[0] if "/" in path else path
        if package in ("engine", "commands", "projections"):
            package = f"aftersales {package}"
        leaves[package] = leaves.get(package, 0) + count
    if not total:
        return ["no samples"]
    lines = [f"{total} samples of the server at 16 clients"]
    lines += [
        f"{inclusive.get(name, 0) / total:.1%} inclusive: {name}" for name, _ in PROFILE_PARTS
    ]
    top = sorted(leaves.items(), key=lambda item: -item[1])[:12]
    lines.append("self time: " + ", ".join(f"{pkg} {n / total:.1%}" for pkg, n in top))
    return lines


def machine() -> str:
    cpus = os.cpu_count()
    with psycopg.connect(DEFAULT_STORE) as c:
        version = c.execute("SHOW server_version").fetchone()
    return (
        f"{platform.machine()}, {cpus} cores, Python {platform.python_version()}, "
        f"PostgreSQL {version[0] if version else '?'} on loopback, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def main() -> None:
    args = arguments().parse_args()
    bench = Bench(args.store, args.scale)
    bench.http_workers = args.http_workers
    bench.profile = Path(args.profile).resolve() if args.profile else None
    parts: list[Callable[[], None]] = [
        bench.raw_baselines,
        bench.statements_floor,
        bench.single_actions,
        bench.checks_cost,
        bench.batch,
        bench.order_import,
        bench.history,
        lambda: bench.catch_up("after the imports"),
        # After the command-line parts: the principal it adds makes every later command-line
        # action name who acts (--by).
        bench.http_actions,
    ]
    if args.only_http:
        parts = [bench.raw_baselines, bench.http_actions]
    elif args.only_single:
        parts = [bench.raw_baselines, bench.statements_floor, bench.single_actions]
    elif args.only_write:
        parts = [
            bench.raw_baselines,
            bench.single_actions,
            bench.checks_cost,
            bench.order_import,
            bench.history,
            bench.tick_firing,
        ]
    elif args.only_projections:
        parts = [bench.raw_baselines, bench.projection_logs]
    elif args.only_checks:
        parts = [bench.raw_baselines, bench.checks_cost]
    elif not args.skip_large:
        parts.append(bench.large_store)
    bench.run(parts)
    print(f"Machine: {machine()}\n")
    print(bench.table())
    for note in bench.notes:
        print(f"\n- {note}")


if __name__ == "__main__":
    main()
