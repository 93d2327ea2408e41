"""Group commit (``Engine.handle_together``): actions saved in one transaction, each seeing the
ones before it; a refusal or a failed save sinks none of the others."""

from __future__ import annotations

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ApproveCase, MessageCase
from aftersales.engine.domain.errors import AftersalesError, NotAllowed
from tests.people import People


def message(case: str, text: str, **more: object) -> MessageCase:
    command: MessageCase = MessageCase.parse(
        {"case_id": case, "text": text, "as": "platform", **more}
    )
    return command


def test_actions_together_see_each_other_and_are_saved_at_once(engine: Engine) -> None:
    people = People(engine)
    one, two = people.cases["shop-1"], people.cases["shop-2"]
    before = people.events()
    results = engine.handle_together(
        [
            message(one, "a"),
            message(two, "b"),
            # Sees the message before it: the case is at version 2 by now.
            ApproveCase.parse({"case_id": one, "expected_version": 2}),
        ]
    )
    assert [r["version"] for r, _ in results] == [2, 2, 4]  # approved and refunded
    assert results[0][0]["messages"][-1]["text"] == "a" and results[0][0]["status"] != "refunded"
    assert people.events() == before + 5  # and the order records the refund
    with Engine(engine.store.url.text) as other:
        assert other.get_case(one)["status"] == "refunded"


def test_a_refusal_sinks_no_other(engine: Engine) -> None:
    people = People(engine)
    one, two = people.cases["shop-1"], people.cases["shop-2"]
    engine.handle(ApproveCase.parse({"case_id": one}))
    before = people.events()
    results = engine.handle_together(
        [message(two, "a"), ApproveCase.parse({"case_id": one}), message(two, "b")]
    )
    assert isinstance(results[1][0], NotAllowed)
    assert [r[0]["version"] for r in (results[0], results[2])] == [2, 3]
    assert people.events() == before + 2


def test_a_case_moved_elsewhere_and_a_repeated_command_id(engine: Engine) -> None:
    people = People(engine)
    one, two = people.cases["shop-1"], people.cases["shop-2"]
    engine.handle(message(one, "cached here"))  # this engine's cache has the case at v2
    with Engine(engine.store.url.text) as other:
        other.handle(message(one, "moved on elsewhere"))  # now v3 in the store
    before = people.events()
    results = engine.handle_together(
        [
            message(one, "after", command_id="c-1"),
            message(two, "x", command_id="c-2"),
            message(two, "x", command_id="c-2"),  # the same again: given its first result
        ]
    )
    assert not any(isinstance(r, AftersalesError) for r, _ in results)
    assert results[0][0]["version"] == 4
    assert results[1][0] == results[2][0] and [r for _, r in results] == [False, False, True]
    assert people.events() == before + 2
    texts = [m["text"] for m in engine.get_case(one)["messages"]]
    assert texts == ["cached here", "moved on elsewhere", "after"]
