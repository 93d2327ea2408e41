"""One stored event that cannot be used stops only what needs it, and says what and where.

A scenario with two shops' refunds is projected; then one stored event is damaged as someone
with access to the database might: bytes that are not JSON, a time at year 1 (sealed again with
the project's own hashing, so only the time is wrong), or a refund's amount changed with the
chain left as it was. Then, on both backends:

- `case show` and every action on that case refuse with exit 3, naming the event's position,
  its case and why, and no traceback; the other shop's cases work;
- `project run` stops the projections that read that event before it, exit 3, naming it, while
  the one that does not read it goes on to the head; `project status` says which stopped and
  why; the money already projected stays as it was and the damaged amount is never folded;
- `project rebuild` stops too, and the old tables still serve the same rows;
- an operator's quarantine of the event (refused for an event that is fine) is recorded, listed
  and shown by the audit, and the projections then pass over it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ApproveCase, OpenCase, RateCase
from aftersales.engine.domain.errors import Poisoned
from aftersales.engine.domain.events import (
    GENESIS_HASH,
    Unreadable,
    chain_hash,
    stored_hash,
    verified_hash,
)
from aftersales.engine.storage.store import AftersalesStore
from tests.conftest import at, place_delivered

ROOT = Path(__file__).resolve().parent.parent

# Damaging a stored event, as someone with access to the database would -----------------------


def _table(store: AftersalesStore) -> str:
    return store.recorder.events_table_name  # type: ignore[attr-defined,no-any-return]


def _key(store: AftersalesStore) -> str:
    return "notification_id" if store.is_postgres else "rowid"


def stored(store: AftersalesStore, case_id: str) -> list[dict[str, Any]]:
    """A case's stored events: position, version, topic, bytes."""
    uid = uuid.UUID(case_id)
    return [
        {**row, "state": bytes(row["state"])}
        for row in store.query(
            f"SELECT {_key(store)} AS position, originator_version AS version, topic, state "
            f"FROM {{t}}{_table(store)} WHERE originator_id = ? ORDER BY originator_version",
            (uid if store.is_postgres else uid.hex,),
        )
    ]


def overwrite(store: AftersalesStore, position: int, state: bytes) -> None:
    store.execute(
        f"UPDATE {{t}}{_table(store)} SET state = ? WHERE {_key(store)} = ?", (state, position)
    )


def refund_of(store: AftersalesStore, case_id: str) -> dict[str, Any]:
    return next(e for e in stored(store, case_id) if e["topic"].endswith(":CaseRefunded"))


def not_json(store: AftersalesStore, case_id: str) -> str:
    """The refund's first byte replaced: the bytes are no longer JSON."""
    event = refund_of(store, case_id)
    overwrite(store, event["position"], b"X" + event["state"][1:])
    return "not JSON"


def year_one(store: AftersalesStore, case_id: str) -> str:
    """The refund's time set to year 1 at +14:00, and the case's chain sealed again with the
    project's own hashing code: the hashes agree, the time cannot be read as UTC."""
    previous = GENESIS_HASH
    for event in stored(store, case_id):
        state = json.loads(event["state"])
        if event["topic"].endswith(":CaseRefunded"):
            state["at"] = "0001-01-01T00:00:00+14:00"
        state["hash"] = chain_hash(
            previous, uuid.UUID(case_id), event["version"], event["topic"], state
        )
        previous = state["hash"]
        overwrite(store, event["position"], json.dumps(state).encode())
    return "0001-01-01T00:00:00+14:00 cannot be read as UTC"


def more_money(store: AftersalesStore, case_id: str) -> str:
    """The refund's amount changed from 39.90 to 3990.00, the hash chain left as it was."""
    event = refund_of(store, case_id)
    assert b'"amount":"39.90"' in event["state"]
    overwrite(store, event["position"], event["state"].replace(b'"39.90"', b'"3990.00"'))
    return "hash does not match its content"


DAMAGE: dict[str, Callable[[AftersalesStore, str], str]] = {
    "not_json": not_json,
    "year_one": year_one,
    "more_money": more_money,
}


# The scenario -----------------------------------------------------------------------------------


def refunded_case(engine: Engine, order_id: str, merchant: str, amount: str) -> str:
    place_delivered(
        engine, order_id, lines=(f"MUG:1:{amount}:home",), merchant=merchant, buyer="buyer-1"
    )
    case_id: str = engine.handle(
        OpenCase(
            order_id=order_id,
            type="refund_only",
            reason="logistics.damaged",
            amount=amount,
            at=at(days=3),
        )
    )["case_id"]
    engine.handle(ApproveCase(case_id=case_id, by="staff-1", at=at(days=3, hours=1)))
    return case_id


def cli_run(store_url: str, *args: str, code: int = 0) -> tuple[Any, str]:
    """One command with --json: its JSON value and its stderr, its exit code checked."""
    result = CliRunner().invoke(cli, ["--store", store_url, *args, "--json"])
    assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0]), result.stderr


def ledger(store_url: str) -> dict[str, str]:
    result, _ = cli_run(store_url, "ledger")
    return {
        r["merchant_id"]: r["refunded_by_merchant"]
        for r in result["rows"]
        if r["refunded_by_merchant"] != "0.00"
    }


def status(store_url: str) -> dict[str, dict[str, Any]]:
    rows, _ = cli_run(store_url, "project", "status")
    return {r["projection"]: r for r in rows}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_one_damaged_event_stops_only_what_needs_it(
    engine: Engine, store_url: str, damage: str
) -> None:
    b = refunded_case(engine, "B-1", "shop-b", "50.00")
    cli_run(store_url, "project", "run")
    assert ledger(store_url) == {"shop-b": "50.00"}

    a = refunded_case(engine, "A-1", "shop-a", "39.90")
    why = DAMAGE[damage](engine.store, a)
    position = refund_of(engine.store, a)["position"]
    c = refunded_case(engine, "B-2", "shop-b", "20.00")  # the log goes on after it

    # The case refuses, naming the event; the other shop's cases are untouched.
    for args in (["case", "show", a], ["case", "rate", a, "--score", "5"]):
        error, stderr = cli_run(store_url, *args, code=3)
        message = error["error"]["message"]
        assert error["error"]["code"] == "poisoned"
        assert error["error"]["position"] == position
        assert f"position {position}" in message and f"case {a}" in message, message
        assert "CaseRefunded" in message and why in message, message
        assert message in stderr
    assert cli_run(store_url, "case", "show", b)[0]["status"] == "refunded"
    assert cli_run(store_url, "case", "show", c)[0]["status"] == "refunded"

    # The projections that read refunds stop before it; return rates reads none and goes on.
    error, _ = cli_run(store_url, "project", "run", code=3)
    assert f"position {position}" in error["error"]["message"]
    assert why in error["error"]["message"]
    now = status(store_url)
    for name in ("ledger", "dashboard"):
        assert now[name]["position"] == position - 1
        assert f"position {position}" in now[name]["stopped"]
    assert now["return_rates"]["position"] == now["return_rates"]["head"]
    assert now["return_rates"]["stopped"] is None
    # Nothing damaged was folded into money; what came before it stands, and the report
    # (which catches up first) says where its projection stopped and what it reflects.
    assert ledger(store_url) == {"shop-b": "50.00"}
    report, warned = cli_run(store_url, "ledger")
    assert report["position"] == position - 1
    assert f"projection ledger is stopped at position {position - 1}" in warned

    # A rebuild stops there too, and the old tables go on serving the same rows.
    error, _ = cli_run(store_url, "project", "rebuild", code=3)
    assert "old tables still serve" in error["error"]["message"]
    assert ledger(store_url) == {"shop-b": "50.00"}
    assert status(store_url)["ledger"]["position"] == position - 1

    # Quarantine: refused for an event that reads and verifies, recorded for this one.
    refused, _ = cli_run(
        store_url, "quarantine", "add", "1", "--reason", "x", "--by", "ops-1", code=3
    )
    assert "reads and verifies" in refused["error"]["message"]
    decided, _ = cli_run(
        store_url,
        "quarantine",
        "add",
        str(position),
        "--reason",
        "edited by hand; refund confirmed with the bank separately",
        "--by",
        "ops-1",
        "--at",
        at(days=9),
    )
    assert decided["position"] == position and decided["decided_by"] == "ops-1"
    assert why in decided["why"]
    again, _ = cli_run(
        store_url, "quarantine", "add", str(position), "--reason", "x", "--by", "ops-2", code=3
    )
    assert "quarantined already, by ops-1" in again["error"]["message"]
    listed, _ = cli_run(store_url, "quarantine", "list")
    assert [q["position"] for q in listed] == [position]
    audit, _ = cli_run(store_url, "audit", a)
    assert [q["position"] for q in audit["quarantined"]] == [position]
    assert audit["verified"] is False  # the audit still reports the damage itself

    # The projections pass over it: the later refund is in, the damaged one is not.
    cli_run(store_url, "project", "run")
    assert all(row["stopped"] is None for row in status(store_url).values())
    assert ledger(store_url) == {"shop-b": "70.00"}
    cli_run(store_url, "project", "rebuild")
    assert ledger(store_url) == {"shop-b": "70.00"}
    # The case itself stays refused: its history is not guessed without the event.
    cli_run(store_url, "case", "show", a, code=3)


def test_a_changed_amount_with_its_hash_recomputed_is_caught_at_that_event(
    engine: Engine, store_url: str
) -> None:
    """Resealing one event (its hash made to match its new content) leaves the next event's
    link broken; before that, the history it makes is not one the engine writes (a refund of
    more than was asked): the case is refused at the resealed event itself."""
    a = refunded_case(engine, "A-1", "shop-a", "39.90")
    engine.handle(RateCase(case_id=a, score=5, at=at(days=4)))
    events = stored(engine.store, a)
    refund = next(e for e in events if e["topic"].endswith(":CaseRefunded"))
    before = events[refund["version"] - 2]
    state = json.loads(refund["state"].replace(b'"39.90"', b'"3990.00"'))
    state["hash"] = chain_hash(
        json.loads(before["state"])["hash"], uuid.UUID(a), refund["version"], refund["topic"], state
    )
    overwrite(engine.store, refund["position"], json.dumps(state).encode())
    error, _ = cli_run(store_url, "case", "show", a, code=3)
    message = error["error"]["message"]
    assert f"position {refund['position']}" in message
    assert f"version {refund['version']}" in message
    assert "more than the 39.90 asked" in message


def test_a_follower_stops_only_the_projections_that_read_a_damaged_event(
    engine: Engine, store_url: str
) -> None:
    """`project run --follow` (the library's subscription on PostgreSQL, polling on SQLite):
    an event appended with a hash that does not match stops the ledger and the dashboard
    before it, says so on stderr, and return rates goes on with what follows."""
    refunded_case(engine, "B-1", "shop-b", "50.00")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    follower = subprocess.Popen(
        [sys.executable, "-m", "aftersales.commands.cli.main", "--store", store_url,
         "project", "run", "--follow", "--poll", "0.05"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follower.stderr is not None
        assert "following the event log" in follower.stderr.readline()
        a = refunded_case(engine, "A-1", "shop-a", "39.90")
        _wait(lambda: ledger(store_url) == {"shop-a": "39.90", "shop-b": "50.00"})
        # A refund appended straight into the table, its hash left from another content.
        refund = refund_of(engine.store, a)
        version = stored(engine.store, a)[-1]["version"] + 1
        uid = uuid.UUID(a)
        engine.store.execute(
            f"INSERT INTO {{t}}{_table(engine.store)} "
            "(originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)",
            (
                uid if engine.store.is_postgres else uid.hex,
                version,
                refund["topic"],
                refund["state"].replace(b'"39.90"', b'"3990.00"'),
            ),
        )
        position = stored(engine.store, a)[-1]["position"]
        refunded_case(engine, "B-2", "shop-b", "20.00")  # wakes the subscription
        _wait(
            lambda: (
                status(store_url)["return_rates"]["position"]
                == status(store_url)["return_rates"]["head"]
                and status(store_url)["ledger"]["stopped"] is not None
            )
        )
        now = status(store_url)
        assert now["ledger"]["position"] == now["dashboard"]["position"] == position - 1
        assert f"position {position}" in now["ledger"]["stopped"]
        assert ledger(store_url) == {"shop-a": "39.90", "shop-b": "50.00"}
    finally:
        follower.send_signal(signal.SIGTERM)
        _, stderr = follower.communicate(timeout=30)
    assert "Traceback" not in stderr, stderr
    assert f"error: stored event at position {position}" in stderr, stderr
    assert follower.returncode == 0, stderr


def _wait(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)


def test_the_clock_fires_every_deadline_but_the_damaged_cases(
    engine: Engine, store_url: str
) -> None:
    """A tick refuses the one case with a damaged event, naming it, and fires the others."""
    opened = {}
    for order_id in ("X-1", "Y-1"):
        place_delivered(engine, order_id, lines=("MUG:1:39.90:home",))
        opened[order_id] = engine.handle(
            OpenCase(order_id=order_id, type="refund_only", reason="logistics.damaged",
                     amount="39.90", at=at(days=3))
        )["case_id"]  # fmt: skip
    first = stored(engine.store, opened["X-1"])[0]
    overwrite(engine.store, first["position"], first["state"].replace(b"39.90", b"3990.00", 1))
    result, _ = cli_run(store_url, "tick", "--now", at(days=10))
    assert [f["case_id"] for f in result["fired"]] == [opened["Y-1"]]
    [failed] = result["failed"]
    assert failed["case_id"] == opened["X-1"] and failed["error"]["code"] == "poisoned"
    assert f"position {first['position']}" in failed["error"]["message"]


@pytest.mark.parametrize("damage", ["changed", "deleted"])
def test_an_engine_holding_a_case_in_memory_never_writes_over_a_damaged_last_event(
    engine: Engine, damage: str
) -> None:
    """The engine that saved a case keeps it in memory. Its last event is then changed (the
    amount, the hash left as it was) or deleted in the store: the next action on the case,
    built on what the engine holds, is not saved over it; read again, the case is poison."""
    place_delivered(engine, "X-1", lines=("MUG:1:39.90:home",))
    case_id = engine.handle(
        OpenCase(order_id="X-1", type="refund_only", reason="logistics.damaged",
                 amount="39.90", at=at(days=3))
    )["case_id"]  # fmt: skip
    assert engine.store.cached(uuid.UUID(case_id)) is not None
    [opened] = stored(engine.store, case_id)
    if damage == "changed":
        overwrite(engine.store, opened["position"], opened["state"].replace(b"39.90", b"9.90", 1))
    else:
        engine.store.execute(
            f"DELETE FROM {{t}}{_table(engine.store)} WHERE {_key(engine.store)} = ?",
            (opened["position"],),
        )
    before = stored(engine.store, case_id)
    with pytest.raises(Poisoned) as refused:
        engine.handle(ApproveCase(case_id=case_id, by="staff-1", at=at(days=3, hours=1)))
    assert stored(engine.store, case_id) == before
    if damage == "changed":
        assert f"position {opened['position']}" in refused.value.message
        assert "hash does not match" in refused.value.message
    else:  # not "no case": the case index, written with every save, says it had events
        assert "has no stored events: they were deleted" in refused.value.message


def test_a_stored_event_verifies_in_the_stores_form_or_any_other_of_the_same_content() -> None:
    """verified_hash reads the store's form at fixed offsets (no parse) and any other form of
    the same content through the canonical JSON; anything else is refused, saying why."""
    uid = uuid.uuid4()
    content = {"amount": "39.90", "at": "2026-11-04T10:00:00+08:00", "note": 'a "hash": x'}
    sealed = chain_hash(GENESIS_HASH, uid, 1, "tests.thing:Thing", content)
    stored_form = json.dumps(
        {**content, "hash": sealed}, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert stored_form.endswith(f'"hash":"{sealed}"}}'.encode())
    assert stored_hash(stored_form) == sealed
    assert stored_hash(stored_form[-80:]) == sealed  # the tail a projection reads
    for form in (stored_form, json.dumps({"hash": sealed, **content}, indent=2).encode()):
        assert verified_hash(GENESIS_HASH, uid, 1, "tests.thing:Thing", form) == sealed
    for form, why in (
        (stored_form.replace(b"39.90", b"3990.00"), "hash does not match"),
        (b"X" + stored_form[1:], "not JSON"),
        (json.dumps(content).encode(), "carries no hash"),
    ):
        with pytest.raises(Unreadable, match=why):
            verified_hash(GENESIS_HASH, uid, 1, "tests.thing:Thing", form)
    with pytest.raises(Unreadable, match="hash does not match"):  # chained elsewhere
        verified_hash("1" * 64, uid, 1, "tests.thing:Thing", stored_form)


def test_bulk_lines_on_a_damaged_case_are_refused_and_the_others_run(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    """import-history loads a chunk's cases with one query: the damaged case's line is refused
    naming its event, the other lines run."""
    a = refunded_case(engine, "A-1", "shop-a", "39.90")
    b = refunded_case(engine, "B-1", "shop-b", "50.00")
    more_money(engine.store, a)
    position = refund_of(engine.store, a)["position"]
    lines = [
        {"action": "case rate", "case_id": case_id, "score": 4, "at": at(days=5)}
        for case_id in (a, b)
    ]
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    report, _ = cli_run(store_url, "import-history", str(path), code=3)
    assert (report["ok"], report["failed"]) == (1, 1)
    [error] = report["errors"]
    assert error["line"] == 1 and error["code"] == "poisoned"
    assert f"position {position}" in error["message"]
    assert cli_run(store_url, "case", "show", b)[0]["rating"]["score"] == 4


def test_a_quarantine_row_written_by_hand_never_takes_sound_money_out(
    engine: Engine, store_url: str
) -> None:
    """The projections pass over a quarantined event only if it does fail its checks: a row
    put into the quarantine table by hand for a sound refund leaves it in the ledger."""
    a = refunded_case(engine, "A-1", "shop-a", "39.90")
    refund = refund_of(engine.store, a)
    engine.store.execute(
        "INSERT INTO {t}aftersales_quarantine (position, originator_id, originator_version, "
        "topic, why, reason, decided_by, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (refund["position"], a, refund["version"], refund["topic"], "-", "hide it", "x",
         engine.store.time_param(datetime.now(UTC))),
    )  # fmt: skip
    cli_run(store_url, "project", "run")
    assert ledger(store_url) == {"shop-a": "39.90"}


def test_an_event_whose_type_nobody_knows_stops_every_projection(
    engine: Engine, store_url: str
) -> None:
    """A refund whose stored type was changed to one the engine does not know: no view's
    type, so any view may need it; every projection stops before it, and the case refuses."""
    refunded_case(engine, "B-1", "shop-b", "50.00")
    cli_run(store_url, "project", "run")
    a = refunded_case(engine, "A-1", "shop-a", "39.90")
    refund = refund_of(engine.store, a)
    position = refund["position"]
    engine.store.execute(
        f"UPDATE {{t}}{_table(engine.store)} SET topic = ? WHERE {_key(engine.store)} = ?",
        (refund["topic"] + "Forged", position),
    )
    refunded_case(engine, "B-2", "shop-b", "20.00")
    error, _ = cli_run(store_url, "case", "show", a, code=3)
    assert f"position {position}" in error["error"]["message"]
    error, _ = cli_run(store_url, "project", "run", code=3)
    assert f"position {position}" in error["error"]["message"]
    for row in status(store_url).values():
        assert row["position"] == position - 1, row
        assert f"position {position}" in row["stopped"], row
    assert ledger(store_url) == {"shop-b": "50.00"}
