"""Telling the buyer: messages from case events, in the buyer's language, through the relay."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, timedelta
from pathlib import Path

import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    ApproveCase,
    EscalateCase,
    RefundCase,
    RejectCase,
    RuleCase,
    ShipBack,
)
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.values import parse_time
from aftersales.projections.notify import (
    TEMPLATES,
    NotifyRelay,
    preview,
    render,
    set_language,
)
from aftersales.projections.registry import VIEWS
from aftersales.projections.relay import RelayConfig, token
from aftersales.projections.runner import Projector
from tests.conftest import at, open_return
from tests.nats_helpers import StreamSpec, read_stream, stream

__all__ = ["stream"]

ROOT = Path(__file__).resolve().parent.parent


def _open(engine: Engine, order: str = "KS-1", buyer: str = "buyer-1") -> str:
    return open_return(engine, order, buyer=buyer)


def test_approval_tells_where_and_by_when_then_the_reminder_comes_24_h_before(
    engine: Engine,
) -> None:
    cid = _open(engine)
    engine.handle(
        ApproveCase(case_id=cid, return_address="杭州市 仓库 1 号", at=at(days=3, hours=1))
    )
    due = parse_time(engine.stored_case(cid)["due_at"])

    told = preview(engine.store, cid, parse_time(at(days=3, hours=2)))
    assert [m.kind for m in told] == ["approved", "deadline_soon"]
    approved, reminder = told
    assert approved.language == "zh" and approved.buyer_id == "buyer-1"
    assert "杭州市 仓库 1 号" in approved.text and due.isoformat() in approved.text
    assert reminder.at == due - timedelta(hours=24)
    assert reminder.message_id == f"remind:{cid}:{due.astimezone(UTC).isoformat()}"

    set_language(engine.store, "buyer-1", "en")
    english = preview(engine.store, cid, parse_time(at(days=3, hours=2)))
    assert english[0].text.startswith("Your after-sales request (order KS-1) was approved.")
    assert "Please send the goods to: 杭州市 仓库 1 号." in english[0].text
    with pytest.raises(BadInput, match="language 'fr'"):
        set_language(engine.store, "buyer-1", "fr")

    # Shipped back: no deadline that closes the case is running, so no reminder.
    engine.handle(ShipBack(case_id=cid, carrier="SF", waybill="SF1", at=at(days=4)))
    assert [m.kind for m in preview(engine.store, cid, parse_time(at(days=4)))] == ["approved"]


def test_rejection_and_ruling_in_both_languages(engine: Engine) -> None:
    cid = _open(engine)
    engine.handle(
        RejectCase(case_id=cid, reason="已超过质保", communication="chat-1", at=at(days=3, hours=2))
    )
    engine.handle(
        EscalateCase(case_id=cid, claim="unjustified_rejection", note="颜色不对", at=at(days=4))
    )
    engine.handle(RuleCase(case_id=cid, in_favour_of="buyer", at=at(days=5)))
    told = preview(engine.store, cid, parse_time(at(days=5)), "en")
    kinds = [m.kind for m in told]
    assert kinds[:2] == ["rejected", "ruled"], kinds
    assert "Reason: 已超过质保" in told[0].text
    assert "in favour of the buyer" in told[1].text
    assert "refunded" in kinds  # a ruling for the buyer refunds at once
    refund = told[kinds.index("refunded")]
    assert "¥39.90" in refund.text
    zh = preview(engine.store, cid, parse_time(at(days=5)))
    assert "支持买家" in zh[1].text


def test_an_offer_asks_the_buyer_for_an_answer_by_its_deadline(engine: Engine) -> None:
    cid = _open(engine)
    engine.handle(RefundCase(case_id=cid, amount="10.00", at=at(days=3, hours=2)))
    due = engine.stored_case(cid)["due_at"]
    told = preview(engine.store, cid, parse_time(at(days=3, hours=3)), "en")
    assert [m.kind for m in told] == ["offered"]
    assert "refund_only, ¥10.00" in told[0].text and due in told[0].text
    zh = preview(engine.store, cid, parse_time(at(days=3, hours=3)))
    assert "金额 ¥10.00" in zh[0].text


def test_templates_cover_every_kind_in_both_languages() -> None:
    facts = {
        "amount": "1.00",
        "paid_by": "platform",
        "in_favour_of": "merchant",
        "note": None,
        "reason": "r",
        "communication": "c",
        "due": "d",
        "ship_by": None,
        "return_address": None,
        "case_type": "refund_only",
        "answer_by": "a",
    }
    assert set(TEMPLATES) >= {"approved", "rejected", "refunded", "ruled", "offered"}
    for kind in TEMPLATES:
        for language in ("zh", "en"):
            text = render(kind, facts, "KS-9", language)
            assert "KS-9" in text and "{" not in text and "None" not in text


def test_messages_published_once_per_buyer_subject(engine: Engine, stream: StreamSpec) -> None:
    cid = _open(engine, "KS.7", buyer="买家 7")
    engine.handle(ApproveCase(case_id=cid, at=at(days=3, hours=1)))
    engine.handle(
        RejectCase(
            case_id=_open(engine, "KS-8"), reason="no", communication="c", at=at(days=3, hours=1)
        )
    )
    config = RelayConfig(servers=stream.servers, stream=stream.stream, prefix=stream.prefix)
    # The clock inside the approved case's last 24 h: its reminder goes out too.
    due = parse_time(engine.stored_case(cid)["due_at"])
    relay = NotifyRelay(engine.store, config, language="en", clock=lambda: due - timedelta(hours=2))
    assert asyncio.run(relay.run()) == 2
    found = read_stream(stream)
    assert [s.body["kind"] for s in found] == ["approved", "rejected", "deadline_soon"]
    assert found[0].subject == f"{stream.prefix}.notify.{token('买家 7')}"
    assert found[0].body["buyer_id"] == "买家 7" and found[0].body["case_id"] == cid
    assert relay.status()["lag"] == 0
    # Again from nothing (position lost, reminders forgotten): the broker keeps one of each.
    relay.recorder.reset()
    again = NotifyRelay(engine.store, config, clock=lambda: due - timedelta(hours=1))
    asyncio.run(again.run())
    assert len(read_stream(stream)) == 3
    # The projection is a projection like the others: `project run` keeps it too.
    assert any(v.name == "notify" for v in VIEWS)
    assert (
        Projector(engine.store).position(VIEWS[-1]) == engine.store.recorder.max_notification_id()
    )


def _cli(store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "aftersales.commands.cli.main", "--store", store_url, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_preview_on_the_command_line(store_url: str) -> None:
    with Engine(store_url) as engine:
        cid = _open(engine)
        engine.handle(ApproveCase(case_id=cid, at=at(days=3, hours=1)))
    run = _cli(
        store_url,
        "notify",
        "preview",
        cid,
        "--language",
        "en",
        "--at",
        at(days=3, hours=2),
        "--json",
    )
    assert run.returncode == 0, run.stderr
    told = json.loads(run.stdout)
    assert [m["kind"] for m in told] == ["approved", "deadline_soon"]
    missing = _cli(store_url, "notify", "preview", "9b2f7c4e-1d3a-4c5b-8e6f-0a1b2c3d4e5f")
    assert missing.returncode == 4, missing.stderr
    text = _cli(store_url, "notify", "preview", cid, "--at", at(days=3, hours=2))
    assert "订单 KS-1" in text.stdout and "已通过" in text.stdout
