"""What a request says besides its route: the key it presents, the version it expects (If-Match)
and its JSON body; and the ETag an answer carries."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request

from aftersales.commands.desk.session import session_key
from aftersales.engine.application.lines import load_bounded_json
from aftersales.engine.domain.errors import BadInput
from aftersales.engine.domain.limits import MAX_VERSION

MAX_BODY = 64 * 1024
# An If-Match: `*` (any current version), or one version as an ETag gives it ("3", W/"3", 3).
_VERSION_TAG = re.compile(r'(?:W/)?("?)([0-9]{1,10})\1')
MAX_IF_MATCH = 64


class BodyTooLarge(BadInput):
    """A request body past ``MAX_BODY`` bytes: refused (413) before it is read further."""

    code = "too_large"


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
    """The version an action expects (``If-Match``): None for no header or ``*`` (any current
    version: the case or order must exist, as every action on one needs anyway). Anything but
    ``*`` or one version in ASCII digits, at most ``MAX_VERSION``, is refused (422) before it
    is converted."""
    value = request.headers.get("if-match")
    if value is None:
        return None
    text = value.strip()
    if text == "*":
        return None
    found = _VERSION_TAG.fullmatch(text) if len(text) <= MAX_IF_MATCH else None
    if found is None or int(found.group(2)) > MAX_VERSION:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise BadInput(
            f'If-Match {shown!r} must be * or a version as an ETag gives it, e.g. "3" '
            f"(0 to {MAX_VERSION})"
        )
    return int(found.group(2))


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object: at most ``MAX_BODY`` bytes (a larger one is refused by its
    Content-Length, or as soon as that many bytes have come, never read whole), UTF-8, nested
    at most ``MAX_JSON_DEPTH`` deep (counted before it is parsed, so no body can exhaust the
    parser's stack)."""
    length = request.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and (len(length) > 9 or int(length) > MAX_BODY):
        raise BodyTooLarge(f"the body is larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge(f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("the body is not UTF-8 JSON") from None
    data = load_bounded_json(text, "the body", "the body is not JSON")
    if not isinstance(data, dict):
        raise BadInput("the body must be a JSON object of the action's options")
    return data
