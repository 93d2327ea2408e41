"""Principals and keys from the command line, and the command line's honest --by: once a store
has principals, an action's --by must name a principal who may take it on that case."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from tests.people import People


def run(store_url: str, *args: str, code: int = 0, stdin: str | None = None) -> Any:
    result = CliRunner().invoke(cli, ["--store", store_url, *args], input=stdin)
    assert result.exit_code == code, (args, result.output, result.stderr)
    return result


def test_principals_and_keys_are_kept_with_their_history(store_url: str) -> None:
    run(store_url, "principal", "add", "staff-1", "--role", "merchant", code=2)
    run(store_url, "principal", "add", "buyer-1", "--role", "buyer", "--merchant", "s", code=2)
    run(store_url, "principal", "add", "x y", "--role", "buyer", code=2)
    run(store_url, "principal", "add", "staff-1", "--role", "merchant", "--merchant", "shop-1")
    run(store_url, "principal", "add", "staff-1", "--role", "operator", code=3)
    run(store_url, "key", "create", "nobody", code=4)
    run(store_url, "key", "create", "staff-1", "--expires", "2020-01-01T00:00:00+00:00", code=2)
    made = json.loads(run(store_url, "key", "create", "staff-1", "--json").stdout)
    assert set(made) >= {"principal", "key", "key_id"} and len(made["key"]) > 43
    with Engine(store_url) as engine:
        rows = engine.store.query("SELECT * FROM {t}aftersales_keys")
        assert rows[0]["key_hash"] == hashlib.sha256(made["key"].encode()).hexdigest()
        assert not any(made["key"] in str(v) for row in rows for v in row.values())
    listed = json.loads(run(store_url, "principal", "list", "--json").stdout)
    assert listed[0]["principal"] == "staff-1" and listed[0]["merchant"] == "shop-1"
    assert listed[0]["keys"][0]["key_id"] == made["key_id"]
    assert made["key"] not in run(store_url, "principal", "list").stdout
    run(store_url, "key", "revoke", made["key_id"])
    run(store_url, "key", "revoke", made["key_id"], code=3)
    run(store_url, "key", "revoke", "0123456789abcdef", code=4)
    history = json.loads(run(store_url, "principal", "history", "--json").stdout)
    assert [h["change"] for h in history] == ["principal added", "key created", "key revoked"]
    assert made["key"] not in json.dumps(history)


def test_by_must_name_a_principal_who_may(engine: Engine, store_url: str) -> None:
    people = People(engine)
    case = people.cases["shop-1"]
    refused = run(store_url, "case", "approve", case, "--by", "buyer-1", code=3)
    assert "may not case approve; who may: operator, merchant" in refused.stderr
    refused = run(store_url, "case", "approve", case, "--by", "staff-2", code=3)
    assert "only merchant shop-1's staff or an operator may" in refused.stderr
    run(store_url, "case", "approve", case, code=3)  # no --by
    run(store_url, "case", "approve", case, "--by", "someone", code=3)
    refused = run(store_url, "case", "rule", case, "--for", "buyer", "--by", "buyer-1", code=3)
    assert "who may: operator, agent" in refused.stderr
    refused = run(
        store_url, "case", "message", case, "--text", "ok", "--as", "merchant",
        "--by", "buyer-1", code=3,
    )  # fmt: skip
    assert "as merchant" in refused.stderr
    before = people.events()
    line = json.dumps({"action": "case approve", "case_id": case, "by": "buyer-1"})
    out = run(store_url, "batch", "-", stdin=line + "\n", code=3).stdout
    assert json.loads(out.splitlines()[0])["error"]["code"] == "not_allowed"
    assert people.events() == before
    shown = json.loads(run(store_url, "case", "approve", case, "--by", "staff-1", "--json").stdout)
    assert shown["status"] == "refunded"
    with Engine(store_url) as fresh:
        last = fresh.load_case(case)
        assert last.to_json()["status"] == "refunded"
    events = run(store_url, "audit", case, "--json").stdout
    assert json.loads(events)["events"][-1]["actor"] == {"role": "merchant", "id": "staff-1"}
    other = people.cases["shop-2"]
    run(store_url, "case", "message", other, "--text", "hi", "--as", "platform", "--by", "ops")


def test_a_store_without_principals_is_as_before(engine: Engine, store_url: str) -> None:
    from tests.conftest import place_delivered, recently

    place_delivered(engine, delivered_at=recently())
    opened = run(
        store_url, "case", "open", "KS-1", "--type", "refund_only", "--reason", "quality.x",
        "--amount", "5", "--json",
    )  # fmt: skip
    case = json.loads(opened.stdout)["case_id"]
    run(store_url, "case", "approve", case, "--by", "buyer-1")
