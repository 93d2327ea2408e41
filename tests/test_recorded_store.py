"""A store recorded by an earlier engine still loads, verifies, audits and projects.

Event topics and stored bytes are part of every event's hash, so a class moved, renamed or
given a new field must leave what was stored readable and verifiable. The fixture
(``tests/fixtures/recorded-2026-12-07.jsonl``) is every row of a store written by the engine as
it stood on 2026-12-07, before the invariants and the layout of later changes: the demo's ten
stories and a case for each kind of event the demo does not record (27 case event types, 5
order event types), its case index and its command ids, exactly as stored. Loaded into a fresh
store on each backend, byte for byte, every aggregate must rebuild with its hash chain checked,
every case's audit verify, the index agree with the events, the projections fold the whole log,
and a checkpoint over it verify.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import StoredEvent

from aftersales.engine.application.handler import Engine
from aftersales.engine.integrity.audit_bundle import audit_case
from aftersales.engine.storage.case_index import CaseRow, CommandRow
from aftersales.engine.storage.sql import parse_stored_time

FIXTURE = Path(__file__).parent / "fixtures" / "recorded-2026-12-07.jsonl"
RECORDED_EVENTS = 191


def recorded_rows() -> Iterator[dict[str, Any]]:
    with FIXTURE.open(encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def _time(value: Any) -> datetime | None:
    return parse_stored_time(value)


def load_recorded(engine: Engine) -> dict[str, dict[str, Any]]:
    """Write the fixture's rows into the engine's (empty) store as they were stored; the case
    index rows by case id."""
    events: list[StoredEvent] = []
    cases: list[CaseRow] = []
    commands: list[CommandRow] = []
    index: dict[str, dict[str, Any]] = {}
    for row in recorded_rows():
        table = row.pop("table")
        if table == "events":
            events.append(
                StoredEvent(
                    originator_id=UUID(row["originator_id"]),
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=row["state"].encode("utf-8"),
                )
            )
        elif table == "aftersales_cases":
            index[row["case_id"]] = row
            cases.append(
                CaseRow(
                    **{
                        **row,
                        "due_at": _time(row["due_at"]),
                        "opened_at": _time(row["opened_at"]),
                        "updated_at": _time(row["updated_at"]),
                    }
                )
            )
        else:
            assert table == "aftersales_commands", table
            commands.append(CommandRow(**{**row, "recorded_at": _time(row["recorded_at"])}))
    engine.store.recorder.insert_events(events, cases=cases, commands=commands)
    return index


@pytest.fixture
def recorded(engine: Engine) -> dict[str, dict[str, Any]]:
    return load_recorded(engine)


def test_the_fixture_covers_every_kind_of_event() -> None:
    topics = {row["topic"] for row in recorded_rows() if row["table"] == "events"}
    assert len([t for t in topics if t.startswith("engine.case:")]) == 27
    assert len([t for t in topics if t.startswith("engine.order:")]) == 5


def test_every_recorded_aggregate_loads_with_its_chain_checked(
    engine: Engine, recorded: dict[str, dict[str, Any]]
) -> None:
    ids = {UUID(r["originator_id"]) for r in recorded_rows() if r["table"] == "events"}
    loaded = engine.store.load_many(sorted(ids, key=str))
    assert set(loaded) == ids
    for case_id, row in recorded.items():
        shown = engine.stored_case(case_id)
        assert shown["status"] == row["status"], case_id
        assert shown["version"] == row["version"], case_id
        assert shown["refunded_amount"] == row["refunded_amount"], case_id


def test_every_recorded_case_verifies_in_the_audit(
    engine: Engine, recorded: dict[str, dict[str, Any]]
) -> None:
    assert len(recorded) == 20
    for case_id in recorded:
        audit = audit_case(engine.store, case_id)
        assert audit.verified, (case_id, [p.to_json() for p in audit.problems])


def test_the_projections_fold_the_whole_recorded_log(
    engine: Engine, recorded: dict[str, dict[str, Any]]
) -> None:
    from aftersales.projections.registry import VIEWS
    from aftersales.projections.runner import Projector

    projector = Projector(engine.store)
    read = projector.catch_up(VIEWS)
    assert read > 0 and projector.head() == RECORDED_EVENTS
    assert projector.stopped == {}
    assert {projector.position(v) for v in VIEWS} == {projector.head()}


def test_a_checkpoint_over_the_recorded_log_verifies(
    engine: Engine, recorded: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    from aftersales.engine.integrity.checkpoint_verify import verify_log
    from aftersales.engine.integrity.checkpoints import take_checkpoint
    from aftersales.engine.integrity.signing_keys import generate_key

    _, public = generate_key(tmp_path / "key.pem")
    from aftersales.engine.integrity.signing_keys import load_signing_key

    key = load_signing_key(tmp_path / "key.pem")
    taken = take_checkpoint(engine.store, key, datetime(2026, 12, 7, tzinfo=UTC))
    assert taken.head is not None and taken.head.size == RECORDED_EVENTS
    check = verify_log(engine.store, public, full=True)
    assert check.problems == []


def test_every_recorded_event_encodes_again_byte_for_byte() -> None:
    """Every recorded event, read back as its class and encoded by the engine as it seals
    events (orjson, engine/domain/events.py), is exactly the bytes it was stored as (less the
    fields its class gained since, read with their defaults), and what the json module writes;
    sealed again on the hash before it, an event whose class has not changed since gets the same
    hash and the same stored bytes."""
    from aftersales.engine.domain import events
    from aftersales.engine.storage.event_mapper import JsonTranscoder, PydanticMapper

    mapper = PydanticMapper(transcoder=JsonTranscoder())
    previous: dict[str, str] = {}
    encoded = resealed = 0
    for row in recorded_rows():
        if row["table"] != "events":
            continue
        uid, version = UUID(row["originator_id"]), row["originator_version"]
        stored = row["state"].encode("utf-8")
        event = mapper.decode(uid, version, row["topic"], stored)
        assert events._orjson_safe(type(event)), type(event)
        state = events.stored_state(event)
        added = set(state) - set(json.loads(stored))
        for name in added:  # a field added since: read with its default
            assert getattr(event, name) == type(event).model_fields[name].default, name
            del state[name]
        state.pop("hash")
        body = events.canonical_bytes(state, floats=False)
        assert body == events._canonical(state).encode("utf-8")
        assert stored == body[:-1] + b',"hash":"' + event.hash.encode() + b'"}', row["topic"]
        before = previous.get(row["originator_id"], events.GENESIS_HASH)
        if not added:
            again = events._sealed(event.model_copy(update={"hash": ""}), before)
            assert again.hash == event.hash and events.stored_json(again) == stored
            resealed += 1
        previous[row["originator_id"]] = event.hash
        encoded += 1
    assert encoded == RECORDED_EVENTS and resealed == 86  # the others gained a field since


def test_the_canonical_encoding_escapes_every_character_as_the_json_module_does() -> None:
    """orjson, which seals events, and the json module, which the canonical form is defined by,
    write every character the same (in a string and in a key), and sort keys alike."""
    import aftersales.engine.storage.event_mapper  # noqa: F401 (installs orjson for sealing)
    from aftersales.engine.domain import events

    assert events.FAST_CANONICAL is not None

    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(points), 4096):
        text = "".join(chr(c) for c in points[start : start + 4096])
        state = {text: text, "k": [text[:7], {text[-9:]: 1}], text[::-1]: None}
        assert events.canonical_bytes(state, floats=False) == events._canonical(state).encode()
    # What orjson cannot write goes to the json module.
    big = {"n": 2**70, "m": -(2**64)}
    assert events.canonical_bytes(big, floats=False) == events._canonical(big).encode()
