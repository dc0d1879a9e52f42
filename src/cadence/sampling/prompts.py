"""Resolve the `sample:` section into one fully specified `SampleSpec` per sample.

Per-item values override the section's; `[trigger]` becomes the job's trigger word; seeds follow the seed
trainer (`walk_seed`: sample i uses seed + i; an item's own seed wins). Everything generation needs is in
the spec, so the in-training sampler and `cadence sample` produce the same video from the same spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from cadence.config.schema import JobConfig, SampleConfig, SamplePrompt


@dataclass(frozen=True)
class SampleSpec:
    index: int
    prompt: str
    neg: str
    seed: int
    width: int
    height: int
    num_frames: int
    fps: int
    sample_steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    multiplier: float
    ctrl_img: Path | None

    def describe(self) -> dict[str, object]:
        """JSON-ready fields for the sidecar."""
        out = asdict(self)
        out["ctrl_img"] = None if self.ctrl_img is None else str(self.ctrl_img)
        return out


def replace_trigger(text: str, trigger: str | None) -> str:
    """`[trigger]` -> the trigger word (removed when none is set, as the seed trainer does)."""
    return text.replace("[trigger]", trigger or "")


def _pick(item_value, section_value):
    return section_value if item_value is None else item_value


def resolve_spec(
    index: int, item: SamplePrompt, sample: SampleConfig, trigger: str | None, native_fps: int
) -> SampleSpec:
    seed = item.seed if item.seed is not None else sample.seed + (index if sample.walk_seed else 0)
    return SampleSpec(
        index=index,
        prompt=replace_trigger(item.prompt, trigger),
        neg=replace_trigger(_pick(item.neg, sample.neg), trigger),
        seed=int(seed),
        width=int(_pick(item.width, sample.width)),
        height=int(_pick(item.height, sample.height)),
        num_frames=int(_pick(item.num_frames, sample.num_frames)),
        fps=int(_pick(item.fps, sample.fps) or native_fps),
        sample_steps=int(_pick(item.sample_steps, sample.sample_steps)),
        guidance_scale=float(_pick(item.guidance_scale, sample.guidance_scale)),
        guidance_scale_2=sample.guidance_scale_2,
        multiplier=float(item.network_multiplier),
        ctrl_img=item.ctrl_img,
    )


def resolve_samples(cfg: JobConfig, native_fps: int) -> list[SampleSpec]:
    """Every sample of the config (`samples:` then the older `prompts:`), fully resolved."""
    return [
        resolve_spec(i, item, cfg.sample, cfg.trigger_word, native_fps)
        for i, item in enumerate(cfg.sample.items)
    ]


def sample_texts(cfg: JobConfig) -> list[str]:
    """Every prompt and negative prompt sampling will encode (for the text cache before the encoder is
    unloaded with train.cache_text_embeddings)."""
    specs = resolve_samples(cfg, native_fps=16)
    return list(dict.fromkeys([t for s in specs for t in (s.prompt, s.neg)]))
