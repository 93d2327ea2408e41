"""Hearing revocations: a thread of the serving process LISTENs on the store's access channel
(``engine/access/credential_cache.py``) and, for each notification, has the worker's cache of
credentials forget what it kept. Only while it listens does the cache keep anything: if its
connection is lost, the cache stops keeping (every request reads its credential again) until
it listens again, a second later. On SQLite there is nothing to listen on, and nothing is
kept."""

from __future__ import annotations

import logging
import threading

from aftersales.engine.access.credential_cache import CredentialCache, access_channel
from aftersales.engine.storage.store import AftersalesStore

log = logging.getLogger("aftersales.http")


class RevocationListener:
    def __init__(self, store: AftersalesStore, cache: CredentialCache, retry: float = 1.0) -> None:
        self.channel = access_channel(store)
        self.conninfo = store.url.conninfo if self.channel else {}
        self.cache = cache
        self.retry = retry
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self.listen, name="aftersales-revocations", daemon=True
        )

    def start(self) -> None:
        if self.channel is not None:
            self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def listen(self) -> None:
        import psycopg
        from psycopg.conninfo import make_conninfo
        from psycopg.sql import SQL, Identifier

        assert self.channel is not None
        while not self.stopping.is_set():
            try:
                with psycopg.connect(make_conninfo("", **self.conninfo), autocommit=True) as conn:
                    conn.execute(SQL("LISTEN {}").format(Identifier(self.channel)))
                    self.cache.set_listening(True)
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self.cache.forget()
            except Exception as exc:  # the connection lost: keep nothing until heard again
                log.warning("not hearing revocations (%s); credentials are read each time", exc)
            finally:
                self.cache.set_listening(False)
            self.stopping.wait(self.retry)
