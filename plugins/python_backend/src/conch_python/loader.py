"""Finding and importing a model's ``model.py`` the way Triton's Python stub does.

Triton appends ``<model>/<version>`` and ``<model>`` to ``sys.path`` and imports ``<version>.model``,
so the version folder is a package and ``from . import helper`` works. Python-based backends
(``runtime: "model.py"`` with another backend name) take ``model.py`` from the backend's folder.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conch.errors import ConchError, ErrorCode

DEFAULT_BACKEND_DIRECTORY = "/opt/tritonserver/backends"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's Python file is and how it is imported."""

    path: Path  # .../<version>/model.py
    package_dir: Path  # the folder whose name is the package (the version folder)

    @property
    def module(self) -> str:
        return f"{self.package_dir.name}.{self.path.stem}"


def locate(version_dir: Path, filename: str, backend: str, runtime: str, settings: dict[str, str]) -> ModelSource:
    """The model file for a config: ``<version>/<default_model_filename>``, or a python-based backend's."""
    if backend != "python" and runtime:
        if os.path.isabs(runtime):
            path = Path(runtime)
        else:
            root = settings.get("backend-directory") or os.environ.get("CONCH_BACKEND_DIRECTORY") or DEFAULT_BACKEND_DIRECTORY
            path = Path(root) / backend / runtime
        if not path.is_file():
            raise ConchError(
                f"python-based backend '{backend}': {path} not found; put the backend's folder (with {runtime}) in "
                "--backend-config=python,backend-directory=<dir> or CONCH_BACKEND_DIRECTORY",
                ErrorCode.NOT_FOUND,
            )
        return ModelSource(path, path.parent)
    path = version_dir / (filename or "model.py")
    if not path.is_file():
        raise ConchError(
            f"Failed to load model file '{path}': no such file (the Python backend imports "
            f"<model>/<version>/{filename or 'model.py'})",
            ErrorCode.NOT_FOUND,
        )
    return ModelSource(path, version_dir)


def import_model_class(source: ModelSource, unique: str | None = None) -> Any:
    """Import the file and return its ``TritonPythonModel`` class.

    ``unique`` (in-process mode) imports under a package name of its own, so that several models whose
    version folders share a name do not collide in ``sys.modules``.
    """
    for folder in (str(source.package_dir), str(source.package_dir.parent)):
        if folder not in sys.path:
            sys.path.append(folder)
    if unique is None:
        module_name = source.module
    else:
        package = types.ModuleType(unique)
        package.__path__ = [str(source.package_dir)]
        sys.modules[unique] = package
        module_name = f"{unique}.{source.path.stem}"
    module = importlib.import_module(module_name)
    model_class = getattr(module, "TritonPythonModel", None)
    if model_class is None:
        raise ConchError(f"{source.path} does not define class TritonPythonModel", ErrorCode.INVALID_ARG)
    return model_class


def initialize_args(
    config_json: str, kind: str, instance_name: str, device_id: int, model_dir: Path, version: int, name: str
) -> dict[str, str]:
    """The dict of strings ``initialize(args)`` receives, as in Triton."""
    return {
        "model_config": config_json,
        "model_instance_kind": kind,
        "model_instance_name": instance_name,
        "model_instance_device_id": str(device_id),
        "model_repository": str(model_dir),
        "model_version": str(version),
        "model_name": name,
    }
