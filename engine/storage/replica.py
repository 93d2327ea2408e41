"""Reads from a standby: a read store beside the store actions go to.

A read store is a PostgreSQL standby of the store (its own ``host:port``, or a cluster's URL
naming every member with ``target_session_attrs=prefer-standby`` or ``standby``). It is only
read: nothing is created or written there, and the projections are read as the standby has
replayed them (the primary's projectors keep them; ``Projector`` catches nothing up on it).

Every read from it says what it reflects (``standing``): the log position the standby has (the
highest event notification id), how far behind the primary's that is, in positions and in
seconds of replay, and the WAL positions compared.

Read-your-own-writes: an action on the primary gives a token of where it landed
(``landed_at``: the primary's WAL insert position read after the commit, so at or past the
end of the commit's own record). A read carrying it waits until the standby has replayed that far
(``pg_last_wal_replay_lsn() >= token``, polled, for at most ``read_wait()`` seconds), and
otherwise reads the primary, so nobody sees their own action undone.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from eventsourcing.persistence import PersistenceError

from aftersales.engine.domain.errors import BadInput, StoreUnavailable
from aftersales.engine.storage.store import AftersalesStore
from aftersales.engine.storage.urls import parse_store_url, redacted

# How long a read carrying a token waits for the standby before it reads the primary.
DEFAULT_READ_WAIT = 2.0
# How often the standby's replay is asked about meanwhile.
POLL_SECONDS = 0.02
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


def read_wait() -> float:
    """Seconds a read waits for the standby to replay its token (``AFTERSALES_READ_WAIT``)."""
    text = os.environ.get("AFTERSALES_READ_WAIT") or str(DEFAULT_READ_WAIT)
    try:
        seconds = float(text)
    except ValueError:
        raise BadInput(f"AFTERSALES_READ_WAIT {text!r} is not a number of seconds") from None
    if not 0 <= seconds <= 60:
        raise BadInput("AFTERSALES_READ_WAIT must be 0 to 60 seconds")
    return seconds


def check_token(token: str) -> str:
    """A read-your-writes token as an action gave it: a WAL position, ``X/Y`` in hex."""
    token = token.strip()
    if not _LSN.match(token):
        raise BadInput(
            f"read-after token {token[:40]!r} is not a WAL position such as 0/3000148 "
            "(give the read_after an action printed)"
        )
    return token.upper()


def lsn_number(lsn: str) -> int:
    """A WAL position as a byte offset (``pg_wal_lsn_diff`` against 0/0)."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def read_store_url(url: str, store: AftersalesStore) -> str:
    """The read store's URL, checked: PostgreSQL beside a PostgreSQL store. A cluster's URL
    that does not say how long to wait through a failover waits not at all: a read goes to
    whichever member answers, never waits for one that takes writes."""
    parsed = parse_store_url(url)
    if parsed.kind != "postgresql" or not store.is_postgres:
        raise BadInput(
            f"read store {parsed.redacted!r}: a read store is a PostgreSQL standby of a "
            "PostgreSQL store (--store)"
        )
    if parsed.schema != store.url.schema:
        raise BadInput(
            f"read store {parsed.redacted!r} names schema {parsed.schema or '(none)'}, "
            f"the store {store.url.schema or '(none)'}: a standby has the primary's"
        )
    if "," in parsed.env["POSTGRES_HOST"] and "failover_timeout" not in parse_qs(
        urlsplit(url).query
    ):
        url += ("&" if "?" in url else "?") + "failover_timeout=0"
    return url


# The end of the last WAL record inserted on the primary: its insert position, less the page
# header it points past when that record ended a page (a standby's replay position is the
# record's end, which would otherwise stay 24 or 40 bytes short of it until the next record).
WAL_END = (
    "(WITH w AS (SELECT pg_current_wal_insert_lsn() AS lsn) SELECT (CASE "
    "WHEN (lsn - '0/0'::pg_lsn) % pg_size_bytes(current_setting('wal_segment_size')) = 40 "
    "THEN lsn - 40 "
    "WHEN (lsn - '0/0'::pg_lsn) % current_setting('wal_block_size')::int = 24 THEN lsn - 24 "
    "ELSE lsn END) FROM w)"
)


def landed_at(store: AftersalesStore) -> str | None:
    """Where the store's WAL is inserted to now, on PostgreSQL (None on SQLite): read after an
    action's commit, a position at or past the end of that commit's record, so a standby that
    has replayed this far shows the action. (Not the flush position: a commit under
    ``synchronous_commit=off`` returns before its record is flushed.)"""
    if not store.is_postgres:
        return None
    (row,) = store.query(f"SELECT {WAL_END}::text AS lsn")
    return str(row["lsn"])


class ReadStore:
    """The standby's store, opened for reading only, with the primary's beside it."""

    def __init__(self, url: str, primary: AftersalesStore) -> None:
        self.primary = primary
        checked = read_store_url(url, primary)
        try:
            self.store = AftersalesStore(checked, create=False)
        except StoreUnavailable as exc:
            raise StoreUnavailable(f"read store {redacted(url)!r}: {exc.message}") from None
        self.store.reads_only = True

    def close(self) -> None:
        self.store.close()

    def where(self, store: AftersalesStore) -> dict[str, Any]:
        """What one server has: whether it is a standby, its WAL position (replayed, on a
        standby), the time of the last transaction it replayed, its log position, its now."""
        from aftersales.engine.storage.postgres import readable  # a read store is PostgreSQL

        table = store.recorder.events_table_name  # type: ignore[attr-defined]
        (row,) = store.query(
            "SELECT pg_is_in_recovery() AS standby, (CASE WHEN pg_is_in_recovery() "
            f"THEN pg_last_wal_replay_lsn() ELSE {WAL_END} END)::text AS lsn, "
            "pg_last_xact_replay_timestamp() AS replayed_at, now() AS now, "
            f"(SELECT max(notification_id) FROM {{t}}{table} WHERE {readable()}) AS position"
        )
        return {**row, "position": int(row["position"] or 0)}

    def replayed(self, token: str) -> bool:
        """Whether the read store shows everything up to ``token`` (a primary always does)."""
        found = self.where(self.store)
        return not found["standby"] or lsn_number(found["lsn"] or "0/0") >= lsn_number(token)

    def wait(
        self,
        token: str,
        timeout: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> bool:
        """Wait, up to ``timeout`` seconds, until the read store has replayed ``token``."""
        deadline = time.monotonic() + timeout
        while not self.replayed(token):
            if time.monotonic() >= deadline:
                return False
            sleep(POLL_SECONDS)
        return True

    def failed_over(
        self, exc: BaseException, after: str | None, waited: float | None
    ) -> dict[str, Any]:
        """The standing of a read sent to the primary because the read store failed (the
        failure raised again if it was not the server's)."""
        if not standby_failed(exc):
            raise exc
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        return {**self.standing(False, after, waited), "standby_failed": why}

    def standing(
        self, on_standby: bool, after: str | None = None, waited: float | None = None
    ) -> dict[str, Any]:
        """What a read reflects (the ``read`` key of a CLI answer, the ``X-Read-*`` headers):
        which server answered, its log position and WAL position, the primary's, and how far
        behind the primary it is in positions and in seconds of replay (the age of the last
        transaction replayed while WAL is still to replay: 0 when caught up)."""
        primary = self.where(self.primary)
        read = self.where(self.store) if on_standby else primary
        behind = max(primary["position"] - read["position"], 0)
        lag_bytes = max(lsn_number(primary["lsn"]) - lsn_number(read["lsn"] or "0/0"), 0)
        lagging = lag_bytes > 0 or behind > 0
        return {
            "from": "standby" if read["standby"] else "primary",
            "position": read["position"],
            "primary_position": primary["position"],
            "behind": behind,
            "replay_lag_seconds": _replay_lag(read, primary["now"], lagging),
            "lsn": read["lsn"],
            "primary_lsn": primary["lsn"],
            "lag_bytes": lag_bytes,
            "after": after,
            "waited_seconds": None if waited is None else round(waited, 3),
        }


def standby_failed(exc: BaseException) -> bool:
    """Whether a read store's query failed for the server (gone, restarting, cancelled by its
    replay): the read then goes to the primary instead, and says so."""
    import psycopg  # a read store is PostgreSQL: imported only when one is used

    return isinstance(exc, (psycopg.Error, PersistenceError, StoreUnavailable))


def _replay_lag(read: dict[str, Any], now: datetime, lagging: bool) -> float | None:
    if not read["standby"] or not lagging:
        return 0.0
    replayed_at: datetime | None = read["replayed_at"]
    if replayed_at is None:  # nothing replayed since the standby started
        return None
    return round(max((now - replayed_at).total_seconds(), 0.0), 3)


def described(standing: dict[str, Any]) -> str:
    """A read's standing as a person reads it (on stderr)."""
    lag = standing["replay_lag_seconds"]
    waited = (
        ""
        if standing["waited_seconds"] is None
        else f"; waited {standing['waited_seconds']:.3f} s for {standing['after']}"
    )
    return (
        f"read from the {standing['from']} at log position {standing['position']}: "
        f"{standing['behind']} behind the primary's {standing['primary_position']}, "
        f"{'unknown' if lag is None else f'{lag:.3f} s'} of replay{waited}"
    )


HEADERS = {
    "from": "X-Read-From",
    "position": "X-Read-Position",
    "behind": "X-Read-Behind",
    "replay_lag_seconds": "X-Replay-Lag",
    "waited_seconds": "X-Read-Waited",
}


def headers_of(standing: dict[str, Any]) -> dict[str, str]:
    """A read's standing as HTTP headers (those it has a value for)."""
    return {
        header: str(standing[key]) for key, header in HEADERS.items() if standing[key] is not None
    }
