"""The desk's sessions, on both backends: signing in exchanges the key for a session kept in
the store (the cookie holds its token, never the key); signing out, the session's idle time or
lifetime, an operator ending it, or its key's revocation ends it, and an old cookie is then
signed out; sessions are listed and ended from the command line, and each start and end is in
the access log."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from aftersales.commands.cli.main import cli
from aftersales.commands.desk.session import COOKIE
from aftersales.commands.http.app import create_app
from aftersales.engine.access.desk_sessions import (
    SessionTerms,
    end_session,
    list_sessions,
    parse_duration,
    session_id_of,
)
from aftersales.engine.access.principal_store import access_history, revoke_key
from aftersales.engine.application.handler import Engine
from aftersales.engine.domain.errors import BadInput, NotAllowed, NotFound
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector
from tests.people import People

ORIGIN = {"Origin": "http://testserver"}
TERMS = SessionTerms(idle=timedelta(hours=1), lifetime=timedelta(hours=3))


class Clock:
    """The server's clock for keys' and sessions' ends, moved by hand."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.at

    def move(self, **by: float) -> None:
        self.at += timedelta(**by)


@pytest.fixture
def desk(engine: Engine, store_url: str) -> Iterator[tuple[TestClient, People, Clock]]:
    people = People(engine)
    Projector(engine.store).catch_up(VIEWS)
    clock = Clock()
    app = create_app(store_url, failure_limit=10_000, session_terms=TERMS)
    app.state.api.now = clock
    with TestClient(app) as client:
        yield client, people, clock


def sign_in(client: TestClient, people: People, pid: str) -> dict[str, str]:
    """Sign in with the principal's key; the Set-Cookie header's parts, by lowercase name."""
    client.cookies.clear()
    response = client.post(
        "/login", data={"key": people.keys[pid]}, headers=ORIGIN, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    headers = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    assert not any(people.keys[pid] in h for h in headers)  # the key in no cookie at all
    session = next(h for h in headers if h.startswith(f"{COOKIE}="))
    parts = {}
    for part in session.split(";"):
        name, _, value = part.strip().partition("=")
        parts[name.lower()] = value
    return parts


def use_cookie(client: TestClient, value: str) -> None:
    client.cookies.clear()
    client.cookies.set(COOKIE, value)


def signed_in(client: TestClient) -> bool:
    """Whether the client's cookie opens the API (and the desk, which deletes a cookie that
    does not)."""
    api = client.get("/v1/cases")
    page = client.get("/", follow_redirects=False)
    assert (page.status_code == 200) == (api.status_code == 200), (page, api)
    if page.status_code != 200:
        assert (page.status_code, page.headers["location"]) == (303, "/login")
        assert api.status_code == 401
    return page.status_code == 200


def test_the_cookie_holds_a_session_token_never_the_key(
    desk: tuple[TestClient, People, Clock],
) -> None:
    client, people, clock = desk
    cookie = sign_in(client, people, "staff-1")
    token = cookie[COOKIE]
    assert token != people.keys["staff-1"] and session_id_of(token) is not None
    assert people.keys["staff-1"].split("_", 2)[2] not in token  # not even the key's secret
    assert {"httponly", "path"} <= set(cookie) and cookie["samesite"].lower() == "strict"
    assert int(cookie["max-age"]) == 3 * 3600
    assert "secure" not in cookie  # plain http here; https below
    assert signed_in(client)
    # The store holds the token's hash only, and the session is the principal's and key's.
    store = people.engine.store
    (row,) = store.query("SELECT * FROM {t}aftersales_sessions")
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert not any(token in str(v) or people.keys["staff-1"] in str(v) for v in row.values())
    assert (row["principal_id"], row["key_id"]) == ("staff-1", people.key_ids["staff-1"])
    (listed,) = list_sessions(store, "staff-1", clock())
    assert listed["state"] == "active" and listed["session_id"] == session_id_of(token)
    # A made-up token of the right shape, or the session id with another secret: signed out.
    use_cookie(client, token[:-4] + "AAAA")
    assert not signed_in(client)
    # A cookie holding the key itself (as the desk once set) is no session: signed out.
    use_cookie(client, people.keys["staff-1"])
    assert not signed_in(client)


def test_a_cookie_over_https_is_secure(engine: Engine, store_url: str) -> None:
    people = People(engine)
    with TestClient(create_app(store_url), base_url="https://testserver") as client:
        response = client.post(
            "/login",
            data={"key": people.keys["staff-1"]},
            headers={"Origin": "https://testserver"},
            follow_redirects=False,
        )
        session = next(
            v for k, v in response.headers.multi_items() if k == "set-cookie" and COOKIE in v
        )
        assert "secure" in session.lower()


def test_signing_out_ends_the_session_in_the_store(
    desk: tuple[TestClient, People, Clock],
) -> None:
    client, people, clock = desk
    token = sign_in(client, people, "staff-1")[COOKIE]
    other = TestClient(client.app)  # the same principal signed in elsewhere
    use_cookie(other, sign_in(other, people, "staff-1")[COOKIE])
    use_cookie(client, token)
    assert signed_in(client) and signed_in(other)
    out = client.post("/logout", headers=ORIGIN, follow_redirects=False)
    assert (out.status_code, out.headers["location"]) == (303, "/login")
    # The old cookie, kept (or copied) after signing out, no longer counts...
    use_cookie(client, token)
    assert not signed_in(client)
    # ... nor does it sign out anyone else, and the other session goes on.
    assert client.post("/logout", headers=ORIGIN, follow_redirects=False).status_code == 303
    assert signed_in(other)
    states = [s["state"] for s in list_sessions(people.engine.store, "staff-1", clock())]
    assert sorted(states) == ["active", "ended"]
    changes = [h["change"] for h in access_history(people.engine.store)]
    assert changes.count("session started") == 2 and changes.count("session signed out") == 1


def test_sessions_expire_when_idle_and_at_their_lifetime(
    desk: tuple[TestClient, People, Clock],
) -> None:
    client, people, clock = desk
    sign_in(client, people, "staff-1")
    # Used every 50 minutes: the idle hour never runs out...
    for _ in range(3):
        clock.move(minutes=50)
        assert signed_in(client)
    # ... but three hours after signing in, it ends however used.
    clock.move(minutes=31)
    assert not signed_in(client)
    (listed,) = list_sessions(people.engine.store, "staff-1", clock())
    assert listed["state"] == "expired"
    # Unused for an hour: it ends.
    sign_in(client, people, "staff-1")
    clock.move(minutes=59)
    assert signed_in(client)
    clock.move(minutes=60, seconds=1)
    assert not signed_in(client)
    assert list_sessions(people.engine.store, "staff-1", clock())[0]["state"] == "idle"


def test_revoking_the_key_ends_its_sessions(desk: tuple[TestClient, People, Clock]) -> None:
    client, people, clock = desk
    sign_in(client, people, "staff-1")
    elsewhere = TestClient(client.app)
    sign_in(elsewhere, people, "staff-2")
    revoked = revoke_key(people.engine.store, people.key_ids["staff-1"], clock())
    assert len(revoked["sessions_ended"]) == 1
    assert not signed_in(client)
    assert signed_in(elsewhere)  # another principal's key and session
    (listed,) = list_sessions(people.engine.store, "staff-1", clock())
    assert (listed["state"], listed["ended_why"]) == ("ended", "key revoked")
    history = access_history(people.engine.store)
    assert history[-1]["change"] == "session revoked"
    assert history[-1]["detail"] == {"session_id": listed["session_id"], "why": "key revoked"}


def test_sign_in_failures_count_against_the_key_id(engine: Engine, store_url: str) -> None:
    people = People(engine)
    Projector(engine.store).catch_up(VIEWS)
    with TestClient(create_app(store_url, failure_limit=3)) as client:
        key = people.keys["staff-1"]
        wrong = key[:-6] + ("AAAAAA" if not key.endswith("AAAAAA") else "BBBBBB")
        for _ in range(3):
            bad = client.post("/login", data={"key": wrong}, headers=ORIGIN)
            assert bad.status_code == 401
        held = client.post("/login", data={"key": key}, headers=ORIGIN)
        assert held.status_code == 429 and 1 <= int(held.headers["retry-after"]) <= 60
        # Another key from the same address signs in.
        sign_in(client, people, "staff-2")
        assert signed_in(client)


def cli_run(store_url: str, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli, ["--store", store_url, *args])
    assert result.exit_code == code, (args, result.output, result.stderr)
    return result


def test_sessions_listed_and_ended_from_the_command_line(
    desk: tuple[TestClient, People, Clock], store_url: str
) -> None:
    client, people, _ = desk
    token = sign_in(client, people, "staff-1")[COOKIE]
    listed = json.loads(cli_run(store_url, "principal", "sessions", "staff-1", "--json").stdout)
    (session,) = listed
    assert session["session_id"] == session_id_of(token) and session["state"] == "active"
    assert token not in json.dumps(listed) and people.keys["staff-1"] not in json.dumps(listed)
    text = cli_run(store_url, "principal", "sessions", "staff-1").stdout
    assert session["session_id"] in text and "active" in text
    assert cli_run(store_url, "principal", "sessions", "staff-2").stdout.strip() == "(none)"
    cli_run(store_url, "principal", "sessions", "nobody", code=4)

    ended = cli_run(store_url, "principal", "end-session", session["session_id"])
    assert f"session {session['session_id']} of staff-1 ended" in ended.stdout
    assert not signed_in(client)
    cli_run(store_url, "principal", "end-session", session["session_id"], code=3)
    cli_run(store_url, "principal", "end-session", "0123456789abcdef", code=4)
    cli_run(store_url, "principal", "end-session", "not-an-id", code=2)
    history = json.loads(cli_run(store_url, "principal", "history", "--json").stdout)
    ours = [h for h in history if h["change"].startswith("session")]
    assert [h["change"] for h in ours] == ["session started", "session revoked"]
    assert all(h["detail"]["session_id"] == session["session_id"] for h in ours)
    assert token not in json.dumps(history)


def test_session_terms_and_ids_checked(engine: Engine) -> None:
    assert parse_duration("12h", "x") == timedelta(hours=12)
    assert parse_duration("90", "x") == timedelta(seconds=90)
    assert parse_duration("30m", "x") == parse_duration("30min", "x") == timedelta(minutes=30)
    for bad in ("", "0", "soon", "-5m", "3w"):
        with pytest.raises(BadInput):
            parse_duration(bad, "x")
    with pytest.raises(BadInput):
        SessionTerms(idle=timedelta(0))
    with pytest.raises(NotFound):
        end_session(engine.store, "0123456789abcdef", datetime.now(UTC))
    with pytest.raises(BadInput):
        end_session(engine.store, "'; drop", datetime.now(UTC))
    people = People(engine)
    with TestClient(create_app(engine.store.url.text)) as client:
        session_id = session_id_of(sign_in(client, people, "staff-1")[COOKIE])
    assert session_id is not None
    ended = end_session(engine.store, session_id, datetime.now(UTC))
    assert ended["principal"] == "staff-1" and ended["why"] == "revoked"
    with pytest.raises(NotAllowed, match="ended at"):
        end_session(engine.store, session_id, datetime.now(UTC))


def test_a_store_made_before_sessions_gets_their_table(engine: Engine, store_url: str) -> None:
    """A store whose access tables came before the sessions' gets the sessions' table when it is
    next opened, on both backends."""
    people = People(engine)
    engine.store.execute("DROP TABLE {t}aftersales_sessions")
    engine.close()
    with Engine(store_url) as reopened:
        assert reopened.store.query("SELECT * FROM {t}aftersales_sessions") == []
    with TestClient(create_app(store_url)) as client:
        sign_in(client, people, "staff-1")
        assert client.get("/v1/cases").status_code == 200
