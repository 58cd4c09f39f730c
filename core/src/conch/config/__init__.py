"""Model configuration: config.pbtxt parsing with file:line:column errors, Triton's defaults and checks.

- :func:`load_model_config` runs Triton's whole pipeline for one model folder;
- :func:`parse_config_text` parses config.pbtxt text;
- :func:`normalize_config` and :func:`validate_config` are the defaults and the checks on their own;
- :func:`config_to_json` / :func:`config_from_json` are Triton's JSON forms.
"""

from conch.config.jsonify import config_from_json, config_to_json
from conch.config.loader import CONFIG_FILE, ConfigReport, config_path, inspect_model_config, load_model_config
from conch.config.normalize import fill_backend_fields, normalize_config
from conch.config.parse import ConfigError, parse_config_text
from conch.config.validate import Issue, validate_config

__all__ = [
    "CONFIG_FILE",
    "ConfigError",
    "ConfigReport",
    "Issue",
    "config_from_json",
    "config_path",
    "config_to_json",
    "fill_backend_fields",
    "inspect_model_config",
    "load_model_config",
    "normalize_config",
    "parse_config_text",
    "validate_config",
]
