"""Write the transition table in docs/transitions.md from the engine's own
(engine/domain/transitions.py).

    python -m scripts.transition_table           # rewrite the table in docs/transitions.md
    python -m scripts.transition_table --check   # exit 1 if that table is out of date

The table sits between the marker comments ``<!-- transitions:begin -->`` and
``<!-- transitions:end -->``; nothing outside them is touched.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "transitions.md"


def arguments() -> argparse.ArgumentParser:
    """The command line, built before the imports below so that `--help` needs none."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.transition_table",
        description="Write the transition table from engine/domain/transitions.py, between "
        "the markers <!-- transitions:begin --> and <!-- transitions:end -->.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 if the table in the file is not the generated one",
    )
    parser.add_argument(
        "--file",
        "--readme",
        dest="file",
        type=Path,
        default=DOC,
        help="the file to write (default: docs/transitions.md)",
    )
    return parser


if __name__ == "__main__":
    arguments().parse_args()  # --help, or a mistake, answered before the imports below

from aftersales.engine.domain.transitions import TRANSITIONS, Charge, Given, Transition
from aftersales.engine.domain.values import Status

BEGIN = "<!-- transitions:begin -->"
END = "<!-- transitions:end -->"


def _words(values: Iterable[Enum]) -> str:
    """Enum values in their declared order (a set's own order is not stable)."""
    chosen = set(values)
    members = list(type(next(iter(chosen))).__members__.values()) if chosen else []
    return ", ".join(f"`{m.value}`" for m in members if m in chosen)


def _given(given: Given) -> str:
    parts = []
    if given.ruling is not None:
        parts.append(f"for the {given.ruling.value}")
    if given.case_types is not None:
        parts.append(_words(given.case_types))
    if given.claims is not None:
        parts.append(f"claim {_words(given.claims)}")
    if given.receipt is not None:
        parts.append(f"goods {_words(given.receipt)}")
    if given.reshipped is not None:
        parts.append("with a shipment" if given.reshipped else "`--cannot`")
    if given.appeal is not None:
        parts.append("a second ruling (the appeal)" if given.appeal else "a first ruling")
    if given.resumes is not None:
        parts.append(f"offered from `{given.resumes.value}`")
    if given.advance is not None:
        parts.append("an instant refund" if given.advance else "refunded on receipt")
    return "; ".join(parts)


def _charge(what: str, charge: Charge) -> str:
    legs = f" ({charge.legs} legs)" if charge.legs > 1 else ""
    return f"{what}{legs}: {charge.payer.value} → {charge.payee.value}"


def _money(row: Transition) -> str:
    moved = []
    if row.refund is not None:
        paid, owed = row.refund.paid_by, row.refund.owed_by
        owing = "" if owed is paid else f", owed by {owed.value}"
        moved.append(f"refund paid by {paid.value}{owing}")
    if row.freight is not None:
        moved.append(_charge("freight", row.freight))
    if row.penalty is not None:
        moved.append(_charge("late-shipment penalty", row.penalty))
    return "; ".join(moved)


def _from(statuses: frozenset[Status]) -> str:
    return _words(statuses) if statuses else "(new)"


def render() -> str:
    """The table in markdown, one line per row of the engine's table, in its order."""
    lines = [
        "| from | action | by | when | to | starts | money | records |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in TRANSITIONS:
        to = "unchanged" if row.after is None else f"`{row.after.value}`"
        starts = f"`{row.starts.value}`" if row.starts is not None else ""
        records = " + ".join(f"`{name}`" for name in (row.records, *row.then))
        action = f"`{row.action}`"
        cells = [_from(row.before), action, row.actor.value, _given(row.given), to, starts]
        lines.append("| " + " | ".join([*cells, _money(row), records]) + " |")
    return "\n".join(lines) + "\n"


def replaced(text: str, table: str) -> str:
    """``text`` with the part between the markers replaced by ``table``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN} and {END} are not both there, in that order")
    return text[: start + len(BEGIN)] + "\n" + table + text[end:]


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    try:
        wanted = replaced(text, render())
    except ValueError as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if wanted != text:
            print(
                f"{args.file}: the transition table is out of date; "
                "run python -m scripts.transition_table",
                file=sys.stderr,
            )
            return 1
        print(f"{args.file}: the transition table is up to date")
        return 0
    if wanted != text:
        args.file.write_text(wanted, encoding="utf-8")
        print(f"{args.file}: transition table written ({len(TRANSITIONS)} rows)")
    else:
        print(f"{args.file}: the transition table was already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
