"""The HTTP API in process (FastAPI's test client), on both backends: who may do what on which
case, the recorded actor, idempotency, If-Match, the error shape, rate limiting, and a fuzz of
request bodies. The real `aftersales serve` process is in tests/test_serve.py."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aftersales.engine.application.handler import Engine
from tests.people import People

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from aftersales.commands.http.app import create_app

# The contract's table of rights, written out here on its own (not read from the code).
MERCHANT_ACTIONS: dict[str, dict[str, Any]] = {
    "approve": {},
    "reject": {"reason": "used", "communication": "chat-1"},
    "receive": {},
    "refund": {},
    "ship-replacement": {"carrier": "SF", "waybill": "W1"},
    "reship": {"carrier": "SF", "waybill": "W1"},
    "recover-goods": {},
    "offer": {"type": "refund_only"},
    "extend": {"hours": 24, "reason": "holiday"},
}
BUYER_ACTIONS: dict[str, dict[str, Any]] = {
    "ship-back": {"carrier": "SF", "waybill": "W1"},
    "withdraw": {},
    "escalate": {"claim": "missing_items"},
    "rate": {"score": 5},
    "accept-offer": {},
    "decline-offer": {},
}
PLATFORM_ACTIONS: dict[str, dict[str, Any]] = {"rule": {"for": "buyer"}}
BODIES: dict[str, dict[str, Any]] = {
    **MERCHANT_ACTIONS,
    **BUYER_ACTIONS,
    **PLATFORM_ACTIONS,
    "message": {"text": "hello"},
}
MAY: dict[str, set[str]] = {
    "operator": set(BODIES),
    "merchant": {*MERCHANT_ACTIONS, "message"},
    "buyer": {*BUYER_ACTIONS, "message"},
    "agent": {*PLATFORM_ACTIONS, "message"},
    "auditor": set(),
    "reporter": set(),
}
# Whose case "shop-1"'s is, for each principal (True: within its reach).
REACHES_SHOP_1 = {
    "ops": True,
    "staff-1": True,
    "staff-2": False,
    "buyer-1": True,
    "buyer-2": False,
    "agent": True,
    "auditor": True,
    "reporter": True,
}
ROLE = {
    "ops": "operator",
    "staff-1": "merchant",
    "staff-2": "merchant",
    "buyer-1": "buyer",
    "buyer-2": "buyer",
    "agent": "agent",
    "auditor": "auditor",
    "reporter": "reporter",
}
REFUSED = {401, 403, 404, 429}


@pytest.fixture
def api(engine: Engine, store_url: str) -> Iterator[tuple[TestClient, People]]:
    people = People(engine)
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:
        yield client, people


def last_actor(client: TestClient, people: People, case_id: str) -> dict[str, str]:
    response = client.get(f"/v1/cases/{case_id}/audit", headers=people.auth("ops"))
    assert response.status_code == 200, response.text
    actor: dict[str, str] = response.json()["events"][-1]["actor"]
    return actor


def test_every_role_every_action_own_and_other_case(api: tuple[TestClient, People]) -> None:
    client, people = api
    case = people.cases["shop-1"]
    for pid, role in ROLE.items():
        for action, body in BODIES.items():
            before = people.events()
            response = client.post(
                f"/v1/cases/{case}/{action}", json=body, headers=people.auth(pid)
            )
            cell = f"{pid} {action}: {response.status_code} {response.text}"
            if action not in MAY[role]:
                assert response.status_code == 403, cell
            elif not REACHES_SHOP_1[pid]:
                assert response.status_code == 404, cell
                assert response.json()["error"]["message"] == f"no case {case}", cell
            else:
                # Allowed: the rules of the case's state decide (200, 409 or 422).
                assert response.status_code in {200, 409, 422}, cell
                if response.status_code == 200:
                    assert last_actor(client, people, case)["id"] == pid, cell
            if response.status_code in REFUSED:
                assert people.events() == before, cell
                assert set(response.json()) == {"error"}, cell


def test_merchant_and_buyer_actions_recorded_as_the_principal(
    api: tuple[TestClient, People],
) -> None:
    client, people = api
    case = people.cases["shop-1"]
    response = client.post(
        f"/v1/cases/{case}/message", json={"text": "photo?"}, headers=people.auth("staff-1")
    )
    assert response.status_code == 200, response.text
    assert last_actor(client, people, case) == {"role": "merchant", "id": "staff-1"}
    # Speaking for another party is refused: a buyer cannot write as the merchant.
    before = people.events()
    response = client.post(
        f"/v1/cases/{case}/message",
        json={"text": "approved!", "as": "merchant"},
        headers=people.auth("buyer-1"),
    )
    assert response.status_code == 403, response.text
    # A body's by is refused: the actor is the key's principal.
    response = client.post(
        f"/v1/cases/{case}/approve", json={"by": "staff-1"}, headers=people.auth("staff-1")
    )
    assert response.status_code == 422, response.text
    # Only the platform's principals may say when an action happened.
    response = client.post(
        f"/v1/cases/{case}/approve",
        json={"at": "2026-11-03T10:00:00+08:00"},
        headers=people.auth("staff-1"),
    )
    assert response.status_code == 403, response.text
    assert people.events() == before
    response = client.post(f"/v1/cases/{case}/approve", json={}, headers=people.auth("staff-1"))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "refunded"
    assert last_actor(client, people, case) == {"role": "merchant", "id": "staff-1"}


def test_open_place_and_reads_by_reach(api: tuple[TestClient, People]) -> None:
    client, people = api
    opening = {"order_id": "KS-1", "type": "refund_only", "reason": "quality.x", "amount": "5"}
    opening["line"] = "CASE-BLUE"
    for pid, status in (("staff-1", 403), ("buyer-2", 404), ("agent", 403), ("auditor", 403)):
        before = people.events()
        response = client.post("/v1/cases", json=opening, headers=people.auth(pid))
        assert response.status_code == status, (pid, response.text)
        assert people.events() == before
    response = client.post("/v1/cases", json=opening, headers=people.auth("buyer-1"))
    assert response.status_code == 201, response.text
    assert response.json()["buyer_id"] == "buyer-1"
    assert response.headers["etag"] == '"1"'
    placing = {"merchant": "shop-1", "buyer": "buyer-1", "line": ["A:1:1.00"]}
    for pid in ("staff-1", "buyer-1", "agent", "reporter"):
        response = client.post(
            "/v1/orders", json={"order_id": "KS-9", **placing}, headers=people.auth(pid)
        )
        assert response.status_code == 403, response.text
    response = client.post(
        "/v1/orders", json={"order_id": "KS-9", **placing}, headers=people.auth("ops")
    )
    assert response.status_code == 201, response.text
    response = client.post("/v1/orders/KS-9/ship", json={}, headers=people.auth("staff-1"))
    assert response.status_code == 403

    case = people.cases["shop-1"]
    seers = {"ops", "staff-1", "buyer-1", "agent"}
    reporters = {"ops", "staff-1", "staff-2", "reporter"}
    # path: (answered 200, answered 404 as if there were nothing); everyone else 403
    reads = {
        f"/v1/cases/{case}": (seers, {"staff-2", "buyer-2"}),
        f"/v1/cases/{case}/audit": ({"ops", "staff-1", "agent", "auditor"}, {"staff-2"}),
        "/v1/orders/KS-1": (seers, {"staff-2", "buyer-2"}),
        "/v1/reports/ledger": (reporters, set()),
        "/v1/reports/dashboard": (reporters, set()),
        "/v1/reports/return-rates": (reporters, set()),
    }
    for path, (readers, hidden) in reads.items():
        for pid in ROLE:
            response = client.get(path, headers=people.auth(pid))
            status = 200 if pid in readers else 404 if pid in hidden else 403
            assert response.status_code == status, (path, pid, response.text)
    listed = {
        pid: {c["case_id"] for c in client.get("/v1/cases", headers=people.auth(pid)).json()}
        for pid in ("ops", "staff-1", "staff-2", "buyer-1", "agent")
    }
    assert len(listed["ops"]) == len(listed["agent"]) == 3
    assert listed["staff-1"] == listed["buyer-1"] == listed["ops"] - {people.cases["shop-2"]}
    assert listed["staff-2"] == {people.cases["shop-2"]}
    assert client.get("/v1/cases?merchant=shop-2", headers=people.auth("staff-1")).json() == []
    response = client.get("/v1/reports/ledger?merchant=shop-2", headers=people.auth("staff-1"))
    assert response.status_code == 403


def test_keys_idempotency_if_match_and_errors(
    api: tuple[TestClient, People], caplog: pytest.LogCaptureFixture
) -> None:
    client, people = api
    case = people.cases["shop-1"]
    path = f"/v1/cases/{case}/message"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
        response = client.post(path, json={"text": "x"}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
    forged = people.keys["staff-1"][:-4] + "AAAA"
    with caplog.at_level(logging.WARNING, logger="aftersales.http"):
        response = client.post(
            path, json={"text": "x"}, headers={"Authorization": f"Bearer {forged}"}
        )
    assert response.status_code == 401
    assert "refused POST" in caplog.text and forged not in caplog.text
    assert people.keys["staff-1"] not in caplog.text

    staff = people.auth("staff-1")
    first = client.post(path, json={"text": "a"}, headers={**staff, "Idempotency-Key": "k1"})
    assert first.status_code == 200 and first.headers["etag"] == '"2"'
    events = people.events()
    again = client.post(path, json={"text": "a"}, headers={**staff, "Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json() == first.json()
    assert people.events() == events
    other = client.post(path, json={"text": "b"}, headers={**staff, "Idempotency-Key": "k1"})
    assert other.status_code == 422
    # Another principal's idempotency key is its own: not a replay, not a leak.
    buyer = client.post(
        path, json={"text": "a"}, headers={**people.auth("buyer-1"), "Idempotency-Key": "k1"}
    )
    assert buyer.status_code == 200 and buyer.headers["etag"] == '"3"'
    # The longest key the document allows is taken (with the principal's id before it).
    longest = {**people.auth("buyer-1"), "Idempotency-Key": "k" * 200}
    taken = client.post(path, json={"text": "l"}, headers=longest)
    assert taken.status_code == 200 and taken.headers["etag"] == '"4"', taken.text
    assert client.post(path, json={"text": "l"}, headers=longest).json() == taken.json()

    stale = client.post(path, json={"text": "c"}, headers={**staff, "If-Match": '"3"'})
    assert stale.status_code == 412 and stale.json()["error"]["code"] == "conflict"
    fresh = client.post(path, json={"text": "c"}, headers={**staff, "If-Match": '"4"'})
    assert fresh.status_code == 200 and fresh.headers["etag"] == '"5"'
    shown = client.get(f"/v1/cases/{case}", headers=staff)
    assert shown.headers["etag"] == '"5"'
    bad = client.post(path, json={"text": "c"}, headers={**staff, "If-Match": "soon"})
    assert bad.status_code == 422
    # A read-your-writes token not of the documented shape is refused, read store or not.
    for token in ("", "soon"):
        read = client.get(f"/v1/cases/{case}", headers={**staff, "X-Read-After": token})
        assert read.status_code == 422, (token, read.text)

    for body in (b"{", b"[]", b'{"text": 1.5}'):
        response = client.post(path, content=body, headers=staff)
        assert response.status_code == 422, response.text
    assert client.get("/v1/nothing-here").json()["error"]["code"] == "not_found"
    assert client.get("/healthz").json()["ok"] is True


def test_revoked_and_expired_keys(engine: Engine, store_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from aftersales.engine.access.principal_store import create_key, revoke_key

    people = People(engine)
    now = datetime.now(UTC)
    short = create_key(engine.store, "staff-1", now, now + timedelta(seconds=1))
    with TestClient(create_app(store_url, failure_limit=10_000)) as client:
        headers = people.auth("staff-1")
        assert client.get("/v1/cases", headers=headers).status_code == 200
        revoke_key(engine.store, people.key_ids["staff-1"], now)
        response = client.get("/v1/cases", headers=headers)
        assert response.status_code == 401 and "revoked" in response.text
        expiring = {"Authorization": f"Bearer {short['key']}"}
        response = client.get("/v1/cases", headers=expiring)
        if (datetime.now(UTC) - now).total_seconds() < 0.9:
            assert response.status_code == 200
        import time

        time.sleep(max(0.0, 1.05 - (datetime.now(UTC) - now).total_seconds()))
        response = client.get("/v1/cases", headers=expiring)
        assert response.status_code == 401 and "expired" in response.text


def test_repeated_refusals_are_rate_limited(engine: Engine, store_url: str) -> None:
    people = People(engine)
    with TestClient(create_app(store_url, failure_limit=3)) as client:
        case = people.cases["shop-1"]
        codes = [
            client.post(
                f"/v1/cases/{case}/approve", json={}, headers=people.auth("buyer-1")
            ).status_code
            for _ in range(5)
        ]
        assert codes == [403, 403, 403, 429, 429]
        limited = client.get("/v1/cases", headers=people.auth("buyer-1"))
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


ACTIONS = sorted(BODIES)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
KEYS = st.sampled_from(
    [
        "text",
        "as",
        "for",
        "type",
        "amount",
        "hours",
        "reason",
        "carrier",
        "waybill",
        "score",
        "claim",
        "evidence",
        "line",
        "at",
        "note",
        "cannot",
        "condition",
        "case_id",
        "zzz",
    ]
)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_fuzzed_bodies_never_fail_the_server(engine: Engine, store_url: str) -> None:
    people = People(engine)
    case = people.cases["shop-1"]
    with TestClient(
        create_app(store_url, failure_limit=10_000), raise_server_exceptions=False
    ) as client:
        # The same generated bodies every run: a failure is a change's doing, and reproduces.
        @settings(
            max_examples=150,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            action=st.sampled_from([*ACTIONS, "open"]),
            body=st.dictionaries(KEYS, JSON, max_size=5) | JSON,
            who=st.sampled_from(["ops", "staff-1", "buyer-1"]),
        )
        def fuzz(action: str, body: Any, who: str) -> None:
            path = "/v1/cases" if action == "open" else f"/v1/cases/{case}/{action}"
            response = client.post(path, json=body, headers=people.auth(who))
            assert response.status_code < 500, response.text
            assert "Traceback" not in response.text
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}

        fuzz()


def test_refusals_count_against_the_key_and_garbage_against_the_address(
    engine: Engine, store_url: str
) -> None:
    people = People(engine)
    with TestClient(create_app(store_url, failure_limit=3)) as client:
        for _ in range(3):
            assert client.get("/v1/cases", headers=people.auth("auditor")).status_code == 403
        limited = client.get("/v1/cases", headers=people.auth("auditor"))
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        # Another key from the same address is not held back by the auditor's refusals...
        assert client.get("/v1/cases", headers=people.auth("agent")).status_code == 200
        for _ in range(3):
            bad = {"Authorization": "Bearer not-a-key"}
            assert client.get("/v1/cases", headers=bad).status_code == 401
        # ... and garbage holds back the address for what has no key's shape, not the keys.
        assert client.get("/v1/cases", headers=bad).status_code == 429
        assert client.get("/v1/cases").status_code == 429
        assert client.get("/v1/cases", headers=people.auth("agent")).status_code == 200


def test_a_405_names_every_method_of_the_path_and_keys_are_as_documented(
    api: tuple[TestClient, People],
) -> None:
    """`/v1/cases` is read (GET) and added to (POST) by routes of their own: a method it does not
    take is answered with both in `Allow`. An idempotency key outside the document's pattern
    (visible ASCII, no spaces) is refused, and nothing is recorded."""
    client, people = api
    refused = client.request("DELETE", "/v1/cases", headers=people.auth("ops"))
    assert refused.status_code == 405
    assert {m.strip() for m in refused.headers["Allow"].split(",")} >= {"GET", "POST"}
    case = people.cases["shop-1"]
    before = client.get(f"/v1/cases/{case}", headers=people.auth("staff-1")).json()["version"]
    for key in ("two words", "tab\there", " "):
        response = client.post(
            f"/v1/cases/{case}/message",
            json={"text": "x"},
            headers={**people.auth("staff-1"), "Idempotency-Key": key},
        )
        assert response.status_code == 422, (key, response.text)
        assert "visible ASCII" in response.json()["error"]["message"]
    after = client.get(f"/v1/cases/{case}", headers=people.auth("staff-1")).json()["version"]
    assert after == before
