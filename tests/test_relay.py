"""The relay against the real nats-server: every event once, in order per case, after kill -9 at
random points, and while the broker goes down and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import PlaceOrder
from aftersales.engine.storage.store import AftersalesStore
from aftersales.projections.relay import Relay, RelayConfig, token
from scripts.workload import generate
from tests.nats_helpers import PrivateServer, Stored, StreamSpec, read_stream, stream, unique_stream

__all__ = ["stream"]  # the fixture, used by name

ROOT = Path(__file__).resolve().parent.parent


def config(spec: StreamSpec, **kw: Any) -> RelayConfig:
    return RelayConfig(servers=spec.servers, stream=spec.stream, prefix=spec.prefix, **kw)


def log_of(store: AftersalesStore) -> list[tuple[int, str, str]]:
    """(notification id, event id, stored JSON text) of every event in the log."""
    notes = store.recorder.select_notifications(start=1, limit=10**9)
    return [
        (n.id, f"{n.originator_id}:{n.originator_version}", bytes(n.state).decode()) for n in notes
    ]


def check_exactly_once_in_order(store: AftersalesStore, found: list[Stored]) -> None:
    log = log_of(store)
    assert [s.msg_id for s in found].count(found[0].msg_id) == 1
    assert sorted(s.msg_id for s in found) == sorted(e for _, e, _ in log), "not each once"
    # The stream holds the log in log order (so every case's and order's events in order).
    assert [s.body["notification_id"] for s in found] == [n for n, _, _ in log]
    versions: dict[str, list[int]] = defaultdict(list)
    for s in found:
        versions[s.body["stored"]["originator_id"]].append(s.body["stored"]["originator_version"])
    assert all(v == list(range(1, len(v) + 1)) for v in versions.values())
    states = {e: text for _, e, text in log}
    assert all(s.body["stored"]["state"] == states[s.msg_id] for s in found)


def test_tokens_never_hold_what_subjects_forbid() -> None:
    assert token("shop-1") == "shop-1"
    assert token("KS.1 *>") == "KS~2E1~20~2A~3E"
    assert token("店铺") == "~E5~BA~97~E9~93~BA"
    assert token("a~2E") != token("a.")
    assert token("") == "~"


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--name", "KS-1", "relay name"),
        ("--name", "Nats", "relay name"),
        ("--name", "a" * 33, "relay name"),
        ("--name", "x;drop", "relay name"),
        ("--prefix", "", "subject prefix"),
        ("--prefix", "a..b", "subject prefix"),
        ("--stream", "A.B", "stream"),
    ],
)
def test_relay_settings_that_cannot_be_used_are_refused(
    engine: Engine, store_url: str, option: str, value: str, says: str
) -> None:
    """The name becomes the relay's table name on both backends, the prefix and stream NATS
    names: anything else is exit 2 before the store is touched (a name once reached SQLite as
    a syntax error, exit 1; an empty prefix a traceback). Checked in this process; the next
    test checks one in a process of its own."""
    from click.testing import CliRunner

    from aftersales.commands.cli.main import cli

    for sub in ("status", "run"):
        args = ["--store", store_url, "relay", sub, "--nats", "nats://127.0.0.1:1"]
        out = CliRunner().invoke(cli, [*args, option, value, "--json"])
        assert out.exit_code == 2, out.output
        assert isinstance(out.exception, SystemExit), out.exception  # no traceback
        assert says in json.loads(out.stdout)["error"]["message"]
        assert "Traceback" not in out.stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_relay_setting_is_refused_in_a_process_of_its_own(engine: Engine, store_url: str) -> None:
    program = [sys.executable, "-m", "aftersales.commands.cli.main", "--store", store_url, "relay"]
    for sub in ("status", "run"):
        out = subprocess.run(
            [*program, sub, "--nats", "nats://127.0.0.1:1", "--name", "x;drop", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, out.stderr
        assert "relay name" in json.loads(out.stdout)["error"]["message"]
        assert "Traceback" not in out.stderr


def test_every_event_once_in_log_order_with_documented_payload(
    store_url: str, stream: StreamSpec
) -> None:
    with AftersalesStore(store_url) as store:
        generate(store, 400, merchants=3, seed=4)
        relay = Relay(store, config(stream, batch_size=97))
        published = asyncio.run(relay.run())
        head = store.recorder.max_notification_id()
        assert published == len(log_of(store))
        assert relay.status()["position"] == head
        assert relay.status()["lag"] == 0
        found = read_stream(stream)
        check_exactly_once_in_order(store, found)

        first = found[0]
        assert first.body["format_version"] == 1
        assert first.body["type"] == "OrderPlaced"
        merchant, key = first.body["merchant_id"], first.body["order_id"]
        assert first.subject == f"{stream.prefix}.{token(merchant)}.{token(key)}.OrderPlaced"
        opened = next(s for s in found if s.body["type"] == "CaseOpened")
        assert opened.subject.endswith(f".{opened.body['case_id']}.CaseOpened")
        assert (
            json.loads(opened.body["stored"]["state"])["merchant_id"] == opened.body["merchant_id"]
        )

        # Its position lost (as after a crash before the tracking write): all sent again,
        # and the broker's de-duplication keeps one of each.
        relay.recorder.reset()
        assert asyncio.run(Relay(store, config(stream, batch_size=500)).run()) == published
        assert len(read_stream(stream)) == len(found)


def _relay_cli(store_url: str, spec: StreamSpec, name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aftersales.commands.cli.main",
            "--store",
            store_url,
            "relay",
            "run",
            "--stream",
            spec.stream,
            "--prefix",
            spec.prefix,
            "--name",
            name,
            "--json",
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def kill_9_trials(store_url: str, trials: int, seed: int) -> None:
    rng = random.Random(seed)
    specs = []
    try:
        with AftersalesStore(store_url) as store:
            generate(store, 1000, merchants=4, seed=seed)
            head = store.recorder.max_notification_id() or 0
            killed_between = 0
            for trial in range(trials):
                spec = unique_stream()
                specs.append(spec)
                name = f"k{trial}"
                position = 0
                for _kill in range(3):
                    batch = str(rng.choice([5, 11, 30]))
                    run = _relay_cli(store_url, spec, name, "--batch-size", batch)
                    relay = Relay(store, config(spec, name=name))
                    # Once it has moved (the interpreter takes a while to start), at a random
                    # moment: between rounds, mid-publish, or acknowledged but not yet tracked.
                    while run.poll() is None and relay.position() <= position:
                        time.sleep(0.002)
                    time.sleep(rng.uniform(0, 0.08))
                    with contextlib.suppress(ProcessLookupError):  # it may have finished
                        os.kill(run.pid, signal.SIGKILL)
                    run.communicate()
                    now = relay.position()
                    assert now >= position  # never backwards
                    killed_between += 0 < now < head
                    position = now
                finish = _relay_cli(store_url, spec, name)
                out, err = finish.communicate(timeout=120)
                assert finish.returncode == 0, err
                assert [r["lag"] for r in json.loads(out)["relays"]] == [0, 0]
                found = read_stream(spec)
                events = [s for s in found if ".notify." not in s.subject]
                check_exactly_once_in_order(store, events)
                # The buyer messages went out alongside, each once too.
                told = [s.msg_id for s in found if ".notify." in s.subject]
                assert told and len(set(told)) == len(told) == len(found) - len(events)
                rows = store.query("SELECT count(*) AS n FROM {t}proj_notify_messages")
                assert len(told) == rows[0]["n"]
            assert killed_between > 0, "no kill landed in the middle of the log"
    finally:
        from tests.nats_helpers import _delete

        for spec in specs:
            asyncio.run(_delete(spec))


def test_kill_9_at_random_points_then_restart_publishes_each_event_once(store_url: str) -> None:
    kill_9_trials(store_url, trials=1, seed=11)


@pytest.mark.slow
def test_kill_9_twenty_trials(store_url: str) -> None:
    kill_9_trials(store_url, trials=20, seed=12)


def test_broker_down_then_back_loses_and_repeats_nothing(store_url: str, tmp_path: Path) -> None:
    server = PrivateServer(tmp_path / "nats")
    spec = StreamSpec(stream="DOWNUP", prefix="downup", servers=server.url)
    with Engine(store_url) as engine:
        store = engine.store

        def place(n: int, tag: str) -> None:
            for i in range(n):
                engine.handle(
                    PlaceOrder(
                        order_id=f"{tag}.{i}", merchant="shop 1", buyer="b", lines=["X:1:1.00"]
                    )
                )

        place(5, "A")
        relay = Relay(store, config(spec, min_backoff=0.05, max_backoff=0.2))
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        thread = threading.Thread(
            target=lambda: loop.run_until_complete(relay.run(stop, follow=True, poll=0.02))
        )
        thread.start()
        try:
            # Nothing listens yet: the relay waits, tries again, and keeps its position.
            _until(lambda: relay.stats.failures >= 3, 10)
            assert relay.position() == 0
            server.start()
            _until(lambda: relay.position() == store.recorder.max_notification_id(), 20)
            server.stop()
            place(4, "B")
            failures = relay.stats.failures
            _until(lambda: relay.stats.failures > failures, 10)
            assert relay.position() < (store.recorder.max_notification_id() or 0)
            server.start()
            _until(lambda: relay.position() == store.recorder.max_notification_id(), 20)
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(30)
        try:
            found = read_stream(spec)
            check_exactly_once_in_order(store, found)
            assert found[0].subject == "downup.shop~201.A~2E0.OrderPlaced"
        finally:
            server.stop()


def _until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


def test_a_refused_message_keeps_the_position_and_the_retry_fills_the_gap(
    store_url: str, stream: StreamSpec
) -> None:
    """A stream that refuses part of a batch (it is full): the relay's position stays where
    it was; once the stream takes messages again the whole batch is sent, the ones stored
    before dropped as duplicates."""
    import nats
    from nats.js.api import DiscardPolicy, StreamConfig

    from aftersales.projections.relay import BrokerError

    async def make(max_msgs: int) -> None:
        nc = await nats.connect(stream.servers)
        js = nc.jetstream()
        config = StreamConfig(
            name=stream.stream,
            subjects=[f"{stream.prefix}.>"],
            max_msgs=max_msgs,
            discard=DiscardPolicy.NEW,
            duplicate_window=3600,
        )
        if max_msgs == 4:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
        await nc.close()

    with AftersalesStore(store_url) as store:
        generate(store, 8, merchants=2, seed=3)
        asyncio.run(make(4))
        relay = Relay(store, config(stream, batch_size=1000))

        async def one_round() -> None:
            try:
                await relay.round()
            finally:
                await relay._close()

        with pytest.raises(BrokerError, match="refused"):
            asyncio.run(one_round())
        assert relay.position() == 0
        asyncio.run(make(-1))
        asyncio.run(relay.run())
        assert relay.position() == store.recorder.max_notification_id()
        check_exactly_once_in_order(store, read_stream(stream))
