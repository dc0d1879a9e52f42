"""`save.push_to_hub`: when training ends, publish the final checkpoint with its model card.

The upload starts on a background thread at the `finish` event of a run that completed (or ended on a
health stop), after the last checkpoint and samples are written; `close()` waits for it, so the process
stays until the upload is done or has failed. A stop signal during the wait abandons it. Failures are
retried (`tools.publish.upload_folder`), then reported with the command that publishes later; they never
change the run's exit status and never touch the run's files.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from cadence.tracking.sink import RunInfo

log = logging.getLogger(__name__)

PUBLISH_ON = ("completed", "health_stop")


class HubPushSink:
    name = "hub"

    def __init__(
        self,
        repo_id: str,
        private: bool,
        abandon: Callable[[], bool] = lambda: False,
        notify: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.repo_id = repo_id
        self.private = private
        self.abandon = abandon  # true once a stop was requested: the wait in close() gives up
        self.notify = notify  # receives "publish" outcomes (webhooks relay them)
        self.run: RunInfo | None = None
        self.thread: threading.Thread | None = None
        self.result: str | None = None  # the commit URL
        self.error: str | None = None
        self.closed = False

    def open(self, run: RunInfo, resume_step: int | None) -> None:
        self.run = run
        from huggingface_hub import get_token

        if get_token() is None:
            log.warning(
                "save.push_to_hub: no Hugging Face token found (HF_TOKEN or `hf auth login`); the upload at the "
                "end will fail unless one is set by then. The run's files stay local either way."
            )

    def write(self, row: dict[str, Any]) -> None:
        return None

    def event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind != "finish" or self.thread is not None:
            return
        if payload.get("status") not in PUBLISH_ON:
            log.info(
                "save.push_to_hub: not publishing a run that stopped before its end; resume it, or publish "
                "now with `cadence publish %s --repo %s`",
                self._run_dir(),
                self.repo_id,
            )
            return
        self.thread = threading.Thread(target=self._upload, name="cadence-hub-upload", daemon=True)
        self.thread.start()
        log.info("save.push_to_hub: uploading the final checkpoint to %s in the background", self.repo_id)

    def _run_dir(self) -> str:
        return str(self.run.run_dir) if self.run else "RUN_DIR"

    def _upload(self) -> None:
        from cadence.tools.publish import PublishError, publish_run

        assert self.run is not None
        try:
            folder, url = publish_run(
                self.run.run_dir,
                self.repo_id,
                private=self.private,
                abandon=self.abandon,
                scrub=self.run.redactor.scrub,
            )
            self.result = url
            log.info("save.push_to_hub: published %s to %s (%s)", folder, self.repo_id, url)
            self._notify("published", f"published to {self.repo_id}: {url}")
        except PublishError as exc:
            self.error = self.run.redactor.scrub(str(exc))
        except Exception as exc:  # noqa: BLE001 - an upload never takes the run down
            self.error = self.run.redactor.scrub(f"{type(exc).__name__}: {exc}")
        if self.error:
            log.error(
                "save.push_to_hub: %s. The run's files are intact; publish later with `cadence publish %s --repo %s`",
                self.error,
                self._run_dir(),
                self.repo_id,
            )
            self._notify("publish_failed", f"publishing to {self.repo_id} failed: {self.error}")

    def _notify(self, status: str, message: str) -> None:
        if self.notify is not None and not self.closed:  # an abandoned upload ends after the other sinks
            self.notify("publish", {"status": status, "repo_id": self.repo_id, "message": message})

    def flush(self) -> None:
        return None

    def close(self) -> None:
        if self.thread is None:
            self.closed = True
            return
        while self.thread.is_alive():
            if self.abandon():
                self.closed = True
                log.warning(
                    "save.push_to_hub: stop requested; leaving the upload unfinished. Publish later with "
                    "`cadence publish %s --repo %s`",
                    self._run_dir(),
                    self.repo_id,
                )
                return
            self.thread.join(0.2)
        self.closed = True

    def state_dict(self) -> dict[str, Any]:
        return {}
