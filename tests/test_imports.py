"""Bulk paths: order import (CSV, JSON Lines) and import-history keep every rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.bulk import Report
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.inputs import ORDER_FIELDS
from aftersales.engine.application.requests import ApproveCase, ListCases, OpenCase, new_case_id
from aftersales.engine.application.workers import Worker, in_processes
from aftersales.engine.domain.errors import NotFound
from tests.conftest import at

HEADER = ",".join(ORDER_FIELDS)
CSV = (
    HEADER
    + """
KS-1,shop-1,buyer-1,CASE-RED,1,39.90,phone_accessory,{t0},,,,{t2}
KS-1,shop-1,buyer-1,GIFT,1,5.00,gift,{t0},,,,{t2}
KS-2,shop-1,buyer-2,SHIRT,2,129.00,apparel,{t0},{t1},SF,SF77,
KS-3,shop-2,buyer-3,BAD,0,1.00,,{t0},,,,
KS-4,shop-2,buyer-4,HAT,1,12.x,,{t0},,,,
KS-5,shop-2,buyer-5,CAP,1,15.00,,{t0},,,,
""".format(t0=at(), t1=at(days=1), t2=at(days=2))
)


def invoke(store: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["--store", store, *args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_order_import_csv(store_url: str, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(CSV)
    code, report = invoke(store_url, "order", "import", str(path), "--chunk", "2")
    assert code == 2
    assert (report["lines"], report["ok"], report["failed"]) == (5, 3, 2)
    assert report["events"] == 3 + 2 + 1  # placed x3, KS-1 shipped+delivered, KS-2 shipped
    assert [e["line"] for e in report["errors"]] == [5, 6]
    with Engine(store_url) as engine:
        one = engine.stored_order("KS-1")
        assert [line["sku"] for line in one["lines"]] == ["CASE-RED", "GIFT"]
        assert one["total"] == "44.90" and one["delivered_at"] == at(days=2)
        two = engine.stored_order("KS-2")
        assert two["waybill"] == "SF77" and two["delivered_at"] is None
        assert engine.stored_order("KS-5")["total"] == "15.00"
        count = engine.store.recorder.max_notification_id()
    # Importing the same file again appends nothing.
    code, again = invoke(store_url, "order", "import", str(path))
    assert again["ok"] == 3 and again["events"] == 0
    with Engine(store_url) as engine:
        assert engine.store.recorder.max_notification_id() == count
    # A changed order under the same id is refused, not silently merged.
    path.write_text(CSV.replace("39.90", "29.90"))
    code, changed = invoke(store_url, "order", "import", str(path))
    assert any("imported before with other facts" in e["message"] for e in changed["errors"])


def test_order_import_jsonl(store_url: str, tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    rows = [
        {
            "order_id": "KS-1",
            "merchant": "m",
            "buyer": "b",
            "at": at(),
            "lines": ["A:1:10.00", {"sku": "B", "quantity": 2, "unit_price": "2.50"}],
            "delivered_at": at(days=1),
        },
        {
            "order_id": "KS-2",
            "merchant": "m",
            "buyer": "b",
            "lines": [{"sku": "C", "quantity": 1, "unit_price": 2.5}],
        },
        "not json",
    ]
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    code, report = invoke(store_url, "order", "import", str(path))
    assert code == 2 and report["ok"] == 1
    assert {e["line"] for e in report["errors"]} == {2, 3}
    assert "float" in report["errors"][0]["message"]
    with Engine(store_url) as engine:
        assert engine.stored_order("KS-1")["total"] == "15.00"


def history() -> list[dict[str, Any]]:
    c1 = str(new_case_id(None, "h-open-1"))
    c2 = str(new_case_id(None, "h-open-2"))
    return [
        {
            "action": "order place",
            "order_id": "KS-1",
            "merchant": "shop-1",
            "buyer": "buyer-1",
            "line": ["CASE-RED:1:39.90:phone_accessory", "GIFT:1:5.00"],
            "at": at(),
            "command_id": "h-place",
        },
        {"action": "order deliver", "order_id": "KS-1", "at": at(days=2), "command_id": "h-del"},
        {
            "action": "case open",
            "order_id": "KS-1",
            "type": "return_refund",
            "reason": "quality.colour",
            "amount": "39.90",
            "line": ["CASE-RED"],
            "at": at(days=3),
            "command_id": "h-open-1",
        },
        # A second case on the same line while the first is open: refused by the rules.
        {
            "action": "case open",
            "order_id": "KS-1",
            "type": "refund_only",
            "reason": "quality.colour",
            "amount": "1.00",
            "line": ["CASE-RED"],
            "at": at(days=3),
            "command_id": "h-open-x",
        },
        {
            "action": "case approve",
            "case_id": c1,
            "at": at(days=3, hours=5),
            "command_id": "h-approve-1",
        },
        {
            "action": "case ship-back",
            "case_id": c1,
            "carrier": "SF",
            "waybill": "SF1",
            "at": at(days=4),
            "command_id": "h-ship-1",
        },
        {
            "action": "case open",
            "order_id": "KS-1",
            "type": "refund_only",
            "reason": "missing_items.gift",
            "amount": "5.00",
            "line": ["GIFT"],
            "at": at(days=4),
            "command_id": "h-open-2",
        },
        {"action": "case receive", "case_id": c1, "at": at(days=6), "command_id": "h-recv-1"},
        {
            "action": "case reject",
            "case_id": c2,
            "reason": "gift was in the box",
            "communication": "chat:9",
            "at": at(days=5, hours=20),
            "command_id": "h-reject-2",
        },
        {
            "action": "case escalate",
            "case_id": c2,
            "claim": "missing_items",
            "at": at(days=7),
            "command_id": "h-esc-2",
        },
        {
            "action": "case rate",
            "case_id": c1,
            "score": 4,
            "at": at(days=7),
            "command_id": "h-rate-1",
        },
        {"action": "case approve", "case_id": c1, "at": at(days=8)},  # refunded already
    ]


def test_import_history_equals_the_same_actions_one_by_one(tmp_path: Path, store_url: str) -> None:
    text = "\n".join(json.dumps(r) for r in history())
    path = tmp_path / "history.jsonl"
    path.write_text(text)
    code, report = invoke(store_url, "import-history", str(path), "--chunk", "3")
    assert code == 3
    assert (report["ok"], report["failed"]) == (10, 2)
    assert [e["line"] for e in report["errors"]] == [4, 12]
    other = f"sqlite:///{tmp_path / 'one-by-one.db'}"
    result = CliRunner().invoke(cli, ["--store", other, "batch", "-"], input=text)
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["line"] for x in lines if not x["ok"]] == [4, 12]
    with Engine(store_url) as bulk, Engine(other) as single:
        for case_id in (str(new_case_id(None, "h-open-1")), str(new_case_id(None, "h-open-2"))):
            a, b = bulk.stored_case(case_id), single.stored_case(case_id)
            assert a == b
        assert bulk.stored_order("KS-1") == single.stored_order("KS-1")
        assert bulk.handle(ListCases()) == single.handle(ListCases())
        assert bulk.stored_case(str(new_case_id(None, "h-open-1")))["status"] == "refunded"
        assert bulk.stored_case(str(new_case_id(None, "h-open-2")))["status"] == "escalated"
    # Re-running the import appends nothing.
    code, again = invoke(store_url, "import-history", str(path))
    assert again["events"] == 0 and again["ok"] == 10


@pytest.mark.parametrize("workers", [1, 3])
def test_generated_workload_imported_equals_applied_one_by_one(
    tmp_path: Path, store_url: str, workers: int
) -> None:
    """scripts/loadgen.py's workload (ticks included) through import-history, against the
    same lines through batch one by one on another store: the same cases, the same states.
    With 3 workers (real processes, PostgreSQL only) too: each takes the lines of its
    orders, cases acted on in later chunks are found through the store, and ticks run once
    everything before them is saved by every worker."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    workload = subprocess.run(
        [
            sys.executable,
            "scripts/loadgen.py",
            "--orders",
            "150",
            "--seed",
            "11",
            "--merchants",
            "5",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = tmp_path / "workload.jsonl"
    path.write_text(workload)
    assert '"action":"tick"' in workload and '"case rule"' in workload.replace(
        '"action":"case rule"', '"case rule"'
    )
    if workers > 1 and not store_url.startswith("postgresql"):
        code, refused = invoke(store_url, "import-history", str(path), "--workers", "2")
        assert code == 2 and "PostgreSQL" in refused["error"]["message"]
        return
    _, report = invoke(
        store_url, "import-history", str(path), "--chunk", "97", "--workers", str(workers)
    )
    other = f"sqlite:///{tmp_path / 'one-by-one.db'}"
    result = CliRunner().invoke(cli, ["--store", other, "batch", str(path)])
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    # The same lines fail both ways (a generated workload has a few late people whose
    # actions the rules refuse), and everything else succeeds.
    failed_one_by_one = [x["line"] for x in lines if not x["ok"]]
    assert [e["line"] for e in report["errors"]] == failed_one_by_one
    assert report["ok"] == len(lines) - len(failed_one_by_one) > 0
    with Engine(store_url) as bulk, Engine(other) as single:
        listed = bulk.handle(ListCases())
        assert listed == single.handle(ListCases())
        assert len(listed) > 20
        statuses = {c["status"] for c in listed}
        assert {"refunded", "closed", "completed"} <= statuses
        for case in listed:
            assert bulk.stored_case(case["case_id"]) == single.stored_case(case["case_id"])


def test_a_chunk_that_loses_a_race_is_redone_with_the_chunk_worked_out_on_top_of_it(
    store_url: str,
) -> None:
    """Chunk 1 opens a case on an order that another writer changes before chunk 1 is saved;
    chunk 2 (worked out in memory while chunk 1 was being saved, on PostgreSQL) approves that
    case. Chunk 1's save fails on the order's version, and both chunks are redone one by one
    on the new state: nothing is lost, nothing is counted twice."""
    from aftersales.engine.application.bulk import Item, run_bulk
    from tests.conftest import place_delivered

    lines = ("CASE-RED:1:39.90:phone_accessory", "STRAP:1:9.90:phone_accessory")
    case_a = str(new_case_id(None, "bulk-open-a"))
    with Engine(store_url) as engine, Engine(store_url) as other:
        place_delivered(engine, "KS-R", lines=lines)
        before = len(engine.store.query("SELECT notification_id FROM {t}aftersales_event_log"))

        def apply(e: Engine, step: str) -> None:
            if step == "open":
                e.handle(
                    OpenCase(
                        order_id="KS-R",
                        type="refund_only",
                        reason="quality.colour",
                        amount="39.90",
                        lines=["CASE-RED"],
                        at=at(days=3),
                        command_id="bulk-open-a",
                    )
                )
            elif step == "race":  # another process opens a case on the same order, now
                other.handle(
                    OpenCase(
                        order_id="KS-R",
                        type="refund_only",
                        reason="quality.strap",
                        amount="9.90",
                        lines=["STRAP"],
                        at=at(days=3),
                        command_id="race-open-b",
                    )
                )
            else:
                e.handle(
                    ApproveCase(case_id=case_a, at=at(days=3, hours=1), command_id="bulk-approve-a")
                )

        items = [Item(1, "open"), Item(2, "race"), Item(3, "approve")]
        report = run_bulk(engine, items, apply, chunk_size=2)
        assert (report.ok, report.failed, report.lines) == (3, 0, 3)
        # Approving a refund-only case refunds it: approved and refunded, once each.
        assert engine.stored_case(case_a)["status"] == "refunded"
        assert engine.stored_case(case_a)["version"] == 3
        case_b = engine.stored_case(str(new_case_id(None, "race-open-b")))
        assert case_b["status"] == "awaiting_merchant"
        order = engine.stored_order("KS-R")
        assert {x["sku"]: (x["open_case_id"], x["refunded"]) for x in order["lines"]} == {
            "CASE-RED": (None, "39.90"),
            "STRAP": (case_b["case_id"], "0.00"),
        }
        assert sorted(order["case_ids"]) == sorted([case_a, case_b["case_id"]])
        after = len(engine.store.query("SELECT notification_id FROM {t}aftersales_event_log"))
        # Case B's opening (case and order) is the other writer's; the rest is the import's.
        assert report.events == after - before - 2 > 0


def test_an_imported_order_is_one_action_saved_at_once(store_url: str, tmp_path: Path) -> None:
    """An order's facts are placed, shipped and delivered together: a record whose delivery
    the rules refuse (before the order was placed) leaves nothing behind, and facts added
    later (the delivery of an order imported as shipped) are appended to what is there."""
    path = tmp_path / "orders.jsonl"
    rows = [
        {"order_id": "KS-1", "merchant": "m", "buyer": "b", "at": at(days=2), "lines": ["A:1:10"]},
        {
            "order_id": "KS-2",
            "merchant": "m",
            "buyer": "b",
            "at": at(days=2),
            "delivered_at": at(days=1),
            "lines": ["A:1:10"],
        },
        {
            "order_id": "KS-3",
            "merchant": "m",
            "buyer": "b",
            "at": at(),
            "shipped_at": at(days=1),
            "carrier": "SF",
            "waybill": "SF3",
            "lines": ["A:1:10"],
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    code, report = invoke(store_url, "order", "import", str(path))
    assert (code, report["ok"], report["failed"], report["events"]) == (2, 2, 1, 3)
    assert [e["line"] for e in report["errors"]] == [2]
    assert "before order KS-2" in report["errors"][0]["message"]
    with Engine(store_url) as engine:
        assert engine.find_order("KS-2") is None  # nothing of the refused record
        assert engine.stored_order("KS-3")["delivered_at"] is None
    rows[2]["delivered_at"] = at(days=3)
    path.write_text(json.dumps(rows[2]))
    code, report = invoke(store_url, "order", "import", str(path))
    assert (code, report["ok"], report["events"]) == (0, 1, 1)
    with Engine(store_url) as engine:
        three = engine.stored_order("KS-3")
        assert (three["waybill"], three["delivered_at"], three["version"]) == ("SF3", at(days=3), 3)


def test_order_import_on_several_workers_equals_one(store_url: str, tmp_path: Path) -> None:
    """--workers 3 (real processes, each taking the orders whose id hashes to it) gives the
    same orders, the same errors in line order, and the same re-run as one worker; standard
    input works too. On SQLite, one writer at a time, it is refused and nothing is written."""
    rows: list[Any] = []
    for i in range(60):
        rows.append(
            {
                "order_id": f"KS-{i}",
                "merchant": f"m-{i % 4}",
                "buyer": f"b-{i}",
                "at": at(),
                "lines": [f"A{i}:1:10.00", "GIFT:1:0.00:gift:5.00"],
                **({"delivered_at": at(days=2)} if i % 3 else {}),
            }
        )
        if i % 17 == 5:
            rows.append({"order_id": f"BAD-{i}", "merchant": "m", "buyer": "b", "lines": []})
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    if not store_url.startswith("postgresql"):
        code, report = invoke(store_url, "order", "import", str(path), "--workers", "2")
        assert code == 2 and "PostgreSQL" in report["error"]["message"]
        with Engine(store_url) as engine:
            assert engine.find_order("KS-1") is None
        return
    one = f"sqlite:///{tmp_path / 'one.db'}"
    code_one, single = invoke(one, "order", "import", str(path), "--chunk", "7")
    code, parallel = invoke(
        store_url, "order", "import", str(path), "--chunk", "7", "--workers", "3"
    )
    assert code == code_one == 2
    for key in ("lines", "ok", "failed", "events"):
        assert parallel[key] == single[key], key
    assert parallel["errors"] == single["errors"]
    assert [e["line"] for e in parallel["errors"]] == [7, 25, 43, 61]
    with Engine(store_url) as engine, Engine(one) as reference:
        for i in range(60):
            assert engine.stored_order(f"KS-{i}") == reference.stored_order(f"KS-{i}")
    result = CliRunner().invoke(
        cli,
        ["--store", store_url, "order", "import", "-", "--workers", "2", "--json"],
        input=path.read_text(),
    )
    again = json.loads(result.stdout)
    assert (again["ok"], again["events"]) == (60, 0)
    # CSV, where an order is several rows: each worker groups its orders' rows as one.
    csv_path = tmp_path / "orders.csv"
    csv_path.write_text(CSV.replace("KS-", "CSV-"))
    code, by_csv = invoke(store_url, "order", "import", str(csv_path), "--workers", "2")
    code_one, by_csv_one = invoke(one, "order", "import", str(csv_path))
    assert (code, by_csv["ok"], by_csv["events"]) == (code_one, 3, 6) == (2, 3, 6)
    assert by_csv["errors"] == by_csv_one["errors"]
    with Engine(store_url) as engine, Engine(one) as reference:
        for order_id in ("CSV-1", "CSV-2", "CSV-5"):
            assert engine.stored_order(order_id) == reference.stored_order(order_id)


def test_history_workers_send_a_cases_lines_to_its_orders_worker(
    tmp_path: Path, store_url: str
) -> None:
    """Cases are withdrawn and their lines taken by new cases right after: the withdrawal
    names only the case, and must run on its order's worker, before the new case, for the
    line to be free (as one by one). Case A is withdrawn in the chunk after the one that
    opened it (its saves may still be on their way: its order is known from that chunk),
    case B two chunks later (its order is found in the store). The case id alone would send
    the withdrawals to another worker."""
    from aftersales.engine.application.inputs import order_owner

    if not store_url.startswith("postgresql"):
        pytest.skip("more than one worker needs PostgreSQL")
    case_a, case_b = new_case_id(None, "w-open-a"), new_case_id(None, "w-open-b")
    order = next(
        f"KS-{n}"
        for n in range(100)
        if order_owner(f"KS-{n}", 3) != order_owner(str(case_a), 3)
        and order_owner(f"KS-{n}", 3) != order_owner(str(case_b), 3)
    )

    def opening(command_id: str, line: str, when: str) -> dict[str, Any]:
        return {
            "action": "case open",
            "order_id": order,
            "type": "refund_only",
            "reason": "quality.colour",
            "amount": "9.90",
            "line": [line],
            "at": when,
            "command_id": command_id,
        }

    def placing(order_id: str) -> dict[str, Any]:
        return {
            "action": "order place",
            "order_id": order_id,
            "merchant": "shop-1",
            "buyer": "buyer-1",
            "line": ["CASE-RED:1:9.90", "STRAP:1:9.90"],
            "at": at(),
        }

    rows = [  # chunks of 3
        placing(order),
        {"action": "order deliver", "order_id": order, "at": at(days=1)},
        opening("w-open-a", "CASE-RED", at(days=2)),
        {"action": "case withdraw", "case_id": str(case_a), "at": at(days=3)},
        opening("w-open-c", "CASE-RED", at(days=3, hours=1)),
        opening("w-open-b", "STRAP", at(days=3, hours=2)),
        placing("OTHER-1"),
        placing("OTHER-2"),
        placing("OTHER-3"),
        {"action": "case withdraw", "case_id": str(case_b), "at": at(days=4)},
        opening("w-open-e", "STRAP", at(days=4, hours=1)),
    ]
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    code, report = invoke(store_url, "import-history", str(path), "--chunk", "3", "--workers", "3")
    assert (code, report["ok"], report["failed"]) == (0, len(rows), 0), report["errors"]
    with Engine(store_url) as engine:
        for closed in (case_a, case_b):
            assert engine.stored_case(str(closed))["status"] == "closed"
        for key in ("w-open-c", "w-open-e"):
            assert engine.stored_case(str(new_case_id(None, key)))["status"] == "awaiting_merchant"


def _share_that_fails_on_worker_1(worker: Worker) -> Report:
    if worker.index == 1:
        raise NotFound("no such thing on worker 1")
    worker.sync()  # worker 0 waits for worker 1, which never comes
    return Report(lines=1, ok=1)


def test_a_failing_worker_stops_the_others_and_its_error_is_reported(store_url: str) -> None:
    """Workers wait for each other at sync points; one that fails breaks the wait for all
    (rather than leaving them waiting), and the run reports that worker's error."""
    import time

    if not store_url.startswith("postgresql"):
        pytest.skip("more than one worker needs PostgreSQL")
    started = time.monotonic()
    with pytest.raises(NotFound, match="no such thing on worker 1"):
        in_processes(store_url, _share_that_fails_on_worker_1, (), workers=2)
    assert time.monotonic() - started < 60


def test_lines_after_a_tick_are_loaded_together_not_one_by_one(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tick empties the session (it changed the store behind it); the lines after it, up to
    the next tick, have what they need loaded with a few queries, not one per line."""
    from aftersales.engine.storage.store import AftersalesStore

    rows: list[dict[str, Any]] = []
    for i in range(12):
        rows.append(
            {
                "action": "order place",
                "order_id": f"KS-{i}",
                "merchant": "shop-1",
                "buyer": f"buyer-{i}",
                "line": ["A:1:10.00"],
                "at": at(hours=i),
                "command_id": f"place-{i}",
            }
        )
        rows.append({"action": "order deliver", "order_id": f"KS-{i}", "at": at(days=1, hours=i)})
        if i % 4 == 3:
            rows.append({"action": "tick", "now": at(days=2, hours=i)})
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    calls = {"load_many": 0, "find_command": 0}
    load_many, find_command = AftersalesStore.load_many, Engine.find_command

    def counting_load_many(self: AftersalesStore, ids: Any, poisoned: Any = None) -> Any:
        calls["load_many"] += 1
        return load_many(self, ids, poisoned)

    def counting_find_command(self: Engine, command_id: str) -> Any:
        calls["find_command"] += 1
        return find_command(self, command_id)

    monkeypatch.setattr(AftersalesStore, "load_many", counting_load_many)
    monkeypatch.setattr(Engine, "find_command", counting_find_command)
    code, report = invoke(store_url, "import-history", str(path), "--chunk", "100")
    assert (code, report["ok"]) == (0, len(rows)), report["errors"]
    # Four runs of lines (before, between and after three ticks), each loaded at once.
    assert calls["find_command"] == 0
    assert calls["load_many"] <= 2 * 4


def _share_that_dies_on_worker_1(worker: Worker) -> Report:
    import os

    if worker.index == 1:
        os._exit(9)  # as if killed: no error sent, no wait broken
    worker.sync()
    return Report(lines=1, ok=1)


def test_a_worker_that_dies_is_reported_and_the_others_stop_waiting(store_url: str) -> None:
    """A worker killed outright (out of memory, a signal) sends nothing; the run does not
    wait for it forever: it reports which worker ended, and the others are released."""
    import time

    from aftersales.engine.domain.errors import AftersalesError

    if not store_url.startswith("postgresql"):
        pytest.skip("more than one worker needs PostgreSQL")
    started = time.monotonic()
    with pytest.raises(AftersalesError, match="worker 1 ended unexpectedly"):
        in_processes(store_url, _share_that_dies_on_worker_1, (), workers=2)
    assert time.monotonic() - started < 60
