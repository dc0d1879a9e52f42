"""The seed trainer's inline sample flags become the sample's own settings, or a clear error."""

from __future__ import annotations

import pytest
import yaml
from tests.config.conftest import flat

from cadence.config import ConfigError, load_config, load_config_dict
from cadence.sampling.prompts import resolve_samples


def _sample(**section):
    return flat(
        model={"name_or_path": "Wan-AI/Wan2.2-TI2V-5B-Diffusers", "arch": "wan22_5b"},
        sample={"width": 512, "height": 512, "seed": 0, **section},
    )


def test_flags_become_settings_in_both_prompt_lists():
    cfg = load_config_dict(
        _sample(
            samples=[{"prompt": "a dog running --w 832 --h 480", "neg": "static"}],
            prompts=[
                "a cat walking --n blurry, static --w 832 --h 480 --seed 7 --m 0.8 --cfg 4.5 --steps 12"
            ],
        )
    )
    dog, cat = resolve_samples(cfg, native_fps=16)
    assert (dog.prompt, dog.width, dog.height, dog.neg, dog.seed) == ("a dog running", 832, 480, "static", 0)
    assert (cat.prompt, cat.neg, cat.width, cat.height, cat.seed) == (
        "a cat walking",
        "blurry, static",
        832,
        480,
        7,
    )
    assert (cat.multiplier, cat.guidance_scale, cat.sample_steps) == (0.8, 4.5, 12)
    plain = load_config_dict(_sample(prompts=["a prompt -- with dashes", "x"]))
    assert plain.sample.prompts == ["a prompt -- with dashes", "x"]  # no flags: left as written


def test_bad_flags_are_refused_at_their_prompt():
    with pytest.raises(ConfigError) as err:
        load_config_dict(
            _sample(
                samples=[{"prompt": "p --w 832", "width": 640}, {"prompt": "q --gr 0.7"}],
                prompts=["r --ar 16:9", "s --h tall"],
            )
        )
    issues = dict(err.value.issues)
    assert "both set width" in issues["sample.samples[0].prompt"]
    assert "guidance rescale" in issues["sample.samples[1].prompt"]
    assert "unknown prompt flag --ar" in issues["sample.prompts[0]"]
    assert "--h needs a int value, got 'tall'" in issues["sample.prompts[1]"]


def test_ctrl_img_flag_is_relative_to_the_config(tmp_path):
    body = _sample(prompts=["a cat --ctrl_img first.png --frames 17"])
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(body))
    item = load_config(tmp_path / "job.yaml").sample.items[0]
    assert item.ctrl_img == tmp_path / "first.png" and item.num_frames == 17
