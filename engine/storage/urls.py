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
POSTGRES_FACTORY_TOPIC = "aftersales.engine.storage.postgres:PostgresStoreFactory"
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
        """libpq's parameters for one connection of the store's own."""
        found = {
            "dbname": self.env["POSTGRES_DBNAME"],
            "host": self.env["POSTGRES_HOST"],
            "port": self.env["POSTGRES_PORT"],
            "user": self.env["POSTGRES_USER"],
            "password": self.env["POSTGRES_PASSWORD"],
            "connect_timeout": self.env.get("AFTERSALES_LIBPQ_CONNECT_TIMEOUT") or "10",
        }
        if self.env.get("AFTERSALES_TARGET_SESSION_ATTRS"):
            found["target_session_attrs"] = self.env["AFTERSALES_TARGET_SESSION_ATTRS"]
        return found

    @property
    def failover_timeout(self) -> float:
        """How long an action waits through a failover for a primary (0: it does not)."""
        return float(self.env.get("AFTERSALES_FAILOVER_TIMEOUT") or 0)


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
    ``postgresql://user[:pw]@host[:port][,host[:port]...]/db[?schema=NAME&...]``.
    A refusal names the URL with its password left out."""
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
        return _parse_postgres_url(url, shown)
    raise BadInput(f"store {shown!r} is neither sqlite:// nor postgresql://")


# libpq's choices of server among several hosts (``target_session_attrs``).
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
_OPTIONS = ("schema", "target_session_attrs", "connect_timeout", "failover_timeout")
# How long a store of several hosts waits through a failover for a primary before an action
# fails (``failover_timeout``): Patroni's TTL on this design, with a margin.
DEFAULT_FAILOVER_TIMEOUT = 30


def _parse_postgres_url(url: str, shown: str) -> StoreUrl:
    """``postgresql://user[:pw]@host[:port][,host[:port]...]/db[?options]``: one server, or
    several (a cluster: libpq tries them in turn, ``target_session_attrs`` says which it keeps).
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise BadInput(f"store URL is malformed: {exc}") from None
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts = [_host_port(item, shown) for item in hostlist.split(",")]
    dbname = check_id(unquote(parts.path.lstrip("/")), "store URL's database")
    if not dbname:
        raise BadInput(f"store {shown!r} names no database: postgresql://host:5432/DBNAME")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - set(_OPTIONS)
    if unknown:
        raise BadInput(
            f"store {shown!r}: unknown option {sorted(unknown)[0]!r} (only {', '.join(_OPTIONS)})"
        )
    option = {key: values[-1] for key, values in query.items()}
    schema = option.get("schema") or None
    if schema is not None and not _SCHEMA.match(schema):
        raise BadInput(
            f"store {shown!r}: schema {schema!r} must be lower-case letters, digits or _"
        )
    attrs = option.get("target_session_attrs", "")
    if attrs and attrs not in SESSION_ATTRS:
        raise BadInput(
            f"store {shown!r}: target_session_attrs must be one of {', '.join(SESSION_ATTRS)}"
        )
    connect_timeout = _seconds(option, "connect_timeout", shown, "10")
    failover_timeout = _seconds(
        option, "failover_timeout", shown, str(DEFAULT_FAILOVER_TIMEOUT if len(hosts) > 1 else 0)
    )
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": ",".join(host for host, _ in hosts),
        "POSTGRES_PORT": ",".join(port for _, port in hosts),
        "POSTGRES_USER": check_id(
            unquote(username) if username else getpass.getuser(), "store URL's user"
        ),
        "POSTGRES_PASSWORD": check_id(unquote(password), "store URL's password"),
        "POSTGRES_SCHEMA": schema or "",
        "POSTGRES_CONNECT_TIMEOUT": connect_timeout,
        # One connection opened at the start (the pool waits for all it keeps, and most
        # commands use one); up to eight, opened as threads need them and kept while used.
        "POSTGRES_POOL_SIZE": "1",
        "POSTGRES_MAX_OVERFLOW": "7",
        "POSTGRES_LOCK_TIMEOUT": "10",
        "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        "APPLICATION_RECORDER_TOPIC": POSTGRES_RECORDER_TOPIC,
    }
    if attrs or failover_timeout != "0" or "connect_timeout" in option:
        # What the library's own factory does not pass to libpq, and riding through a
        # failover: the store's factory (engine/storage/postgres.py) adds them.
        env.update(
            PERSISTENCE_MODULE=POSTGRES_FACTORY_TOPIC,
            AFTERSALES_TARGET_SESSION_ATTRS=attrs,
            AFTERSALES_LIBPQ_CONNECT_TIMEOUT=option.get("connect_timeout", ""),
            AFTERSALES_FAILOVER_TIMEOUT=failover_timeout,
        )
    return StoreUrl(text=url, kind="postgresql", env=env, schema=schema)


def _host_port(item: str, shown: str) -> tuple[str, str]:
    """One ``host[:port]`` of a URL's host list (an IPv6 address in brackets)."""
    host, port = item, ""
    if item.startswith("["):
        close = item.find("]")
        if close < 0:
            raise BadInput(f"store {shown!r}: an IPv6 host's ] is missing")
        host, rest = item[1:close], item[close + 1 :]
        if rest and not rest.startswith(":"):
            raise BadInput(f"store {shown!r}: {item!r} is not host:port")
        port = rest[1:]
    elif ":" in item:
        host, _, port = item.rpartition(":")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise BadInput(f"store {shown!r}: the port is not a number")
    if "," in host or "/" in host:
        raise BadInput(f"store {shown!r}: {item!r} is not a host")
    return unquote(host) or "localhost", port or "5432"


def _seconds(option: dict[str, str], key: str, shown: str, default: str) -> str:
    value = option.get(key, default) or default
    if not value.isdigit() or int(value) > 3600:
        raise BadInput(f"store {shown!r}: {key} must be whole seconds (0 to 3600)")
    return str(int(value))
