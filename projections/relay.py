"""The relay: every event of the log, in log order, to a NATS JetStream stream.

The relay is a reader of the notification log like the projections, with a tracking record of its
own kept by the same machinery (``projections.base``: a view with no tables, so its recorder is a
``ViewRecorder`` that writes only the tracking record, and refuses to move it from a position it
no longer holds). One round:

1. read the events after the relay's position (one batch, in notification order);
2. publish each to ``<prefix>.<merchant>.<case or order>.<EventType>`` with the header
   ``Nats-Msg-Id: <originator id>:<version>`` (the event's id), all of the batch pipelined on one
   connection, so the stream stores them in log order;
3. wait until the broker acknowledged every one of them;
4. only then move the tracking record to the batch's last notification id.

A relay killed between 3 and 4 sends the batch again when it restarts; the stream's duplicate
window (``duplicate_window``, default a day) drops every message whose id it has already
stored, so each event is in the stream once. A broker that is down, refuses a message or does
not acknowledge in time makes the relay close the connection, wait (doubling the wait up to
``max_backoff``), connect again and resend from its position: it never skips an event.

The payload (``format_version`` 1) is JSON: the event's notification id, id, type, merchant and
case or order, and ``stored``, the event exactly as stored (the same form ``audit --export``
writes: originator id, version, topic and the stored JSON text, whose hash chain a consumer can
check).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any
from uuid import UUID

import nats
from eventsourcing.persistence import Notification, Tracking
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from aftersales.engine.domain.errors import BadInput
from aftersales.engine.integrity.audit_bundle import stored_json
from aftersales.engine.storage.store import APP_NAME, AftersalesStore
from aftersales.projections.base import (
    Changes,
    Folds,
    StalePosition,
    View,
    ViewRecorder,
    recorder_class,
)

log = logging.getLogger("aftersales.relay")

FORMAT_VERSION = 1
DEFAULT_NATS = "nats://127.0.0.1:4222"
DEFAULT_PREFIX = "aftersales"
DEFAULT_STREAM = "AFTERSALES"
DEFAULT_BATCH = 1000
DAY = 24 * 3600.0
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# Relay names become table names (``proj_relay_<name>_tracking``, and ``<name>_notify`` for
# the notifications' relay): PostgreSQL's 63-character limit with room to spare.
_RELAY_NAME = re.compile(r"[a-z0-9_]{1,40}")
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def token(text: str) -> str:
    """One subject token for any text: letters, digits, '-' and '_' stay; every other
    character (NATS subjects take no '.', ' ', '*' or '>') is written ``~XX`` per UTF-8 byte, so
    two different texts never share a token (``KS.1`` -> ``KS~2E1``); the empty text is ``~``."""
    if not text:
        return "~"
    if all(c in _SAFE for c in text):
        return text
    return "".join(
        c if c in _SAFE else "".join(f"~{b:02X}" for b in c.encode("utf-8")) for c in text
    )


def _check_name(kind: str, value: str, allowed: str) -> str:
    if not value or any(c not in _SAFE and c not in allowed for c in value):
        raise BadInput(f"{kind} {value!r} must be letters, digits, '-' or '_'")
    return value


def check_relay_name(name: str, limit: int = 32) -> str:
    if len(name) > limit or not _RELAY_NAME.fullmatch(name):
        raise BadInput(
            f"relay name {name[: limit + 8]!r} must be 1 to {limit} lower-case letters, digits "
            "or '_' (it names the relay's table)"
        )
    return name


@cache
def relay_view(name: str) -> type[View]:
    """The relay's place in the log as a view with no tables: its tracking table is
    ``proj_relay_<name>_tracking``, one per relay name (one per broker a store feeds). The
    name is part of a table's name on both backends, so it is held to what such a name may
    be: lower-case letters, digits and '_'."""
    check_relay_name(name, 40)
    return type(
        f"Relay_{name}",
        (View,),
        {"name": f"relay_{name}", "tables": (), "folds": Folds(), "doc": "the relay's position"},
    )


@dataclass(frozen=True)
class RelayConfig:
    servers: str = DEFAULT_NATS
    stream: str = DEFAULT_STREAM
    prefix: str = DEFAULT_PREFIX
    name: str = "nats"
    batch_size: int = DEFAULT_BATCH
    ack_timeout: float = 10.0
    connect_timeout: float = 2.0
    min_backoff: float = 0.1
    max_backoff: float = 10.0
    duplicate_window: float = DAY

    def __post_init__(self) -> None:
        check_relay_name(self.name)
        _check_name("stream", self.stream, "")
        for part in self.prefix.split("."):
            _check_name("subject prefix", part, "")


@dataclass(frozen=True)
class Message:
    """One event as the relay publishes it."""

    notification_id: int
    subject: str
    msg_id: str
    payload: bytes
    headers: dict[str, str]


# Who an event belongs to: read once per aggregate from its first event ----------------------


Originator = UUID | str


class Owners:
    """Each aggregate's merchant and its subject key (a case's id, an order's order id), read
    from its first stored event (``CaseOpened`` or ``OrderPlaced``) and kept in memory."""

    LIMIT = 200_000

    def __init__(self, store: AftersalesStore) -> None:
        self.store = store
        self.known: dict[Originator, tuple[str, str, str]] = {}

    def find(self, notes: Sequence[Notification]) -> dict[Originator, tuple[str, str, str]]:
        wanted = {n.originator_id for n in notes} - self.known.keys()
        if len(self.known) + len(wanted) > self.LIMIT:
            self.known.clear()
            wanted = {n.originator_id for n in notes}
        first = {n.originator_id: n for n in notes if n.originator_version == 1}
        missing = [uid for uid in wanted if uid not in first]
        states = {uid: bytes(first[uid].state) for uid in wanted & first.keys()}
        states.update(self._first_states(missing))
        for uid, state in states.items():
            self.known[uid] = _owner(uid, json.loads(state))
        return self.known

    def _first_states(self, ids: Sequence[Originator]) -> dict[Originator, bytes]:
        asked = {uid if isinstance(uid, UUID) else UUID(uid): uid for uid in ids}
        rows = self.store.select_rows(list(asked), first_only=True)
        return {asked[uid]: state for uid, _, _, state in rows}


def _owner(uid: Originator, first: dict[str, Any]) -> tuple[str, str, str]:
    """(merchant, key kind, key): a case is keyed by its id, an order by its order id."""
    merchant = str(first.get("merchant_id", ""))
    if "order_ref" in first:  # a case's CaseOpened names the order it is about
        return merchant, "case_id", str(uid)
    return merchant, "order_id", str(first.get("order_id", uid))


def event_type(topic: str) -> str:
    return topic.rpartition(":")[2] or topic


def message(prefix: str, note: Notification, owner: tuple[str, str, str]) -> Message:
    merchant, key_kind, key = owner
    kind = event_type(note.topic)
    msg_id = f"{note.originator_id}:{note.originator_version}"
    body = {
        "format_version": FORMAT_VERSION,
        "notification_id": note.id,
        "event_id": msg_id,
        "type": kind,
        "merchant_id": merchant,
        key_kind: key,
        "stored": stored_json(note),
    }
    return Message(
        notification_id=note.id,
        subject=f"{prefix}.{token(merchant)}.{token(key)}.{kind}",
        msg_id=msg_id,
        payload=_encode(body).encode("utf-8"),
        headers={
            "Nats-Msg-Id": msg_id,
            "Aftersales-Notification-Id": str(note.id),
            "Aftersales-Format-Version": str(FORMAT_VERSION),
        },
    )


# The relay ---------------------------------------------------------------------------------


class _Batch:
    """The acknowledgements of one batch as they come in."""

    def __init__(self, size: int, stream: str) -> None:
        self.waiting = set(range(size))
        self.stream = stream
        self.error: tuple[int, str] | None = None
        self.done = asyncio.Event()
        if not size:
            self.done.set()

    def take(self, msg: Msg) -> None:
        try:
            index = int(msg.subject.rpartition(".")[2])
        except ValueError:
            return
        if index not in self.waiting:
            return  # a late answer to an earlier try
        self.waiting.discard(index)
        problem = _ack_problem(msg, self.stream)
        if problem is not None and self.error is None:
            self.error = (index, problem)
        if not self.waiting or self.error is not None:
            self.done.set()


def _ack_problem(msg: Msg, stream: str) -> str | None:
    """None for the stream's acknowledgement of a stored (or already stored) message."""
    if not msg.data:  # a status message: no stream takes the subject (503), or the like
        status = (msg.headers or {}).get("Status", "?")
        return f"no acknowledgement (status {status})"
    try:
        answer = json.loads(msg.data)
    except ValueError:
        return "an acknowledgement that is not JSON"
    if "error" in answer:
        return f"refused: {answer['error'].get('description', answer['error'])}"
    if answer.get("stream") != stream:
        return f"stored by stream {answer.get('stream')!r}, not {stream!r}"
    return None


class BrokerError(Exception):
    """The broker could not be reached, or did not acknowledge every message of a batch."""


@dataclass
class RelayStats:
    published: int = 0
    rounds: int = 0
    failures: int = 0
    last_error: str = ""


class Relay:
    """The relay of one store to one stream (see the module's documentation)."""

    def __init__(
        self,
        store: AftersalesStore,
        config: RelayConfig,
        on_acked: Callable[[Sequence[Message]], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.view = self.tracking_view()
        self.recorder: ViewRecorder = self._recorder()
        self.owners = Owners(store)
        self.stats = RelayStats()
        self.on_acked = on_acked
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._inbox = ""
        self._batch: _Batch | None = None
        self._ahead: tuple[int, asyncio.Future[list[Message]]] | None = None

    def tracking_view(self) -> type[View]:
        """The table-less view whose tracking record is this relay's position."""
        return relay_view(self.config.name)

    def _recorder(self) -> ViewRecorder:
        cls = recorder_class(self.view, self.store.is_postgres)
        recorder = cls(datastore=self.store.recorder.datastore)  # type: ignore[call-arg,attr-defined]
        recorder.create_table()  # type: ignore[attr-defined]
        return recorder

    # Where it is ----------------------------------------------------------------------------

    def position(self) -> int:
        return self.recorder.max_tracking_id(APP_NAME) or 0

    def head(self) -> int:
        return self.store.recorder.max_notification_id() or 0

    def status(self) -> dict[str, Any]:
        position, head = self.position(), self.head()
        return {
            "relay": self.config.name,
            "stream": self.config.stream,
            "prefix": self.config.prefix,
            "position": position,
            "head": head,
            "behind": head - position,
            "lag": self._pending(position) if position < head else 0,
        }

    def _pending(self, position: int) -> int:
        """How many events lie after ``position`` (notification ids may have gaps)."""
        rows = self.store.query(
            f"SELECT count(*) AS n FROM {{t}}{self.store.recorder.events_table_name} "  # type: ignore[attr-defined]
            + ("WHERE notification_id > ?" if self.store.is_postgres else "WHERE rowid > ?"),
            (position,),
        )
        return int(rows[0]["n"])

    # The broker ------------------------------------------------------------------------------

    async def _connect(self) -> JetStreamContext:
        if self._js is not None and self._nc is not None and self._nc.is_connected:
            return self._js
        await self._close()
        try:
            nc = await nats.connect(
                self.config.servers,
                connect_timeout=int(max(1, self.config.connect_timeout)),
                # One try per call: the relay's own loop waits and tries again.
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                error_cb=_quiet,
            )
        except Exception as exc:  # the client raises several kinds; all mean "not now"
            raise BrokerError(f"cannot connect to {self.config.servers}: {_one_line(exc)}") from exc
        self._nc = nc
        self._js = js = nc.jetstream(timeout=self.config.ack_timeout)
        await self._ensure_stream(js)
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*", cb=self._on_ack, pending_msgs_limit=1_000_000)
        return js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        subjects = [f"{self.config.prefix}.>"]
        try:
            info = await js.stream_info(self.config.stream)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=self.config.stream,
                    subjects=subjects,
                    duplicate_window=self.config.duplicate_window,
                )
            )
            return
        except Exception as exc:
            raise BrokerError(f"stream {self.config.stream}: {_one_line(exc)}") from exc
        have = set(info.config.subjects or ())
        if not set(subjects) <= have:
            raise BrokerError(
                f"stream {self.config.stream} exists but does not take {subjects[0]} "
                f"(its subjects: {sorted(have)})"
            )

    async def _close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            try:
                await nc.close()
            except Exception as exc:  # closing a broken connection
                log.debug("closing the connection: %s", _one_line(exc))

    async def publish(
        self, messages: Sequence[Message], meanwhile: Callable[[], None] | None = None
    ) -> None:
        """Publish a batch pipelined, in order, and wait until the stream acknowledged every
        message (calling ``meanwhile`` once all are sent, before waiting).

        Each message's reply subject is ``<inbox>.<n>`` on one subscription of the relay's, and
        the acknowledgements are counted there: the client's own ``publish_async`` makes a
        future per message and costs two and a half times as much."""
        await self._connect()
        nc = self._nc
        assert nc is not None
        batch = _Batch(len(messages), self.config.stream)
        self._batch = batch
        try:
            for i, m in enumerate(messages):
                await nc.publish(
                    m.subject, m.payload, reply=f"{self._inbox}.{i}", headers=m.headers
                )
            if meanwhile is not None:
                meanwhile()
            await asyncio.wait_for(batch.done.wait(), self.config.ack_timeout)
        except Exception as exc:
            await self._close()
            raise BrokerError(f"publishing: {_one_line(exc)}") from exc
        finally:
            self._batch = None
        if batch.error is not None:
            await self._close()
            index, problem = batch.error
            raise BrokerError(f"{messages[index].subject}: {problem}")

    async def _on_ack(self, msg: Msg) -> None:
        batch = self._batch
        if batch is not None:
            batch.take(msg)

    # One round, catching up, following --------------------------------------------------------

    def read(self, position: int) -> list[Message]:
        notes = self.store.recorder.select_notifications(
            start=position, limit=self.config.batch_size, inclusive_of_start=False
        )
        owners = self.owners.find(notes)
        prefix = self.config.prefix
        return [message(prefix, n, owners[n.originator_id]) for n in notes]

    async def _next(self, position: int) -> list[Message]:
        """The batch after ``position``: the one read ahead while the last batch's
        acknowledgements were awaited, if it was read from there, else read now."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            start, task = ahead
            try:
                found = await task
            except Exception:  # read again below, where an error is the caller's
                found = None
            if start == position and found is not None:
                return found
        return self.read(position)

    async def _drop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            await asyncio.gather(ahead[1], return_exceptions=True)

    async def round(self) -> int:
        """Relay the next batch; return how many events it held (0: the relay is at the head).
        The position moves only after every message of the batch was acknowledged. The next
        batch is read (in a thread) while the broker acknowledges this one."""
        tracked = self.recorder.max_tracking_id(APP_NAME)
        position = tracked or 0
        messages = await self._next(position)
        if not messages:
            return 0
        last = messages[-1].notification_id

        def read_ahead() -> None:
            self._ahead = (last, asyncio.ensure_future(asyncio.to_thread(self.read, last)))

        try:
            await self.publish(messages, read_ahead)
        except BrokerError:
            await self._drop_ahead()  # this batch is sent again first
            raise
        try:
            self.recorder.write(Changes(), Tracking(APP_NAME, last), tracked)
        except StalePosition:
            return len(messages)  # another relay moved it: carry on from where it is now
        self.stats.published += len(messages)
        self.stats.rounds += 1
        if self.on_acked is not None:
            self.on_acked(messages)
        return len(messages)

    async def run(
        self, stop: asyncio.Event | None = None, follow: bool = False, poll: float = 0.05
    ) -> int:
        """Catch up with the log (and with ``follow``, keep at it until ``stop`` is set);
        return the events published. A broker error waits and tries again, never skips."""
        stop = stop or asyncio.Event()
        published = self.stats.published
        backoff = self.config.min_backoff
        try:
            while not stop.is_set():
                try:
                    count = await self.round()
                except BrokerError as exc:
                    self.stats.failures += 1
                    self.stats.last_error = str(exc)
                    log.warning("broker: %s; trying again in %.1f s", exc, backoff)
                    await _wait(stop, backoff)
                    backoff = min(backoff * 2, self.config.max_backoff)
                    continue
                backoff = self.config.min_backoff
                if count:
                    continue
                if not follow:
                    break
                await _wait(stop, poll)
        finally:
            await self._drop_ahead()
            await self._close()
        return self.stats.published - published


async def _quiet(exc: Exception) -> None:
    """The client's error callback: the relay reports what it does about an error itself."""
    log.debug("nats: %s", _one_line(exc))


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
