"""Read a job config (YAML/TOML/JSON, seed or flat layout) into a validated `JobConfig`.

Steps, each reporting into one list so the user sees every problem at once:
read file -> unwrap layout -> `[name]` tags -> seed synonyms (compat) -> unsupported keys (unsupported)
-> relative paths -> pydantic validation, whose errors are reworded with the user's own key paths.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cadence.config.compat import (
    FOREIGN_KEYS,
    Parts,
    apply_synonyms,
    clean_loc,
    pattern_of,
    section_model,
    synonyms_for,
    unknown_key_hint,
)
from cadence.config.cross_checks import config_issues, config_warnings
from cadence.config.errors import ConfigError, closest, format_path
from cadence.config.musubi_dataset import expand_dataset_file
from cadence.config.prompt_flags import expand_prompt_flags
from cadence.config.schema import JobConfig
from cadence.config.unsupported import check_unsupported

log = logging.getLogger(__name__)

# The seed trainer's process types that run its LoRA trainer (ai-toolkit extensions_built_in/sd_trainer).
SEED_TRAINER_TYPES = ("sd_trainer", "ui_trainer", "diffusion_trainer")
SEED_PREFIX = "config.process[0]"
_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}
_ENV = re.compile(r"\$\{([^}]+)\}")


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.1 needs a dot) and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# ------------------------------------------------------------------------------------------ reading
def _substitute_env(text: str, path: Path) -> str:
    """`${VAR}` -> environment value, as the seed trainer does; an unset variable is an error."""
    missing = sorted({m for m in _ENV.findall(text) if m not in os.environ})
    if missing:
        raise ConfigError(
            [
                ("", f"environment variable {m} is used as ${{{m}}} but not set; export it or edit the file")
                for m in missing
            ],
            path,
        )
    return _ENV.sub(lambda m: os.environ[m.group(1)], text)


def _parse(text: str, kind: str, path: Path) -> Any:
    try:
        if kind == "yaml":
            return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - SafeLoader subclass
        if kind == "toml":
            return tomllib.loads(text)
        return json.loads(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([("", f"YAML parse error{where}: {problem}")], path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([("", f"TOML parse error: {exc}")], path) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [("", f"JSON parse error at line {exc.lineno}, column {exc.colno}: {exc.msg}")], path
        ) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a config file by its extension into a plain dict (no validation)."""
    path = Path(path)
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            [("", f"unsupported file type '{path.suffix or '(none)'}'; use .yaml, .yml, .toml or .json")],
            path,
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("", "file not found; check the path")], path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("", f"cannot read the file: {exc}")], path) from None
    data = _parse(_substitute_env(text, path), kind, path)
    if data is None:
        raise ConfigError([("", "the file is empty")], path)
    if not isinstance(data, dict):
        raise ConfigError([("", f"the top level must be a mapping of keys, got {type(data).__name__}")], path)
    return data


def load_config(path: str | Path, dataset_config: str | Path | None = None) -> JobConfig:
    """Read and validate a config file; relative paths in it are resolved against its folder.
    `dataset_config` (a musubi-tuner dataset file, `--dataset-config`) replaces its datasets."""
    path = Path(path)
    return load_config_dict(read_config_file(path), path, dataset_config)


# ------------------------------------------------------------------------------------------- layout
def is_seed_layout(data: dict[str, Any]) -> bool:
    return "config" in data or "job" in data


def _unknown(key: str, valid: list[str], path: str, section: str | None = None) -> tuple[str, str]:
    """`section` (a pattern, '' = process level) lets the hint name another section that has the key; the
    seed wrapper's own levels pass None."""
    if section is None:
        match = closest(key, valid)
        hint = f"did you mean '{match}'?" if match else f"valid keys here: {', '.join(sorted(valid))}"
        if key in FOREIGN_KEYS:
            hint = f"that is another trainer's name; Cadence's setting is {FOREIGN_KEYS[key]}"
    else:
        hint = unknown_key_hint(key, valid, section)
    return path, f"unknown key '{key}' at {path}; {hint}"


def _unwrap_seed(data: dict[str, Any], source: Path | None) -> dict[str, Any]:
    """Seed layout -> the single process body (with `name`); structural problems raise at once."""
    issues = [_unknown(k, ["job", "config", "meta"], k) for k in data if k not in ("job", "config", "meta")]
    if data.get("job", "extension") != "extension":
        issues.append(("job", f"got {data['job']!r}; Cadence runs training configs with 'job: extension'"))
    config = data.get("config")
    if not isinstance(config, dict):
        raise ConfigError(
            [*issues, ("config", "missing or not a mapping; expected {name, process: [...]}")], source
        )
    issues += [
        _unknown(k, ["name", "process"], f"config.{k}") for k in config if k not in ("name", "process")
    ]
    process = config.get("process")
    if not isinstance(process, list) or not process:
        raise ConfigError(
            [*issues, ("config.process", "missing or empty; expected a list with one process")], source
        )
    if len(process) != 1:
        issues.append(
            (
                "config.process",
                f"has {len(process)} entries; Cadence runs exactly one process "
                "per config (split them into separate files)",
            )
        )
    body = process[0]
    if not isinstance(body, dict):
        raise ConfigError([*issues, (f"{SEED_PREFIX}", "expected a mapping (the process section)")], source)
    kind = body.get("type")
    if kind not in SEED_TRAINER_TYPES:
        got = "missing" if kind is None else f"got {kind!r}"
        issues.append(
            (
                f"{SEED_PREFIX}.type",
                f"{got}; Cadence runs the seed's LoRA trainer process types: {', '.join(SEED_TRAINER_TYPES)}",
            )
        )
    if issues:
        raise ConfigError(issues, source)
    body = {k: copy.deepcopy(v) for k, v in body.items() if k != "type"}
    if "name" not in body and "name" in config:
        body["name"] = config["name"]
    return body


def _replace_name_tags(value: Any, name: str) -> Any:
    """The seed replaces `[name]` anywhere in the config with the job name."""
    if isinstance(value, str):
        return value.replace("[name]", name)
    if isinstance(value, list):
        return [_replace_name_tags(v, name) for v in value]
    if isinstance(value, dict):
        return {k: _replace_name_tags(v, name) for k, v in value.items()}
    return value


# -------------------------------------------------------------------------------------------- paths
def _local(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_paths(body: dict[str, Any], base: Path) -> None:
    """Relative paths are relative to the config file's folder, not the working directory."""
    body["training_folder"] = _local(body.get("training_folder", "output"), base)
    for ds in body.get("datasets") or []:
        for key in ("folder_path", "control_path", "cache_directory"):
            if isinstance(ds, dict) and key in ds:
                ds[key] = _local(ds[key], base)
    sample = body.get("sample")
    if isinstance(sample, dict):
        for item in sample.get("samples") or []:
            if isinstance(item, dict) and "ctrl_img" in item:
                item["ctrl_img"] = _local(item["ctrl_img"], base)
    model = body.get("model")
    if isinstance(model, dict):
        _resolve_adapter_paths(model, base)
    for section, key in (("network", "pretrained_lora_path"), ("model", "lora_path")):
        node = body.get(section)
        if isinstance(node, dict) and key in node:
            value = node[key]
            node[key] = (
                {k: _local(v, base) for k, v in value.items()}
                if isinstance(value, dict)
                else _local(value, base)
            )
    for key in ("name_or_path", "extras_name_or_path"):  # a folder, a checkpoint file or one per expert
        value = model.get(key) if isinstance(model, dict) else None
        if isinstance(value, dict):
            model[key] = {k: _local_model(v, base) for k, v in value.items()}
        elif isinstance(value, str):
            model[key] = _local_model(value, base)


def _local_model(raw: Any, base: Path) -> Any:
    """A model folder or checkpoint file beside the config is found there; a hub id stays as written."""
    if not isinstance(raw, str):
        return raw
    explicit = raw.startswith(("./", "../", "~", ".\\", "..\\"))
    if explicit or (not Path(raw).is_absolute() and (base / raw).exists()):
        return _local(raw, base)
    return raw


def _resolve_adapter_paths(model: dict[str, Any], base: Path) -> None:
    """An accuracy-recovery adapter file (after 'uint4|' or in accuracy_recovery_adapter) beside the config
    is found there; anything else stays as written (an absolute path, or owner/repo/file on the Hub)."""

    def local(raw: str) -> str:
        raw = raw.strip()
        explicit = raw.startswith(("./", "../", "~", ".\\", "..\\"))
        if explicit or (raw and not Path(raw).is_absolute() and (base / raw).is_file()):
            return _local(raw, base)
        return raw

    qtype = model.get("qtype")
    if isinstance(qtype, str) and "|" in qtype:
        head, _, tail = qtype.partition("|")
        model["qtype"] = f"{head}|{local(tail)}"
    if isinstance(model.get("accuracy_recovery_adapter"), str):
        model["accuracy_recovery_adapter"] = local(model["accuracy_recovery_adapter"])


# ------------------------------------------------------------------------------------- pydantic errors
_TYPE_WORDS = {
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected text",
    "list_type": "expected a list",
    "dict_type": "expected a mapping of keys",
    "model_type": "expected a mapping of keys (a section)",
    "model_attributes_type": "expected a mapping of keys (a section)",
    "path_type": "expected a file or folder path",
    "finite_number": "expected a finite number (inf and NaN are not numbers a run can use)",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _reword(err: dict[str, Any], loc: Parts, tags: list[str], path: str) -> str:
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = section_model(loc[:-1])
        valid = list(model.model_fields) if model is not None else []
        section = pattern_of(loc[:-1])
        return _unknown(key, valid + synonyms_for(section), path, section)[1]
    if kind == "missing":
        return f"required key '{loc[-1]}' is missing"
    if tags:
        return f"got {_show(value)}; expected one of these types: {', '.join(tags)}"
    if kind == "literal_error":
        return f"got {_show(value)}; allowed values: {ctx.get('expected')}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        bound = f"{bound:g}" if isinstance(bound, float) else bound
        return f"got {_show(value)}; must be {_BOUNDS[kind]} {bound}"
    if kind in _TYPE_WORDS:
        return f"got {_show(value)}; {_TYPE_WORDS[kind]}"
    text = err["msg"].removeprefix("Value error, ")
    return text if not loc or isinstance(value, dict) else f"got {_show(value)}; {text}"


def _user_loc(loc: Parts, renamed: dict[Parts, Parts]) -> Parts:
    for cadence, user in renamed.items():
        if loc[: len(cadence)] == cadence:
            return user + loc[len(cadence) :]
    return loc


def _validation_issues(
    exc: ValidationError, renamed: dict[Parts, Parts], prefix: str, name_path: str
) -> list[tuple[Parts | str, str]]:
    merged: dict[str, tuple[Parts | str, dict[str, Any], Parts, list[str]]] = {}
    for err in exc.errors(include_url=False):
        loc, tags = clean_loc(tuple(err["loc"]))
        user = _user_loc(loc, renamed)
        key = format_path(user)
        if key in merged and tags:
            merged[key][3].extend(tags)
            continue
        where: Parts | str = name_path if user == ("name",) else user
        merged.setdefault(key, (where, err, loc, list(tags)))
    out: list[tuple[Parts | str, str]] = []
    for where, err, loc, tags in merged.values():
        path = where if isinstance(where, str) else (format_path(where, prefix) or prefix or "(top level)")
        out.append((where, _reword(err, loc, tags, path)))
    return out


# ---------------------------------------------------------------------------------------- entry point
def load_config_dict(
    data: dict[str, Any], source: Path | None = None, dataset_config: str | Path | None = None
) -> JobConfig:
    """Validate an already-parsed config (seed or flat layout). `source` (the config file, or its folder)
    anchors relative paths; without it, paths are kept as written. `datasets:` may name a musubi-tuner
    dataset file; `dataset_config` names one that replaces the config's datasets."""
    source = Path(source) if source is not None else None
    if not isinstance(data, dict):
        raise ConfigError(
            [("", f"the top level must be a mapping of keys, got {type(data).__name__}")], source
        )
    seed = is_seed_layout(data)
    if seed:
        body = _unwrap_seed(data, source)
        prefix = SEED_PREFIX
        name_path = f"{SEED_PREFIX}.name" if "name" in data["config"]["process"][0] else "config.name"
    else:
        body = {k: copy.deepcopy(v) for k, v in data.items() if k != "meta"}
        prefix, name_path = "", "name"
    if isinstance(body.get("name"), str):
        body = _replace_name_tags(body, body["name"])

    raw: list[tuple[Parts | str, str]] = []
    base = None if source is None else (source if source.is_dir() else source.parent)
    raw += expand_dataset_file(body, base, dataset_config)  # musubi-tuner dataset file -> datasets
    synonym_issues, renamed = apply_synonyms(body)
    raw += synonym_issues
    raw += check_unsupported(body)
    raw += expand_prompt_flags(body)  # before paths: a --ctrl_img flag is relative to the config too
    if source is not None:
        _resolve_paths(body, source if source.is_dir() else source.parent)
    cfg: JobConfig | None = None
    try:
        cfg = JobConfig.model_validate(body)
    except ValidationError as exc:
        raw += _validation_issues(exc, renamed, prefix, name_path)
    if cfg is not None:
        raw += [(_user_loc(loc, renamed), message) for loc, message in config_issues(cfg)]
    if raw or cfg is None:
        issues = [(w if isinstance(w, str) else format_path(w, prefix), m) for w, m in raw]
        raise ConfigError(issues, source)
    for loc, message in config_warnings(cfg):
        log.warning("%s: %s", format_path(_user_loc(loc, renamed), prefix), message)
    return cfg


def process_prefix(data: dict[str, Any]) -> str:
    """Dotted prefix of the process section in the user's layout ('' for flat)."""
    return SEED_PREFIX if is_seed_layout(data) else ""
