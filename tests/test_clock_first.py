"""The clock acts first: an action is judged in the state the clock would have made by its time.

For every deadline, the same late action with and without a `tick` before it ends in the same
history, event for event (less recording times); the property test below inserts ticks at
random points in random histories and finds the same."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import (
    AcceptOffer,
    ApproveCase,
    Command,
    DeliverOrder,
    EscalateCase,
    OfferChange,
    OpenCase,
    PlaceOrder,
    ReceiveGoods,
    RefundCase,
    RejectCase,
    Reship,
    RuleCase,
    ShipBack,
    ShipOrder,
    ShipReplacement,
    Tick,
    WithdrawCase,
)
from aftersales.engine.domain.errors import AftersalesError, BadInput, NotAllowed
from aftersales.engine.domain.order import order_uuid
from aftersales.engine.domain.policy import Policy
from tests.conftest import PG_URL, T0, at, drop_schema

CASE_A = UUID("0a0a0a0a-0000-4000-8000-00000000000a")
CASE_B = UUID("0b0b0b0b-0000-4000-8000-00000000000b")


def history(engine: Engine, uid: UUID) -> list[dict[str, Any]]:
    """An aggregate's stored events, less when each was recorded (and the hash over it)."""
    found = []
    for stored in engine.store.recorder.select_events(uid):
        state = json.loads(stored.state)
        state.pop("timestamp", None)
        state.pop("hash", None)
        found.append({"version": stored.originator_version, "topic": stored.topic, **state})
    return found


def setup_order(engine: Engine, *, shipped: bool = True) -> None:
    engine.handle(
        PlaceOrder(
            order_id="KS-1",
            merchant="shop-1",
            buyer="buyer-1",
            lines=["CASE-RED:1:39.90:phone_accessory", "STRAP:1:10.00"],
            at=at(),
        )
    )
    if shipped:
        engine.handle(ShipOrder(order_id="KS-1", carrier="SF", waybill="S1", at=at(days=1)))
        engine.handle(DeliverOrder(order_id="KS-1", at=at(days=2)))


def open_case(engine: Engine, case_type: str = "return_refund", **more: Any) -> str:
    args: dict[str, Any] = {
        "order_id": "KS-1",
        "type": case_type,
        "reason": "missing_items.strap" if case_type == "reship" else "quality.colour",
        "line": ["STRAP"] if case_type == "reship" else ["CASE-RED"],
        "amount": None if case_type == "reship" else "39.90",
        "case_id": str(CASE_A),
        "at": at(days=3),
        "command_id": "open-a",
    }
    args.update(more)
    result: dict[str, Any] = engine.handle(OpenCase(**args))
    return str(result["case_id"])


# Each scenario: what happens before, and the late action (with its expected outcome).
Steps = Callable[[Engine, str], None]


def _approve(engine: Engine, cid: str) -> None:
    engine.handle(ApproveCase(case_id=cid, at=at(days=3, hours=1), command_id="approve"))


def _ship(engine: Engine, cid: str) -> None:
    _approve(engine, cid)
    engine.handle(ShipBack(case_id=cid, carrier="SF", waybill="R1", at=at(days=4), command_id="s"))


def _reship_ruled(engine: Engine, cid: str) -> None:
    engine.handle(
        RejectCase(case_id=cid, reason="complete", communication="chat:1", at=at(days=3, hours=1))
    )
    engine.handle(EscalateCase(case_id=cid, claim="missing_items", at=at(days=3, hours=2)))
    engine.handle(RuleCase(case_id=cid, in_favour_of="buyer", at=at(days=3, hours=3)))


def _received_exchange(engine: Engine, cid: str) -> None:
    _ship(engine, cid)
    engine.handle(ReceiveGoods(case_id=cid, at=at(days=5)))


def _offered(engine: Engine, cid: str) -> None:
    engine.handle(OfferChange(case_id=cid, type="refund_only", at=at(days=3, hours=1)))


SCENARIOS: dict[str, tuple[str, Steps, Callable[[str], Command], str | None, int]] = {
    # name: case type, steps before, the late action, the error it meets (None: it succeeds),
    # and the hours after opening it comes at
    "ship-back after an unanswered request is auto-approved": (
        "return_refund",
        lambda e, c: None,
        lambda c: ShipBack(case_id=c, carrier="SF", waybill="R1", at=at(days=3, hours=50)),
        None,
        50,
    ),
    "a rejection at hour 72 finds the case approved": (
        "return_refund",
        lambda e, c: None,
        lambda c: RejectCase(
            case_id=c, reason="worn", communication="chat:1", at=at(days=3, hours=72)
        ),
        "the merchant review",
        72,
    ),
    "a shipment on day 12 finds the case closed": (
        "return_refund",
        _approve,
        lambda c: ShipBack(case_id=c, carrier="SF", waybill="R1", at=at(days=15)),
        "auto_close",
        12 * 24,
    ),
    "a damaged receipt after the automatic refund was due": (
        "return_refund",
        _ship,
        lambda c: ReceiveGoods(case_id=c, condition="damaged", at=at(days=15)),
        "auto_refund",
        12 * 24,
    ),
    "a reship after its 24 hours": (
        "reship",
        _reship_ruled,
        lambda c: Reship(case_id=c, carrier="SF", waybill="X1", at=at(days=4, hours=4)),
        "reship_overdue",
        25,
    ),
    "a replacement shipped after its 48 hours": (
        "exchange",
        _received_exchange,
        lambda c: ShipReplacement(case_id=c, carrier="SF", waybill="X2", at=at(days=7, hours=1)),
        "replacement_overdue",
        49,
    ),
    "an offer accepted after the buyer's 48 hours": (
        "return_refund",
        _offered,
        lambda c: AcceptOffer(case_id=c, at=at(days=5, hours=2)),
        "offer_lapsed",
        49,
    ),
    "a chain: auto-approve, then auto-close ten days later": (
        "return_refund",
        lambda e, c: None,
        lambda c: ShipBack(case_id=c, carrier="SF", waybill="R1", at=at(days=16)),
        "auto_close",
        13 * 24,
    ),
}


@contextmanager
def same_ids() -> Iterator[None]:
    """Actions given no command id get the same generated ones in both runs compared."""
    import aftersales.engine.application.units as units

    counter = iter(range(1, 1_000_000))
    with mock.patch.object(units, "uuid4", lambda: UUID(int=next(counter))):
        yield


def _run(store_url: str, name: str, tick_first: bool) -> tuple[str | None, list[Any], list[Any]]:
    case_type, before, late, _, _ = SCENARIOS[name]
    with same_ids(), Engine(store_url) as engine:
        setup_order(engine)
        cid = open_case(engine, case_type)
        before(engine, cid)
        action = late(cid)
        assert isinstance(
            action, (ShipBack, RejectCase, ReceiveGoods, Reship, ShipReplacement, AcceptOffer)
        )
        if tick_first:
            engine.handle(Tick(now=action.at))
        head = engine.store.recorder.max_notification_id()
        refusal: str | None = None
        try:
            engine.handle(action)
        except AftersalesError as exc:
            refusal = exc.message
            # Refused: nothing of the action is saved (the clock's events neither; a tick
            # records them whenever it runs).
            assert engine.store.recorder.max_notification_id() == head
            engine.handle(Tick(now=action.at))
        return refusal, history(engine, UUID(cid)), history(engine, order_uuid("KS-1"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_clock_acts_first_whether_or_not_a_tick_ran(store_url: str, name: str) -> None:
    expected_error = SCENARIOS[name][3]
    ticked = _run(store_url, name, tick_first=True)
    other = _second_store(store_url)
    try:
        unticked = _run(other, name, tick_first=False)
    finally:
        _drop(other)
    assert unticked[1] == ticked[1], "the case's history depends on when the tick ran"
    assert unticked[2] == ticked[2], "the order's history depends on when the tick ran"
    if expected_error is None:
        assert unticked[0] is None and ticked[0] is None
    else:
        assert ticked[0] is not None and unticked[0] is not None
        assert unticked[0].startswith("the clock acted first: "), unticked[0]
        assert expected_error in unticked[0] or "auto_approve" in unticked[0]


def test_a_refusal_names_the_deadline_that_passed_and_what_the_clock_did(engine: Engine) -> None:
    setup_order(engine)
    cid = open_case(engine)
    with pytest.raises(NotAllowed) as refused:
        engine.handle(RejectCase(case_id=cid, reason="worn", communication="chat:1", at=at(days=6)))
    message = refused.value.message
    assert "auto_approve fell due at 2026-11-06T10:00:00+08:00" in message
    assert "(awaiting_merchant to awaiting_buyer_shipment)" in message
    assert "reject is not allowed" in message
    assert engine.stored_case(cid)["status"] == "awaiting_merchant"  # nothing saved


def test_an_action_one_second_before_the_deadline_is_the_persons(engine: Engine) -> None:
    setup_order(engine)
    cid = open_case(engine)
    just_in_time = (T0 + timedelta(days=5) - timedelta(seconds=1)).isoformat()
    case = engine.handle(
        RejectCase(case_id=cid, reason="worn", communication="chat:1", at=just_in_time)
    )
    assert case["status"] == "rejected"


def test_a_case_whose_deadline_freed_its_lines_does_not_block_a_new_one(engine: Engine) -> None:
    """Case A was approved and the buyer never shipped: at day 10 the system closed it and
    let its lines go. A new case at day 14 on the same line is allowed, tick or no tick."""
    setup_order(engine)
    first = open_case(engine)
    _approve(engine, first)
    second = engine.handle(
        OpenCase(
            order_id="KS-1",
            type="refund_only",
            reason="quality.colour",
            lines=["CASE-RED"],
            amount="39.90",
            at=at(days=14),
        )
    )
    assert second["status"] == "awaiting_merchant"
    assert engine.get_case(first)["status"] == "closed"
    events = [e["topic"].rsplit(":", 1)[-1] for e in history(engine, order_uuid("KS-1"))]
    # The order records the first case letting go (at its deadline) before the second opens.
    assert events[-2:] == ["CaseUnlinked", "CaseLinked"]


def test_a_case_opened_before_the_delivery_is_refused(engine: Engine) -> None:
    setup_order(engine)  # delivered at day 2
    with pytest.raises(BadInput, match="before order KS-1's latest event"):
        open_case(engine, at=at(days=1, hours=12))


# The property: ticks anywhere change nothing ----------------------------------------------

ACTIONS = (
    "open",
    "approve",
    "reject",
    "ship_back",
    "receive_ok",
    "receive_damaged",
    "refund",
    "withdraw",
    "escalate",
    "rule_buyer",
    "rule_merchant",
    "tick",
)


def _command(kind: str, case: UUID, when: str, key: str, case_type: str) -> Command | None:
    cid = str(case)
    common: dict[str, Any] = {"at": when, "command_id": key}
    if kind == "open":
        return OpenCase(
            order_id="KS-1",
            type=case_type,
            reason="quality.colour",
            lines=["CASE-RED"] if case == CASE_A else ["STRAP"],
            amount="39.90" if case == CASE_A else "10.00",
            case_id=cid,
            **common,
        )
    table: dict[str, Callable[[], Command]] = {
        "approve": lambda: ApproveCase(case_id=cid, **common),
        "reject": lambda: RejectCase(case_id=cid, reason="r", communication="c", **common),
        "ship_back": lambda: ShipBack(case_id=cid, carrier="SF", waybill=key, **common),
        "receive_ok": lambda: ReceiveGoods(case_id=cid, **common),
        "receive_damaged": lambda: ReceiveGoods(case_id=cid, condition="damaged", **common),
        "refund": lambda: RefundCase(case_id=cid, **common),
        "withdraw": lambda: WithdrawCase(case_id=cid, **common),
        "escalate": lambda: EscalateCase(case_id=cid, claim="other", **common),
        "rule_buyer": lambda: RuleCase(case_id=cid, in_favour_of="buyer", **common),
        "rule_merchant": lambda: RuleCase(case_id=cid, in_favour_of="merchant", **common),
    }
    return table[kind]() if kind in table else None


step = st.tuples(
    st.sampled_from(ACTIONS),
    st.sampled_from([CASE_A, CASE_B]),
    st.integers(min_value=0, max_value=400),  # hours after the step before
    st.sampled_from(["refund_only", "return_refund", "exchange"]),
)


def _play(url: str, steps: list[tuple[str, UUID, int, str]], with_ticks: bool) -> list[Any]:
    outcomes: list[Any] = []
    with same_ids(), Engine(url) as engine:
        setup_order(engine)
        when = T0 + timedelta(days=3)
        for n, (kind, case, hours, case_type) in enumerate(steps):
            when += timedelta(hours=hours)
            if kind == "tick":
                if with_ticks:
                    engine.handle(Tick(now=when.isoformat()))
                continue
            command = _command(kind, case, when.isoformat(), f"step-{n}", case_type)
            assert command is not None
            try:
                engine.handle(command)
                outcomes.append((n, "ok"))
            except AftersalesError as exc:
                outcomes.append((n, exc.code))
        # Let the clock finish in both worlds, then compare everything that was recorded.
        engine.handle(Tick(now=(when + timedelta(days=60)).isoformat()))
        return [
            outcomes,
            history(engine, CASE_A),
            history(engine, CASE_B),
            history(engine, order_uuid("KS-1")),
        ]


@contextmanager
def _sqlite_stores() -> Iterator[tuple[str, str]]:
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as d:
        yield f"sqlite:///{d}/ticked.db", f"sqlite:///{d}/unticked.db"


@contextmanager
def _postgres_stores() -> Iterator[tuple[str, str]]:
    schemas = [f"t_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}schema={schemas[0]}", f"{PG_URL}{sep}schema={schemas[1]}"
    finally:
        for schema in schemas:
            drop_schema(schema)


def _second_store(store_url: str) -> str:
    """Another empty store of the same kind."""
    if store_url.startswith("sqlite:///"):
        return store_url.replace(".db", "-second.db")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}schema={schema}"


def _drop(url: str) -> None:
    if "schema=" in url:
        drop_schema(url.rsplit("schema=", 1)[1])


def _check_ticks_change_nothing(
    stores: Callable[[], Any], steps: list[tuple[str, UUID, int, str]]
) -> None:
    with stores() as (ticked, unticked):
        assert _play(unticked, steps, with_ticks=False) == _play(ticked, steps, with_ticks=True)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(st.lists(step, min_size=1, max_size=14))
def test_ticks_inserted_anywhere_change_nothing_sqlite(
    steps: list[tuple[str, UUID, int, str]],
) -> None:
    _check_ticks_change_nothing(_sqlite_stores, steps)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(st.lists(step, min_size=1, max_size=10))
def test_ticks_inserted_anywhere_change_nothing_postgres(
    steps: list[tuple[str, UUID, int, str]],
) -> None:
    _check_ticks_change_nothing(_postgres_stores, steps)


# The audit knows the clock acts first -------------------------------------------------------


def test_audit_flags_an_action_recorded_after_a_deadline_that_should_have_fired(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    """A rejection at hour 72, as the engine once accepted when no tick had run: written with
    the store's own save on the aggregate's own method, it is reported, never rewritten."""
    import importlib.util

    from click.testing import CliRunner

    from aftersales.commands.cli.main import cli
    from aftersales.engine.domain.events import Act
    from aftersales.engine.domain.values import Actor, Role
    from aftersales.engine.storage.case_index import case_rows

    setup_order(engine)
    cid = open_case(engine)
    case = engine.load_case(cid)
    late = datetime.fromisoformat(at(days=6))
    merchant = Act(
        at=late, actor=Actor(role=Role.MERCHANT, id="shop-1"), command_id="old", recorded_at=late
    )
    case.reject(merchant, Policy(), reason="worn", communication="chat:1")
    order = engine.load_order("KS-1")
    order.unlink_case(case.id, case.status.value, list(case.lines), case.refunded_amount, merchant)
    engine.store.save(case, order, cases=case_rows([case]))

    result = CliRunner().invoke(cli, ["--store", store_url, "audit", cid, "--verify", "--json"])
    assert result.exit_code == 3, (result.stdout, result.stderr)
    problems = json.loads(result.stdout)["problems"]
    assert [(p["check"], p["version"]) for p in problems] == [("deadline", 2)], problems
    assert "the clock should have acted first" in problems[0]["message"]
    assert "auto_approve fell due at 2026-11-06T10:00:00+08:00" in problems[0]["message"]

    bundle = tmp_path / "bundle.json"
    exported = CliRunner().invoke(
        cli, ["--store", store_url, "audit", cid, "--export", str(bundle)]
    )
    assert exported.exit_code == 0, exported.output
    path = Path(__file__).resolve().parent.parent / "scripts" / "verify_bundle.py"
    spec = importlib.util.spec_from_file_location("verify_bundle", path)
    assert spec is not None and spec.loader is not None
    verifier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verifier)
    offline = verifier.verify(bundle.read_bytes()).problems
    assert len(offline) == 1 and "the clock should have acted first" in offline[0], offline


def test_the_audit_passes_a_history_where_the_clock_acted_first(
    engine: Engine, store_url: str
) -> None:
    from click.testing import CliRunner

    from aftersales.commands.cli.main import cli

    setup_order(engine)
    cid = open_case(engine)
    engine.handle(ShipBack(case_id=cid, carrier="SF", waybill="R1", at=at(days=6)))
    result = CliRunner().invoke(cli, ["--store", store_url, "audit", cid, "--verify", "--json"])
    assert result.exit_code == 0, result.stdout
    kinds = [e["type"] for e in json.loads(result.stdout)["events"]]
    assert kinds == ["CaseOpened", "CaseAutoApproved", "GoodsShippedBack"]
