"""Typed job configuration: schema, loaders for YAML/TOML/JSON (seed and flat layouts), errors."""

from cadence.config.errors import ConfigError
from cadence.config.loader import load_config, load_config_dict
from cadence.config.schema import JobConfig

__all__ = ["ConfigError", "JobConfig", "load_config", "load_config_dict"]
