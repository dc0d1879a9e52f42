"""Webhook URLs and tokens never reach config.yaml, the config hash, logs or the UI's job page."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from cadence.config.errors import ConfigError
from cadence.config.loader import load_config, load_config_dict
from cadence.config.validate import config_hash, dump_resolved
from cadence.tracking.secrets import REDACTED, Redactor, redact_config_text

HOOK = "https://discord.com/api/webhooks/1234567890/tok-SECRET-abcdef"
RAW = "https://ops.example.com/cadence/events?key=SECRET-key-987"
TOKEN = "SECRET-auth-token-555"


def _job(tmp_path: Path, hooks: list) -> dict:
    return {
        "name": "job",
        "training_folder": str(tmp_path / "out"),
        "model": {"name_or_path": "Wan-AI/Wan2.2-I2V-A14B-Diffusers", "arch": "wan22_14b_i2v"},
        "datasets": [{"folder_path": str(tmp_path / "clips")}],
        "train": {"disable_sampling": True},
        "logging": {"webhooks": hooks},
    }


def test_the_resolved_config_holds_no_secret_and_says_so_when_loaded_again(tmp_path: Path) -> None:
    hooks = [HOOK, {"webhook_type": "raw", "callback_url": RAW, "auth_token": TOKEN, "log_level": "warning"}]
    cfg = load_config_dict(_job(tmp_path, hooks))
    assert [h.webhook_type for h in cfg.logging.webhooks] == ["discord", "raw"]  # the URL shorthand's form
    assert cfg.logging.webhooks[1].webhook_url == RAW  # SimpleTuner's callback_url is the raw form's URL
    text = dump_resolved(cfg)
    assert "SECRET" not in text
    resolved = yaml.safe_load(text)["logging"]["webhooks"]
    assert [h["webhook_url"] for h in resolved] == [REDACTED, REDACTED] and resolved[1][
        "auth_token"
    ] == REDACTED
    assert resolved[1]["log_level"] == "warning"  # everything else is kept
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path / "config.yaml")
    message = str(error.value)
    assert "logging.webhooks[0].webhook_url" in message and "redacted from a resolved config.yaml" in message


def test_the_config_hash_does_not_depend_on_a_secret(tmp_path: Path) -> None:
    one = load_config_dict(_job(tmp_path, [HOOK]))
    other = load_config_dict(_job(tmp_path, [HOOK.replace("tok-SECRET", "rotated")]))
    plain = load_config_dict(
        _job(tmp_path, [{"webhook_type": "raw", "webhook_url": RAW, "log_level": "error"}])
    )
    assert config_hash(one) == config_hash(other)
    assert config_hash(one) != config_hash(plain)  # a setting that is not a secret still counts


def test_config_text_keeps_its_layout_and_env_references_but_loses_literal_secrets() -> None:
    text = f"""# my job
job: extension
config:
  name: job
  process:
    - type: sd_trainer
      logging:
        use_wandb: true   # keep this comment
        webhooks:
          - {HOOK}
          - webhook_type: raw
            callback_url: "{RAW}"
            auth_token: {TOKEN}
          - webhook_url: ${{OPS_WEBHOOK}}
            webhook_type: discord
            log_level: warning
            events: [health_warning, failure]
"""
    shown = redact_config_text(text)
    assert "SECRET" not in shown
    assert "# keep this comment" in shown and "${OPS_WEBHOOK}" in shown and shown.count(REDACTED) == 3
    assert "webhook_type: discord\n            log_level: warning" in shown  # settings are not secrets
    assert "events: [health_warning, failure]" in shown
    assert redact_config_text("not: [valid") == "not: [valid"


def test_the_redactor_scrubs_the_path_that_http_errors_quote() -> None:
    redactor = Redactor([HOOK])
    error = "HTTPSConnectionPool(host='discord.com', port=443): Max retries exceeded with url: /api/webhooks/1234567890/tok-SECRET-abcdef"
    assert "SECRET" not in redactor.scrub(error) and "discord.com" in redactor.scrub(error)


def test_the_ui_job_page_shows_the_config_without_its_secrets(tmp_path: Path) -> None:
    from cadence.ui.app import create_app

    (tmp_path / "clips").mkdir()
    text = yaml.safe_dump(_job(tmp_path, [HOOK, {"webhook_url": RAW, "auth_token": TOKEN}]))
    app = create_app(tmp_path / "home", token=None, scheduler_interval=0.3, gpus=[])
    with TestClient(app, base_url="http://localhost") as client:
        created = client.post("/api/jobs", json={"yaml": text})
        assert created.status_code == 201, created.text
        job = client.get(f"/api/jobs/{created.json()['id']}").json()
    assert "SECRET" not in job["config_yaml"] and job["config_yaml"].count(REDACTED) == 3
    # the trainer's own copy keeps them: the job still posts to its webhooks
    assert HOOK in Path(job["config_path"]).read_text()
