"""Logging set-up with Triton's line formats (``--log-format default|ISO8601``) and switches."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_LEVEL_LETTER = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E", logging.CRITICAL: "E"}


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


def configure(
    verbose: int = 0,
    info: bool = True,
    warning: bool = True,
    error: bool = True,
    log_format: str = "default",
    log_file: str | None = None,
) -> None:
    """Set up the ``conch`` logger (and uvicorn's) as tritonserver's log flags ask."""
    if verbose > 0:
        level = logging.DEBUG
    elif info:
        level = logging.INFO
    elif warning:
        level = logging.WARNING
    elif error:
        level = logging.ERROR
    else:
        level = logging.CRITICAL + 1
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(TritonFormatter(iso8601=log_format.upper() == "ISO8601"))
    root = logging.getLogger("conch")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        other = logging.getLogger(name)
        other.handlers[:] = [handler]
        other.setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
        other.propagate = False
