"""Job configs from the UI: the form's dotted fields or pasted YAML, validated like `cadence validate`.

The config is written to `{home}/jobs/{id}/config.yaml` first and then loaded with
`cadence.config.loader.load_config`, exactly the file and code path `cadence train` will use, so the UI
can never accept a config the trainer rejects. Errors come back as `(dotted_path, message)` issues; form
inputs are named by the same dotted paths, so the page shows each message at its field.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from cadence.atomic import atomic_write_text
from cadence.config.errors import ConfigError
from cadence.config.loader import load_config
from cadence.config.schema import JobConfig

# The form's fields (dotted config paths). Anything else needs the YAML editor.
FORM_FIELDS = (
    "name",
    "training_folder",
    "model.name_or_path",
    "model.arch",
    "datasets[0].folder_path",
    "datasets[0].resolution",
    "datasets[0].num_frames",
    "datasets[0].caption_ext",
    "train.steps",
    "train.lr",
    "train.batch_size",
    "train.optimizer",
    "network.type",
    "network.linear",
    "network.linear_alpha",
    "network.lokr_full_rank",
    "network.lokr_factor",
    "save.save_every",
    "sample.sample_every",
    "train.disable_sampling",
    "trigger_word",
)
_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


def form_to_dict(form: dict[str, Any]) -> dict[str, Any]:
    """{"train.steps": 10, "datasets[0].folder_path": "/d"} -> nested dict; empty values are left out."""
    out: dict[str, Any] = {}
    for key, value in form.items():
        if value is None or value == "":
            continue
        if key not in FORM_FIELDS:
            raise ConfigError([(key, f"'{key}' is not a form field; use the YAML editor for it")])
        if key == "network.lokr_full_rank" and value in ("true", "false"):  # a select's string
            value = value == "true"
        if key == "datasets[0].resolution" and not isinstance(value, list):
            try:
                value = [int(v) for v in str(value).replace(",", " ").split()]
            except ValueError:
                raise ConfigError([(key, f"got {value!r}; whole numbers, e.g. 512 or 512,768")]) from None
        node: Any = out
        parts = key.split(".")
        for i, part in enumerate(parts):
            m = _PART.match(part)
            assert m, key  # FORM_FIELDS are well formed
            name, index = m.group(1), m.group(2)
            last = i == len(parts) - 1
            if index is None:
                if last:
                    node[name] = value
                else:
                    node = node.setdefault(name, {})
            else:
                seq = node.setdefault(name, [])
                while len(seq) <= int(index):
                    seq.append({})
                if last:
                    seq[int(index)] = value
                else:
                    node = seq[int(index)]
    return out


def parse_yaml_text(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            [("", f"YAML parse error{where}: {getattr(exc, 'problem', None) or exc}")]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError([("", "the config must be a mapping of keys (name:, model:, train:, ...)")])
    return data


def write_and_validate(job_dir: Path, text: str) -> tuple[JobConfig, Path]:
    """Write `text` as the job's config.yaml and load it as `cadence train` will; ConfigError on problems."""
    path = job_dir / "config.yaml"
    atomic_write_text(path, text)
    try:
        return load_config(path), path
    except ConfigError as exc:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise ConfigError(exc.issues) from None


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def unique_name(base: str, taken: set[str]) -> str:
    """`base_copy`, `base_copy2`, ... so a clone never writes into (and resumes from) the original's run."""
    stem = re.sub(r"_copy\d*$", "", base) + "_copy"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}{n}"
    return name


def rename_config(text: str, new_name: str) -> str:
    """Set the job name in either layout (flat `name:` or seed `config.name` / `config.process[0].name`)."""
    data = parse_yaml_text(text)
    if "config" in data and isinstance(data["config"], dict):
        data["config"]["name"] = new_name
        for proc in data["config"].get("process") or []:
            if isinstance(proc, dict) and "name" in proc:
                proc["name"] = new_name
    else:
        data["name"] = new_name
    return dump_yaml(data)
