"""Token auth for every route when `CADENCE_AUTH` is set.

Accepted credentials: `Authorization: Bearer <token>` (API clients) or the `cadence_session` cookie set by
the login page. The cookie is `{expiry}.{mac}`: an HMAC keyed by the token and a server-side session secret
(`{home}/session_secret`, 0600), never the token itself, HttpOnly + SameSite=Strict, valid until its expiry
(`CADENCE_UI_SESSION_DAYS`, default 7). Log out rotates the secret, so every session cookie issued before is
dead at once, on this browser and any other (a stolen cookie included). All comparisons are constant-time.
Only the login page, its POST and its stylesheet are open; everything else (pages, API, files, media,
/openapi.json) answers 401 or, for a browser asking for a page, redirects to /login.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from cadence.atomic import atomic_write_bytes

COOKIE = "cadence_session"
OPEN_PATHS = frozenset({"/login", "/static/login.css"})


def check_token(candidate: str, token: str) -> bool:
    return hmac.compare_digest(candidate.encode(), token.encode())


def session_days() -> float:
    """`CADENCE_UI_SESSION_DAYS` (default 7): a positive number of days, else a ValueError saying so."""
    raw = os.environ.get("CADENCE_UI_SESSION_DAYS", "7")
    try:
        days = float(raw)
    except ValueError:
        days = float("nan")
    if not (days > 0 and days != float("inf")):
        raise ValueError(f"CADENCE_UI_SESSION_DAYS must be a positive number of days (e.g. 7), got {raw!r}")
    return days


class Sessions:
    """Login cookies that expire and that log out revokes (by rotating the server-side secret)."""

    def __init__(self, home: Path, token: str, days: float | None = None) -> None:
        self.secret_file = Path(home) / "session_secret"
        self.token = token
        self.lifetime = 86400.0 * (days if days is not None else session_days())

    def _secret(self) -> bytes:
        """Read on every check (a rotation by another UI process on this home counts at once)."""
        try:
            secret = self.secret_file.read_bytes()
        except FileNotFoundError:
            secret = b""
        if len(secret) < 32:
            secret = self.rotate()
        return secret

    def rotate(self) -> bytes:
        secret = secrets.token_bytes(32)
        self.secret_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.secret_file, secret, mode=0o600)
        return secret

    def _mac(self, expiry: int, secret: bytes) -> str:
        key = self.token.encode() + b"\0" + secret
        return hmac.new(key, f"cadence-ui-session-v2:{expiry}".encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        expiry = int(time.time() + self.lifetime)
        return f"{expiry}.{self._mac(expiry, self._secret())}"

    def valid(self, cookie: str) -> bool:
        head, _, mac = cookie.partition(".")
        if not head.isdigit() or int(head) < time.time():
            return False
        return hmac.compare_digest(mac.encode(), self._mac(int(head), self._secret()).encode())


def is_authorized(request: Request, token: str, sessions: Sessions) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value and check_token(value.strip(), token):
        return True
    cookie = request.cookies.get(COOKIE)
    return bool(cookie) and sessions.valid(cookie)


class AuthMiddleware(BaseHTTPMiddleware):
    """Refuses every request without a valid credential (when a token is configured)."""

    def __init__(self, app, token: str | None, sessions: Sessions | None) -> None:
        super().__init__(app)
        self.token = token
        self.sessions = sessions

    async def dispatch(self, request: Request, call_next) -> Response:
        authorized = self.token and self.sessions and is_authorized(request, self.token, self.sessions)
        if not self.token or request.url.path in OPEN_PATHS or authorized:
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
