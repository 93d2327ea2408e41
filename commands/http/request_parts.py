"""What a request says besides its route: the key it presents, the version it expects (If-Match)
and its JSON body; and the ETag an answer carries."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from aftersales.commands.desk.session import session_key
from aftersales.engine.domain.errors import BadInput

MAX_BODY = 64 * 1024


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None if header else session_key(request)  # the desk's session (commands/desk)


def etag(result: Any) -> dict[str, str]:
    if isinstance(result, dict) and isinstance(result.get("version"), int):
        return {"ETag": f'"{result["version"]}"'}
    return {}


def expected_version(request: Request) -> int | None:
    value = request.headers.get("if-match")
    if value is None:
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise BadInput(f'If-Match {value!r} must be a version as an ETag gives it, e.g. "3"')
    return int(text)


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadInput(f"the body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadInput("the body must be a JSON object of the action's options")
    return data
