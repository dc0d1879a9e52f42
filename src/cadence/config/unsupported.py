"""The one registry of seed-trainer settings that Cadence does not implement yet.

A user's ai-toolkit config must never have a setting silently ignored: each entry here is refused with
"not supported yet" and what to do. A setting left at the seed's inert default (e.g. `flip_x: false`,
`train_text_encoder: false`) changes nothing in the seed either, so it is accepted and dropped.
Entries on keys that Cadence's schema has (e.g. `model.quantize`) refuse only the listed values.
Later work that implements a feature deletes its entry (and adds the field to schema.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cadence.config.compat import Parts, iter_sections, section_model, split_pattern

_REFUSE_ANY = object()  # no value is inert: the key itself is refused


@dataclass(frozen=True)
class Unsupported:
    key: str  # pattern, e.g. "train.noise_offset" or "datasets[].flip_x"
    reason: str
    inert: Any = _REFUSE_ANY  # a value that is a no-op in the seed, accepted and dropped
    accepts: Accepts | None = field(default=None, compare=False)  # overrides `inert`
    source: str = "ai-toolkit"

    def allows(self, value: Any) -> bool:
        if self.accepts is not None:
            return self.accepts(value)
        if self.inert is _REFUSE_ANY:
            return False
        return _same(value, self.inert)

    @property
    def action(self) -> str:
        if self.inert is _REFUSE_ANY or self.accepts is not None:
            return "remove it"
        return f"remove it (or set it to {_show(self.inert)})"


def _same(value: Any, inert: Any) -> bool:
    if inert is None:
        return value is None or value == "" or value == [] or value == {}
    if isinstance(inert, bool) or isinstance(value, bool):
        return value is inert
    if isinstance(inert, int | float) and isinstance(value, int | float):
        return float(value) == float(inert)
    return bool(value == inert)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return repr(value)


@dataclass(frozen=True)
class Accepts:
    """Values of a key that the seed treats as off, with the words docs/config.md shows for them."""

    test: Callable[[Any], bool]
    text: str

    def __call__(self, value: Any) -> bool:
        return self.test(value)


def _not_in(*values: str) -> Accepts:
    refused = set(values)
    return Accepts(
        lambda v: not (isinstance(v, str) and v.lower() in refused), f"anything but {', '.join(values)}"
    )


def _one_of(*values: Any) -> Accepts:
    return Accepts(lambda v: v in values, " or ".join(f"`{_show(v)}`" for v in values))


_ANY = Accepts(lambda v: True, "any")
_BOOL = Accepts(lambda v: isinstance(v, bool), "`true` or `false`")
_FALSE = Accepts(lambda v: not v, "`false`")


U = Unsupported
_NO_AUG = "data augmentation is not implemented"
_NO_CTRL = "control/mask/reference inputs are not implemented"

REGISTRY: list[Unsupported] = [
    # ---------------------------------------------------------------- process level
    U(
        "sqlite_db_path",
        "the ai-toolkit UI's job database; Cadence's UI keeps its own",
        accepts=_ANY,
    ),
    U("log_dir", "TensorBoard logs always go to {run_dir}/tensorboard", None),
    U("embedding", "textual-inversion embeddings are not trained by Cadence", None),
    U("adapter", "IP/T2I/control adapters are not trained by Cadence", None),
    U("decorator", "decorator training is not implemented", None),
    U("guidance", "guidance training is not implemented", None),
    U("do_lorm", "LoRM is not implemented", False),
    U("torch_profiler", "use `python -m torch.utils.bottleneck` or a profiler outside Cadence", False),
    # ---------------------------------------------------------------- network
    U(
        "network.type",
        "LoRM (ai-toolkit's low-rank middle adapters) is not implemented; use lora, locon, lokr, loha or dora",
        accepts=_not_in("lorm"),
    ),
    U(
        "network.old_lokr_format",
        "ai-toolkit's pre-PEFT LoKr key names are not written; Cadence's LoKr files use the LyCORIS keys "
        "(lokr_w1, lokr_w2_a, ...) that ComfyUI reads, in the layout save.format names",
        False,
    ),
    U("network.lorm", "LoRM is not implemented", None),
    U("network.transformer_only", "Cadence trains transformer adapters only", True),
    U("network.split_multistage_loras", "Cadence always trains one adapter per expert", True),
    U(
        "network.layer_offloading",
        "unfinished in ai-toolkit ('doesn't work yet'); for memory use model.blocks_to_swap",
        False,
    ),
    U("network.all_layers", "only Linear/Conv layers get adapters", False),
    U("network.normalize", "weight normalization of adapters is not implemented", False),
    # ---------------------------------------------------------------- train
    U("train.noise_offset", "noise offset is not implemented (and rarely helps flow matching)", 0.0),
    U("train.dynamic_noise_offset", "noise offset is not implemented", False),
    U("train.min_snr_gamma", "Wan uses flow matching; min-SNR weighting is for DDPM", None),
    U("train.snr_gamma", "Wan uses flow matching; SNR weighting is for DDPM", None),
    U("train.train_text_encoder", "only the transformer is trained", False),
    U("train.train_unet", "the transformer is always trained", True),
    U("train.unet_lr", "ai-toolkit trains a LoRA at train.lr and ignores unet_lr; set train.lr", None),
    U("train.text_encoder_lr", "the text encoder is not trained; set train.lr", None),
    U(
        "train.content_or_style",
        "timestep biasing by content/style is not implemented; use timestep_type",
        "balanced",
    ),
    U("train.loss_type", "only the MSE flow-matching loss is implemented", "mse"),
    U(
        "train.timestep_type",
        "this timestep distribution is not implemented; use sigmoid, linear, weighted, shift, logit_normal or "
        "(image families) flux_shift",
        accepts=_not_in(
            "lognorm_blend",
            "next_sample",
            "one_step",
            "two_step",
            "four_step",
            "eight_step",
        ),
    ),
    U(
        "train.noise_scheduler",
        "Wan trains with flow matching only; use 'flowmatch'",
        accepts=_not_in("ddpm", "ddim", "euler", "euler_a", "lms", "pndm", "lcm"),
    ),
    U(
        "train.optimizer",
        "this optimizer is not implemented; use adamw, adamw8bit, prodigy, adamw_schedulefree or automagic",
        accepts=_not_in(
            "adam",
            "adam8",
            "adam8bit",
            "lion",
            "lion8bit",
            "adagrad",
            "adafactor",
            "ademamix8bit",
            "prodigy8bit",
            "dadaptation",
            "dadaptadam",
            "dadaptlion",
            "automagic2",
            "automagic3",
            "automagicexperiment",
        ),
    ),
    U(
        "train.xformers",
        "xformers is not used; choose the attention kernel with train.attention_backend (native, cudnn, flash, "
        "flash3)",
        False,
    ),
    U(
        "train.sdp",
        "attention runs through diffusers' dispatcher; train.attention_backend chooses it (native = PyTorch SDPA)",
        accepts=_BOOL,
    ),
    U("train.force_first_sample", "the baseline sample runs at step 0 only (not again on resume)", False),
    U("train.weight_jitter", "weight jitter is not implemented", 0.0),
    U("train.noise_multiplier", "noise scaling is not implemented", 1.0),
    U("train.img_multiplier", "latent scaling is not implemented", 1.0),
    U("train.random_noise_shift", "noise shifting is not implemented", 0.0),
    U("train.prompt_dropout_prob", "use datasets[].caption_dropout_rate", 0.0),
    U("train.short_and_long_captions", "JSON captions are not implemented", False),
    U("train.single_item_batching", "use train.gradient_accumulation", False),
    U("train.inverted_mask_prior", _NO_CTRL, False),
    U("train.diff_output_preservation", "output preservation is not implemented", False),
    U(
        "train.diff_output_preservation_multiplier",
        "only used with diff_output_preservation (refused)",
        accepts=_ANY,
    ),
    U(
        "train.diff_output_preservation_class",
        "only used with diff_output_preservation (refused)",
        accepts=_ANY,
    ),
    U(
        "train.bypass_guidance_embedding",
        "guidance-embedding bypass is for guidance-distilled models (Flux); Wan has no guidance embedding, so "
        "ai-toolkit ignores it on Wan (its UI writes true)",
        accepts=_BOOL,
    ),
    U("train.blank_prompt_preservation", "output preservation is not implemented", False),
    U("train.do_prior_divergence", "prior divergence is not implemented", False),
    U("train.do_cfg", "CFG training is not implemented", False),
    U("train.linear_timesteps", "use timestep_type", False),
    U("train.linear_timesteps2", "use timestep_type", False),
    U("train.standardize_images", "image standardization is not implemented", False),
    U("train.standardize_latents", "latent standardization is not implemented", False),
    U("train.start_step", "resume restores the step from the run folder", None),
    U("train.merge_network_on_save", "saving merged weights is not implemented", False),
    U(
        "train.max_loss",
        "loss clipping is not implemented; non-finite losses stop the run (train.max_nan_steps)",
        None,
    ),
    U("train.validation_config", "use a dataset with is_eval: true", None),
    U("train.do_paramiter_swapping", "parameter swapping is not implemented", False),
    U("train.optimal_noise_pairing_samples", "noise pairing is not implemented", 1),
    U("train.force_consistent_noise", "fixed per-item noise is not implemented", False),
    # ---------------------------------------------------------------- model
    U("model.inference_lora_path", "inference LoRAs are not implemented", None),
    U(
        "model.compile",
        "Cadence compiles each transformer block (ai-toolkit's compile + block_compile): set train.compile: true",
        False,
    ),
    U(
        "model.layer_offloading",
        "use model.blocks_to_swap (block weights stream in from host memory) or model.low_vram (the idle expert "
        "and the encoders wait on the CPU)",
        False,
    ),
    U(
        "model.layer_offloading_text_encoder_percent",
        "only used with layer_offloading (refused)",
        accepts=_ANY,
    ),
    U(
        "model.layer_offloading_transformer_percent",
        "only used with layer_offloading (refused)",
        accepts=_ANY,
    ),
    U("model.auto_memory", "deprecated in ai-toolkit for layer_offloading: use model.blocks_to_swap", False),
    U(
        "model.split_model_over_gpus",
        "placing layers on different GPUs is not implemented; under torchrun use parallel.shard_base (every "
        "block sharded over the GPUs, docs/distributed.md)",
        False,
    ),
    U("model.dtype", "the base model is loaded in train.dtype"),
    U("model.vae_path", "the VAE is loaded from name_or_path", None),
    U("model.te_name_or_path", "the text encoder is loaded from name_or_path", None),
    U("model.model_paths", "all components are loaded from name_or_path", None),
    U(
        "model.attn_masking",
        "masking FLUX's padded T5 tokens in attention is not implemented (FluxPipeline passes no mask either, so a "
        "LoRA trained with it would sample differently)",
        False,
    ),
    # ---------------------------------------------------------------- save
    U(
        "save.save_format",
        "LoRA files are always safetensors (the seed's 'diffusers' value only affects full "
        "fine-tunes; see save.format for the LoRA key layout)",
        accepts=_one_of("safetensors", "diffusers"),
    ),
    # ---------------------------------------------------------------- datasets
    U("datasets[].augments", _NO_AUG, None),
    U("datasets[].augmentations", _NO_AUG, None),
    U("datasets[].random_crop", _NO_AUG, False),
    U("datasets[].random_scale", _NO_AUG, False),
    U("datasets[].scale", _NO_AUG, 1.0),
    U("datasets[].square_crop", "buckets keep the aspect ratio", False),
    U("datasets[].random_triggers", "random triggers are not implemented", None),
    U("datasets[].trigger_word", "use the process-level trigger_word", None),
    U(
        "datasets[].control_path",
        "one control folder per dataset: Wan image-to-video takes one first-frame image per clip",
        accepts=Accepts(lambda v: not isinstance(v, list), "a single folder"),
    ),
    U("datasets[].control_path_1", "one control image per clip (control_path)", None),
    U("datasets[].control_path_2", "one control image per clip (control_path)", None),
    U("datasets[].control_path_3", "one control image per clip (control_path)", None),
    U(
        "datasets[].control_from_same_folder",
        "random controls from the media folder: use control_path",
        False,
    ),
    U("datasets[].num_controls_from_same_folder", "only used with control_from_same_folder", accepts=_ANY),
    U("datasets[].full_size_control_images", "control images are always fitted to the clip's bucket", True),
    U("datasets[].mask_path", _NO_CTRL, None),
    U("datasets[].mask_min_value", "only used with mask_path (refused)", accepts=_ANY),
    U("datasets[].alpha_mask", _NO_CTRL, False),
    U("datasets[].inpaint_path", _NO_CTRL, None),
    U("datasets[].clip_image_path", _NO_CTRL, None),
    U("datasets[].controls", _NO_CTRL, None),
    U(
        "datasets[].prior_reg",
        "prior regularisation (the base model's own prediction as the target) is not implemented; "
        "datasets[].is_reg trains regularisation sets on their own frames",
        False,
    ),
    U("datasets[].buckets", "Cadence always buckets by size", True),
    U("datasets[].bucket_tolerance", "bucket sizes follow the model's spatial multiple", 64),
    U("datasets[].auto_frame_count", "use num_frames", False),
    U("datasets[].do_audio", "audio is not trained", False),
    U("datasets[].cache_text_embeddings", "set train.cache_text_embeddings", False),
    U("datasets[].cache_clip_vision_to_disk", "CLIP vision caching is not implemented", False),
    U("datasets[].dataset_path", "use folder_path", None),
    U("datasets[].type", "only image/video folder datasets are implemented", "image"),
    U("datasets[].batch_size", "set train.batch_size", None),
    U("datasets[].num_workers", "Cadence chooses data-loader workers", 2),
    # ---------------------------------------------------------------- sample / logging
    U("sample.network_multiplier", "set network_multiplier per sample", 1),
    U("sample.guidance_rescale", "guidance rescale is not implemented", 0.0),
    U("sample.format", "sample file formats are chosen by Cadence", accepts=_one_of("jpg", "webp")),
    U("sample.refiner_start_at", "refiners are not implemented", 0.5),
    U("sample.adapter_conditioning_scale", "adapters are not implemented", 1.0),
    U("sample.samples[].ctrl_img_1", "use ctrl_img", None),
    U("sample.samples[].ctrl_img_2", "multiple control images are not implemented", None),
    U("sample.samples[].ctrl_img_3", "multiple control images are not implemented", None),
    U("logging.use_ui_logger", "the Cadence UI reads the run folder", accepts=_BOOL),
]


# rules that look at more than one key; each returns (path, message) issues
RULES: list[Callable[[dict[str, Any]], list[tuple[Parts, str]]]] = []


def _in_schema(section: str, key: str) -> bool:
    model = section_model([p for p in section.split(".") if p])
    return model is not None and key in model.model_fields


def message(entry: Unsupported, key: str, value: Any, in_schema: bool) -> str:
    what = f"'{key}: {_show(value)}' is valid for" if in_schema else f"'{key}' is a valid"
    noun = "" if in_schema else " key"
    # a refused value of a key Cadence has: the reason names what to use instead, "remove it" would not
    action = "pick a value Cadence implements (docs/config.md)" if in_schema else entry.action
    if in_schema and "use " in entry.reason:
        return f"{what} {entry.source}{noun} but not supported yet by Cadence: {entry.reason}"
    return f"{what} {entry.source}{noun} but not supported yet by Cadence: {entry.reason}; {action}"


def all_entries() -> list[Unsupported]:
    """This registry and the keys of other model families (`unsupported_other.OTHER`)."""
    from cadence.config.unsupported_other import OTHER  # imports this module's classes

    return [*REGISTRY, *OTHER]


def check_unsupported(body: dict[str, Any]) -> list[tuple[Parts, str]]:
    """Refuse unsupported seed keys/values in place (refused and inert keys are removed from `body`)."""
    issues: list[tuple[Parts, str]] = []
    for entry in all_entries():
        section, key = split_pattern(entry.key)
        in_schema = _in_schema(section, key)
        for node, parts in iter_sections(body, section):
            if key not in node:
                continue
            value = node[key]
            if entry.allows(value):
                if not in_schema:
                    node.pop(key)
                continue
            issues.append(((*parts, key), message(entry, key, value, in_schema)))
            node.pop(key)
    for rule in RULES:
        issues.extend(rule(body))
    return issues


def registry_markdown(entries: list[Unsupported] | None = None) -> str:
    """A registry as a Markdown table (docs/config.md embeds REGISTRY's and OTHER's; a test keeps them in
    sync)."""
    rows = ["| key | accepted as a no-op | why not yet |", "|---|---|---|"]
    for entry in REGISTRY if entries is None else entries:
        if entry.accepts is not None:
            inert = entry.accepts.text
        elif entry.inert is _REFUSE_ANY:
            inert = "—"
        else:
            inert = f"`{_show(entry.inert)}`"
        source = "" if entry.source == "ai-toolkit" else f" ({entry.source})"
        rows.append(f"| `{entry.key}`{source} | {inert} | {entry.reason} |")
    return "\n".join(rows)
