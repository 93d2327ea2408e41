"""`policy what-if`: a small history recorded under the default policy (48 hours for the
merchant's review), replayed under a 24-hour review, checked against the answer worked out by
hand; the store unchanged by the run; bad input refused.

The history (orders placed on day 0 and delivered on day 2 of the test calendar; cases opened
on day 3, except the one on KS-5):

- KS-1, shop-1, 39.90: a refund only the merchant rejects at hour 30, and nobody takes further.
  Recorded: rejected, closed by the clock 7 days later, nothing refunded. Under 24 hours: the
  clock approves it at hour 24 (refund only: the merchant refunds 39.90 at once), and the
  rejection at hour 30 is refused. Changed: status, refunded, who paid, money, clock.
- KS-2, shop-1, 59.00: a return approved at hour 10, shipped back, received: refunded 59.00
  by the merchant either way. Unchanged.
- KS-3, shop-2, 25.00: a refund only approved at hour 30. Recorded: the merchant refunds 25.00.
  Under 24 hours the clock approves it at hour 24 (the same 25.00, by the merchant) and the
  approval is refused: the same end, but an auto-approval (a timeout) more. Changed: clock.
- KS-4, shop-2, 80.00: a return the merchant never answers: approved by the clock (hour 48, or
  24), never shipped back, closed by the clock. The same end and the same deadlines: unchanged.
- KS-5, shop-1: a case opened before the period (day 2, 13:00), rejected: not in the report.

Money: shop-1's merchant bears 59.00 as recorded and 98.90 under 24 hours (+39.90); shop-2's
25.00 either way. Auto-approvals: shop-1 0 -> 1, shop-2 1 -> 2.
"""

from __future__ import annotations

import json
from datetime import timedelta
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
    EscalateCase,
    FlagBuyer,
    OpenCase,
    ReceiveGoods,
    RejectCase,
    RuleCase,
    ShipBack,
    Tick,
)
from aftersales.engine.application.what_if import what_if
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.policy import InstantRefund, Policy, Windows
from aftersales.engine.domain.values import parse_time
from aftersales.engine.storage.sql import parse_stored_time
from tests.conftest import at, place_delivered

REVIEW_24H = Policy(name="review-24h", windows=Windows(merchant_review_hours=24))
SINCE, UNTIL = at(days=2, hours=12), at(days=30)


def _open(
    engine: Engine,
    order: str,
    kind: str,
    amount: str,
    when: str,
    reason: str = "quality.defective",
) -> str:
    case = engine.handle(OpenCase(order_id=order, type=kind, reason=reason, amount=amount, at=when))
    return str(case["case_id"])


def record(engine: Engine) -> dict[str, str]:
    """The history above, through the engine as people would record it, with ticks."""
    place_delivered(engine, "KS-1", lines=("A:1:39.90",), merchant="shop-1", buyer="b-1")
    place_delivered(engine, "KS-2", lines=("B:1:59.00",), merchant="shop-1", buyer="b-2")
    place_delivered(engine, "KS-3", lines=("C:1:25.00",), merchant="shop-2", buyer="b-3")
    place_delivered(engine, "KS-4", lines=("D:1:80.00",), merchant="shop-2", buyer="b-4")
    place_delivered(engine, "KS-5", lines=("E:1:10.00",), merchant="shop-1", buyer="b-5")
    cases = {
        "rejected": _open(engine, "KS-1", "refund_only", "39.90", at(days=3)),
        "returned": _open(engine, "KS-2", "return_refund", "59.00", at(days=3)),
        "approved_late": _open(engine, "KS-3", "refund_only", "25.00", at(days=3)),
        "silent": _open(engine, "KS-4", "return_refund", "80.00", at(days=3)),
        "before": _open(engine, "KS-5", "refund_only", "10.00", at(days=2, hours=3)),
    }
    engine.handle(
        RejectCase(
            case_id=cases["rejected"],
            reason="used",
            communication="chat:1",
            at=at(days=3, hours=30),
        )
    )
    engine.handle(ApproveCase(case_id=cases["returned"], at=at(days=3, hours=10)))
    engine.handle(ShipBack(case_id=cases["returned"], carrier="SF", waybill="SF1", at=at(days=5)))
    engine.handle(ReceiveGoods(case_id=cases["returned"], at=at(days=7)))
    engine.handle(ApproveCase(case_id=cases["approved_late"], at=at(days=3, hours=30)))
    engine.handle(
        RejectCase(case_id=cases["before"], reason="used", communication="chat:2", at=at(days=3))
    )
    engine.handle(Tick(now=at(days=10)))  # approves KS-4's return at hour 48
    return cases


def _store_state(engine: Engine) -> dict[str, Any]:
    store = engine.store
    return {
        "events": store.recorder.max_notification_id(),
        "cases": store.query("SELECT * FROM {t}aftersales_cases ORDER BY case_id"),
        "commands": store.query("SELECT * FROM {t}aftersales_commands ORDER BY command_id"),
    }


def _replay(
    engine: Engine,
    policy: Policy = REVIEW_24H,
    *,
    until: str = UNTIL,
    merchant: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """The what-if of the period (up to ``until``) under ``policy``."""
    return what_if(
        engine.store,
        current=Policy(),
        policy=policy,
        since=parse_time(SINCE),
        until=parse_time(until),
        merchant=merchant,
        limit=limit,
    )


def _by_merchant(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["merchant_id"]: m for m in report["merchants"]}


def test_what_if_24h_review_against_the_hand_computed_answer(engine: Engine) -> None:
    cases = record(engine)
    before = _store_state(engine)

    report = _replay(engine)

    assert _store_state(engine) == before
    assert (report["orders"], report["cases"], report["changed_count"]) == (4, 4, 2)
    assert report["actions_refused"] == 2
    changed = {c["case_id"]: c for c in report["changed"]}
    assert set(changed) == {cases["rejected"], cases["approved_late"]}

    rejected = changed[cases["rejected"]]
    assert rejected["changes"] == ["status", "refunded", "refund_paid_by", "money", "clock"]
    assert rejected["recorded"]["status"] == "closed"
    assert rejected["recorded"]["refunded"] == "0.00"
    assert rejected["recorded"]["clock"] == ["escalation_lapsed"]
    assert rejected["what_if"]["status"] == "refunded"
    assert rejected["what_if"]["refunded"] == "39.90"
    assert rejected["what_if"]["refund_paid_by"] == "merchant"
    assert rejected["what_if"]["clock"] == ["auto_approve"]
    assert [(r["action"], r["code"]) for r in rejected["refused"]] == [
        ("case reject", "not_allowed")
    ]

    late = changed[cases["approved_late"]]
    assert late["changes"] == ["clock"]
    assert late["recorded"]["refunded"] == late["what_if"]["refunded"] == "25.00"
    assert [(r["action"], r["code"]) for r in late["refused"]] == [("case approve", "not_allowed")]

    shops = _by_merchant(report)
    one, two = shops["shop-1"], shops["shop-2"]
    assert one["recorded"]["merchant_bears"] == "59.00"
    assert one["what_if"]["merchant_bears"] == "98.90"
    assert one["difference"]["merchant_bears"] == "39.90"
    assert one["difference"]["refunded_by_merchant"] == "39.90"
    assert one["difference"]["platform_bears"] == "0.00"
    assert (one["recorded"]["refunded"], one["what_if"]["refunded"]) == (1, 2)
    assert (one["recorded"]["refund_rate"], one["what_if"]["refund_rate"]) == ("0.5000", "1.0000")
    assert (one["recorded"]["auto_approved"], one["what_if"]["auto_approved"]) == (0, 1)
    assert (one["recorded"]["auto_closed"], one["what_if"]["auto_closed"]) == (1, 0)
    assert two["difference"]["merchant_bears"] == "0.00"
    assert two["what_if"]["merchant_bears"] == "25.00"
    assert (two["recorded"]["auto_approved"], two["what_if"]["auto_approved"]) == (1, 2)
    assert (two["recorded"]["merchant_timeouts"], two["what_if"]["merchant_timeouts"]) == (1, 2)
    assert (two["what_if"]["refused_actions"], one["what_if"]["refused_actions"]) == (1, 1)
    assert report["totals"]["difference"]["merchant_bears"] == "39.90"
    assert report["totals"]["recorded"]["cases"] == 4


def test_the_same_policy_changes_nothing(engine: Engine) -> None:
    record(engine)
    report = _replay(engine, Policy())
    assert (report["changed_count"], report["actions_refused"]) == (0, 0)
    assert report["actions_replayed"] > 0
    assert all(v in (0, "0.00", "0.0000") for v in report["totals"]["difference"].values())


def test_one_merchant_and_a_limit(engine: Engine) -> None:
    cases = record(engine)
    report = _replay(engine, merchant="shop-2")
    assert [m["merchant_id"] for m in report["merchants"]] == ["shop-2"]
    assert report["changed_count"] == 1
    assert [c["case_id"] for c in report["changed"]] == [cases["approved_late"]]
    limited = _replay(engine, limit=1)
    assert (limited["changed_count"], limited["listed"]) == (2, 1)


def test_another_freight_charge(engine: Engine) -> None:
    """A wrong item upheld on appeal to the platform: the merchant bears the freight both ways,
    2 x 10.00 under the default policy, 2 x 12.50 under one charging 12.50 a leg."""
    place_delivered(engine, "KS-9", lines=("W:1:45.00",), merchant="shop-9", buyer="b-9")
    case = _open(engine, "KS-9", "return_refund", "45.00", at(days=3), "wrong_item.colour")
    engine.handle(
        RejectCase(case_id=case, reason="as shown", communication="chat:9", at=at(days=3, hours=5))
    )
    engine.handle(EscalateCase(case_id=case, claim="wrong_item", at=at(days=4)))
    engine.handle(RuleCase(case_id=case, **{"for": "buyer"}, at=at(days=5)))

    report = _replay(engine, Policy(name="freight-12.50", freight_per_leg="12.50"))

    (changed,) = report["changed"]
    assert changed["changes"] == ["money"]
    assert changed["recorded"]["money"]["freight"] == "20.00"
    assert changed["what_if"]["money"]["freight"] == "25.00"
    assert report["totals"]["difference"]["freight"] == "5.00"
    assert report["totals"]["difference"]["merchant_bears"] == "5.00"
    assert report["actions_refused"] == 0


def test_until_cuts_the_history_as_of_then(engine: Engine) -> None:
    """As of day 4 (hour 24 of the day-3 cases): the recorded KS-1 case still awaits the
    merchant; under 24 hours the clock has approved and refunded it."""
    cases = record(engine)
    report = _replay(engine, until=at(days=4, hours=1))
    changed = {c["case_id"]: c for c in report["changed"]}
    rejected = changed[cases["rejected"]]
    assert rejected["recorded"]["status"] == "awaiting_merchant"
    assert rejected["what_if"]["status"] == "refunded"
    assert rejected["refused"] == []


def test_since_not_before_until_is_refused(engine: Engine) -> None:
    with pytest.raises(BadInput, match="is not before"):
        what_if(
            engine.store,
            current=Policy(),
            policy=REVIEW_24H,
            since=parse_time(UNTIL),
            until=parse_time(SINCE),
        )


# The command line ----------------------------------------------------------------------------


def _policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "review-24h.toml"
    path.write_text('name = "review-24h"\n\n[windows]\nmerchant_review_hours = 24\n')
    return path


def _cli(store_url: str, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--store", store_url, "policy", "what-if", *args])


def test_command_json_and_table(engine: Engine, store_url: str, tmp_path: Path) -> None:
    record(engine)
    policy = str(_policy_file(tmp_path))
    done = _cli(store_url, "--policy", policy, "--since", SINCE, "--until", UNTIL, "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert report["policy"]["version"] == REVIEW_24H.version
    assert report["current_policy"]["version"] == Policy().version
    assert report["changed_count"] == 2
    assert report["totals"]["difference"]["merchant_bears"] == "39.90"

    shown = _cli(store_url, "--policy", policy, "--since", "2026-11-04", "--until", UNTIL)
    assert shown.exit_code == 0, shown.output
    assert "2 case(s) would go differently" in shown.stdout
    assert "closed 0.00 -> refunded 39.90 by merchant" not in shown.stdout  # two columns
    assert "refunded 39.90 by merchant" in shown.stdout
    assert "59.00 -> 98.90 (+39.90)" in shown.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--policy", "missing.toml"], "does not exist"),
        (["--since", UNTIL, "--until", SINCE], "is not before"),
        (["--since", "2026-11-03T10:00:00"], "has no offset"),
        (["--until", "soon"], "is not an ISO-8601 time"),
    ],
)
def test_command_bad_input_exits_2(
    store_url: str, tmp_path: Path, args: list[str], words: str
) -> None:
    with Engine(store_url):
        pass  # the store exists: the refusal is the input's
    given = {"--policy": str(_policy_file(tmp_path)), "--since": SINCE, "--until": UNTIL}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        given[flag] = str(tmp_path / value) if flag == "--policy" else value
    done = _cli(store_url, *[x for pair in given.items() for x in pair], "--json")
    assert done.exit_code == 2, done.output
    assert words in json.loads(done.stdout)["error"]["message"]


def test_command_unreadable_policy_file_exits_2(store_url: str, tmp_path: Path) -> None:
    with Engine(store_url):
        pass
    bad = tmp_path / "bad.toml"
    bad.write_text("[windows]\nmerchant_review_hours = -3\n")
    done = _cli(store_url, "--policy", str(bad), "--since", SINCE, "--until", UNTIL)
    assert done.exit_code == 2
    assert "merchant_review_hours" in done.stderr


def test_the_demo_replayed_under_its_own_policy_changes_nothing(engine: Engine) -> None:
    """Every kind of action the demo's stories take (offers, escalations, rulings, appeals,
    messages, extensions, exchanges, reships) is re-issued and allowed again: under the same
    policy no case goes differently."""
    play(engine)
    rows = engine.store.query(
        "SELECT min(opened_at) AS first, max(updated_at) AS last FROM {t}aftersales_cases"
    )
    first, last = parse_stored_time(rows[0]["first"]), parse_stored_time(rows[0]["last"])
    assert first is not None and last is not None
    report = what_if(
        engine.store,
        current=Policy(),
        policy=Policy(),
        since=first,
        until=last + timedelta(days=1),
    )
    assert report["cases"] == len(rows_of(engine))
    assert report["actions_replayed"] > 40
    assert (report["changed_count"], report["actions_refused"], report["unreadable"]) == (0, 0, [])


def rows_of(engine: Engine) -> list[dict[str, Any]]:
    return engine.store.query("SELECT case_id FROM {t}aftersales_cases")


def test_an_order_with_an_unusable_event_is_left_out_and_named(engine: Engine) -> None:
    cases = record(engine)
    uid = UUID(cases["returned"])
    store = engine.store
    table = store.recorder.events_table_name  # type: ignore[attr-defined]
    store.execute(
        f"UPDATE {{t}}{table} SET state = ? WHERE originator_id = ? AND originator_version = 2",
        (b"not json", str(uid) if store.is_postgres else uid.hex),
    )
    report = _replay(engine)
    assert report["unreadable_count"] == 1
    assert [u["order_id"] for u in report["unreadable"]] == ["KS-2"]
    assert (report["orders"], report["cases"], report["changed_count"]) == (4, 3, 2)


def test_parcels_turned_back_and_postage_replay_as_recorded(engine: Engine) -> None:
    """An intercepted parcel, a parcel refused at the door (one order fact, a case opened for
    the buyer) and a return's postage claimed with its waybill: under the same policy nothing
    changes; under a lower freight cap the merchant bears less, to the cent."""
    from aftersales.engine.application.requests import (
        ApproveCase,
        InterceptParcel,
        PlaceOrder,
        RefuseDelivery,
        ShipBack,
        ShipOrder,
    )

    for order_id in ("KS-20", "KS-21"):
        engine.handle(
            PlaceOrder(order_id=order_id, merchant="shop-7", buyer="b-7",
                       lines=["MUG:1:39.90", "TOY:1:20.00"], at=at(days=1))
        )  # fmt: skip
        engine.handle(ShipOrder(order_id=order_id, carrier="SF", waybill=order_id, at=at(days=2)))
    asked = _open(
        engine, "KS-20", "refund_only", "39.90", at(days=2, hours=1), "buyer.changed_mind"
    )
    engine.handle(InterceptParcel(case_id=asked, at=at(days=2, hours=2)))
    engine.handle(RefuseDelivery(order_id="KS-21", at=at(days=3)))
    place_delivered(engine, "KS-22", lines=("W:1:45.00",), merchant="shop-7", buyer="b-7")
    returned = _open(engine, "KS-22", "return_refund", "45.00", at(days=3), "quality.colour")
    engine.handle(ApproveCase(case_id=returned, return_address="Dock 1", at=at(days=3, hours=1)))
    engine.handle(
        ShipBack(case_id=returned, carrier="YTO", waybill="R", freight="11.00", at=at(days=4))
    )
    same = _replay(engine, Policy())
    assert (same["changed_count"], same["actions_refused"]) == (0, 0), same["changed"]
    cheaper = _replay(engine, Policy(return_freight_cap="6.00"))
    assert [c["case_id"] for c in cheaper["changed"]] == [returned]
    shop = _by_merchant(cheaper)["shop-7"]
    assert shop["difference"]["freight"] == "-5.00"


def test_a_shops_rule_replays_as_its_settings_stood(engine: Engine) -> None:
    """A refund only the shop's rule approved as it was opened: the same under the same policy
    (the shop's settings are read as they stood at each action); under a policy whose bounds
    leave the rule out, the request waits for the shop, and the clock approves it at hour 48."""
    from aftersales.engine.application.requests import SetAutoRule, SetReturnAddress
    from aftersales.engine.domain.policy import ShopRuleBounds

    engine.handle(
        SetReturnAddress(merchant_id="shop-8", address_id="W", warehouse="Wuhan",
                         address="Lane 3", at=at(days=1))
    )  # fmt: skip
    engine.handle(
        SetAutoRule(merchant_id="shop-8", rule_id="small", types=("refund_only",),
                    up_to="40.00", at=at(days=1))
    )  # fmt: skip
    place_delivered(engine, "KS-30", lines=("MUG:1:39.90",), merchant="shop-8", buyer="b-8")
    case = _open(engine, "KS-30", "refund_only", "39.90", at(days=3), "quality.colour")
    assert engine.stored_case(case)["status"] == "refunded"
    same = _replay(engine, Policy())
    assert (same["changed_count"], same["actions_refused"]) == (0, 0), same["changed"]
    narrower = _replay(engine, Policy(shop_rules=ShopRuleBounds(refund_only_up_to="20.00")))
    (changed,) = [c for c in narrower["changed"] if c["case_id"] == case]
    assert changed["what_if"]["status"] == "refunded"
    assert "auto_approve" in changed["what_if"]["clock"]


def test_instant_refunds_under_another_policy_read_each_buyers_standing(engine: Engine) -> None:
    """Returns recorded under the default policy (refunded on receipt), replayed under one with
    instant refunds: the platform would have advanced the good-standing buyer's refund as the
    goods went back (and, its ruling for the merchant on goods received damaged, put it on the
    buyer); the buyer flagged before shipping back would have waited as they did."""
    instant = Policy(name="instant", instant_refund=InstantRefund(up_to="100.00"))
    engine.handle(FlagBuyer(buyer_id="b-flagged", reason="empty parcels", at=at(days=1)))
    cases = {}
    for order_id, buyer in (("IR-1", "b-good"), ("IR-2", "b-flagged"), ("IR-3", "b-good")):
        place_delivered(engine, order_id, lines=("MUG:1:39.90",), buyer=buyer)
        case = _open(engine, order_id, "return_refund", "39.90", at(days=3), "quality.colour")
        engine.handle(ApproveCase(case_id=case, return_address="WH", at=at(days=3, hours=2)))
        engine.handle(ShipBack(case_id=case, carrier="SF", waybill=order_id, at=at(days=4)))
        cases[order_id] = case
    for order_id in ("IR-1", "IR-2"):
        engine.handle(ReceiveGoods(case_id=cases[order_id], at=at(days=5)))
    engine.handle(ReceiveGoods(case_id=cases["IR-3"], condition="damaged", at=at(days=5)))
    engine.handle(RuleCase(case_id=cases["IR-3"], **{"for": "merchant"}, at=at(days=6)))

    report = _replay(engine, instant)

    changed = {c["case_id"]: c for c in report["changed"]}
    assert set(changed) == {cases["IR-1"], cases["IR-3"]}  # the flagged buyer's: as it was
    received = changed[cases["IR-1"]]
    assert (received["recorded"]["refund_paid_by"], received["what_if"]["refund_paid_by"]) == (
        "merchant",
        "platform",
    )
    assert received["what_if"]["money"]["owed_to_platform"] == "39.90"
    ruled = changed[cases["IR-3"]]
    assert (ruled["recorded"]["status"], ruled["what_if"]["status"]) == ("closed", "closed")
    assert ruled["what_if"]["money"]["buyers_owe"] == "39.90"
    assert ruled["what_if"]["money"]["merchant_bears"] == "0.00"
    assert report["actions_refused"] == 0
