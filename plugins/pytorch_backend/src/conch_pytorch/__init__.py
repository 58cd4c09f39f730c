"""Conch's PyTorch backend (``backend: "pytorch"``, ``platform: "pytorch_libtorch"``).

Registered through the ``conch.backends`` entry point; see the package README for the settings.
Importing this package does not import torch (see :mod:`conch_pytorch.backend`).
"""

from __future__ import annotations

from typing import Any

from conch import Backend, hookimpl
from conch_pytorch.backend import PyTorchBackend, torch_info

__all__ = ["PyTorchBackend"]


@hookimpl
def conch_register_backends() -> list[Backend]:
    return [PyTorchBackend()]


@hookimpl
def conch_plugin_info() -> dict[str, Any]:
    return torch_info()
