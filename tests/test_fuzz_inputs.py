"""Every input bounded, every refusal clean: generated command lines, batch lines and import
rows, thousands of them, against a store with an order and a case in it.

Whatever is given, the command ends with exit 0 (done), 2 (bad input), 3 (not allowed), 4 (not
found) or 5 (conflict): never 1 (kept for a store that cannot be reached) and never a traceback
on any stream; a refused input appends nothing (the store's last notification id is the same
before and after). The volume runs on SQLite; PostgreSQL gets a smaller sample of the same
inputs. ``-m slow`` runs many more examples of each.

Alongside the generated inputs, each input the adversarial trial of issue 13 crashed the engine
with is a named case of its own.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aftersales.commands.cli.main import cli
from aftersales.engine.application.fields import key_of
from aftersales.engine.application.handler import Engine
from aftersales.engine.application.inputs import read_orders_csv, read_orders_jsonl
from aftersales.engine.application.lines import parse_line
from aftersales.engine.application.requests import COMMANDS, OpenCase
from aftersales.engine.domain.errors import AftersalesError
from aftersales.engine.domain.limits import MAX_JSON_DEPTH, MAX_LINE_CHARS
from tests.conftest import at, place_delivered

ROOT = Path(__file__).resolve().parent.parent
CLEAN_EXITS = {0, 2, 3, 4, 5}


@pytest.fixture(
    params=[pytest.param(1, id="quick"), pytest.param(10, id="many", marks=pytest.mark.slow)]
)
def scale(request: pytest.FixtureRequest) -> int:
    """Examples per test: as many as the default run affords, or ten times that (-m slow)."""
    return int(request.param)


def examples(sqlite: int, postgres: int, store_url: str, scale: int) -> int:
    """How many examples a test runs: fewer on PostgreSQL."""
    return (postgres if store_url.startswith("postgres") else sqlite) * scale


def fuzz_settings(n: int, scale: int) -> settings:
    """The default run (``scale`` 1, what CI runs) replays the same generated inputs every time,
    so a failure there is a change's doing and reproduces as it is; the long run (``-m slow``)
    draws new inputs every time, to find what nobody has tried yet."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=scale == 1,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


# What an adversary types -------------------------------------------------------------------

NASTY = [
    "",
    " ",
    "-",
    "0",
    "-1",
    "1" * 25,
    "9" * 5000,
    "99999999999999999999999",
    "²",
    "٣",
    "\uff11\uff12",  # fullwidth digits
    "1e9",
    "NaN",
    "inf",
    "12.345",
    "-0.01",
    "999999999999.99",
    "1000000000.00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "2026-11-01T10:00:00",
    "2026-13-01T00:00:00Z",
    "1999-12-31T23:59:59+00:00",
    "2100-01-01T00:00:00Z",
    "x" * 200,
    "m" * 5000,
    "a\x00b",
    "a\nb",
    "\ud800",
    "A:²:10.00",
    "A:1:10.00",
    "A:0:1.00",
    f"A:{'9' * 5000}:10.00",
    "A:1:99999999999.99",
    ":::",
    "A:1:1.00:cat:1.00:extra",
    "GIFT:1:0.00:gift:15.00",
    "GIFT:1:0.00",
    "quality.",
    "quality." + "x" * 300,
    "../../etc/passwd",
    "'; DROP TABLE aftersales_cases; --",
    "00000000-0000-0000-0000-000000000000",
    "[]",
    "{}",
]
PLAUSIBLE = [
    at(days=3),
    at(days=30),
    "2099-12-31T23:59:59+00:00",
    "10.00",
    "39.90",
    "0.01",
    "1",
    "5",
    "48",
    "refund_only",
    "return_refund",
    "exchange",
    "reship",
    "quality.colour_difference",
    "logistics.damaged",
    "ok",
    "damaged",
    "buyer",
    "merchant",
    "platform",
    "missing_items",
    "other",
    "awaiting_merchant",
    "dashboard",
    "ledger",
    "return_rates",
    "CASE-RED",
    "CASE-RED:1",
    "CASE-RED:1:39.90",
    "photo:1.jpg",
    "SF",
    "W1",
    "shop-1",
    "buyer-1",
]


def values(ids: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ids),
        st.sampled_from(NASTY),
        st.sampled_from(PLAUSIBLE),
        st.text(max_size=20),
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
    )


def _leaves(group: click.Group, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        if isinstance(command, click.Group):
            yield from _leaves(command, [*path, name])
        else:
            yield [*path, name], command


# Commands that run until stopped, or write files, or read one, are left to their own tests.
LEFT_OUT = {
    "demo",
    "scheduler",
    "serve",
    "batch",
    "import-history",
    "order import",
    "checkpoint keygen",
    # They wait for a broker or for endpoints until stopped: their own tests cover them.
    "relay run",
    "webhook run",
}
LEFT_OUT_OPTIONS = {"--follow", "--export", "--workers", "--poll"}
SHAPES: list[tuple[list[str], list[str], list[str]]] = [
    (
        path,
        [
            p.opts[0] if isinstance(p, click.Option) else ""
            for p in command.params
            if not (isinstance(p, click.Option) and p.is_flag)
            and (p.opts[0] if isinstance(p, click.Option) else "") not in LEFT_OUT_OPTIONS
        ],
        [
            p.opts[0]
            for p in command.params
            if isinstance(p, click.Option) and p.is_flag and p.opts[0] not in LEFT_OUT_OPTIONS
        ],
    )
    for path, command in _leaves(cli, [])
    if " ".join(path) not in LEFT_OUT
]


@st.composite
def command_lines(draw: st.DrawFn, ids: list[str]) -> list[str]:
    path, options, flags = draw(st.sampled_from(SHAPES))
    args = list(path)
    for option in options:
        if draw(st.integers(0, 2)):
            value = draw(values(ids))
            args += [value] if option == "" else [option, value]
    args += [f for f in flags if draw(st.booleans())]
    return args


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
)


def json_values(ids: list[str]) -> st.SearchStrategy[Any]:
    one = st.one_of(values(ids), JSON_SCALARS)
    return st.one_of(
        one, st.lists(one, max_size=4), st.dictionaries(st.text(max_size=8), one, max_size=3)
    )


# Lines no generator of JSON objects makes: what a broken or hostile file holds.
RAW_LINES = [
    '{"action": "tick", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"action": "tick", "x": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + "}",
    '{"action": "tick", "batch": 1' + "0" * 5000 + "}",
    '{"action": "tick", "batch": ' + "9" * 5000 + "}",
    '{"action": "case show", "case_id": "' + "x" * (MAX_LINE_CHARS + 10) + '"}',
    '{"action": "case list", "limit": 99999999999999999999999}',
    '{"action": "audit", "case_id": "x"}',
    '{"action": "order place", "order_id": "Y", "merchant": "'
    + "m" * 5000
    + '", "buyer": "b", "line": ["A:1:1.00"]}',
    '{"action": "case show"',
    "[1, 2, 3]",
    '"just a string"',
    "\x00",
    '{"action": "tick", "now": "9999-12-31T23:59:59-14:00"}',
    '{"action": "order place", "order_id": "Y9", "merchant": "m", "buyer": "b", '
    '"line": ["A:1:1.00"], "at": "9999-12-31T23:00:00+00:00"}',
    '{"action": "order place", "order_id": "Y1", "merchant": "m", "buyer": "b", '
    '"line": ["A:\\u00b2:10.00"]}',
    '{"action": 1e999}',
    '{"action": "case message", "case_id": "00000000-0000-0000-0000-000000000001", '
    '"text": "\\ud800"}',
]


@st.composite
def batch_lines(draw: st.DrawFn, ids: list[str]) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(RAW_LINES))
    kind = draw(st.sampled_from(COMMANDS))
    action = draw(st.sampled_from([kind.name, kind.name.split(" ")[-1], "audit", "x"]))
    data: dict[str, Any] = {"action": action}
    for name in kind.model_fields:
        if draw(st.integers(0, 2)):
            data[key_of(name)] = draw(json_values(ids))
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.text(max_size=8))] = draw(json_values(ids))
    return json.dumps(data)


ORDER_KEYS = [
    "order_id",
    "merchant",
    "buyer",
    "lines",
    "at",
    "shipped_at",
    "carrier",
    "waybill",
    "delivered_at",
]


@st.composite
def order_rows(draw: st.DrawFn, ids: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "order_id": draw(st.one_of(st.sampled_from(["IMP-1", "IMP-2", "KS-1"]), values(ids))),
        "merchant": draw(values(ids)),
        "buyer": draw(values(ids)),
        "lines": draw(st.lists(st.one_of(values(ids), json_values(ids)), max_size=3)),
    }
    for key in ORDER_KEYS[4:]:
        if draw(st.booleans()):
            row[key] = draw(values(ids))
    return row


# The store every example runs against --------------------------------------------------------


class Target:
    """A store with a delivered order and an open case, and what a test needs to check it."""

    def __init__(self, store_url: str) -> None:
        self.store = store_url
        self.engine = Engine(store_url)
        place_delivered(self.engine)
        case = self.engine.handle(
            OpenCase(
                order_id="KS-1",
                type="return_refund",
                reason="quality.colour_difference",
                amount="39.90",
                at=at(days=3),
                command_id="fuzz-open",
            )
        )
        self.ids = ["KS-1", case["case_id"], "shop-1", "buyer-1", "fuzz-open"]
        self.runner = CliRunner()

    def last(self) -> int:
        return int(self.engine.store.recorder.max_notification_id() or 0)

    def invoke(self, args: list[str], stdin: str | None = None) -> Result:
        return self.runner.invoke(cli, ["--store", self.store, *args], input=stdin)

    def check(self, result: Result, before: int, what: Any, refused: bool | None = None) -> None:
        """Exit 0, 2, 3, 4 or 5, no traceback anywhere; a refusal appended nothing (by
        default a command is refused when it exits other than 0; a bulk command exits so
        when any line failed, and is refused when none succeeded)."""
        output = result.stdout + result.stderr
        assert result.exit_code in CLEAN_EXITS, (what, result.exit_code, output[-2000:])
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            what,
            result.exception,
        )
        assert "Traceback" not in output, (what, output[-2000:])
        if result.exit_code != 0 if refused is None else refused:
            assert self.last() == before, (what, result.exit_code, output[-500:])

    def handle_line(self, text: str | None, parse: Callable[[str | None], Any]) -> None:
        """What `batch` does with one line, in this process: a refusal appends nothing,
        and nothing but a refusal is raised."""
        before = self.last()
        try:
            self.engine.handle(parse(text))
        except AftersalesError:
            assert self.last() == before, text[:300] if text else text

    def close(self) -> None:
        self.engine.close()


@pytest.fixture
def target(store_url: str) -> Iterator[Target]:
    t = Target(store_url)
    yield t
    t.close()


# Generated inputs ------------------------------------------------------------------------------


def test_generated_command_lines(target: Target, store_url: str, scale: int) -> None:
    @fuzz_settings(examples(300, 60, store_url, scale), scale)
    @given(args=command_lines(target.ids), as_json=st.booleans())
    def one(args: list[str], as_json: bool) -> None:
        before = target.last()
        args = [*args, "--json"] if as_json else args
        result = target.invoke(args)
        target.check(result, before, args)
        if as_json:  # exactly one JSON value on stdout, refusals too
            json.loads(result.stdout)

    one()


def test_generated_batch_lines_one_by_one(target: Target, store_url: str, scale: int) -> None:
    @fuzz_settings(examples(400, 90, store_url, scale), scale)
    @given(text=batch_lines(target.ids))
    def one(text: str) -> None:
        target.handle_line(text, parse_line)

    one()


def test_generated_batch_files(target: Target, store_url: str, scale: int) -> None:
    """Whole files through `batch` and `import-history`: one JSON result line per input line,
    the exit code of the first failure."""

    @fuzz_settings(examples(40, 8, store_url, scale), scale)
    @given(
        lines=st.lists(batch_lines(target.ids), min_size=1, max_size=12),
        command=st.sampled_from([["batch", "-"], ["import-history", "-", "--json"]]),
    )
    def one(lines: list[str], command: list[str]) -> None:
        before = target.last()
        result = target.invoke(command, "\n".join(lines) + "\n")
        if command[0] == "batch":
            out = [json.loads(x) for x in result.stdout.splitlines()]
            assert [o["line"] for o in out] == list(range(1, len(lines) + 1))
            assert all(o["ok"] or o["error"]["code"] != "store_unavailable" for o in out)
            done = sum(o["ok"] for o in out)
        else:
            report = json.loads(result.stdout)
            assert report["lines"] == len(lines)
            done = report["ok"]
        target.check(result, before, (command, [x[:200] for x in lines]), refused=not done)

    one()


def _read_one(reader: Callable[[io.StringIO], Iterator[Any]]) -> Callable[[str | None], Any]:
    def parse(text: str | None) -> Any:
        (item,) = list(reader(io.StringIO(text or "")))
        if isinstance(item.payload, AftersalesError):
            raise item.payload
        return item.payload

    return parse


def _csv_text(row: dict[str, Any]) -> str:
    out = io.StringIO()
    columns = ["order_id", "merchant", "buyer", "sku", "quantity", "unit_price", "category"]
    writer = csv.writer(out)
    writer.writerow([*columns, *ORDER_KEYS[5:], "placed_at"])
    for line in row["lines"] or [""]:
        parts = [*str(line).split(":"), "", "", ""][:4]
        writer.writerow(
            [
                row["order_id"],
                row["merchant"],
                row["buyer"],
                *parts,
                *(row.get(k, "") for k in ORDER_KEYS[5:]),
                row.get("at", ""),
            ]
        )
    return out.getvalue()


def test_generated_import_rows(target: Target, store_url: str, scale: int) -> None:
    """Orders of `order import`, as JSON lines and as CSV rows, each through the engine."""
    from_jsonl = _read_one(read_orders_jsonl)

    @fuzz_settings(examples(300, 60, store_url, scale), scale)
    @given(row=order_rows(target.ids), as_csv=st.booleans())
    def one(row: dict[str, Any], as_csv: bool) -> None:
        if as_csv:
            try:
                text = _csv_text(row)
            except ValueError:  # a value too long for the csv module to write: not a file
                return
            before = target.last()
            try:
                for item in list(read_orders_csv(io.StringIO(text))):
                    if not isinstance(item.payload, AftersalesError):
                        target.engine.handle(item.payload)
            except AftersalesError:
                assert target.last() == before
        else:
            target.handle_line(json.dumps(row) + "\n", from_jsonl)

    one()


def test_generated_order_import_files(
    target: Target, store_url: str, scale: int, tmp_path: Path
) -> None:
    @fuzz_settings(examples(30, 6, store_url, scale), scale)
    @given(rows=st.lists(order_rows(target.ids), min_size=1, max_size=6), as_csv=st.booleans())
    def one(rows: list[dict[str, Any]], as_csv: bool) -> None:
        path = tmp_path / ("orders.csv" if as_csv else "orders.jsonl")
        try:
            text = "".join(_csv_text(r) for r in rows) if as_csv else ""
        except ValueError:
            return
        if not as_csv:
            text = "".join(json.dumps(r) + "\n" for r in rows)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        before = target.last()
        result = target.invoke(["order", "import", str(path), "--json"])
        report = json.loads(result.stdout)
        refused = "error" in report or not report["ok"]
        target.check(result, before, (as_csv, [str(r)[:200] for r in rows]), refused)

    one()


# The inputs the trial found crashing, and those the fuzz found since, one by one ------------

PLACE = ["order", "place", "--merchant", "m", "--buyer", "b"]
CRASHERS = [
    [*PLACE, "Q1", "--line", "A:²:10.00"],
    [*PLACE, "Q2", "--line", f"A:{'9' * 5000}:1.00"],
    [*PLACE, "Q3", "--line", "A:1:1.00", "--at", "9999-12-31T23:00:00+00:00"],
    [*PLACE, "Q4", "--line", "A:1:1.00", "--at", "0001-01-01T00:00:00+14:00"],
    ["order", "place", "Q5", "--merchant", "m" * 1_000_000, "--buyer", "b", "--line", "A:1:1.00"],
    ["case", "message", "{case}", "--text", "n" * 5_000_000],
    ["case", "message", "{case}", "--text", "hi", *["--evidence", "p"] * 21],
    ["case", "list", "--limit", "99999999999999999999999"],
    ["tick", "--now", "9999-12-31T23:59:59-14:00"],
    ["report", "dashboard", "--now", "0001-01-01T00:00:00+14:00"],
    ["report", "return-rates", "--until", "9999-12-31T23:59:59-14:00"],
    ["ledger", "--since", "0001-01-01T00:00:00+14:00"],
    ["audit", "{case}", "--as-of", "9999-12-31T23:59:59-14:00"],
    ["audit", "{case}", "--version", "9" * 5000],
    ["case", "extend", "{case}", "--hours", "9" * 40, "--reason", "r"],
    ["--store", "postgresql://[::1/db", "case", "list"],
    ["--store", "postgresql://127.0.0.1:5432/db%00x", "case", "list"],
    ["scheduler", "--interval", "nan"],
    ["relay", "status", "--name", "KS-1"],
    ["relay", "status", "--prefix", ""],
    ["webhook", "replay", "--event", str(2**63)],
]
# What each refusal names: the bound it broke.
NAMED = [
    "digits 0-9",
    "at most 4000",
    "2100-01-01",
    "2000-01-01",
    "at most 128",
    "at most 4000",
    "at most 20",
    "must be 1 to 100000",
    "2100-01-01",
    "2000-01-01",
    "2100-01-01",
    "2000-01-01",
    "2100-01-01",
    "",
    "must be 1 to 8784",
    "malformed",
    "control character",
    "not a number of seconds",
    "relay name",
    "subject prefix",
    "not in the range 1<=x<=9223372036854775807",
]


@pytest.mark.parametrize(("args", "named"), list(zip(CRASHERS, NAMED, strict=True)))
def test_each_crashing_input_of_the_trial_is_refused_cleanly(
    target: Target, args: list[str], named: str
) -> None:
    args = [a.replace("{case}", target.ids[1]) for a in args]
    before = target.last()
    result = target.invoke([*args, "--json"])
    target.check(result, before, args[:6])
    assert result.exit_code == 2, result.stdout[-500:]
    assert named in json.loads(result.stdout)["error"]["message"]


def test_each_crashing_line_of_the_trial_is_refused_cleanly(target: Target) -> None:
    """The trial's lines in one `batch` run: each refused on its own line, the run goes on
    to the end (`audit` among them is an unknown action, not text in the stream)."""
    before = target.last()
    result = target.invoke(["batch", "-"], "\n".join(RAW_LINES) + "\n")
    target.check(result, before, "raw lines")
    out = [json.loads(x) for x in result.stdout.splitlines()]
    assert [o["line"] for o in out] == list(range(1, len(RAW_LINES) + 1))
    assert not any(o["ok"] for o in out)
    assert {o["error"]["code"] for o in out} == {"bad_input"}
    messages = [o["error"]["message"] for o in out]
    assert f"deeper than {MAX_JSON_DEPTH} levels" in messages[0]
    assert f"longer than {MAX_LINE_CHARS} characters" in messages[4]
    assert "unknown action 'audit'" in messages[6]
    assert "at most 128" in messages[7]


def test_the_trials_lines_on_several_workers(target: Target, tmp_path: Path) -> None:
    """`import-history --workers 2` (PostgreSQL): each worker refuses its share of the lines
    as one worker would, and the run ends cleanly."""
    if not target.store.startswith("postgres"):
        pytest.skip("more than one worker needs PostgreSQL")
    path = tmp_path / "lines.jsonl"
    path.write_text("\n".join(RAW_LINES) + "\n")
    before = target.last()
    result = target.invoke(["import-history", str(path), "--workers", "2", "--json"])
    target.check(result, before, "raw lines on two workers")
    report = json.loads(result.stdout)
    assert (result.exit_code, report["lines"], report["failed"]) == (2, *(len(RAW_LINES),) * 2)


def test_a_huge_csv_row_and_an_order_of_too_many_rows(target: Target, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    rows = ["order_id,merchant,buyer,sku,quantity,unit_price"]
    rows.append("C1,m,b,A," + "1" * (MAX_LINE_CHARS + 5) + ",1.00")
    rows += [f"C2,m,b,S{i},1,1.00" for i in range(250)]
    rows.append("C3,m,b,A,1,1.00")
    path.write_text("\n".join(rows) + "\n")
    before = target.last()
    result = target.invoke(["order", "import", str(path), "--json"])
    report = json.loads(result.stdout)
    assert (report["ok"], report["failed"]) == (1, 2)
    target.check(result, before, "csv", refused=False)
    messages = " ".join(e["message"] for e in report["errors"])
    assert f"longer than {MAX_LINE_CHARS}" in messages and "at most 200" in messages


# A few real processes --------------------------------------------------------------------------


def test_real_processes_refuse_cleanly(tmp_path: Path) -> None:
    """The command as a shell runs it: argv with bytes that are not UTF-8, the trial's lines
    (one of them with bytes that are not UTF-8) in a batch file and on standard input, a
    malformed store URL."""
    store = f"sqlite:///{tmp_path / 'store.db'}"
    lines = tmp_path / "lines.jsonl"
    not_utf8 = (
        b'{"action": "order place", "order_id": "X", "merchant": "\xff\xfe", "buyer": "b", '
        b'"line": ["A:1:1.00"]}\n'
    )
    lines.write_bytes(("\n".join(RAW_LINES) + "\n").encode() + not_utf8)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [
        ["--store", store, "batch", str(lines)],
        [
            "--store",
            store,
            "order",
            "place",
            "P\udcff",
            "--merchant",
            "m\udcfe",
            "--buyer",
            "b",
            "--line",
            "A:1:1.00",
        ],
        ["--store", store, "import-history", "-", "--json"],
        ["--store", "postgresql://[::1/db", "case", "list", "--json"],
    ]
    for args in runs:
        argv = [
            os.fsencode(a) for a in [sys.executable, "-m", "aftersales.commands.cli.main", *args]
        ]
        given = lines.read_bytes() if "-" in args else None
        done = subprocess.run(
            argv, input=given, capture_output=True, env=env, cwd=tmp_path, timeout=120
        )
        output = (done.stdout + done.stderr).decode("utf-8", "replace")
        assert done.returncode == 2, (args[:4], done.returncode, output[-1500:])
        assert b"Traceback" not in done.stdout + done.stderr, output[-1500:]
        if "import-history" in args:  # from standard input, bytes not UTF-8 among the lines
            report = json.loads(done.stdout)
            assert (report["lines"], report["failed"]) == (len(RAW_LINES) + 1,) * 2
            assert "unpaired surrogate" in report["errors"][-1]["message"]
