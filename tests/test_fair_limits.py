"""Rate limits that are fair, against a real `aftersales serve` on both backends: refusals count
against the key that was presented (or, for what has no key's shape, the client's address), so
one broken client behind an address holds back nobody else; X-Forwarded-For is believed only
from a trusted proxy; every 429 says when to come back."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from aftersales.commands.http.rate_limits import parse_networks
from aftersales.engine.application.handler import Engine
from tests.people import People
from tests.test_serve import Server

LIMIT = 20  # serve's default --failure-limit


def random_key() -> str:
    """A key of the right shape that no store has: its own key id each time."""
    return f"ask_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def limited(response: httpx.Response) -> int:
    """A 429 in the error shape with a sane Retry-After; its seconds."""
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    wait = int(response.headers["retry-after"])
    assert 1 <= wait <= 60, wait
    return wait


def test_one_clients_failures_hold_back_no_other_key(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    people = People(engine)
    # A trusted proxy that is not the peer: X-Forwarded-For is not believed from the peer.
    server = Server(
        store_url, tmp_path / "server.log", env={"AFTERSALES_TRUSTED_PROXIES": "10.0.0.0/8"}
    )
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            # 25 bad keys from one address (a broken client behind a platform's backend)...
            for _ in range(25):
                assert http.get("/v1/cases", headers=bearer(random_key())).status_code == 401
            # ... and every valid key from that address still works, a desk sign-in too.
            for who in ("staff-1", "ops", "agent"):
                assert http.get("/v1/cases", headers=people.auth(who)).status_code == 200

            # Wrong secrets for staff-1's key id hold back that key id only.
            key = people.keys["staff-1"]
            forged = key[: -len(key.split("_", 2)[2])] + secrets.token_urlsafe(32)
            for _ in range(LIMIT):
                assert http.get("/v1/cases", headers=bearer(forged)).status_code == 401
            limited(http.get("/v1/cases", headers=bearer(forged)))
            limited(http.get("/v1/cases", headers=people.auth("staff-1")))
            assert http.get("/v1/cases", headers=people.auth("staff-2")).status_code == 200

            # What has no key's shape counts against the address: then it is held back...
            for garbage in ("nope", "Bearer", "ask_short", "x" * 60) * 5:
                assert http.get("/v1/cases", headers=bearer(garbage)).status_code == 401
            wait = limited(http.get("/v1/cases", headers=bearer("more garbage")))
            limited(http.get("/v1/cases"))  # no key at all: the same address
            form = http.post("/login", data={"key": "nope"}, headers={"Origin": server.url})
            assert form.status_code == 429 and 1 <= int(form.headers["retry-after"]) <= 60
            # ... claiming another address does not help: the peer is no trusted proxy ...
            claimed = {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer nope"}
            assert limited(http.get("/v1/cases", headers=claimed)) <= wait
            # ... and keys from the address are not held back by it.
            assert http.get("/v1/cases", headers=people.auth("agent")).status_code == 200
            signed_in = http.post(
                "/login",
                data={"key": people.keys["staff-2"]},
                headers={"Origin": server.url},
                follow_redirects=False,
            )
            assert signed_in.status_code == 303, signed_in.text
            # The session (the client keeps its cookie) reads as its principal.
            assert http.get("/v1/cases").status_code == 200
    finally:
        assert server.stop() == 0


def test_forwarded_for_is_believed_from_a_trusted_proxy_only(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    People(engine)
    proxies = ("--trusted-proxy", "10.9.0.0/16", "--trusted-proxy", "127.0.0.0/8")
    server = Server(store_url, tmp_path / "server.log", options=proxies)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:

            def attempt(forwarded: str) -> httpx.Response:
                headers = {"X-Forwarded-For": forwarded, "Authorization": "Bearer nope"}
                return http.get("/v1/cases", headers=headers)

            # The client behind the proxy is the rightmost address the proxies did not add;
            # what the client wrote to the left of it is not believed.
            for n in range(LIMIT):
                assert attempt(f"198.51.100.{n}, 203.0.113.7").status_code == 401
            limited(attempt("203.0.113.7"))
            limited(attempt("192.0.2.1, 203.0.113.7, 127.0.0.5"))  # through a second proxy
            # Other clients behind the same proxy are not held back, nor is the proxy.
            assert attempt("203.0.113.8").status_code == 401
            assert attempt("203.0.113.7, 203.0.113.8").status_code == 401
            assert http.get("/v1/cases", headers=bearer("nope")).status_code == 401
    finally:
        assert server.stop() == 0


def test_a_bad_trusted_proxy_is_refused_before_serving(store_url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an address or a CIDR"):
        parse_networks(["10.0.0.0/8", "proxy.internal"])
    assert [str(n) for n in parse_networks(["10.0.0.1, ::1", "192.168.1.0/24"])] == [
        "10.0.0.1/32",
        "::1/128",
        "192.168.1.0/24",
    ]
    from click.testing import CliRunner

    from aftersales.commands.cli.main import cli

    result = CliRunner().invoke(
        cli, ["--store", store_url, "serve", "--trusted-proxy", "nonsense", "--port", "1"]
    )
    assert result.exit_code == 2 and "--trusted-proxy" in result.output
    result = CliRunner().invoke(cli, ["--store", store_url, "serve", "--session-idle", "soon"])
    assert result.exit_code == 2 and "--session-idle" in result.output
