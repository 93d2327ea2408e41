"""The HTTP contract as the OpenAPI document states it, checked against the running application:
schemathesis generates requests from the document (valid ones and ones that break it) for every
operation, as an operator and as a buyer, and runs every one of its checks on each answer (the
status, the body and the headers are the documented ones; invalid input is refused; no 5xx).
Then a fuzz of what no schema describes (any header, path or body, with and without a key) must
never answer 5xx nor log a traceback; and the three requests that once did, each on its own."""

from __future__ import annotations

import json
import logging
import re
import warnings
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import positive_data_acceptance

from aftersales.commands.http.app import create_app
from aftersales.engine.application.handler import Engine
from tests.people import People

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


# Rules across fields, or against what is stored, that a JSON schema does not state
# (docs/http.md): an order's SKUs are unique; carrier and waybill come together, and a reship
# needs them unless it cannot; since is before until (now by default); an action's `at` is not
# before the case's or order's latest event. A request valid to the schema may still be 422
# there, so such a request is not held to being accepted (every other check still runs on it).
CROSS_FIELD_RULES = ["/v1/orders", "/v1/orders/{order_id}/ship", "/v1/cases/{case_id}/reship"]


def beyond_the_schema(case: Any) -> bool:
    body, query = case.body, case.query or {}
    return (
        case.operation.path in CROSS_FIELD_RULES
        or (isinstance(body, dict) and body.get("at") is not None)
        or "since" in query
        or "until" in query
        or "after" in query  # it must name a case the caller may list
    )


def all_checks() -> list[Any]:
    load_all_checks()
    return list(CHECKS.get_all())


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("who", ["ops", "buyer-1"])
def test_schemathesis_finds_nothing(engine: Engine, store_url: str, who: str) -> None:
    people = People(engine)
    app = create_app(store_url, failure_limit=1_000_000)
    config = SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"bearer": {"bearer": people.keys[who]}}},
            "checks": {
                # A schema-valid If-Match the case has moved past is refused, rightly: 412.
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "401", "403", "404", "409", "412", "429"]
                }
            },
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    keys = iter(range(1_000_000))
    ids = {
        "case_id": people.cases["shop-1"],
        "order_id": "KS-1",
        "merchant_id": "shop-1",
        "buyer_id": "buyer-1",
    }
    checks = all_checks()
    fewer = [c for c in checks if c is not positive_data_acceptance]
    failures: list[str] = []
    try:
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]
            names = [p.name for p in operation.path_parameters]
            pinned: list[dict[str, Any] | None] = [None]
            if names:  # ids made up, and real ones
                pinned.append({n: ids[n] for n in names})
            modes = [schemathesis.GenerationMode.POSITIVE]
            if operation.path != "/healthz":  # nothing in it to get wrong
                modes.append(schemathesis.GenerationMode.NEGATIVE)
            for mode in modes:
                for path in pinned:
                    strategy = operation.as_strategy(mode, path_parameters=path)

                    @settings(
                        max_examples=3,
                        deadline=None,
                        derandomize=True,
                        database=None,
                        suppress_health_check=list(HealthCheck),
                    )
                    @given(case=strategy)
                    def run(case: Any) -> None:
                        if case.headers and "Idempotency-Key" in case.headers:
                            # A client's keys are its own for each request it means: the same
                            # key for another request is refused (422), as documented.
                            case.headers["Idempotency-Key"] += f"-{next(keys)}"
                        case.call_and_validate(checks=fewer if beyond_the_schema(case) else checks)

                    try:
                        run()
                    except (Exception, BaseExceptionGroup) as exc:  # every operation's
                        failures.append(f"{operation.label} {mode.name} {path}: {exc}")
    finally:
        shutdown_lifespans()
    assert not failures, "\n\n".join(failures)


# The fuzz: anything a client can send, on every route -------------------------------------------


def every_route(routes: list[Any]) -> list[tuple[str, str]]:
    """Each route's path and method, through the routers the application includes."""
    found: list[tuple[str, str]] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found += every_route(inner.routes)
        elif hasattr(route, "routes") and getattr(route, "path", None) is not None:
            found += [(route.path + "/{name}", "GET")]  # a mount: its files
        elif getattr(route, "path", None) is not None:
            found += [(route.path, m) for m in sorted(route.methods or {"GET"}) if m != "HEAD"]
    return found


PATH_NAME = re.compile(r"\{(\w+)(?::\w+)?\}")
TEXT = st.text(max_size=30) | st.sampled_from(["", " ", "..", "%00", "²", "١٢", "x" * 5000])
HEADER_BYTES = st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b) | (
    st.sampled_from([b"9" * 5000, '"\xb2"'.encode("latin-1"), "²".encode(), b"*", b'W/"1"', b""])
)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
BODIES = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),  # invalid UTF-8, not JSON
    st.sampled_from(
        [
            nested(10_000),
            b'{"a":' * 5000 + b"1" + b"}" * 5000,
            b'{"text": "' + b"x" * 70_000 + b'"}',
            b'{"score": ' + b"9" * 5000 + b"}",
            b'{"note": "\\ud800"}',
            b"\xff\xfe{\x00}\x00",
            b"",
        ]
    ),
)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_no_input_answers_5xx(
    engine: Engine, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    people = People(engine)
    app = create_app(store_url, failure_limit=1_000_000)
    routes = every_route(app.routes)
    assert len(routes) > 30, routes  # the API's routes, the desk's pages, the documents
    real = {"case_id": people.cases["shop-1"], "order_id": "KS-1", "merchant_id": "shop-1"}
    keys = st.sampled_from([None, people.keys["ops"], people.keys["buyer-1"], "ask_x_y"])
    with TestClient(app, raise_server_exceptions=False) as client:

        @settings(
            max_examples=400,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            route=st.sampled_from(routes),
            ids=st.booleans(),
            segment=TEXT,
            key=keys,
            if_match=st.none() | HEADER_BYTES,
            idempotency=st.none() | HEADER_BYTES,
            content_type=st.none()
            | st.sampled_from([b"application/json", b"text/plain", "x/ä".encode()]),
            body=st.none() | BODIES,
        )
        def fuzz(
            route: tuple[str, str],
            ids: bool,
            segment: str,
            key: str | None,
            if_match: bytes | None,
            idempotency: bytes | None,
            content_type: bytes | None,
            body: bytes | None,
        ) -> None:
            template, method = route
            path = PATH_NAME.sub(
                lambda m: real.get(m.group(1), "x") if ids else quote(segment, safe=""),
                template,
            )
            headers: dict[str, Any] = {}
            if key is not None:
                headers["Authorization"] = f"Bearer {key}"
            for name, value in (
                ("If-Match", if_match),
                ("Idempotency-Key", idempotency),
                ("Content-Type", content_type),
            ):
                if value is not None:
                    headers[name] = value
            caplog.clear()
            response = client.request(method, path or "/", headers=headers, content=body)
            assert response.status_code < 500, (method, path, response.text[:300])
            assert "Traceback" not in response.text
            logged = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
            assert not logged, [r.getMessage() for r in logged]

        fuzz()


# The requests that once answered 500, without a key and with one -------------------------------


@pytest.mark.parametrize(
    ("if_match", "body", "status"),
    [
        (b"9" * 5000, b"{}", 422),
        (b'"' + "²".encode("latin-1") + b'"', b"{}", 422),
        ("²".encode("latin-1"), b"{}", 422),
        (None, nested(10_000), 422),
        (None, b'{"a":' * 5000 + b"1" + b"}" * 5000, 422),
        (None, b'{"text": "' + b"x" * 70_000 + b'"}', 413),
    ],
)
def test_the_requests_that_once_failed_are_refused(
    engine: Engine,
    store_url: str,
    caplog: pytest.LogCaptureFixture,
    if_match: bytes | None,
    body: bytes,
    status: int,
) -> None:
    people = People(engine)
    case = people.cases["shop-1"]
    with TestClient(create_app(store_url), raise_server_exceptions=False) as client:
        for key in (None, people.keys["buyer-1"]):
            headers: dict[str, Any] = {"Content-Type": "application/json"}
            if key is not None:
                headers["Authorization"] = f"Bearer {key}"
            if if_match is not None:
                headers["If-Match"] = if_match
            before = people.events()
            response = client.post(f"/v1/cases/{case}/withdraw", headers=headers, content=body)
            # Refused before the key is looked at: the same answer with a key and without.
            assert response.status_code == status, response.text
            assert response.json()["error"]["code"] == (
                "too_large" if status == 413 else "bad_input"
            )
            assert people.events() == before
    assert not [r for r in caplog.records if r.exc_info], caplog.text


def test_if_match_star_is_any_current_version(engine: Engine, store_url: str) -> None:
    people = People(engine)
    case = people.cases["shop-1"]
    with TestClient(create_app(store_url)) as client:
        staff = people.auth("staff-1")
        path = f"/v1/cases/{case}/message"
        answer = client.post(path, json={"text": "a"}, headers={**staff, "If-Match": "*"})
        assert answer.status_code == 200, answer.text
        version = answer.json()["version"]
        assert answer.headers["ETag"] == f'"{version}"'
        for form in ('"{}"', 'W/"{}"', "{}"):
            fresh = form.format(version)
            answer = client.post(path, json={"text": "b"}, headers={**staff, "If-Match": fresh})
            assert answer.status_code == 200, (fresh, answer.text)
            version = answer.json()["version"]
        stale = client.post(path, json={"text": "c"}, headers={**staff, "If-Match": '"1"'})
        assert stale.status_code == 412 and stale.json()["error"]["code"] == "conflict"
        for bad in ('"1", "2"', "**", '"-1"', '"1000000001"', "1e3", "W/*"):
            answer = client.post(path, json={"text": "d"}, headers={**staff, "If-Match": bad})
            assert answer.status_code == 422, (bad, answer.text)
            assert answer.json()["error"]["code"] == "bad_input"
        gone = client.post(
            "/v1/cases/00000000-0000-4000-8000-000000000000/message",
            json={"text": "e"},
            headers={**staff, "If-Match": "*"},
        )
        assert gone.status_code == 404


def test_healthz_needs_no_key_and_says_so(store_url: str) -> None:
    app = create_app(store_url)
    with TestClient(app) as client:
        answer = client.get("/healthz")
        assert answer.status_code == 200 and answer.json()["ok"] is True
        document = client.get("/openapi.json").json()
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert document["security"] == [{"bearer": []}]
