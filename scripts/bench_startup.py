"""How long one `aftersales` process takes, beside `python -c pass` measured in the same run.

A script that runs one process per action pays this on every action; `batch` (or a long-lived
service) pays it once. Each command runs --runs times (default 15); the figure is the median wall
time, and the overhead is that minus the median of `python -c pass`. Goals: `--version` and
`--help` within 0.15 s of it, `case show` within 0.25 s on SQLite and 0.3 s on PostgreSQL.
The project's bytecode is compiled first, as an installed package has it.

Floors, measured alike: the libraries' top modules imported alone; the least a PostgreSQL read of
this design loads (click, psycopg, the library's persistence, pydantic with one model); and every
module outside the project that `case show` loads on each backend, imported and nothing else.

A command's own start (issue 27): `order show` and `case show` on SQLite against the libraries a
SQLite read chooses, imported alone (`import click, pydantic, eventsourcing.sqlite, sqlite3`) in
the same run; the goal is at most 0.1 s over that floor. `--sqlite-only` measures just these
(no PostgreSQL needed).

    python scripts/bench_startup.py [--runs 15] [--postgres postgresql://127.0.0.1:5432/test]
    python scripts/bench_startup.py --sqlite-only [--runs 21]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--postgres", default="postgresql://127.0.0.1:5432/test")
    parser.add_argument(
        "--sqlite-only",
        action="store_true",
        help="Only the SQLite reads against their floor (a command's own start).",
    )
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aftersales.commands
import aftersales.engine
import aftersales.projections
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.requests import DeliverOrder, OpenCase, PlaceOrder, ShowCase
from scripts.workload import scratch_schema

GOALS = {
    "--version": 0.15,
    "--help": 0.15,
    "case show (SQLite)": 0.25,
    "case show (PostgreSQL)": 0.3,
}

SQLITE_LIBRARIES = "click, pydantic, eventsourcing.application, eventsourcing.sqlite"
# The floor a command's own start is measured against (issue 27): the libraries a SQLite read
# chooses, imported and nothing else; `order show` and `case show` on SQLite within 0.1 s of it.
OWN_START_FLOOR = "click, pydantic, eventsourcing.sqlite, sqlite3"
OWN_START_GOAL = 0.1
POSTGRES_LIBRARIES = f"{SQLITE_LIBRARIES}, psycopg, eventsourcing.postgres"
# The least any PostgreSQL read of this design loads: click for the command line, psycopg for the
# server, the library's persistence, and pydantic with one model (events are pydantic models).
POSTGRES_MINIMUM = (
    "import click, decimal, json, psycopg, eventsourcing.application, eventsourcing.persistence\n"
    "from pydantic import BaseModel\n"
    "class Event(BaseModel):\n"
    "    version: int\n"
    "Event(version=1)\n"
)


def timed(rows: dict[str, list[str]], runs: int) -> dict[str, float]:
    """The median wall time of each command, the commands taken in turn on every round, so
    that a noisy neighbour slows them all alike rather than whichever ran at that moment."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(runs):
        for name, argv in rows.items():
            started = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(each) for name, each in times.items()}


def own_start(program: list[str], runs: int) -> None:
    """`order show` and `case show` on a small SQLite store against the libraries' floor, in
    one run: each figure and its difference from the floor."""
    with tempfile.TemporaryDirectory() as folder:
        sqlite = f"sqlite:///{Path(folder) / 'bench.db'}"
        case_id = one_case(sqlite)
        rows = {
            "floor": [sys.executable, "-c", f"import {OWN_START_FLOOR}"],
            "order show (SQLite)": [*program, "--store", sqlite, "order", "show", "B-1"],
            "case show (SQLite)": [*program, "--store", sqlite, "case", "show", case_id],
        }
        results = timed(rows, runs)
    floor = results.pop("floor")
    print(f"median of {runs} runs each; floor (import {OWN_START_FLOOR}): {floor:.3f} s")
    print(f"{'command':<22} {'wall s':>7} {'over floor':>11} {'ratio':>6} {'goal':>6}  met")
    for name, seconds in results.items():
        over = seconds - floor
        met = "yes" if over <= OWN_START_GOAL else "no"
        print(
            f"{name:<22} {seconds:>7.3f} {over:>11.3f} {seconds / floor:>6.2f} "
            f"{OWN_START_GOAL:>6.2f}  {met}"
        )


def one_case(url: str) -> str:
    with Engine(url) as engine:
        engine.handle(PlaceOrder(order_id="B-1", merchant="m", buyer="b", lines=["A:1:10.00"]))
        engine.handle(DeliverOrder(order_id="B-1"))
        case_id: str = engine.handle(
            OpenCase(order_id="B-1", type="refund_only", reason="quality.x", amount="10.00")
        )["case_id"]
        started = time.perf_counter()
        for _ in range(100):
            engine.handle(ShowCase(case_id=case_id))
        in_process = (time.perf_counter() - started) / 100
    print(f"  in-process case show on {url.split(':')[0]}: {in_process * 1000:.2f} ms")
    return case_id


def libraries_loaded(argv: list[str]) -> str:
    """A program importing every module outside the project that a command loads, in the order
    it loads them (read from ``python -X importtime``), and doing nothing else."""
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]], check=True, capture_output=True, text=True
    )
    names = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if not name.startswith(("aftersales", "__editable__", "imported package")):
                names.append(name)
    return (
        "import importlib\n"
        f"for name in {names!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        pass\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    program = [sys.executable, "-m", "aftersales.commands.cli.main"]
    # With bytecode cached, as an installed package runs: pip compiles what it installs, and a
    # checkout installed editable writes it on first run, unless PYTHONDONTWRITEBYTECODE is set
    # (as on some machines), when every command would compile the project's sources again.
    for package in (aftersales.engine, aftersales.projections, aftersales.commands):
        compileall.compile_dir(Path(package.__file__ or "").parent, quiet=1)
    if args.sqlite_only:
        own_start(program, args.runs)
        return 0
    with (
        tempfile.TemporaryDirectory() as folder,
        scratch_schema(args.postgres, "bench_startup") as postgres,
    ):
        sqlite = f"sqlite:///{Path(folder) / 'bench.db'}"
        cases = {"sqlite": one_case(sqlite), "postgres": one_case(postgres)}
        rows = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "--version": [*program, "--version"],
            "--help": [*program, "--help"],
            "case show (SQLite)": [*program, "--store", sqlite, "case", "show", cases["sqlite"]],
            "case show (PostgreSQL)": [
                *program,
                "--store",
                postgres,
                "case",
                "show",
                cases["postgres"],
            ],
            # The floors under case show: the libraries it needs, imported and nothing else.
            "libraries (SQLite)": [sys.executable, "-c", f"import {SQLITE_LIBRARIES}"],
            "libraries (PostgreSQL)": [sys.executable, "-c", f"import {POSTGRES_LIBRARIES}"],
            "least (PostgreSQL)": [sys.executable, "-c", POSTGRES_MINIMUM],
        }
        # Every library module each case show loads, imported and nothing else.
        for backend in ("SQLite", "PostgreSQL"):
            rows[f"all it loads ({backend})"] = [
                sys.executable,
                "-c",
                libraries_loaded(rows[f"case show ({backend})"]),
            ]
        results = timed(rows, args.runs)
    base = results["python -c pass"]
    print(f"median of {args.runs} runs each; python -c pass: {base:.3f} s")
    print(f"{'command':<26} {'wall s':>7} {'over pass':>10} {'goal':>6}  met")
    for name, seconds in results.items():
        if name == "python -c pass":
            continue
        over = seconds - base
        goal = GOALS.get(name)
        if goal is None:
            print(f"{name:<26} {seconds:>7.3f} {over:>10.3f} {'':>6}  -")
            continue
        met = "yes" if over <= goal else "no"
        print(f"{name:<26} {seconds:>7.3f} {over:>10.3f} {goal:>6.2f}  {met}")
    print()
    own_start(program, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
