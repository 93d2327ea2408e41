"""`aftersales serve` as a real process on a free port, on both backends: keys wrong, revoked
and expired; idempotency and If-Match; a concurrent approve and reject through two servers on
one store; SIGTERM with requests in flight loses no acknowledged action."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aftersales.engine.access.principal_store import create_key
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ApproveCase
from tests.people import People

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """One `aftersales serve` process, its address and its log."""

    def __init__(
        self,
        store_url: str,
        log: Path,
        workers: int = 1,
        options: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        args = ["--store", store_url, "serve", "--port", str(self.port)]
        args += ["--workers", str(workers), *options]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aftersales.commands.cli.main", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=log.parent,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"the server did not start: {log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def served(engine: Engine, store_url: str, tmp_path: Path) -> Iterator[tuple[Server, People]]:
    people = People(engine)
    server = Server(store_url, tmp_path / "server.log")
    try:
        yield server, people
    finally:
        server.stop()


def test_keys_idempotency_and_if_match_over_http(
    served: tuple[Server, People], store_url: str
) -> None:
    server, people = served
    case = people.cases["shop-1"]
    now = datetime.now(UTC)
    expiring = create_key(people.engine.store, "staff-1", now, now + timedelta(seconds=2))
    with httpx.Client(base_url=server.url, timeout=10) as http:
        path = f"/v1/cases/{case}/message"
        forged = people.keys["staff-1"][:-6] + "AAAAAA"
        for key in ("-", "nope", forged):
            response = http.post(
                path, json={"text": "x"}, headers={"Authorization": f"Bearer {key}"}
            )
            assert response.status_code == 401, response.text
        staff = people.auth("staff-1")
        first = http.post(path, json={"text": "a"}, headers={**staff, "Idempotency-Key": "m-1"})
        assert first.status_code == 200, first.text
        assert first.json()["messages"][-1]["by"] == "staff-1"
        events = people.events()
        again = http.post(path, json={"text": "a"}, headers={**staff, "Idempotency-Key": "m-1"})
        assert again.json() == first.json() and people.events() == events
        version = int(first.headers["etag"].strip('"'))
        stale = http.post(
            path, json={"text": "b"}, headers={**staff, "If-Match": f'"{version - 1}"'}
        )
        assert stale.status_code == 412
        fresh = http.post(path, json={"text": "b"}, headers={**staff, "If-Match": f'"{version}"'})
        assert fresh.status_code == 200 and fresh.headers["etag"] == f'"{version + 1}"'

        # Revoked with the command line: refused as soon as the server hears of it (a kept
        # key is forgotten on the revocation's notification; on SQLite none is kept).
        revoke = subprocess.run(
            [
                sys.executable,
                "-m",
                "aftersales.commands.cli.main",
                "--store",
                store_url,
                "key",
                "revoke",
                people.key_ids["staff-1"],
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
        )
        assert revoke.returncode == 0, revoke.stderr
        deadline = time.monotonic() + 30  # far beyond the milliseconds it takes
        while (response := http.get(f"/v1/cases/{case}", headers=staff)).status_code == 200:
            assert time.monotonic() < deadline, "the revocation never reached the server"
            time.sleep(0.05)
        assert response.status_code == 401 and "revoked" in response.text

        short = {"Authorization": f"Bearer {expiring['key']}"}
        if (datetime.now(UTC) - now).total_seconds() < 1.5:
            assert http.get(f"/v1/cases/{case}", headers=short).status_code == 200
        time.sleep(max(0.0, 2.1 - (datetime.now(UTC) - now).total_seconds()))
        response = http.get(f"/v1/cases/{case}", headers=short)
        assert response.status_code == 401 and "expired" in response.text
    assert server.stop() == 0
    log = server.log.read_text()
    assert "refused" in log
    for key in (*people.keys.values(), forged, expiring["key"]):
        assert key not in log


def race(
    headers: dict[str, str], *requests: tuple[httpx.Client, str, dict[str, Any]]
) -> dict[str, httpx.Response]:
    """POST each request on a thread of its own, all at once; the responses by path."""
    start = threading.Barrier(len(requests))
    results: dict[str, httpx.Response] = {}

    def post(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
        start.wait()
        results[path] = http.post(path, json=body, headers=headers)

    threads = [threading.Thread(target=post, args=request) for request in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_approve_and_reject_through_two_servers(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    people = People(engine)
    one = Server(store_url, tmp_path / "one.log")
    two = Server(store_url, tmp_path / "two.log")
    staff = people.auth("staff-1")
    try:
        with httpx.Client(base_url=one.url) as a, httpx.Client(base_url=two.url) as b:
            for round_ in range(2):
                people.place(f"R-{round_}", "shop-1", "buyer-1")
                case = people.open(f"R-{round_}")
                # Each server has the case in its cache, one of them at an old version.
                for http in (a, b):
                    reply = http.post(
                        f"/v1/cases/{case}/message", json={"text": "hi"}, headers=staff
                    )
                    assert reply.status_code == 200
                results = race(
                    staff,
                    (a, f"/v1/cases/{case}/approve", {}),
                    (b, f"/v1/cases/{case}/reject", {"reason": "r", "communication": "c"}),
                )
                codes = sorted(r.status_code for r in results.values())
                assert codes[0] == 200 and codes[1] in (409, 412), {
                    k: r.text for k, r in results.items()
                }
                winner = next(k for k, r in results.items() if r.status_code == 200)
                winner = winner.rsplit("/", 1)[-1]
                shown = a.get(f"/v1/cases/{case}", headers=staff).json()
                assert shown["status"] == ("refunded" if winner == "approve" else "rejected")
    finally:
        assert one.stop() == 0
        assert two.stop() == 0


def test_sigterm_finishes_requests_in_flight_and_loses_no_acknowledged_action(
    served: tuple[Server, People],
) -> None:
    server, people = served
    case = people.cases["shop-1"]
    acknowledged: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for i in range(10_000):
                if stop.is_set():
                    return
                text = f"c{n}-{i}"
                try:
                    reply = http.post(
                        f"/v1/cases/{case}/message",
                        json={"text": text},
                        headers=people.auth("staff-1"),
                    )
                except httpx.HTTPError:
                    return  # the server has stopped listening
                if reply.status_code == 200:
                    acknowledged.append(text)
                else:
                    failures.append(reply.text)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    assert server.stop() == 0
    stop.set()
    for t in threads:
        t.join()
    assert len(acknowledged) > 10 and not failures, failures[:3]
    texts = {m["text"] for m in people.engine.get_case(case)["messages"]}
    assert set(acknowledged) <= texts


def test_concurrent_requests_one_refused_none_sunk(served: tuple[Server, People]) -> None:
    server, people = served
    one, two = people.cases["shop-1"], people.cases["shop-2"]
    people.engine.handle(ApproveCase.parse({"case_id": two}))  # refunded: approving is refused
    before = people.events()
    with httpx.Client(base_url=server.url, timeout=10) as http:
        requests = [
            (http, f"/v1/cases/{one}/message?n={n}", {"text": f"t{n}", "as": "platform"})
            for n in range(8)
        ]
        requests += [(http, f"/v1/cases/{two}/approve?n={n}", {}) for n in range(3)]
        results = race(people.auth("ops") | {"Content-Type": "application/json"}, *requests)
    codes = sorted(r.status_code for r in results.values())
    assert codes == [200] * 8 + [409] * 3, {p: r.text for p, r in results.items()}
    assert people.events() == before + 8
    versions = sorted(int(r.headers["etag"].strip('"')) for r in results.values() if r.is_success)
    assert versions == list(range(2, 10))  # each saw the ones before it, none lost
