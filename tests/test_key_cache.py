"""The serving process's cache of credentials (engine/access/credential_cache.py): a key the
store granted is not read again for each request while revocations are heard, and yet a
revocation counts at once in the process that makes it, reaches a running server from another
process by its notification, and is never outlived by a read made before it; a row changed by
hand counts once the cache's age limit has passed; on SQLite nothing is kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from aftersales.commands.http.app import create_app
from aftersales.commands.http.batcher import Api
from aftersales.engine.access.api_keys import Unauthenticated
from aftersales.engine.access.credential_cache import MAX_AGE, CredentialCache, Grant
from aftersales.engine.access.desk_sessions import grant_credentials
from aftersales.engine.access.principal_store import create_key, revoke_key
from aftersales.engine.application.handler import Engine
from aftersales.engine.storage.store import AftersalesStore
from tests.people import People
from tests.test_desk_sessions import Clock
from tests.test_serve import Server

ROOT = Path(__file__).resolve().parent.parent


def heard(api: Api) -> None:
    """Wait until the server's listener has connected (it starts with the application)."""
    deadline = time.monotonic() + 30
    while not api.credentials.listening:
        assert time.monotonic() < deadline, "the revocation listener never connected"
        time.sleep(0.02)


@pytest.fixture
def served_here(engine: Engine, store_url: str) -> Iterator[tuple[TestClient, Api, People, Clock]]:
    people = People(engine)
    clock = Clock()
    app = create_app(store_url, failure_limit=10_000)
    api: Api = app.state.api
    api.now = clock
    with TestClient(app) as client:
        if engine.store.is_postgres:
            heard(api)
        yield client, api, people, clock


def test_a_kept_key_is_not_read_again_and_its_revocation_counts_at_once(
    served_here: tuple[TestClient, Api, People, Clock],
) -> None:
    client, api, people, _ = served_here
    staff = people.auth("staff-1")
    case = people.cases["shop-1"]
    for _ in range(3):
        assert client.get(f"/v1/cases/{case}", headers=staff).status_code == 200
    if not people.engine.store.is_postgres:
        # Nothing to hear revocations on: every request reads its key.
        assert (api.credentials.reads, api.credentials.hits) == (3, 0)
        return
    assert (api.credentials.reads, api.credentials.hits) == (1, 2)
    # Revoked in this process (as the desk's sign-out ends a session): the next request is
    # refused, with no notification waited for.
    revoke_key(people.engine.store, people.key_ids["staff-1"], datetime.now(UTC))
    response = client.get(f"/v1/cases/{case}", headers=staff)
    assert response.status_code == 401 and "revoked" in response.text
    # Other keys are read again too, and kept again.
    ops = people.auth("ops")
    for _ in range(2):
        assert client.get(f"/v1/cases/{case}", headers=ops).status_code == 200
    assert (api.credentials.reads, api.credentials.hits) == (3, 3)


def test_a_row_changed_by_hand_counts_once_the_age_limit_has_passed(
    served_here: tuple[TestClient, Api, People, Clock],
) -> None:
    client, _, people, clock = served_here
    staff = people.auth("staff-1")
    case = people.cases["shop-1"]
    assert client.get(f"/v1/cases/{case}", headers=staff).status_code == 200
    # Revoked behind the engine's back: no notification, nothing forgotten.
    store = people.engine.store
    store.write(
        [
            (
                "UPDATE {t}aftersales_keys SET revoked_at = ? WHERE key_id = ?",
                [store.time_param(clock()), people.key_ids["staff-1"]],
            )
        ]
    )
    kept = client.get(f"/v1/cases/{case}", headers=staff).status_code
    assert kept == (200 if store.is_postgres else 401)
    clock.move(seconds=MAX_AGE.total_seconds())
    response = client.get(f"/v1/cases/{case}", headers=staff)
    assert response.status_code == 401 and "revoked" in response.text


def test_a_key_kept_expires_at_its_own_time(
    served_here: tuple[TestClient, Api, People, Clock],
) -> None:
    client, _, people, clock = served_here
    made = create_key(people.engine.store, "staff-1", clock(), clock() + timedelta(seconds=1))
    short = {"Authorization": f"Bearer {made['key']}"}
    case = people.cases["shop-1"]
    assert client.get(f"/v1/cases/{case}", headers=short).status_code == 200
    clock.move(seconds=1)
    response = client.get(f"/v1/cases/{case}", headers=short)
    assert response.status_code == 401 and "expired" in response.text


def test_a_read_that_overlaps_a_revocation_is_not_kept(engine: Engine) -> None:
    """A revocation heard while a credential is being read (the read may be from before it):
    the answer is given, but not kept, and the next request reads again."""
    people = People(engine)
    cache = CredentialCache()
    cache.set_listening(True)
    key = people.keys["staff-1"]
    reads: list[int] = []

    def granter(
        store: AftersalesStore, credentials: Sequence[str | None], now: datetime
    ) -> dict[str | None, Grant | Unauthenticated]:
        found = grant_credentials(store, credentials, now)
        reads.append(len(credentials))
        if len(reads) == 1:
            cache.forget()  # as the listener does on a notification, mid-read
        return found

    now = datetime.now(UTC)
    for _ in range(3):
        found = cache.authenticate(engine.store, [key, key], now, granter)[key]
        assert not isinstance(found, Unauthenticated) and found.principal_id == "staff-1"
    assert reads == [1, 1]  # read, not kept; read and kept; then kept
    cache.set_listening(False)  # no longer hearing: what was kept is not used
    cache.authenticate(engine.store, [key], now, granter)
    assert reads == [1, 1, 1]


def test_a_revocation_from_another_process_reaches_a_running_server(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    """A real `serve` keeping keys for an hour: only the revocation's notification can end
    a kept key there. It is refused once the notification is heard (milliseconds after the
    revocation commits; the loop below allows for a loaded machine)."""
    if not engine.store.is_postgres:
        pytest.skip("SQLite keeps no credentials (test_a_kept_key_is_not_read_again...)")
    people = People(engine)
    server = Server(store_url, tmp_path / "server.log", options=("--key-cache", "3600"))
    try:
        staff = people.auth("staff-1")
        case = people.cases["shop-1"]
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for _ in range(3):
                assert http.get(f"/v1/cases/{case}", headers=staff).status_code == 200
            revoke = subprocess.run(
                [sys.executable, "-m", "aftersales.commands.cli.main", "--store", store_url,
                 "key", "revoke", people.key_ids["staff-1"]],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
            )  # fmt: skip
            assert revoke.returncode == 0, revoke.stderr
            deadline = time.monotonic() + 30
            while True:
                response = http.get(f"/v1/cases/{case}", headers=staff)
                if response.status_code != 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert response.status_code == 401 and "revoked" in response.text
            ops = people.auth("ops")
            assert http.get(f"/v1/cases/{case}", headers=ops).status_code == 200
    finally:
        assert server.stop() == 0
