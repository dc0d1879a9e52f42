"""The job form offers every adapter type and LoKr's settings; a LoKr job created from the form validates."""

from __future__ import annotations

from pathlib import Path

import yaml

from cadence.ui.configs import FORM_FIELDS, form_to_dict


def test_page_offers_the_types_and_lokr_settings(make_client) -> None:
    page = make_client().get("/").text
    for kind in ("lora", "locon", "lokr", "loha", "dora"):
        assert f"<option>{kind}</option>" in page
    for field in ("network.type", "network.lokr_full_rank", "network.lokr_factor"):
        assert f'name="{field}"' in page and field in FORM_FIELDS


def test_lokr_job_from_the_form(make_client, tiny_model: Path, clips: Path, tmp_path: Path) -> None:
    form = {
        "name": "kron",
        "model.name_or_path": str(tiny_model),
        "model.arch": "wan22_14b_i2v",
        "datasets[0].folder_path": str(clips),
        "training_folder": str(tmp_path),
        "network.type": "lokr",
        "network.linear": 4,
        "network.lokr_full_rank": "false",
        "network.lokr_factor": 4,
    }
    assert form_to_dict(form)["network"] == {
        "type": "lokr",
        "linear": 4,
        "lokr_full_rank": False,
        "lokr_factor": 4,
    }
    response = make_client().post("/api/jobs", json={"form": form})
    assert response.status_code == 201, response.text
    config = yaml.safe_load(Path(response.json()["config_path"]).read_text())
    assert config["network"]["type"] == "lokr" and config["network"]["lokr_full_rank"] is False
