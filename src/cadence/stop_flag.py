"""A clean stop on SIGINT/SIGTERM: the signal sets a flag that the work checks at its own safe points.

A `KeyboardInterrupt` can land between any two bytecodes, e.g. after a file was written and before it was
counted; a flag checked between units of work cannot. Training checks it at step boundaries (then saves a
checkpoint), captioning between files. A second signal while stopping is logged and ignored: the unit in
progress finishes.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

log = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGINT/SIGTERM between `install()` and `uninstall()`; `doing` says what happens next."""

    def __init__(self, doing: str = "saving a checkpoint, then exiting") -> None:
        self.requested = False
        self.signal_name = ""
        self.doing = doing
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            log.warning("%s again: already stopping (%s)", name, self.doing)
            return
        self.requested = True
        self.signal_name = name
        log.warning("%s received: %s", name, self.doing)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self, keep_ignoring: bool = False) -> None:
        """Restore the previous handlers; with keep_ignoring, a stopped process ignores further signals
        until it exits (a late Ctrl-C must not turn a clean stop into a crash)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if keep_ignoring and self.requested else handler)
        self._previous.clear()
