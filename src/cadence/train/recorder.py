"""Everything a run writes: metrics lines, TensorBoard scalars, and checkpoints with their LoRA files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cadence.config.schema import JobConfig
from cadence.config.validate import config_hash
from cadence.metrics.jsonl import MetricsLog
from cadence.metrics.tensorboard import TensorBoardLog
from cadence.networks.formats import save_lora_file
from cadence.train.checkpoint import CheckpointManager, RunPaths
from cadence.train.checks import evaluation_weights
from cadence.train.precision import resolve_dtype

if TYPE_CHECKING:
    from cadence.train.setup import TrainingSetup

log = logging.getLogger(__name__)


class RunRecorder:
    def __init__(self, cfg: JobConfig, paths: RunPaths, checkpoints: CheckpointManager) -> None:
        self.cfg = cfg
        self.paths = paths
        self.checkpoints = checkpoints
        self.metrics: MetricsLog | None = None
        self.tensorboard: TensorBoardLog | None = None

    def open(self, purge_step: int | None, truncate_after: int) -> None:
        self.metrics = MetricsLog(self.paths.metrics)
        dropped = self.metrics.truncate_after(truncate_after)
        if dropped:
            log.info(
                "dropped %d metrics lines written after step %d (not in the checkpoint)",
                dropped,
                truncate_after,
            )
        if self.cfg.logging.tensorboard:
            self.tensorboard = TensorBoardLog(self.paths.tensorboard, purge_step=purge_step)

    def write(self, row: dict[str, Any]) -> None:
        assert self.metrics is not None, "RunRecorder.open() must run first"
        self.metrics.write(row)
        if self.tensorboard is not None and row["step"] % self.cfg.logging.log_every == 0:
            self.tensorboard.write(row)

    def lora_metadata(self, setup: TrainingSetup, step: int, expert: str, net: Any) -> dict[str, str]:
        return {
            "step": str(step),
            "expert": expert,
            "rank": str(self.cfg.network.linear),
            "alpha": str(net.linear_alpha),
            "conv_alpha": "" if net.conv_alpha is None else str(net.conv_alpha),
            "base_model": self.cfg.model.name_or_path,
            "arch": self.cfg.model.arch,
            "config_hash": config_hash(self.cfg),
            "job_name": self.cfg.name,
            "trainer": "cadence",
        }

    def save(self, setup: TrainingSetup, step: int) -> None:
        outputs: dict[Path, Any] = {}
        save_dtype = resolve_dtype(self.cfg.save.dtype)
        with evaluation_weights(setup.optimizer):
            for expert, net in setup.networks.items():
                label = setup.hub.label(expert)
                metadata = self.lora_metadata(setup, step, expert, net)
                tensors = net.to_lora_tensors()
                outputs[self.paths.lora_file(step, label)] = _lora_writer(
                    tensors, metadata, self.cfg.save.format, save_dtype
                )
        if setup.hub.alpha is not None:
            text = json.dumps(setup.hub.alpha.to_seed_json(), indent=2)
            outputs[self.paths.alpha_json(step)] = lambda tmp, text=text: tmp.write_text(text)
        if self.metrics is not None:
            self.metrics.sync()
        if self.tensorboard is not None:
            self.tensorboard.flush()
        self.checkpoints.save(step, outputs, setup.adapter_tensors(), setup.state_dict(step))
        log.info("checkpoint %d saved: %s", step, ", ".join(p.name for p in outputs))

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _lora_writer(tensors: dict, metadata: dict[str, str], layout: str, dtype: Any) -> Any:
    def write(tmp: Path) -> None:
        save_lora_file(tmp, tensors, metadata, layout, dtype)

    return write
