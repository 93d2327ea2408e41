"""A newcomer's first hour: fast help, reads that create nothing, one zone for people,
completion, short case ids."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner

from aftersales.commands.cli.main import COMMANDS, cli, load_command
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import OpenCase, new_case_id
from tests.conftest import PG_URL, at, place_delivered, recently, schema_url


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args))


def test_the_root_help_lists_each_command_by_the_first_words_of_its_own_help() -> None:
    for name, (_, line) in COMMANDS.items():
        command = load_command(name)
        assert command.name == name
        first = " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())
        assert first.startswith(line), (name, first, line)
    shown = invoke("--help").stdout
    assert all(f"  {name} " in shown for name in COMMANDS)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["-h"]])
def test_help_and_version_load_click_alone(args: list[str]) -> None:
    probe = (
        "import sys\n"
        "from aftersales.commands.cli.main import main\n"
        f"sys.argv = ['aftersales', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('pydantic', 'psycopg', 'eventsourcing', 'aftersales.engine')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_a_sqlite_store_loads_nothing_of_postgresql(store_url: str) -> None:
    """Commands on a SQLite store, reads and writes, never import psycopg or the library's
    PostgreSQL module (a tenth of a second of every start); on a PostgreSQL store they do."""
    runs = [
        ["order", "place", "NP-1", "--merchant", "m", "--buyer", "b", "--line", "A:1:10.00"],
        ["order", "show", "NP-1"],
        ["case", "list"],
        ["tick"],
    ]
    expected = "['psycopg', 'eventsourcing.postgres']" if "postgres" in store_url else "[]"
    # One process runs the commands in turn, saying after each what it has loaded so far: a
    # module once imported stays, so each command is seen to load nothing the ones before it
    # had not.
    probe = (
        "import sys\n"
        "from aftersales.commands.cli.main import main\n"
        f"for args in {runs!r}:\n"
        f"    sys.argv = ['aftersales', '--store', {store_url!r}, *args]\n"
        "    try:\n        main()\n"
        "    except SystemExit as exc:\n        assert not exc.code, exc.code\n"
        "    pg = [m for m in ('psycopg', 'eventsourcing.postgres') if m in sys.modules]\n"
        "    print('PG', pg)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    said = [line for line in out.stdout.splitlines() if line.startswith("PG ")]
    assert said == [f"PG {expected}"] * len(runs), out.stdout


# What a read loads beside the engine: nothing of the other commands. (Each of these was, or
# would be, a few hundredths of a second on every start; see docs/performance.md.)
NOT_FOR_A_READ = (
    "fastapi",
    "starlette",
    "uvicorn",
    "jinja2",
    "orjson",
    "cryptography",
    "nats",
    "psycopg",
    "eventsourcing.postgres",
    "multiprocessing",
    "concurrent.futures",
    "aftersales.projections",
    "aftersales.commands.http",
    "aftersales.commands.desk",
    "aftersales.engine.integrity",
    "aftersales.engine.application.bulk",
    "aftersales.engine.application.workers",
    "aftersales.commands.cli.imports",
)


def test_a_read_on_sqlite_loads_only_what_it_uses(tmp_path: Path) -> None:
    """`order show` and `case show` on a SQLite store, run as a process runs them (the console
    entry, main()), import none of the modules other commands need, and leave the garbage
    collector on once the command is loaded (main() holds it only while modules load)."""
    url = f"sqlite:///{tmp_path / 'start.db'}"
    with Engine(url) as engine:
        place_delivered(engine, "KS-1", delivered_at=recently())
        case_id = engine.handle(
            OpenCase(order_id="KS-1", type="refund_only", reason="quality.colour", amount="5")
        )["case_id"]
    for args in (["order", "show", "KS-1"], ["case", "show", case_id]):
        probe = (
            "import gc, sys\n"
            "from aftersales.commands.cli.main import main\n"
            f"sys.argv = ['aftersales', '--store', {url!r}, *{args!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            f"print('LOADED', [m for m in {NOT_FOR_A_READ!r} if m in sys.modules])\n"
            "print('COLLECTOR', gc.isenabled())\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert "KS-1" in out.stdout
        assert lines[-2:] == ["LOADED []", "COLLECTOR True"], (args, lines[-2:])


def test_completion_scripts_and_completing_commands() -> None:
    for shell in ("bash", "zsh", "fish"):
        result = invoke("completion", shell)
        assert result.exit_code == 0
        assert "_AFTERSALES_COMPLETE" in result.stdout and "aftersales" in result.stdout
    assert invoke("completion", "tcsh").exit_code == 2
    env = {**os.environ, "COMP_WORDS": "aftersales ca", "COMP_CWORD": "1"}
    env["_AFTERSALES_COMPLETE"] = "bash_complete"
    out = subprocess.run(
        [sys.executable, "-m", "aftersales.commands.cli.main"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.stdout.split() == ["plain,case"]
    env["COMP_WORDS"], env["COMP_CWORD"] = "aftersales case appr", "2"
    out = subprocess.run(
        [sys.executable, "-m", "aftersales.commands.cli.main"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.stdout.split() == ["plain,approve"]


# Reads never create a store -------------------------------------------------------------------

READS = [
    ["case", "list"],
    ["case", "show", "00000000-0000-0000-0000-000000000001"],
    ["order", "show", "KS-1"],
    ["ledger"],
    ["report", "dashboard"],
    ["report", "return-rates"],
    ["project", "status"],
    ["audit", "00000000-0000-0000-0000-000000000001"],
]


@pytest.mark.parametrize("args", READS, ids=lambda a: " ".join(a[:2]))
def test_a_read_on_a_missing_sqlite_store_creates_nothing(tmp_path: Path, args: list[str]) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    result = invoke("--store", url, *args, "--json")
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "store_unavailable"
    assert url in error["message"] and "aftersales init" in error["message"]
    assert not (tmp_path / "typo.db").exists()


def _schema_exists(name: str) -> bool:
    with psycopg.connect(PG_URL.split("?")[0]) as conn:
        row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,)).fetchone()
        return row is not None


@pytest.mark.parametrize("args", READS[:3] + READS[5:7], ids=lambda a: " ".join(a[:2]))
def test_a_read_on_a_missing_postgres_schema_creates_nothing(args: list[str]) -> None:
    schema = f"nc_wlak_{os.getpid()}"
    result = invoke("--store", schema_url(schema), *args)
    assert result.exit_code == 1, result.output
    assert f"no store at {schema_url(schema)}" in result.stderr
    assert not _schema_exists(schema)


def test_init_creates_a_store_once_then_reads_work(store_url: str, tmp_path: Path) -> None:
    fresh = f"sqlite:///{tmp_path / 'new.db'}"
    first = json.loads(invoke("--store", fresh, "init", "--json").stdout)
    assert first == {"store": fresh, "created": True}
    again = json.loads(invoke("--store", fresh, "init", "--json").stdout)
    assert again == {"store": fresh, "created": False}
    assert invoke("--store", fresh, "case", "list").stdout.strip() == "no cases match"
    # A store that exists already: init says so and changes nothing.
    with Engine(store_url):
        pass
    assert json.loads(invoke("--store", store_url, "init", "--json").stdout)["created"] is False


def test_a_password_in_the_store_url_is_never_shown(tmp_path: Path) -> None:
    url = "postgresql://someone:s3cret@127.0.0.1:1/nothing"
    result = invoke("--store", url, "case", "list", "--json")
    assert result.exit_code == 1
    assert "s3cret" not in result.output and "s3cret" not in result.stderr


# One zone for people ----------------------------------------------------------------------------


def test_people_read_times_in_one_zone_to_the_second(store_url: str) -> None:
    with Engine(store_url) as engine:
        place_delivered(engine, "KS-1")
        case_id = engine.handle(
            OpenCase(
                order_id="KS-1",
                type="refund_only",
                reason="quality.colour",
                amount="10.00",
                at="2026-11-03T02:00:00.123456Z",
            )
        )["case_id"]
    shown = invoke(
        "--store", store_url, "case", "show", case_id, "--at", "2026-11-04T00:00Z"
    ).stdout
    # Opened 02:00 UTC = 10:00 at +08:00; the merchant has 48 hours.
    assert "due 2026-11-05 10:00:00 +08:00: auto_approve if nobody acts" in shown
    utc = invoke(
        "--store", store_url, "--tz", "UTC", "case", "show", case_id, "--at", "2026-11-04T00:00Z"
    ).stdout
    assert "due 2026-11-05 02:00:00 +00:00" in utc
    listed = invoke(
        "--store", store_url, "--tz", "Asia/Shanghai", "case", "list", "--at", "2026-11-04T00:00Z"
    ).stdout
    assert "2026-11-05 10:00:00 +08:00" in listed and ".123456" not in listed
    # JSON keeps the time as the engine gives it.
    as_json = json.loads(
        invoke("--store", store_url, "case", "show", case_id, "--at", at(days=3), "--json").stdout
    )
    assert as_json["due_at"].startswith("2026-11-05T02:00:00.123456")
    # As of now the merchant's 48 hours are long gone: shown refunded, saying so, in the zone.
    now = invoke("--store", store_url, "case", "show", case_id).stdout
    assert "refunded" in now.splitlines()[0]
    assert "the clock: auto_approve fell due 2026-11-05 10:00:00 +08:00" in now
    bad = invoke("--store", store_url, "--tz", "Mars/Base", "case", "show", case_id)
    assert bad.exit_code == 2 and "Mars/Base" in bad.stderr


# Short case ids ---------------------------------------------------------------------------------


def _two_command_ids_whose_cases_share(chars: int) -> tuple[str, str]:
    """Two command ids whose cases' ids begin alike (case ids are derived from command ids)."""
    seen: dict[str, str] = {}
    for n in range(100_000):
        command_id = f"open-{n}"
        start = str(new_case_id(None, command_id))[:chars]
        if start in seen:
            return seen[start], command_id
        seen[start] = command_id
    raise AssertionError("no two")


def test_a_case_can_be_named_by_the_start_of_its_id(store_url: str) -> None:
    command_ids = _two_command_ids_whose_cases_share(5)
    with Engine(store_url) as engine:
        ids = []
        for order, command_id in zip(("KS-1", "KS-2"), command_ids, strict=True):
            place_delivered(engine, order)
            opened = OpenCase(
                order_id=order,
                type="refund_only",
                reason="quality.colour",
                amount="10.00",
                at=at(days=2),
                command_id=command_id,
            )
            ids.append(engine.handle(opened)["case_id"])
    first, second = ids
    common = next(i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b)
    assert common >= 5
    short = first[: common + 1]
    shown = json.loads(invoke("--store", store_url, "case", "show", short, "--json").stdout)
    assert shown["case_id"] == first
    approved = invoke(
        "--store", store_url, "case", "approve", short, "--at", at(days=2, hours=1), "--json"
    )
    assert approved.exit_code == 0, approved.output
    assert json.loads(approved.stdout)["status"] == "refunded"
    assert (
        json.loads(invoke("--store", store_url, "audit", short, "--json").stdout)["case_id"]
        == first
    )
    # A start both share is refused as ambiguous, naming both; nothing was done.
    shared = invoke("--store", store_url, "case", "approve", first[:common], "--json")
    assert shared.exit_code == 2
    message = json.loads(shared.stdout)["error"]["message"]
    assert "ambiguous" in message and first in message and second in message
    assert (
        json.loads(
            invoke(
                "--store", store_url, "case", "show", second, "--at", at(days=3), "--json"
            ).stdout
        )["status"]
        == "awaiting_merchant"
    )
    # Too short to be a start (three characters), or the start of no case: no such case.
    assert invoke("--store", store_url, "case", "show", first[:3]).exit_code == 4
    other = "0000" if not first.startswith("0000") and not second.startswith("0000") else "ffff"
    unknown = invoke("--store", store_url, "case", "show", other)
    assert unknown.exit_code == 4 and f"no case starts with {other}" in unknown.stderr


# Scripts ------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(script: str, tmp_path: Path) -> None:
    """Each script reads its command line before its heavy imports: help comes at once."""
    for flag in ("--help", "-h"):
        out = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / script), flag],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "usage" in out.stdout.lower() and not out.stderr
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{script!r}, '--help']\n"
        f"try:\n    runpy.run_path({str(ROOT / 'scripts' / script)!r}, run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('pydantic', 'psycopg', 'eventsourcing', 'fastapi', 'nats', 'cryptography',"
        " 'aftersales.engine', 'aftersales.projections', 'aftersales.commands')\n"
        "print('HEAVY', [m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []", out.stderr


def test_loadgen_reships_within_the_24_hours_after_approval() -> None:
    """Every reship the load generator writes comes within 24 hours of the case's approval:
    the merchant's, or the system's at the 48-hour deadline when the merchant was silent
    (the tick that fires it comes later, but the window counts from the deadline)."""
    from datetime import datetime, timedelta

    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "loadgen.py"), "--orders", "5000", "--seed", "7"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    opened: dict[str, datetime] = {}
    approved: dict[str, datetime] = {}
    reshipped: dict[str, datetime] = {}
    for line in out.splitlines():
        row = json.loads(line)
        if "at" not in row:  # a tick line names its moment "now"
            continue
        when = datetime.fromisoformat(row["at"])
        if row["action"] == "case open" and row["type"] == "reship":
            opened[str(new_case_id(None, row["command_id"]))] = when
        elif row["action"] == "case approve":
            approved[row["case_id"]] = when
        elif row["action"] == "case reship":
            reshipped[row["case_id"]] = when
    assert len(reshipped) > 20
    silent = [c for c in reshipped if c not in approved]
    assert silent, "no reship after a silent merchant to check"
    for case_id, when in reshipped.items():
        start = approved.get(case_id, opened[case_id] + timedelta(hours=48))
        assert start < when < start + timedelta(hours=24), case_id


def test_import_progress_is_as_long_as_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aftersales.commands.cli import imports

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    path = tmp_path / "history.jsonl"
    path.write_text("".join(f'{{"action": "tick", "now": "{at(days=n)}"}}\n' for n in range(7)))
    with path.open() as source, imports._progress("actions", source) as bar:
        assert bar.length == 7 and bar.show_percent is not False
    # Standard input, or a CSV file whose rows are not one item each: it counts, no percentage.
    with imports._progress("orders", None) as bar:
        assert bar.show_percent is False
    summary = imports.render_report(
        {
            "lines": 3,
            "ok": 3,
            "failed": 0,
            "events": 6,
            "seconds": 0.1,
            "events_per_second": 60,
            "errors": [],
        },
        "orders",
    )
    assert summary.startswith("3 orders: 3 ok, 0 failed")


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path) -> None:
    """`aftersales case list | head -n 1` on a store with more rows than a pipe holds.

    The pipe is shrunk to one page (Linux lets a pipe's capacity be set), so a few hundred
    cases fill it several times over: the command is still writing when `head` has gone."""
    import fcntl

    from aftersales.engine.storage.store import AftersalesStore
    from scripts.workload import generate

    url = f"sqlite:///{tmp_path / 'many.db'}"
    store = AftersalesStore(url)
    generate(store, 8_000, merchants=5, case_share=1.0)  # about 800 cases
    store.close()
    for command in ("case list", "case list --json", "case list -q"):
        read_end, write_end = os.pipe()
        capacity = fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
        # More than the pipe, `head`'s one read and Python's buffer together, with room to spare.
        whole = invoke("--store", url, *command.split()).stdout
        assert len(whole.encode()) > 4 * capacity + 8192, command
        writer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aftersales.commands.cli.main",
                "--store",
                url,
                *command.split(),
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
        reader = subprocess.Popen(
            ["head", "-n", "1"], stdin=read_end, stdout=subprocess.PIPE, text=True
        )
        os.close(read_end)
        os.close(write_end)
        shown, _ = reader.communicate(timeout=120)
        _, errors = writer.communicate(timeout=120)
        assert shown.count("\n") == 1, command
        assert "Traceback" not in errors and "Error" not in errors, errors
