"""`cadence validate`, the resolved dump (round trip), the config hash and the docs' coverage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cadence.config import ConfigError, load_config, load_config_dict
from cadence.config.compat import SYNONYMS
from cadence.config.schema import JobConfig
from cadence.config.unsupported import REGISTRY
from cadence.config.validate import config_hash, dump_resolved

ROOT = Path(__file__).resolve().parents[2]
CADENCE = Path(sys.executable).parent / "cadence"


def test_dump_round_trip_gives_equal_config():
    cfg = load_config(ROOT / "examples" / "wan22_i2v_motion.yaml")
    again = load_config_dict(yaml.safe_load(dump_resolved(cfg)))
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_dump_fills_defaults(make_flat):
    data = yaml.safe_load(dump_resolved(load_config_dict(make_flat())))
    assert data["train"]["seed"] == 42 and data["network"]["linear"] == 4
    assert data["save"]["save_every"] == 1000 and data["datasets"][0]["do_i2v"] is True


def test_config_hash_is_short_stable_and_sensitive(make_flat):
    a = load_config_dict(make_flat())
    b = load_config_dict(make_flat(train={"lr": 3e-4, "disable_sampling": True}))
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert config_hash(a) == config_hash(load_config_dict(make_flat()))
    assert config_hash(a) != config_hash(b)


def run_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CADENCE), "validate", str(path)], capture_output=True, text=True, timeout=120)


def test_cli_validate_ok(tmp_path, make_flat, make_seed):
    (tmp_path / "clips").mkdir()
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(make_seed(make_flat(datasets=[{"folder_path": "clips"}]))))
    result = run_validate(path)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["datasets"][0]["folder_path"] == str(tmp_path / "clips")
    assert load_config_dict(resolved) == load_config(path)


def test_cli_validate_errors_exit_2(tmp_path, make_flat, make_seed):
    data = make_seed(make_flat(datasets=[{"folder_path": "missing"}], train={"lrr": 1}))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_validate(path)
    assert result.returncode == 2
    assert "config.process[0].train.lrr: unknown key 'lrr'" in result.stderr
    # one report: the missing folder is named beside the config error, not only once the config is fixed
    assert "config.process[0].datasets[0].folder_path: folder" in result.stderr
    data["config"]["process"][0]["train"] = {"disable_sampling": True}
    path.write_text(yaml.safe_dump(data))
    result = run_validate(path)
    assert result.returncode == 2
    assert "config.process[0].datasets[0].folder_path: folder" in result.stderr
    assert str(tmp_path / "missing") in result.stderr


def test_docs_cover_every_key_and_refusal():
    docs = (ROOT / "docs" / "config.md").read_text()
    for entry in REGISTRY:
        assert f"`{entry.key}`" in docs, entry.key
    for seed_key in SYNONYMS:
        assert seed_key.rpartition(".")[2] in docs, seed_key
    for field in JobConfig.model_fields:
        assert f"`{field}`" in docs, field
    for name in ("network", "save", "datasets", "train", "model", "sample", "logging"):
        section = JobConfig.model_fields[name].annotation
        model = section.__args__[0] if name == "datasets" else section
        for field in model.model_fields:
            assert f"`{field}`" in docs, f"{name}.{field}"


def test_validate_refuses_an_arch_that_does_not_match_the_model_folder(tmp_path):
    """model.arch vs the folder's real arch is checked before any work, without reading weights."""
    import subprocess
    import sys

    import yaml

    from cadence.models.tiny import write_tiny_model

    model = write_tiny_model(tmp_path / "t2v", "wan21")
    (tmp_path / "data").mkdir()
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "datasets": [{"folder_path": str(tmp_path / "data")}],
                "model": {"name_or_path": str(model), "arch": "wan22_14b_i2v"},
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "cadence.cli", "validate", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "model.name_or_path" in result.stderr and "'wan21'" in result.stderr, result.stderr


def test_docs_embed_the_refusal_registry_as_generated():
    from cadence.config.unsupported import registry_markdown

    assert registry_markdown() in (ROOT / "docs" / "config.md").read_text()


def test_cli_validate_checks_samples_like_train(tmp_path, make_flat, make_seed):
    (tmp_path / "clips").mkdir()
    data = make_flat(
        datasets=[{"folder_path": "clips"}],
        model={"name_or_path": "Wan-AI/Wan2.2-TI2V-5B-Diffusers", "arch": "wan22_5b"},
        train={"disable_sampling": False},
        sample={"width": 50, "prompts": ["a cat"]},
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(make_seed(data)))
    result = run_validate(path)
    assert result.returncode == 2 and "config.process[0].sample.width: got 50" in result.stderr


def test_validate_names_an_expert_that_min_denoising_steps_leave_empty(tmp_path, make_flat):
    from cadence.config.validate import check_config_file

    (tmp_path / "clips").mkdir()
    data = make_flat(
        datasets=[{"folder_path": "clips"}],
        train={"disable_sampling": True, "timestep_type": "linear", "min_denoising_steps": 200},  # t <= 0.8
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:  # Wan 2.2 I2V's high-noise expert owns t >= 0.9
        check_config_file(path, machine=False)
    issues = dict(err.value.issues)
    assert "high_noise" in issues["train.min_denoising_steps"] and len(issues) == 1
    data["model"]["model_kwargs"] = {"train_high_noise": False}
    path.write_text(yaml.safe_dump(data))
    assert check_config_file(path, machine=False).train.min_denoising_steps == 200
