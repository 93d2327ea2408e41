"""The desk's static files: read and gzipped once, served from memory, named in pages with a
hash of their content (``/desk/static/desk.css?v=1a2b3c4d5e6f``) so a changed file is a new
URL and an unchanged one is cached by the browser for a year.

A request carrying the current hash gets ``Cache-Control: public, max-age=31536000, immutable``;
one without it (or with an old hash) gets ``no-cache`` and an ETag, so a stale page never pins a
file. A client that accepts gzip gets the gzipped bytes (the chart library goes from about
1 MB to about 340 kB).
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

STATIC = Path(__file__).resolve().parent / "static"
YEAR = 365 * 24 * 3600
IMMUTABLE = f"public, max-age={YEAR}, immutable"
# Small files gain nothing from gzip's header and the CPU it costs the browser.
MIN_GZIP = 512
SERVED = (".css", ".js", ".md")  # the licences and notices too (served as plain text)


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    version: str  # the first 12 hex digits of the content's SHA-256
    media_type: str


def _media_type(path: Path) -> str:
    if path.suffix == ".js":
        return "text/javascript; charset=utf-8"
    guessed = mimetypes.guess_type(path.name)[0] or "text/plain"
    return f"{guessed}; charset=utf-8"


@cache
def assets(directory: Path = STATIC) -> dict[str, Asset]:
    """Every file of the static directory by name (read once per process)."""
    found = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        body = path.read_bytes()
        packed = gzip.compress(body, compresslevel=9, mtime=0) if len(body) >= MIN_GZIP else None
        found[path.name] = Asset(
            body=body,
            gzipped=packed if packed is not None and len(packed) < len(body) else None,
            version=hashlib.sha256(body).hexdigest()[:12],
            media_type=_media_type(path),
        )
    return found


def static_url(name: str) -> str:
    """A static file's URL with its content's hash: what pages link to."""
    return f"/desk/static/{name}?v={assets()[name].version}"


router = APIRouter(include_in_schema=False)


@router.get("/desk/static/{name}")
async def static_file(request: Request, name: str) -> Response:
    asset = assets().get(name)
    if asset is None:
        return Response("no such file", status_code=404, media_type="text/plain")
    etag = f'"{asset.version}"'
    current = request.query_params.get("v") == asset.version
    headers = {
        "Cache-Control": IMMUTABLE if current else "no-cache",
        "ETag": etag,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = asset.body
    accepts = request.headers.get("accept-encoding", "")
    if asset.gzipped is not None and "gzip" in accepts.lower():
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=asset.media_type, headers=headers)
