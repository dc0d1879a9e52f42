"""FastAPI app factory: pages, API routers, static assets, auth, body limits, scheduler lifecycle.

Swagger/ReDoc pages are off (they load their assets from a CDN, and the UI makes no outside request);
`/openapi.json` stays, behind auth like everything else.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.base import BaseHTTPMiddleware

from cadence.ui import api_files, api_jobs
from cadence.ui.auth import COOKIE, AuthMiddleware, SameOriginMiddleware, Sessions, check_token
from cadence.ui.context import MAX_BODY_BYTES, MAX_UPLOAD_BYTES, UIContext, env_dataset_roots
from cadence.ui.runner import DEFAULT_TRAIN_CMD, JobRunner, Scheduler
from cadence.ui.store import JobStore

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


class LimitsAndHeaders(BaseHTTPMiddleware):
    """Refuse oversized bodies before they are read; add security headers to every answer."""

    async def dispatch(self, request: Request, call_next) -> Response:
        declared = int(request.headers.get("content-length") or 0)
        upload = request.url.path == "/api/datasets/upload"
        limit = MAX_UPLOAD_BYTES if upload else MAX_BODY_BYTES
        if "chunked" in request.headers.get("transfer-encoding", "").lower() and not upload:
            # a body without a declared length could be any size: only uploads count bytes while streaming
            return JSONResponse(
                {"detail": "send a Content-Length (chunked bodies are refused)"}, status_code=411
            )
        if declared > limit:
            return JSONResponse(
                {"detail": f"request body of {declared} bytes is over the {limit}-byte limit"},
                status_code=413,
            )
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        # same-origin, not no-referrer: with no-referrer the browser sends `Origin: null` on the UI's own
        # POSTs, which SameOriginMiddleware must refuse (a hostile page can send null too)
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def create_app(
    home: Path,
    token: str | None = None,
    train_cmd: tuple[str, ...] = DEFAULT_TRAIN_CMD,
    stop_timeout: float = 120.0,
    scheduler_interval: float = 1.0,
    cpu_slots: int = 1,
    gpus: list[str] | None = None,
) -> FastAPI:
    """The UI app over `{home}/cadence.db`. `token` None or empty: no auth (loopback use only)."""
    home = Path(home).expanduser().resolve()
    store = JobStore(home / "cadence.db")
    runner = JobRunner(
        store, home, train_cmd=train_cmd, stop_timeout=stop_timeout, cpu_slots=cpu_slots, gpus=gpus
    )
    context = UIContext(
        home=home, store=store, runner=runner, token=token or None, extra_dataset_roots=env_dataset_roots()
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.tick()  # reconcile after a crash/reboot before serving anything
        scheduler = Scheduler(runner, scheduler_interval)
        scheduler.start()
        try:
            yield
        finally:
            scheduler.halt()

    app = FastAPI(title="Cadence", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.ctx = context
    sessions = Sessions(home, context.token) if context.token else None
    app.add_middleware(AuthMiddleware, token=context.token, sessions=sessions)
    app.add_middleware(SameOriginMiddleware, loopback_only=context.token is None)
    app.add_middleware(LimitsAndHeaders)  # outermost: size limit before auth reads anything
    app.include_router(api_jobs.router)
    app.include_router(api_files.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_pages(app, context, sessions)
    return app


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html", headers={"Cache-Control": "no-store"})


def _add_pages(app: FastAPI, context: UIContext, sessions: Sessions | None) -> None:
    @app.get("/", response_class=HTMLResponse)
    def jobs_page() -> FileResponse:
        return _page("index.html")

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(job_id: str) -> FileResponse:
        return _page("job.html")

    @app.get("/datasets", response_class=HTMLResponse)
    def datasets_page() -> FileResponse:
        return _page("datasets.html")

    @app.get("/login", response_class=HTMLResponse)
    def login_page() -> FileResponse:
        return _page("login.html")

    @app.post("/login")
    def login(token: str = Form(..., max_length=4096)) -> Response:
        if not context.token or sessions is None:
            return RedirectResponse("/", status_code=303)
        if not check_token(token, context.token):
            html = (
                (STATIC / "login.html")
                .read_text()
                .replace("<!--ERROR-->", '<p class="error" id="login-error">Wrong token.</p>')
            )
            return HTMLResponse(html, status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            sessions.issue(),
            httponly=True,
            samesite="strict",
            secure=os.environ.get("CADENCE_UI_SECURE_COOKIE") == "1",
            path="/",
        )
        return response

    @app.post("/logout")
    def logout() -> Response:
        """Ends every login session: the secret the cookies are signed with is replaced."""
        if sessions is not None:
            sessions.rotate()
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response
