"""Signed webhooks: each merchant's events POSTed to the merchant's own systems.

A merchant registers an endpoint (``webhook add``): a URL, optionally the event types it wants,
and a secret made for it and shown once. Delivering has two halves:

- **the queue**: a reader of the notification log with a tracking record of its own (the same
  machinery as the projections and the relay) writes one delivery row per endpoint and event of
  the endpoint's merchant into ``aftersales_webhook_deliveries``, in the same transaction as its
  tracking record, so every event is queued exactly once per endpoint;
- **the senders**: one task per endpoint POSTs that endpoint's due deliveries one at a time, in
  log order, each with its own timeout, so a slow or dead endpoint only ever holds up itself.
  A delivery that fails (no answer, a timeout, any status but 2xx) is tried again after 10 s,
  20 s, 40 s, ... (at most an hour apart) until ``retry_for`` (a day) has passed since it was
  queued; then it is ``dead``, listed by ``webhook deliveries --failed`` and sent again by
  ``webhook replay``.

The body is the relay's payload (``format_version`` 1: notification id, event id, type,
merchant, case or order, and the event as stored). The signature, as Stripe signs its webhooks:

    Aftersales-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body bytes with its secret,
compares it in constant time with ``v1``, and refuses a timestamp older than it tolerates (five
minutes, say) so a captured request cannot be replayed later. ``Aftersales-Event-Id`` (stable
across retries) lets it drop an event it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from eventsourcing.persistence import Tracking

from aftersales.engine.domain.errors import BadInput, NotFound
from aftersales.engine.storage.sql import parse_stored_time
from aftersales.engine.storage.store import APP_NAME, AftersalesStore
from aftersales.projections.base import (
    Changes,
    Folds,
    StalePosition,
    Table,
    View,
    ViewRecorder,
    col,
    recorder_class,
)
from aftersales.projections.relay import Owners, event_type, message

log = logging.getLogger("aftersales.webhooks")

ENDPOINTS = "aftersales_webhooks"
SIGNATURE_HEADER = "Aftersales-Signature"
DAY = timedelta(days=1)

DELIVERIES = Table(
    "aftersales_webhook_deliveries",
    (
        col("endpoint_id", "text", "key", "the endpoint"),
        col("notification_id", "int", "key", "the event's place in the log"),
        col("event_id", "text", "keep", "originator id:version"),
        col("event_type", "text", "keep", "the event's class name"),
        col("payload", "text", "keep", "the body POSTed"),
        col("status", "text", "keep", "pending, delivered or dead"),
        col("attempts", "int", "keep", "tries so far"),
        col("queued_at", "time", "keep", "when it was queued"),
        col("next_at", "time", "keep", "when it is tried next"),
        col("last_error", "text", "keep", "what the last failed try got"),
        col("delivered_at", "time", "keep", "when the endpoint answered 2xx"),
    ),
    indexes=(("status", "next_at"),),
    doc="One row per endpoint and event: what was sent, and how it went.",
)


class Queue(View):
    """The webhook queue's tracking record and table (rows are written by ``enqueue``, not
    by folds: which endpoints an event goes to is data, not code)."""

    name = "webhooks"
    tables = (DELIVERIES,)
    folds = Folds()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass(frozen=True)
class Endpoint:
    id: str
    merchant_id: str
    url: str
    events: tuple[str, ...]
    secret: str

    def wants(self, kind: str) -> bool:
        return not self.events or kind in self.events

    def public(self) -> dict[str, Any]:
        """What may be shown or logged: never the secret."""
        return {
            "endpoint_id": self.id,
            "merchant_id": self.merchant_id,
            "url": self.url,
            "events": list(self.events),
        }


@dataclass
class Settings:
    timeout: float = 10.0
    first_retry: float = 10.0
    max_retry: float = 3600.0
    retry_for: float = DAY.total_seconds()
    batch_size: int = 1000


# Endpoints ------------------------------------------------------------------------------------


class Webhooks:
    """The endpoints, the queue and the deliveries of one store."""

    def __init__(
        self,
        store: AftersalesStore,
        settings: Settings | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.settings = settings or Settings()
        self.clock = clock
        self.recorder: ViewRecorder = _recorder(store)
        self.owners = Owners(store)
        self._stopping = threading.Event()
        store.execute(
            f"CREATE TABLE IF NOT EXISTS {{t}}{ENDPOINTS} (endpoint_id text PRIMARY KEY, "
            "merchant_id text NOT NULL, url text NOT NULL, events text NOT NULL, "
            "secret text NOT NULL, created_at text NOT NULL)"
        )

    def add(self, merchant: str, url: str, events: Sequence[str] = ()) -> tuple[Endpoint, str]:
        """Register an endpoint; return it and its secret (shown this once)."""
        if not merchant.strip():
            raise BadInput("a merchant id is needed")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput(f"url {url!r} is not an http:// or https:// address")
        kinds = tuple(sorted({e.strip() for e in events if e.strip()}))
        endpoint = Endpoint(
            id=f"wh_{uuid.uuid4().hex[:16]}",
            merchant_id=merchant,
            url=url,
            events=kinds,
            secret=f"whsec_{secrets.token_hex(24)}",
        )
        self.store.execute(
            f"INSERT INTO {{t}}{ENDPOINTS} VALUES (?, ?, ?, ?, ?, ?)",
            (
                endpoint.id,
                merchant,
                url,
                ",".join(kinds),
                endpoint.secret,
                self.clock().isoformat(),
            ),
        )
        return endpoint, endpoint.secret

    def endpoints(self) -> list[Endpoint]:
        rows = self.store.query(f"SELECT * FROM {{t}}{ENDPOINTS} ORDER BY created_at, endpoint_id")
        return [
            Endpoint(
                id=r["endpoint_id"],
                merchant_id=r["merchant_id"],
                url=r["url"],
                events=tuple(e for e in r["events"].split(",") if e),
                secret=r["secret"],
            )
            for r in rows
        ]

    # The queue ---------------------------------------------------------------------------------

    def enqueue(self) -> int:
        """Queue every event after the queue's position for the endpoints that want it, one
        batch per transaction with the tracking record; return the events read."""
        read = 0
        while True:
            tracked = self.recorder.max_tracking_id(APP_NAME)
            notes = self.store.recorder.select_notifications(
                start=tracked or 0, limit=self.settings.batch_size, inclusive_of_start=False
            )
            if not notes:
                return read
            by_merchant: dict[str, list[Endpoint]] = {}
            for endpoint in self.endpoints():
                by_merchant.setdefault(endpoint.merchant_id, []).append(endpoint)
            owners = self.owners.find(notes)
            changes = Changes()
            now = self.clock()
            for note in notes:
                owner = owners[note.originator_id]
                kind = event_type(note.topic)
                wanting = [e for e in by_merchant.get(owner[0], ()) if e.wants(kind)]
                if not wanting:
                    continue
                body = message("webhook", note, owner).payload.decode("utf-8")
                for endpoint in wanting:
                    row = changes.row(DELIVERIES, endpoint.id, note.id)
                    row.update(
                        event_id=f"{note.originator_id}:{note.originator_version}",
                        event_type=kind,
                        payload=body,
                        status="pending",
                        attempts=0,
                        queued_at=now,
                        next_at=now,
                    )
            try:
                self.recorder.write(changes, Tracking(APP_NAME, notes[-1].id), tracked)
            except StalePosition:
                continue  # another process queued this batch
            read += len(notes)

    # Deliveries --------------------------------------------------------------------------------

    def deliveries(
        self, failed: bool = False, endpoint: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Deliveries, newest first: all, or the dead and the ones still being retried."""
        where, params = ["1 = 1"], []
        if failed:
            where.append("(status = 'dead' OR (status = 'pending' AND attempts > 0))")
        if endpoint:
            where.append("endpoint_id = ?")
            params.append(endpoint)
        rows = self.store.query(
            f"SELECT endpoint_id, notification_id, event_id, event_type, status, attempts, "
            f"queued_at, next_at, last_error, delivered_at FROM {{t}}{DELIVERIES.name} "
            f"WHERE {' AND '.join(where)} ORDER BY notification_id DESC, endpoint_id LIMIT ?",
            [*params, limit],
        )
        return [{k: _plain(v) for k, v in r.items()} for r in rows]

    def replay(self, endpoint: str | None = None, notification_id: int | None = None) -> int:
        """Send dead deliveries again (all, an endpoint's, or one event's): pending from now,
        queued anew so they have another day of tries. Returns how many."""
        where: list[str] = ["status = 'dead'"]
        params: list[Any] = []
        if endpoint:
            where.append("endpoint_id = ?")
            params.append(endpoint)
        if notification_id is not None:
            where.append("notification_id = ?")
            params.append(notification_id)
        condition = " AND ".join(where)
        count = self.store.query(
            f"SELECT count(*) AS n FROM {{t}}{DELIVERIES.name} WHERE {condition}", params
        )[0]["n"]
        if not count:
            raise NotFound("no dead delivery to replay there")
        now = self.store.time_param(self.clock())
        self.store.execute(
            f"UPDATE {{t}}{DELIVERIES.name} SET status = 'pending', attempts = 0, "
            f"queued_at = ?, next_at = ? WHERE {condition}",
            [now, now, *params],
        )
        return int(count)

    def due(self, endpoint: str, limit: int = 100) -> list[dict[str, Any]]:
        return self.store.query(
            f"SELECT notification_id, event_id, payload, attempts, queued_at "
            f"FROM {{t}}{DELIVERIES.name} WHERE endpoint_id = ? AND status = 'pending' "
            "AND next_at <= ? ORDER BY notification_id LIMIT ?",
            (endpoint, self.store.time_param(self.clock()), limit),
        )

    def _record(self, endpoint: str, row: dict[str, Any], error: str | None) -> None:
        now = self.clock()
        key = (endpoint, row["notification_id"])
        attempts = int(row["attempts"]) + 1
        if error is None:
            self.store.execute(
                f"UPDATE {{t}}{DELIVERIES.name} SET status = 'delivered', attempts = ?, "
                "delivered_at = ?, last_error = NULL WHERE endpoint_id = ? AND notification_id = ?",
                (attempts, self.store.time_param(now), *key),
            )
            return
        queued = parse_stored_time(row["queued_at"]) or now
        wait = min(self.settings.first_retry * 2 ** (attempts - 1), self.settings.max_retry)
        dead = (now - queued).total_seconds() >= self.settings.retry_for
        self.store.execute(
            f"UPDATE {{t}}{DELIVERIES.name} SET status = ?, attempts = ?, next_at = ?, "
            "last_error = ? WHERE endpoint_id = ? AND notification_id = ?",
            (
                "dead" if dead else "pending",
                attempts,
                self.store.time_param(now + timedelta(seconds=wait)),
                error[:300],
                *key,
            ),
        )

    def post(self, endpoint: Endpoint, row: dict[str, Any]) -> str | None:
        """One try: None if the endpoint answered 2xx, else what went wrong."""
        body = str(row["payload"]).encode("utf-8")
        request = urllib.request.Request(
            endpoint.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "aftersales-webhooks/1",
                "Aftersales-Event-Id": row["event_id"],
                SIGNATURE_HEADER: sign(endpoint.secret, int(time.time()), body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # refused, timed out, reset, bad address
            return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
        return None if 200 <= status < 300 else f"HTTP {status}"

    def send_due(self, endpoint: Endpoint) -> int:
        """Try every due delivery of one endpoint once, in log order; return how many went."""
        sent = 0
        for row in self.due(endpoint.id):
            if self._stopping.is_set():
                break
            error = self.post(endpoint, row)
            self._record(endpoint.id, row, error)
            if error is None:
                sent += 1
            else:
                log.warning("webhook %s: event %s: %s", endpoint.id, row["event_id"], error)
        return sent

    async def run(
        self, stop: asyncio.Event | None = None, follow: bool = False, poll: float = 0.2
    ) -> None:
        """Queue and send until nothing is due (with ``follow``, until ``stop``). Each
        endpoint's sending runs in a thread of its own."""
        stop = stop or asyncio.Event()
        self._stopping.clear()
        pools: dict[str, ThreadPoolExecutor] = {}
        busy: dict[str, asyncio.Future[int]] = {}
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self.enqueue()
                for done in [k for k, f in busy.items() if f.done()]:
                    busy.pop(done).result()
                for endpoint in self.endpoints():
                    if endpoint.id in busy or not self.due(endpoint.id, 1):
                        continue
                    pool = pools.setdefault(
                        endpoint.id, ThreadPoolExecutor(1, thread_name_prefix="webhook")
                    )
                    busy[endpoint.id] = loop.run_in_executor(pool, self.send_due, endpoint)
                if not follow and not busy:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll)
        finally:
            self._stopping.set()
            for pool in pools.values():
                pool.shutdown(wait=True, cancel_futures=True)


@cache
def _recorder_class(postgres: bool) -> type[ViewRecorder]:
    return recorder_class(Queue, postgres)


def _recorder(store: AftersalesStore) -> ViewRecorder:
    recorder = _recorder_class(store.is_postgres)(datastore=store.recorder.datastore)  # type: ignore[call-arg,attr-defined]
    recorder.create_table()  # type: ignore[attr-defined]
    return recorder


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value
