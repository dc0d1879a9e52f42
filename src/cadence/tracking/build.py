"""The sinks a config asks for, in the order they receive rows and events (and are closed).

The Hub sink comes first: closing it waits for the final upload, whose outcome (a `publish` event) must
find the other sinks still open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cadence.config.schema import JobConfig
from cadence.train.checkpoint import RunPaths


def configured_sinks(
    cfg: JobConfig,
    paths: RunPaths,
    abandon: Callable[[], bool],
    notify: Callable[[str, dict[str, Any]], None],
) -> list[Any]:
    sinks: list[Any] = []
    if cfg.save.push_to_hub:
        from cadence.tracking.hub import HubPushSink

        assert cfg.save.hf_repo_id is not None  # SaveConfig refuses push_to_hub without it
        sinks.append(HubPushSink(cfg.save.hf_repo_id, cfg.save.hf_private, abandon=abandon, notify=notify))
    if cfg.logging.tensorboard:
        from cadence.metrics.tensorboard import TensorBoardLog

        sinks.append(TensorBoardLog(paths.tensorboard, every=cfg.logging.log_every))
    if cfg.logging.use_wandb:
        from cadence.tracking.wandb_sink import WandbSink

        sinks.append(WandbSink(cfg.logging.project_name, cfg.logging.run_name, every=cfg.logging.log_every))
    if cfg.logging.webhooks:
        from cadence.tracking.webhooks import WebhookSink

        sinks.append(WebhookSink(list(cfg.logging.webhooks)))
    return sinks
