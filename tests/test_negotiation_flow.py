"""Negotiation end to end, on SQLite and on PostgreSQL: through `Engine.handle`, through the
command line (`case message`, `case offer`, `accept-offer`, `decline-offer`, `case extend`,
`tick`), in `case show`, in the audit's timeline, and in an exported bundle the standalone
verifier accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    AcceptOffer,
    ApproveCase,
    ExtendReceipt,
    MessageCase,
    OfferChange,
    OpenCase,
    ReceiveGoods,
    RefundCase,
    ShipBack,
)
from aftersales.engine.domain.case_events import ReceiptExtended
from aftersales.engine.domain.errors import NotAllowed
from aftersales.engine.integrity.audit_bundle import audit_case
from aftersales.engine.integrity.audit_checks import check_deadlines
from tests.conftest import at, place_delivered
from tests.test_audit import VERIFIER, load_verifier, run_cli
from tests.test_cli import Cli


def opened(engine: Engine, case_type: str = "return_refund") -> str:
    place_delivered(engine)
    case = engine.handle(
        OpenCase(
            order_id="KS-1",
            type=case_type,
            reason="quality.scratched",
            amount="39.90",
            at=at(days=3),
        )
    )
    cid: str = case["case_id"]
    return cid


def shipped_back(engine: Engine) -> str:
    cid = opened(engine)
    engine.handle(ApproveCase(case_id=cid, at=at(days=3, hours=2)))
    engine.handle(ShipBack(case_id=cid, carrier="SF", waybill="SF1", at=at(days=4)))
    return cid


def when(case: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(case["due_at"])


# Through the engine ------------------------------------------------------------------------------


def test_refund_only_offered_and_accepted_refunds_the_offer(engine: Engine, store_url: str) -> None:
    cid = opened(engine)
    offer = engine.handle(
        OfferChange(case_id=cid, type="refund_only", amount="25.00", at=at(days=3, hours=1))
    )
    assert offer["status"] == "awaiting_buyer_answer" and offer["due_action"] == "offer_lapsed"
    assert when(offer) == datetime.fromisoformat(at(days=3, hours=1)) + timedelta(hours=48)
    result = engine.handle(AcceptOffer(case_id=cid, at=at(days=3, hours=5)))
    assert result["status"] == "refunded" and result["type"] == "refund_only"
    assert result["amount"] == "25.00" and result["refunded_amount"] == "25.00"
    assert result["refund_paid_by"] == "merchant" and result["offers"][0]["answer"] == "accepted"
    # The order let the line go with what was refunded on it.
    order = engine.stored_order("KS-1")
    assert order["lines"][0]["refunded"] == "25.00" and order["lines"][0]["open_case_id"] is None
    listed = engine.stored_case(cid)
    assert listed == result
    assert run_cli(store_url, cid, "--verify")["verified"] is True


def test_an_offer_cannot_ask_for_more_than_the_case(engine: Engine) -> None:
    cid = opened(engine)
    try:
        engine.handle(
            OfferChange(case_id=cid, type="refund_only", amount="40.00", at=at(days=3, hours=1))
        )
    except NotAllowed as exc:
        assert "39.90" in exc.message
    else:  # pragma: no cover
        raise AssertionError("an offer above the amount asked was taken")
    assert engine.stored_case(cid)["version"] == 1


# Through the command line ------------------------------------------------------------------------


def test_messages_with_evidence_in_case_show_and_the_audit(store_url: str) -> None:
    run = Cli(store_url)
    with Engine(store_url) as engine:
        cid = opened(engine)
    run.run(
        "case", "message", cid, "--text", "scratched lid", "--evidence", "photo:1",
        "--evidence", "photo:2", "--at", at(days=3, hours=1),
    )  # fmt: skip
    shown = run.run(
        "case", "message", cid, "--as", "merchant", "--by", "staff-7", "--text", "works fine?",
        "--evidence", "chat:9", "--at", at(days=3, hours=2),
    )  # fmt: skip
    assert shown["status"] == "awaiting_merchant" and shown["due_action"] == "auto_approve"
    assert shown["messages"] == [
        {
            "party": "buyer",
            "by": "buyer-1",
            "at": at(days=3, hours=1),
            "text": "scratched lid",
            "evidence": ["photo:1", "photo:2"],
        },
        {
            "party": "merchant",
            "by": "staff-7",
            "at": at(days=3, hours=2),
            "text": "works fine?",
            "evidence": ["chat:9"],
        },
    ]
    human = CliRunner().invoke(cli, ["--store", store_url, "case", "show", cid])
    assert "message" in human.stdout and "photo:1, photo:2" in human.stdout
    audit = run_cli(store_url, cid, "--verify")
    assert audit["verified"] is True
    rows = [(e["type"], e["actor"]["role"], e["data"]) for e in audit["events"][1:]]
    assert rows == [
        ("MessagePosted", "buyer", {"text": "scratched lid", "evidence": ["photo:1", "photo:2"]}),
        ("MessagePosted", "merchant", {"text": "works fine?", "evidence": ["chat:9"]}),
    ]
    # Not once the case has ended; nor without text.
    run.run("case", "refund", cid, "--at", at(days=3, hours=3))
    error = run.run("case", "message", cid, "--text", "thanks", code=3)
    assert "refunded" in error["error"]["message"]
    run.run("case", "message", cid, code=2)


def test_declined_the_merchant_reviews_again(store_url: str) -> None:
    run = Cli(store_url)
    with Engine(store_url) as engine:
        cid = opened(engine, "exchange")
    run.run("case", "offer", cid, "--type", "return_refund", "--at", at(days=3, hours=1))
    result = run.run("case", "decline-offer", cid, "--at", at(days=3, hours=6))
    assert result["status"] == "awaiting_merchant" and result["due_action"] == "auto_approve"
    # Back to the review it had: 48 hours from the opening, not from the decline.
    assert when(result) == datetime.fromisoformat(at(days=3)) + timedelta(hours=48)
    assert result["type"] == "exchange" and result["offers"][0]["answer"] == "declined"
    run.run("case", "accept-offer", cid, code=3)  # nothing to accept any more


def test_an_unanswered_offer_lapses_on_the_tick(store_url: str) -> None:
    run = Cli(store_url)
    with Engine(store_url) as engine:
        cid = opened(engine)
    offer = run.run("case", "offer", cid, "--type", "refund_only", "--at", at(days=3, hours=1))
    early = run.run("tick", "--now", at(days=5, hours=0, minutes=59))
    assert early["fired"] == []
    ticked = run.run("tick", "--now", at(days=6))
    # The offer lapsed at day 5, hour 1; the review it interrupted had run out at day 5, so
    # the merchant gets no fresh 48 hours: the clock approves at once.
    assert [(d["case_id"], d["action"]) for d in ticked["fired"]] == [
        (cid, "offer_lapsed"),
        (cid, "auto_approve"),
    ]
    case = run.run("case", "show", cid, "--at", at(days=6))
    assert case["status"] == "awaiting_buyer_shipment" and case["type"] == "return_refund"
    assert case["offers"][0]["answer"] == "lapsed"
    audit = run_cli(store_url, cid, "--verify")
    assert audit["verified"] is True
    types = [e["type"] for e in audit["events"][-2:]]
    assert types == ["OfferLapsed", "CaseAutoApproved"]
    approved = audit["events"][-1]
    assert datetime.fromisoformat(approved["occurred_at"]) == when(offer)  # at once
    assert audit["events"][-1]["actor"] == {"role": "system", "id": "system"}


def test_the_extension_moves_the_refund_and_the_tick_fires_at_the_new_time(
    store_url: str,
) -> None:
    run = Cli(store_url)
    with Engine(store_url) as engine:
        cid = shipped_back(engine)
    before = run.run("case", "show", cid, "--at", at(days=4))
    error = run.run(
        "case", "extend", cid, "--hours", "73", "--reason", "x", "--at", at(days=5), code=3
    )  # fmt: skip
    assert "72" in error["error"]["message"]
    run.run("case", "extend", cid, "--hours", "48", "--at", at(days=5), code=2)  # no reason
    extended = run.run(
        "case", "extend", cid, "--hours", "48", "--reason", "warehouse stocktake",
        "--at", at(days=5),
    )  # fmt: skip
    assert extended["status"] == "awaiting_merchant_receipt"
    assert when(extended) == when(before) + timedelta(hours=48)
    assert extended["receipt_extension"]["reason"] == "warehouse stocktake"
    again = run.run(
        "case", "extend", cid, "--hours", "1", "--reason", "more", "--at", at(days=5), code=3
    )  # fmt: skip
    assert "once" in again["error"]["message"]
    assert run.run("tick", "--now", before["due_at"])["fired"] == []
    ticked = run.run("tick", "--now", extended["due_at"])
    assert [d["action"] for d in ticked["fired"]] == ["auto_refund"]
    case = run.run("case", "show", cid)
    assert case["status"] == "refunded" and case["refunded_amount"] == "39.90"
    assert run_cli(store_url, cid, "--verify")["verified"] is True


# The bundle ---------------------------------------------------------------------------------------


def test_a_bundle_with_negotiation_verifies_offline(store_url: str, tmp_path: Path) -> None:
    run = Cli(store_url)
    with Engine(store_url) as engine:
        cid = opened(engine, "exchange")
        engine.handle(
            MessageCase(case_id=cid, text="wrong colour", evidence=["photo:1"], at=at(days=3))
        )
        engine.handle(OfferChange(case_id=cid, type="refund_only", at=at(days=3, hours=1)))
    run.run("case", "decline-offer", cid, "--at", at(days=3, hours=2))
    run.run("case", "offer", cid, "--type", "return_refund", "--at", at(days=3, hours=3))
    run.run("case", "accept-offer", cid, "--at", at(days=3, hours=4))
    with Engine(store_url) as engine:
        engine.handle(ShipBack(case_id=cid, carrier="SF", waybill="SF1", at=at(days=4)))
        run.run("case", "extend", cid, "--hours", "24", "--reason", "holiday", "--at", at(days=5))
        engine.handle(
            MessageCase(case_id=cid, party="platform", text="noted", by="agent-1", at=at(days=5))
        )
        engine.handle(ReceiveGoods(case_id=cid, at=at(days=6)))
    path = tmp_path / "bundle.json"
    result = CliRunner().invoke(
        cli, ["--store", store_url, "audit", cid, "--export", str(path), "--json"]
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    content = json.loads(path.read_bytes())
    kinds = [e["topic"].rpartition(":")[2] for e in content["events"]]
    assert kinds == [
        "CaseOpened", "MessagePosted", "ChangeOffered", "OfferDeclined", "ChangeOffered",
        "OfferAccepted", "GoodsShippedBack", "ReceiptExtended", "MessagePosted", "GoodsReceived",
        "CaseRefunded",
    ]  # fmt: skip
    verified = subprocess.run(
        [sys.executable, str(VERIFIER), str(path)], capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_checks_catch_a_bent_extension_or_message(engine: Engine) -> None:
    """The audit and the standalone verifier alike: an extension moves the running deadline
    by the hours it records, once; a message leaves the deadline alone."""
    cid = shipped_back(engine)
    engine.handle(MessageCase(case_id=cid, text="on its way", at=at(days=4, hours=1)))
    engine.handle(ExtendReceipt(case_id=cid, hours=24, reason="holiday", at=at(days=5)))
    audit = audit_case(engine.store, cid)
    events = [e.case_event for e in audit.entries if e.case_event is not None]
    assert audit.verified and check_deadlines(events) == []
    message, extension = events[-2:]
    assert isinstance(extension, ReceiptExtended)
    bent = extension.model_copy(update={"hours": 12})
    twice = extension.model_copy(update={"originator_version": extension.originator_version + 1})
    moved = message.model_copy(update={"due": extension.due})
    assert "does not move" in check_deadlines([*events[:-1], bent])[0].message
    assert any("again" in p.message for p in check_deadlines([*events, twice]))
    assert "moved the deadline" in check_deadlines([*events[:-2], moved])[0].message

    verifier = load_verifier()
    states = [(e.version, e.type_name, json.loads(bytes(e.stored.state))) for e in audit.entries]

    def problems(events: list[tuple[int, str, dict[str, Any]]]) -> list[str]:
        report = verifier.Report()
        verifier.check_case(events, True, report)
        return list(report.problems)

    assert problems(states) == []
    v, kind, state = states[-1]
    assert "does not move" in problems([*states[:-1], (v, kind, {**state, "hours": 12})])[0]
    assert any("second time" in p for p in problems([*states, (v + 1, kind, state)]))
    v, kind, state = states[-2]
    bent_message = {**state, "due": states[-1][2]["due"]}
    assert "changed the deadline" in problems([*states[:-2], (v, kind, bent_message)])[0]


def test_a_refund_above_an_accepted_offer_is_refused(engine: Engine) -> None:
    cid = opened(engine, "exchange")
    engine.handle(
        OfferChange(case_id=cid, type="return_refund", amount="30.00", at=at(days=3, hours=1))
    )
    engine.handle(AcceptOffer(case_id=cid, at=at(days=3, hours=2)))
    try:
        engine.handle(RefundCase(case_id=cid, amount="35.00", at=at(days=3, hours=3)))
    except NotAllowed as exc:
        assert "30.00" in exc.message
    else:  # pragma: no cover
        raise AssertionError("a refund above the agreed amount was taken")


def test_the_dashboard_follows_an_offer_and_its_answer(engine: Engine) -> None:
    from aftersales.projections.registry import VIEWS
    from aftersales.projections.runner import Projector

    cid = opened(engine)

    def row() -> dict[str, Any]:
        Projector(engine.store).catch_up(VIEWS)
        rows = engine.store.query(
            "SELECT status, due_action, first_response_at FROM {t}proj_dashboard_cases "
            "WHERE case_id = ?",
            (cid,),
        )
        assert len(rows) == 1
        return rows[0]

    engine.handle(OfferChange(case_id=cid, type="refund_only", at=at(days=3, hours=1)))
    offered = row()
    assert (offered["status"], offered["due_action"]) == ("awaiting_buyer_answer", "offer_lapsed")
    assert offered["first_response_at"] is not None  # the offer is the merchant's answer
    run = Cli(engine.store.url.text)
    run.run("tick", "--now", at(days=6))
    lapsed = row()  # lapsed, and approved by the clock at once: the review had run out
    assert (lapsed["status"], lapsed["due_action"]) == ("awaiting_buyer_shipment", "auto_close")
