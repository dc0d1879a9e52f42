"""ai-toolkit's W&B and Hub keys and SimpleTuner's webhook entries load and mean what they say; wrong values
are clear errors at the key the user wrote."""

from __future__ import annotations

import pytest

from cadence.config.errors import ConfigError
from cadence.config.loader import load_config_dict


def _seed(logging: dict, save: dict, **top) -> dict:
    return {
        "job": "extension",
        "config": {
            "name": "seed_job",
            "process": [
                {
                    "type": "sd_trainer",
                    "model": {"name_or_path": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "arch": "wan22_14b_i2v"},
                    "datasets": [{"folder_path": "/data/clips"}],
                    "train": {"disable_sampling": True},
                    "logging": logging,
                    "save": save,
                    **top,
                }
            ],
        },
    }


def _issues(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as error:
        load_config_dict(data)
    return dict(error.value.issues)


def test_ai_toolkit_keys_load_as_written() -> None:
    cfg = load_config_dict(
        _seed(
            {"use_wandb": True, "project_name": "ai-toolkit", "run_name": "my run", "log_every": 100},
            {"push_to_hub": True, "hf_repo_id": "me/wan-lora", "hf_private": True},
        )
    )
    assert (cfg.logging.use_wandb, cfg.logging.project_name, cfg.logging.run_name) == (
        True,
        "ai-toolkit",
        "my run",
    )
    assert (cfg.save.push_to_hub, cfg.save.hf_repo_id, cfg.save.hf_private) == (True, "me/wan-lora", True)
    defaults = load_config_dict(_seed({}, {}))
    assert (defaults.logging.project_name, defaults.logging.run_name, defaults.logging.webhooks) == (
        "cadence",
        None,
        [],
    )


def test_simpletuner_webhook_entries_one_or_many() -> None:
    one = {
        "webhook_type": "discord",
        "webhook_url": "https://discord.com/api/webhooks/1/x",
        "message_prefix": "p",
    }
    cfg = load_config_dict(_seed({"webhooks": one}, {}))
    assert [(h.webhook_type, h.message_prefix, h.log_level) for h in cfg.logging.webhooks] == [
        ("discord", "p", "info")
    ]
    many = [
        one,
        {"webhook_type": "raw", "callback_url": "http://127.0.0.1:8001/callback", "log_level": "error"},
    ]
    cfg = load_config_dict(_seed({"webhooks": many}, {}))
    assert [h.webhook_url for h in cfg.logging.webhooks][1] == "http://127.0.0.1:8001/callback"


def test_wrong_values_name_the_key_and_what_to_do() -> None:
    issues = _issues(_seed({}, {"push_to_hub": True}))
    assert "needs save.hf_repo_id" in issues["config.process[0].save"]
    issues = _issues(_seed({}, {"hf_repo_id": "me/two/slashes"}))
    assert "is not a Hub repo id" in issues["config.process[0].save.hf_repo_id"]
    issues = _issues(_seed({"webhooks": [{"webhook_url": "ftp://host/x"}, {"webhook_type": "slack"}]}, {}))
    assert "http:// or https://" in issues["config.process[0].logging.webhooks[0].webhook_url"]
    assert (
        "got 'slack'; allowed values: 'raw' or 'discord'"
        in issues["config.process[0].logging.webhooks[1].webhook_type"]
    )
    assert "config.process[0].logging.webhooks[1].webhook_url" in issues  # required
    issues = _issues(
        _seed({"webhooks": [{"webhook_url": "https://x.example/h", "events": ["progress"]}]}, {})
    )
    assert "'start', 'checkpoint'" in issues["config.process[0].logging.webhooks[0].events[0]"]


def test_simpletuners_own_key_names_say_where_the_setting_lives() -> None:
    issues = _issues(_seed({}, {}, webhook_config={"webhook_type": "raw"}, hub_model_id="me/x"))
    assert "Cadence's setting is logging.webhooks" in issues["config.process[0].webhook_config"]
    assert "Cadence's setting is save.hf_repo_id" in issues["config.process[0].hub_model_id"]
