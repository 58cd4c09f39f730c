"""Conch's ONNX Runtime backend (``backend: "onnxruntime"``, ``platform: "onnxruntime_onnx"``).

Registered through the ``conch.backends`` entry point; see the package README for the settings.
"""

from __future__ import annotations

from typing import Any

import onnxruntime

from conch import Backend, hookimpl
from conch_onnxruntime.backend import OnnxRuntimeBackend

__all__ = ["OnnxRuntimeBackend"]


@hookimpl
def conch_register_backends() -> list[Backend]:
    return [OnnxRuntimeBackend()]


@hookimpl
def conch_plugin_info() -> dict[str, Any]:
    return {"onnxruntime": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
