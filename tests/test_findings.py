"""Smaller integrity findings: workers end with their parent, the store's password is never
printed, a dispute bundle is its owner's alone, and a buyer's withdrawal is the table's."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from aftersales.engine.application.bulk import Report
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import EscalateCase, OpenCase, RejectCase, WithdrawCase
from aftersales.engine.application.workers import Worker
from aftersales.engine.domain.transitions import ALLOWED_FROM
from aftersales.engine.domain.values import Status
from tests.conftest import at, place_delivered

ROOT = Path(__file__).resolve().parent.parent


# Workers end with their parent ------------------------------------------------------------------


def beating_share(folder: str, worker: Worker) -> Report:
    """A worker's share that writes a heartbeat (its pid, a count) until it is stopped."""
    beat = Path(folder) / f"worker-{worker.index}"
    for count in range(1200):
        beat.write_text(f"{os.getpid()} {count}")
        time.sleep(0.05)
    return Report()


PARENT = """
import sys
from aftersales.engine.application.workers import in_processes
from tests.test_findings import beating_share
in_processes(sys.argv[1], beating_share, (sys.argv[2],), workers=2)
"""


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def test_workers_end_when_their_parent_is_killed(store_url: str, tmp_path: Path) -> None:
    """`kill -9` of the process running `--workers 2`: both workers end within seconds and
    write nothing more (the kernel signals them, prctl PR_SET_PDEATHSIG)."""
    if not store_url.startswith("postgresql"):
        pytest.skip("more than one worker needs PostgreSQL")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, store_url, str(tmp_path)], cwd=ROOT, env=env
    )
    try:
        beats = [tmp_path / "worker-0", tmp_path / "worker-1"]
        deadline = time.monotonic() + 60
        while not all(b.exists() and b.read_text() for b in beats):
            assert time.monotonic() < deadline, "the workers never started"
            assert parent.poll() is None, "the parent ended early"
            time.sleep(0.1)
        pids = [int(b.read_text().split()[0]) for b in beats]
        assert all(_alive(pid) for pid in pids)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            time.sleep(0.1)
        last = [b.read_text() for b in beats]
        time.sleep(0.5)
        assert [b.read_text() for b in beats] == last  # nothing written since
    finally:
        if parent.poll() is None:
            parent.kill()


# The store's password is never printed ----------------------------------------------------------

SECRET = "s3cret-Pw"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://someone:{SECRET}@127.0.0.1:1/test",  # nothing listens there
        f"postgresql://someone:{SECRET}@[::1/test",  # not a URL
        f"postgresql://someone:{SECRET}@127.0.0.1/test?color=red",  # an unknown option
        f"postgresql://nobody_here:{SECRET}@127.0.0.1:5432/test",  # refused by the server
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_the_store_password_is_never_printed(url: str, as_json: bool) -> None:
    args = ["--store", url, "case", "show", "3f2b0000-0000-0000-0000-000000000000"]
    result = CliRunner().invoke(cli, [*args, *(["--json"] if as_json else [])])
    assert result.exit_code in (1, 2), (result.exit_code, result.stdout, result.stderr)
    assert "error:" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    if as_json:
        assert json.loads(result.stdout)["error"]["message"]
    # The same through the environment, in a batch's JSON lines.
    batch = CliRunner().invoke(
        cli,
        ["batch", "-", "--json"],
        input='{"action": "case show", "case_id": "3f2b0000-0000-0000-0000-000000000000"}\n',
        env={"AFTERSALES_STORE": url},
    )
    assert SECRET not in batch.stdout + batch.stderr


# A dispute bundle is its owner's alone ---------------------------------------------------------


def _opened(engine: Engine, order_id: str) -> str:
    place_delivered(engine, order_id)
    asked = {"type": "refund_only", "reason": "quality.x", "amount": "39.90", "at": at(days=3)}
    case_id: str = engine.handle(OpenCase(order_id=order_id, **asked))["case_id"]
    return case_id


def test_an_exported_bundle_is_readable_by_its_owner_alone(
    engine: Engine, store_url: str, tmp_path: Path
) -> None:
    case_id = _opened(engine, "KS-1")
    path = tmp_path / "bundle.json"
    before = os.umask(0o000)  # the most open umask there is
    try:
        result = CliRunner().invoke(
            cli, ["--store", store_url, "audit", case_id, "--export", str(path), "--json"]
        )
    finally:
        os.umask(before)
    assert result.exit_code == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# A buyer may withdraw a rejected or escalated case: the table, the engine, the docs agree -------


def _case(engine: Engine, order_id: str) -> str:
    """A refund-only case the merchant rejected."""
    case_id = _opened(engine, order_id)
    engine.handle(
        RejectCase(case_id=case_id, reason="worn", communication="call:1", at=at(days=3, hours=2))
    )
    return case_id


def _show(store_url: str, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli, ["--store", store_url, *args, "--json"])
    assert result.exit_code == code, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_a_buyer_withdraws_a_rejected_or_escalated_case_as_the_table_says(
    engine: Engine, store_url: str
) -> None:
    """The decision: no money has moved in `rejected` or `escalated`, and no goods are on
    their way, so the buyer may walk away (dropping a dispute before the ruling); not once
    the goods are on their way back. The engine, the table, the docs and the standalone
    verifier say the same."""
    assert {Status.REJECTED, Status.ESCALATED} <= ALLOWED_FROM["withdraw"]
    assert Status.AWAITING_MERCHANT_RECEIPT not in ALLOWED_FROM["withdraw"]
    rejected = _case(engine, "KS-1")
    escalated = _case(engine, "KS-2")
    engine.handle(EscalateCase(case_id=escalated, claim="unjustified_rejection", at=at(days=4)))
    for case_id in (rejected, escalated):
        engine.handle(WithdrawCase(case_id=case_id, at=at(days=5)))
        shown = _show(store_url, "case", "show", case_id)
        assert shown["status"] == "closed" and shown["refunded_amount"] == "0.00"
        audit = _show(store_url, "audit", case_id, "--verify")
        assert audit["verified"] is True, audit["problems"]
    table = (ROOT / "docs" / "transitions.md").read_text(encoding="utf-8")
    assert (
        "| `awaiting_merchant`, `awaiting_buyer_shipment`, `escalated`, `rejected` | "
        "`withdraw` | buyer |" in table
    )
    doc = (ROOT / "docs" / "command-line.md").read_text(encoding="utf-8")
    section = doc.split("### `aftersales case withdraw CASE_ID`", 1)[1].split("###", 1)[0]
    assert "`escalated`, `rejected`" in section and "awaiting_merchant_receipt" not in section
