"""The bounds on every input, declared once: times, amounts, quantities, lengths, counts, lines.

Every value an interface hands the engine (a command line option, a `batch` or `import-history`
line, an `order import` row, an HTTP body) is checked against these before anything is recorded,
by the typed commands of ``engine/application/requests.py`` and the parsers they call, and a value
out of bounds is refused with ``BadInput`` (exit 2) naming the bound it broke. None of them is a
rule of the platform's after-sales policy; they are what a sane input looks like, so that no input
can make the engine fail in a way it did not foresee (a date past the calendar's end once a window
is added to it, an integer too long to convert, JSON nested deeper than the parser's stack) or store
an event no person could read.

A JSON line is read at most ``MAX_LINE_CHARS`` characters at a time and its nesting is counted
before it is parsed, so neither a huge line nor a deeply nested one costs more than its bound.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aftersales.engine.domain.errors import BadInput

EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2100, 1, 1, tzinfo=UTC)

# Money: an amount, a unit price or a list price, at most this much, two decimal places.
MAX_AMOUNT = Decimal("999999999.99")
# Units of one order line.
MAX_QUANTITY = 100_000
# Digits of a whole number written as text (a quantity, a score, a limit, a version), read
# before converting it, so a number thousands of digits long is refused rather than converted.
MAX_WHOLE_DIGITS = 18

# Lengths, in characters.
MAX_ID_CHARS = 128  # merchant, buyer, --by, carrier, waybill, category
# A command id: over HTTP a principal's id, "/" and its Idempotency-Key (at most 200).
MAX_COMMAND_ID_CHARS = MAX_ID_CHARS + 1 + 200
MAX_TEXT_CHARS = 4000  # a message, a note, a reason given in words, a comment, an address
MAX_EVIDENCE_CHARS = 512  # one evidence reference (a photo's name, a chat log's link)
MAX_REASON_CHARS = 64  # a reason code, group.detail

MAX_STORE_URL_CHARS = 2048  # a store URL

# Counts.
MAX_EVIDENCE = 20  # evidence references one action carries
MAX_ORDER_LINES = 200  # lines of one order, and lines one case names
MAX_LIST_LIMIT = 100_000  # rows `case list --limit` asks for
MAX_VERSION = 1_000_000_000  # an --expected-version, audit --version
MAX_POSITION = 2**63 - 1  # a position in the log (the store's bigint)
MAX_EXTENSION_HOURS = 24 * 366  # hours an extension asks for (the policy allows far fewer)

# A policy file's windows and periods: at most a year's hours, ten years' days.
MAX_WINDOW_HOURS = 24 * 366
MAX_POLICY_DAYS = 3660

# JSON lines (`batch`, `import-history`, `order import`): their length and nesting depth.
MAX_LINE_CHARS = 256 * 1024
MAX_JSON_DEPTH = 8

# Every bound, as the documentation lists it (``scripts/command_reference.py`` writes the table
# in docs/command-line.md from this): what it bounds, and the bound.
DOCUMENTED: tuple[tuple[str, str], ...] = (
    (
        "a time: `--at`, `--now`, `--since`, `--until`, `--due-before`, `--as-of`, an order's "
        "`placed_at`, `shipped_at`, `delivered_at`",
        f"from {EARLIEST_TIME.isoformat()} to before {LATEST_TIME.isoformat()}, with an offset",
    ),
    (
        "money: `--amount`, a line's unit price and list price",
        f"ASCII digits, at most two decimal places, at most {MAX_AMOUNT}",
    ),
    ("a line's quantity (`--line SKU:QTY:...`)", f"ASCII digits, 1 to {MAX_QUANTITY}"),
    (
        "any whole number (`--score`, `--hours`, `--limit`, `--expected-version`, `--batch`)",
        f"ASCII digits, at most {MAX_WHOLE_DIGITS} of them, within the option's own range",
    ),
    ("`--limit` of `case list`", f"1 to {MAX_LIST_LIMIT}"),
    ("`--expected-version`", f"0 to {MAX_VERSION}"),
    ("`--hours` of `case extend`", f"1 to {MAX_EXTENSION_HOURS} (and the policy's maximum)"),
    (
        "an id or name: `--merchant`, `--buyer`, `--by`, `--carrier`, "
        "`--waybill`, a line's category, a case line's SKU",
        f"at most {MAX_ID_CHARS} characters, no control characters",
    ),
    (
        "`--command-id`",
        f"at most {MAX_COMMAND_ID_CHARS} characters (over HTTP it is the principal's id, `/` "
        "and the `Idempotency-Key`), no control characters",
    ),
    ("an order id, a SKU", "1 to 64 ASCII letters, digits, `-`, `_`, `.` (a SKU also `/`)"),
    ("a reason code (`--reason` of `case open`)", f"at most {MAX_REASON_CHARS} characters"),
    (
        "a text: `--text`, `--note`, `--comment`, `--return-address`, `--reason` and "
        "`--communication` of `case reject`",
        f"at most {MAX_TEXT_CHARS} characters; tab and newlines but no other control character",
    ),
    ("one `--evidence` reference", f"at most {MAX_EVIDENCE_CHARS} characters"),
    ("`--evidence` references of one action", f"at most {MAX_EVIDENCE}"),
    ("`--line`s of an order, or of a case", f"at most {MAX_ORDER_LINES}"),
    (
        "a line of `batch`, `import-history`, `order import` (JSON Lines or CSV)",
        f"at most {MAX_LINE_CHARS} characters; JSON nested at most {MAX_JSON_DEPTH} deep",
    ),
    ("a store URL", f"at most {MAX_STORE_URL_CHARS} characters, no control characters"),
    (
        "a policy file's windows (hours) and periods (days)",
        f"at most {MAX_WINDOW_HOURS} hours, {MAX_POLICY_DAYS} days",
    ),
)

# How input files are decoded: a byte that is not UTF-8 becomes a lone surrogate, which the
# checks below refuse on its own line, so one bad byte neither stops a run nor passes.
UNREADABLE = "surrogateescape"

# Characters no id or text may hold: control characters (a text may hold tab and newlines) and
# lone surrogates, which no store can encode.
_BAD_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_BAD_IN_ID = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def check_time(value: datetime, key: str) -> datetime:
    """A time within the engine's calendar (``EARLIEST_TIME`` to ``LATEST_TIME``)."""
    # A year strictly inside is inside whatever the offset (and far cheaper to compare than
    # two times in different zones); only the years at either end are compared in full.
    if EARLIEST_TIME.year < value.year < LATEST_TIME.year - 1:
        return value
    if not EARLIEST_TIME <= value < LATEST_TIME:
        raise BadInput(
            f"{key} {value.isoformat()} is out of range: a time must be from "
            f"{EARLIEST_TIME.isoformat()} and before {LATEST_TIME.isoformat()}"
        )
    return value


def check_amount(value: Decimal, key: str) -> Decimal:
    if value > MAX_AMOUNT:
        raise BadInput(f"{key} {value} is more than the most an amount may be, {MAX_AMOUNT}")
    return value


def _check_chars(text: str, key: str, limit: int, bad: re.Pattern[str]) -> str:
    if len(text) > limit:
        raise BadInput(f"{key} is {len(text)} characters long: at most {limit} are allowed")
    if bad.search(text):
        raise BadInput(f"{key} contains a control character or an unpaired surrogate")
    return text


def check_text(text: str, key: str, limit: int = MAX_TEXT_CHARS) -> str:
    """A text of at most ``limit`` characters, without control characters but tab and
    newlines."""
    return _check_chars(text, key, limit, _BAD_IN_TEXT)


def check_id(text: str, key: str, limit: int = MAX_ID_CHARS) -> str:
    """An id or a short name: at most ``limit`` characters, on one line."""
    return _check_chars(text, key, limit, _BAD_IN_ID)


def check_count(items: list[Any], key: str, limit: int) -> list[Any]:
    if len(items) > limit:
        raise BadInput(f"{key} is given {len(items)} times: at most {limit} are allowed")
    return items


def whole_number(text: str, key: str, bounds: str | None = None) -> int:
    """A whole number written in ASCII digits (a leading minus allowed), at most
    ``MAX_WHOLE_DIGITS`` of them; ``BadInput`` otherwise, naming ``key`` (and the ``bounds``
    the number must be within, where there are some)."""
    digits = text[1:] if text.startswith("-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise BadInput(f"{key} {text[:40]!r} is not a whole number (digits 0-9)")
    if len(digits) > MAX_WHOLE_DIGITS:
        if bounds is not None:
            raise BadInput(f"{key} {text[:20]}... must be {bounds}")
        raise BadInput(f"{key} has {len(digits)} digits: at most {MAX_WHOLE_DIGITS} are allowed")
    return int(text)
