"""Reads from a standby (``--read-store``, ``serve --read-store``) on a real streaming replica: a
primary and a standby of it made with ``pg_basebackup`` (``tests/replica_pair.py``), brought up
once for the module (about a second) and taken down after it.

The standby's replay is paused (``pg_wal_replay_pause()``) while an action is taken on the
primary: a report read from the standby shows the old position and a lag; a read carrying the
action's token waits, then reads the primary (or, replay resumed within the wait, the standby)
and shows the action; resumed, the standby catches up."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import OpenCase
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.storage.replica import check_token, lsn_number
from aftersales.projections.registry import VIEWS
from aftersales.projections.runner import Projector
from tests.conftest import place_delivered, recently
from tests.replica_pair import ReplicaPair


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicaPair]:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("the replica pair runs as postgres, started by root (setpriv)")
    found = ReplicaPair(Path(f"/tmp/aftersales-replica-test-{os.getpid()}"))
    try:
        found.up()
        yield found
    finally:
        found.down()


ORDERS = itertools.count(1)


@pytest.fixture
def case_id(pair: ReplicaPair) -> str:
    """A delivered order and a return case on it of the test's own, projected on the primary
    and replayed on the standby (each test stands alone: the module's tests may be spread over
    several processes, each with a pair of its own)."""
    order_id = f"KS-{next(ORDERS)}"
    with Engine(pair.primary_url) as engine:
        place_delivered(engine, order_id, delivered_at=recently())
        opened = OpenCase(
            order_id=order_id, type="return_refund", reason="quality.colour", amount="39.90"
        )
        case = str(engine.handle(opened)["case_id"])
        Projector(engine.store).catch_up(VIEWS)
    caught_up(pair)
    return case


@pytest.fixture
def paused(pair: ReplicaPair) -> Iterator[None]:
    """The standby's replay paused for the test, resumed after it whatever happened."""
    pair.standby("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        pair.standby("SELECT pg_wal_replay_resume()")


def aftersales(pair: ReplicaPair, *args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(cli, ["--store", pair.primary_url, *args, "--json"], env=env or {})
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def resume_once_waiting(pair: ReplicaPair) -> None:
    """Resume the standby's replay 0.3 s after a read connected to it (a connection newer than
    this call asking where the standby is), or after 30 s."""
    since = pair.standby("SELECT now()")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with psycopg.connect(pair.standby_url, autocommit=True) as c:
            row = c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND backend_start > %s AND query LIKE %s",
                (since, "%pg_last_wal_replay_lsn%"),
            ).fetchone()
        if row and row[0]:
            break
        time.sleep(0.02)
    time.sleep(0.3)
    pair.standby("SELECT pg_wal_replay_resume()")


def caught_up(pair: ReplicaPair, timeout: float = 10.0) -> None:
    """Wait until the standby has replayed all the primary has written (inserted: the tests'
    commits do not wait for their flush, tests/conftest.py)."""
    with psycopg.connect(pair.primary_url, autocommit=True) as c:
        row = c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    target = lsn_number(row[0])
    deadline = time.monotonic() + timeout
    while lsn_number(str(pair.standby("SELECT pg_last_wal_replay_lsn()::text"))) < target:
        assert time.monotonic() < deadline, "the standby did not catch up"
        time.sleep(0.05)


def test_a_paused_standby_answers_with_its_old_position_and_a_lag(
    pair: ReplicaPair, case_id: str, paused: None
) -> None:
    before = aftersales(pair, "report", "dashboard", "--read-store", pair.standby_url)
    assert before["read"]["from"] == "standby" and before["read"]["behind"] == 0
    old = before["read"]["position"]
    approved = aftersales(
        pair, "case", "approve", case_id, "--return-address", "88 Wensan Rd",
        "--read-store", pair.standby_url,
    )  # fmt: skip
    assert approved["status"] == "awaiting_buyer_shipment"
    token = approved["read_after"]
    assert lsn_number(token) > lsn_number(before["read"]["lsn"])
    aftersales(pair, "project", "run")  # on the primary
    time.sleep(0.05)
    report = aftersales(pair, "report", "dashboard", "--read-store", pair.standby_url)
    read = report["read"]
    # The standby as it stood: the old log position, behind the primary, lagging in seconds.
    assert read["from"] == "standby" and read["position"] == old
    assert read["primary_position"] > old and read["behind"] == read["primary_position"] - old
    assert read["replay_lag_seconds"] > 0 and read["lag_bytes"] > 0
    assert report["position"] == before["position"]  # the projection as replayed, not caught up
    shown = aftersales(pair, "case", "show", case_id, "--read-store", pair.standby_url)
    assert shown["status"] == "awaiting_merchant" and shown["read"]["behind"] > 0

    # Carrying the approval's token: the standby never gets there, so the primary answers.
    started = time.monotonic()
    own = aftersales(
        pair, "case", "show", case_id, "--read-store", pair.standby_url, "--read-after", token,
        env={"AFTERSALES_READ_WAIT": "0.4"},
    )  # fmt: skip
    assert time.monotonic() - started >= 0.4
    assert own["status"] == "awaiting_buyer_shipment"
    assert own["read"]["from"] == "primary" and own["read"]["after"] == token
    assert own["read"]["waited_seconds"] >= 0.4 and own["read"]["behind"] == 0


def test_a_read_with_a_token_reads_the_standby_once_it_has_replayed(
    pair: ReplicaPair, case_id: str, paused: None
) -> None:
    approved = aftersales(
        pair, "case", "approve", case_id, "--return-address", "88 Wensan Rd",
        "--read-store", pair.standby_url,
    )  # fmt: skip
    # Replay resumes 0.3 s after the read began waiting (however long the command took to
    # start on a loaded machine), well within the wait it is given.
    threading.Thread(target=resume_once_waiting, args=(pair,)).start()
    own = aftersales(
        pair, "case", "show", case_id, "--read-store", pair.standby_url,
        "--read-after", approved["read_after"], env={"AFTERSALES_READ_WAIT": "30"},
    )  # fmt: skip
    assert own["status"] == "awaiting_buyer_shipment"
    assert own["read"]["from"] == "standby"
    assert own["read"]["waited_seconds"] >= 0.2
    # Resumed: the standby catches up with the primary.
    caught_up(pair)
    ledger = aftersales(pair, "ledger", "--read-store", pair.standby_url)["read"]
    assert ledger["from"] == "standby" and ledger["behind"] == 0
    assert ledger["position"] == ledger["primary_position"] == own["read"]["primary_position"]
    # The cluster's way: every member named, libpq keeps a standby.
    both = pair.primary_url.replace(
        f":{pair.primary_port}/", f":{pair.primary_port},127.0.0.1:{pair.standby_port}/"
    )
    anyone = aftersales(
        pair, "case", "show", case_id, "--read-store", f"{both}?target_session_attrs=standby"
    )
    assert anyone["read"]["from"] == "standby" and anyone["status"] == "awaiting_buyer_shipment"


def test_the_read_store_is_refused_unless_a_standby_of_a_postgresql_store(
    pair: ReplicaPair, tmp_path: Path
) -> None:
    with pytest.raises(BadInput):
        check_token("yesterday")
    assert check_token(" 0/34b76b8 ") == "0/34B76B8"
    sqlite = f"sqlite:///{tmp_path}/a.db"
    assert CliRunner().invoke(cli, ["--store", sqlite, "init"]).exit_code == 0
    result = CliRunner().invoke(
        cli,
        ["--store", sqlite, "ledger", "--json"],
        env={"AFTERSALES_READ_STORE": pair.standby_url},
    )
    assert result.exit_code == 2 and "PostgreSQL standby" in result.stdout


def test_http_reads_the_standby_and_an_action_token_brings_the_primary(
    pair: ReplicaPair, case_id: str, paused: None
) -> None:
    from fastapi.testclient import TestClient

    from aftersales.commands.http.app import create_app
    from aftersales.engine.access.principal_store import add_principal, create_key

    with Engine(pair.primary_url) as engine:
        now = datetime.now(UTC)
        add_principal(engine.store, "staff-a", "merchant", "shop-1", now)
        key = create_key(engine.store, "staff-a", now, None)["key"]
    auth = {"Authorization": f"Bearer {key}"}
    os.environ["AFTERSALES_READ_WAIT"] = "0.3"
    try:
        app = create_app(pair.primary_url, failure_limit=10_000, read_store=pair.standby_url)
        with TestClient(app) as client:
            report = client.get("/v1/reports/ledger", headers=auth)
            assert report.status_code == 200, report.text
            assert report.headers["X-Read-From"] == "standby"
            assert "X-Projection-Lag" in report.headers
            old = int(report.headers["X-Read-Position"])
            acted = client.post(
                f"/v1/cases/{case_id}/message", json={"text": "on its way"}, headers=auth
            )
            assert acted.status_code == 200, acted.text
            token = acted.headers["X-Read-After"]
            assert client.cookies.get("aftersales_read_after") == token
            # The desk after a click: its page carries the cookie, so it waits for the action.
            page = client.get(f"/desk/cases/{case_id}", headers=auth)
            assert page.status_code == 200 and "on its way" in page.text
            assert page.headers["X-Read-From"] == "primary"
            # No token: the standby as it stands, behind by the message.
            client.cookies.clear()
            plain = client.get(f"/v1/cases/{case_id}", headers=auth)
            assert plain.headers["X-Read-From"] == "standby"
            assert int(plain.headers["X-Read-Position"]) == old
            assert int(plain.headers["X-Read-Behind"]) >= 1
            assert float(plain.headers["X-Replay-Lag"]) > 0
            assert "on its way" not in plain.text
            # The token (as the desk's cookie does it): waits, then the primary.
            own = client.get(f"/v1/cases/{case_id}", headers={**auth, "X-Read-After": token})
            assert own.headers["X-Read-From"] == "primary"
            assert float(own.headers["X-Read-Waited"]) >= 0.3
            assert "on its way" in own.text
            bad = client.get(f"/v1/cases/{case_id}", headers={**auth, "X-Read-After": "soon"})
            assert bad.status_code == 422
    finally:
        del os.environ["AFTERSALES_READ_WAIT"]


def test_a_standby_gone_sends_the_reads_to_the_primary(pair: ReplicaPair, case_id: str) -> None:
    from fastapi.testclient import TestClient

    from aftersales.commands.http.app import create_app
    from aftersales.engine.access.principal_store import add_principal, create_key

    with Engine(pair.primary_url) as engine:
        now = datetime.now(UTC)
        add_principal(engine.store, "ops-gone", "operator", None, now)
        key = create_key(engine.store, "ops-gone", now, None)["key"]
    auth = {"Authorization": f"Bearer {key}"}
    app = create_app(pair.primary_url, failure_limit=10_000, read_store=pair.standby_url)
    with TestClient(app) as client:
        assert client.get(f"/v1/cases/{case_id}", headers=auth).headers["X-Read-From"] == "standby"
        pair.stop_standby()
        try:
            read = client.get(f"/v1/cases/{case_id}", headers=auth)
            assert read.status_code == 200 and read.headers["X-Read-From"] == "primary"
            assert read.headers["X-Read-Behind"] == "0"
        finally:
            pair.start_standby()
