"""Token auth for every route when `CADENCE_AUTH` is set.

Accepted credentials: `Authorization: Bearer <token>` (API clients) or the `cadence_session` cookie set by
the login page. The cookie holds an HMAC of a fixed label keyed by the token, never the token itself, and
is HttpOnly + SameSite=Strict. All comparisons are constant-time. Only the login page, its POST and its
stylesheet are open; everything else (pages, API, files, media, /openapi.json) answers 401 or, for a
browser asking for a page, redirects to /login.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

COOKIE = "cadence_session"
OPEN_PATHS = frozenset({"/login", "/static/login.css"})


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"cadence-ui-session-v1", hashlib.sha256).hexdigest()


def check_token(candidate: str, token: str) -> bool:
    return hmac.compare_digest(candidate.encode(), token.encode())


def is_authorized(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value and check_token(value.strip(), token):
        return True
    cookie = request.cookies.get(COOKIE)
    return bool(cookie) and hmac.compare_digest(cookie.encode(), session_value(token).encode())


class AuthMiddleware(BaseHTTPMiddleware):
    """Refuses every request without a valid credential (when a token is configured)."""

    def __init__(self, app, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next) -> Response:
        if not self.token or request.url.path in OPEN_PATHS or is_authorized(request, self.token):
            return await call_next(request)
        wants_page = request.method == "GET" and "text/html" in request.headers.get("accept", "")
        if wants_page and not request.url.path.startswith("/api/"):
            return RedirectResponse("/login", status_code=303)
        return JSONResponse(
            {
                "detail": "authentication required: send Authorization: Bearer <CADENCE_AUTH> "
                "or log in at /login"
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )


def _host_name(host_header: str) -> str:
    """'localhost:8675' -> 'localhost', '[::1]:8675' -> '::1'."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def is_loopback_literal(host_header: str) -> bool:
    """`localhost` or a loopback IP literal, without resolving anything (a rebinding DNS name is neither)."""
    name = _host_name(host_header).lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class SameOriginMiddleware(BaseHTTPMiddleware):
    """Answers only requests meant for this UI.

    Without a token the UI listens on loopback and trusts whoever reaches it, so two browser tricks must be
    stopped: a web page posting to it (cross-site requests that change something carry a foreign `Origin`)
    and DNS rebinding (a foreign name that resolves to 127.0.0.1: its `Host` header is not a loopback
    literal). With a token, requests need the credential anyway and the Host may be any name of the machine.
    """

    def __init__(self, app, loopback_only: bool) -> None:
        super().__init__(app)
        self.loopback_only = loopback_only

    async def dispatch(self, request: Request, call_next) -> Response:
        if not self.loopback_only:  # the token guards every request (behind a proxy Host and Origin differ)
            return await call_next(request)
        host = request.headers.get("host", "")
        if not is_loopback_literal(host):
            return JSONResponse(
                {"detail": f"Host {host!r} is not this UI: without CADENCE_AUTH it answers localhost only"},
                status_code=403,
            )
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin and urlsplit(origin).netloc != host:
            return JSONResponse({"detail": f"cross-site request from {origin} refused"}, status_code=403)
        return await call_next(request)
