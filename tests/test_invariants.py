"""The holes a merchant, a buyer and an attacker found in the money and the clock, each closed.

Each test replays one hole as it was met, on SQLite and on PostgreSQL, through the engine's one
entry point (and the command line where its exit code is the point):

1. a line refunded twice (a rejected case escalated after a later case refunded its line);
2. a partial refund the buyer never agreed to;
3. a refund-only request before shipment that did not stop the shipment;
4. stalling the merchant's review with offers;
5. disputes without end and without an end date (appeals, the platform's own deadline, rejected
   cases nobody takes further);
6. the write path trusting what it reads (a forged sealed event, a deleted last event).

Every refusal appends nothing. The invariants themselves are stated in engine/domain/invariants.py;
a test there breaks each on purpose below the rules that keep it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    AcceptOffer,
    ApproveCase,
    DeclineOffer,
    DeliverOrder,
    EscalateCase,
    ImportOrder,
    MessageCase,
    OfferChange,
    OpenCase,
    PlaceOrder,
    RateCase,
    ReceiveGoods,
    RefundCase,
    RejectCase,
    RuleCase,
    ShipBack,
    ShipOrder,
)
from aftersales.engine.application.tick import tick
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.case_events import (
    CaseApproved,
    CaseRefunded,
    CaseWithdrawn,
    FreightCharged,
    MessagePosted,
    OfferDeclined,
)
from aftersales.engine.domain.errors import AftersalesError, NotAllowed, Poisoned
from aftersales.engine.domain.events import Act, Deadline, chain_hash
from aftersales.engine.domain.invariants import INVARIANTS, InvariantBroken
from aftersales.engine.domain.order import Order, parse_order_line
from aftersales.engine.domain.order_events import OrderShipped
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.values import Actor, DueAction, Party, Role, Status
from aftersales.engine.storage.store import AftersalesStore
from tests import test_domain as domain
from tests.conftest import T0, at
from tests.people import People

# Helpers ---------------------------------------------------------------------------------------


def head(engine: Engine) -> int:
    return engine.store.recorder.max_notification_id() or 0


def refused(engine: Engine, command: Any, error: type[AftersalesError], *words: str) -> str:
    """The command is refused with this error, naming these words, and appends nothing."""
    before = head(engine)
    with pytest.raises(error) as info:
        engine.handle(command)
    for word in words:
        assert word in info.value.message, (word, info.value.message)
    assert head(engine) == before
    return info.value.message


def cli_json(store_url: str, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli, ["--store", store_url, *args, "--json"])
    assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[0])


def when(hours: float) -> datetime:
    """Hours after the cases' day: day 2 of the test calendar, a day after the delivery."""
    return T0 + timedelta(days=2, hours=hours)


def order(
    engine: Engine, order_id: str, *lines: str, delivered: bool = True, shipped: bool = True
) -> None:
    engine.handle(
        PlaceOrder(
            order_id=order_id, merchant="shop-1", buyer="buyer-1", lines=list(lines), at=at()
        )
    )
    if delivered:
        engine.handle(DeliverOrder(order_id=order_id, at=at(days=1)))
    elif shipped:
        engine.handle(ShipOrder(order_id=order_id, at=at(hours=12)))


def open_case(
    engine: Engine, order_id: str, case_type: str, amount: str | None, **more: Any
) -> str:
    fields: dict[str, Any] = {"at": at(days=2), "reason": "quality.broken", **more}
    case: dict[str, Any] = engine.handle(
        OpenCase(order_id=order_id, type=case_type, amount=amount, **fields)
    )
    return str(case["case_id"])


def ledger_total(case: dict[str, Any]) -> Decimal:
    return sum((Decimal(e["amount"]) for e in case["ledger"] if e["type"] == "refund"), Decimal(0))


# 1. A line is never refunded twice -----------------------------------------------------------


def test_a_rejected_case_cannot_be_paid_for_a_line_a_later_case_refunded(
    engine: Engine, store_url: str
) -> None:
    """Order KS-3: one kettle at 129.00. Case A is rejected; case B, on the same line, is
    approved and refunded; A taken to the platform would have the platform refund it again."""
    order(engine, "KS-3", "KETTLE:1:129.00:home")
    a = open_case(engine, "KS-3", "refund_only", "129.00")
    engine.handle(
        RejectCase(case_id=a, reason="used", communication="chat:1", at=at(days=2, hours=1))
    )
    b = open_case(engine, "KS-3", "refund_only", "129.00", at=at(days=2, hours=2))
    engine.handle(ApproveCase(case_id=b, at=at(days=2, hours=3)))
    message = refused(
        engine,
        EscalateCase(case_id=a, claim="unjustified_rejection", at=at(days=2, hours=4)),
        NotAllowed,
        "refunded in full",
        b,
    )
    assert "nothing remains" in message
    line = engine.stored_order("KS-3")["lines"][0]
    assert line["refunded"] == "129.00"
    # The command line says the same, exit 3, and the case is usable: the buyer may withdraw.
    error = cli_json(
        store_url, "case", "escalate", a, "--claim", "unjustified_rejection",
        "--at", at(days=2, hours=5), code=3,
    )  # fmt: skip
    assert "refunded in full" in error["error"]["message"]
    assert engine.stored_case(a)["status"] == "rejected"


def test_a_rejected_case_taken_further_is_paid_at_most_what_remains(engine: Engine) -> None:
    """Two mugs at 50.00: A asks 100.00 for both and is rejected; B refunds one mug (50.00);
    A escalated is paid at most the 50.00 that remains, by the platform's ruling."""
    order(engine, "KS-4", "MUG:2:50.00:home")
    a = open_case(engine, "KS-4", "refund_only", "100.00")
    engine.handle(
        RejectCase(case_id=a, reason="used", communication="chat:1", at=at(days=2, hours=1))
    )
    b = open_case(engine, "KS-4", "refund_only", "50.00", lines=["MUG:1"], at=at(days=2, hours=2))
    engine.handle(ApproveCase(case_id=b, at=at(days=2, hours=3)))
    escalated = engine.handle(
        EscalateCase(case_id=a, claim="unjustified_rejection", at=at(days=2, hours=4))
    )
    assert escalated["escalation"]["pays_at_most"] == "50.00"
    ruled = engine.handle(RuleCase(case_id=a, in_favour_of="buyer", by="agent-1", at=at(days=3)))
    assert ruled["status"] == "refunded" and ruled["refunded_amount"] == "50.00"
    assert [line["refunded"] for line in engine.stored_order("KS-4")["lines"]] == ["100.00"]


def test_the_order_refuses_a_line_refunded_beyond_what_was_paid() -> None:
    """Below the rules that keep it, the invariant itself: an order asked to record more
    refunded on a line than the line is worth refuses, naming the invariant."""
    act = Act(at=T0, actor=Actor(role=Role.PLATFORM, id="p"), command_id="c", recorded_at=T0)
    placed = Order.place(
        "KS-9", merchant_id="m", buyer_id="b", lines=[parse_order_line("A:1:10.00")], act=act
    )
    lines = placed.case_lines([])
    case_id = uuid.uuid4()
    placed.link_case(case_id, lines, act)
    placed.unlink_case(case_id, "refunded", lines, Decimal("10.00"), act)
    placed.link_case(case_id, lines, act)
    version = placed.version
    with pytest.raises(InvariantBroken) as info:
        placed.unlink_case(case_id, "refunded", lines, Decimal("0.01"), act)
    assert (
        "line_refunds_within_paid" in info.value.message and info.value.code == "invariant_broken"
    )
    assert placed.version == version and placed.refunded == {"A": Decimal("10.00")}


def test_every_invariant_says_why() -> None:
    names = [i.name for i in INVARIANTS]
    assert len(set(names)) == len(names) == 6
    assert all(len(i.why.split()) > 10 for i in INVARIANTS)


# 2. A smaller refund is an offer ------------------------------------------------------------


def test_a_smaller_refund_is_an_offer_the_buyer_may_decline_and_escalate(
    engine: Engine, store_url: str
) -> None:
    order(engine, "KS-5", "COAT:1:100.00:apparel")
    case_id = open_case(engine, "KS-5", "return_refund", "100.00")
    engine.handle(ApproveCase(case_id=case_id, at=at(days=2, hours=1)))
    engine.handle(ShipBack(case_id=case_id, carrier="SF", waybill="S1", at=at(days=3)))
    waiting = engine.stored_case(case_id)
    offered = cli_json(store_url, "case", "refund", case_id, "--amount", "1.00", "--at", at(days=4))
    assert offered["status"] == "awaiting_buyer_answer" and offered["refunded_amount"] == "0.00"
    assert offered["offers"][-1]["amount"] == "1.00"
    declined = engine.handle(DeclineOffer(case_id=case_id, at=at(days=4, hours=1)))
    # Back where it was, with the deadline it had: the merchant gained no time.
    assert declined["status"] == "awaiting_merchant_receipt"
    assert declined["due_at"] == waiting["due_at"]
    escalated = engine.handle(EscalateCase(case_id=case_id, claim="other", at=at(days=4, hours=2)))
    assert escalated["status"] == "escalated" and escalated["due_action"] == "ruling_overdue"


def test_an_accepted_smaller_refund_ends_the_case_with_the_buyers_consent(engine: Engine) -> None:
    order(engine, "KS-6", "COAT:1:100.00:apparel")
    case_id = open_case(engine, "KS-6", "return_refund", "100.00")
    engine.handle(RefundCase(case_id=case_id, amount="60.00", at=at(days=2, hours=1)))
    accepted = engine.handle(AcceptOffer(case_id=case_id, at=at(days=2, hours=2)))
    assert accepted["status"] == "refunded" and accepted["refunded_amount"] == "60.00"
    assert accepted["offers"][-1]["answer"] == "accepted"
    refused(
        engine,
        RefundCase(case_id=open_case(engine, "KS-6", "refund_only", "40.00", at=at(days=3)),
                   amount="40.01", at=at(days=3, hours=1)),
        NotAllowed,
        "40.01",
    )  # fmt: skip


# 3. A refund before shipment holds the shipment ------------------------------------------------


def test_a_refund_only_request_before_shipment_holds_the_order(
    engine: Engine, store_url: str
) -> None:
    order(engine, "KS-7", "LAMP:1:80.00:home", delivered=False, shipped=False)
    case_id = open_case(engine, "KS-7", "refund_only", "80.00", at=at(hours=2))
    error = cli_json(store_url, "order", "ship", "KS-7", "--at", at(hours=3), code=3)
    assert case_id in error["error"]["message"] and "answer" in error["error"]["message"]
    refused(engine, DeliverOrder(order_id="KS-7", at=at(hours=3)), NotAllowed, case_id)
    # Answered (rejected), the order may ship.
    engine.handle(RejectCase(case_id=case_id, reason="r", communication="c", at=at(hours=4)))
    shipped = engine.handle(ShipOrder(order_id="KS-7", at=at(hours=5)))
    assert shipped["shipped_at"] is not None


def test_goods_shipped_anyway_turn_the_request_into_a_return(engine: Engine) -> None:
    """The merchant shipped without answering; the order system records it: the request is a
    return now, and the 48-hour default approval sends the buyer to ship the goods back
    instead of refunding the whole line while the buyer keeps them."""
    order(engine, "KS-8", "LAMP:1:80.00:home", delivered=False, shipped=False)
    case_id = open_case(engine, "KS-8", "refund_only", "80.00", at=at(hours=2))
    engine.handle(ShipOrder(order_id="KS-8", anyway=True, at=at(hours=3)))
    turned = engine.stored_case(case_id)
    assert turned["type"] == "return_refund" and turned["status"] == "awaiting_merchant"
    engine.handle(DeliverOrder(order_id="KS-8", at=at(days=1)))
    tick(engine, when(2 + 48))
    approved = engine.stored_case(case_id)
    assert approved["status"] == "awaiting_buyer_shipment" and approved["refunded_amount"] == "0.00"


def test_an_imported_shipment_is_a_fact_and_turns_the_request_too(engine: Engine) -> None:
    lines = ["LAMP:1:80.00:home"]
    engine.handle(ImportOrder(order_id="KS-10", merchant="shop-1", buyer="buyer-1",
                              lines=lines, placed_at=at()))  # fmt: skip
    case_id = open_case(engine, "KS-10", "refund_only", "80.00", at=at(hours=2))
    engine.handle(
        ImportOrder(order_id="KS-10", merchant="shop-1", buyer="buyer-1", lines=lines,
                    placed_at=at(), shipped_at=at(hours=3), carrier="SF", waybill="W1")
    )  # fmt: skip
    assert engine.stored_case(case_id)["type"] == "return_refund"


# 4. Offers never extend the merchant's review -------------------------------------------------


def test_offers_declined_one_after_another_never_extend_the_review(engine: Engine) -> None:
    order(engine, "KS-11", "BAG:1:300.00:apparel")
    case_id = open_case(engine, "KS-11", "return_refund", "300.00", at=when(0).isoformat())
    review = engine.stored_case(case_id)["due_at"]
    for n in range(4):
        engine.handle(OfferChange(case_id=case_id, type="refund_only", amount="1.00",
                                  at=when(1 + 2 * n).isoformat()))  # fmt: skip
        back = engine.handle(DeclineOffer(case_id=case_id, at=when(2 + 2 * n).isoformat()))
        assert back["due_at"] == review
    tick(engine, when(48))
    assert engine.stored_case(case_id)["status"] == "awaiting_buyer_shipment"


def test_an_offer_left_unanswered_past_the_review_gives_the_clock_its_turn(engine: Engine) -> None:
    order(engine, "KS-12", "BAG:1:300.00:apparel")
    case_id = open_case(engine, "KS-12", "return_refund", "300.00", at=when(0).isoformat())
    engine.handle(OfferChange(case_id=case_id, type="refund_only", amount="1.00",
                              at=when(47).isoformat()))  # fmt: skip
    tick(engine, when(47 + 48))
    case = engine.stored_case(case_id)
    # The offer lapsed at hour 95; the review it interrupted had run out: approved then.
    assert case["status"] == "awaiting_buyer_shipment"
    assert [o["answer"] for o in case["offers"]] == ["lapsed"]


# 5. Disputes end, and have an end date ------------------------------------------------------


def test_a_ruling_for_the_merchant_may_be_appealed_once_and_the_second_is_final(
    engine: Engine,
) -> None:
    order(engine, "KS-13", "SHOE:1:199.00:apparel")
    case_id = open_case(engine, "KS-13", "refund_only", "199.00", at=when(0).isoformat())
    engine.handle(
        RejectCase(case_id=case_id, reason="r", communication="c", at=when(1).isoformat())
    )
    escalated = engine.handle(
        EscalateCase(case_id=case_id, claim="unjustified_rejection", at=when(2).isoformat())
    )
    assert escalated["due_action"] == "ruling_overdue"
    assert escalated["due_at"] == when(2 + 72).isoformat()
    ruled = engine.handle(RuleCase(case_id=case_id, in_favour_of="merchant", by="a",
                                   at=when(3).isoformat()))  # fmt: skip
    assert ruled["status"] == "rejected" and ruled["due_action"] == "escalation_lapsed"
    assert ruled["escalation_until"] == when(3 + 7 * 24).isoformat()
    appeal = engine.handle(EscalateCase(case_id=case_id, claim="unjustified_rejection",
                                        at=when(4).isoformat()))  # fmt: skip
    assert appeal["escalation"]["appeal"] is True
    final = engine.handle(RuleCase(case_id=case_id, in_favour_of="merchant", by="a",
                                   at=when(5).isoformat()))  # fmt: skip
    assert final["status"] == "closed" and final["due_at"] is None
    refused(engine, EscalateCase(case_id=case_id, claim="other", at=when(6).isoformat()),
            NotAllowed, "second ruling is final")  # fmt: skip


def test_the_platform_has_a_deadline_too(engine: Engine) -> None:
    order(engine, "KS-14", "SHOE:1:199.00:apparel")
    case_id = open_case(engine, "KS-14", "return_refund", "199.00", at=when(0).isoformat())
    engine.handle(ApproveCase(case_id=case_id, at=when(1).isoformat()))
    engine.handle(EscalateCase(case_id=case_id, claim="other", at=when(2).isoformat()))
    tick(engine, when(2 + 72))
    overdue = engine.stored_case(case_id)
    assert overdue["status"] == "escalated" and overdue["ruling_overdue"] is True
    assert overdue["due_action"] == "ruling_lapsed"
    tick(engine, when(2 + 72 + 48))
    lapsed = engine.stored_case(case_id)
    assert lapsed["status"] == "refunded" and lapsed["refunded_amount"] == "199.00"
    (entry,) = lapsed["ledger"]
    assert entry["payer"] == "platform" and entry["owed_by"] == "platform"


def test_evidence_is_taken_in_its_window(engine: Engine) -> None:
    order(engine, "KS-15", "SHOE:1:199.00:apparel")
    case_id = open_case(engine, "KS-15", "return_refund", "199.00", at=when(0).isoformat())
    engine.handle(ApproveCase(case_id=case_id, at=when(1).isoformat()))
    engine.handle(EscalateCase(case_id=case_id, claim="other", at=when(2).isoformat()))
    engine.handle(
        MessageCase(case_id=case_id, text="see", evidence=["p:1"], at=when(3).isoformat())
    )
    refused(
        engine,
        MessageCase(case_id=case_id, text="more", evidence=["p:2"], at=when(2 + 49).isoformat()),
        NotAllowed,
        "evidence window",
    )
    engine.handle(MessageCase(case_id=case_id, text="still here", at=when(2 + 50).isoformat()))


def test_a_rejection_nobody_takes_further_is_closed_by_the_clock(engine: Engine) -> None:
    order(engine, "KS-16", "SHOE:1:199.00:apparel")
    case_id = open_case(engine, "KS-16", "refund_only", "199.00", at=when(0).isoformat())
    engine.handle(
        RejectCase(case_id=case_id, reason="r", communication="c", at=when(1).isoformat())
    )
    fired = tick(engine, when(1 + 7 * 24)).fired
    assert [d.action.value for d in fired] == ["escalation_lapsed"]
    assert engine.stored_case(case_id)["status"] == "closed"


def test_every_service_type_has_its_after_sales_window(engine: Engine) -> None:
    order(engine, "KS-17", "KETTLE:1:129.00:home")
    refused(
        engine,
        OpenCase(order_id="KS-17", type="refund_only", reason="quality.broken", amount="129.00",
                 at=at(days=1 + 32)),
        NotAllowed,
        "15-day after-sales window for refund only",
    )  # fmt: skip


# 6. The write path verifies what it acts on ----------------------------------------------------


def _rows(store: AftersalesStore, case_id: str) -> list[dict[str, Any]]:
    uid = uuid.UUID(case_id)
    table = store.recorder.events_table_name  # type: ignore[attr-defined]
    return store.query(
        f"SELECT originator_version AS version, topic, state FROM {{t}}{table} "
        "WHERE originator_id = ? ORDER BY originator_version",
        (uid if store.is_postgres else uid.hex,),
    )


def _refunded_return(engine: Engine, order_id: str) -> str:
    order(engine, order_id, "CASE:1:39.90:phone_accessory")
    case_id = open_case(engine, order_id, "return_refund", "39.90")
    engine.handle(ApproveCase(case_id=case_id, at=at(days=2, hours=1)))
    engine.handle(ShipBack(case_id=case_id, carrier="SF", waybill="S1", at=at(days=3)))
    engine.handle(ReceiveGoods(case_id=case_id, at=at(days=4)))
    return case_id


def forge_awaiting_receipt(engine: Engine, case_id: str, *, move_index: bool) -> None:
    """Append one event sealed with the project's public hashing code, as someone who can
    write the database would: the refunded case claims to await receipt again, with a
    deadline already due (so the clock would refund it a second time)."""
    store = engine.store
    rows = _rows(store, case_id)
    last = json.loads(bytes(rows[-1]["state"]))
    shipped = next(
        json.loads(bytes(r["state"])) for r in rows if r["topic"].endswith("ShippedBack")
    )
    version = len(rows) + 1
    state = {
        **shipped,
        "at": at(days=5),
        "timestamp": at(days=5),
        "command_id": "forged",
        "due": {**shipped["due"], "due_at": at(days=6)},
    }
    state.pop("hash")
    topic = rows[0]["topic"].replace("CaseOpened", "GoodsShippedBack")
    state["hash"] = chain_hash(last["hash"], uuid.UUID(case_id), version, topic, state)
    from eventsourcing.persistence import StoredEvent

    store.recorder.insert_events(
        [
            StoredEvent(
                originator_id=uuid.UUID(case_id),
                originator_version=version,
                topic=topic,
                state=json.dumps(state).encode(),
            )
        ]
    )
    if move_index:
        store.execute(
            "UPDATE {t}aftersales_cases SET version = ?, status = ?, due_at = ?, due_action = ? "
            "WHERE case_id = ?",
            (version, "awaiting_merchant_receipt",
             store.time_param(datetime.fromisoformat(at(days=6))), "auto_refund", case_id),
        )  # fmt: skip


@pytest.mark.parametrize("move_index", [False, True], ids=["index-left", "index-moved"])
def test_a_forged_event_is_never_shown_acted_on_or_refunded(
    engine: Engine, store_url: str, move_index: bool
) -> None:
    case_id = _refunded_return(engine, "KS-20")
    forge_awaiting_receipt(engine, case_id, move_index=move_index)
    before = head(engine)
    index = engine.store.query("SELECT * FROM {t}aftersales_cases WHERE case_id = ?", (case_id,))
    for args in (["case", "show", case_id], ["case", "rate", case_id, "--score", "5"]):
        error = cli_json(store_url, *args, code=3)
        assert error["error"]["code"] == "poisoned", error
        assert f"case {case_id}" in error["error"]["message"]
    with pytest.raises(Poisoned):
        engine.handle(RateCase(case_id=case_id, score=5, at=at(days=7)))
    done = tick(engine, datetime.fromisoformat(at(days=8)))
    assert done.fired == [] and head(engine) == before
    assert (
        engine.store.query("SELECT * FROM {t}aftersales_cases WHERE case_id = ?", (case_id,))
        == index
    )  # the index never moved past it


def test_a_deleted_last_event_is_never_read_as_the_case(engine: Engine, store_url: str) -> None:
    case_id = _refunded_return(engine, "KS-21")
    store = engine.store
    table = store.recorder.events_table_name  # type: ignore[attr-defined]
    last = len(_rows(store, case_id))
    uid = uuid.UUID(case_id)
    store.execute(
        f"DELETE FROM {{t}}{table} WHERE originator_id = ? AND originator_version = ?",
        (uid if store.is_postgres else uid.hex, last),
    )
    error = cli_json(store_url, "case", "show", case_id, code=3)
    assert error["error"]["code"] == "poisoned"
    assert "missing from the end" in error["error"]["message"]
    before = head(engine)
    cli_json(store_url, "case", "rate", case_id, "--score", "5", "--at", at(days=9), code=3)
    assert head(engine) == before


# Each invariant, broken on purpose below the rules that keep it --------------------------------
#
# The aggregates' own methods never record such events; here they are recorded directly, as a
# bug in a method would, and the invariant refuses each before it changes anything.


def _story(*steps: str) -> tuple[Any, Any]:
    story = domain.given(domain.T.RETURN_REFUND, *steps)
    return story.case, story.next


def _broken(aggregate: Any, invariant: str, record: Callable[[], None]) -> None:
    version, pending, shown = aggregate.version, list(aggregate.pending_events), None
    shown = aggregate.to_json()
    with pytest.raises(InvariantBroken) as info:
        record()
    assert info.value.invariant.name == invariant, info.value.message
    assert aggregate.version == version and aggregate.pending_events == pending
    assert aggregate.to_json() == shown


def _act(role: Role, at: datetime) -> dict[str, Any]:
    return domain.act(role, at).fields()


def test_refund_as_due_refuses_a_refund_of_less_or_more_than_due() -> None:
    case, next_at = _story("approve", "ship back")

    def refund(amount: str) -> Callable[[], None]:
        return lambda: case.trigger_event(
            CaseRefunded, status=Status.REFUNDED, due=None, amount=Decimal(amount),
            paid_by=Party.MERCHANT, owed_by=Party.MERCHANT, **_act(Role.MERCHANT, next_at),
        )  # fmt: skip

    for amount in ("1.00", "40.00"):
        _broken(case, "refund_as_due", refund(amount))


def test_one_running_deadline_refuses_a_wait_without_its_deadline_or_an_end_with_one() -> None:
    case, next_at = _story()
    review = case.due
    _broken(
        case,
        "one_running_deadline",
        lambda: case.trigger_event(
            CaseApproved, status=Status.AWAITING_BUYER_SHIPMENT, due=None,
            **_act(Role.MERCHANT, next_at),
        ),
    )  # fmt: skip
    _broken(
        case,
        "one_running_deadline",
        lambda: case.trigger_event(
            CaseApproved, status=Status.AWAITING_BUYER_SHIPMENT, due=review,  # not its wait's
            **_act(Role.MERCHANT, next_at),
        ),
    )  # fmt: skip
    _broken(
        case,
        "one_running_deadline",
        lambda: case.trigger_event(
            CaseWithdrawn, status=Status.CLOSED, due=review, **_act(Role.BUYER, next_at)
        ),
    )


def test_offers_never_extend_refuses_a_review_or_a_resumed_deadline_moved_later() -> None:
    case, next_at = _story()
    assert case.due is not None
    later = case.due.model_copy(update={"due_at": case.due.due_at + timedelta(hours=1)})
    _broken(
        case,
        "offers_never_extend",
        lambda: case.trigger_event(
            MessagePosted, status=Status.AWAITING_MERCHANT, due=later, text="hi",
            **_act(Role.BUYER, next_at),
        ),
    )  # fmt: skip
    offered, at = _story("offer refund_only")
    assert offered.resume_due is not None
    stretched = offered.resume_due.model_copy(
        update={"due_at": offered.resume_due.due_at + timedelta(days=2)}
    )
    _broken(
        offered,
        "offers_never_extend",
        lambda: offered.trigger_event(
            OfferDeclined, status=Status.AWAITING_MERCHANT, due=stretched,
            **_act(Role.BUYER, at),
        ),
    )  # fmt: skip


def test_money_has_parties_refuses_a_refund_owed_by_no_one_liable_or_freight_to_oneself() -> None:
    case, next_at = _story("approve", "ship back")
    _broken(
        case,
        "money_has_parties",
        lambda: case.trigger_event(
            CaseRefunded, status=Status.REFUNDED, due=None, amount=Decimal("39.90"),
            paid_by=Party.PLATFORM, owed_by=Party.PLATFORM, **_act(Role.MERCHANT, next_at),
        ),
    )  # fmt: skip
    _broken(
        case,
        "money_has_parties",
        lambda: case.trigger_event(
            FreightCharged, status=case.status, due=case.due, amount=Decimal("10.00"), legs=1,
            payer=Party.MERCHANT, payee=Party.MERCHANT, **_act(Role.MERCHANT, next_at),
        ),
    )  # fmt: skip


def test_shipment_held_refuses_a_shipment_that_leaves_a_holding_case_as_it_was() -> None:
    order = domain.given_order(shipped=False, delivered=False)
    case = domain.open_on(order, domain.T.REFUND_ONLY)
    assert case.holds_shipment and order.shipment_held_by == [case.id]
    _broken(
        order,
        "shipment_held",
        lambda: order.trigger_event(
            OrderShipped, shipment=None, turned=(), **_act(Role.PLATFORM, domain.LATER)
        ),
    )


# On every path: a bug that breaks an invariant is refused, and only its own action ------------


@pytest.fixture
def broken_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the aggregate, planted: an approved return runs the merchant's review deadline
    instead of the buyer's shipment window (one_running_deadline). Refund-only cases are
    untouched (their approval ends them)."""
    real = ReturnCase._wait

    def wait(self: ReturnCase, policy: Policy, action: DueAction, at: datetime) -> Deadline:
        if action is DueAction.AUTO_CLOSE:
            action = DueAction.AUTO_APPROVE
        return real(self, policy, action, at)

    monkeypatch.setattr(ReturnCase, "_wait", wait)


def _two_cases(engine: Engine) -> tuple[str, str]:
    order(engine, "P-1", "COAT:1:100.00:apparel")
    order(engine, "P-2", "MUG:1:20.00:home")
    bad = open_case(engine, "P-1", "return_refund", "100.00")
    good = open_case(engine, "P-2", "refund_only", "20.00")
    return bad, good


@pytest.mark.usefixtures("broken_returns")
def test_an_invariant_is_kept_on_the_command_line_and_in_batch(
    engine: Engine, store_url: str
) -> None:
    bad, good = _two_cases(engine)
    before = head(engine)
    error = cli_json(store_url, "case", "approve", bad, "--at", at(days=2, hours=1), code=3)
    assert error["error"]["code"] == "invariant_broken"
    assert "one_running_deadline" in error["error"]["message"] and head(engine) == before
    lines = [
        {"action": "case approve", "case_id": bad, "at": at(days=2, hours=1)},
        {"action": "case approve", "case_id": good, "at": at(days=2, hours=1)},
    ]
    result = CliRunner().invoke(
        cli, ["--store", store_url, "batch", "-"], input="\n".join(map(json.dumps, lines))
    )
    out = [json.loads(x) for x in result.stdout.splitlines()]
    assert [o["ok"] for o in out] == [False, True] and result.exit_code == 3
    assert out[0]["error"]["code"] == "invariant_broken"
    assert engine.stored_case(bad)["status"] == "awaiting_merchant"
    assert engine.stored_case(good)["status"] == "refunded"


@pytest.mark.usefixtures("broken_returns")
def test_an_invariant_is_kept_in_a_bulk_import_and_the_rest_of_the_chunk_saved(
    engine: Engine, store_url: str, tmp_path: Any
) -> None:
    """A chunk in memory that an action broke is not saved: it is run again line by line, the
    line that breaks the invariant refused, every other one saved."""
    bad, good = _two_cases(engine)
    lines = [
        {"action": "case message", "case_id": bad, "text": "a", "at": at(days=2, hours=1)},
        {"action": "case approve", "case_id": bad, "at": at(days=2, hours=2)},
        {"action": "case approve", "case_id": good, "at": at(days=2, hours=2)},
    ]
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(map(json.dumps, lines)))
    report = cli_json(store_url, "import-history", str(path), "--chunk", "10", code=3)
    assert (report["ok"], report["failed"]) == (2, 1)
    assert [(e["line"], e["code"]) for e in report["errors"]] == [(2, "invariant_broken")]
    shown = engine.stored_case(bad)
    assert shown["status"] == "awaiting_merchant" and shown["messages"][-1]["text"] == "a"
    assert engine.stored_case(good)["status"] == "refunded"


@pytest.mark.usefixtures("broken_returns")
def test_an_invariant_is_kept_by_the_tick(engine: Engine) -> None:
    bad, good = _two_cases(engine)
    result = tick(engine, datetime.fromisoformat(at(days=5)))
    assert [d.case_id for d in result.fired] == [good]
    assert [(d.case_id, e.code) for d, e in result.failed] == [(bad, "invariant_broken")]
    assert engine.stored_case(bad)["status"] == "awaiting_merchant"


@pytest.mark.usefixtures("broken_returns")
def test_an_invariant_is_kept_over_http(engine: Engine, store_url: str) -> None:
    from fastapi.testclient import TestClient

    from aftersales.commands.http.app import create_app

    people = People(engine)
    bad, _ = _two_cases(engine)
    before = head(engine)
    with TestClient(create_app(store_url)) as client:
        answer = client.post(
            f"/v1/cases/{bad}/approve", json={"at": at(days=2, hours=1)}, headers=people.auth("ops")
        )
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "invariant_broken" and head(engine) == before
