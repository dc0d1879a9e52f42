"""ai-toolkit keys that belong to other model families or to experiments Cadence does not run.

ai-toolkit's `toolkit/config_modules.py` reads these for every job, whatever the model: SD/SDXL/Flux/PixArt
switches, refiners, turbo and slider training, loss experiments, audio. A Wan job written for ai-toolkit can
carry any of them at its default, so each is accepted at the value that is off (the value that changes
nothing in ai-toolkit either) and refused otherwise with the reason and what Cadence does instead. Keys of
features Cadence plans or that matter for Wan stay in `unsupported.py`; `unsupported.check_unsupported` reads
both lists, and docs/config.md shows this one as its own table.
"""

from __future__ import annotations

from cadence.config.unsupported import Accepts, Unsupported

U = Unsupported
_ANY = Accepts(lambda v: True, "any")
_BOOL = Accepts(lambda v: isinstance(v, bool), "`true` or `false`")

_FAMILY = (
    "an older way to name a model family Cadence does not train (it trains Wan, FLUX.1, Qwen-Image and Z-Image; "
    "is_flux: true names FLUX.1): set model.arch"
)
_SDXL_TE = "SDXL's two text encoders; Wan has one (umT5)"
_REFINER = (
    "SDXL refiners; Wan 2.2 A14B's two experts are model.model_kwargs.train_high_noise / train_low_noise"
)
_NO_CFG = "CFG during training is not implemented (train.do_cfg)"
_LOSS_XP = "this loss experiment is not implemented; the loss is flow-matching MSE on the velocity"
_NOISE_XP = "this noise change is not implemented; noise is plain N(0, 1)"
_AUDIO = "audio is not trained (datasets[].do_audio)"
_CLIP_IMG = "CLIP reference images (IP adapters) are not trained; Wan 2.1 I2V's CLIP input is the first frame"


def _only_with(key: str) -> str:
    return f"only used with {key} (refused unless off)"


OTHER: list[Unsupported] = [
    # ---------------------------------------------------------------- process level
    U(
        "first_sample",
        "a separate first-sample section is not implemented; the baseline sample uses sample",
        None,
    ),
    U("lorm_extract_mode", _only_with("do_lorm"), accepts=_ANY),
    U("lorm_extract_mode_param", _only_with("do_lorm"), accepts=_ANY),
    # ---------------------------------------------------------------- network.network_kwargs (LoRASpecialNetwork)
    U(
        "network.network_kwargs.block_dims",
        "per-block ranks are not implemented; network.linear sets one rank",
        None,
    ),
    U(
        "network.network_kwargs.block_alphas",
        "per-block alphas are not implemented; network.linear_alpha (or alpha phases) sets the alpha",
        None,
    ),
    U(
        "network.network_kwargs.conv_block_dims",
        "per-block conv ranks are not implemented; use network.conv",
        None,
    ),
    U("network.network_kwargs.conv_block_alphas", "per-block conv alphas are not implemented", None),
    U(
        "network.network_kwargs.modules_dim",
        "per-module ranks are not implemented; network.linear sets one rank",
        None,
    ),
    U("network.network_kwargs.modules_alpha", "per-module alphas are not implemented", None),
    U("network.network_kwargs.varbose", "use logging.verbose (or cadence -v)", accepts=_BOOL),
    U(
        "network.network_kwargs.full_if_contains",
        "full-weight (non-LoRA) modules are not trained; Cadence trains adapters only",
        None,
    ),
    U(
        "network.network_kwargs.parameter_threshold",
        "LoRM's size threshold; choose modules with only_if_contains / ignore_if_contains",
        0.0,
    ),
    U(
        "network.network_kwargs.attn_only",
        "use include_patterns/exclude_patterns (e.g. exclude_patterns: ['.*'], include_patterns: ['.*attn.*'])",
        False,
    ),
    U(
        "network.network_kwargs.target_lin_modules",
        "the targeted module classes come from the model; filter them with only_if_contains / include_patterns",
        None,
    ),
    U(
        "network.network_kwargs.target_conv_modules",
        "the targeted module classes come from the model; filter them with only_if_contains / include_patterns",
        None,
    ),
    U("network.network_kwargs.full_train_in_out", "full-weight in/out layers are not trained", False),
    U(
        "network.network_kwargs.peft_format",
        "the key layout is save.format (comfyui, or diffusers: the PEFT names)",
        False,
    ),
    # ---------------------------------------------------------------- train
    U("train.refiner_lr", _only_with("an SDXL refiner"), accepts=_ANY),
    U("train.embedding_lr", _only_with("embedding (textual inversion, refused)"), accepts=_ANY),
    U(
        "train.adapter_lr",
        _only_with("adapter (the process-level section, refused); the LoRA trains at train.lr"),
        accepts=_ANY,
    ),
    U("train.train_refiner", _only_with("an SDXL refiner"), accepts=_ANY),
    U("train.train_turbo", "turbo (adversarial distillation) training is not implemented", False),
    U("train.show_turbo_outputs", _only_with("train_turbo"), accepts=_ANY),
    U("train.learnable_snr_gos", "Wan uses flow matching; SNR-based loss scaling is for DDPM models", False),
    U("train.free_u", "FreeU is for UNet models; Wan is a transformer", False),
    U("train.adapter_assist_name_or_path", "assistant adapters are not implemented", None),
    U("train.adapter_assist_type", _only_with("adapter_assist_name_or_path"), accepts=_ANY),
    U("train.match_adapter_assist", _only_with("adapter_assist_name_or_path"), False),
    U("train.match_adapter_chance", _only_with("adapter_assist_name_or_path"), 0.0),
    U("train.target_noise_multiplier", _NOISE_XP, 1.0),
    U("train.random_noise_multiplier", _NOISE_XP, 0.0),
    U("train.do_signal_correction_noise", _NOISE_XP, False),
    U("train.signal_correction_noise_scale", _only_with("do_signal_correction_noise"), accepts=_ANY),
    U("train.do_batch_noise_correction", _NOISE_XP, False),
    U("train.batch_noise_correction_scale", _only_with("do_batch_noise_correction"), accepts=_ANY),
    U("train.do_signal_amplification", _NOISE_XP, False),
    U("train.signal_amplification_strength", _only_with("do_signal_amplification"), accepts=_ANY),
    U("train.blended_blur_noise", _NOISE_XP, False),
    U("train.noisy_latent_multiplier", "latent scaling is not implemented", 1.0),
    U("train.latent_multiplier", "latent scaling is not implemented", 1.0),
    U("train.negative_prompt", "negative training prompts are not implemented", None),
    U("train.max_negative_prompts", _only_with("negative_prompt"), accepts=_ANY),
    U(
        "train.num_train_timesteps",
        "Cadence samples continuous noise levels on the model's 1000-step timestep scale",
        1000,
    ),
    U(
        "train.adaptive_scaling_factor",
        "adaptive VAE scaling is not implemented; Wan's VAE normalizes latents with its own statistics",
        False,
    ),
    U("train.match_noise_norm", _LOSS_XP, False),
    U(
        "train.loss_target",
        "the flow-matching target is always the velocity noise - x0 (ai-toolkit's default 'noise')",
        "noise",
    ),
    U("train.inverted_mask_prior_multiplier", _only_with("inverted_mask_prior"), accepts=_ANY),
    U("train.blank_prompt_preservation_multiplier", _only_with("blank_prompt_preservation"), accepts=_ANY),
    U("train.short_and_long_captions_encoder_split", _only_with("short_and_long_captions"), accepts=_ANY),
    U("train.do_random_cfg", _NO_CFG, False),
    U("train.cfg_scale", _only_with("do_cfg / do_random_cfg"), accepts=_ANY),
    U("train.max_cfg_scale", _only_with("do_cfg / do_random_cfg"), accepts=_ANY),
    U("train.cfg_rescale", _only_with("do_cfg / do_random_cfg"), accepts=_ANY),
    U("train.correct_pred_norm", _LOSS_XP, False),
    U("train.correct_pred_norm_multiplier", _only_with("correct_pred_norm"), accepts=_ANY),
    U("train.t0_loss_target", _LOSS_XP, False),
    U("train.t0_velocity_equiv_weight", _only_with("t0_loss_target"), accepts=_ANY),
    U("train.do_fft_loss", _LOSS_XP, False),
    U("train.do_fft_velocity_equiv_weight", _only_with("do_fft_loss"), accepts=_ANY),
    U("train.pred_scaler", _LOSS_XP, 1.0),
    U("train.prompt_saturation_chance", "prompt repetition is not implemented", 0.0),
    U("train.target_norm_std", _LOSS_XP, None),
    U("train.target_norm_std_value", _only_with("target_norm_std"), accepts=_ANY),
    U("train.next_sample_timesteps", _only_with("timestep_type: next_sample"), accepts=_ANY),
    U("train.paramiter_swapping_factor", _only_with("do_paramiter_swapping"), accepts=_ANY),
    U("train.latent_feature_extractor_path", "feature-extractor losses are not implemented", None),
    U("train.latent_feature_loss_weight", _only_with("latent_feature_extractor_path"), accepts=_ANY),
    U("train.diffusion_feature_extractor_path", "feature-extractor losses are not implemented", None),
    U(
        "train.diffusion_feature_extractor_weight",
        _only_with("diffusion_feature_extractor_path"),
        accepts=_ANY,
    ),
    U("train.do_guidance_loss", "guidance losses are not implemented", False),
    U("train.guidance_loss_target", _only_with("do_guidance_loss"), accepts=_ANY),
    U("train.do_guidance_loss_cfg_zero", _only_with("do_guidance_loss"), accepts=_ANY),
    U("train.guidance_loss_schedule", _only_with("do_guidance_loss"), accepts=_ANY),
    U("train.unconditional_prompt", _only_with("do_guidance_loss / do_cfg"), accepts=_ANY),
    U("train.do_differential_guidance", "differential guidance is not implemented", False),
    U("train.differential_guidance_scale", _only_with("do_differential_guidance"), accepts=_ANY),
    U("train.do_blank_stabilization", "blank-prompt stabilization is not implemented", False),
    U("train.audio_loss_multiplier", _AUDIO, accepts=_ANY),
    U("train.max_loss_debug", _only_with("max_loss"), accepts=_ANY),
    U("train.merge_network_on_save_strength", _only_with("merge_network_on_save"), accepts=_ANY),
    # ---------------------------------------------------------------- model
    U("model.is_v2", _FAMILY, False),
    U("model.is_v3", _FAMILY, False),
    U("model.is_xl", _FAMILY, False),
    U("model.is_ssd", _FAMILY, False),
    U("model.is_vega", _FAMILY, False),
    U("model.is_pixart", _FAMILY, False),
    U("model.is_pixart_sigma", _FAMILY, False),
    U("model.is_auraflow", _FAMILY, False),
    U("model.is_lumina2", _FAMILY, False),
    U("model.is_v_pred", "v-prediction is for SD models; Wan predicts the flow-matching velocity", False),
    U(
        "model.use_flux_cfg",
        "ai-toolkit's FLUX CFG training (it bypasses the guidance embedding) is not implemented; leave it false",
        False,
    ),
    U("model.experimental_xl", "SDXL only", False),
    U("model.use_text_encoder_1", _SDXL_TE, True),
    U("model.use_text_encoder_2", _SDXL_TE, True),
    U("model.refiner_name_or_path", _REFINER, None),
    U("model.refiner_start_at", _REFINER, accepts=_ANY),
    U(
        "model.latent_space_version",
        "latent-space versions are for other VAEs; Wan's VAE comes with the model",
        None,
    ),
    U(
        "model.text_encoder_bits",
        "PixArt's text-encoder bit width; quantize the text encoder with model.quantize_te / qtype_te",
        16,
    ),
    U("model.unet_path", "the transformer is loaded from name_or_path", None),
    U("model.unet_sample_size", "SD UNets only", None),
    U("model.vae_device", "Cadence places the VAE itself (model.low_vram offloads it)", None),
    U("model.te_device", "Cadence places the text encoder itself (model.low_vram offloads it)", None),
    U(
        "model.vae_dtype",
        "the VAE always encodes in float32, as diffusers loads it for Wan",
        accepts=Accepts(lambda v: v in ("fp32", "float32"), "`fp32` or `float32`"),
    ),
    U("model.te_dtype", "the text encoder runs in train.dtype (set train.dtype)"),
    U(
        "model.only_if_contains",
        "ai-toolkit's full fine-tuning filter; LoRA modules are chosen with network.network_kwargs.only_if_contains",
        None,
    ),
    U(
        "model.ignore_if_contains",
        "ai-toolkit's full fine-tuning filter; LoRA modules are skipped with network.network_kwargs.ignore_if_contains",
        None,
    ),
    U(
        "model.quantize_kwargs",
        "quantizer options are not configurable; model.qtype chooses the quantizer",
        None,
    ),
    U(
        "model.split_model_other_module_param_count_scale",
        _only_with("split_model_over_gpus"),
        accepts=_ANY,
    ),
    U(
        "model.block_compile",
        _only_with("model.compile; Cadence's train.compile compiles per block"),
        accepts=_ANY,
    ),
    U("model.compile_mode", _only_with("model.compile"), accepts=_ANY),
    U("model.compile_fullgraph", _only_with("model.compile"), accepts=_ANY),
    U("model.compile_dynamic", _only_with("model.compile"), accepts=_ANY),
    U("model.cache_size_limit", "set train.compile_cache_size_limit", None),
    U("model.unconditional_lora_path", "unconditional-branch LoRAs are not implemented", None),
    U("model.in_context", "in-context (reference) training is not implemented", False),
    # ---------------------------------------------------------------- datasets
    U("datasets[].cache_latents_num_workers", "Cadence chooses its cache workers", accepts=_ANY),
    U("datasets[].prefetch_factor", "Cadence chooses data-loader settings", accepts=_ANY),
    U(
        "datasets[].cache_tensors_to_disk",
        "pixel tensors are not cached; latents are (cache_latents_to_disk)",
        False,
    ),
    U("datasets[].load_image_when_caching_latents", "Cadence decodes media only to encode latents", False),
    U("datasets[].fast_image_size", "Cadence reads every file's real size", False),
    U("datasets[].debug", "use logging.verbose (or cadence -v)", accepts=_BOOL),
    U("datasets[].standardize_images", "image standardization is not implemented", False),
    U("datasets[].shuffle_augmentations", _only_with("augmentations"), accepts=_ANY),
    U("datasets[].replay_transforms", _only_with("augmentations"), accepts=_ANY),
    U("datasets[].invert_mask", _only_with("mask_path"), accepts=_ANY),
    U("datasets[].unconditional_path", "unconditional reference images are not implemented", None),
    U("datasets[].clip_image_from_same_folder", _CLIP_IMG, False),
    U("datasets[].clip_image_augmentations", _CLIP_IMG, None),
    U("datasets[].clip_image_shuffle_augmentations", _CLIP_IMG, False),
    U("datasets[].use_short_captions", "JSON captions (caption_short) are not read", False),
    U("datasets[].replacements", "caption replacements are not implemented", None),
    U("datasets[].random_triggers_max", _only_with("random_triggers"), accepts=_ANY),
    U("datasets[].guidance_type", "guidance training is not implemented", "targeted"),
    U("datasets[].extra_values", "extra conditioning values are for other model families", None),
    U("datasets[].diff_output_preservation", "set from train.diff_output_preservation in ai-toolkit", False),
    U("datasets[].diff_output_preservation_class", _only_with("diff_output_preservation"), accepts=_ANY),
    U("datasets[].poi", "deprecated: ai-toolkit refuses it too", None),
    U("datasets[].trim_auto_frame_count_tail", _only_with("auto_frame_count"), accepts=_ANY),
    U("datasets[].audio_normalize", _AUDIO, False),
    U("datasets[].audio_preserve_pitch", _AUDIO, False),
    # ---------------------------------------------------------------- sample
    U("sample.extra_values", "extra conditioning values are for other model families", None),
    U("sample.do_cfg_norm", "CFG normalization is for Qwen image edit models", False),
    U("sample.samples[].do_cfg_norm", "CFG normalization is for Qwen image edit models", False),
    U(
        "sample.samples[].ctrl_idx",
        "the control-image index of multi-image models; Wan image-to-video takes one ctrl_img",
        0,
    ),
]
