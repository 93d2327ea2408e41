"""`aftersales audit`: the demo's timelines, the case as of a time, verification against tampering
done with SQL on the stored rows, the offline bundle verifier as a real process, upcasting of an
old-shape event, and byte-identical output on SQLite and PostgreSQL."""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import random
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import psycopg
import pytest
from click.testing import CliRunner
from eventsourcing import utils as es_utils
from psycopg.sql import SQL, Identifier
from pydantic import ValidationError

import aftersales.engine.application.requests as commands_mod
import aftersales.engine.application.units as units_mod
import aftersales.engine.domain.case as case_mod
import aftersales.engine.domain.case_events as case_events_mod
import aftersales.engine.domain.events as events_mod
import aftersales.engine.domain.order as order_mod
import aftersales.engine.domain.order_events as order_events_mod
import aftersales.engine.domain.transitions as transitions_mod
import aftersales.engine.domain.values as values_mod
import aftersales.engine.integrity.audit_bundle as audit_bundle_mod
import aftersales.engine.integrity.audit_checks as audit_mod
import aftersales.engine.integrity.signing_keys as signing_keys_mod
import aftersales.engine.integrity.tree_heads as tree_heads_mod
from aftersales.commands.cli.demo.play import play
from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    ApproveCase,
    EscalateCase,
    FireDeadline,
    ListCases,
    OpenCase,
    RateCase,
    ReceiveGoods,
    RecoverGoods,
    RejectCase,
    RuleCase,
    ShipBack,
)
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.case_events import CaseRejected
from aftersales.engine.domain.errors import BadInput, NotFound
from aftersales.engine.integrity.audit_bundle import audit_case
from aftersales.engine.storage.urls import parse_store_url
from tests.conftest import PG_URL, at, drop_schema, place_delivered

ROOT = Path(__file__).resolve().parent.parent
VERIFIER = ROOT / "scripts" / "verify_bundle.py"


def load_verifier() -> ModuleType:
    spec = importlib.util.spec_from_file_location("verify_bundle", VERIFIER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(store: str, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli, ["--store", store, "audit", *args, "--json"])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def demo_cases(engine: Engine) -> dict[str, str]:
    """The demo's cases by story title, plus the first (rejected) custom-made case."""
    story = play(engine)
    cases = dict(story.cases)
    for row in engine.handle(ListCases(order="KS-1004")):
        if row["case_id"] not in cases.values():
            cases["custom-made, first case"] = row["case_id"]
    return cases


# SQL on the stored rows, as someone with access to the database would do it -------------------


def sql(store_url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run ``statement`` on the store's events table ({events}; ? for parameters)."""
    url = parse_store_url(store_url)
    if url.kind == "sqlite":
        assert url.path is not None
        with sqlite3.connect(url.path) as conn:
            rows = conn.execute(statement.format(events="stored_events"), params).fetchall()
            conn.commit()
            return rows
    assert url.schema is not None
    text = SQL(statement.replace("?", "%s").replace("{events}", "{}")).format(
        SQL("{}.{}").format(Identifier(url.schema), Identifier("aftersales_events"))
    )
    with psycopg.connect(PG_URL.split("?")[0], autocommit=True) as conn:
        cur = conn.execute(text, params)
        return cur.fetchall() if cur.description else []


def row_id(store_url: str, case_id: str) -> Any:
    return uuid.UUID(case_id).hex if store_url.startswith("sqlite") else uuid.UUID(case_id)


def stored_state(store_url: str, case_id: str, version: int) -> bytes:
    rows = sql(
        store_url,
        "SELECT state FROM {events} WHERE originator_id = ? AND originator_version = ?",
        (row_id(store_url, case_id), version),
    )
    return bytes(rows[0][0])


def set_state(store_url: str, case_id: str, version: int, state: bytes) -> None:
    sql(
        store_url,
        "UPDATE {events} SET state = ? WHERE originator_id = ? AND originator_version = ?",
        (state, row_id(store_url, case_id), version),
    )


def set_version(store_url: str, case_id: str, old: int, new: int) -> None:
    sql(
        store_url,
        "UPDATE {events} SET originator_version = ? "
        "WHERE originator_id = ? AND originator_version = ?",
        (new, row_id(store_url, case_id), old),
    )


@pytest.fixture
def phone_case(engine: Engine) -> str:
    """The article's case: opened, approved, shipped back, received, refunded, rated."""
    place_delivered(engine)
    cid: str = engine.handle(
        OpenCase(
            order_id="KS-1",
            type="return_refund",
            reason="quality.colour_difference",
            amount="39.90",
            evidence=["photo:1.jpg"],
            at=at(days=3),
        )
    )["case_id"]
    engine.handle(
        ApproveCase(
            case_id=cid, return_address="88 Wensan Rd", by="staff-7", at=at(days=3, hours=5)
        )
    )
    engine.handle(ShipBack(case_id=cid, carrier="SF", waybill="SF123456", at=at(days=4)))
    engine.handle(ReceiveGoods(case_id=cid, by="staff-7", at=at(days=6)))
    engine.handle(RateCase(case_id=cid, score=5, at=at(days=6, hours=2)))
    return cid


def problem_versions(result: dict[str, Any]) -> set[int]:
    return {p["version"] for p in result["problems"] if p["version"] is not None}


# The timeline ------------------------------------------------------------------------------------


def test_demo_cases_full_timeline(engine: Engine, store_url: str) -> None:
    cases = demo_cases(engine)
    # Every story the demo tells, each verified in full.
    assert {
        "phone case colour difference",
        "merchant silent for 48 hours",
        "return never shipped back",
    } <= set(cases)
    for title, cid in cases.items():
        result = run_cli(store_url, cid, "--verify")
        shown = engine.stored_case(cid)
        assert result["case_id"] == cid
        assert result["verified"] is True and result["problems"] == [], title
        assert result["state"] == shown, title
        assert [e["version"] for e in result["events"]] == list(range(1, shown["version"] + 1))
        assert result["events"][-1]["status_after"] == shown["status"]
        for e in result["events"]:
            assert set(e) >= {
                "version",
                "type",
                "occurred_at",
                "recorded_at",
                "actor",
                "data",
                "status_after",
            }
            assert set(e["actor"]) == {"role", "id"}

    phone = run_cli(store_url, cases["phone case colour difference"])
    rows = [
        (e["type"], e["actor"]["role"], e["actor"]["id"], e["status_after"], e["occurred_at"])
        for e in phone["events"]
    ]
    assert rows == [
        ("CaseOpened", "buyer", "buyer-lin", "awaiting_merchant", "2026-11-04T10:00:00+08:00"),
        (
            "CaseApproved",
            "merchant",
            "staff-7",
            "awaiting_buyer_shipment",
            "2026-11-04T15:00:00+08:00",
        ),
        (
            "GoodsShippedBack",
            "buyer",
            "buyer-lin",
            "awaiting_merchant_receipt",
            "2026-11-05T10:00:00+08:00",
        ),
        ("GoodsReceived", "merchant", "staff-7", "refunded", "2026-11-07T10:00:00+08:00"),
        ("CaseRefunded", "merchant", "staff-7", "refunded", "2026-11-07T10:00:00+08:00"),
        ("CaseRated", "buyer", "buyer-lin", "refunded", "2026-11-07T12:00:00+08:00"),
    ]
    opened, approved, shipped, _, refunded, rated = phone["events"]
    assert opened["data"]["amount"] == "39.90"
    assert opened["data"]["evidence"] == ["photo:case-colour.jpg", "chat:20261103-lin"]
    assert approved["data"]["return_address"].startswith("Aurora returns")
    assert shipped["data"]["shipment"] == {"carrier": "SF Express", "waybill": "SF1234567890"}
    assert shipped["due"]["action"] == "auto_refund"
    assert refunded["data"] == {"amount": "39.90", "paid_by": "merchant", "owed_by": "merchant"}
    assert rated["data"] == {"score": 5, "comment": "quick and polite"}
    for e in phone["events"]:
        assert datetime.fromisoformat(e["recorded_at"]).tzinfo is not None

    # The system's action names the deadline it fired and the policy that set it.
    silent = run_cli(store_url, cases["merchant silent for 48 hours"])
    fired = silent["events"][1]
    assert fired["type"] == "CaseAutoApproved"
    assert fired["actor"] == {"role": "system", "id": "system"}
    assert fired["data"]["fired"] == silent["events"][0]["due"]
    assert fired["data"]["fired"]["policy_version"] == engine.policy.version
    assert fired["occurred_at"] == fired["data"]["fired"]["due_at"]
    closed = run_cli(store_url, cases["return never shipped back"])
    assert [e["type"] for e in closed["events"]][-1] == "CaseAutoClosed"
    assert closed["events"][-1]["status_after"] == "closed"


def test_readable_table(engine: Engine, store_url: str, phone_case: str) -> None:
    result = CliRunner().invoke(cli, ["--store", store_url, "audit", phone_case])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"audit of case {phone_case}" in out
    for word in (
        "CaseOpened",
        "GoodsShippedBack",
        "waybill=SF123456",
        "merchant:staff-7",
        "auto_refund@",
        "verified: yes",
    ):
        assert word in out, word


def test_unknown_case_and_bad_options(engine: Engine, store_url: str, phone_case: str) -> None:
    result = CliRunner().invoke(cli, ["--store", store_url, "audit", str(uuid.uuid4()), "--json"])
    assert result.exit_code == 4 and json.loads(result.stdout)["error"]["code"]
    order = order_mod.order_uuid("KS-1")  # an order is not a case
    with pytest.raises(NotFound):
        audit_case(engine.store, order)
    for args in (
        ["--as-of", "2026-11-05T10:00:00"],
        ["--version", "0"],
        ["--version", "9"],
        ["--version", "2", "--as-of", at(days=5)],
    ):
        result = CliRunner().invoke(
            cli, ["--store", store_url, "audit", phone_case, *args, "--json"]
        )
        assert result.exit_code == 2, (args, result.stdout)
    with pytest.raises(BadInput):
        audit_case(engine.store, phone_case, version=7)


# The case as of a time -------------------------------------------------------------------------


def test_as_of_between_events(engine: Engine, store_url: str) -> None:
    cases = demo_cases(engine)
    for cid in cases.values():
        events = run_cli(store_url, cid)["events"]
        times = sorted({datetime.fromisoformat(e["occurred_at"]) for e in events})
        points = [times[0] - timedelta(minutes=1)]
        points += [a + (b - a) / 2 for a, b in itertools.pairwise(times)]
        points += [times[-1], times[-1] + timedelta(days=30)]
        for point in points:
            result = run_cli(store_url, cid, "--as-of", point.isoformat(), "--verify")
            happened = [e for e in events if datetime.fromisoformat(e["occurred_at"]) <= point]
            assert result["events"] == happened
            assert result["as_of"]["time"] == point.isoformat()
            if not happened:
                assert result["state"] is None and result["as_of"]["deadline"] is None
                continue
            # The library's own replay to that version is the independent answer.
            then = engine.load_case(cid, version=len(happened)).to_json()
            assert result["state"] == then
            assert result["as_of"]["deadline"] == happened[-1]["due"]
            due = happened[-1]["due"]
            if due is not None:
                passed = datetime.fromisoformat(due["due_at"]) <= point
                assert result["as_of"]["deadline_passed"] is passed

    # The merchant stayed silent: between the deadline and the system firing it, the
    # deadline had passed and was still running.
    silent = cases["merchant silent for 48 hours"]
    events = run_cli(store_url, silent)["events"]
    due_at = datetime.fromisoformat(events[0]["due"]["due_at"])
    before = run_cli(store_url, silent, "--as-of", (due_at - timedelta(seconds=1)).isoformat())
    assert before["as_of"]["deadline_passed"] is False
    assert before["state"]["status"] == "awaiting_merchant"
    at_due = run_cli(store_url, silent, "--as-of", due_at.isoformat())
    assert at_due["state"]["status"] == "refunded"  # it fired exactly at the deadline


def test_version(engine: Engine, store_url: str, phone_case: str) -> None:
    whole = run_cli(store_url, phone_case)
    for n in range(1, 7):
        result = run_cli(store_url, phone_case, "--version", str(n), "--verify")
        assert result["events"] == whole["events"][:n]
        assert result["state"] == engine.load_case(phone_case, version=n).to_json()
        assert result["as_of"]["version"] == n
        assert result["head_hash"] == whole["events"][n - 1]["hash"]


# Verification ------------------------------------------------------------------------------------


def assert_fails(store_url: str, case_id: str, versions: set[int], check: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["--store", store_url, "audit", case_id, "--verify", "--json"])
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and "does not verify" in result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["verified"] is False
    assert versions <= problem_versions(report), report["problems"]
    assert check in {p["check"] for p in report["problems"]}
    for p in report["problems"]:
        if p["version"] is not None and p["check"] != "index":
            assert f"version {p['version']}" in p["message"]
    # Without --verify the audit still says so, and exits 0.
    plain = run_cli(store_url, case_id)
    assert plain["verified"] is False and plain["problems"] == report["problems"]
    text = CliRunner().invoke(cli, ["--store", store_url, "audit", case_id, "--verify"])
    assert text.exit_code == 3 and "verified: NO" in text.stdout
    return report


def test_verify_passes_on_honest_data(engine: Engine, store_url: str, phone_case: str) -> None:
    assert run_cli(store_url, phone_case, "--verify")["verified"] is True


def test_an_edited_byte_names_the_version(engine: Engine, store_url: str, phone_case: str) -> None:
    state = stored_state(store_url, phone_case, 3)
    assert b"SF123456" in state
    set_state(store_url, phone_case, 3, state.replace(b"SF123456", b"SF123457"))
    report = assert_fails(store_url, phone_case, {3}, "chain")
    assert problem_versions(report) == {3}  # nothing else is blamed
    assert "version 3: hash does not match its content (altered)" in [
        p["message"] for p in report["problems"]
    ]
    assert report["events"][2]["data"]["shipment"]["waybill"] == "SF123457"  # shown as stored


def test_bytes_that_are_not_json_name_the_version(
    engine: Engine, store_url: str, phone_case: str, tmp_path: Path
) -> None:
    set_state(store_url, phone_case, 4, b"\xff" + stored_state(store_url, phone_case, 4))
    report = assert_fails(store_url, phone_case, {4}, "chain")
    assert report["events"][3]["type"] == "GoodsReceived"
    assert report["events"][3]["data"] is None and report["events"][3]["unreadable"]
    assert report["state"]["status"] == "refunded"  # the rest still replays
    path = tmp_path / "bundle.json"
    export(store_url, phone_case, path)
    result = verify_process(path)
    assert result.returncode == 3 and "case version 4: stored bytes are not JSON" in result.stdout


def test_an_added_space_is_an_edit(engine: Engine, store_url: str, phone_case: str) -> None:
    state = stored_state(store_url, phone_case, 2)
    set_state(store_url, phone_case, 2, state.replace(b'":', b'": ', 1))
    assert problem_versions(assert_fails(store_url, phone_case, {2}, "chain")) == {2}


def test_edited_money_with_a_recomputed_hash_is_still_caught(
    engine: Engine, store_url: str, phone_case: str
) -> None:
    """Someone who also recomputes the chain: the hashes hold, the rules do not."""
    from aftersales.engine.domain.events import chain_hash

    previous = json.loads(stored_state(store_url, phone_case, 4))["hash"]
    for version in (5, 6):
        state = json.loads(stored_state(store_url, phone_case, version))
        if version == 5:
            state["amount"] = "99.90"
        topic = "engine.case:CaseRefunded" if version == 5 else "engine.case:CaseRated"
        state["hash"] = chain_hash(previous, uuid.UUID(phone_case), version, topic, state)
        previous = state["hash"]
        set_state(store_url, phone_case, version, audit_mod.stored_form(state))
    report = assert_fails(store_url, phone_case, {5}, "money")
    assert any("more than the 39.90 asked" in p["message"] for p in report["problems"])


def test_a_deleted_middle_event_names_the_version(
    engine: Engine, store_url: str, phone_case: str
) -> None:
    sql(
        store_url,
        "DELETE FROM {events} WHERE originator_id = ? AND originator_version = 3",
        (row_id(store_url, phone_case),),
    )
    report = assert_fails(store_url, phone_case, {3}, "chain")
    messages = [p["message"] for p in report["problems"]]
    assert "version 3: is missing (deleted?)" in messages
    assert [e["version"] for e in report["events"]] == [1, 2, 4, 5, 6]
    # The goods were received without having been shipped back: the transition shows too.
    assert any(p["check"] == "transition" and p["version"] == 4 for p in report["problems"])


def test_a_deleted_last_event_shows_in_the_index(
    engine: Engine, store_url: str, phone_case: str
) -> None:
    sql(
        store_url,
        "DELETE FROM {events} WHERE originator_id = ? AND originator_version = 6",
        (row_id(store_url, phone_case),),
    )
    report = assert_fails(store_url, phone_case, {6}, "index")
    assert any("events end at version 5" in p["message"] for p in report["problems"])


def test_two_swapped_events_name_their_versions(
    engine: Engine, store_url: str, phone_case: str
) -> None:
    set_version(store_url, phone_case, 2, 1000)
    set_version(store_url, phone_case, 3, 2)
    set_version(store_url, phone_case, 1000, 3)
    report = assert_fails(store_url, phone_case, {2, 3}, "chain")
    messages = [p["message"] for p in report["problems"]]
    assert "version 2: was sealed as version 3: events moved" in messages
    assert "version 3: was sealed as version 2: events moved" in messages
    assert [e["type"] for e in report["events"][:3]] == [
        "CaseOpened",
        "GoodsShippedBack",
        "CaseApproved",
    ]
    assert any(p["check"] == "transition" and p["version"] == 2 for p in report["problems"])


def test_a_deadline_fired_early_or_not_running_is_caught() -> None:
    """The checks on system actions, on events the engine itself would refuse to record."""
    from aftersales.engine.domain.case_events import CaseAutoApproved, CaseOpened
    from aftersales.engine.domain.events import Deadline
    from aftersales.engine.domain.values import Actor, DueAction, Role, Status

    t = datetime(2026, 11, 1, tzinfo=UTC)
    due = Deadline(
        due_at=t + timedelta(hours=48), action=DueAction.AUTO_APPROVE, policy_version="p"
    )
    common: dict[str, Any] = {"originator_id": uuid.uuid4(), "timestamp": t, "command_id": "c"}
    opened = CaseOpened.model_construct(
        originator_version=1,
        at=t,
        actor=Actor(role=Role.BUYER, id="b"),
        status=Status.AWAITING_MERCHANT,
        due=due,
        **common,
    )
    early = CaseAutoApproved.model_construct(
        originator_version=2,
        at=t + timedelta(hours=47),
        actor=Actor(role=Role.SYSTEM, id="s"),
        status=Status.AWAITING_BUYER_SHIPMENT,
        due=None,
        fired=due,
        **common,
    )
    problems = audit_mod.check_deadlines([opened, early])
    assert [(p.check, p.version) for p in problems] == [("deadline", 2)]
    assert "before its deadline" in problems[0].message
    other = due.model_copy(update={"due_at": t})
    stray = early.model_copy(update={"fired": other, "at": t + timedelta(hours=49)})
    problems = audit_mod.check_deadlines([opened, stray])
    assert [(p.check, p.version) for p in problems] == [("deadline", 2)]
    assert "not the one running" in problems[0].message


# The dispute bundle -------------------------------------------------------------------------------


def verify_process(path: Path) -> subprocess.CompletedProcess[str]:
    # -I -S: isolated, no site-packages: the script must need nothing but the standard library.
    return subprocess.run(
        [sys.executable, "-I", "-S", str(VERIFIER), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def export(store_url: str, case_id: str, path: Path, *args: str) -> dict[str, Any]:
    report: dict[str, Any] = run_cli(store_url, case_id, "--export", str(path), *args)
    assert path.exists()
    return report


def test_bundle_verifies_offline_and_fails_after_one_byte(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    cases = demo_cases(engine)
    cid = cases["phone case colour difference"]
    path = tmp_path / "bundle.json"
    report = export(store_url, cid, path)
    content = json.loads(path.read_bytes())
    assert content["head_hash"] == report["head_hash"]
    assert [e["originator_version"] for e in content["events"]] == list(range(1, 7))
    # The events exactly as stored: the bundle's text is the stored bytes.
    for e in content["events"]:
        assert e["state"].encode() == stored_state(store_url, cid, e["originator_version"])
    assert content["policy"]["version"] == engine.policy.version
    assert content["policy"]["content"]["windows"]["merchant_review_hours"] == 48
    assert content["policy"]["versions_on_events"] == [engine.policy.version]
    assert [s["state"]["status"] for s in content["states"]] == [
        e["status_after"] for e in report["events"]
    ]
    assert content["states"][-1]["state"] == engine.stored_case(cid)

    ok = verify_process(path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert report["head_hash"] in ok.stdout

    raw = path.read_bytes()
    at_amount = raw.index(b'\\"amount\\":\\"39.90\\"', raw.index(b"CaseRefunded"))
    changed = raw[: at_amount + 14] + b"8" + raw[at_amount + 15 :]  # 39.90 -> 38.90
    assert len(changed) == len(raw) and changed != raw
    path.write_bytes(changed)
    bad = verify_process(path)
    assert bad.returncode == 3, bad.stdout
    assert "case version 5" in bad.stdout

    # A byte of the events changed, wherever it is: the bundle never verifies. The verifier
    # reads the bundle alone, so one backend's bundle is swept here, every fifth byte (each
    # event's every field is hit); every byte of both backends' under -m slow (next).
    verifier = load_verifier()
    if store_url.startswith("sqlite"):
        assert bytes_the_verifier_missed(verifier, raw, every=5) == []

    # Every demo case's bundle verifies.
    for other in cases.values():
        export(store_url, other, tmp_path / f"{other}.json")
        assert verifier.verify((tmp_path / f"{other}.json").read_bytes()).problems == []


def bytes_the_verifier_missed(
    verifier: ModuleType, raw: bytes, every: int = 1
) -> list[tuple[int, bytes]]:
    """Each byte (or each ``every``-th) of the bundle's events changed in turn: the changes the
    verifier accepts."""
    start, end = raw.index(b'"events": ['), raw.index(b'"policy": {')
    missed = []
    for i in range(start, end, every):
        new = 0x09 if raw[i] == 0x20 else raw[i] ^ 1  # a space becomes a tab
        if not verifier.verify(raw[:i] + bytes([new]) + raw[i + 1 :]).problems:
            missed.append((i, raw[i - 10 : i + 10]))
    return missed


@pytest.mark.slow
@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
def test_every_byte_of_a_bundle_counts(engine: Engine, store_url: str, tmp_path: Path) -> None:
    cid = demo_cases(engine)["phone case colour difference"]
    export(store_url, cid, tmp_path / "bundle.json")
    raw = (tmp_path / "bundle.json").read_bytes()
    assert bytes_the_verifier_missed(load_verifier(), raw) == []


def test_bundle_of_a_tampered_store_fails_offline(
    engine: Engine, store_url: str, phone_case: str, tmp_path: Path
) -> None:
    sql(
        store_url,
        "DELETE FROM {events} WHERE originator_id = ? AND originator_version = 3",
        (row_id(store_url, phone_case),),
    )
    path = tmp_path / "bundle.json"
    export(store_url, phone_case, path)
    result = verify_process(path)
    assert result.returncode == 3
    assert "case version 3: is missing" in result.stdout


def test_the_verifier_knows_the_engines_rules() -> None:
    """The standalone verifier carries its own copy of the rules: every table it holds must be
    the engine's (the transition tables are those derived from engine/domain/transitions.py)."""
    v = load_verifier()
    case_events = {
        c.__name__
        for c in vars(case_events_mod).values()
        if isinstance(c, type) and issubclass(c, case_events_mod.CaseEvent)
    } - {"CaseEvent", "DeadlineFired"}
    order_events = {
        c.__name__
        for c in vars(order_events_mod).values()
        if isinstance(c, type)
        and issubclass(c, events_mod.Event)
        and c.__module__ == order_events_mod.__name__
    }
    assert {k.__name__ for k in audit_mod.KNOWN} == case_events
    engines = {
        "FORMAT": audit_bundle_mod.BUNDLE_FORMAT,
        "GENESIS_HASH": events_mod.GENESIS_HASH,
        "CENT": values_mod.CENT,
        "AWAITING": {s.value for s in values_mod.AWAITING_STATUSES},
        "FINAL": {s.value for s in values_mod.FINAL_STATUSES},
        "ALL_STATUSES": {s.value for s in values_mod.Status},
        "HOLDING": {s.value for s in case_mod.HOLDING_STATUSES},
        "ALLOWED_FROM": {
            a: {s.value for s in ss} for a, ss in transitions_mod.ALLOWED_FROM.items()
        },
        "ACTION_OF": {k.__name__: a for k, a in audit_mod.ACTION_OF.items()},
        "SYSTEM_ACTIONS": set(transitions_mod.SYSTEM_EVENTS),
        "LEADS_TO": {k.__name__: {s.value for s in ss} for k, ss in audit_mod.LEADS_TO.items()},
        "CONSEQUENCES": {
            k.__name__: {c.__name__ for c in cs} for k, cs in audit_mod.CONSEQUENCES.items()
        },
        "REQUIRED_CONSEQUENCE": {
            s.value: c.__name__ for s, c in audit_mod.REQUIRED_CONSEQUENCE.items()
        },
        "ADVANCE_REQUIRED": {s.value: c.__name__ for s, c in audit_mod.ADVANCE_REQUIRED.items()},
        "CASE_MODULE": es_utils.get_topic(case_events_mod.CaseOpened).partition(":")[0] + ":",
        "ORDER_MODULE": es_utils.get_topic(order_events_mod.OrderPlaced).partition(":")[0] + ":",
        "CONSEQUENCE_ONLY": {k.__name__ for k in audit_mod.CONSEQUENCE_ONLY},
        "UNCHANGED": {k.__name__ for k in audit_mod.UNCHANGED},
        "CLAIM_REASON": {c.value: g.value for c, g in transitions_mod.CLAIM_REASON.items()},
        "CLAIM_FROM": {
            c.value: {s.value for s in ss} for c, ss in transitions_mod.CLAIM_FROM.items()
        },
        "CHECKPOINT_FORMAT": tree_heads_mod.HEAD_FORMAT,
        "PUBLIC_KEY_ENV": signing_keys_mod.PUBLIC_KEY_ENV,
        "OFFER_FROM": tuple(s.value for s in transitions_mod.OFFER_FROM),
        "CASE_TYPES": case_events,  # a new case event needs a place in the audit
        "ORDER_TYPES": order_events,
    }
    # The verifier's tables: the names in capitals it assigns at the top level.
    top = ast.parse(VERIFIER.read_text(encoding="utf-8")).body
    assigned = [t for n in top if isinstance(n, ast.Assign) for t in n.targets]
    assigned += [n.target for n in top if isinstance(n, ast.AnnAssign)]
    names = {t.id for t in assigned if isinstance(t, ast.Name) and t.id.isupper()}
    tables = {name: getattr(v, name) for name in names}
    assert set(tables) == set(engines)  # a table added to the verifier needs a check here
    for name, value in engines.items():
        assert tables[name] == value, name
    # The engine's own copies agree with the table they are derived from.
    assert vars(case_mod)["ALLOWED_FROM"] is transitions_mod.ALLOWED_FROM
    assert {k.__name__: a for k, a in audit_mod.ACTION_OF.items()} == transitions_mod.ACTION_OF
    # No known event type is one changed byte away from another.
    type_names = [*v.CASE_TYPES, *v.ORDER_TYPES]
    for a in type_names:
        for b in type_names:
            if a != b and len(a) == len(b):
                assert sum(x != y for x, y in zip(a, b, strict=True)) > 1, (a, b)


# Upcasting ---------------------------------------------------------------------------------------


class CaseRejectedV2(CaseRejected):
    """A test-only change of shape: rejections now list every communication with the buyer."""

    class_version: ClassVar[int] = 2
    communications: tuple[str, ...]

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["communications"] = [state["communication"]]


@contextmanager
def rejected_v2() -> Iterator[None]:
    """Stored CaseRejected events now resolve to the new shape (as if the class had changed)."""
    topic = es_utils.get_topic(CaseRejected)
    es_utils._topic_cache[topic] = CaseRejectedV2
    try:
        yield
    finally:
        es_utils._topic_cache[topic] = CaseRejected


def test_old_shape_event_still_replays_and_verifies(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    place_delivered(engine)
    cid = engine.handle(
        OpenCase(
            order_id="KS-1", type="refund_only", reason="quality.x", amount="10.00", at=at(days=3)
        )
    )["case_id"]
    engine.handle(
        RejectCase(case_id=cid, reason="no", communication="call:1", at=at(days=3, hours=1))
    )
    engine.handle(EscalateCase(case_id=cid, claim="unjustified_rejection", at=at(days=4)))
    before = run_cli(store_url, cid)
    old = json.loads(stored_state(store_url, cid, 2))
    assert "communications" not in old and "class_version" not in old  # stored in the old shape
    with pytest.raises(ValidationError):  # the new class cannot read it without the upcast
        CaseRejectedV2.model_validate({**old, "originator_id": cid, "originator_version": 2})

    bundle = tmp_path / "bundle.json"
    with rejected_v2():
        after = run_cli(store_url, cid, "--verify", "--export", str(bundle))
        again = run_cli(store_url, cid)
        loaded: ReturnCase = engine.store.repository.get(uuid.UUID(cid), version=2)
    assert isinstance(loaded, ReturnCase)
    rejected = after["events"][1]
    assert rejected["type"] == "CaseRejected"
    assert rejected["data"]["communications"] == ["call:1"]
    assert rejected["data"]["communication"] == "call:1"
    assert after["verified"] is True and after["problems"] == []
    assert after["state"] == before["state"]
    assert loaded.rejection == {"reason": "no", "communication": "call:1"}
    # Only the new field differs from the audit before the change; replays stay deterministic.
    assert after["head_hash"] == before["head_hash"]
    assert after != before
    before["events"][1]["data"]["communications"] = ["call:1"]
    assert after == before
    assert json.dumps(after) == json.dumps(again)
    assert load_verifier().verify(bundle.read_bytes()).problems == []


# The same events, the same bytes, on both backends ------------------------------------------------


@pytest.fixture
def two_stores(tmp_path: Path) -> Iterator[tuple[str, str]]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"sqlite:///{tmp_path / 'same.db'}", f"{PG_URL}?schema={schema}"
    drop_schema(schema)


def deterministic_demo(store: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The demo with ids and the recording clock fixed, so both stores get the same events."""
    rng = random.Random(6)

    def fixed() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128))

    monkeypatch.setattr(units_mod, "uuid4", fixed)
    monkeypatch.setattr(commands_mod, "uuid4", fixed)
    ticks = itertools.count()

    def clock() -> datetime:
        return datetime(2026, 11, 20, 9, tzinfo=UTC) + timedelta(milliseconds=next(ticks))

    with Engine(store, clock=clock) as e:
        play(e)
        return sorted(c["case_id"] for c in e.handle(ListCases()))


def test_byte_identical_output_on_both_backends(
    two_stores: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lite, pg = two_stores
    ids = deterministic_demo(lite, monkeypatch)
    assert deterministic_demo(pg, monkeypatch) == ids
    for cid in ids:
        assert [stored_state(lite, cid, v) for v in (1, 2)] == [
            stored_state(pg, cid, v) for v in (1, 2)
        ]
        outputs = []
        for store in (lite, pg):
            result = CliRunner().invoke(cli, ["--store", store, "audit", cid, "--json", "--verify"])
            assert result.exit_code == 0, result.stdout
            outputs.append(result.stdout.encode())
        assert outputs[0] == outputs[1]
        as_of = [
            CliRunner()
            .invoke(cli, ["--store", s, "audit", cid, "--json", "--as-of", at(days=4)])
            .stdout.encode()
            for s in (lite, pg)
        ]
        assert as_of[0] == as_of[1]


# The dispute paths: freight, the late-shipment penalty, list prices, recovered goods -------------

DISPUTE_LINES = ("EARBUDS:1:199.00:electronics", "CASE:1:0.00:gift:15.00")


def escalated(engine: Engine, claim: str, **kw: Any) -> str:
    args: dict[str, Any] = {
        "type": "refund_only",
        "reason": "quality.broken",
        "amount": "199.00",
        "lines": ["EARBUDS"],
        "at": at(days=3),
        **kw,
    }
    cid: str = engine.handle(OpenCase(order_id="KS-1", **args))["case_id"]
    engine.handle(
        RejectCase(case_id=cid, reason="used", communication="chat:1", at=at(days=3, hours=2))
    )
    engine.handle(
        EscalateCase(case_id=cid, claim=claim, evidence=["photo:box"], at=at(days=3, hours=3))
    )
    return cid


def test_dispute_paths_verify(engine: Engine, store_url: str, tmp_path: Path) -> None:
    verifier = load_verifier()
    place_delivered(engine, lines=DISPUTE_LINES)
    gift = escalated(
        engine,
        "missing_items",
        type="reship",
        reason="missing_items.gift",
        amount="15.00",
        lines=["CASE"],
    )
    due = engine.handle(RuleCase(case_id=gift, in_favour_of="buyer", at=at(days=4)))["due_at"]
    engine.handle(
        FireDeadline(case_id=gift, deadline="reship_overdue", at=due)
    )  # penalty, and the gift refunded at list price
    place_delivered(engine, "KS-2", lines=DISPUTE_LINES)
    wrong = engine.handle(
        OpenCase(
            order_id="KS-2",
            type="return_refund",
            reason="wrong_item.other_variant",
            amount="199.00",
            lines=["EARBUDS"],
            at=at(days=3),
        )
    )["case_id"]
    engine.handle(
        RejectCase(case_id=wrong, reason="no", communication="chat:2", at=at(days=3, hours=1))
    )
    engine.handle(EscalateCase(case_id=wrong, claim="wrong_item", at=at(days=3, hours=2)))
    engine.handle(
        RuleCase(case_id=wrong, in_favour_of="buyer", at=at(days=4))
    )  # freight on the merchant
    engine.handle(ShipBack(case_id=wrong, carrier="SF", waybill="B1", at=at(days=5)))
    engine.handle(ReceiveGoods(case_id=wrong, at=at(days=6)))
    place_delivered(engine, "KS-3", lines=DISPUTE_LINES)
    unjust = engine.handle(
        OpenCase(
            order_id="KS-3",
            type="refund_only",
            reason="quality.broken",
            amount="199.00",
            lines=["EARBUDS"],
            at=at(days=3),
        )
    )["case_id"]
    engine.handle(
        RejectCase(case_id=unjust, reason="used", communication="chat:3", at=at(days=3, hours=1))
    )
    engine.handle(
        EscalateCase(case_id=unjust, claim="unjustified_rejection", at=at(days=3, hours=2))
    )
    engine.handle(RuleCase(case_id=unjust, in_favour_of="buyer", at=at(days=4)))
    engine.handle(RecoverGoods(case_id=unjust, note="courier", at=at(days=6)))

    expected = {
        gift: ["ReshipOverdue", "LateShipmentPenalty", "CaseRefunded"],
        wrong: ["CaseRuled", "FreightCharged"],
        unjust: ["GoodsRecovered"],
    }
    for cid, types in expected.items():
        report = export(store_url, cid, tmp_path / f"{cid}.json", "--verify")
        assert report["verified"] is True, report["problems"]
        assert report["state"] == engine.stored_case(cid)
        shown = [e["type"] for e in report["events"]]
        assert any(shown[i : i + len(types)] == types for i in range(len(shown))), shown
        assert verifier.verify((tmp_path / f"{cid}.json").read_bytes()).problems == []

    # A penalty recorded on its own, outside the action it belongs to, does not verify.
    from aftersales.engine.domain.case_events import LateShipmentPenalty

    events = [e for e in engine.store.events.get(uuid.UUID(gift))]
    penalty = next(e for e in events if isinstance(e, LateShipmentPenalty))
    moved = penalty.model_copy(update={"command_id": "elsewhere"})
    swapped = [moved if e is penalty else e for e in events]
    problems = audit_mod.check_transitions(swapped)  # type: ignore[arg-type]
    named = [p for p in problems if p.version == penalty.originator_version]
    assert [p.message for p in named] == [
        f"version {penalty.originator_version}: LateShipmentPenalty is recorded only as part "
        "of another action"
    ]


def test_sealing_hashes_the_same_canonical_json_as_the_standalone_verifier() -> None:
    """Sealing writes the canonical JSON out by hand (to encode each event once); it must hash
    exactly what the verifier's plain ``json.dumps(sort_keys=True)`` form hashes, and the stored
    text must hold the same values."""
    from aftersales.engine.domain.events import (
        GENESIS_HASH,
        Deadline,
        _sealed,
        chain_hash,
        stored_json,
    )
    from aftersales.engine.domain.events import stored_state as stored_state_of
    from aftersales.engine.domain.values import Actor, DueAction, Role

    verifier = load_verifier()
    awkward = 'quote " backslash \\ newline \n tab \t 中文 emoji 🎁 \u2028 \x01'
    event = case_events_mod.CaseRejected(
        originator_id=uuid.uuid4(),
        originator_version=7,
        timestamp=datetime(2026, 11, 3, 10, tzinfo=UTC),
        at=datetime(2026, 11, 3, 9, 59, 59, 123456, tzinfo=UTC),
        actor=Actor(role=Role.MERCHANT, id=awkward),
        command_id=awkward,
        status=values_mod.Status.REJECTED,
        due=Deadline(
            due_at=datetime(2026, 11, 5, tzinfo=UTC),
            action=DueAction.AUTO_CLOSE,
            policy_version="p",
        ),
        reason=awkward,
        communication="",
    )
    previous = "ab" * 32
    sealed = _sealed(event, previous)
    text = stored_json(sealed)
    assert text is not None
    stored = json.loads(text)
    assert stored == stored_state_of(sealed)
    topic = es_utils.get_topic(type(event))
    expected = verifier.chain_hash(previous, str(event.originator_id), 7, topic, stored)
    assert stored["hash"] == sealed.hash == expected
    assert chain_hash(previous, event.originator_id, 7, topic, stored) == expected
    # Any change to the content, the version or the chain gives another hash.
    assert chain_hash(previous, event.originator_id, 8, topic, stored) != expected
    assert chain_hash(GENESIS_HASH, event.originator_id, 7, topic, stored) != expected
    assert (
        chain_hash(previous, event.originator_id, 7, topic, {**stored, "reason": "x"}) != expected
    )
