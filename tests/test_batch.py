"""`aftersales batch`: mixed files, exit codes, idempotent re-runs, --stop-on-error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from tests.conftest import at

CASE = "9b2f7c4e-1d3a-4c5b-8e6f-0a1b2c3d4e5f"


def lines() -> list[str]:
    rows: list[Any] = [
        {
            "action": "order place",
            "order_id": "KS-1",
            "merchant": "shop-1",
            "buyer": "buyer-1",
            "line": ["CASE-RED:1:39.90:phone_accessory", "GIFT:1:5.00"],
            "at": at(),
            "command_id": "b-place",
        },
        {"action": "deliver", "order_id": "KS-1", "at": at(days=2), "command_id": "b-deliver"},
        {
            "action": "case open",
            "order_id": "KS-1",
            "type": "return_refund",
            "reason": "quality.colour_difference",
            "amount": "39.90",
            "line": ["CASE-RED"],
            "evidence": ["photo:1", "chat:2"],
            "case_id": CASE,
            "at": at(days=3),
            "command_id": "b-open",
        },
        "this is not json",
        {
            "action": "ship_back",
            "case_id": CASE,
            "carrier": "SF",
            "waybill": "1",
            "at": at(days=4),
            "command_id": "b-early-ship",
        },  # refused: not approved yet
        {
            "action": "approve",
            "case_id": CASE,
            "return_address": "HZ",
            "by": "staff-7",
            "at": at(days=4),
            "command_id": "b-approve",
            "expected_version": 1,
        },
        {"action": "case refund", "case_id": CASE, "amount": 1.5},  # a float is not money
        {"action": "case frobnicate", "case_id": CASE},
        {"action": "show", "case_id": CASE},  # ambiguous: case show or order show
        {"action": "case approve", "case_id": CASE, "colour": "red"},
        {
            "action": "case ship-back",
            "case_id": CASE,
            "carrier": "SF",
            "waybill": "SF9",
            "at": at(days=5),
            "command_id": "b-ship",
        },
        {"action": "case receive", "case_id": "00000000-0000-4000-8000-000000000000"},
        {
            "action": "case receive",
            "case_id": CASE,
            "condition": "ok",
            "at": at(days=6),
            "command_id": "b-receive",
        },
        {"action": "case show", "case_id": CASE},
        {"action": "reship", "case_id": CASE, "cannot": True, "at": at(days=7)},
    ]
    return [r if isinstance(r, str) else json.dumps(r) for r in rows]


def run_batch(store: str, text: str, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    result = CliRunner().invoke(cli, ["--store", store, "batch", *args, "-"], input=text)
    return (result.exit_code, [json.loads(x) for x in result.stdout.splitlines()], result.stderr)


def test_mixed_file(store_url: str) -> None:
    code, out, err = run_batch(store_url, "\n".join(lines()) + "\n")
    assert code == 2  # the first failure is a malformed line
    assert [o["line"] for o in out] == list(range(1, 16))
    ok = {o["line"] for o in out if o["ok"]}
    assert ok == {1, 2, 3, 6, 11, 13, 14}
    errors = {o["line"]: o["error"]["code"] for o in out if not o["ok"]}
    assert errors == {
        4: "bad_input",
        5: "not_allowed",
        7: "bad_input",
        8: "bad_input",
        9: "bad_input",
        10: "bad_input",
        12: "not_found",
        15: "not_allowed",
    }
    assert "awaiting_merchant" in out[4]["error"]["message"]
    assert "case show or order show" in out[8]["error"]["message"]
    assert out[2]["result"]["case_id"] == CASE
    assert out[13]["result"]["status"] == "refunded"
    assert out[13]["result"]["refunded_amount"] == "39.90"
    assert err.strip() == (
        "batch: 15 lines, 7 ok, 8 failed (bad_input 5, not_allowed 2, not_found 1)"
    )


def test_rerun_with_the_same_command_ids_appends_nothing(store_url: str) -> None:
    good = [x for x in lines() if '"command_id": "b-' in x and "b-early-ship" not in x]
    text = "\n".join(good)
    code, first, _ = run_batch(store_url, text)
    assert code == 0 and all(o["ok"] for o in first)
    with Engine(store_url) as engine:
        count = engine.store.recorder.max_notification_id()
    code, second, _ = run_batch(store_url, text)
    assert code == 0
    assert [o["result"] for o in second] == [o["result"] for o in first]
    with Engine(store_url) as engine:
        assert engine.store.recorder.max_notification_id() == count
        assert engine.get_case(CASE)["status"] == "refunded"


def test_stop_on_error(store_url: str, tmp_path: Path) -> None:
    path = tmp_path / "actions.jsonl"
    path.write_text("\n".join(lines()))
    result = CliRunner().invoke(cli, ["--store", store_url, "batch", "--stop-on-error", str(path)])
    out = [json.loads(x) for x in result.stdout.splitlines()]
    assert result.exit_code == 2
    assert [o["line"] for o in out] == [1, 2, 3, 4]
    with Engine(store_url) as engine:
        assert engine.stored_case(CASE)["status"] == "awaiting_merchant"


def test_exit_code_is_the_first_failures(store_url: str) -> None:
    text = json.dumps({"action": "case approve", "case_id": CASE}) + "\n"
    code, out, _ = run_batch(store_url, text)
    assert code == 4 and out[0]["error"]["code"] == "not_found"
    code, out, err = run_batch(store_url, "")
    assert code == 0 and out == [] and "0 lines" in err


def test_values_are_checked_by_the_commands_own_model(store_url: str) -> None:
    """JSON values go through the same typed command as the command line's options: ranges,
    choices, whole numbers and required fields, with the same messages; null means not
    given."""
    good = [x for x in lines() if '"command_id": "b-' in x and "b-early-ship" not in x]
    checks: list[tuple[dict[str, Any], str]] = [
        ({"action": "case rate", "case_id": CASE, "score": 9}, "score 9 must be 1 to 5"),
        ({"action": "case rate", "case_id": CASE, "score": "x"}, "score 'x' is not a whole number"),
        ({"action": "case open", "order_id": "KS-1", "reason": "a.b"}, "type is required"),
        (
            {"action": "case open", "order_id": "KS-1", "type": None, "reason": "a.b"},
            "type is required",
        ),
        (
            {"action": "case open", "order_id": "KS-1", "type": "nope", "reason": "a.b"},
            "type 'nope' is not one of refund_only|return_refund|exchange|reship",
        ),
        (
            {"action": "case approve", "case_id": CASE, "expected_version": "1.5"},
            "expected_version '1.5' is not a whole number",
        ),
        ({"action": "case list", "limit": 0}, "limit 0 must be 1 to 100000"),
        ({"action": "case approve", "case_id": CASE, "by": ["a", "b"]}, "by takes one value"),
        ({"action": "reship", "case_id": CASE, "cannot": "yes"}, "cannot is a flag: true or false"),
        ({"action": "case approve", "case_id": CASE, "colour": "red"}, "has no option 'colour'"),
    ]
    text = "\n".join(good + [json.dumps(line) for line, _ in checks])
    code, out, _ = run_batch(store_url, text)
    assert code == 2
    assert all(o["ok"] for o in out[: len(good)])
    for o, (_, message) in zip(out[len(good) :], checks, strict=True):
        assert not o["ok"] and o["error"]["code"] == "bad_input", o
        assert message in o["error"]["message"], (o, message)
    # The command line refuses the same values with the same words.
    argv_checks = [
        (["case", "rate", CASE, "--score", "9"], "score 9 must be 1 to 5"),
        (["case", "open", "KS-1", "--reason", "a.b"], "type is required"),
        (["case", "open", "KS-1", "--type", "nope", "--reason", "a.b"], "type 'nope' is not one"),
        (["case", "list", "--limit", "0"], "limit 0 must be 1 to 100000"),
        (["case", "approve", CASE, "--expected-version", "1.5"], "'1.5' is not a whole number"),
    ]
    for argv, message in argv_checks:
        result = CliRunner().invoke(cli, ["--store", store_url, *argv, "--json"])
        assert result.exit_code == 2, (argv, result.output)
        assert message in json.loads(result.stdout)["error"]["message"], (argv, result.stdout)
    # Nulls and defaults: no amount (the whole line), no notes, an empty list of lines; a
    # rating with its score as a number; the list read with its default and a status choice.
    more = [
        {"action": "case rate", "case_id": CASE, "score": 5, "comment": None, "at": at(days=8)},
        {"action": "case list", "status": "refunded", "limit": None},
    ]
    code, out, _ = run_batch(store_url, "\n".join(json.dumps(x) for x in more))
    assert code == 0, out
    assert [c["case_id"] for c in out[1]["result"]] == [CASE]
