"""Samples during training: a baseline at step 0, then every `sample_every` steps from `sample_start_step`.

The sampler uses the networks attached to the training transformers, so what it shows is exactly the
adapter being trained. It never disturbs training (see `state.py`), and an out-of-memory error while
sampling is logged and skipped: losing a sample is better than losing the run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cadence.config.errors import ConfigError
from cadence.config.schema import JobConfig
from cadence.networks.lora import LoRANetwork
from cadence.sampling.generate import SampleEngine
from cadence.sampling.prompts import SampleSpec, resolve_samples
from cadence.sampling.validation import validate_samples
from cadence.sampling.writers import extensions, sample_stem, write_sample

log = logging.getLogger(__name__)


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def sidecar(spec: SampleSpec, step: int, engine: SampleEngine, extra: dict | None = None) -> dict:
    """What produced a sample, for comparing samples across steps and runs."""
    data = {
        **spec.describe(),
        "step": step,
        "alphas": engine.alphas(),
        "sampler": engine.sample.sampler,
        "flow_shift": engine.flow_shift(),
        "arch": engine.adapter.arch,
    }
    data.update(extra or {})
    return data


def run_specs(
    engine: SampleEngine,
    specs: list[SampleSpec],
    step: int,
    out_dir: Path,
    extra: dict | None = None,
    written: list[Path] | None = None,
) -> list[Path]:
    """Generate and write `specs`, appending each file to `written` as it lands (so a caller that catches
    an error still knows what was written); returns `written`."""
    written = [] if written is None else written
    with engine.session():
        for spec in specs:
            frames = engine.generate(spec)
            written += write_sample(
                out_dir,
                step,
                spec.index,
                frames,
                spec.fps,
                sidecar(spec, step, engine, extra),
                engine.adapter.output_kind,
                motion_fps=engine.adapter.native_fps,
            )
    return written


class TrainingSampler:
    """Called by the training loop: `if sampler.due(step): sampler.run(step)`."""

    def __init__(self, cfg: JobConfig, adapter, networks: dict[str, LoRANetwork], out_dir: Path) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.specs = resolve_samples(cfg, adapter.native_fps)
        self.enabled = not cfg.train.disable_sampling and bool(self.specs)
        self.engine = SampleEngine(adapter, networks, cfg.sample)
        if not self.enabled:
            return
        problems = validate_samples(cfg)
        if problems:
            raise ConfigError(problems)
        self.engine.prepare_texts([t for s in self.specs for t in (s.prompt, s.neg)], self._cached_text)

    def _cached_text(self, text: str) -> torch.Tensor:
        from cadence.data.cache_command import text_cache_for

        # the same cache (and encoder variant) training filled before unloading the text encoder
        return text_cache_for(self.cfg, self.engine.adapter.model_id).load(text)

    def due(self, step: int) -> bool:
        if not self.enabled:
            return False
        sample = self.cfg.sample
        if step == 0:
            return not sample.skip_first_sample
        return (
            step >= sample.sample_start_step and (step - sample.sample_start_step) % sample.sample_every == 0
        )

    def written(self, step: int) -> bool:
        """Every file of every sample of `step` exists (a kill while sampling leaves some missing)."""
        stems = [self.out_dir / sample_stem(step, spec.index) for spec in self.specs]
        kinds = extensions(self.engine.adapter.output_kind)
        return all(stem.with_suffix(ext).is_file() for stem in stems for ext in kinds)

    def run(self, step: int) -> list[Path]:
        """Write every sample for `step`; on OOM log it and return what was written before it."""
        if not self.enabled:
            return []
        written: list[Path] = []
        try:
            run_specs(self.engine, self.specs, step, self.out_dir, written=written)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not _is_oom(error):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.error(
                "step %d: out of memory while sampling; samples skipped, training continues. Lower "
                "sample.width/height/num_frames or use model.low_vram: true",
                step,
            )
            return written
        per_sample = len(extensions(self.engine.adapter.output_kind))
        log.info("step %d: wrote %d sample(s) to %s", step, len(written) // per_sample, self.out_dir)
        return written
