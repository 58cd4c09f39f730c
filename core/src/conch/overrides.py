"""Load-API overrides: a ``config`` JSON that replaces config.pbtxt, and ``file:<path>`` model files.

Triton's load request may carry ``{"config": "<ModelConfig as JSON>"}`` and ``{"file:<version>/<path>":
<bytes>}``. With override files the model is loaded from those files alone, written into a private
temporary folder named after the model (never into the repository); the folder lives as long as the
versions loaded from it. Paths that would leave that folder are refused.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from google.protobuf import json_format

from conch._proto.model_config_pb2 import ModelConfig
from conch.errors import ConchError, ErrorCode

__all__ = ["LoadOverrides", "OverrideFolder", "parse_load_parameters"]

FILE_PREFIX = "file:"


@dataclass
class LoadOverrides:
    """What a load request replaces: the config (None: read config.pbtxt) and the model files."""

    config_json: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.config_json is None and not self.files

    def key(self) -> tuple[Any, ...]:
        """Equal for two requests that ask for exactly the same load."""
        return (self.config_json, tuple(sorted(self.files.items())))

    def config(self) -> ModelConfig | None:
        """The override config, parsed as protobuf JSON (int64 may be strings, as in Triton)."""
        if self.config_json is None:
            return None
        config = ModelConfig()
        try:
            json_format.Parse(self.config_json, config)
        except json_format.ParseError as exc:
            raise ConchError(
                f"Invalid config override: {_short(exc)}", ErrorCode.INVALID_ARG
            ) from None
        return config


def parse_load_parameters(parameters: dict[str, Any]) -> LoadOverrides:
    """Check the load parameters (as the frontends decoded them) and collect the overrides."""
    overrides = LoadOverrides()
    for key, value in parameters.items():
        if key == "config":
            if not isinstance(value, str):
                raise ConchError("load parameter 'config' must be a JSON string", ErrorCode.INVALID_ARG)
            overrides.config_json = value
        elif key.startswith(FILE_PREFIX):
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ConchError(f"load parameter '{key}' must be bytes", ErrorCode.INVALID_ARG)
            overrides.files[key[len(FILE_PREFIX) :]] = bytes(value)
        else:
            raise ConchError(f"unrecognized load parameter '{key}'.", ErrorCode.INVALID_ARG)
    if overrides.files and overrides.config_json is None:
        raise ConchError(
            "Load parameter 'config' must be specified for model file override",
            ErrorCode.INVALID_ARG,
        )
    for path in overrides.files:
        _checked_relative(path)
    return overrides


class OverrideFolder:
    """A private model folder ``<tmp>/<model>/`` holding a load request's override files."""

    def __init__(self, model: str, files: dict[str, bytes]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="conch-override-"))
        self.path = self.root / model
        self.path.mkdir()
        try:
            for relative, content in files.items():
                target = self.path.joinpath(*_checked_relative(relative).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not target.resolve().is_relative_to(self.path.resolve()):
                    raise ConchError(_escape_message(relative), ErrorCode.INVALID_ARG)
                target.write_bytes(content)
        except OSError as exc:
            self.remove()
            raise ConchError(
                f"cannot write override file '{FILE_PREFIX}{relative}': {exc.strerror}",
                ErrorCode.INVALID_ARG,
            ) from None
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _checked_relative(relative: str) -> PurePosixPath:
    """``relative`` as a path inside the model folder; absolute paths and ``..`` that escape are refused."""
    if not relative or "\x00" in relative or "\\" in relative:
        raise ConchError(_escape_message(relative), ErrorCode.INVALID_ARG)
    path = PurePosixPath(relative)
    if path.is_absolute():
        raise ConchError(_escape_message(relative), ErrorCode.INVALID_ARG)
    depth = 0
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                raise ConchError(_escape_message(relative), ErrorCode.INVALID_ARG)
            parts.pop()
        elif part != ".":
            depth += 1
            parts.append(part)
    if not parts:
        raise ConchError(_escape_message(relative), ErrorCode.INVALID_ARG)
    return PurePosixPath(*parts)


def _escape_message(relative: str) -> str:
    return (
        f"Invalid file parameter '{FILE_PREFIX}{relative}': the path must be relative "
        "and stay within the model directory (e.g. 'file:1/model.onnx')"
    )


def _short(exc: Exception) -> str:
    text = str(exc)
    return text.removeprefix("Failed to parse ").strip() or type(exc).__name__
