"""Answers as JSON bytes, encoded once: an action's result is encoded as its group commit
takes it (``Engine.handle_together``'s snapshot), so it is neither copied nor encoded again
when it is answered; everything else is encoded with orjson, not the standard library's
encoder (the same JSON text, several times faster)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson
from starlette.responses import Response

OPTIONS = orjson.OPT_NON_STR_KEYS


class Encoded(NamedTuple):
    """A result as the JSON bytes its answer carries, and the version its ETag names."""

    body: bytes
    version: int | None


def encode_result(result: Any) -> Encoded:
    version = result.get("version") if isinstance(result, dict) else None
    return Encoded(
        orjson.dumps(result, option=OPTIONS),
        version if isinstance(version, int) else None,
    )


class JSONBytes(Response):
    """``application/json`` from bytes already encoded, or from a value encoded by orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, Encoded):
            return content.body
        return orjson.dumps(content, option=OPTIONS)


def json_answer(
    content: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> JSONBytes:
    return JSONBytes(content, status_code=status, headers=headers)
