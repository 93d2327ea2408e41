"""Refused requests count against the key and the client: too many in a minute and they get 429
for the rest of it."""

from __future__ import annotations

import time
from collections import deque

from fastapi import Request

from aftersales.commands.http.request_parts import bearer
from aftersales.engine.access.api_keys import key_id_of


class Limiter:
    """Refusals per key and per client in a sliding window; past the limit, 429 until the
    window has moved on. Per worker process."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self.seen: dict[str, deque[float]] = {}

    def _recent(self, who: str, now: float) -> deque[float]:
        times = self.seen.setdefault(who, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def retry_after(self, *who: str) -> int | None:
        now = time.monotonic()
        waits = [
            int(times[0] + self.window - now) + 1
            for w in who
            if len(times := self._recent(w, now)) >= self.limit
        ]
        return max(waits) if waits else None

    def failed(self, *who: str) -> None:
        now = time.monotonic()
        for w in who:
            self._recent(w, now).append(now)
        if len(self.seen) > 100_000:  # keep memory flat under a flood of made-up keys
            self.seen = {k: v for k, v in self.seen.items() if self._recent(k, now)}


def who(request: Request, client: bool = True) -> tuple[str, ...]:
    """What refusals count against: the key's id (if the key is shaped like one) and, for a
    key that does not authenticate, the client's address too. A principal's own refusals (403,
    404) count against its key only: one platform app's address carries many buyers' keys."""
    key = bearer(request)
    key_id = key_id_of(key) if key else None
    address = request.client.host if request.client else "unknown"
    return ((f"client:{address}",) if client else ()) + ((f"key:{key_id}",) if key_id else ())
