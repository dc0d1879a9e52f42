"""Typos, wrong types/ranges, seed synonyms and refusals, all reported at once with the user's paths."""

from __future__ import annotations

import pytest
import yaml

from cadence.config import ConfigError, load_config_dict
from cadence.config.unsupported import REGISTRY


def issues_of(data) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load_config_dict(data)
    return dict(err.value.issues)


def test_typo_suggests_closest_key(make_flat):
    issues = issues_of(make_flat(train={"lrr": 1e-4, "disable_sampling": True}))
    assert issues == {"train.lrr": "unknown key 'lrr' at train.lrr; did you mean 'lr'?"}


def test_typo_paths_follow_seed_layout(make_flat, make_seed):
    data = make_seed(make_flat(datasets=[{"folder_pth": "/x"}]))
    issues = issues_of(data)
    key = "config.process[0].datasets[0].folder_pth"
    assert "did you mean 'folder_path'?" in issues[key]
    assert "required key 'folder_path' is missing" in issues["config.process[0].datasets[0].folder_path"]


def test_typo_inside_alpha_phase_and_synonym_suggestion(make_flat):
    schedule = {"enabled": True, "conv_alpha_phases": {"foundation": {"alhpa": 8}}}
    issues = issues_of(
        make_flat(
            network={"alpha_schedule": schedule},
            train={"gradient_acumulation_steps": 2, "disable_sampling": True},
        )
    )
    assert "did you mean 'alpha'?" in issues["network.alpha_schedule.conv_alpha_phases.foundation.alhpa"]
    assert "did you mean 'gradient_accumulation_steps'?" in issues["train.gradient_acumulation_steps"]


def test_unknown_key_without_close_match_lists_valid_keys(make_flat):
    issues = issues_of(make_flat(logging={"zzz": 1}))
    valid = "log_every, project_name, run_name, tensorboard, use_wandb, verbose, webhooks"
    assert f"valid keys here: {valid}" in issues["logging.zzz"]


def test_wrong_types_and_ranges_report_value_and_allowed(make_flat):
    data = make_flat(
        train={"lr": "fast", "steps": 0, "batch_size": 1.5, "disable_sampling": True, "optimizer": "sgd"},
        datasets=[{"folder_path": "/x", "num_frames": 32, "caption_dropout_rate": 2, "resolution": "big"}],
        model={"name_or_path": "m", "arch": "sdxl"},
        network={"linear": 16, "linear_alpha": 0},
    )
    issues = issues_of(data)
    assert issues["train.lr"] == "got 'fast'; expected a number"
    assert issues["train.steps"] == "got 0; must be >= 1"
    assert issues["train.batch_size"] == "got 1.5; expected a whole number"
    assert "got 'sgd'; allowed values: 'adamw'" in issues["train.optimizer"]
    assert "try 29 or 33" in issues["datasets[0].num_frames"]
    assert issues["datasets[0].caption_dropout_rate"] == "got 2; must be <= 1"
    assert "arch 'sdxl' is not a model Cadence trains; use one of wan21" in issues["model.arch"]
    assert issues["network.linear_alpha"] == "got 0; must be > 0"
    assert "datasets[0].resolution" in issues
    assert len(issues) == 9  # every problem at once


def test_str_is_a_readable_multiline_report(make_flat):
    with pytest.raises(ConfigError) as err:
        load_config_dict(make_flat(train={"lr": -1, "steps": -1, "disable_sampling": True}))
    lines = str(err.value).splitlines()
    assert lines[0] == "2 problems in the config:"
    assert lines[1:] == ["  - train.steps: got -1; must be >= 1", "  - train.lr: got -1; must be > 0"]


def test_seed_synonyms_are_renamed(make_flat):
    cfg = load_config_dict(
        make_flat(
            network={"rank": 32, "alpha": 8},
            train={"gradient_accumulation_steps": 4, "skip_first_sample": True, "disable_sampling": True},
            save={"save_dtype": "bf16"},
            datasets=[{"folder_path": "/x", "caption_type": ".cap"}],
            training_seed=7,
        )
    )
    assert (cfg.network.linear, cfg.network.linear_alpha) == (32, 8)
    assert cfg.train.gradient_accumulation == 4 and cfg.sample.skip_first_sample is True
    assert cfg.save.dtype == "bf16" and cfg.datasets[0].caption_ext == "cap" and cfg.train.seed == 7


def test_errors_on_synonyms_name_the_key_the_user_wrote(make_flat, make_seed):
    issues = issues_of(
        make_seed(make_flat(train={"gradient_accumulation_steps": 0, "disable_sampling": True}))
    )
    assert issues == {"config.process[0].train.gradient_accumulation_steps": "got 0; must be >= 1"}


def test_conflicting_synonyms_refused(make_flat):
    issues = issues_of(make_flat(network={"rank": 8, "linear": 16}))
    assert "keep only 'linear'" in issues["network.rank"]
    # equal values are fine
    assert load_config_dict(make_flat(network={"rank": 8, "linear": 8})).network.linear == 8


def test_optimizer_names_case_insensitive(make_flat):
    cfg = load_config_dict(make_flat(train={"optimizer": "AdamW8", "disable_sampling": True}))
    assert cfg.train.optimizer == "adamw8bit"


@pytest.mark.parametrize(
    ("section", "key", "value", "reason"),
    [
        ("train", "min_snr_gamma", 5, "Wan uses flow matching; min-SNR weighting is for DDPM"),
        ("train", "noise_offset", 0.1, "noise offset"),
        ("train", "do_cfg", True, "CFG training"),
        ("train", "train_text_encoder", True, "only the transformer"),
        ("train", "content_or_style", "style", "timestep biasing"),
        ("model", "inference_lora_path", "ostris/adapter", "inference LoRAs"),
    ],
)
def test_unsupported_keys_refused(make_flat, section, key, value, reason):
    data = make_flat(**{section: {key: value}})
    data["train"]["disable_sampling"] = True
    issues = issues_of(data)
    message = issues[f"{section}.{key}"]
    assert f"'{key}' is a valid" in message and "but not supported yet by Cadence" in message
    assert reason in message


@pytest.mark.parametrize("key", ["random_crop", "random_scale", "square_crop", "control_path_1"])
def test_unsupported_dataset_keys_refused(make_flat, key):
    value = "/ctrl" if key == "control_path_1" else True
    issues = issues_of(make_flat(datasets=[{"folder_path": "/x"}, {"folder_path": "/y", key: value}]))
    assert list(issues) == [f"datasets[1].{key}"]
    assert "not supported yet by Cadence" in issues[f"datasets[1].{key}"]


def test_prior_reg_refused_in_seed_layout(make_flat, make_seed):
    issues = issues_of(make_seed(make_flat(datasets=[{"folder_path": "/x", "prior_reg": True}])))
    assert "config.process[0].datasets[0].prior_reg" in issues


@pytest.mark.parametrize("kind", ["lokr", "loha", "locon", "LoKr", "dora"])
def test_lycoris_types_accepted(make_flat, kind):
    assert load_config_dict(make_flat(network={"type": kind})).network.type == kind.lower()


def test_lorm_refused_with_registry_message(make_flat):
    message = issues_of(make_flat(network={"type": "lorm"}))["network.type"]
    assert message.startswith("'type: lorm' is valid for ai-toolkit but not supported yet by Cadence")


def test_quantize_qtypes_and_recovery_adapter_form(make_flat):
    model = {
        "name_or_path": "m",
        "arch": "wan21",
        "quantize": True,
        "qtype": "FP8",
        "qtype_te": "qint8",
        "quantize_te": True,
    }
    cfg = load_config_dict(make_flat(model=model))
    assert cfg.model.quantize is True and cfg.model.qtype == "fp8" and cfg.model.qtype_te == "qint8"
    for qtype in ("uint4", "int8"):
        assert load_config_dict(make_flat(model={**model, "qtype": qtype})).model.qtype_name == qtype
    ara = load_config_dict(
        make_flat(model={**model, "qtype": "UINT4 | ostris/ara/wan_uint4.safetensors"})
    ).model
    assert ara.qtype_name == "uint4" and ara.recovery_adapter == "ostris/ara/wan_uint4.safetensors"
    assert "not supported yet" in issues_of(make_flat(model={**model, "qtype": "uint3"}))["model.qtype"]
    assert (
        "only defined for uint4"
        in issues_of(make_flat(model={**model, "qtype": "fp8|a.safetensors"}))["model.qtype"]
    )
    assert "name the adapter file" in issues_of(make_flat(model={**model, "qtype": "uint4|"}))["model.qtype"]
    assert "unknown qtype" in issues_of(make_flat(model={**model, "qtype": "nf4"}))["model.qtype"]
    te = issues_of(make_flat(model={**model, "qtype_te": "uint4|a.safetensors"}))
    assert "transformer only" in " ".join(te.values())
    swap = issues_of(make_flat(model={**model, "qtype": "int8", "blocks_to_swap": 2}))
    assert "cannot stream torchao int8" in " ".join(swap.values())
    # ai-toolkit's other spelling
    split = {**model, "qtype": "uint4", "accuracy_recovery_adapter": "ostris/ara/wan_uint4.safetensors"}
    assert (
        load_config_dict(make_flat(model=split)).model.recovery_adapter == "ostris/ara/wan_uint4.safetensors"
    )
    clash = issues_of(make_flat(model={**split, "qtype": "uint4|other.safetensors"}))
    assert "give it once" in " ".join(clash.values())
    same = {
        **split,
        "qtype": "uint4|ostris/ara/wan_uint4.safetensors",
        "accuracy_recovery_adapter": " ostris/ara/wan_uint4.safetensors",
    }
    assert (
        load_config_dict(make_flat(model=same)).model.recovery_adapter == "ostris/ara/wan_uint4.safetensors"
    )
    for bad, needle in ((False, "expected a file path"), ([1], "expected a file path")):
        assert needle in " ".join(
            issues_of(make_flat(model={**split, "accuracy_recovery_adapter": bad})).values()
        )
    no_qtype = {k: v for k, v in split.items() if k != "qtype"}
    assert "needs model.qtype: uint4" in " ".join(
        issues_of(make_flat(model={**no_qtype, "qtype": None})).values()
    )
    off = issues_of(make_flat(model={**split, "quantize": False}))
    assert "model.quantize is false" in " ".join(off.values())


def test_recovery_adapter_beside_the_config_is_found_there(tmp_path, monkeypatch):
    from cadence.config.loader import load_config

    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "ara.safetensors").write_bytes(b"")
    model = {"name_or_path": "m", "arch": "wan21", "quantize": True}
    for key in (
        {"qtype": "uint4|ara.safetensors"},
        {"qtype": "uint4", "accuracy_recovery_adapter": "ara.safetensors"},
    ):
        body = {"name": "j", "datasets": [{"folder_path": "data"}], "model": {**model, **key}}
        (folder / "job.yaml").write_text(yaml.safe_dump(body))
        monkeypatch.chdir(tmp_path)  # not the config's folder
        assert load_config(folder / "job.yaml").model.recovery_adapter == str(folder / "ara.safetensors")
    hub = {
        "name": "j",
        "datasets": [{"folder_path": "data"}],
        "model": {**model, "qtype": "uint4|o/r/f.safetensors"},
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(hub))
    assert load_config(folder / "job.yaml").model.recovery_adapter == "o/r/f.safetensors"


def test_incompatible_train_options_refused_at_load(make_flat):
    det = issues_of(make_flat(train={"deterministic": True, "attention_backend": "cudnn"}))
    assert "no deterministic cuDNN attention" in " ".join(det.values())
    off = issues_of(
        make_flat(train={"gradient_checkpointing": False, "gradient_checkpointing_offload": True})
    )
    assert "needs train.gradient_checkpointing" in " ".join(off.values())
    keep = {"gradient_checkpointing_keep_attention": True}
    assert "needs train.gradient_checkpointing" in " ".join(
        issues_of(make_flat(train={**keep, "gradient_checkpointing": False})).values()
    )
    assert "not with flash-attn" in " ".join(
        issues_of(make_flat(train={**keep, "attention_backend": "flash"})).values()
    )
    assert "block count K >= 1" in " ".join(
        issues_of(make_flat(train={"gradient_checkpointing_keep_attention": 0})).values()
    )
    counted = load_config_dict(make_flat(train={"gradient_checkpointing_keep_attention": 12}))
    assert counted.train.gradient_checkpointing_keep_attention == 12


def test_performance_keys_validated(make_flat):
    train = {
        "attention_backend": "flash",
        "compile": True,
        "gradient_checkpointing": 2,
        "adapter_dtype": "bf16",
        "optimizer": "automagic",  # bf16 adapters need its stochastic rounding
    }
    cfg = load_config_dict(make_flat(train=train, model={"name_or_path": "m", "arch": "wan21"}))
    assert cfg.train.gradient_checkpointing == 2 and cfg.train.compile is True
    assert cfg.train.attention_backend == "flash"
    swap = load_config_dict(make_flat(model={"name_or_path": "m", "arch": "wan21", "blocks_to_swap": 20}))
    assert swap.model.blocks_to_swap == 20
    assert (
        load_config_dict(make_flat(train={"gradient_checkpointing": True})).train.gradient_checkpointing
        is True
    )
    assert (
        "no backward pass"
        in issues_of(make_flat(train={"attention_backend": "sage"}))["train.attention_backend"]
    )
    assert (
        "N >= 1" in issues_of(make_flat(train={"gradient_checkpointing": 0}))["train.gradient_checkpointing"]
    )


def test_deterministic_is_a_bool_defaulting_to_false(make_flat):
    assert load_config_dict(make_flat()).train.deterministic is False
    assert load_config_dict(make_flat(train={"deterministic": True})).train.deterministic is True
    for value in ("sometimes", 2, [True]):
        issues = issues_of(make_flat(train={"deterministic": value}))
        assert list(issues) == ["train.deterministic"], issues
    assert issues_of(make_flat(train={"deterministic": "sometimes"})) == {
        "train.deterministic": "got 'sometimes'; expected true or false"
    }


def test_inert_seed_values_accepted(make_flat):
    cfg = load_config_dict(
        make_flat(
            train={
                "train_unet": True,
                "train_text_encoder": False,
                "noise_offset": 0,
                "disable_sampling": True,
                "ema_config": {"use_ema": False},
            },
            datasets=[{"folder_path": "/x", "flip_x": False, "shuffle_tokens": False, "control_path": ""}],
            save={"push_to_hub": False},
            logging={"use_wandb": False},
            performance_log_every=0,
        )
    )
    assert cfg.name == "t"


def test_sampling_section_validated(make_flat, caplog):
    data = make_flat(
        model={"name_or_path": "m", "arch": "wan22_14b"},
        sample={"prompts": ["a cat"]},
        train={"disable_sampling": False},
    )
    assert load_config_dict(data).sample.prompts == ["a cat"]
    data["sample"]["sample_steps"] = 0
    assert "sample.sample_steps" in issues_of(data)
    data["sample"]["sample_steps"] = 2
    data["sample"]["samples"] = [{"prompt": "a dog", "num_frames": 42}]
    for frames, rounded in ((40, 41), (8, 9), (44, 45), (43, 41), (2, 1)):
        data["sample"]["num_frames"] = frames
        caplog.clear()
        cfg = load_config_dict(data)
        assert cfg.sample.num_frames == rounded  # n // 4 * 4 + 1, as diffusers' Wan pipelines round
        assert f"sample.num_frames: {frames} frames is not of the form 4k+1" in caplog.text
        assert cfg.sample.samples[0].num_frames == 41 and "sample.samples[].num_frames: 42" in caplog.text


def test_i2v_sampling_needs_readable_ctrl_img(tmp_path, make_flat):
    good = tmp_path / "first.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(good)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    samples = [
        {"prompt": "ok", "ctrl_img": str(good)},
        {"prompt": "no image"},
        {"prompt": "gone", "ctrl_img": str(tmp_path / "gone.png")},
        {"prompt": "b", "ctrl_img": str(bad)},
    ]
    data = make_flat(sample={"samples": samples, "prompts": ["plain"]}, train={"disable_sampling": False})
    issues = issues_of(data)
    assert set(issues) == {
        "sample.samples[1].ctrl_img",
        "sample.samples[2].ctrl_img",
        "sample.samples[3].ctrl_img",
        "sample.prompts[0]",
    }
    assert "missing" in issues["sample.samples[1].ctrl_img"]
    assert str(tmp_path / "gone.png") in issues["sample.samples[2].ctrl_img"]
    assert "not a readable image" in issues["sample.samples[3].ctrl_img"]
    # with sampling off nothing is opened; a T2V arch needs no ctrl_img
    data["train"]["disable_sampling"] = True
    assert len(load_config_dict(data).sample.samples) == 4
    t2v = make_flat(
        model={"name_or_path": "m", "arch": "wan22_14b"},
        train={"disable_sampling": False},
        sample={"samples": [{"prompt": "x"}]},
    )
    assert load_config_dict(t2v).sample.samples[0].ctrl_img is None


def test_real_seed_wan22_config_refusals(make_seed):
    """The seed's published Wan 2.2 example: inert keys pass, active unsupported features are refused."""
    text = """
job: extension
config:
  name: "my_first_wan22_14b_lora_v1"
  process:
    - type: 'sd_trainer'
      training_folder: "output"
      device: cuda:0
      network: {type: "lora", linear: 32, linear_alpha: 32}
      save: {dtype: float16, save_every: 250, max_step_saves_to_keep: 4}
      datasets:
        - folder_path: "/path/to/images/or/video/folder"
          caption_ext: "txt"
          caption_dropout_rate: 0.05
          num_frames: 1
          resolution: [ 512, 768, 1024]
      train:
        batch_size: 1
        steps: 2000
        gradient_accumulation: 1
        train_unet: true
        train_text_encoder: false
        gradient_checkpointing: true
        noise_scheduler: "flowmatch"
        timestep_type: 'linear'
        optimizer: "adamw8bit"
        lr: 1e-4
        optimizer_params: {weight_decay: 1e-4}
        dtype: bf16
        switch_boundary_every: 10
        cache_text_embeddings: true
      model:
        name_or_path: "ai-toolkit/Wan2.2-T2V-A14B-Diffusers-bf16"
        arch: 'wan22_14b'
        quantize: true
        qtype: "uint4|ostris/accuracy_recovery_adapters/wan22_14b_t2i_torchao_uint4.safetensors"
        quantize_te: true
        qtype_te: "qfloat8"
        low_vram: true
        model_kwargs: {train_high_noise: true, train_low_noise: true}
      sample:
        sampler: "flowmatch"
        sample_every: 250
        width: 1024
        height: 1024
        num_frames: 1
        fps: 16
        prompts: ["woman with red hair, playing chess at the park"]
        neg: ""
        seed: 42
        walk_seed: true
        guidance_scale: 3.5
        sample_steps: 25
meta: {name: "[name]", version: '1.0'}
"""
    data = yaml.safe_load(text)
    assert load_config_dict(data).model.recovery_adapter == (
        "ostris/accuracy_recovery_adapters/wan22_14b_t2i_torchao_uint4.safetensors"
    )
    proc = data["config"]["process"][0]
    proc["model"].update(qtype="fp8")
    proc["train"]["disable_sampling"] = True
    cfg = load_config_dict(data)
    assert cfg.datasets[0].resolution == [512, 768, 1024] and cfg.datasets[0].do_i2v is False


def test_do_i2v_follows_arch_and_refuses_contradictions(make_flat):
    assert load_config_dict(make_flat()).datasets[0].do_i2v is True  # wan22_14b_i2v
    t2v = make_flat(model={"name_or_path": "m", "arch": "wan22_14b"})
    assert load_config_dict(t2v).datasets[0].do_i2v is False
    t2v["datasets"][0]["do_i2v"] = True
    assert "text-to-video only" in str(issues_of(t2v))
    i2v = make_flat(datasets=[{"folder_path": "/x", "do_i2v": False}])
    assert "image-to-video only" in str(issues_of(i2v))
    ti2v = make_flat(model={"name_or_path": "m", "arch": "wan22_5b"}, datasets=[{"folder_path": "/x"}])
    assert load_config_dict(ti2v).datasets[0].do_i2v is False


def test_registry_entries_are_well_formed():
    keys = [e.key for e in REGISTRY]
    assert len(keys) == len(set(keys))
    assert all(e.reason and e.key for e in REGISTRY)


def test_expert_settings_on_a_single_transformer_arch_are_refused():
    from cadence.config.errors import ConfigError
    from cadence.config.loader import load_config_dict

    data = {
        "name": "x",
        "model": {
            "name_or_path": "m",
            "arch": "wan21",
            "model_kwargs": {"train_low_noise": False, "boundary_ratio": 0.8},
        },
    }
    try:
        load_config_dict(data)
    except ConfigError as error:
        issues = dict(error.issues)  # each at its own key
        assert set(issues) == {"model.model_kwargs.train_low_noise", "model.model_kwargs.boundary_ratio"}
        assert all("single transformer" in message for message in issues.values())
    else:
        raise AssertionError("expected a ConfigError")


def test_other_trainers_key_names_point_to_cadences_setting(make_flat):
    issues = issues_of(
        make_flat(train={"disable_sampling": True, "learning_rate": 1e-4, "max_train_steps": 10})
    )
    assert "Cadence's setting is train.lr" in issues["train.learning_rate"]
    assert "Cadence's setting is train.steps" in issues["train.max_train_steps"]
    value = issues_of(make_flat(train={"disable_sampling": True, "optimizer": "adam"}))["train.optimizer"]
    assert "use adamw" in value and "remove it" not in value  # removing it would silently train with adamw
