"""Where a run's metrics and events go besides the metrics JSONL: TensorBoard, W&B, webhooks, the Hub.

The JSONL stays the record that the UI, `analyze` and the health checks read; everything here is a copy
for people watching from elsewhere. Each destination is a `Sink` (`sink.py`); `SinkSet` fans out to them
and turns off one that fails, so tracking never stops training. Network sinks send from a bounded
background queue (`background.py`). Secrets (webhook URLs, tokens) are kept out of files, logs and the UI by
`secrets.py`.
"""

from cadence.tracking.sink import EVENT_KINDS, RunInfo, Sink
from cadence.tracking.sinkset import SinkSet

__all__ = ["EVENT_KINDS", "RunInfo", "Sink", "SinkSet"]
