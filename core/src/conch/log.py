"""Logging with Triton's line formats and switches, changeable at run time (the logging extension).

The ``conch`` logger's level lets through the lowest kind of message any switch enables, so a
disabled kind costs one ``isEnabledFor``; a filter on the handler then applies each switch on its
own (``log_info`` off keeps warnings, ``log_warning`` off keeps errors). Verbose lines are DEBUG
records, shown at ``log_verbose_level`` 1 and above whatever ``log_info`` says, as in Triton.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any

_LEVEL_LETTER = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E", logging.CRITICAL: "E"}

#: The values ``log_format`` takes (``--log-format``), spelled as Triton spells them.
FORMATS = ("default", "ISO8601")

#: The settings the logging extension changes at run time, with their types, in the order Triton
#: applies them (each is applied before the next is checked, so an error keeps the earlier ones).
RUNTIME_SETTINGS: tuple[tuple[str, type], ...] = (
    ("log_info", bool),
    ("log_warning", bool),
    ("log_error", bool),
    ("log_verbose_level", int),
    ("log_format", str),
)


@dataclasses.dataclass
class LogSettings:
    """The logging extension's settings, named as in ``GET /v2/logging``."""

    log_file: str = ""
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"


_settings = LogSettings()
_handler: logging.Handler | None = None


class TritonFormatter(logging.Formatter):
    """``I1125 02:03:25.829575 3355 models.py:441] message`` (default) or ISO8601 lines."""

    def __init__(self, iso8601: bool = False, escape: bool | None = None) -> None:
        super().__init__()
        self.iso8601 = iso8601
        if escape is None:
            escape = os.environ.get("TRITON_SERVER_ESCAPE_LOG_MESSAGES", "1") not in ("0", "false")
        self.escape = escape

    def format(self, record: logging.LogRecord) -> str:
        letter = _LEVEL_LETTER.get(record.levelno, "I")
        where = f"{os.path.basename(record.pathname)}:{record.lineno}"
        message = record.getMessage()
        if record.exc_info:
            message = message + "\n" + self.formatException(record.exc_info)
        if self.escape and not message.startswith("\n"):
            # Triton quotes and JSON-escapes messages (tables, which start on a new line, excepted).
            message = json.dumps(message, ensure_ascii=False)
        if self.iso8601:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            return f"{stamp} {letter} {record.process} {where}] {message}"
        local = time.localtime(record.created)
        micros = int((record.created % 1) * 1_000_000)
        stamp = time.strftime("%m%d %H:%M:%S", local)
        return f"{letter}{stamp}.{micros:06d} {record.process} {where}] {message}"


class _Switches(logging.Filter):
    """Drops the records whose kind (verbose, info, warning, error) is switched off."""

    def filter(self, record: logging.LogRecord) -> bool:
        level = record.levelno
        if level < logging.INFO:
            return _settings.log_verbose_level > 0
        if level < logging.WARNING:
            return _settings.log_info
        if level < logging.ERROR:
            return _settings.log_warning
        return _settings.log_error


def configure(
    verbose: int = 0,
    info: bool = True,
    warning: bool = True,
    error: bool = True,
    log_format: str = "default",
    log_file: str | None = None,
) -> None:
    """Set up the ``conch`` logger (and uvicorn's) as tritonserver's log flags ask."""
    global _handler, _settings
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(TritonFormatter())
    handler.addFilter(_Switches())
    root = logging.getLogger("conch")
    root.handlers[:] = [handler]
    root.propagate = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        other = logging.getLogger(name)
        other.handlers[:] = [handler]
        other.propagate = False
    _handler = handler
    _settings = LogSettings(log_file or "", info, warning, error, max(verbose, 0), log_format)
    _apply()


def settings() -> dict[str, Any]:
    """The current settings, every key, in Triton's order."""
    return dataclasses.asdict(_settings)


def update(**changes: Any) -> None:
    """Change run-time settings (keys of :data:`RUNTIME_SETTINGS`, values already type-checked).

    A verbose level is narrowed as Triton narrows it: to 32 bits, and 0 past ``INT32_MAX``.
    """
    global _settings
    level = changes.get("log_verbose_level")
    if level is not None:
        level &= 0xFFFFFFFF
        changes["log_verbose_level"] = 0 if level > 0x7FFFFFFF else level
    _settings = dataclasses.replace(_settings, **changes)
    _apply()


def _apply() -> None:
    verbose = _settings.log_verbose_level
    if verbose > 0:
        level = logging.DEBUG
    elif _settings.log_info:
        level = logging.INFO
    elif _settings.log_warning:
        level = logging.WARNING
    elif _settings.log_error:
        level = logging.ERROR
    else:
        level = logging.CRITICAL + 1
    logging.getLogger("conch").setLevel(level)
    if _handler is None:
        return
    formatter = _handler.formatter
    if isinstance(formatter, TritonFormatter):
        formatter.iso8601 = _settings.log_format == "ISO8601"
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
