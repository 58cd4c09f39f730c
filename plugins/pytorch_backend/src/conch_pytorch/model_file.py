"""Where a version's TorchScript file is: ``<version>/model.pt`` unless the config names another."""

from __future__ import annotations

from pathlib import Path

from conch import ConchError, ErrorCode, ModelContext

MODEL_FILE = "model.pt"


def model_path(context: ModelContext) -> Path:
    """The file to load; raises UNAVAILABLE with Triton's text when it is missing."""
    path = context.version_dir / (context.config.default_model_filename or MODEL_FILE)
    if not path.is_file():
        raise ConchError(f"unable to find '{path}' for model instance '{context.name}'", ErrorCode.UNAVAILABLE)
    return path
