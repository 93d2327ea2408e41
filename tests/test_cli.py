"""The command line as other programs use it: JSON on stdout, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from aftersales.commands.cli.main import cli
from tests.conftest import at

ROOT = Path(__file__).resolve().parent.parent
CASE_KEYS = {
    "case_id",
    "order_id",
    "merchant_id",
    "buyer_id",
    "type",
    "reason",
    "status",
    "amount",
    "refunded_amount",
    "refund_paid_by",
    "due_at",
    "version",
}


class Cli:
    def __init__(self, store: str) -> None:
        self.store = store
        self.runner = CliRunner()

    def run(self, *args: str, code: int = 0) -> Any:
        result = self.runner.invoke(cli, ["--store", self.store, *args, "--json"])
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1, result.stdout  # exactly one JSON value on stdout
        value = json.loads(lines[0])
        if code:
            assert value["error"]["message"]
            assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        return value


@pytest.fixture
def run(store_url: str) -> Cli:
    return Cli(store_url)


def setup_order(run: Cli) -> None:
    run.run(
        "order",
        "place",
        "KS-1",
        "--merchant",
        "shop-1",
        "--buyer",
        "buyer-1",
        "--line",
        "CASE-RED:1:39.90:phone_accessory",
        "--line",
        "GIFT:1:5.00",
        "--at",
        at(),
    )
    run.run("order", "ship", "KS-1", "--carrier", "SF", "--waybill", "W1", "--at", at(days=1))
    run.run("order", "deliver", "KS-1", "--at", at(days=2))


def test_the_article_case_end_to_end(run: Cli) -> None:
    setup_order(run)
    case = run.run(
        "case",
        "open",
        "KS-1",
        "--type",
        "return_refund",
        "--reason",
        "quality.colour_difference",
        "--amount",
        "39.90",
        "--line",
        "CASE-RED",
        "--evidence",
        "photo:1",
        "--evidence",
        "chat:2",
        "--at",
        at(days=3),
    )
    assert set(case) >= CASE_KEYS
    assert case["status"] == "awaiting_merchant" and case["amount"] == "39.90"
    assert case["evidence"] == ["photo:1", "chat:2"]
    cid = case["case_id"]
    steps = [
        (["approve", cid, "--return-address", "HZ", "--by", "staff-7"], "awaiting_buyer_shipment"),
        (["ship-back", cid, "--carrier", "SF", "--waybill", "SF9"], "awaiting_merchant_receipt"),
        (["receive", cid, "--condition", "ok", "--by", "staff-7"], "refunded"),
        (["rate", cid, "--score", "5", "--comment", "ok"], "refunded"),
    ]
    for day, (args, status) in enumerate(steps, start=4):
        result = run.run("case", *args, "--at", at(days=day))
        assert result["status"] == status
    shown = run.run("case", "show", cid)
    assert shown["refunded_amount"] == "39.90" and shown["refund_paid_by"] == "merchant"
    assert shown["version"] == 6  # opened, approved, shipped back, received, refunded, rated
    listed = run.run("case", "list", "--merchant", "shop-1", "--status", "refunded")
    assert [c["case_id"] for c in listed] == [cid]
    assert run.run("case", "list", "--merchant", "shop-2") == []
    order = run.run("order", "show", "KS-1")
    assert order["lines"][0]["refunded"] == "39.90" and order["case_ids"] == [cid]


def test_exit_codes_and_nothing_appended(run: Cli) -> None:
    setup_order(run)
    cid = run.run(
        "case",
        "open",
        "KS-1",
        "--type",
        "refund_only",
        "--reason",
        "quality.x",
        "--amount",
        "5.00",
        "--line",
        "GIFT",
        "--at",
        at(days=3),
    )["case_id"]
    run.run(
        "case",
        "open",
        "KS-1",
        "--type",
        "refund_only",
        "--reason",
        "quality.x",
        "--amount",
        "5,00",
        code=2,
    )
    run.run(
        "case",
        "open",
        "KS-1",
        "--type",
        "refund_only",
        "--reason",
        "quality.x",
        "--amount",
        "5.00",
        "--at",
        "2026-11-05 10:00",
        code=2,
    )
    run.run(
        "case",
        "open",
        "KS-9",
        "--type",
        "refund_only",
        "--reason",
        "quality.x",
        "--amount",
        "5.00",
        code=4,
    )
    run.run("case", "approve", "b1946ac9-2a5c-4e5a-9f0c-3f4e5d6c7b8a", code=4)
    run.run(
        "case", "ship-back", cid, "--carrier", "SF", "--waybill", "1", "--at", at(days=4), code=3
    )
    run.run("case", "approve", cid, "--at", at(days=2), code=2)
    run.run("case", "approve", cid, "--expected-version", "7", "--at", at(days=4), code=5)
    run.run("case", "reject", cid, "--reason", "x", "--at", at(days=4), code=2)  # missing option
    run.run("case", "rate", cid, "--score", "9", code=2)
    assert run.run("case", "show", cid)["version"] == 1
    error = run.run(
        "case", "ship-back", cid, "--carrier", "SF", "--waybill", "1", "--at", at(days=4), code=3
    )
    assert error["error"]["code"] == "not_allowed"
    assert "awaiting_merchant" in error["error"]["message"]
    assert "allowed now: approve, reject, refund, withdraw" in error["error"]["message"]
    assert "escalate" not in error["error"]["message"]  # not while the merchant may answer


def test_command_id_retry_prints_the_first_result(run: Cli) -> None:
    setup_order(run)
    args = (
        "case",
        "open",
        "KS-1",
        "--type",
        "refund_only",
        "--reason",
        "quality.x",
        "--amount",
        "5.00",
        "--line",
        "GIFT",
        "--command-id",
        "script-1-open",
        "--at",
        at(days=3),
    )
    first = run.run(*args)
    assert run.run(*args) == first
    error = run.run(
        "case",
        "open",
        "KS-1",
        "--type",
        "refund_only",
        "--reason",
        "quality.x",
        "--amount",
        "4.00",
        "--line",
        "GIFT",
        "--command-id",
        "script-1-open",
        code=2,
    )
    assert "already used" in error["error"]["message"]
    assert len(run.run("case", "list")) == 1


def test_human_output(store_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "--store",
            store_url,
            "order",
            "place",
            "KS-1",
            "--merchant",
            "m",
            "--buyer",
            "b",
            "--line",
            "A:1:1.00",
        ],
    )
    assert result.exit_code == 0 and "order KS-1" in result.stdout
    result = runner.invoke(cli, ["--store", store_url, "case", "list"])
    assert result.exit_code == 0 and result.stdout.strip() == "no cases match"


def _aftersales(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aftersales.commands.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=120,
    )


def test_usage_errors_in_a_real_process(tmp_path: Path) -> None:
    result = _aftersales(
        "case", "open", "KS-1", "--type", "bogus", "--reason", "q.x", "--json", cwd=tmp_path
    )
    assert result.returncode == 2
    assert json.loads(result.stdout)["error"]["code"] == "bad_input"
    result = _aftersales("case", "show", "--json", cwd=tmp_path)
    message = json.loads(result.stdout)["error"]["message"]
    assert result.returncode == 2 and message == "case_id is required"


def test_default_store_is_aftersales_db_and_env_store(tmp_path: Path) -> None:
    result = _aftersales(
        "order",
        "place",
        "KS-1",
        "--merchant",
        "m",
        "--buyer",
        "b",
        "--line",
        "A:1:1.00",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "aftersales.db").exists()
    other = tmp_path / "other.db"
    result = _aftersales(
        "order",
        "show",
        "KS-1",
        "--json",
        cwd=tmp_path,
        env={"AFTERSALES_STORE": f"sqlite:///{other}"},
    )
    # A read never creates a store: it names the URL and how to create one.
    assert result.returncode == 1
    assert not other.exists()
    assert f"no store at sqlite:///{other}" in result.stderr
    assert "aftersales init" in result.stderr


def test_unreachable_store_exit_1(tmp_path: Path) -> None:
    result = _aftersales(
        "--store", "postgresql://127.0.0.1:1/nothing", "case", "list", "--json", cwd=tmp_path
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["code"] == "store_unavailable"
    result = _aftersales("--store", "mysql://x/y", "case", "list", "--json", cwd=tmp_path)
    assert result.returncode == 2


def test_demo_runs_on_a_fresh_store(tmp_path: Path) -> None:
    path = tmp_path / "demo.db"
    result = _aftersales("demo", "--store-path", str(path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    cases = out["cases"]
    article = cases["phone case colour difference"]
    assert article["status"] == "refunded" and article["refunded_amount"] == "39.90"
    assert article["rating"]["score"] == 5
    assert cases["exchange for size"]["status"] == "completed"
    assert cases["returned goods damaged"]["status"] == "closed"
    assert cases["merchant silent for 48 hours"]["refund_paid_by"] == "merchant"
    assert any("refused" in s for s in out["steps"])
    gift = cases["missing gift, platform pays first"]
    assert gift["refund_paid_by"] == "platform" and gift["refunded_amount"] == "19.90"
    coat = cases["unjustified rejection"]
    assert coat["refund_paid_by"] == "platform" and coat["goods_recovered"] is True
    assert {r["merchant_id"]: r["advanced_by_platform"] for r in out["ledger"]} == {
        "shop-aurora": "19.90",
        "shop-linen": "399.00",
    }
    # The store it leaves behind answers the same questions.
    listed = _aftersales("--store", f"sqlite:///{path}", "case", "list", "--json", cwd=tmp_path)
    assert len(json.loads(listed.stdout)) == 11  # ten stories, one with a follow-up case
    again = _aftersales("demo", "--store-path", str(path), cwd=tmp_path)
    assert again.returncode == 2  # a fresh store only
    human = _aftersales("demo", cwd=tmp_path)
    assert human.returncode == 0 and "phone case colour difference" in human.stdout


def test_help_and_json_conventions(store_url: str, tmp_path: Path) -> None:
    """-h as well as --help, everywhere; `batch --json` like every other command."""
    runner = CliRunner()
    for argv in (["-h"], ["case", "-h"], ["case", "approve", "-h"], ["batch", "-h"]):
        result = runner.invoke(cli, argv, prog_name="aftersales")
        assert result.exit_code == 0 and result.output.startswith("Usage: aftersales"), argv
    line = json.dumps({"action": "case list"})
    result = runner.invoke(cli, ["--store", store_url, "batch", "--json", "-"], input=line)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"line": 1, "ok": True, "result": []}
    result = runner.invoke(
        cli, ["--store", "postgresql://127.0.0.1:1/nothing", "batch", "--json", "-"], input=line
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "store_unavailable"
    verifier = Path(__file__).resolve().parent.parent / "scripts" / "verify_bundle.py"
    shown = subprocess.run(
        [sys.executable, str(verifier), "--help"], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0 and shown.stdout.startswith("usage: verify_bundle.py")


def test_loadgen_into_a_reader_that_stops_early_ends_quietly() -> None:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        f"{sys.executable} scripts/loadgen.py --orders 3000 | head -n 1",
        shell=True,
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(result.stdout)["action"] == "order place"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
