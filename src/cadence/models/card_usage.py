"""How a LoRA trained on each arch is used in ComfyUI and diffusers: the model-specific words of a model
card (`cadence.tools.model_card` writes the rest without knowing the model family). The table here is Wan's;
other families give theirs through `ModelFamily.usage`.

Expert names match `ModelAdapter.experts`: "high_noise"/"low_noise" on the two-expert Wan 2.2 A14B models
(diffusers' `transformer` runs the high-noise steps, `transformer_2` the low-noise ones), "main" elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchUsage:
    title: str  # the model family in words
    pipeline_class: str  # the diffusers pipeline
    pipeline_tag: str  # the Hub's task tag
    needs_image: bool  # the pipeline takes a first frame
    components: dict[str, str]  # expert -> the pipeline component its file loads into
    comfy_models: dict[str, str]  # expert -> the ComfyUI model its file is applied to
    tags: tuple[str, ...]
    fps: int  # native frame rate (export_to_video)


def _one(
    title: str, pipeline: str, tag: str, image: bool, comfy: str, tags: tuple[str, ...], fps: int
) -> ArchUsage:
    return ArchUsage(title, pipeline, tag, image, {"main": "transformer"}, {"main": comfy}, tags, fps)


def _two(title: str, pipeline: str, tag: str, image: bool, variant: str, tags: tuple[str, ...]) -> ArchUsage:
    return ArchUsage(
        title,
        pipeline,
        tag,
        image,
        {"high_noise": "transformer", "low_noise": "transformer_2"},
        {
            "high_noise": f"the high-noise model (`wan2.2_{variant}_high_noise_14B`, the first sampler's)",
            "low_noise": f"the low-noise model (`wan2.2_{variant}_low_noise_14B`, the second sampler's)",
        },
        tags,
        16,
    )


USAGE: dict[str, ArchUsage] = {
    "wan21": _one(
        "Wan 2.1 T2V", "WanPipeline", "text-to-video", False, "the Wan 2.1 T2V model", ("wan", "wan2.1"), 16
    ),
    "wan21_i2v": _one(
        "Wan 2.1 I2V",
        "WanImageToVideoPipeline",
        "image-to-video",
        True,
        "the Wan 2.1 I2V model",
        ("wan", "wan2.1"),
        16,
    ),
    "wan22_14b": _two("Wan 2.2 T2V A14B", "WanPipeline", "text-to-video", False, "t2v", ("wan", "wan2.2")),
    "wan22_14b_i2v": _two(
        "Wan 2.2 I2V A14B", "WanImageToVideoPipeline", "image-to-video", True, "i2v", ("wan", "wan2.2")
    ),
    "wan22_5b": _one(
        "Wan 2.2 TI2V 5B",
        "WanPipeline",
        "text-to-video",
        False,
        "the Wan 2.2 TI2V 5B model (`wan2.2_ti2v_5B`)",
        ("wan", "wan2.2"),
        24,
    ),
}


def arch_usage(arch: str) -> ArchUsage:
    """The model-card words of `arch`: Wan's table above, other families' own (`ModelFamily.usage`)."""
    if arch in USAGE:
        return USAGE[arch]
    from cadence.models.registry import arch_names, family_of

    if arch not in arch_names():
        raise ValueError(f"no model-card usage for arch {arch!r}; known: {', '.join(arch_names())}")
    return family_of(arch).usage(arch)
