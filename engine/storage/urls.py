"""Store URLs: ``sqlite:///path`` and ``postgresql://...?schema=...``, parsed into what the
library's application is configured with (engine/storage/store.py), passwords kept out of
what is shown.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from eventsourcing.utils import get_topic

from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.limits import MAX_STORE_URL_CHARS, check_id
from aftersales.engine.storage.sqlite import SQLiteCaseRecorder

DEFAULT_STORE = "sqlite:///aftersales.db"


# PostgreSQL's side lives in engine/storage/postgres.py, named here by topic so that a process on a
# SQLite store never imports psycopg (a tenth of a second of every command's start).
POSTGRES_RECORDER_TOPIC = "aftersales.engine.storage.postgres:PostgresCaseRecorder"
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


# Store URLs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreUrl:
    text: str
    kind: str  # "sqlite" or "postgresql"
    env: dict[str, str]
    schema: str | None = None
    path: str | None = None

    @property
    def redacted(self) -> str:
        """The URL as it may be shown: any password replaced by ``***``."""
        return redacted(self.text)

    @property
    def conninfo(self) -> dict[str, str]:
        return {
            "dbname": self.env["POSTGRES_DBNAME"],
            "host": self.env["POSTGRES_HOST"],
            "port": self.env["POSTGRES_PORT"],
            "user": self.env["POSTGRES_USER"],
            "password": self.env["POSTGRES_PASSWORD"],
            "connect_timeout": "10",
        }


_PASSWORD = re.compile(r"^(?P<head>[a-z]+://[^/@?#]*?:)(?P<password>[^/?#]*)@")


def redacted(url: str) -> str:
    """A store URL as messages show it: its password, if any, replaced by ``***``."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***@", url, count=1)


def store_password(url: str | None) -> str | None:
    """The password a store URL carries (as written and decoded), read leniently, so that
    whatever prints a message can leave it out."""
    found = _PASSWORD.match(url or "")
    return found["password"] if found and found["password"] else None


def parse_store_url(url: str | None) -> StoreUrl:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or
    ``postgresql://user[:pw]@host[:port]/db[?schema=NAME]``. A refusal names the URL with
    its password left out."""
    url = check_id(url or DEFAULT_STORE, "store URL", MAX_STORE_URL_CHARS)
    try:
        return _parse_store_url(url)
    except ValueError as exc:  # urllib's own refusals (a malformed IPv6 host, say)
        raise BadInput(f"store {redacted(url)!r} cannot be read as a URL: {exc}") from None


def _parse_store_url(url: str) -> StoreUrl:
    shown = redacted(url)
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if not rest.startswith("/") or rest == "/":
            raise BadInput(
                f"store {shown!r}: write sqlite:///relative.db or sqlite:////abs/path.db"
            )
        path = rest[1:]
        return StoreUrl(
            text=url,
            kind="sqlite",
            env={
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": path,
                "SQLITE_LOCK_TIMEOUT": "30",
                "APPLICATION_RECORDER_TOPIC": get_topic(SQLiteCaseRecorder),
            },
            path=path,
        )
    if url.startswith(("postgresql://", "postgres://")):
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError as exc:
            raise BadInput(f"store URL is malformed: {exc}") from None
        dbname = check_id(unquote(parts.path.lstrip("/")), "store URL's database")
        if not dbname:
            raise BadInput(f"store {shown!r} names no database: postgresql://host:5432/DBNAME")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"schema"}
        if unknown:
            raise BadInput(f"store {shown!r}: unknown option {sorted(unknown)[0]!r} (only schema)")
        schema = query.get("schema", [""])[0] or None
        if schema is not None and not _SCHEMA.match(schema):
            raise BadInput(
                f"store {shown!r}: schema {schema!r} must be lower-case letters, digits or _"
            )
        try:
            port = parts.port or 5432
        except ValueError:
            raise BadInput(f"store {shown!r}: the port is not a number") from None
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": host or "localhost",
            "POSTGRES_PORT": str(port),
            "POSTGRES_USER": check_id(
                unquote(parts.username) if parts.username else getpass.getuser(),
                "store URL's user",
            ),
            "POSTGRES_PASSWORD": check_id(
                unquote(parts.password) if parts.password else "", "store URL's password"
            ),
            "POSTGRES_SCHEMA": schema or "",
            "POSTGRES_CONNECT_TIMEOUT": "10",
            # One connection opened at the start (the pool waits for all it keeps, and most
            # commands use one); up to eight, opened as threads need them and kept while used.
            "POSTGRES_POOL_SIZE": "1",
            "POSTGRES_MAX_OVERFLOW": "7",
            "POSTGRES_LOCK_TIMEOUT": "10",
            "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
            "APPLICATION_RECORDER_TOPIC": POSTGRES_RECORDER_TOPIC,
        }
        return StoreUrl(text=url, kind="postgresql", env=env, schema=schema)
    raise BadInput(f"store {shown!r} is neither sqlite:// nor postgresql://")
