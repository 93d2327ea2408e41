"""The HTTP contract as the OpenAPI document states it, checked against the running application:
schemathesis generates requests from the document (valid ones and ones that break it) for every
operation, as an operator and as a buyer, and runs every one of its checks on each answer (the
status, the body and the headers are the documented ones; invalid input is refused; no 5xx).
Then a fuzz of what no schema describes (any header, path or body, with and without a key) must
never answer 5xx nor log a traceback; and the three requests that once did, each on its own."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import positive_data_acceptance

from aftersales.commands.http.app import create_app
from aftersales.engine.application.handler import Engine
from tests.people import People

with warnings.catch_warnings():
    warnings.simplefilter("ignore")


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
    ids = {"case_id": people.cases["shop-1"], "order_id": "KS-1"}  # buyer-1's
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
                        max_examples=5,
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
