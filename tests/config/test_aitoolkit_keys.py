"""Every key ai-toolkit reads (both trainers, data/aitoolkit_keys.txt) is answered: implemented, accepted at its
off value, or refused with a reason; "unknown key" is left for names neither trainer knows, and "did you mean"
only points at a slip of the keyboard in the same section."""

from __future__ import annotations

import copy
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from cadence.config import ConfigError, load_config_dict
from cadence.config.compat import FAMILY_FLAGS, SYNONYMS, section_model, split_pattern
from cadence.config.cross_checks import AUTOMAGIC_KEYS
from cadence.config.unsupported import all_entries

from .conftest import flat, seed

KEYS_FILE = Path(__file__).parent / "data" / "aitoolkit_keys.txt"
OUTCOMES = {"accepted", "refused", "implemented", "inert"}
BASE = flat(
    model={"name_or_path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "arch": "wan21"},
    sample={"samples": [{"prompt": "a cat"}]},
)


def _rows() -> list[tuple[str, Any, str, str, Any, str]]:
    rows = []
    for line in KEYS_FILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, value, source, at_default, other, at_other = line.split("\t")
        rows.append((key, yaml.safe_load(value), source, at_default, yaml.safe_load(other), at_other))
    return rows


ROWS = _rows()


def _put(body: dict[str, Any], pattern: str, value: Any) -> None:
    *sections, key = pattern.split(".")
    node = body
    for part in sections:
        node = node[part[:-2]][0] if part.endswith("[]") else node.setdefault(part, {})
    node[key] = value


def _outcome(pattern: str, value: Any) -> tuple[str, str]:
    """('accepted' | 'unknown' | 'refused' | 'elsewhere', message) of a seed-layout job with the key set."""
    body = copy.deepcopy(BASE)
    _put(body, pattern, value)
    try:
        load_config_dict(seed(body))
        return "accepted", ""
    except ConfigError as exc:
        path = "config.process[0]." + pattern.replace("[]", "[0]")
        mine = [message for where, message in exc.issues if where.startswith(path)]
        if not mine:
            return "elsewhere", str(exc)
        return ("unknown" if any(m.startswith("unknown key") for m in mine) else "refused"), mine[0]


def _implemented(pattern: str) -> bool:
    section, key = split_pattern(pattern)
    model = section_model([p for p in section.split(".") if p])
    return (
        (model is not None and key in model.model_fields)
        or pattern in SYNONYMS
        or key == "accuracy_recovery_adapter"
        or (section == "model" and key in FAMILY_FLAGS)  # is_flux: true names the arch
    )


def test_the_key_list_covers_both_trainers_and_every_section() -> None:
    assert len(ROWS) == len({row[0] for row in ROWS}) > 350
    sources = Counter(row[2] for row in ROWS)
    assert sources["relaxis"] >= 3 and sources["ostris"] >= 40 and sources["both"] > 300
    sections = {split_pattern(row[0])[0].split(".")[0] for row in ROWS}
    assert {"", "network", "save", "datasets[]", "train", "model", "sample", "logging"} <= sections
    assert any(row[0].startswith("sample.samples[].") for row in ROWS)
    assert all(row[3] in OUTCOMES and row[5] in OUTCOMES for row in ROWS)


def test_no_ai_toolkit_key_is_unknown_and_each_does_what_the_list_says(caplog) -> None:
    caplog.set_level(logging.ERROR)  # config warnings (qtype without quantize, ...) are not under test here
    wrong = []
    for key, value, _source, at_default, other, at_other in ROWS:
        got, message = _outcome(key, value)
        if got != at_default:
            wrong.append(f"{key}: {value!r} -> {got} (expected {at_default}) {message}")
        if got == "refused" and "not supported yet by Cadence" not in message:
            wrong.append(f"{key}: refused without a reason: {message}")
        if at_other == "implemented" and not _implemented(key):
            wrong.append(f"{key}: listed as implemented but is no Cadence setting")
        if at_other in ("implemented", "-"):
            continue
        got, message = _outcome(key, other)
        expected = {"inert": "accepted", "refused": "refused"}.get(at_other)
        if got == "unknown" or (expected is not None and got != expected):
            wrong.append(f"{key}: {other!r} -> {got} (expected {at_other}) {message}")
        if got == "refused" and not ("not supported yet by Cadence" in message or _implemented(key)):
            wrong.append(f"{key}: {other!r} refused without the registry's reason: {message}")
    assert not wrong, "\n".join(wrong)


def test_every_refusal_entry_is_a_key_ai_toolkit_reads() -> None:
    listed = {row[0] for row in ROWS}
    entries = {entry.key for entry in all_entries()}
    stray = sorted(k for k in entries - listed if not k.startswith(("network.normalize", "network.lorm")))
    assert stray == [], stray  # an entry no trainer reads would be a made-up refusal


def test_counts_for_the_record() -> None:
    """The numbers reported to the issue: keys found, implemented / accepted when off / refused."""
    at_other = Counter(row[5] for row in ROWS)
    assert at_other["implemented"] >= 90 and at_other["refused"] >= 180 and at_other["inert"] >= 50


@pytest.mark.parametrize(
    "section,key,value,expected",
    [
        ("model", "te_dtype", "bf16", "the text encoder runs in train.dtype"),
        ("train", "adapter_lr", 1e-4, None),  # accepted: only used with the (refused) adapter section
        ("sample.samples", "ctrl_idx", 1, "Wan image-to-video takes one ctrl_img"),
    ],
)
def test_keys_once_misread_as_typos_are_answered_with_their_meaning(section, key, value, expected) -> None:
    body = copy.deepcopy(BASE)
    if section == "sample.samples":
        body["sample"]["samples"][0][key] = value
    else:
        body[section][key] = value
    if expected is None:
        load_config_dict(body)
        return
    with pytest.raises(ConfigError) as err:
        load_config_dict(body)
    message = " ".join(m for _, m in err.value.issues)
    assert expected in message and "did you mean" not in message and "unknown key" not in message


def _hint(body: dict[str, Any], path: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config_dict(body)
    return dict(err.value.issues)[path]


def test_did_you_mean_only_for_a_slip_in_the_same_section() -> None:
    body = copy.deepcopy(BASE)
    body["train"].update(lrr=1e-4)
    assert _hint(body, "train.lrr").endswith("did you mean 'lr'?")
    body = copy.deepcopy(BASE)
    body["train"]["arch"] = "wan21"  # a real key, of another section: named, not guessed
    hint = _hint(body, "train.arch")
    assert "it is 'model.arch'" in hint and "did you mean" not in hint
    body = copy.deepcopy(BASE)
    body["model"]["trigger_word"] = "sks"
    assert "it is 'trigger_word'" in _hint(body, "model.trigger_word")
    body = copy.deepcopy(BASE)
    body["sample"]["ctrl_image"] = "x.png"  # two edits from ctrl_img in an 10-letter name: a different word
    hint = _hint(body, "sample.ctrl_image")
    assert "did you mean" not in hint and "valid keys here" in hint
    body = copy.deepcopy(BASE)
    body["train"]["learning_rate"] = 1e-4  # another trainer's name: Cadence's key for that job
    assert "Cadence's setting is train.lr" in _hint(body, "train.learning_rate")


def test_automagic_parameter_typos_are_caught_at_load_with_their_meaning() -> None:
    from cadence.optim.automagic import OPTION_KEYS

    assert AUTOMAGIC_KEYS == OPTION_KEYS
    body = copy.deepcopy(BASE)
    body["train"].update(
        optimizer="automagic",
        optimizer_params={"lr_bumb": 1e-6, "high_noise_min_lrr": 1e-7, "low_noise_max_lr": 1e-4},
    )
    with pytest.raises(ConfigError) as err:
        load_config_dict(body)
    issues = dict(err.value.issues)
    assert "did you mean 'lr_bump'?" in issues["train.optimizer_params.lr_bumb"]
    assert "did you mean 'high_noise_min_lr'?" in issues["train.optimizer_params.high_noise_min_lrr"]
    assert set(issues) == {"train.optimizer_params.lr_bumb", "train.optimizer_params.high_noise_min_lrr"}
    body["train"]["optimizer_params"] = {"lr_bump": 1e-6, "do_paramiter_swapping": False}  # ai-toolkit's, off
    assert load_config_dict(body).train.optimizer_params["lr_bump"] == 1e-6
    body["train"]["optimizer_params"]["do_paramiter_swapping"] = True
    with pytest.raises(ConfigError, match="parameter swapping"):
        load_config_dict(body)


def test_the_docs_embed_both_refusal_tables() -> None:
    from cadence.config.unsupported import registry_markdown
    from cadence.config.unsupported_other import OTHER

    docs = (Path(__file__).parents[2] / "docs" / "config.md").read_text(encoding="utf-8")
    assert registry_markdown(OTHER) in docs


def test_every_refusal_points_at_keys_that_exist() -> None:
    """A refusal that says "use X" must name a key Cadence has; "only used with X" an ai-toolkit key of the
    same section that is itself answered (messages went stale before: model.compile once said 'later')."""
    import re

    from cadence.config.compat import _schema_patterns

    cadence = set(_schema_patterns()) | set(SYNONYMS)
    answered = {entry.key for entry in all_entries()}
    names = {split_pattern(p)[1] for p in cadence}
    dotted = re.compile(
        r"\b((?:train|model|network|datasets\[\]|sample|save|logging)\.[a-z_][a-z_0-9.\[\]]*[a-z_0-9])"
    )
    told = re.compile(r"\b(?:use|set)\s+(?:the\s+)?([a-z]+_[a-z_0-9]+)\b")
    only = re.compile(r"only used with (?:the |an? )?([a-z][a-z_0-9]*)")
    wrong = []
    for entry in all_entries():
        section = split_pattern(entry.key)[0]
        for key in dotted.findall(entry.reason):
            if key not in cadence and key not in answered:
                wrong.append(f"{entry.key}: names {key}")
        for key in told.findall(entry.reason):
            if key not in names:
                wrong.append(f"{entry.key}: says to use {key}")
        for key in only.findall(entry.reason):
            known = {f"{section}.{key}".lstrip("."), key} & (answered | cadence)
            if not known and key not in names and key not in ("a", "an", "the"):
                wrong.append(f"{entry.key}: only used with {key}?")
    assert not wrong, "\n".join(wrong)
    reasons = {entry.key: entry.reason for entry in all_entries()}
    assert "train.compile" in reasons["model.compile"]
    assert "model.blocks_to_swap" in reasons["model.layer_offloading"]
    assert (
        "train.attention_backend" in reasons["train.sdp"]
        and "train.attention_backend" in reasons["train.xformers"]
    )


# the job ai-toolkit's web UI writes for each Wan model (ui/src/app/jobs/new/options.tsx, 27a03a91): the arch
# name, timestep type, sample length and rate, dataset rate and I2V switch it sets over its default job
UI_WAN_JOBS = {
    "wan21:1b": {"sample.num_frames": 41, "sample.fps": 16, "datasets.fps": 16},
    "wan21_i2v:14b480p": {"train.timestep_type": "weighted", "sample.num_frames": 41, "sample.fps": 16},
    "wan21_i2v:14b": {"train.timestep_type": "weighted", "sample.num_frames": 41, "sample.fps": 16},
    "wan21:14b": {"sample.num_frames": 41, "sample.fps": 16, "datasets.fps": 16},
    "wan22_14b:t2v": {"train.timestep_type": "linear", "sample.num_frames": 41},
    "wan22_14b_i2v": {"train.timestep_type": "linear", "sample.num_frames": 41},
    "wan22_5b": {
        "train.timestep_type": "weighted",
        "sample.num_frames": 121,
        "sample.fps": 24,
        "datasets.do_i2v": True,
    },
}


@pytest.mark.parametrize("arch", sorted(UI_WAN_JOBS))
def test_the_jobs_ai_toolkits_ui_writes_for_each_wan_model_load(arch: str) -> None:
    data = yaml.safe_load(
        (Path(__file__).parent / "data" / "aitk_ui_wan22_i2v.yaml").read_text(encoding="utf-8")
    )
    process = data["config"]["process"][0]
    process["model"]["arch"] = arch
    process["train"]["bypass_guidance_embedding"] = True  # the UI's default job sets it (a no-op on Wan)
    for dataset in process["datasets"]:
        dataset.pop("do_i2v", None)
    for key, value in UI_WAN_JOBS[arch].items():
        section, name = key.split(".")
        target = process["datasets"][0] if section == "datasets" else process[section]
        target[name] = value
    cfg = load_config_dict(data)
    assert cfg.train.timestep_type == UI_WAN_JOBS[arch].get("train.timestep_type", "linear")
    assert cfg.sample.num_frames == UI_WAN_JOBS[arch]["sample.num_frames"]
