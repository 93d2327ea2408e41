"""Two writers on one case cannot both win: real processes against the store, and a
deterministic interleaving that forces the optimistic-concurrency retry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    ApproveCase,
    DeliverOrder,
    ListCases,
    OpenCase,
    PlaceOrder,
    WithdrawCase,
)
from aftersales.engine.domain.errors import NotAllowed
from tests.conftest import at, place_delivered, recently

ROOT = Path(__file__).resolve().parent.parent
N = 25


def race(
    store: str, a: tuple[str, list[str]], b: tuple[str, list[str]]
) -> list[list[dict[str, Any]]]:
    start = time.time() + 2.5
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.racer", store, str(start), action, *ids],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for action, ids in (a, b)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        sys.stderr.write(err)
        outputs.append([json.loads(line) for line in out.splitlines()])
    return outputs


def topics(engine: Engine, case_id: str) -> list[str]:
    case = engine.load_case(case_id)
    return [type(e).__name__ for e in engine.store.events.get(case.id)]


def open_cases(engine: Engine, case_type: str = "return_refund") -> list[str]:
    ids = []
    for i in range(N):
        # Delivered now: a return is opened within its after-sales window of the delivery.
        now = datetime.now(UTC).isoformat()
        line = "CASE-RED:1:39.90:phone_accessory"
        engine.handle(
            PlaceOrder(order_id=f"KS-{i}", merchant="shop-1", buyer="buyer-1", lines=[line], at=now)
        )
        engine.handle(DeliverOrder(order_id=f"KS-{i}", at=now))
        ids.append(
            engine.handle(
                OpenCase(
                    order_id=f"KS-{i}", type=case_type, reason="quality.x", amount="1.00", at=now
                )
            )["case_id"]
        )
    return ids


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_target = {r["target"]: [r] for r in a}
    for r in b:
        by_target[r["target"]].append(r)
    return by_target


@pytest.mark.parametrize("store_url", ["postgres", "sqlite"], indirect=True)
def test_two_processes_approve_and_reject_the_same_cases(store_url: str) -> None:
    with Engine(store_url) as engine:
        ids = open_cases(engine)
        approvals, rejections = race(store_url, ("approve", ids), ("reject", ids[::-1]))
        for case_id, (approve, reject) in paired(approvals, rejections).items():
            history = topics(engine, case_id)
            # Exactly one outcome: never both, never neither, never a doubled event.
            assert history in (["CaseOpened", "CaseApproved"], ["CaseOpened", "CaseRejected"])
            winner, loser = (
                (approve, reject) if history[-1] == "CaseApproved" else (reject, approve)
            )
            assert winner["ok"] and not loser["ok"]
            assert loser["exit_code"] == 3
            assert f"is {winner['status']}: " in loser["message"]
            assert engine.get_case(case_id)["status"] == winner["status"]


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_the_loser_may_succeed_on_the_new_state(store_url: str) -> None:
    """Approve and withdraw race: a withdrawal that lost the race still applies to the
    approved case (the buyer may withdraw until the money moves); an approval that lost is
    refused on the closed case. Either way no event is lost or doubled."""
    with Engine(store_url) as engine:
        ids = open_cases(engine)
        approvals, withdrawals = race(store_url, ("approve", ids), ("withdraw", ids[::-1]))
        for case_id, (approve, withdraw) in paired(approvals, withdrawals).items():
            history = topics(engine, case_id)
            assert withdraw["ok"] and withdraw["status"] == "closed"
            if approve["ok"]:
                assert history == ["CaseOpened", "CaseApproved", "CaseWithdrawn"]
            else:
                assert history == ["CaseOpened", "CaseWithdrawn"]
                assert approve["exit_code"] == 3 and "is closed" in approve["message"]


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_two_processes_both_approve_one_wins_once(store_url: str) -> None:
    with Engine(store_url) as engine:
        ids = open_cases(engine, "refund_only")
        first, second = race(store_url, ("approve", ids), ("approve", ids))
        for a, b in zip(first, second, strict=True):
            assert sorted([a["ok"], b["ok"]]) == [False, True], (a, b)
            loser = b if a["ok"] else a
            assert loser["exit_code"] == 3 and "is refunded" in loser["message"]
            assert topics(engine, a["target"]) == ["CaseOpened", "CaseApproved", "CaseRefunded"]
            assert engine.get_case(a["target"])["refunded_amount"] == "1.00"


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_two_processes_open_cases_on_the_same_lines(store_url: str) -> None:
    with Engine(store_url) as engine:
        orders = [f"KS-{i}" for i in range(N)]
        for order_id in orders:
            place_delivered(engine, order_id, delivered_at=recently())
        first, second = race(store_url, ("open:30.00", orders), ("open:39.90", orders))
        for a, b in zip(first, second, strict=True):
            assert sorted([a["ok"], b["ok"]]) == [False, True], (a, b)
            loser = b if a["ok"] else a
            assert loser["exit_code"] == 3 and "already has an open case" in loser["message"]
            assert len(engine.handle(ListCases(order=a["target"]))) == 1


def test_a_lost_race_is_retried_on_the_new_state(engine: Engine) -> None:
    """Writer A loads the case; before A saves, writer B withdraws it. A's save fails on the
    version, A reloads, and the rules now refuse its approval: one outcome, nothing doubled."""
    place_delivered(engine)
    cid = engine.handle(
        OpenCase(
            order_id="KS-1", type="return_refund", reason="quality.x", amount="1.00", at=at(days=3)
        )
    )["case_id"]
    interleaved = {"done": False}
    b = Engine(engine.store.url.text)

    def clock() -> datetime:
        if not interleaved["done"]:
            interleaved["done"] = True
            b.handle(WithdrawCase(case_id=cid, at=at(days=3, hours=1)))
        return datetime.fromisoformat(at(days=3, hours=2))

    a = Engine(engine.store.url.text, clock=clock)
    with pytest.raises(NotAllowed, match="is closed: approve is not allowed"):
        a.handle(ApproveCase(case_id=cid))
    assert topics(engine, cid) == ["CaseOpened", "CaseWithdrawn"]
    a.close()
    b.close()
