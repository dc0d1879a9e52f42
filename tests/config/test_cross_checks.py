"""Cross-key rules fire when the config is loaded (validate, train, UI), each at the key the user wrote."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from tests.config.conftest import flat, seed

from cadence.config import ConfigError, load_config_dict

LATE = flat(
    network={"network_kwargs": {"include_patterns": ["[bad"]}, "alpha_schedule": {"enabled": True}},
    train={
        "disable_sampling": True,
        "optimizer_params": {"weight_decy": 0.01},
        "lr_scheduler": "cosine",
        "lr_scheduler_params": {"foo": 1},
        "eval_every": 100,
        "compile": True,
    },
    model={"name_or_path": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "arch": "wan22_14b_i2v", "blocks_to_swap": 4},
    device="gpu",
)


def _issues(data) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        load_config_dict(data)
    return dict(err.value.issues)


def test_every_cross_key_problem_is_reported_at_load_with_its_key():
    issues = _issues(LATE)
    assert set(issues) == {
        "train.optimizer_params.weight_decy",
        "train.lr_scheduler_params.foo",
        "train.eval_every",
        "network.network_kwargs.include_patterns",
        "network.alpha_schedule",
        "model.blocks_to_swap",
        "device",
    }
    assert "did you mean 'weight_decay'?" in issues["train.optimizer_params.weight_decy"]
    assert "invalid regex '[bad'" in issues["network.network_kwargs.include_patterns"]
    assert "no phases" in issues["network.alpha_schedule"]
    assert "train.compile" in issues["model.blocks_to_swap"]
    assert "is_eval" in issues["train.eval_every"]
    assert "cuda:N" in issues["device"]


def test_paths_follow_the_seed_layout():
    issues = _issues(seed(flat(train={"disable_sampling": True, "optimizer_params": {"betas": [0.9]}})))
    assert list(issues) == ["config.process[0].train.optimizer_params.betas"]


def test_automagic_schedule_and_single_expert_keys():
    automagic = _issues(
        flat(train={"disable_sampling": True, "optimizer": "automagic", "lr_warmup_steps": 10})
    )
    assert list(automagic) == ["train.lr_warmup_steps"]
    single = _issues(
        flat(
            model={"name_or_path": "m", "arch": "wan22_5b"},
            train={"disable_sampling": True, "switch_boundary_every": 100},
            sample={"guidance_scale_2": 3.0},
        )
    )
    assert set(single) == {"train.switch_boundary_every", "sample.guidance_scale_2"}
    assert "single transformer" in single["sample.guidance_scale_2"]


def test_valid_cross_keys_load():
    cfg = load_config_dict(
        flat(
            train={"disable_sampling": True, "eval_every": 10, "eval_split": 0.1, "lr_scheduler": "cosine"},
            network={"alpha_schedule": {"enabled": True, "preset": "video"}},
            device="cuda:1",
        )
    )
    assert cfg.train.eval_every == 10 and cfg.device == "cuda:1"


def test_validate_command_refuses_before_any_model_load(tmp_path):
    path = tmp_path / "late.yaml"
    path.write_text(yaml.safe_dump(LATE))
    done = subprocess.run(
        [sys.executable, "-m", "cadence.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert str(path) in done.stderr and "train.optimizer_params.weight_decy" in done.stderr


def test_arch_mismatches_are_reported_at_their_key():
    issues = _issues(
        flat(
            model={"name_or_path": "m", "arch": "wan22_14b"},
            datasets=[{"folder_path": "/d"}, {"folder_path": "/e", "do_i2v": True}],
        )
    )
    assert list(issues) == ["datasets[1].do_i2v"] and "text-to-video only" in issues["datasets[1].do_i2v"]
    both_off = {"train_high_noise": False, "train_low_noise": False}
    issues = _issues(flat(model={"name_or_path": "m", "arch": "wan22_14b_i2v", "model_kwargs": both_off}))
    assert "nothing to train" in issues["model.model_kwargs"]


def test_settings_that_would_silently_not_train_as_asked():
    issues = _issues(flat(train={"disable_sampling": True, "adapter_dtype": "bf16"}))
    assert "lose every update smaller than half their bf16 spacing" in issues["train.adapter_dtype"]
    loraplus = {"network_kwargs": {"loraplus_lr_ratio": 16}}
    issues = _issues(flat(train={"disable_sampling": True, "optimizer": "automagic"}, network=loraplus))
    assert list(issues) == ["network.network_kwargs.loraplus_lr_ratio"]


def test_timestep_shape_keys_need_their_distribution():
    issues = _issues(flat(train={"disable_sampling": True, "flow_shift": 5.0, "logit_std": 0.5}))
    assert set(issues) == {"train.flow_shift", "train.logit_std"}
    assert "timestep_type: shift" in issues["train.flow_shift"] and "'sigmoid'" in issues["train.flow_shift"]
    assert "timestep_type: logit_normal" in issues["train.logit_std"]
    cfg = load_config_dict(
        flat(
            train={
                "disable_sampling": True,
                "timestep_type": "logit_normal",
                "logit_mean": 0.5,
                "logit_std": 0.8,
            }
        )
    )
    assert (cfg.train.logit_mean, cfg.train.logit_std) == (0.5, 0.8)


def test_seed_per_expert_phases_spelling_loads_and_errors_name_it():
    phases = {"warm": {"alpha": 8, "min_steps": 10}, "main": {"alpha": 16}}
    schedule = {
        "enabled": True,
        "conv_alpha_phases": phases,
        "per_expert": {"high_noise": {"phases": phases}},
    }
    cfg = load_config_dict(flat(network={"conv": 16, "alpha_schedule": schedule}))
    per_expert = cfg.network.alpha_schedule.per_expert
    assert per_expert["high_noise"].conv_alpha_phases["warm"].alpha == 8
    bad = {"high_noise": {"phases": {"warm": {"alpha": -1}}}}
    issues = _issues(seed(flat(network={"conv": 16, "alpha_schedule": {**schedule, "per_expert": bad}})))
    assert list(issues) == [
        "config.process[0].network.alpha_schedule.per_expert.high_noise.phases.warm.alpha"
    ]
    both = {"low_noise": {"phases": phases, "conv_alpha_phases": {"main": {"alpha": 4}}}}
    issues = _issues(flat(network={"conv": 16, "alpha_schedule": {**schedule, "per_expert": both}}))
    assert list(issues) == ["network.alpha_schedule.per_expert.low_noise.phases"]
    assert "keep only 'conv_alpha_phases'" in issues["network.alpha_schedule.per_expert.low_noise.phases"]


def test_qtype_without_its_switch_is_a_warning(caplog):
    """ai-toolkit configs turn quantization off with `quantize: false` and keep their qtype: they still load,
    and the log says nothing is quantized."""
    model = {"name_or_path": "m", "arch": "wan22_14b_i2v", "qtype": "fp8", "qtype_te": "qint8"}
    cfg = load_config_dict(seed(flat(model=model)))
    assert cfg.model.quantize is False
    assert "config.process[0].model.qtype: 'fp8' is set but model.quantize is false" in caplog.text
    assert "config.process[0].model.qtype_te: 'qint8' is set but model.quantize_te is false" in caplog.text
    caplog.clear()
    assert load_config_dict(flat(model={**model, "quantize": True, "quantize_te": True})).model.qtype == "fp8"
    assert "is set but" not in caplog.text
