"""`cadence ui [--host] [--port] [--home]`: serve the web UI in this process (uvicorn, one worker).

Jobs run detached from this process, so stopping the UI never stops training; the next `cadence ui`
reconciles the store with whatever happened meanwhile.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cadence.ui.auth import is_loopback_literal
from cadence.ui.context import default_home

log = logging.getLogger(__name__)


def refuse_reason(host: str, token: str | None) -> str | None:
    """Why binding `host` is refused (None when allowed): without CADENCE_AUTH only `localhost` or a loopback
    IP literal, the names the UI then answers to (a name that merely resolves to 127.0.0.1 could be a
    rebinding one, so the UI would refuse its requests)."""
    if token or is_loopback_literal(host):
        return None
    return (
        f"refusing to serve on {host}: that address is reachable from other machines and CADENCE_AUTH "
        "is not set. Set CADENCE_AUTH to a long random token (e.g. `export CADENCE_AUTH=$(python -c "
        "'import secrets; print(secrets.token_urlsafe(32))')`) or bind to 127.0.0.1."
    )


def ui_command(args: argparse.Namespace) -> int:
    import uvicorn

    from cadence.ui.app import create_app
    from cadence.ui.auth import session_days

    token = os.environ.get("CADENCE_AUTH") or None
    reason = refuse_reason(args.host, token)
    if reason:
        sys.stderr.write(reason + "\n")
        return 2
    try:
        session_days()  # a bad CADENCE_UI_SESSION_DAYS is said here, not as a traceback at the first login
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    home = Path(args.home).expanduser() if args.home else default_home()
    app = create_app(home, token=token)
    log.info(
        "Cadence UI on http://%s:%d (home %s, auth %s)", args.host, args.port, home, "on" if token else "off"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", workers=1)
    return 0
