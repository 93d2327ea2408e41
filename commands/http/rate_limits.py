"""Refused requests count against whoever presented them: too many in a window and that one
gets 429 until the window frees.

What a refusal counts against (``who``) is one thing only, so that nobody is held back by
another's failures:

- a credential shaped like a key (``ask_<key_id>_<secret>``) counts against that key id, a desk
  session's token (``ads_<session_id>_<secret>``) against that session id: a wrong secret for
  key X holds back X alone, and a valid key is never refused because other keys failed, even
  from the same address (behind one proxy or platform backend there are many keys);
- a request with nothing shaped like a key (no key, garbage) counts against the client's
  address. The address is the direct peer's, or, when the peer is a trusted proxy
  (``serve --trusted-proxy CIDR``, ``$AFTERSALES_TRUSTED_PROXIES``), the rightmost address in
  ``X-Forwarded-For`` that is not a trusted proxy itself.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence

from fastapi import Request

from aftersales.commands.http.request_parts import bearer
from aftersales.engine.access.api_keys import key_id_of
from aftersales.engine.access.desk_sessions import session_id_of

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
WINDOW = 60.0


class Limiter:
    """Refusals per key, session or client in a sliding window; past the limit, 429 until the
    window has moved on. Per worker process."""

    def __init__(self, limit: int, window: float = WINDOW) -> None:
        self.limit = limit
        self.window = window
        self.seen: dict[str, deque[float]] = {}
        self.pruned = 0.0

    def _recent(self, who: str, now: float) -> deque[float]:
        times = self.seen.setdefault(who, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def retry_after(self, *who: str) -> int | None:
        """Whole seconds until each of ``who`` is under the limit again (the largest), or None
        if none is at it."""
        now = time.monotonic()
        waits = []
        for w in who:
            times = self.seen.get(w)
            if times is None:
                continue
            times = self._recent(w, now)
            if len(times) >= self.limit:
                # Under the limit once this many of the oldest have left the window.
                frees_at = times[len(times) - self.limit] + self.window
                waits.append(max(1, math.ceil(frees_at - now)))
        return max(waits) if waits else None

    def failed(self, *who: str) -> None:
        now = time.monotonic()
        for w in who:
            self._recent(w, now).append(now)
        # Memory stays flat under a flood of made-up keys: what has left the window goes, at
        # most once a second.
        if len(self.seen) > 100_000 and now - self.pruned > 1.0:
            self.pruned = now
            self.seen = {k: v for k, v in self.seen.items() if self._recent(k, now)}


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Trusted proxies as CIDRs (a bare address is one host); ValueError names a bad one."""
    found = []
    for value in values:
        for part in value.replace(",", " ").split():
            try:
                found.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(
                    f"trusted proxy {part!r} is not an address or a CIDR (e.g. 10.0.0.0/8)"
                ) from None
    return tuple(found)


def _trusted(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks if net.version == ip.version)


def client_address(request: Request) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then the rightmost
    hop of ``X-Forwarded-For`` that is not a trusted proxy (what is left of it was written by
    the client and is not believed)."""
    peer = request.client.host if request.client else "unknown"
    networks: Sequence[Network] = getattr(request.app.state, "trusted_proxies", ())
    if not networks or not _trusted(peer, networks):
        return peer
    hops = [
        hop.strip()
        for header in request.headers.getlist("x-forwarded-for")
        for hop in header.split(",")
    ]
    address = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address  # not an address: the hop to its right is the last one believed
        address = hop
        if not _trusted(hop, networks):
            return hop
    return address  # every hop a trusted proxy: the leftmost


def behind_https(request: Request) -> bool:
    """Whether the browser reached us over HTTPS: the request's own scheme, or a trusted
    proxy's ``X-Forwarded-Proto``."""
    if request.url.scheme == "https":
        return True
    peer = request.client.host if request.client else "unknown"
    networks: Sequence[Network] = getattr(request.app.state, "trusted_proxies", ())
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return proto == "https" and _trusted(peer, networks)


def who(request: Request) -> tuple[str, ...]:
    """What a refusal of this request counts against, and what a 429 is asked about: the key's
    id (or the desk session's id) if the credential is shaped like one, else the client's
    address."""
    credential = bearer(request)
    if credential:
        if key_id := key_id_of(credential):
            return (f"key:{key_id}",)
        if session_id := session_id_of(credential):
            return (f"session:{session_id}",)
    return (f"client:{client_address(request)}",)
