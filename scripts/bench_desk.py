"""The desk's server time and page size for a merchant with many open cases, on PostgreSQL.

    python scripts/bench_desk.py [--open 10000] [--history 100000] [--url postgresql://...]

Writes, into a schema of its own, a history of other merchants' orders and cases
(``scripts/workload.py``) and one merchant, ``shop-big``, with ``--open`` cases waiting for
it (opened over the last two days, so their deadlines spread), through the real aggregates
and bulk saves; catches the projections up; signs a merchant principal in; then times, in
process (the application's own time, no network), the requests of the desk against the
cheapest request of the same application (``/healthz``, the baseline) and the API's
dashboard report. Prints a Markdown table and drops the schema at the end.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--open", type=int, default=10_000, help="shop-big's open cases")
    parser.add_argument("--history", type=int, default=100_000, help="other merchants' events")
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument(
        "--url",
        default=os.environ.get("AFTERSALES_TEST_POSTGRES", "postgresql://127.0.0.1:5432/test"),
    )
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient

from aftersales.commands.desk import views
from aftersales.commands.http.app import create_app
from aftersales.engine.access.principal_store import add_principal, create_key
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.order import Order
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.values import CaseType
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector
from scripts.workload import Story, Writer, generate, say, scratch_schema

MERCHANT = "shop-big"


def open_cases(store: AftersalesStore, count: int, now: datetime) -> int:
    """``count`` delivered orders of MERCHANT, each with a case waiting for the merchant."""
    rng = random.Random(5)
    story = Story(Policy(), rng)
    writer = Writer(store)
    for n in range(count):
        opened = now - timedelta(hours=rng.uniform(0, 47))
        order = story.order(n, MERCHANT, opened - timedelta(days=3), prefix="BIG-")
        kind = rng.choice((CaseType.REFUND_ONLY, CaseType.RETURN_REFUND))
        reason = rng.choice(("quality.defective", "logistics.late", "buyer.changed_mind"))
        case = story.open_case(order, kind, reason, opened)
        aggregates: list[Order | ReturnCase] = [order, case]
        writer.add(*aggregates)
    writer.flush()
    return writer.events


def timed(
    client: TestClient, path: str, repeat: int, headers: dict[str, str] | None = None
) -> tuple[float, int, int]:
    """Median milliseconds of a GET, its body's size and its gzip-compressed size."""
    samples = []
    body = b""
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        body = response.content
    return statistics.median(samples), len(body), len(gzip.compress(body))


def main() -> None:
    args = arguments().parse_args()

    with scratch_schema(args.url, "bench_desk") as url:
        store = AftersalesStore(url)
        now = datetime.now(UTC)
        try:
            say(f"writing {args.history:,} events of history and {args.open:,} open cases ...")
            started = time.perf_counter()
            events = generate(store, args.history) + open_cases(store, args.open, now)
            say(f"  {events:,} events in {time.perf_counter() - started:.0f} s; catching up ...")
            Projector(store).catch_up(VIEWS)
            Projector(store).analyze(VIEWS)
            add_principal(store, "staff-big", "merchant", MERCHANT, now)
            key = create_key(store, "staff-big", now, None)["key"]

            with TestClient(create_app(url)) as client:
                signed = client.post(
                    "/login", data={"key": key}, headers={"Origin": "http://testserver"}
                )
                assert signed.status_code == 200, signed.text  # followed to the desk
                auth = {"Authorization": f"Bearer {key}"}
                rows: list[tuple[str, float, int, int]] = []
                base = timed(client, "/healthz", args.repeat)
                rows.append(("`GET /healthz` (baseline: the app's cheapest request)", *base))
                for what, path in (
                    ("`GET /` the desk, whole page", "/"),
                    ("`GET /desk/live` the part live refresh replaces", "/desk/live"),
                    ("`GET /desk/position` what live refresh polls", "/desk/position"),
                    ("`GET /desk/rates` return rates, 8 weeks by SKU", "/desk/rates"),
                ):
                    rows.append((what, *timed(client, path, args.repeat)))
                client.cookies.clear()
                rows.append(
                    (
                        "`GET /v1/reports/dashboard` (the API's JSON, for comparison)",
                        *timed(client, "/v1/reports/dashboard", args.repeat, auth),
                    )
                )
            # Where the return-rates page's time goes.
            parts: tuple[tuple[str, Callable[[], object]], ...] = (
                ("weekly series", lambda: views.weekly(store, MERCHANT, now, 8)),
                ("breakdown by sku", lambda: views.breakdown(store, "sku", MERCHANT, now, 8)),
            )
            for what, fn in parts:
                samples = []
                for _ in range(5):
                    started = time.perf_counter()
                    fn()
                    samples.append((time.perf_counter() - started) * 1000)
                say(f"  rates page: {what} {statistics.median(samples):.0f} ms")
            script = Path(__file__).resolve().parent.parent / "commands/desk/static/echarts.min.js"
            chart = script.read_bytes()
            lines = [
                f"Desk benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()} "
                f"({os.cpu_count()} cores, shared), PostgreSQL on loopback; {MERCHANT} has "
                f"{args.open:,} open cases waiting for it, among {events:,} events in all. "
                f"Median of {args.repeat}, in process (no network).",
                "",
                "| request | ms | vs baseline | bytes | gzip bytes |",
                "|---|---:|---:|---:|---:|",
            ]
            baseline = rows[0][1]
            for what, ms, size, packed in rows:
                lines.append(
                    f"| {what} | {ms:.1f} | {ms / baseline:.1f} x | {size:,} | {packed:,} |"
                )
            lines.append(
                f"| `echarts.min.js` (static, once per browser) | | | {len(chart):,} | "
                f"{len(gzip.compress(chart)):,} |"
            )
            print("\n".join(lines))
        finally:
            store.close()


if __name__ == "__main__":
    main()
