"""Typed job configuration.

Field names and meanings follow the seed trainer (ai-toolkit and its Relaxis fork) so that a user's
existing config runs. Every model forbids unknown keys; the loader turns pydantic's errors into messages
with dotted paths and "did you mean" suggestions. Keys the seed accepts but Cadence does not implement
yet are listed in `unsupported.py`, never silently accepted here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from cadence.config.health import HealthConfig

ExpertName = Literal["high_noise", "low_noise"]
# model.arch: any arch of a registered model family (cadence.models.registry), checked in ModelConfig. The
# arch sets below are computed from the registry when first imported (module __getattr__ at the end).
_ARCH_SETS = {
    "SINGLE_EXPERT_ARCHS": lambda spec: not spec.two_experts,
    "I2V_ONLY_ARCHS": lambda spec: spec.i2v == "always",
    "T2V_ONLY_ARCHS": lambda spec: spec.i2v == "never",
}
DType = Literal["fp32", "float32", "fp16", "float16", "bf16", "bfloat16"]
QTYPES = ("fp8", "uint4", "int8", "qfloat8", "qint8", "qint4")  # model.qtype / qtype_te values implemented
TORCHAO_QTYPES = (
    "uint2",
    "uint3",
    "uint5",
    "uint6",
    "uint7",
    "uint8",
    "int4",
    "float8",
)  # ai-toolkit's, not ours


def _counts_only(annotation: Any) -> bool:
    """True for `int` and `int | None` fields (a count), false where a bool is also meant (`bool | int`)."""
    members = {a for a in get_args(annotation) if a is not type(None)} or {annotation}
    return members == {int}


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment, and
    numbers must be finite (`lr: .inf` is an error like NaN)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_counts(cls, data: Any) -> Any:
        """YAML `steps: true` would pass as 1 (bool is an int to pydantic's lax mode): a bool is not a count.
        It is handed on as the word it was, so the usual 'expected a whole number' error names it, beside
        every other error of the section."""
        if not isinstance(data, dict):
            return data
        flagged = [
            name
            for name, field in cls.model_fields.items()
            if isinstance(data.get(name), bool) and _counts_only(field.annotation)
        ]
        if not flagged:
            return data
        return {**data, **{name: str(data[name]).lower() for name in flagged}}


def _none_is_unset(data: Any, keys: tuple[str, ...]) -> Any:
    """ai-toolkit defaults these keys to None, meaning off: `key: null` takes Cadence's default (off too)."""
    if not isinstance(data, dict) or not any(key in data and data[key] is None for key in keys):
        return data
    return {k: v for k, v in data.items() if not (k in keys and v is None)}


def _existing_lora_files(value: Any) -> Any:
    """Every file a LoRA path key names must exist (a mapping names one file per expert)."""
    if value is None:
        return value
    paths = value.values() if isinstance(value, dict) else [value]
    for path in paths:
        if not Path(str(path)).is_file():
            raise ValueError(f"LoRA file {path} does not exist; fix the path (relative to the config file)")
    return value


LoraFiles = Annotated[
    str | dict[Literal["high_noise", "low_noise", "main"], str] | None, AfterValidator(_existing_lora_files)
]


# --------------------------------------------------------------------------------------------- network
class ExitCriteria(Strict):
    """All criteria must hold to leave a phase (the seed's rule). None disables a criterion."""

    loss_improvement_rate_below: float | None = Field(None, ge=0)
    min_gradient_stability: float | None = Field(None, ge=0, le=1)
    min_loss_r2: float | None = Field(None, ge=0, le=1)
    max_loss_cv: float = Field(0.5, gt=0)
    advisory: list[Literal["min_loss_r2", "min_gradient_stability", "max_loss_cv"]] = Field(
        default_factory=list,
        description="criteria that are logged but do not block a transition",
    )


class AlphaPhase(Strict):
    alpha: float = Field(gt=0)
    min_steps: int = Field(0, ge=0)
    exit_criteria: ExitCriteria | None = None


class ExpertAlphaSchedule(Strict):
    """Per-expert override of the phase list (seed: `per_expert: {high_noise: {phases: ...}}`, a synonym)."""

    conv_alpha_phases: dict[str, AlphaPhase] | None = None
    alpha_phases: dict[str, AlphaPhase] | None = None


class AlphaSchedule(Strict):
    enabled: bool = False
    preset: Literal["video", "image"] | None = None
    linear_alpha: float | None = Field(None, gt=0)
    conv_alpha_phases: dict[str, AlphaPhase] | None = None
    alpha_phases: dict[str, AlphaPhase] | None = None
    per_expert: dict[ExpertName, ExpertAlphaSchedule] | None = None
    window: int = Field(200, ge=20, description="loss window (steps) for trend statistics")


class NetworkKwargs(Strict):
    @model_validator(mode="before")
    @classmethod
    def _aitoolkit_none(cls, data: Any) -> Any:
        return _none_is_unset(
            data, ("only_if_contains", "ignore_if_contains", "rank_dropout", "module_dropout")
        )

    only_if_contains: list[str] = Field(default_factory=list)
    ignore_if_contains: list[str] = Field(default_factory=list)
    include_patterns: list[str] = Field(default_factory=list)
    exclude_patterns: list[str] = Field(default_factory=list)
    rank_dropout: float = Field(0.0, ge=0, lt=1)
    module_dropout: float = Field(0.0, ge=0, lt=1)
    loraplus_lr_ratio: float | None = Field(None, gt=0)
    dora_wd: bool = Field(
        False,
        description="DoRA: weight-decomposed adapter of any type (LyCORIS/kohya/musubi spelling; synonyms "
        "use_dora, weight_decompose; network.type: dora is LoRA with this on)",
    )
    wd_on_output: bool = Field(
        False,
        description="DoRA magnitude per output row (PEFT's and ai-toolkit's axis; loads exactly in diffusers) "
        "instead of per input column (the axis ComfyUI applies exactly); synonym wd_on_out",
    )


NetworkType = Literal["lora", "locon", "lokr", "loha", "dora"]


class NetworkConfig(Strict):
    type: NetworkType = "lora"
    linear: int = Field(4, ge=1, description="rank of Linear adapters (seed synonym: rank)")
    linear_alpha: float | None = Field(
        None,
        gt=0,
        description="alpha of Linear adapters; Cadence default: the rank (the seed defaulted to 1.0); "
        "seed synonym: alpha",
    )
    conv: int | None = Field(None, ge=1)
    conv_alpha: float | None = Field(None, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _aitoolkit_none(cls, data: Any) -> Any:
        return _none_is_unset(data, ("dropout",))

    network_kwargs: NetworkKwargs = Field(default_factory=NetworkKwargs)
    alpha_schedule: AlphaSchedule | None = None
    pretrained_lora_path: LoraFiles = Field(
        None,
        description="start the adapters from this LoRA (a fresh run only; a resume uses its checkpoint): an "
        "expert's file (…_high_noise.safetensors finds its _low_noise sibling) or {high_noise: F, low_noise: F}",
    )
    lokr_full_rank: bool = Field(
        False,
        description="LoKr: true: both Kronecker factors full matrices (no rank, scale 1); false (the seed fork's "
        "default; ostris' ai-toolkit now defaults to true, so an unset key is warned about): the larger factor is "
        "rank-`linear` low-rank and alpha/rank scales it",
    )
    lokr_factor: int = Field(
        -1,
        ge=-1,
        description="LoKr: size of the smaller Kronecker factor (-1: automatic, near the square root)",
    )

    @field_validator("lokr_factor")
    @classmethod
    def _factor_not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("lokr_factor must be -1 (automatic) or a positive divisor of the layer sizes")
        return value

    @property
    def algo(self) -> Literal["lora", "lokr", "loha"]:
        """The adapter algorithm: locon and dora are LoRA (with conv adapters / weight decomposition)."""
        return "lokr" if self.type == "lokr" else "loha" if self.type == "loha" else "lora"

    @property
    def uses_dora(self) -> bool:
        return self.type == "dora" or self.network_kwargs.dora_wd

    @property
    def conv_rank(self) -> int | None:
        """Rank of Conv adapters: `conv`, or for type locon the Linear rank when `conv` is unset."""
        if self.conv is None and self.type == "locon":
            return self.linear
        return self.conv

    @property
    def resolved_linear_alpha(self) -> float:
        return float(self.linear_alpha if self.linear_alpha is not None else self.linear)

    @property
    def resolved_conv_alpha(self) -> float | None:
        if self.conv_rank is None:
            return None
        if self.conv_alpha is not None:
            return float(self.conv_alpha)
        return float(self.conv) if self.conv is not None else self.resolved_linear_alpha


# ------------------------------------------------------------------------------------------------ save
class SaveConfig(Strict):
    dtype: DType = "float16"
    format: Literal["comfyui", "diffusers", "kohya"] = "comfyui"
    save_every: int = Field(1000, ge=1)
    max_step_saves_to_keep: int = Field(5, ge=1)
    push_to_hub: bool = Field(
        False,
        description="publish the final checkpoint with a model card to the Hub when training ends "
        "(background, retried, never fatal; docs/tracking.md)",
    )
    hf_repo_id: str | None = Field(None, description="the Hub repo to publish to, `user/name`")
    hf_private: bool = Field(
        False, description="create the Hub repo as private (an existing repo keeps its own)"
    )

    @field_validator("hf_repo_id")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(value)
        except HFValidationError as exc:
            raise ValueError(f"{value!r} is not a Hub repo id ({exc}); use `user/name`") from None
        return value

    @model_validator(mode="after")
    def _push_needs_repo(self) -> SaveConfig:
        if self.push_to_hub and not self.hf_repo_id:
            raise ValueError(
                "push_to_hub: true needs save.hf_repo_id (the repo to publish to, e.g. user/my_lora)"
            )
        return self


# -------------------------------------------------------------------------------------------- datasets
FrameExtraction = Literal["shrink", "random", "head", "chunk", "slide", "uniform", "full"]


class DatasetConfig(Strict):
    folder_path: Path
    caption_ext: str = "txt"
    default_caption: str | None = None
    caption_dropout_rate: float = Field(0.0, ge=0, le=1)
    resolution: list[int] = Field(default_factory=lambda: [512])
    max_pixels_per_frame: int | None = Field(None, ge=64 * 64)
    bucket_upscale: bool = Field(
        False, description="sources smaller than the pixel budget are scaled up to it"
    )
    fixed_size: list[int] | None = Field(
        None, description="[width, height]: every file cover-resized and center-cropped to exactly this size"
    )
    media: Literal["all", "images", "videos"] = Field("all", description="which files of the folder are used")
    num_frames: int | list[int] = Field(
        1, description="frames per window: 1 (images) or 4k+1; a list of lengths"
    )
    shrink_video_to_frames: bool = True
    frame_extraction: FrameExtraction | None = Field(
        None, description="how windows are cut from a clip; unset: from shrink_video_to_frames"
    )
    fps: float | Literal["source"] = Field(
        16.0, description="frame rate windows are planned at (not shrink); 'source': each clip's own rate"
    )
    frame_stride: int = Field(1, ge=1, description="frame_extraction slide: frames between window starts")
    frame_sample: int = Field(1, ge=1, description="frame_extraction uniform: windows per length")
    max_frames: int = Field(129, ge=1, description="frame_extraction full: frames at most (4k+1)")
    control_path: Path | None = Field(
        None, description="folder of I2V first-frame images named like the media"
    )
    control_transparent_color: list[int] = Field(
        default_factory=lambda: [0, 0, 0],
        description="RGB under transparent control-image pixels (seed: black)",
    )
    do_i2v: bool | None = Field(
        None,
        description="train image-to-video; resolved from model.arch when unset (always a bool after loading)",
    )
    cache_latents_to_disk: bool = False
    cache_latents: bool = False
    cache_directory: Path | None = Field(None, description="shared latent cache folder for this dataset")
    num_repeats: int = Field(1, ge=1)
    is_eval: bool = False
    # augmentation and regularisation as ai-toolkit means them (data/augment, caption_tokens, regularization)
    flip_x: bool = Field(
        False, description="add a left-right mirrored copy of every item (its own cache entry)"
    )
    flip_y: bool = Field(
        False, description="add an upside-down copy of every item (of the mirrored ones too)"
    )
    temporal_jitter: int = Field(
        0,
        ge=0,
        description="the relaxis fork's per-frame jitter: each frame index moves up to ±N source frames",
    )
    temporal_jitter_variants: int = Field(
        4, ge=1, le=64, description="jittered frame plans per window, each cached once; a batch draws one"
    )
    shuffle_tokens: bool = Field(
        False, description="shuffle the caption's comma-separated tokens at batch time"
    )
    token_dropout_rate: float = Field(
        0.0, ge=0, le=1, description="drop each caption token (past keep_tokens) with this probability"
    )
    keep_tokens: int = Field(0, ge=0, description="first caption tokens that token_dropout_rate never drops")
    is_reg: bool = Field(
        False,
        description="a regularisation set: every other step of each expert trains on these (no trigger)",
    )
    loss_multiplier: float = Field(1.0, ge=0, description="this dataset's items' loss is multiplied by this")
    network_weight: float = Field(1.0, description="LoRA multiplier while training on this dataset's items")

    @model_validator(mode="before")
    @classmethod
    def _extraction_from_shrink(cls, data: Any) -> Any:
        """frame_extraction and the seed's shrink_video_to_frames name one choice: the missing one follows the
        other (so the resolved config holds both, agreeing); both given and disagreeing is refused below."""
        if not isinstance(data, dict):
            return data
        mode, shrink = data.get("frame_extraction"), data.get("shrink_video_to_frames")
        if mode is None:
            return {**data, "frame_extraction": "random" if shrink is False else "shrink"}
        if shrink is None and isinstance(mode, str):
            return {**data, "shrink_video_to_frames": mode == "shrink"}
        return data

    @field_validator("num_frames")
    @classmethod
    def _frame_counts(cls, value: int | list[int]) -> int | list[int]:
        counts = value if isinstance(value, list) else [value]
        if not counts:
            raise ValueError("num_frames is an empty list; give one length (e.g. 33) or several ([17, 33])")
        for count in counts:
            if isinstance(count, bool) or count < 1:
                raise ValueError(f"num_frames {count!r} is not a frame count; give 1 or 4k+1 (e.g. 33)")
            if count != 1 and (count - 1) % 4 != 0:
                lower, upper = ((count - 1) // 4) * 4 + 1, ((count - 1) // 4 + 1) * 4 + 1
                raise ValueError(
                    f"num_frames must be 1 or of the form 4k+1 (Wan's VAE); try {lower} or {upper}"
                )
        return sorted(set(value)) if isinstance(value, list) else value

    @field_validator("fps")
    @classmethod
    def _positive_fps(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and value <= 0:
            raise ValueError("fps must be > 0 (frames per second), or 'source' for each clip's own rate")
        return value

    @field_validator("control_transparent_color")
    @classmethod
    def _rgb(cls, value: list[int]) -> list[int]:
        if len(value) != 3 or any(not 0 <= c <= 255 for c in value):
            raise ValueError("control_transparent_color is [r, g, b], each 0-255 (e.g. [0, 0, 0])")
        return value

    @field_validator("fixed_size")
    @classmethod
    def _two_sides(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or any(side < 16 for side in value)):
            raise ValueError("fixed_size is [width, height], each >= 16 (e.g. [832, 480])")
        return value

    @property
    def frame_counts(self) -> tuple[int, ...]:
        """num_frames as a tuple of window lengths, ascending."""
        return tuple(self.num_frames) if isinstance(self.num_frames, list) else (self.num_frames,)

    @model_validator(mode="after")
    def _keys_that_act(self) -> DatasetConfig:
        """A key whose value cannot act in this dataset is refused rather than ignored."""
        from cadence.data.augment import augment_key_problems
        from cadence.data.windows import dataset_key_problems

        problems = dataset_key_problems(self) + augment_key_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("resolution", mode="before")
    @classmethod
    def _scalar_resolution(cls, value: object) -> object:
        return [value] if isinstance(value, int) else value

    @field_validator("resolution")
    @classmethod
    def _positive_resolution(cls, value: list[int]) -> list[int]:
        if not value or any(r < 16 for r in value):
            raise ValueError("resolution must be a non-empty list of sizes >= 16 (e.g. [512])")
        return value

    @field_validator("caption_ext")
    @classmethod
    def _caption_not_media(cls, value: str) -> str:
        """Captions are written by the UI editor beside each media file: an extension that names a media
        type or leaves the folder would overwrite the clip itself (or a file elsewhere)."""
        from cadence.data.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

        ext = value.strip().lstrip(".")
        if any(c in value for c in "/\\\0") or ".." in value:
            raise ValueError(
                f"caption_ext {value!r} contains a path separator or '..'; give a plain extension such as txt"
            )
        if not ext:
            raise ValueError(
                "caption_ext is empty; use txt (captions are read from NAME.txt beside NAME.mp4)"
            )
        if f".{ext.lower()}" in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
            raise ValueError(
                f"caption_ext {value!r} is a media extension: captions would be read from (and the UI editor "
                "would write over) the media files themselves; use txt"
            )
        return ext


# ----------------------------------------------------------------------------------------------- train
class EMAConfig(Strict):
    """In-training EMA of each expert's adapter (ai-toolkit's `train.ema_config`); see train/ema.py."""

    use_ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1, description="shadow = decay * shadow + (1 - decay) * weights")
    use_feedback: bool = Field(
        False, description="ai-toolkit's experimental feedback into the weights: refused"
    )
    param_multiplier: float = Field(1.0, description="ai-toolkit's per-update weight multiplier: refused")

    @field_validator("use_feedback")
    @classmethod
    def _no_feedback(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "use_feedback (ai-toolkit pushes 10x the EMA difference back into the weights) is not "
                "implemented: it changes the training trajectory, not only what is saved; set it to false"
            )
        return value

    @field_validator("param_multiplier")
    @classmethod
    def _no_multiplier(cls, value: float) -> float:
        if value != 1.0:
            raise ValueError(
                "param_multiplier (ai-toolkit scales the weights at every update) is not implemented; it acts "
                "like a weight decay: use train.optimizer_params.weight_decay instead, and leave it at 1.0"
            )
        return value


class TrainConfig(Strict):
    steps: int = Field(1000, ge=1, le=100_000_000)
    batch_size: int = Field(1, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    lr: float = Field(
        1e-6,
        gt=0,
        le=10,
        description="above 10 no optimizer here trains (AdamW ~1e-4, Prodigy's multiplier 1.0): refused",
    )
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "adamw_schedulefree", "automagic"] = "adamw"
    optimizer_params: dict[str, float | int | bool | str | list[float]] = Field(default_factory=dict)
    lr_scheduler: Literal[
        "constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial", "step"
    ] = Field("constant", description="LR schedule (ai-toolkit's names; parameters in lr_scheduler_params)")
    lr_warmup_steps: int = Field(0, ge=0)
    lr_scheduler_params: dict[str, float | int] = Field(default_factory=dict)
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    dtype: DType = "fp32"
    gradient_checkpointing: bool | int = Field(
        True, description="true: every transformer block; an int N >= 1: every N-th block; false: off"
    )
    gradient_checkpointing_keep_attention: bool | int = Field(
        False,
        description="checkpointed blocks keep their self-attention outputs for backward instead of running "
        "attention again in the recompute (PyTorch SDPA backends; tokens x dim per block more memory); an int K "
        "keeps them in the first K checkpointed blocks only",
    )
    gradient_checkpointing_offload: bool = Field(
        False,
        description="checkpointed blocks keep their saved inputs in pinned host memory (less GPU memory, "
        "one host round trip per block)",
    )
    attention_backend: Literal["native", "cudnn", "flash", "flash3", "sage"] = Field(
        "native",
        description="diffusers attention backend for every expert (native = PyTorch SDPA, cudnn = SDPA "
        "pinned to cuDNN fused attention, CUDA only)",
    )
    compile: bool = Field(False, description="torch.compile each transformer block (regional compile)")
    compile_cache_size_limit: int = Field(32, ge=1, description="torch._dynamo recompile limit per block")
    adapter_dtype: Literal["fp32", "bf16"] = Field("fp32", description="dtype of the LoRA master weights")
    noise_scheduler: Literal["flowmatch"] = "flowmatch"
    timestep_type: Literal[
        "uniform", "linear", "sigmoid", "shift", "logit_normal", "weighted", "flux_shift", "lumina2_shift"
    ] = Field(
        "sigmoid",
        description="timestep distribution; weighted: linear + ai-toolkit's per-timestep loss weights; "
        "flux_shift / lumina2_shift: shift by the model's own shift at each batch's size (image families)",
    )
    min_denoising_steps: int = Field(
        0,
        ge=0,
        le=999,
        description="ai-toolkit's index range of its 1000 training timesteps (0 = pure noise)",
    )
    max_denoising_steps: int = Field(
        999, ge=0, le=1000, description="last index kept (1000 counts as 999, as ai-toolkit clamps it)"
    )
    flow_shift: float = Field(3.0, gt=0, description="shift for timestep_type: shift")
    logit_mean: float = Field(0.0, description="mean of z for timestep_type: logit_normal (t = sigmoid(z))")
    logit_std: float = Field(1.0, gt=0, description="std of z for timestep_type: logit_normal")
    switch_boundary_every: int = Field(1, ge=1)
    seed: int = 42
    deterministic: bool = Field(
        False,
        description="deterministic kernels only (torch.use_deterministic_algorithms, cuDNN deterministic): "
        "bit-exact resume on CUDA, at some speed cost; an op without a deterministic kernel stops the run",
    )
    ema_config: EMAConfig = Field(
        default_factory=EMAConfig,
        description="EMA of each expert's adapter at its own steps; saved files, samples, eval and |dW| use it",
    )
    cache_text_embeddings: bool = False
    unload_text_encoder: bool = Field(
        False,
        description="encode the trigger word (or a blank prompt) and the sample prompts once, then free the text "
        "encoder; every item trains on that one embedding and captions are not read (with cache_text_embeddings: "
        "the cached captions are used)",
    )
    reg_weight: float = Field(
        1.0, ge=0, description="loss multiplier of the regularisation sets' items (datasets[].is_reg)"
    )
    disable_sampling: bool = False
    max_nan_steps: int = Field(20, ge=1, description="consecutive non-finite losses before the run stops")
    log_every: int = Field(50, ge=1, description="steps between summary lines in log.txt")
    health: HealthConfig | None = Field(None, description="live weight/loss health checks at checkpoints")
    eval_every: int | None = Field(None, ge=1, description="steps between fixed-timestep eval-loss runs")
    eval_split: float = Field(0.0, ge=0, lt=1, description="fraction of train items held out for eval loss")

    @field_validator("gradient_checkpointing")
    @classmethod
    def _checkpoint_every(cls, value: bool | int) -> bool | int:
        if not isinstance(value, bool) and value < 1:
            raise ValueError("gradient_checkpointing must be true, false or a block interval N >= 1 (e.g. 2)")
        return value

    @field_validator("gradient_checkpointing_keep_attention")
    @classmethod
    def _keep_count(cls, value: bool | int) -> bool | int:
        if not isinstance(value, bool) and value < 1:
            raise ValueError(
                "gradient_checkpointing_keep_attention must be true, false or a block count K >= 1 (the first K "
                "checkpointed blocks keep their self-attention output)"
            )
        return value

    @field_validator("attention_backend")
    @classmethod
    def _no_sage(cls, value: str) -> str:
        if value == "sage":
            raise ValueError(
                "SageAttention has no backward pass, so it cannot train; use native (SDPA), cudnn, flash or flash3 "
                "(sage is for sampling only)"
            )
        return value

    @model_validator(mode="after")
    def _compatible_options(self) -> TrainConfig:
        if self.gradient_checkpointing_offload and self.gradient_checkpointing is False:
            raise ValueError(
                "train.gradient_checkpointing_offload needs train.gradient_checkpointing (true or N): it moves "
                "what checkpointed blocks save to host memory"
            )
        if self.gradient_checkpointing_keep_attention and self.gradient_checkpointing is False:
            raise ValueError(
                "train.gradient_checkpointing_keep_attention needs train.gradient_checkpointing (true or N)"
            )
        if self.gradient_checkpointing_keep_attention and self.attention_backend in ("flash", "flash3"):
            raise ValueError(
                "train.gradient_checkpointing_keep_attention works with PyTorch's SDPA kernels (attention_backend "
                f"native or cudnn), not with flash-attn's ({self.attention_backend!r})"
            )
        if self.ema_config.use_ema and self.optimizer == "adamw_schedulefree":
            raise ValueError(
                "train.ema_config.use_ema with optimizer adamw_schedulefree: schedule-free already keeps an "
                "average of its weights (what Cadence saves and samples); an EMA on top would average twice. "
                "Turn one of them off"
            )
        if self.deterministic and self.attention_backend != "native":
            raise ValueError(
                f"train.deterministic cannot use attention_backend {self.attention_backend!r}: PyTorch has no "
                "deterministic cuDNN attention, and flash-attn's backward runs non-deterministically as diffusers "
                "calls it; use native (PyTorch then picks a deterministic kernel)"
            )
        return self


# ----------------------------------------------------------------------------------------------- model
class ModelKwargs(Strict):
    train_high_noise: bool = True
    train_low_noise: bool = True
    boundary_ratio: float | None = Field(None, gt=0, lt=1)


def _existing_transformer_files(value: str | dict[str, str]) -> str | dict[str, str]:
    """A single-file transformer checkpoint (a `.safetensors` name, or one per expert) must exist; a Diffusers
    folder or hub id is checked with the model (cadence.models.registry.check_model)."""
    if isinstance(value, str) and not value.lower().endswith(".safetensors"):
        return value
    files = value.values() if isinstance(value, dict) else [value]
    for path in files:
        if not str(path).lower().endswith(".safetensors"):
            raise ValueError(
                f"{path!r} is not a .safetensors file: an expert's transformer checkpoint is one .safetensors file"
            )
        if not Path(str(path)).expanduser().is_file():
            raise ValueError(
                f"transformer checkpoint {path} does not exist; fix the path (relative to the config file), or "
                "download the file first (`hf download OWNER/REPO FILE --local-dir DIR`)"
            )
    if isinstance(value, dict) and len(set(value.values())) < len(value):
        raise ValueError("both experts name the same file; each expert has its own checkpoint file")
    return value


TransformerSource = Annotated[
    str | dict[Literal["high_noise", "low_noise"], str], AfterValidator(_existing_transformer_files)
]


class ModelConfig(Strict):
    name_or_path: TransformerSource = Field(
        description="a Diffusers folder (relative to the config file) or hub id; or a single-file transformer "
        "checkpoint (.safetensors, with extras_name_or_path); two-expert Wan 2.2 A14B: {high_noise: FILE, "
        "low_noise: FILE}"
    )
    arch: str = Field(
        description="the model family and variant (cadence.models.registry; ai-toolkit's names)"
    )
    extras_name_or_path: str | None = Field(
        None,
        description="with a single-file name_or_path: the Diffusers folder or hub id every other component (VAE, "
        "text encoders, tokenizers, scheduler) and the transformer's config.json come from (ai-toolkit's key)",
    )
    revision: str | None = None
    quantize: bool = False
    qtype: str = "qfloat8"
    quantize_te: bool = False
    qtype_te: str = "qfloat8"
    low_vram: bool = False
    blocks_to_swap: int = Field(
        0, ge=0, description="transformer blocks whose weights live in host memory and stream in when used"
    )
    model_kwargs: ModelKwargs = Field(default_factory=ModelKwargs)
    lora_path: LoraFiles = Field(
        None,
        description="a LoRA merged into the frozen base before training (and sampling); per expert as "
        "network.pretrained_lora_path",
    )
    assistant_lora_path: str | None = Field(
        None,
        description="a frozen training adapter on the base during training only, not when sampling (ai-toolkit's "
        "FLUX.1-schnell / Z-Image-Turbo training adapters): a file, a folder holding "
        "pytorch_lora_weights.safetensors, or a hub repo id",
    )

    @field_validator("arch")
    @classmethod
    def _registered_arch(cls, value: str) -> str:
        """An arch of a registered family; ai-toolkit's spellings (`arch:variant` UI tags) map onto it."""
        from cadence.models.registry import arch_names, canonical_arch

        arch = canonical_arch(value.strip().lower())
        if arch is None:
            raise ValueError(
                f"arch {value!r} is not a model Cadence trains; use one of {', '.join(arch_names())}"
            )
        return arch

    @model_validator(mode="before")
    @classmethod
    def _fold_recovery_adapter_key(cls, data: Any) -> Any:
        """ai-toolkit also accepts `accuracy_recovery_adapter: FILE` beside `qtype: uint4`: same as 'uint4|FILE'."""
        if not isinstance(data, dict) or "accuracy_recovery_adapter" not in data:
            return data
        data = dict(data)
        adapter = data.pop("accuracy_recovery_adapter")
        if adapter is None or adapter == "":
            return data
        if not isinstance(adapter, str):
            raise ValueError(f"model.accuracy_recovery_adapter: expected a file path, got {adapter!r}")
        adapter, qtype = adapter.strip(), data.get("qtype")
        if not isinstance(qtype, str):
            raise ValueError("model.accuracy_recovery_adapter needs model.qtype: uint4 beside it")
        base, bar, named = qtype.partition("|")
        if bar and named.strip() != adapter:
            raise ValueError(
                f"model.accuracy_recovery_adapter {adapter!r} and the adapter in model.qtype {qtype!r} differ; "
                "give it once"
            )
        data["qtype"] = f"{base}|{adapter}"
        return data

    @field_validator("qtype", "qtype_te")
    @classmethod
    def _known_qtype(cls, value: str) -> str:
        """fp8/uint4 are Cadence's own, int8 is torchao's, q* are optimum-quanto's; `uint4|FILE` adds a frozen
        accuracy-recovery adapter (ai-toolkit's form) over the uint4 base."""
        base, bar, adapter = (part.strip() for part in value.partition("|"))
        base = base.lower()
        if base in QTYPES:
            if bar and base != "uint4":
                raise ValueError(
                    f"an accuracy-recovery adapter ('{value}') is only defined for uint4; use plain {base!r}"
                )
            if bar and not adapter:
                raise ValueError(
                    f"'{value}': name the adapter file after '|' (a local path or owner/repo/file)"
                )
            return f"{base}|{adapter}" if bar else base
        if base in TORCHAO_QTYPES:
            raise ValueError(
                f"qtype {value!r} is valid for ai-toolkit but not supported yet by Cadence; use fp8 "
                "(block-scaled e4m3), uint4 (torchao-0.10-exact, optionally with an adapter: 'uint4|FILE'), "
                "int8 (torchao), qint8 or qint4 (optimum-quanto)"
            )
        raise ValueError(f"unknown qtype {value!r}; expected one of {', '.join(QTYPES)}")

    @model_validator(mode="after")
    def _recovery_adapter_only_for_transformer(self) -> ModelConfig:
        if self.recovery_adapter and not self.quantize:
            raise ValueError(
                f"model.qtype names an accuracy-recovery adapter ({self.recovery_adapter}) but model.quantize is "
                "false: set quantize: true (the adapter corrects uint4 weights) or drop the adapter"
            )
        if "|" in self.qtype_te:
            raise ValueError(
                "model.qtype_te: accuracy-recovery adapters ('uint4|FILE') apply to the transformer only"
            )
        if self.blocks_to_swap and self.quantize and self.qtype_name == "int8":
            raise ValueError(
                "model.blocks_to_swap cannot stream torchao int8 weights (tensor subclasses); use qtype fp8 or "
                "uint4 with block swap"
            )
        return self

    @property
    def qtype_name(self) -> str:
        """The quantization without its adapter file ('uint4' for 'uint4|FILE')."""
        return self.qtype.partition("|")[0]

    @property
    def recovery_adapter(self) -> str | None:
        """The accuracy-recovery adapter of 'uint4|FILE' (a local path or owner/repo/file), else None."""
        return self.qtype.partition("|")[2] or None

    # ------------------------------------------------------------- where the components come from
    @property
    def single_file(self) -> bool:
        """name_or_path names single-file transformer checkpoint(s) rather than a Diffusers folder or hub id."""
        return isinstance(self.name_or_path, dict) or self.name_or_path.lower().endswith(".safetensors")

    @property
    def transformer_files(self) -> dict[str, str]:
        """{expert: checkpoint file} ("main" for single-expert models); empty for a folder or hub id."""
        if isinstance(self.name_or_path, dict):
            return dict(self.name_or_path)
        return {"main": self.name_or_path} if self.single_file else {}

    @property
    def folder_key(self) -> str:
        """The key naming the Diffusers folder / hub id (what model-folder errors point at)."""
        return "extras_name_or_path" if self.single_file else "name_or_path"

    @property
    def folder_spec(self) -> str:
        """The Diffusers folder or hub id every component but single-file transformers is read from (with its
        transformers' config.json): extras_name_or_path with a single-file name_or_path, else name_or_path (a
        checkpoint file while extras_name_or_path is missing: no folder, as the config check reports)."""
        if not self.single_file:
            return str(self.name_or_path)
        return self.extras_name_or_path or next(iter(self.transformer_files.values()))

    def base_model(self, expert: str = "main") -> str:
        """What `expert`'s adapter trains on, for LoRA-file metadata: its transformer file, else name_or_path."""
        files = self.transformer_files
        return files.get(expert) or next(iter(files.values()), None) or str(self.name_or_path)


# ---------------------------------------------------------------------------------------------- sample
def _round_frames(value: int | None, key: str) -> int | None:
    """A sample length that is not 4k+1 (Wan's VAE) is rounded as diffusers' Wan pipelines round it
    (n // 4 * 4 + 1: 40 -> 41, 42 -> 41, 44 -> 45), with a warning, instead of refused: ai-toolkit's own Wan
    examples sample 40 frames and its pipelines round the same way."""
    if value is None or (value - 1) % 4 == 0:
        return value
    rounded = max(value // 4 * 4 + 1, 1)
    logging.getLogger(__name__).warning(
        "%s: %d frames is not of the form 4k+1 (Wan's VAE); sampling %d frames, rounded as diffusers' Wan "
        "pipelines do. Set %d to silence this",
        key,
        value,
        rounded,
        rounded,
    )
    return rounded


class SamplePrompt(Strict):
    """One sample; unset per-item values fall back to the sample section (the seed's SampleItem)."""

    prompt: str
    ctrl_img: Path | None = Field(
        None, description="first frame for I2V models (required for I2V-only archs)"
    )
    network_multiplier: float = Field(1.0, description="LoRA strength for this sample (1 = as trained)")
    seed: int | None = Field(None, description="overrides sample.seed (and walk_seed) for this sample")
    width: int | None = Field(None, ge=16)
    height: int | None = Field(None, ge=16)
    num_frames: int | None = Field(None, ge=1)
    fps: int | None = Field(None, ge=1)
    neg: str | None = None
    guidance_scale: float | None = None
    sample_steps: int | None = Field(None, ge=1)

    @field_validator("num_frames")
    @classmethod
    def _frames_4k_plus_1(cls, value: int | None) -> int | None:
        return _round_frames(value, "sample.samples[].num_frames")


class SampleConfig(Strict):
    sampler: Literal["flowmatch", "unipc", "euler"] = Field(
        "flowmatch",
        description="flowmatch/euler: flow-matching Euler; unipc: the model's own UniPC scheduler",
    )
    sample_every: int = Field(100, ge=1)
    sample_start_step: int = Field(0, ge=0)
    skip_first_sample: bool = Field(False, description="no baseline sample at step 0")
    width: int = Field(512, ge=16)
    height: int = Field(512, ge=16)
    num_frames: int = Field(
        1,
        ge=1,
        description="frames per sample: 4k+1 (another count is rounded as diffusers does, with a warning)",
    )
    fps: int | None = Field(None, ge=1, description="video frame rate; unset = the model's native rate")
    sample_steps: int = Field(20, ge=1)
    guidance_scale: float = 7.0
    guidance_scale_2: float | None = Field(
        None, description="guidance of the low-noise expert (Wan 2.2 A14B)"
    )
    flow_shift: float | None = Field(None, gt=0, description="sampling shift; unset = the model's scheduler")
    neg: str = ""
    seed: int = 0
    walk_seed: bool = Field(False, description="sample i uses seed + i")
    attention_backend: Literal["native", "sage"] = Field(
        "native", description="sage: SageAttention for sampling only (CUDA + sageattention installed)"
    )
    samples: list[SamplePrompt] = Field(default_factory=list)
    prompts: list[str] = Field(default_factory=list)

    @field_validator("num_frames")
    @classmethod
    def _frames_4k_plus_1(cls, value: int | None) -> int | None:
        return _round_frames(value, "sample.num_frames")

    @property
    def items(self) -> list[SamplePrompt]:
        """`samples` followed by the older `prompts:` list, as one list of samples."""
        return [*self.samples, *(SamplePrompt(prompt=p) for p in self.prompts)]


def ctrl_img_problem(path: Path | None) -> str | None:
    """Why a sample's control image cannot be used, or None. Checked before training, never at step 400."""
    if path is None:
        return "missing; image-to-video models need a first frame for every sample (set ctrl_img)"
    if not Path(path).is_file():
        return f"file {path} does not exist; fix the path (relative paths are relative to the config file)"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return f"file {path} is not a readable image ({exc}); use a PNG/JPEG/WebP file"
    return None


# --------------------------------------------------------------------------------------------- logging
WEBHOOK_EVENTS = (
    "start",
    "checkpoint",
    "sample",
    "alpha_phase",
    "health_warning",
    "finish",
    "failure",
    "publish",
)
DISCORD_WEBHOOK_PREFIXES = ("https://discord.com/api/webhooks/", "https://discordapp.com/api/webhooks/")


class WebhookConfig(Strict):
    """One receiver of run events, in SimpleTuner's `webhook_config` entry shape (docs/tracking.md)."""

    webhook_type: Literal["raw", "discord"] = Field(
        "raw", description="raw: a JSON event per POST; discord: Discord's webhook message form"
    )
    webhook_url: str = Field(
        validation_alias=AliasChoices("webhook_url", "callback_url"),
        description="where to POST (SimpleTuner's raw form calls it callback_url); a secret: give it as "
        "${ENV_VAR}",
        json_schema_extra={"secret": True},
    )
    message_prefix: str | None = Field(None, description="Discord message prefix; default: the job name")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="send events at this severity or worse (failure: error, health warning: warning)"
    )
    auth_token: str | None = Field(
        None, description="sent as the X-API-Key header (SimpleTuner)", json_schema_extra={"secret": True}
    )
    ssl_no_verify: bool = Field(False, description="skip TLS certificate checks (self-signed receivers)")
    events: list[Literal[WEBHOOK_EVENTS]] | None = Field(
        None, description="only these event kinds; default all"
    )

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value == "<redacted>":
            raise ValueError(
                "this URL was redacted from a resolved config.yaml (secrets are never written there); "
                "give it again, e.g. as ${MY_WEBHOOK_URL}"
            )
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class LoggingConfig(Strict):
    log_every: int = Field(
        1, ge=1, description="steps between TensorBoard points (the metrics JSONL gets every step)"
    )
    tensorboard: bool = True
    verbose: bool = Field(False, description="Cadence's debug lines in the console and log.txt")
    use_wandb: bool = Field(False, description="log scalars, samples and events to Weights & Biases")
    project_name: str = Field("cadence", min_length=1, description="the W&B project")
    run_name: str | None = Field(None, description="the W&B run name; default: the job name")
    webhooks: list[WebhookConfig] = Field(
        default_factory=list, description="receivers of run events (SimpleTuner's webhook_config shape)"
    )

    @field_validator("webhooks", mode="before")
    @classmethod
    def _webhook_shapes(cls, value: Any) -> Any:
        """SimpleTuner's one entry or list of entries; a bare URL is a raw entry (Discord's own URLs are
        sent in Discord's form)."""
        if value is None:
            return []
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            if isinstance(item, str):
                discord = item.startswith(DISCORD_WEBHOOK_PREFIXES)
                item = {"webhook_type": "discord" if discord else "raw", "webhook_url": item}
            out.append(item)
        return out


# ------------------------------------------------------------------------------------------ parallel
def _value_at(section: Any, where: tuple[str | int, ...]) -> Any:
    """The configured value at a dotted location (for an error that shows what it got)."""
    for part in where:
        section = getattr(section, str(part), None)
    return section


class ParallelConfig(Strict):
    """How a run launched with several processes (torchrun, accelerate launch) splits its work
    (docs/distributed.md). In one process nothing here changes the run (a world of one)."""

    shard_base: bool = Field(
        False, description="FSDP2: shard each frozen transformer block over the ranks (adapters replicated)"
    )
    expert_parallel: bool = Field(
        False,
        description="Wan 2.2 A14B, both experts: half the ranks train high_noise, half low_noise, at once",
    )
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend; auto: nccl on CUDA GPUs, gloo on the CPU"
    )
    timeout_s: int = Field(
        1800, ge=30, description="seconds a training collective waits for a lost peer before the job fails"
    )


# ----------------------------------------------------------------------------------------------- job
# 255 (NAME_MAX) minus the 47 bytes the longest run file adds around the name (see JobConfig._safe_name)
MAX_NAME_BYTES = 208


class JobConfig(Strict):
    """One training process, resolved from either the seed layout or the flat layout."""

    name: str
    training_folder: Path = Path("output")
    device: str = "auto"
    trigger_word: str | None = None
    performance_log_every: int = Field(0, ge=0, description="steps between timing lines in the log; 0 = off")
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    save: SaveConfig = Field(default_factory=SaveConfig)
    datasets: list[DatasetConfig] = Field(default_factory=list)
    train: TrainConfig = Field(default_factory=TrainConfig)
    model: ModelConfig
    sample: SampleConfig = Field(default_factory=SampleConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\\0") or value in {".", ".."}:
            raise ValueError("name must be a plain file name (no slashes), e.g. my_motion_lora")
        if value.startswith("."):
            raise ValueError(
                f"name {value!r} starts with '.': the run folder and its files would be hidden (and the UI, "
                "file browsers and shell globs skip them); e.g. my_motion_lora"
            )
        if len(value.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(
                f"name is {len(value.encode('utf-8'))} bytes long; at most {MAX_NAME_BYTES} fit, because the "
                "longest file a run writes ('.{name}_000001000_high_noise.safetensors.XXXXXXXX.tmp' while saving) "
                "must stay within the filesystem's 255-byte name limit"
            )
        return value

    @model_validator(mode="after")
    def _run_folder_usable(self) -> JobConfig:
        """A training_folder (or run folder) that exists as a file would fail at the first write."""
        for where, path in (("training_folder", self.training_folder), ("name", self.run_dir)):
            if path.exists() and not path.is_dir():
                raise ValueError(
                    f"{where}: {path} is a file, not a folder; the run folder {self.run_dir} is created there. "
                    "Point training_folder at a folder (or remove the file)"
                )
        return self

    @model_validator(mode="after")
    def _parallel_combinations(self) -> JobConfig:
        """Settings `parallel` rules out, each refused at its own key (cadence.parallel.config_checks)."""
        from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

        from cadence.parallel.config_checks import parallel_conflicts

        errors = [
            InitErrorDetails(
                type=PydanticCustomError("parallel_conflict", "{problem}", {"problem": problem}),
                loc=where,
                input=_value_at(self, where),
            )
            for where, problem in parallel_conflicts(self)
        ]
        if errors:
            raise ValidationError.from_exception_data("JobConfig", errors)
        return self

    @model_validator(mode="after")
    def _resolve_do_i2v(self) -> JobConfig:
        """Unset do_i2v follows the arch (a value the arch cannot honour is refused in cross_checks)."""
        for ds in self.datasets:
            if ds.do_i2v is None:
                ds.do_i2v = _arch_spec(self.model.arch).i2v == "always"
        return self

    @model_validator(mode="after")
    def _sample_inputs(self) -> JobConfig:
        """With sampling on, every ctrl_img must open, and I2V-only archs need one per sample."""
        if self.train.disable_sampling:
            return self
        from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

        errors: list[InitErrorDetails] = []
        required = _arch_spec(self.model.arch).i2v == "always"
        n = len(self.sample.samples)
        for i, item in enumerate(self.sample.items):
            if item.ctrl_img is None and not required:
                continue
            problem = ctrl_img_problem(item.ctrl_img)
            if problem is None:
                continue
            loc = ("sample", "samples", i, "ctrl_img") if i < n else ("sample", "prompts", i - n)
            if i >= n:
                problem = (
                    "a plain prompt has no ctrl_img, but image-to-video models need one per sample; "
                    "write it as samples: [{prompt: ..., ctrl_img: FILE}]"
                )
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError("sample_ctrl_img", "{problem}", {"problem": problem}),
                    # a mapping as input: the message reads "missing", not "got 'None'"
                    loc=loc,
                    input=str(item.ctrl_img) if item.ctrl_img is not None else {"prompt": item.prompt},
                )
            )
        if errors:
            raise ValidationError.from_exception_data("JobConfig", errors)
        return self

    @property
    def run_dir(self) -> Path:
        return self.training_folder / self.name


def _arch_spec(arch: str):
    from cadence.models.registry import arch_spec

    return arch_spec(arch)


def __getattr__(name: str) -> frozenset[str]:
    """SINGLE_EXPERT_ARCHS / I2V_ONLY_ARCHS / T2V_ONLY_ARCHS, from the registered families' arch specs."""
    if name not in _ARCH_SETS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from cadence.models.registry import arch_names, arch_spec

    return frozenset(a for a in arch_names() if _ARCH_SETS[name](arch_spec(a)))
