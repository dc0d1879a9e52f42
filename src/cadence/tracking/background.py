"""A bounded queue drained by one worker thread: how network sinks send without slowing a step.

`submit` never blocks: when the queue is full the item is dropped and counted (a slow or dead receiver
costs messages, never training time). `close` lets the worker finish what is queued within a deadline,
then leaves; the thread is a daemon, so a hung request cannot keep the process alive.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


class BackgroundWorker:
    def __init__(self, name: str, handle: Callable[[Any], None], capacity: int = 256) -> None:
        """`handle(item)` runs on the worker thread for each submitted item; an exception it raises is
        logged (debug) and the worker goes on with the next item: the caller's handler reports its own
        failures."""
        self.name = name
        self._handle = handle
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self.handled = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"cadence-{name}", daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> bool:
        """Queue `item`; False (and counted) when the queue is full or the worker is closed."""
        if self._closed:
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning(
                    "tracking: %s cannot keep up; dropping messages (counted, reported at the end)", self.name
                )
            return False
        return True

    def pending(self) -> int:
        return self._queue.qsize()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until everything queued so far was handled (tests, flush); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return self._queue.unfinished_tasks == 0

    def close(self, timeout: float) -> bool:
        """Deliver what is queued within `timeout` seconds; True when the worker finished in time."""
        if self._closed:
            return not self._thread.is_alive()
        self._closed = True
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(_STOP, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        finished = not self._thread.is_alive()
        left = self._queue.qsize() - (0 if finished else 1)
        if not finished:
            log.warning(
                "tracking: %s did not finish within %.0f s; %d message(s) not delivered",
                self.name,
                timeout,
                max(left, 0),
            )
        if self.dropped:
            log.warning(
                "tracking: %s dropped %d message(s) while its queue was full", self.name, self.dropped
            )
        return finished

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._handle(item)
                self.handled += 1
            except Exception:  # noqa: BLE001 - the handler reports its own failures
                log.debug("tracking: %s item failed", self.name, exc_info=True)
            finally:
                self._queue.task_done()
