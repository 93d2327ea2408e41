"""One typed command per action, one entry point, one unit of work per strategy.

The command line's options and a batch line's keys are derived from the same models, so they
take the same fields and refuse the same values with the same words; ``Engine.handle`` saves
through the library's aggregate cache and never decides a refusal on cached state."""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
from click.testing import CliRunner

from aftersales.commands.cli.actions import QUIET
from aftersales.commands.cli.main import cli
from aftersales.engine.application.fields import key_of
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.lines import from_line
from aftersales.engine.application.requests import (
    BY_NAME,
    COMMANDS,
    ApproveCase,
    Command,
    OpenCase,
    RuleCase,
    ShipBack,
)
from aftersales.engine.domain.errors import BadInput, NotAllowed
from tests.conftest import at, place_delivered


def _click_command(name: str) -> click.Command:
    command: click.Command = cli
    for word in name.split(" "):
        assert isinstance(command, click.Group)
        found = command.get_command(click.Context(command), word)
        assert found is not None, f"{name} is not on the command line"
        command = found
    return command


@pytest.mark.parametrize("kind", COMMANDS, ids=lambda k: k.name)
def test_every_command_is_on_the_command_line_with_one_option_per_field(
    kind: type[Command],
) -> None:
    command = _click_command(kind.name)
    options = {
        opt[2:]
        for p in command.params
        if isinstance(p, click.Option)
        for opt in p.opts
        if opt.startswith("--")
    }
    arguments = {p.name for p in command.params if isinstance(p, click.Argument)}
    assert arguments == set(kind.arguments)
    expected = {key_of(f).replace("_", "-") for f in kind.model_fields if f not in kind.arguments}
    # Besides the fields: --json, and --quiet (ids only) where the result has an id; a read's
    # --read-store and --read-after, an action's --read-store (commands/cli/read_side.py).
    printing = {"json", "quiet"} if kind.shows in QUIET else {"json"}
    reading = {"read-store", "read-after"} if kind.reads_only else {"read-store"}
    assert options == expected | printing | reading
    assert BY_NAME[kind.name] is kind


def test_a_batch_line_and_the_command_line_build_the_same_command() -> None:
    line = {
        "action": "case open",
        "order_id": "KS-1",
        "type": "return_refund",
        "reason": "quality.colour",
        "amount": "39.90",
        "line": ["CASE-RED:1"],
        "evidence": ["photo:1"],
        "at": "2026-11-03T10:00:00+08:00",
        "command_id": "k-1",
    }
    from_json = from_line(line)
    assert isinstance(from_json, OpenCase)
    # What click hands the callback: text, tuples for repeatable options.
    as_typed = OpenCase.parse(
        {
            "order_id": "KS-1",
            "type": "return_refund",
            "reason": "quality.colour",
            "amount": "39.90",
            "lines": ("CASE-RED:1",),
            "evidence": ("photo:1",),
            "at": "2026-11-03T10:00:00+08:00",
            "command_id": "k-1",
        }
    )
    assert from_json == as_typed
    assert from_json.fingerprint() == as_typed.fingerprint()
    ruling = from_line(
        {"action": "rule", "case_id": "9b2f7c4e-1d3a-4c5b-8e6f-0a1b2c3d4e5f", "for": "buyer"}
    )
    assert isinstance(ruling, RuleCase) and ruling.in_favour_of.value == "buyer"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"action": "case approve"}, "case_id is required"),
        ({"action": "case approve", "case_id": "x"}, "no case x"),
        (
            {
                "action": "case refund",
                "case_id": "9b2f7c4e-1d3a-4c5b-8e6f-0a1b2c3d4e5f",
                "amount": 1.5,
            },
            "not a float",
        ),
        ({"action": "order place", "order_id": "K 1"}, "merchant is required"),
        ({"action": "frobnicate"}, "unknown action 'frobnicate'"),
        ({"case_id": "x"}, 'a line needs "action"'),
    ],
)
def test_refusals_name_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=message):
        from_line(data)


def test_a_command_built_in_python_is_refused_in_the_same_words() -> None:
    # No carrier, on purpose: given unpacked, so the type checker lets the call through.
    no_carrier = {"case_id": "9b2f7c4e-1d3a-4c5b-8e6f-0a1b2c3d4e5f", "waybill": "1"}
    with pytest.raises(BadInput, match=r"^carrier is required$"):
        ShipBack(**no_carrier)
    with pytest.raises(BadInput, match=r"^at 'soon' is not an ISO-8601 time"):
        ApproveCase(case_id="9b2f7c4e-1d3a-4c5b-8e6f-0a1b2c3d4e5f", at="soon")


def _open(engine: Engine) -> str:
    place_delivered(engine)
    case = engine.handle(
        OpenCase(
            order_id="KS-1",
            type="return_refund",
            reason="quality.colour",
            amount="39.90",
            at=at(days=3),
        )
    )
    return str(case["case_id"])


def test_a_case_saved_last_is_acted_on_from_the_cache(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = _open(engine)
    loads: list[Any] = []
    real_load = engine.store.load

    def load(*a: Any, **k: Any) -> Any:
        loads.append(a)
        return real_load(*a, **k)

    monkeypatch.setattr(engine.store, "load", load)
    # (A return approved without an address reads the shop's default first.)
    engine.handle(ApproveCase(case_id=cid, return_address="Hangzhou W1", at=at(days=3, hours=1)))
    engine.handle(ShipBack(case_id=cid, carrier="SF", waybill="1", at=at(days=4)))
    assert loads == []  # one round trip each: the save
    assert engine.stored_case(cid)["status"] == "awaiting_merchant_receipt"


def test_a_refusal_is_never_decided_on_cached_state(store_url: str) -> None:
    with Engine(store_url) as mine, Engine(store_url) as other:
        cid = _open(mine)  # cached by mine at version 1, awaiting the merchant
        other.handle(ApproveCase(case_id=cid, at=at(days=3, hours=1)))
        # On the cached state shipping back would be refused; on the store's it is allowed.
        shipped = mine.handle(ShipBack(case_id=cid, carrier="SF", waybill="1", at=at(days=4)))
        assert shipped["status"] == "awaiting_merchant_receipt"
        assert mine.retries == 0  # refused on the cache, decided again on fresh state


def test_a_save_on_a_stale_cached_case_is_retried_on_fresh_state(store_url: str) -> None:
    with Engine(store_url) as mine, Engine(store_url) as other:
        cid = _open(mine)
        mine.handle(ApproveCase(case_id=cid, at=at(days=3, hours=1)))  # cached at version 2
        other.handle(json_command({"action": "withdraw", "case_id": cid, "at": at(days=4)}))
        head = mine.store.recorder.max_notification_id()
        # Allowed on the cached version 2; its save fails on the version, the case is read
        # again, and the rules refuse it there: nothing is appended.
        with pytest.raises(NotAllowed, match="closed"):
            mine.handle(ShipBack(case_id=cid, carrier="SF", waybill="1", at=at(days=4, hours=1)))
        assert mine.retries == 1
        assert mine.store.recorder.max_notification_id() == head


def json_command(data: dict[str, Any]) -> Command:
    return from_line(json.loads(json.dumps(data)))


def test_the_command_line_and_batch_refuse_alike(store_url: str) -> None:
    runner = CliRunner()
    cli_out = runner.invoke(
        cli,
        [
            "--store",
            store_url,
            "case",
            "rate",
            "9b2f7c4e-1d3a-4c5b-8e6f-0a1b2c3d4e5f",
            "--score",
            "0",
            "--json",
        ],
    )
    line = json.dumps(
        {"action": "case rate", "case_id": "9b2f7c4e-1d3a-4c5b-8e6f-0a1b2c3d4e5f", "score": 0}
    )
    batch_out = runner.invoke(cli, ["--store", store_url, "batch", "-"], input=line)
    assert cli_out.exit_code == batch_out.exit_code == 2
    assert (
        json.loads(cli_out.stdout)["error"]
        == json.loads(batch_out.stdout.splitlines()[0])["error"]
        == {"code": "bad_input", "message": "score 0 must be 1 to 5"}
    )


def test_a_group_commits_results_share_nothing_mutable_with_the_aggregates() -> None:
    """``json_copy`` (what a group commit answers with) equals ``deepcopy`` on a JSON-ready
    result and shares no dict or list with it."""
    from copy import deepcopy
    from decimal import Decimal

    from aftersales.engine.application.handler import json_copy

    lines: list[dict[str, Any]] = [{"sku": "A", "n": 1, "price": Decimal("1.00")}]
    messages: list[str] = []
    result: dict[str, Any] = {"lines": lines, "messages": messages, "x": None}
    copied = json_copy(result)
    assert copied == deepcopy(result) == result
    assert copied is not result and copied["lines"] is not result["lines"]
    assert copied["lines"][0] is not result["lines"][0]
    lines[0]["n"] = 2
    messages.append("later")
    assert copied["lines"][0]["n"] == 1 and copied["messages"] == []
