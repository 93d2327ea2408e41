"""Signed webhooks against local test servers (127.0.0.1 only): signatures a receiver written
from the documentation accepts, failures, timeouts and recovery, dead deliveries replayed, and a
slow endpoint that holds up nobody else."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import ApproveCase
from aftersales.engine.domain.errors import BadInput, NotFound
from aftersales.projections.webhooks import Settings, Webhooks
from tests.conftest import at, open_return, place_delivered
from tests.nats_helpers import free_port


def receiver_accepts(secret: str, header: str, body: bytes, tolerance: float = 300) -> bool:
    """A receiver as the documentation describes one: split ``t=...,v1=...``, HMAC-SHA256 the
    timestamp, a dot and the raw body with the secret, compare in constant time, and refuse
    an old timestamp."""
    parts = dict(p.split("=", 1) for p in header.split(","))
    if "t" not in parts or "v1" not in parts or not parts["t"].isdigit():
        return False
    expected = hmac.new(
        secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    fresh = abs(time.time() - int(parts["t"])) <= tolerance
    return fresh and hmac.compare_digest(expected, parts["v1"])


class Receiver:
    """A local endpoint: answers as ``mode`` says ("ok", "fail" = 500, "slow" = no answer
    for ``delay`` seconds), and keeps every request it got."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.plan: list[str] = []
        self.delay = 2.0
        self.got: list[tuple[dict[str, str], bytes, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                mode = receiver.plan.pop(0) if receiver.plan else receiver.mode
                receiver.got.append((dict(self.headers), body, mode))
                if mode == "slow":
                    time.sleep(receiver.delay)
                self.send_response(500 if mode == "fail" else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def delivered(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, mode in self.got if mode == "ok"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def receiver(made: list[Receiver]) -> Receiver:
    r = Receiver()
    made.append(r)
    return r


class Follower:
    """``Webhooks.run(follow=True)`` in a thread of its own, stopped at the end."""

    def __init__(self, hooks: Webhooks) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(
            target=lambda: self.loop.run_until_complete(hooks.run(self.stop, True, 0.02))
        )
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def until(check: Any, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


def test_each_event_of_the_merchant_signed_once_in_log_order(
    engine: Engine, receivers: list[Receiver]
) -> None:
    mine, filtered = receiver(receivers), receiver(receivers)
    hooks = Webhooks(engine.store)
    endpoint, secret = hooks.add("shop-1", mine.url)
    _, other_secret = hooks.add("shop-1", filtered.url, ["CaseOpened"])
    hooks.add("shop-2", "http://127.0.0.1:9/never")  # no events of shop-2
    cid = open_return(engine, "W-1", merchant="shop-1")
    engine.handle(ApproveCase(case_id=cid, at=at(days=3, hours=1)))
    asyncio.run(hooks.run())

    log = engine.store.recorder.select_notifications(start=1, limit=1000)
    expected = [f"{n.originator_id}:{n.originator_version}" for n in log]
    assert [b["event_id"] for b in mine.delivered()] == expected
    assert [b["type"] for b in filtered.delivered()] == ["CaseOpened"]
    for headers, body, _ in mine.got:
        assert receiver_accepts(secret, headers["Aftersales-Signature"], body)
        assert not receiver_accepts(other_secret, headers["Aftersales-Signature"], body)
        assert not receiver_accepts(secret, headers["Aftersales-Signature"], body + b" ")
        assert headers["Aftersales-Event-Id"] == json.loads(body)["event_id"]
    assert mine.delivered()[-1]["stored"]["originator_id"] == cid
    # Queued once: running again sends nothing new; the secret is never listed.
    asyncio.run(hooks.run())
    assert len(mine.got) == len(expected)
    assert secret not in json.dumps([e.public() for e in hooks.endpoints()])
    assert {d["status"] for d in hooks.deliveries()} == {"delivered"}
    assert all(d["endpoint_id"] != endpoint.id or d["attempts"] == 1 for d in hooks.deliveries())
    with pytest.raises(BadInput, match="not an http"):
        hooks.add("shop-1", "ftp://127.0.0.1/x")


def test_failure_and_timeout_are_retried_until_the_endpoint_recovers(
    engine: Engine, receivers: list[Receiver]
) -> None:
    flaky = receiver(receivers)
    flaky.plan = ["fail", "slow"]
    flaky.delay = 1.0
    hooks = Webhooks(engine.store, Settings(timeout=0.3, first_retry=0.05, max_retry=0.1))
    hooks.add("shop-1", flaky.url, ["OrderPlaced"])
    place_delivered(engine, "R-1")
    follower = Follower(hooks)
    try:
        until(lambda: [d["status"] for d in hooks.deliveries()] == ["delivered"], 10)
    finally:
        follower.close()
    (delivery,) = hooks.deliveries()
    assert delivery["attempts"] == 3
    assert [mode for _, _, mode in flaky.got] == ["fail", "slow", "ok"]
    assert hooks.deliveries(failed=True) == []


def test_dead_after_retrying_for_its_time_then_replayed(
    engine: Engine, receivers: list[Receiver]
) -> None:
    down = receiver(receivers)
    down.mode = "fail"
    hooks = Webhooks(
        engine.store, Settings(timeout=0.3, first_retry=0.02, max_retry=0.05, retry_for=0.3)
    )
    endpoint, _ = hooks.add("shop-1", down.url, ["OrderPlaced"])
    hooks.add("shop-1", f"http://127.0.0.1:{free_port()}/nobody", ["OrderPlaced"])
    place_delivered(engine, "D-1")
    follower = Follower(hooks)
    try:
        until(lambda: len([d for d in hooks.deliveries() if d["status"] == "dead"]) == 2, 10)
    finally:
        follower.close()
    failed = hooks.deliveries(failed=True)
    assert {d["status"] for d in failed} == {"dead"} and len(failed) == 2
    assert any("Connection refused" in (d["last_error"] or "") for d in failed)
    assert any(d["last_error"] == "HTTP 500" for d in failed)

    down.mode = "ok"
    assert hooks.replay(endpoint.id) == 1
    asyncio.run(hooks.run())
    assert [d["status"] for d in hooks.deliveries(endpoint=endpoint.id)] == ["delivered"]
    assert len(down.delivered()) == 1
    with pytest.raises(NotFound):
        hooks.replay(endpoint.id)


def test_a_slow_endpoint_never_delays_another_merchants_deliveries(
    engine: Engine, receivers: list[Receiver]
) -> None:
    slow, live = receiver(receivers), receiver(receivers)
    slow.mode, slow.delay = "slow", 3.0
    hooks = Webhooks(engine.store, Settings(timeout=2.5, first_retry=5))
    hooks.add("shop-slow", slow.url)
    hooks.add("shop-live", live.url)
    for i in range(5):
        place_delivered(engine, f"S-{i}", merchant="shop-slow")
    follower = Follower(hooks)
    try:
        until(lambda: len(slow.got) >= 1, 5)  # the slow one is now holding its request
        for i in range(5):
            place_delivered(engine, f"L-{i}", merchant="shop-live")
        took = until(lambda: len(live.delivered()) == 15, 5)  # 3 events an order
        assert len(slow.got) == 1  # still on its first delivery
    finally:
        follower.close()
    assert took < 1.5, took


def test_the_command_line_shows_the_secret_once(store_url: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable,
            "-m",
            "aftersales.commands.cli.main",
            "--store",
            store_url,
            "webhook",
            *args,
        ]
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=60)

    added = cli("add", "--merchant", "shop-1", "--url", "http://127.0.0.1:9/x", "--json")
    assert added.returncode == 0, added.stderr
    secret = json.loads(added.stdout)["secret"]
    assert secret.startswith("whsec_")
    listed = cli("list", "--json")
    assert listed.returncode == 0 and secret not in listed.stdout
    assert json.loads(listed.stdout)[0]["url"] == "http://127.0.0.1:9/x"
    assert cli("replay").returncode == 4  # nothing dead to replay
