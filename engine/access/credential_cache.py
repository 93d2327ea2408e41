"""Credentials a serving process keeps a short while, so that a request need not read its key
from the store, and how a revocation reaches every such process.

A credential the store granted (a key, or a desk session's token) is kept, by the SHA-256 of
it, with its principal and the time its grant ends (``Grant.until``: the key's expiry; for a
session also its end, and when its idle end is next to be moved on). It is used only while all
of these hold:

- the process is told of revocations (``CredentialCache.listening``; the HTTP service listens
  on PostgreSQL's ``LISTEN``, see commands/http/revocations.py). While it is not, nothing is
  kept and every request reads its credential, as before;
- it was read less than ``max_age`` ago (five seconds unless ``serve --key-cache`` says
  otherwise): whatever happens to a notification, or to a row changed by hand, nothing is used
  longer than that after the store last granted it;
- its grant has not ended by the request's time;
- nothing was revoked since it was read: a revocation (``revoke_key``, ``end_session``) calls
  ``forget_everywhere`` in the process that made it, before it returns, and, in the same
  transaction as its rows, notifies the store's access channel (``revocation_statements``),
  which every other listening process hears as soon as the revocation commits. Hearing it
  forgets every credential kept (revocations are rare; the next request of each reads it again).

A credential read while a revocation is heard is not kept (the cache's generation moved on
during the read), so a read from before a revocation never outlives it. Refusals are never kept:
an unknown key is read each time (and counted by the refusal limiter).
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from aftersales.engine.access.api_keys import Unauthenticated
from aftersales.engine.access.scopes import Principal
from aftersales.engine.storage.store import AftersalesStore

# The longest a kept credential is used after the store last granted it, by default.
MAX_AGE = timedelta(seconds=5)
# At most this many credentials kept; past it, all are forgotten at once.
MAX_KEPT = 10_000
_CHANNEL_PREFIX = "aftersales_access_"


def access_channel(store: AftersalesStore) -> str | None:
    """The channel a PostgreSQL store's revocations are told on (one per schema, as the store
    is); None for a store with no such thing (SQLite)."""
    if not store.is_postgres:
        return None
    return (_CHANNEL_PREFIX + (store.url.schema or "public"))[:63]


def revocation_statements(store: AftersalesStore) -> list[tuple[str, list[Any]]]:
    """The statement that tells every listening process of a revocation, to be written in the
    revocation's own transaction (delivered when it commits, not before)."""
    channel = access_channel(store)
    return [("SELECT pg_notify(?, ?)", [channel, "revoked"])] if channel else []


class Grant(NamedTuple):
    """A credential's principal, and until when the store's answer holds unless the
    credential is revoked first (its expiry; None for never)."""

    principal: Principal
    until: datetime | None


Granter = Callable[
    [AftersalesStore, Sequence[str | None], datetime], dict[str | None, Grant | Unauthenticated]
]


def principals_of(
    found: Mapping[str | None, Grant | Unauthenticated],
) -> dict[str | None, Principal | Unauthenticated]:
    """Each credential's principal (its grant's), or why it is refused."""
    return {c: g if isinstance(g, Unauthenticated) else g.principal for c, g in found.items()}


class _Kept(NamedTuple):
    principal: Principal
    until: datetime | None
    read_at: datetime


class CredentialCache:
    """Credentials granted by the store, kept while they may be used (module docstring)."""

    def __init__(self, max_age: timedelta = MAX_AGE) -> None:
        self.max_age = max_age
        self.kept: dict[str, _Kept] = {}
        # Moved on by every revocation heard: a read that saw it move keeps nothing.
        self.generation = 0
        self.listening = False
        self.lock = threading.Lock()
        # Credentials read from the store, and answered from what was kept (for operators).
        self.reads = self.hits = 0
        _CACHES.add(self)

    def forget(self) -> None:
        """A revocation was made or heard (or may have been missed): keep nothing from before."""
        with self.lock:
            self.generation += 1
            self.kept.clear()

    def set_listening(self, listening: bool) -> None:
        """Whether revocations are heard from now on; either way what was kept is forgotten
        (while nothing was heard, something may have been missed)."""
        with self.lock:
            self.listening = listening
            self.generation += 1
            self.kept.clear()

    def authenticate(
        self,
        store: AftersalesStore,
        credentials: Sequence[str | None],
        now: datetime,
        grant: Granter,
    ) -> dict[str | None, Principal | Unauthenticated]:
        """Each credential's principal, or why it is refused: from what is kept where it may
        be used, else read from the store (``grant``, one query for all that are not) and
        kept."""
        result: dict[str | None, Principal | Unauthenticated] = {}
        wanted: list[str | None] = []
        digests: dict[str, str] = {}
        use = self.listening and self.max_age > timedelta(0)
        for credential in dict.fromkeys(credentials):
            if credential and use:
                digest = digests[credential] = hashlib.sha256(credential.encode()).hexdigest()
                kept = self.kept.get(digest)
                if (
                    kept is not None
                    and now - kept.read_at < self.max_age
                    and (kept.until is None or now < kept.until)
                ):
                    result[credential] = kept.principal
                    continue
            wanted.append(credential)
        self.hits += len(result)
        if not wanted:
            return result
        generation = self.generation
        found = grant(store, wanted, now)
        self.reads += len(wanted)
        with self.lock:
            keep = use and self.listening and generation == self.generation
            if keep and len(self.kept) + len(found) > MAX_KEPT:
                self.kept.clear()
            for credential, answer in found.items():
                if isinstance(answer, Unauthenticated):
                    result[credential] = answer
                    continue
                result[credential] = answer.principal
                if keep and credential:
                    self.kept[digests[credential]] = _Kept(answer.principal, answer.until, now)
        return result


_CACHES: weakref.WeakSet[CredentialCache] = weakref.WeakSet()


def forget_everywhere() -> None:
    """Every cache in this process forgets what it kept: called by a revocation once it is
    written, before it returns (so in the process that made it, it counts at once)."""
    for cache in list(_CACHES):
        cache.forget()
