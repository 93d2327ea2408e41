"""The clock: deadlines fire when nobody acts, once, and never after the case moved on.

Every scenario runs on SQLite and PostgreSQL; where concurrency is the point, real processes race
on PostgreSQL (and the same interleavings are forced deterministically on both backends).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from click.testing import CliRunner

from aftersales.commands.cli.demo.play import play
from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    ApproveCase,
    DeliverOrder,
    EscalateCase,
    ListCases,
    OpenCase,
    PlaceOrder,
    ShipBack,
    WithdrawCase,
)
from aftersales.engine.application.tick import TickReport, due_deadlines, tick
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.errors import Conflict, NotAllowed
from aftersales.engine.domain.policy import Policy, Windows
from tests.conftest import at, place_delivered

ROOT = Path(__file__).resolve().parent.parent
SECOND = timedelta(seconds=1)
FIRED_TOPICS = ("CaseAutoApproved", "CaseAutoClosed", "CaseAutoRefunded", "ReshipOverdue")


def t(value: str) -> datetime:
    return datetime.fromisoformat(value)


def opened(engine: Engine, case_type: str = "return_refund", order_id: str = "KS-1") -> str:
    """A case opened at day 3 on a delivered order: the merchant's 48 hours end at day 5."""
    place_delivered(
        engine, order_id, lines=("CASE-RED:1:39.90:phone_accessory", "GIFT:1:5.00:gift")
    )
    reship = case_type == "reship"
    case = engine.handle(
        OpenCase(
            order_id=order_id,
            type=case_type,
            reason="missing_items.gift" if reship else "quality.colour",
            amount="5.00" if reship else "39.90",
            lines=["GIFT"] if reship else ["CASE-RED"],
            at=at(days=3),
        )
    )
    return str(case["case_id"])


def events(engine: Engine, case_id: str) -> list[dict[str, Any]]:
    """The case's events as stored (the JSON an auditor reads), each with its topic."""
    rows = engine.store.query(
        "SELECT topic, data FROM {t}aftersales_event_log WHERE originator_id = ? "
        "ORDER BY originator_version",
        (case_id,),
    )
    out = []
    for row in rows:
        data = row["data"] if isinstance(row["data"], dict) else json.loads(row["data"])
        out.append({"type": row["topic"].rsplit(":", 1)[-1], **data})
    return out


def kinds(engine: Engine, case_id: str) -> list[str]:
    return [e["type"] for e in events(engine, case_id)]


def fired_of(result: TickReport) -> list[tuple[str, str, datetime]]:
    return [(d.case_id, d.action.value, d.due_at) for d in result.fired]


# Each deadline: set up the wait, then (case id, when it is due, action, status after firing).


def wait_merchant(e: Engine) -> tuple[str, datetime]:
    return opened(e, "refund_only"), t(at(days=5))


def wait_buyer(e: Engine) -> tuple[str, datetime]:
    cid = opened(e)
    e.handle(ApproveCase(case_id=cid, at=at(days=3, hours=2)))
    return cid, t(at(days=13, hours=2))


def wait_receipt(e: Engine) -> tuple[str, datetime]:
    cid, _ = wait_buyer(e)
    e.handle(ShipBack(case_id=cid, carrier="SF", waybill="SF1", at=at(days=4)))
    return cid, t(at(days=14))


def wait_reship(e: Engine) -> tuple[str, datetime]:
    cid = opened(e, "reship")
    e.handle(ApproveCase(case_id=cid, at=at(days=3, hours=2)))
    return cid, t(at(days=4, hours=2))


DEADLINES = {
    "auto_approve": (wait_merchant, "refunded", "CaseAutoApproved"),
    "auto_close": (wait_buyer, "closed", "CaseAutoClosed"),
    "auto_refund": (wait_receipt, "refunded", "CaseAutoRefunded"),
    "reship_overdue": (wait_reship, "refunded", "ReshipOverdue"),
}


@pytest.mark.parametrize("action", list(DEADLINES))
def test_each_deadline_fires_at_its_limit_and_not_a_second_before(
    engine: Engine, action: str
) -> None:
    setup, status_after, event_type = DEADLINES[action]
    cid, due = setup(engine)
    before = engine.stored_case(cid)
    assert before["due_action"] == action and t(before["due_at"]) == due

    early = tick(engine, due - SECOND)
    assert early.fired == [] and early.skipped == [] and early.failed == []
    assert engine.stored_case(cid)["version"] == before["version"]

    result = tick(engine, due)
    assert fired_of(result) == [(cid, action, due)]
    after = engine.stored_case(cid)
    assert after["status"] == status_after
    history = events(engine, cid)
    fired = [e for e in history if e["type"] == event_type]
    assert len(fired) == 1
    assert fired[0]["actor"] == {"role": "system", "id": "system"}
    assert t(fired[0]["at"]) == due  # it happened at the deadline, not when the tick ran
    assert fired[0]["fired"]["action"] == action
    assert t(fired[0]["fired"]["due_at"]) == due
    assert fired[0]["command_id"] == f"deadline:{cid}:{before['version']}:{action}"
    if action == "auto_refund":
        assert after["refunded_amount"] == "39.90" and after["refund_paid_by"] == "merchant"
    if action == "reship_overdue":
        assert after["refund_paid_by"] == "platform" and after["late_shipment"] is True
        assert history[-1]["type"] == "CaseRefunded" and history[-1]["owed_by"] == "merchant"


def test_never_after_the_case_moved_on(engine: Engine) -> None:
    """The merchant approves at hour 47: the 48-hour deadline never fires; the buyer's own
    10 days run from the approval."""
    cid = opened(engine)
    engine.handle(ApproveCase(case_id=cid, at=at(days=4, hours=23), return_address="HZ"))
    result = tick(engine, t(at(days=5)))
    assert result.fired == [] and result.failed == []
    assert tick(engine, t(at(days=14, hours=23)) - SECOND).fired == []
    assert kinds(engine, cid) == ["CaseOpened", "CaseApproved"]
    late = tick(engine, t(at(days=30)))
    assert fired_of(late) == [(cid, "auto_close", t(at(days=14, hours=23)))]
    assert kinds(engine, cid) == ["CaseOpened", "CaseApproved", "CaseAutoClosed"]


def test_a_withdrawn_case_has_no_deadline_and_an_escalated_one_the_platforms(
    engine: Engine,
) -> None:
    withdrawn = opened(engine, "return_refund", "KS-1")
    escalated = opened(engine, "return_refund", "KS-2")
    engine.handle(WithdrawCase(case_id=withdrawn, at=at(days=4)))
    # Escalated once the merchant answered: its review deadline no longer runs; the
    # platform's does (72 hours, then 48 more before it pays on its own account).
    engine.handle(ApproveCase(case_id=escalated, at=at(days=4)))
    engine.handle(EscalateCase(case_id=escalated, claim="other", at=at(days=4)))
    assert fired_of(tick(engine, t(at(days=60)))) == [
        (escalated, "ruling_overdue", t(at(days=7))),
        (escalated, "ruling_lapsed", t(at(days=9))),
    ]
    assert kinds(engine, withdrawn) == ["CaseOpened", "CaseWithdrawn"]
    assert kinds(engine, escalated) == [
        "CaseOpened",
        "CaseApproved",
        "CaseEscalated",
        "RulingOverdue",
        "RulingLapsed",
        "CaseRefunded",
    ]


def test_the_auto_approved_return_waits_its_own_10_days(engine: Engine) -> None:
    cid = opened(engine)
    approved_at = t(at(days=5))
    assert fired_of(tick(engine, approved_at)) == [(cid, "auto_approve", approved_at)]
    case = engine.stored_case(cid)
    assert case["status"] == "awaiting_buyer_shipment" and case["due_action"] == "auto_close"
    assert t(case["due_at"]) == approved_at + timedelta(days=10)
    assert tick(engine, approved_at + timedelta(days=10) - SECOND).fired == []
    result = tick(engine, approved_at + timedelta(days=10))
    assert fired_of(result) == [(cid, "auto_close", approved_at + timedelta(days=10))]
    assert engine.stored_case(cid)["status"] == "closed"


def test_one_late_tick_catches_up_on_a_chain_of_deadlines(engine: Engine) -> None:
    """The scheduler was down for a month: one tick fires the auto-approval and then the
    auto-close it started, each at its own time, as punctual ticks would have."""
    cid = opened(engine)
    result = tick(engine, t(at(days=40)), batch=1, group=1)
    assert fired_of(result) == [
        (cid, "auto_approve", t(at(days=5))),
        (cid, "auto_close", t(at(days=15))),
    ]
    history = events(engine, cid)
    assert [e["type"] for e in history] == ["CaseOpened", "CaseAutoApproved", "CaseAutoClosed"]
    assert [t(e["at"]) for e in history[1:]] == [t(at(days=5)), t(at(days=15))]


def test_two_due_cases_on_one_order_both_fire(engine: Engine) -> None:
    """Two cases on different lines of one order fall due together: each releases its lines
    on the same order, so they cannot share a save; both still fire, once each."""
    place_delivered(engine, lines=("CASE-RED:1:39.90:phone_accessory", "GIFT:1:5.00:gift"))
    ids = [
        engine.handle(
            OpenCase(
                order_id="KS-1",
                type="refund_only",
                reason="quality.x",
                amount=amount,
                lines=[sku],
                at=at(days=3),
            )
        )["case_id"]
        for sku, amount in (("CASE-RED", "39.90"), ("GIFT", "5.00"))
    ]
    result = tick(engine, t(at(days=5)))
    assert sorted(d.case_id for d in result.fired) == sorted(ids)
    assert all(
        kinds(engine, cid) == ["CaseOpened", "CaseAutoApproved", "CaseRefunded"] for cid in ids
    )
    order = engine.get_order("KS-1")
    assert all(line["open_case_id"] is None for line in order["lines"])
    assert {line["sku"]: line["refunded"] for line in order["lines"]} == {
        "CASE-RED": "39.90",
        "GIFT": "5.00",
    }


def test_re_ticks_fire_nothing_twice(engine: Engine) -> None:
    ids = [opened(engine, "refund_only", f"KS-{i}") for i in range(5)]
    first = tick(engine, t(at(days=6)), batch=2, group=2)
    assert sorted(d.case_id for d in first.fired) == sorted(ids)
    counts = {cid: len(kinds(engine, cid)) for cid in ids}
    for now in (at(days=6), at(days=6), at(days=90)):
        again = tick(engine, t(now))
        assert again.fired == [] and again.skipped == [] and again.failed == []
    assert {cid: len(kinds(engine, cid)) for cid in ids} == counts
    assert all(kinds(engine, cid).count("CaseAutoApproved") == 1 for cid in ids)
    # Fired in groups, each deadline's command id is recorded with its events.
    recorded = engine.store.query(
        "SELECT command_id, target_id FROM {t}aftersales_commands WHERE command_id LIKE ?",
        ("deadline:%",),
    )
    assert sorted(r["target_id"] for r in recorded) == sorted(ids)
    assert {r["command_id"] for r in recorded} == {d.command_id for d in first.fired}


def test_the_policy_version_is_on_the_fired_events(store_url: str) -> None:
    """The deadline a policy set keeps its time and its version when the policy changes;
    the wait that firing starts is set by the policy then in force."""
    old = Policy(name="launch")
    new = Policy(name="autumn", windows=Windows(merchant_review_hours=24, buyer_shipment_hours=72))
    with Engine(store_url, policy=old) as before:
        cid = opened(before)
    with Engine(store_url, policy=new) as engine:
        assert tick(engine, t(at(days=4, hours=6))).fired == []  # not moved to 24 hours
        assert fired_of(tick(engine, t(at(days=5))))[0][1] == "auto_approve"
        opened_event, fired = events(engine, cid)
        assert opened_event["due"]["policy_version"] == old.version
        assert fired["type"] == "CaseAutoApproved"
        assert fired["fired"]["policy_version"] == old.version
        assert fired["due"]["policy_version"] == new.version
        assert t(fired["due"]["due_at"]) == t(at(days=8))  # 72 hours from the firing
        assert engine.stored_case(cid)["policy_version"] == new.version


def test_due_before_lists_what_the_tick_would_fire(engine: Engine) -> None:
    soon = opened(engine, "refund_only", "KS-1")
    later = opened(engine, "return_refund", "KS-2")
    engine.handle(ApproveCase(case_id=later, at=at(days=3, hours=1)))  # now due at day 13
    cutoff = at(days=5)
    listed = engine.handle(ListCases(due_before=cutoff))
    assert [c["case_id"] for c in listed] == [soon]
    # Listed as of now: what the tick will record is shown taken, and said so.
    (pending,) = listed[0]["pending_clock"]
    assert pending["action"] == "auto_approve" and t(pending["due_at"]) == t(cutoff)
    assert listed[0]["status"] == "refunded"
    assert [d.case_id for d in due_deadlines(engine, t(cutoff))[0]] == [soon]
    assert [c["case_id"] for c in engine.handle(ListCases(due_before=at(days=20)))] == [soon, later]
    assert engine.handle(ListCases(due_before=t(cutoff) - SECOND)) == []


def test_a_deadline_that_fails_does_not_hold_up_the_others(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [opened(engine, "refund_only", f"KS-{i}") for i in range(4)]
    stuck = ids[1]
    real_fire = ReturnCase.fire

    def fire(self: ReturnCase, *args: Any, **kwargs: Any) -> None:
        if str(self.id) == stuck:
            raise Conflict("the case kept changing")
        real_fire(self, *args, **kwargs)

    monkeypatch.setattr(ReturnCase, "fire", fire)
    result = tick(engine, t(at(days=6)), batch=2, group=2)
    assert sorted(d.case_id for d in result.fired) == sorted(set(ids) - {stuck})
    assert [(d.case_id, e.code) for d, e in result.failed] == [(stuck, "conflict")]
    assert kinds(engine, stuck) == ["CaseOpened"]
    monkeypatch.setattr(ReturnCase, "fire", real_fire)
    assert [d.case_id for d in tick(engine, t(at(days=6))).fired] == [stuck]


def test_a_running_deadline_the_rules_refuse_is_a_failure_not_skipped(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal by the rules passes for "someone else dealt with it" only when the deadline
    is no longer running; one refused while it still runs is reported, and stays due."""
    ids = [opened(engine, "refund_only", f"KS-{i}") for i in range(3)]
    stuck = ids[1]
    real_fire = ReturnCase.fire

    def fire(self: ReturnCase, *args: Any, **kwargs: Any) -> None:
        if str(self.id) == stuck:
            raise NotAllowed("refused for a reason of its own")
        real_fire(self, *args, **kwargs)

    monkeypatch.setattr(ReturnCase, "fire", fire)
    fired: list[str] = []
    for group in (3, 1):  # in a group, then one by one
        result = tick(engine, t(at(days=6)), group=group)
        fired += [d.case_id for d in result.fired]
        assert result.skipped == []
        assert [(d.case_id, e.code) for d, e in result.failed] == [(stuck, "not_allowed")]
        assert [d.case_id for d in due_deadlines(engine, t(at(days=6)))[0]] == [stuck]
    assert sorted(fired) == sorted(set(ids) - {stuck})


# A person and the tick at the same moment -----------------------------------------------------


def test_the_person_wins_the_race_and_the_tick_skips(engine: Engine) -> None:
    """The tick loads the due case; before it saves, the merchant approves. The tick's save
    fails on the version, it fires again on the new state, and the rules refuse: one outcome."""
    cid = opened(engine, "refund_only")
    merchant = Engine(engine.store.url.text)
    raced = {"done": False}

    def clock() -> datetime:
        if not raced["done"]:
            raced["done"] = True
            merchant.handle(ApproveCase(case_id=cid, at=at(days=4, hours=23)))
        return datetime.now(UTC)

    with Engine(engine.store.url.text, clock=clock) as clock_engine:
        result = tick(clock_engine, t(at(days=5)))
    merchant.close()
    assert raced["done"] and result.fired == [] and result.failed == []
    assert [d.case_id for d in result.skipped] == [cid]
    assert kinds(engine, cid) == ["CaseOpened", "CaseApproved", "CaseRefunded"]
    assert engine.stored_case(cid)["refunded_amount"] == "39.90"


def test_the_tick_wins_the_race_and_the_person_is_refused(engine: Engine) -> None:
    cid = opened(engine, "refund_only")
    ticker = Engine(engine.store.url.text)
    raced: dict[str, TickReport] = {}

    def clock() -> datetime:
        if not raced:
            raced["tick"] = tick(ticker, t(at(days=5)))
        return datetime.now(UTC)

    with (
        Engine(engine.store.url.text, clock=clock) as merchant,
        pytest.raises(NotAllowed, match="is refunded: approve is not allowed"),
    ):
        merchant.handle(ApproveCase(case_id=cid, at=at(days=5)))
    ticker.close()
    assert fired_of(raced["tick"]) == [(cid, "auto_approve", t(at(days=5)))]
    assert kinds(engine, cid) == ["CaseOpened", "CaseAutoApproved", "CaseRefunded"]


# Real processes on PostgreSQL -------------------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    return out


def due_now(engine: Engine, n: int, case_type: str = "refund_only") -> list[str]:
    """n cases opened three days ago (real time): their 48 hours are over."""
    opened_at = datetime.now(UTC) - timedelta(days=3)
    ids = []
    for i in range(n):
        order_id = f"KS-{i}"
        engine.handle(
            PlaceOrder(
                order_id=order_id,
                merchant="shop-1",
                buyer="buyer-1",
                lines=["A:1:1.00"],
                at=opened_at - timedelta(hours=1),
            )
        )
        engine.handle(DeliverOrder(order_id=order_id, at=opened_at - timedelta(minutes=30)))
        case = engine.handle(
            OpenCase(
                order_id=order_id,
                type="return_refund" if i % 3 == 2 else case_type,
                reason="quality.x",
                amount="1.00",
                at=opened_at + timedelta(seconds=i % 7),
            )
        )
        ids.append(str(case["case_id"]))
    return ids


def fired_per_case(engine: Engine) -> Counter[str]:
    rows = engine.store.query(
        "SELECT originator_id, topic FROM {t}aftersales_event_log ORDER BY notification_id"
    )
    return Counter(
        str(UUID(str(r["originator_id"])))
        for r in rows
        if r["topic"].rsplit(":", 1)[-1] in FIRED_TOPICS
    )


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_two_tick_processes_fire_each_deadline_exactly_once(store_url: str) -> None:
    with Engine(store_url) as engine:
        ids = due_now(engine, 200)
        now = datetime.now(UTC).isoformat()
        start = str(time.time() + 2.5)
        # Different batch and group sizes, so the two overlap in every way.
        a = spawn("tests.ticker", store_url, start, now, "500", "50")
        b = spawn("tests.ticker", store_url, start, now, "40", "1")
        ra, rb = (json.loads(finish(p)) for p in (a, b))
        assert ra["failed"] == [] and rb["failed"] == []
        by_a = {f["case_id"] for f in ra["fired"]}
        by_b = {f["case_id"] for f in rb["fired"]}
        assert not by_a & by_b, "a deadline reported fired by both ticks"
        assert by_a | by_b == set(ids)
        assert len(ra["fired"]) + len(rb["fired"]) == len(ids)
        assert fired_per_case(engine) == Counter({cid: 1 for cid in ids})
        for cid in ids:
            case = engine.stored_case(cid)
            assert case["status"] in ("refunded", "awaiting_buyer_shipment")
        assert tick(engine, datetime.now(UTC)).fired == []


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_merchants_and_a_tick_process_race_one_outcome_each(store_url: str) -> None:
    with Engine(store_url) as engine:
        ids = due_now(engine, 60)
        start = time.time() + 2.5
        now = datetime.now(UTC).isoformat()
        ticker = spawn("tests.ticker", store_url, str(start), now, "500", "10")
        merchant = spawn("tests.racer", store_url, str(start), "approve", *ids[::-1])
        ticked = json.loads(finish(ticker))
        approvals = [json.loads(line) for line in finish(merchant).splitlines()]
        fired = {f["case_id"] for f in ticked["fired"]}
        for result in approvals:
            cid = result["target"]
            history = kinds(engine, cid)
            assert (history[1] == "CaseApproved") != (history[1] == "CaseAutoApproved")
            assert history.count("CaseApproved") + history.count("CaseAutoApproved") == 1
            if result["ok"]:
                assert history[1] == "CaseApproved" and cid not in fired
            else:
                assert result["exit_code"] == 3, result
                assert history[1] == "CaseAutoApproved" and cid in fired


# The command line ---------------------------------------------------------------------------------


def invoke(store_url: str, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--store", store_url, *args])
    assert result.exit_code == code, (result.stdout, result.stderr)
    return result.stdout


def test_tick_on_the_command_line(store_url: str) -> None:
    with Engine(store_url) as engine:
        cid = opened(engine, "refund_only")
    early = json.loads(invoke(store_url, "tick", "--now", at(days=5, seconds=-1), "--json"))
    assert early["fired"] == [] and t(early["now"]) == t(at(days=5, seconds=-1))
    out = json.loads(invoke(store_url, "tick", "--now", at(days=5), "--json"))
    assert [(f["case_id"], f["action"], t(f["due_at"])) for f in out["fired"]] == [
        (cid, "auto_approve", t(at(days=5)))
    ]
    assert set(out) >= {"now", "fired"}
    again = json.loads(invoke(store_url, "tick", "--now", at(days=9), "--json"))
    assert again["fired"] == []
    shown = json.loads(invoke(store_url, "case", "show", cid, "--json"))
    assert shown["status"] == "refunded" and shown["due_at"] is None
    human = invoke(store_url, "tick", "--now", at(days=9))
    assert "0 deadline(s) fired" in human
    bad = json.loads(invoke(store_url, "tick", "--now", "2026-11-05T10:00:00", "--json", code=2))
    assert "has no offset" in bad["error"]["message"]


def test_tick_prints_a_table_for_a_person(store_url: str) -> None:
    with Engine(store_url) as engine:
        cid = opened(engine)
    out = invoke(store_url, "tick", "--now", at(days=20))
    assert "2 deadline(s) fired" in out
    assert out.count(cid) == 2 and "auto_approve" in out and "auto_close" in out


@pytest.fixture
def scheduler(store_url: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = spawn("aftersales.commands.cli.main", "--store", store_url, "scheduler", *args)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def read_json_line(proc: subprocess.Popen[str], until: Callable[[dict[str, Any]], bool]) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if until(json.loads(line)):
            return
    raise AssertionError(
        f"the scheduler never printed it; stderr: {proc.stderr and proc.stderr.read()}"
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_scheduler_fires_and_stops_cleanly(
    store_url: str, scheduler: Callable[..., subprocess.Popen[str]], sig: signal.Signals
) -> None:
    with Engine(store_url) as engine:
        [cid] = due_now(engine, 1)
        proc = scheduler("--interval", "0.2", "--json")
        read_json_line(proc, lambda tick: [f["case_id"] for f in tick["fired"]] == [cid])
        read_json_line(proc, lambda tick: tick["fired"] == [])  # it keeps ticking
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert err.strip().splitlines()[-1] == "scheduler: stopped"
        assert "Traceback" not in err
        assert all(json.loads(line)["fired"] == [] for line in out.splitlines())
        assert engine.stored_case(cid)["status"] == "refunded"
        assert fired_per_case(engine) == Counter({cid: 1})


def test_the_scheduler_reports_a_store_it_cannot_open() -> None:
    proc = spawn(
        "aftersales.commands.cli.main", "--store", "mysql://nowhere", "scheduler", "--json"
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert json.loads(out)["error"]["code"] == "bad_input" and err.startswith("error: ")


def test_the_demo_lets_the_clock_act(tmp_path: Path) -> None:
    with Engine(f"sqlite:///{tmp_path / 'demo.db'}") as engine:
        story = play(engine)
        silent = story.cases["merchant silent for 48 hours"]
        never = story.cases["return never shipped back"]
        assert kinds(engine, silent) == ["CaseOpened", "CaseAutoApproved", "CaseRefunded"]
        assert kinds(engine, never) == ["CaseOpened", "CaseAutoApproved", "CaseAutoClosed"]
        ticks = [s for s in story.steps if s["who"] == "system"]
        # The last tick (day 15) also closes the engraved plate's rejected first case, which
        # the buyer followed with a new case rather than taking it to the platform.
        assert [len(s["fired"]) for s in ticks] == [0, 1, 1, 2]
        (lapsed,) = [d for d in ticks[-1]["fired"] if d["action"] == "escalation_lapsed"]
        closed = engine.stored_case(lapsed["case_id"])
        assert closed["status"] == "closed" and closed["rejection"] is not None
