"""Write the command reference in docs/command-line.md from the typed commands themselves.

    python -m scripts.command_reference           # rewrite the reference in docs/command-line.md
    python -m scripts.command_reference --check   # exit 1 if it is out of date

Every command, its arguments and options come from ``engine.application.requests.COMMANDS`` (the
same models the command line, `batch` and `import-history` are derived from); the statuses a case
action is taken from, from the transition table (``engine.domain.transitions.ALLOWED_FROM``). The
reference sits between the marker comments ``<!-- commands:begin -->`` and ``<!-- commands:end
-->``, the table of input bounds (``engine.domain.limits.DOCUMENTED``) between ``<!-- limits:begin
-->`` and ``<!-- limits:end -->``; nothing outside them is touched.
"""

from __future__ import annotations

import argparse
import sys
import typing
from enum import Enum
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "command-line.md"


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument(
        "--doc", type=Path, default=DOC, help="the file to write (default: %(default)s)"
    )
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

from pydantic.fields import FieldInfo

from aftersales.commands.cli.actions import METAVARS, _inner, _scalar
from aftersales.engine.application.fields import field_choices, key_of
from aftersales.engine.application.requests import COMMANDS, Action, Command
from aftersales.engine.domain.limits import DOCUMENTED
from aftersales.engine.domain.transitions import ALLOWED_FROM
from aftersales.engine.domain.values import Status

BEGIN = "<!-- commands:begin -->"
END = "<!-- commands:end -->"
LIMITS_BEGIN = "<!-- limits:begin -->"
LIMITS_END = "<!-- limits:end -->"


def _value(field: FieldInfo) -> str:
    chosen = field_choices(field)
    if chosen is not None:
        return "|".join(chosen)
    kind = _inner(field.annotation)
    one = _scalar(kind)
    if isinstance(one, type) and issubclass(one, Enum):
        return "|".join(str(m.value) for m in one)
    if one is bool:
        return ""
    return METAVARS.get(one, "TEXT")


def _option(name: str, field: FieldInfo) -> str:
    key = key_of(name).replace("_", "-")
    value = _value(field)
    text = f"`--{key}{' ' + value if value else ''}`"
    repeated = typing.get_origin(_inner(field.annotation)) is tuple
    notes = []
    if field.is_required():
        notes.append("required")
    elif field.default not in (None, (), False):
        shown = field.default.value if isinstance(field.default, Enum) else field.default
        notes.append(f"default {shown}")
    if repeated:
        notes.append("repeatable")
    described = field.description or ""
    extra = f" ({', '.join(notes)})" if notes else ""
    return f"{text}{extra}{': ' + described if described else ''}"


def _command(kind: type[Command]) -> list[str]:
    arguments = " ".join(a.upper() for a in kind.arguments)
    lines = [f"### `aftersales {kind.name}{' ' + arguments if arguments else ''}`", ""]
    lines.append(" ".join((kind.__doc__ or "").split()))
    lines.append("")
    action = kind.name.removeprefix("case ")
    if kind.name.startswith("case ") and ALLOWED_FROM.get(action):
        statuses = ", ".join(f"`{s.value}`" for s in Status if s in ALLOWED_FROM[action])
        lines.append(f"- from: {statuses} (the transition table)")
    common = set(Action.model_fields) if issubclass(kind, Action) else set()
    options = [
        _option(name, field)
        for name, field in kind.model_fields.items()
        if name not in kind.arguments and name not in common
    ]
    for option in options:
        lines.append(f"- {option}")
    if common:
        lines.append("- and every action's `--at`, `--by`, `--command-id`, `--expected-version`")
    if kind.reads_only:
        lines.append(
            "- `--read-store URL`, `--read-after TOKEN`: read from a standby, waiting for an "
            "action's `read_after` ([operations.md](operations.md#reads-from-replicas))"
        )
    elif " " in kind.name:  # built by the case, order and shop groups (not `tick`)
        lines.append(
            "- `--read-store URL`: the deployment's standby; the action prints `read_after`, where "
            "it landed ([operations.md](operations.md#reads-from-replicas))"
        )
    lines.append(f'- `--json`; batch line: `{{"action": "{kind.name}", ...}}`')
    lines.append("")
    return lines


def reference() -> str:
    lines = [BEGIN, ""]
    for kind in COMMANDS:
        lines += _command(kind)
    lines.append(END)
    return "\n".join(lines)


def limits() -> str:
    rows = [LIMITS_BEGIN, "", "| input | bound |", "|---|---|"]
    rows += [f"| {what} | {bound} |" for what, bound in DOCUMENTED]
    return "\n".join([*rows, "", LIMITS_END])


def _between(text: str, begin: str, end: str, content: str) -> str:
    start, stop = text.index(begin), text.index(end) + len(end)
    return text[:start] + content + text[stop:]


def rewritten(text: str) -> str:
    return _between(_between(text, BEGIN, END, reference()), LIMITS_BEGIN, LIMITS_END, limits())


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    text = args.doc.read_text(encoding="utf-8")
    new = rewritten(text)
    if args.check:
        if new != text:
            print(f"{args.doc}: the command reference is out of date", file=sys.stderr)
            return 1
        return 0
    args.doc.write_text(new, encoding="utf-8")
    print(f"{args.doc}: command reference written ({len(COMMANDS)} commands)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
