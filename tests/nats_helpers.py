"""Test helpers for the real NATS server: a stream of the test's own, reading it back, and a
private nats-server that a test may stop and start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

NATS_URL = "nats://127.0.0.1:4222"


@dataclass(frozen=True)
class Stored:
    seq: int
    subject: str
    msg_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class StreamSpec:
    stream: str
    prefix: str
    servers: str = NATS_URL


def unique_stream() -> StreamSpec:
    tag = uuid.uuid4().hex[:12]
    return StreamSpec(stream=f"T_{tag}", prefix=f"t{tag}")


async def _read(spec: StreamSpec) -> list[Stored]:
    nc = await nats.connect(spec.servers, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream()
        info = await js.stream_info(spec.stream)
        total = info.state.messages
        sub = await js.pull_subscribe(
            f"{spec.prefix}.>", stream=spec.stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
        )
        found: list[Stored] = []
        while len(found) < total:
            for m in await sub.fetch(min(1000, total - len(found)), timeout=5):
                assert m.metadata.sequence is not None
                found.append(
                    Stored(
                        seq=m.metadata.sequence.stream,
                        subject=m.subject,
                        msg_id=(m.headers or {}).get("Nats-Msg-Id", ""),
                        body=json.loads(m.data),
                    )
                )
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


def read_stream(spec: StreamSpec) -> list[Stored]:
    """Every message of the stream, in stream order."""
    return asyncio.run(_read(spec))


async def _delete(spec: StreamSpec) -> None:
    nc = await nats.connect(spec.servers, connect_timeout=2, allow_reconnect=False)
    try:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(spec.stream)
    finally:
        await nc.close()


@pytest.fixture
def stream() -> Iterator[StreamSpec]:
    """A stream and subject prefix of this test's own, deleted afterwards."""
    spec = unique_stream()
    yield spec
    asyncio.run(_delete(spec))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateServer:
    """A nats-server with JetStream on a port and a store directory of its own."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            raise RuntimeError("nats-server is not installed")
        self.process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nats-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None
