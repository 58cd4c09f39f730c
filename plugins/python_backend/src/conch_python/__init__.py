"""Conch's Python backend: Triton ``model.py`` models, unmodified, one worker process per instance.

Registered through the ``conch.backends`` entry point as backend ``python``. Models import
``triton_python_backend_utils`` (shipped by this distribution) as ``pb_utils``.
"""

from __future__ import annotations

from conch.backend import Backend
from conch.hookimpl import hookimpl
from conch_python.backend import PythonBackend

__all__ = ["PythonBackend"]


@hookimpl
def conch_register_backends() -> list[Backend]:
    return [PythonBackend()]
