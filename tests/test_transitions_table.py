"""The transition table as data: complete, unambiguous, agreeing with itself, with the copy in
docs/transitions.md and with the events the engine defines; and the domain speaks without
command-line flags."""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest

import aftersales.engine.domain.case_events as case_events_mod
import aftersales.engine.domain.transitions as T
from aftersales.engine.domain.case import ReturnCase
from aftersales.engine.domain.case_events import EVENT_CLASSES, CaseEvent
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.events import Act
from aftersales.engine.domain.order import Order
from aftersales.engine.domain.order_events import OrderLine
from aftersales.engine.domain.policy import Policy
from aftersales.engine.domain.values import (
    Actor,
    CaseType,
    Claim,
    Condition,
    DueAction,
    Party,
    Role,
    Status,
)
from scripts import transition_table

ROOT = Path(__file__).resolve().parent.parent


# The documented copy ----------------------------------------------------------------------------


def test_the_documented_table_is_the_generated_one() -> None:
    text = (ROOT / "docs" / "transitions.md").read_text(encoding="utf-8")
    start = text.index(transition_table.BEGIN) + len(transition_table.BEGIN)
    end = text.index(transition_table.END)
    assert text[start:end] == "\n" + transition_table.render()
    assert len(transition_table.render().splitlines()) == 2 + len(T.TRANSITIONS)


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.transition_table", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_script_checks_and_writes(tmp_path: Path) -> None:
    assert _script("--help").returncode == 0
    assert _script("--check").returncode == 0
    doc = tmp_path / "transitions.md"
    stale = f"# x\n\nbefore\n{transition_table.BEGIN}\n| old |\n{transition_table.END}\nafter\n"
    doc.write_text(stale, encoding="utf-8")
    result = _script("--check", "--file", str(doc))
    assert result.returncode == 1 and "out of date" in result.stderr
    assert doc.read_text(encoding="utf-8") == stale  # --check changes nothing
    assert _script("--file", str(doc)).returncode == 0
    written = doc.read_text(encoding="utf-8")
    assert written.startswith("# x\n\nbefore\n") and written.endswith("\nafter\n")
    assert _script("--check", "--file", str(doc)).returncode == 0
    doc.write_text("no markers\n", encoding="utf-8")
    assert _script("--readme", str(doc)).returncode == 2  # the old name still works


# The table itself -------------------------------------------------------------------------------


def test_every_event_the_table_names_is_a_case_event_and_every_case_event_is_named() -> None:
    defined = {
        c.__name__
        for c in vars(case_events_mod).values()
        if isinstance(c, type) and issubclass(c, CaseEvent)
    } - {"CaseEvent", "DeadlineFired"}
    assert set(EVENT_CLASSES) == defined
    assert all(name == cls.__name__ for name, cls in EVENT_CLASSES.items())
    named = {name for t in T.TRANSITIONS for name in (t.records, *t.then)}
    assert named == defined == T.KNOWN


def test_every_case_finds_exactly_one_row() -> None:
    """For every action, from every status it is allowed from, whatever the case type, claim,
    receipt condition, ruling (buyer or merchant) and reship, and by each party that may take
    it: one row, no more, no less."""
    for action, statuses in T.ALLOWED_FROM.items():
        actors = {t.actor for t in T.TRANSITIONS if t.action == action}
        # An action one party takes is looked up without naming it.
        by: list[Role | None] = [None] if len(actors) == 1 else [*sorted(actors)]
        for (
            status,
            case_type,
            claim,
            receipt,
            ruling,
            reshipped,
            appeal,
            resumes,
            advance,
            actor,
        ) in itertools.product(
            sorted(statuses),
            CaseType,
            Claim,
            Condition,
            (Party.BUYER, Party.MERCHANT),
            (True, False),
            (True, False),
            T.OFFER_FROM,
            (True, False),
            by,
        ):
            row = T.outcome(
                action,
                status,
                case_type=case_type,
                claim=claim,
                receipt=receipt,
                ruling=ruling,
                reshipped=reshipped,
                appeal=appeal,
                resumes=resumes,
                advance=advance,
                actor=actor,
            )
            assert row.action == action and status in row.before
    for case_type in CaseType:
        assert T.outcome(T.OPEN, None, case_type=case_type).after is Status.AWAITING_MERCHANT
    with pytest.raises(LookupError):
        T.outcome("approve", Status.REJECTED, case_type=CaseType.REFUND_ONLY)
    with pytest.raises(LookupError):  # the platform rules for the buyer or the merchant only
        T.outcome("rule", Status.ESCALATED, claim=Claim.OTHER, ruling=Party.PLATFORM)
    with pytest.raises(LookupError):  # a message names who speaks
        T.outcome("message", Status.ESCALATED)


def test_a_deadline_fires_only_from_the_status_that_started_it() -> None:
    for row in T.TRANSITIONS:
        if row.starts is not None:
            assert T.ALLOWED_FROM[row.starts.value] == {row.after}, row
        if row.after is None or row.after in {Status.REFUNDED, Status.COMPLETED, Status.CLOSED}:
            assert row.starts is None, row
    assert {d.value for d in DueAction} == T.SYSTEM_ACTIONS
    assert {t.action for t in T.TRANSITIONS if t.actor is Role.SYSTEM} == T.SYSTEM_ACTIONS


def test_money_moves_exactly_where_an_event_records_it() -> None:
    for row in T.TRANSITIONS:
        events = {row.records, *row.then}
        assert ("CaseRefunded" in events) == (row.refund is not None), row
        assert ("FreightCharged" in events) == (row.freight is not None), row
        assert ("LateShipmentPenalty" in events) == (row.penalty is not None), row
        if row.refund is not None and row.given.advance and row.action == "ship-back":
            # An instant refund: refunded as the goods go back, which the merchant then receives.
            assert row.after is Status.AWAITING_MERCHANT_RECEIPT, row
        elif row.refund is not None:
            assert row.after is Status.REFUNDED, row
        assert len(set(row.then)) == len(row.then) and row.records not in row.then, row


def test_the_derived_tables() -> None:
    assert T.PERSON_ACTIONS == (
        "approve",
        "reject",
        "refund",
        "ship-back",
        "receive",
        "ship-replacement",
        "reship",
        "withdraw",
        "escalate",
        "rule",
        "rate",
        "recover-goods",
        "message",
        "offer",
        "accept-offer",
        "decline-offer",
        "extend",
        "intercept",
    )
    assert set(T.ALLOWED_FROM) == set(T.PERSON_ACTIONS) | T.SYSTEM_ACTIONS | T.ENGINE_ACTIONS
    assert {T.TURN_RETURN, T.REFUSE_DELIVERY} == T.ENGINE_ACTIONS
    assert T.OPEN not in T.ALLOWED_FROM  # no case to start from yet
    assert T.ACTION_OF["CaseOpened"] == T.OPEN
    assert T.ACTION_OF["ReshipImpossible"] == T.ACTION_OF["MissingItemsReshipped"] == "reship"
    assert {"FreightCharged", "LateShipmentPenalty", "AdvanceReassigned"} == T.CONSEQUENCE_ONLY
    assert {
        "CaseRated",
        "GoodsRecovered",
        "MessagePosted",
        "ReceiptExtended",
        "CaseTurnedReturn",
    } == T.UNCHANGED
    assert T.REQUIRED_CONSEQUENCE == {
        Status.REFUNDED: "CaseRefunded",
        Status.ESCALATED: "CaseEscalated",
    }
    assert T.LEADS_TO["CaseRuled"] == {
        Status.AWAITING_RESHIPMENT,
        Status.AWAITING_BUYER_SHIPMENT,
        Status.REFUNDED,
        Status.CLOSED,
        Status.REJECTED,
    }
    bound = T.bind(EVENT_CLASSES)
    assert {k.__name__: v for k, v in bound.action_of.items()} == T.ACTION_OF
    assert {k.__name__: v for k, v in bound.leads_to.items()} == T.LEADS_TO
    assert {
        k.__name__: {c.__name__ for c in v} for k, v in bound.consequences.items()
    } == T.CONSEQUENCES
    with pytest.raises(KeyError):
        T.bind({})


# The domain speaks the domain -------------------------------------------------------------------

DOMAIN = [
    "domain/case.py",
    "domain/case_events.py",
    "domain/order.py",
    "domain/order_events.py",
    "domain/values.py",
    "domain/transitions.py",
    "integrity/audit_checks.py",
    "integrity/replay.py",
    "integrity/audit_bundle.py",
]


@pytest.mark.parametrize("module", DOMAIN)
def test_domain_text_names_no_command_line_flag(module: str) -> None:
    tree = ast.parse((ROOT / "engine" / module).read_text(encoding="utf-8"))
    texts = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    flags = [t for t in texts if re.search(r"(?<![\w-])--[a-z]", t)]
    assert flags == []


AT = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def _act(role: Role, who: str) -> Act:
    return Act(at=AT, actor=Actor(role=role, id=who), command_id="c", recorded_at=AT)


def _order() -> Order:
    line = OrderLine(sku="A", quantity=1, unit_price=Decimal("10.00"))
    order = Order.place(
        "O-1", merchant_id="m", buyer_id="b", lines=[line], act=_act(Role.SYSTEM, "x")
    )
    order.deliver(_act(Role.SYSTEM, "x"))
    return order


def test_domain_messages_say_what_is_missing_in_words() -> None:
    with pytest.raises(BadInput, match=r"^an order needs at least one line$"):
        Order.place("O-2", merchant_id="m", buyer_id="b", lines=[], act=_act(Role.SYSTEM, "x"))
    order = _order()

    def open_case(case_type: CaseType) -> ReturnCase:
        return ReturnCase.open(
            UUID(int=1),
            order,
            case_type=case_type,
            reason="quality.defective",
            amount=None,
            lines=order.case_lines([]),
            evidence=[],
            note=None,
            policy=Policy(),
            act=_act(Role.BUYER, "b"),
        )

    with pytest.raises(BadInput, match=r"^a return and refund case needs an amount$"):
        open_case(CaseType.RETURN_REFUND)
    with pytest.raises(BadInput, match=r"^a refund only case needs an amount$"):
        open_case(CaseType.REFUND_ONLY)
    case = open_case(CaseType.EXCHANGE)
    merchant = _act(Role.MERCHANT, "m")
    with pytest.raises(BadInput, match=r"^a rejection needs a reason$"):
        case.reject(merchant, Policy(), reason=" ", communication="call:1")
    with pytest.raises(
        BadInput, match=r"^a rejection needs a reference to the talk with the buyer"
    ):
        case.reject(merchant, Policy(), reason="worn", communication="")
    case.reject(merchant, Policy(), reason="worn", communication="call:1")
    assert case.status is Status.REJECTED


def test_the_command_reference_is_current_and_the_docs_stand_alone() -> None:
    """docs/command-line.md's reference is what the typed commands generate, and nothing the
    project documents points outside the repository."""
    from scripts import command_reference

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "command-line.md").read_text(encoding="utf-8")
    assert command_reference.rewritten(doc) == doc, "run: python -m scripts.command_reference"
    assert "### `aftersales case approve CASE_ID`" in doc
    assert "`--for buyer|merchant` (required)" in doc
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        assert "../shared" not in path.read_text(encoding="utf-8"), path
