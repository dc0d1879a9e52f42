"""Secrets stay out of everything a run writes or shows: config.yaml, logs, metrics, model cards, the UI.

Secret config fields are marked in the schema (`json_schema_extra={"secret": True}`: webhook URLs, which
carry their token in the path, and webhook auth tokens). `redact_config` blanks them in the resolved
config; `redact_config_text` blanks them in a config file's text as the user wrote it (the UI shows that
text); `Redactor.scrub` removes them, and the Hub / W&B tokens from the environment, from error messages
before they are logged. Tokens themselves are never config keys: W&B and the Hub read theirs from the
environment or their own login.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel

REDACTED = "<redacted>"
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
_MIN_SECRET = 6  # shorter strings are not scrubbed from text (they would hit ordinary words)


def is_secret_field(model: type[BaseModel] | BaseModel, name: str) -> bool:
    extra = type(model).model_fields[name] if isinstance(model, BaseModel) else model.model_fields[name]
    schema_extra = extra.json_schema_extra
    return isinstance(schema_extra, dict) and bool(schema_extra.get("secret"))


def _walk(model: BaseModel, data: dict[str, Any], found: list[str]) -> None:
    """Blank the secret fields of `model` in `data` (its JSON dump), collecting their values."""
    for name in type(model).model_fields:
        if name not in data:
            continue
        value = getattr(model, name)
        if is_secret_field(model, name):
            if isinstance(value, str) and value:
                found.append(value)
                data[name] = REDACTED
            continue
        if isinstance(value, BaseModel) and isinstance(data[name], dict):
            _walk(value, data[name], found)
        elif isinstance(value, list) and isinstance(data[name], list):
            for item, dumped in zip(value, data[name], strict=False):
                if isinstance(item, BaseModel) and isinstance(dumped, dict):
                    _walk(item, dumped, found)


def redact_config(cfg: BaseModel, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """`cfg.model_dump(mode="json")` with every secret field replaced by REDACTED."""
    data = cfg.model_dump(mode="json") if data is None else data
    _walk(cfg, data, [])
    return data


def secret_values(cfg: BaseModel) -> list[str]:
    found: list[str] = []
    _walk(cfg, cfg.model_dump(mode="json"), found)
    return found


def _secret_field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Names (and accepted aliases) of secret fields anywhere in the schema: the keys
    `redact_config_text` looks for."""
    from pydantic import AliasChoices

    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names: set[str] = set()
    for name, field in model.model_fields.items():
        if is_secret_field(model, name):
            names.add(name)
            alias = field.validation_alias
            if isinstance(alias, str):
                names.add(alias)
            elif isinstance(alias, AliasChoices):
                names.update(a for a in alias.choices if isinstance(a, str))
        for sub in _models_in(field.annotation):
            names |= _secret_field_names(sub, seen)
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


_HOOK_KEYS = {"webhooks", "webhook_config"}


def _literal_secrets(node: Any, keys: set[str], out: list[str]) -> None:
    """Secret values in a parsed config: the secret keys of webhook entries, and bare webhook URLs."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _HOOK_KEYS:
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, str):
                        out.append(item)  # the URL shorthand: webhooks: [https://...]
                    elif isinstance(item, dict):
                        out.extend(v for k, v in item.items() if k in keys and isinstance(v, str))
            else:
                _literal_secrets(value, keys, out)
    elif isinstance(node, list):
        for item in node:
            _literal_secrets(item, keys, out)


def redact_config_text(text: str) -> str:
    """The config text with every literal secret value replaced by REDACTED (formatting and comments kept;
    `${VAR}` references are not secrets and stay). Text that does not parse is returned unchanged: it was
    never a config Cadence accepted."""
    from cadence.config.schema import JobConfig

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    found: list[str] = []
    _literal_secrets(data, _secret_field_names(JobConfig), found)
    for value in sorted(set(found), key=len, reverse=True):
        if "${" not in value and len(value) >= _MIN_SECRET:
            text = text.replace(value, REDACTED)
    return text


class Redactor:
    """Removes known secret strings from text (error messages of network libraries quote URLs)."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets: list[str] = []
        for value in [*(secrets or []), *(os.environ.get(name, "") for name in SECRET_ENV)]:
            self.add(value)

    def add(self, value: str) -> None:
        """`value` and, for a URL, its path and query (what HTTP errors quote without the host)."""
        candidates = [value]
        if "://" in value:
            parts = urlsplit(value)
            candidates.append(parts.path + (f"?{parts.query}" if parts.query else ""))
        for candidate in candidates:
            if len(candidate) >= _MIN_SECRET and candidate not in self.secrets:
                self.secrets.append(candidate)
        self.secrets.sort(key=len, reverse=True)

    @classmethod
    def for_config(cls, cfg: BaseModel) -> Redactor:
        return cls(secret_values(cfg))

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


class RedactingFilter(logging.Filter):
    """A handler filter that scrubs secrets from every record it passes, whoever logged it (urllib3 logs
    request paths at DEBUG, and a webhook URL's path is its token)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = self.redactor.scrub(text)
        if clean != text:
            record.msg, record.args = clean, None
        return True


def redact_logs(redactor: Redactor) -> Callable[[], None]:
    """Scrub secrets from everything the root logger's handlers write (console, log.txt, the UI's job log);
    returns the function that takes the filter off again."""
    if not redactor.secrets:
        return lambda: None
    handlers = list(logging.getLogger().handlers)
    guard = RedactingFilter(redactor)
    for handler in handlers:
        handler.addFilter(guard)

    def remove() -> None:
        for handler in handlers:
            handler.removeFilter(guard)

    return remove
