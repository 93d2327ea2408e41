"""Lines of `batch` and `import-history`: a JSON object per line, read within bounds
(``MAX_LINE_CHARS``, ``MAX_JSON_DEPTH``), made into a typed command
(engine/application/requests.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import IO, Any

from aftersales.engine.application.requests import BY_NAME, Command, _shown
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.limits import (
    MAX_JSON_DEPTH,
    MAX_LINE_CHARS,
)

# JSON lines ----------------------------------------------------------------------------------


def bounded_lines(stream: IO[str]) -> Iterator[tuple[int, str | None]]:
    """Number and text of each line of ``stream``; ``None`` for a line longer than
    ``MAX_LINE_CHARS``, whose rest is skipped without holding it in memory."""
    number = 0
    while True:
        text = stream.readline(MAX_LINE_CHARS + 1)
        if not text:
            return
        number += 1
        if len(text) > MAX_LINE_CHARS and not text.endswith("\n"):
            while (rest := stream.readline(MAX_LINE_CHARS)) and not rest.endswith("\n"):
                pass
            yield number, None
        else:
            yield number, text


def json_lines(stream: IO[str]) -> Iterator[tuple[int, str | None]]:
    """The lines of ``stream`` that are not blank, as ``bounded_lines`` gives them."""
    for number, text in bounded_lines(stream):
        if text is None or text.strip():
            yield number, text


def too_long() -> BadInput:
    return BadInput(f"the line is longer than {MAX_LINE_CHARS} characters, the most a line may be")


def _depth(text: str) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets in strings ignored)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def load_bounded_json(text: str, what: str = "the line", not_json: str = "not JSON") -> Any:
    """A JSON text's value, its nesting checked against ``MAX_JSON_DEPTH`` before it is parsed,
    so no input can exhaust the parser's stack; ``what`` (the line, the body) and ``not_json``
    word the refusals."""
    # Counting brackets is cheap and bounds the depth; only a text with many is scanned.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(text) > MAX_JSON_DEPTH:
        raise BadInput(f"{what} nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{not_json}: {exc.msg} at column {exc.colno}") from None
    except ValueError:  # a number too long to convert
        raise BadInput(f"a number in {what} has too many digits to read") from None


def load_json_line(text: str | None) -> Any:
    """One JSON line's value, within ``MAX_LINE_CHARS`` and ``MAX_JSON_DEPTH``: both are
    checked before the text is parsed."""
    if text is None or len(text) > MAX_LINE_CHARS:
        raise too_long()
    return load_bounded_json(text)


# Lines of `batch` and `import-history`: {"action": "case approve", "case_id": ..., ...} ------


def _bare_words() -> dict[str, str]:
    """The last word of a path, where only one path ends with it ("approve" -> "case approve")."""
    last = [name.split(" ")[-1] for name in BY_NAME]
    return {name.split(" ")[-1]: name for name in BY_NAME if last.count(name.split(" ")[-1]) == 1}


BARE_WORDS: Mapping[str, str] = _bare_words()


def resolve(action: str) -> type[Command]:
    """The command a line's "action" names: its path, or a last word only one path has."""
    words = " ".join(action.replace("_", "-").split())
    name = words if words in BY_NAME else BARE_WORDS.get(words)
    if name is None:
        matches = sorted(n for n in BY_NAME if n.split(" ")[-1] == words)
        if matches:
            raise BadInput(f"ambiguous action {action!r}: say {' or '.join(matches)}")
        raise BadInput(f"unknown action {_shown(action)!r} (actions: {', '.join(BY_NAME)})")
    return BY_NAME[name]


def parse_line(text: str | None) -> Command:
    """A JSON line (of `batch` or `import-history`) as a command; ``None`` is a line longer
    than the most a line may be (``limits.json_lines``)."""
    data = load_json_line(text)
    if not isinstance(data, dict):
        raise BadInput('a line must be a JSON object with an "action"')
    return from_line(data)


def from_line(data: Mapping[str, Any]) -> Command:
    """A JSON line as a command: "action" names it, every other key is one of its fields."""
    action = data.get("action")
    if not isinstance(action, str):
        raise BadInput('a line needs "action", e.g. "case approve"')
    kind = resolve(action)
    command: Command = kind.parse({k: v for k, v in data.items() if k != "action"})
    return command
