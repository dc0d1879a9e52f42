"""Seed and flat layouts, file formats, relative paths and file-level errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cadence.config import ConfigError, JobConfig, load_config, load_config_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_flat_and_seed_layout_give_equal_configs(make_flat, make_seed):
    body = make_flat(train={"lr": 2e-4, "steps": 10, "disable_sampling": True})
    assert load_config_dict(body) == load_config_dict(make_seed(body))


@pytest.mark.parametrize("kind", ["sd_trainer", "ui_trainer", "diffusion_trainer"])
def test_seed_trainer_types_accepted(make_flat, make_seed, kind):
    assert load_config_dict(make_seed(make_flat(), kind)).name == "t"


def test_other_process_type_refused(make_flat, make_seed):
    with pytest.raises(ConfigError) as err:
        load_config_dict(make_seed(make_flat(), "concept_slider"))
    assert err.value.issues[0][0] == "config.process[0].type"
    assert "sd_trainer" in err.value.issues[0][1]


def test_more_than_one_process_refused(make_flat, make_seed):
    data = make_seed(make_flat())
    data["config"]["process"].append(dict(data["config"]["process"][0]))
    with pytest.raises(ConfigError, match="exactly one process"):
        load_config_dict(data)


def test_wrong_job_and_unknown_top_level_keys(make_flat, make_seed):
    data = make_seed(make_flat())
    data["job"] = "train"
    data["confg"] = {}
    data["config"]["proces"] = []
    with pytest.raises(ConfigError) as err:
        load_config_dict(data)
    text = str(err.value)
    assert "job: got 'train'" in text
    assert "did you mean 'config'?" in text
    assert "config.proces: unknown key 'proces' at config.proces; did you mean 'process'?" in text


def test_name_tag_replaced_and_meta_ignored(make_flat, make_seed):
    cfg = load_config_dict(make_seed(make_flat(training_folder="/runs/[name]")))
    assert cfg.training_folder == Path("/runs/t")


def test_seed_layout_missing_name_reports_config_name(make_flat, make_seed):
    data = make_seed(make_flat())
    del data["config"]["name"]
    with pytest.raises(ConfigError) as err:
        load_config_dict(data)
    assert err.value.issues == [("config.name", "required key 'name' is missing")]


def test_toml_and_json_examples_are_the_same_job():
    a = load_config_dict(json.loads((EXAMPLES / "flat_layout.json").read_text()), None)
    b = load_config(EXAMPLES / "flat_layout.toml")
    assert a.train == b.train and a.model == b.model and a.network == b.network
    assert b.train.lr == pytest.approx(1e-4) and b.train.optimizer_params == {"weight_decay": 1e-4}
    assert b.datasets[0].do_i2v is True and b.model.arch == "wan22_5b"


@pytest.mark.parametrize(
    "name",
    [
        "wan22_i2v_motion.yaml",
        "seed000_video_alpha.yaml",
        "seed001_image_thresholds.yaml",
        "flat_layout.toml",
        "flat_layout.json",
    ],
)
def test_examples_load(name, tmp_path):
    cfg = load_config(EXAMPLES / name)
    assert isinstance(cfg, JobConfig)
    assert cfg.training_folder == EXAMPLES / "output"  # relative to the config file
    assert cfg.train.disable_sampling is True and cfg.model.quantize is False


def test_motion_example_values():
    cfg = load_config(EXAMPLES / "wan22_i2v_motion.yaml")
    params = cfg.train.optimizer_params
    assert params["high_noise_lr_bump"] == pytest.approx(4 * params["low_noise_lr_bump"])
    assert cfg.train.optimizer == "automagic" and cfg.train.switch_boundary_every == 100
    phases = cfg.network.alpha_schedule.conv_alpha_phases
    assert [p.alpha for p in phases.values()] == [8, 14, 20]
    assert phases["foundation"].exit_criteria.advisory == ["min_loss_r2"]
    assert len(cfg.sample.samples) == 1 and cfg.sample.samples[0].ctrl_img.is_absolute()


def test_relative_paths_resolved_against_config_folder(tmp_path, make_flat):
    (tmp_path / "cfg" / "local_model").mkdir(parents=True)
    data = make_flat(
        training_folder="runs",
        datasets=[{"folder_path": "data/clips"}, {"folder_path": "/abs/clips"}],
        model={"name_or_path": "local_model", "arch": "wan22_14b_i2v"},
        sample={"samples": [{"prompt": "p", "ctrl_img": "imgs/a.png"}]},
    )
    path = tmp_path / "cfg" / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    assert cfg.training_folder == tmp_path / "cfg" / "runs"
    assert cfg.datasets[0].folder_path == tmp_path / "cfg" / "data" / "clips"
    assert cfg.datasets[1].folder_path == Path("/abs/clips")
    assert cfg.model.name_or_path == str(tmp_path / "cfg" / "local_model")
    assert cfg.sample.samples[0].ctrl_img == tmp_path / "cfg" / "imgs" / "a.png"


def test_hub_id_is_not_resolved(tmp_path, make_flat):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(make_flat()))
    assert load_config(path).model.name_or_path == "Wan-AI/Wan2.2-I2V-A14B-Diffusers"


def test_yaml_exponent_without_dot_is_a_float(tmp_path, make_flat):
    text = yaml.safe_dump(make_flat()) + "save:\n  save_every: 10\n"
    text = text.replace("disable_sampling: true", "disable_sampling: true\n  lr: 1e-4")
    path = tmp_path / "job.yml"
    path.write_text(text)
    assert load_config(path).train.lr == pytest.approx(1e-4)


def test_env_vars_substituted(tmp_path, make_flat, monkeypatch):
    monkeypatch.setenv("CADENCE_TEST_DATA", "/mnt/clips")
    data = make_flat(datasets=[{"folder_path": "${CADENCE_TEST_DATA}"}])
    path = tmp_path / "job.json"
    path.write_text(json.dumps(data))
    assert load_config(path).datasets[0].folder_path == Path("/mnt/clips")
    monkeypatch.delenv("CADENCE_TEST_DATA")
    with pytest.raises(ConfigError, match="CADENCE_TEST_DATA"):
        load_config(path)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.ini", "x=1", "unsupported file type '.ini'"),
        ("a.yaml", "name: t\ntrain: [1,\n", "YAML parse error at line"),
        ("a.yaml", "name: t\nname: u\n", "duplicate key 'name'"),
        ("a.json", '{"name": "t",\n "x": }', "JSON parse error at line 2"),
        ("a.toml", "name = \n", "TOML parse error"),
        ("a.yaml", "", "the file is empty"),
        ("a.yaml", "- 1\n- 2\n", "top level must be a mapping"),
    ],
)
def test_file_errors(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_ai_toolkit_ui_export_loads_unchanged():
    """A config written by the seed trainer's own UI runs as is (inert UI keys accepted, nothing ignored)."""
    from pathlib import Path

    import yaml

    from cadence.config.loader import load_config_dict

    path = Path(__file__).parent / "data" / "aitk_ui_wan22_i2v.yaml"
    data = yaml.safe_load(path.read_text())
    cfg = load_config_dict(data, path)
    assert cfg.model.arch == "wan22_14b_i2v" and cfg.model.quantize and cfg.model.qtype == "qfloat8"
    assert cfg.performance_log_every == 10 and cfg.datasets[0].num_frames == 41
    data["config"]["process"][0]["model"]["arch"] = "wan22_14b:t2v"  # the UI's "arch:variant" spelling
    data["config"]["process"][0]["datasets"][0]["do_i2v"] = False
    assert load_config_dict(data, path).model.arch == "wan22_14b"
    data["config"]["process"][0]["model"]["arch"] = "wan21_i2v:14b480p"  # the UI's Wan 2.1 I2V 480P entry
    data["config"]["process"][0]["datasets"][0].pop("do_i2v")
    assert load_config_dict(data, path).model.arch == "wan21_i2v"
