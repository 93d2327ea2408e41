"""The desk's session: a session token held in an HTTP-only, SameSite=Strict cookie.

Signing in exchanges the key for a session kept in the store (``engine/access/desk_sessions.py``:
expiring when idle and at the latest after its lifetime, revocable, listed under the principal);
the cookie holds only the session's token, never the key. Every request checks the session in
the store, so signing out, revoking the session, or revoking or expiring its key ends it at the
next request. The API authenticates and authorizes the session as it does ``Authorization:
Bearer`` (``commands/http/request_parts.py`` asks ``session_key`` only when no Authorization
header is given); a cookie counts only if it holds something shaped like a session's token (a
cookie holding a key, as the desk once set, signs its browser out). Neither key nor token is
ever put in a URL or a page.

Against cross-site requests: besides SameSite=Strict, a request that changes something
(any method but GET, HEAD and OPTIONS) counts its cookie only if its Origin (or, lacking
one, its Referer) is this site itself.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

from aftersales.engine.access.desk_sessions import session_id_of

COOKIE = "aftersales_session"
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def same_origin(request: Request) -> bool:
    """Whether a request comes from a page of this site (by Origin, else Referer)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    host = request.headers.get("host", "")
    return parts.scheme in ("http", "https") and parts.netloc == host and bool(host)


def offer_key(request: Request, key: str) -> None:
    """The sign-in form's key: what this request is authenticated by, so that the API checks
    it as it checks every key."""
    request.state.offered_key = key


def session_key(request: Request) -> str | None:
    """The credential of the request's session: its token, if it has one and may use it for
    this request (or, on the sign-in form's request, the key offered)."""
    offered = getattr(request.state, "offered_key", None)
    if isinstance(offered, str):
        return offered
    token = request.cookies.get(COOKIE)
    if not token or session_id_of(token) is None:  # a key is never taken from a cookie
        return None
    if request.method not in SAFE and not same_origin(request):
        return None
    return token
