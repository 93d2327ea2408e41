"""`aftersales policy what-if` on a store of a million events, against the raw read of the log.

    python scripts/bench_what_if.py [--store sqlite|postgresql://127.0.0.1:5432/test]
                                    [--events 1000000] [--reuse FILE.db]

Writes a synthetic, rule-abiding history (scripts/workload.py: orders every few seconds over
about two months, a quarter of them with a case) into a scratch store (an SQLite file in a
temporary folder, or a PostgreSQL schema of its own, dropped at the end), then measures, in the
same run on the same machine:

- the baseline: every stored event read once in log order, raw (rows fetched, nothing decoded),
  and read and decoded as events (the least any replay in Python does with them);
- `policy what-if` (merchant review 24 h instead of 48 h) over the whole history and over its
  first quarter, each as its own process, sampling its resident memory every 0.2 s: wall time,
  events read per second, peak memory, and memory at each quarter of the run (flat: the same
  peak for a quarter of the period as for all of it).

Prints a Markdown table; ``--json`` prints the figures as one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store",
        default="sqlite",
        help="sqlite (a file in a temporary folder) or a PostgreSQL URL (a scratch schema on it)",
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--reuse", type=Path, default=None, help="an SQLite store written by an earlier run"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

# Run as a file (python scripts/bench_what_if.py): the repository's folder holds `scripts`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aftersales.engine.storage.store import AftersalesStore
from scripts.workload import START, generate, say, scratch_schema

NEW_POLICY = 'name = "review-24h"\n\n[windows]\nmerchant_review_hours = 24\n'


def raw_read(store: AftersalesStore) -> tuple[int, float]:
    """Every stored event in log order, fetched and dropped: (events, seconds)."""
    recorder: Any = store.recorder
    table = recorder.events_table_name
    started = time.perf_counter()
    count = 0
    if store.is_postgres:
        with (
            recorder.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor(name="raw") as cursor,
        ):
            cursor.itersize = 10_000
            cursor.execute(
                f'SELECT originator_id, originator_version, topic, state FROM "{recorder.datastore.schema}".{table} '  # noqa: E501
                "ORDER BY notification_id"
            )
            for _ in cursor:
                count += 1
    else:
        import sqlite3

        assert store.url.path is not None
        with sqlite3.connect(store.url.path) as conn:
            cursor = conn.execute(
                f"SELECT originator_id, originator_version, topic, state FROM {table} "
                "ORDER BY rowid"
            )
            while rows := cursor.fetchmany(10_000):
                count += len(rows)
    return count, time.perf_counter() - started


def decoded_read(store: AftersalesStore) -> tuple[int, float]:
    """Every stored event in log order, read and decoded as its event class."""
    from uuid import UUID

    recorder: Any = store.recorder
    decode = store.mapper.decode
    started = time.perf_counter()
    count = 0
    last = 0
    while True:
        batch = recorder.select_notifications(start=last + 1, limit=10_000)
        if not batch:
            break
        for n in batch:
            uid = n.originator_id if isinstance(n.originator_id, UUID) else UUID(n.originator_id)
            decode(uid, n.originator_version, n.topic, bytes(n.state))
            count += 1
        last = batch[-1].id
    return count, time.perf_counter() - started


class Sampler:
    """A process's resident memory, sampled every 0.2 s from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.done = threading.Event()
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmRSS:"):
                    kib = int(line.split()[1])
                    self.samples.append((time.perf_counter() - self.started, kib))
            self.done.wait(0.2)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def quarters(self) -> list[float]:
        """The memory (MiB) at a quarter, half, three quarters and the end of the run."""
        if not self.samples:
            return []
        end = self.samples[-1][0]
        marks = []
        for share in (0.25, 0.5, 0.75, 1.0):
            kib = next(k for t, k in self.samples if t >= share * end)
            marks.append(round(kib / 1024, 1))
        return marks

    def peak(self) -> float:
        return round(max((k for _, k in self.samples), default=0) / 1024, 1)


def what_if_run(url: str, policy: Path, since: datetime, until: datetime) -> dict[str, Any]:
    """`policy what-if` as its own process: its report, wall time and memory."""
    command = [
        sys.executable,
        "-m",
        "aftersales.commands.cli.main",
        "--store",
        url,
        "policy",
        "what-if",
        "--policy",
        str(policy),
        "--since",
        since.isoformat(),
        "--until",
        until.isoformat(),
        "--json",
    ]
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        sampler = Sampler(child.pid)
        out, err = child.communicate()
        sampler.stop()
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"what-if failed ({child.returncode}): {err.decode()}")
    report = json.loads(out)
    return {
        "seconds": round(seconds, 1),
        "orders": report["orders"],
        "cases": report["cases"],
        "events_read": report["events_read"],
        "events_per_second": round(report["events_read"] / seconds),
        "actions_replayed": report["actions_replayed"],
        "actions_refused": report["actions_refused"],
        "changed": report["changed_count"],
        "difference": report["totals"]["difference"],
        "peak_mib": sampler.peak(),
        "mib_at_quarters": sampler.quarters(),
    }


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    figures: dict[str, Any] = {}
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-what-if-")))
        if args.reuse is not None:
            url = f"sqlite:///{args.reuse.resolve()}"
        elif args.store == "sqlite":
            url = f"sqlite:///{folder / 'store.db'}"
        else:
            url = stack.enter_context(scratch_schema(args.store, "bench_what_if"))
        store = AftersalesStore(url)
        stack.callback(store.close)
        if args.reuse is None:
            say(f"writing {args.events} events ...")
            started = time.perf_counter()
            written = generate(store, args.events)
            figures["written"] = {
                "events": written,
                "seconds": round(time.perf_counter() - started),
            }
        total, raw_seconds = raw_read(store)
        say(f"raw read: {total} events in {raw_seconds:.1f} s")
        decoded, decode_seconds = decoded_read(store)
        say(f"decoded read: {decoded} events in {decode_seconds:.1f} s")
        figures["store"] = {"backend": store.url.kind, "events": total}
        figures["raw_read"] = {
            "seconds": round(raw_seconds, 3),
            "events_per_second": round(total / raw_seconds),
        }
        figures["decoded_read"] = {
            "seconds": round(decode_seconds, 3),
            "events_per_second": round(decoded / decode_seconds),
        }
        rows = store.query("SELECT max(opened_at) AS last FROM {t}aftersales_cases")
        last = rows[0]["last"]
        until = (
            last if isinstance(last, datetime) else datetime.fromisoformat(str(last))
        ) + timedelta(seconds=1)
        since = START
        policy = folder / "review-24h.toml"
        policy.write_text(NEW_POLICY)
        quarter = since + (until - since) / 4
        for name, end in (("what_if_quarter", quarter), ("what_if", until)):
            say(f"{name}: {since.isoformat()} to {end.isoformat()} ...")
            figures[name] = what_if_run(url, policy, since, end)
            say(f"{name}: {figures[name]}")
        figures["period_days"] = round((until - since).total_seconds() / 86400, 1)
    whole = figures["what_if"]
    # The whole log read in the baseline's time, against the what-if over the same history.
    total = figures["store"]["events"]
    whole["store_events_per_second"] = round(total / whole["seconds"])
    figures["times_raw_read"] = round(whole["seconds"] / max(raw_seconds, 1e-6), 1)
    figures["times_decoded_read"] = round(whole["seconds"] / max(decode_seconds, 1e-6), 1)
    if args.json:
        print(json.dumps(figures))
    else:
        print(table(figures))
    return 0


def table(f: dict[str, Any]) -> str:
    w, q = f["what_if"], f["what_if_quarter"]
    rows = [
        ("store", f"{f['store']['backend']}, {f['store']['events']} events, "
         f"{f['period_days']} days"),
        ("raw read of the log (baseline)", f"{f['raw_read']['events_per_second']} events/s, "
         f"{f['raw_read']['seconds']} s"),
        ("read and decoded", f"{f['decoded_read']['events_per_second']} events/s, "
         f"{f['decoded_read']['seconds']} s"),
        ("what-if, whole period", f"{w['seconds']} s; {w['events_read']} events of "
         f"{w['orders']} orders read, {w['events_per_second']} events/s; "
         f"{w['actions_replayed']} actions replayed, {w['changed']} cases changed"),
        ("what-if, memory", f"peak {w['peak_mib']} MiB; at each quarter of the run "
         f"{w['mib_at_quarters']} MiB"),
        ("what-if, first quarter", f"{q['seconds']} s, {q['events_read']} events, peak "
         f"{q['peak_mib']} MiB"),
        ("what-if over the store", f"{w['store_events_per_second']} events of the store a "
         f"second: {f['times_raw_read']}x the raw read's time, "
         f"{f['times_decoded_read']}x the decoded read's"),
    ]  # fmt: skip
    lines = ["| measure | figure |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
