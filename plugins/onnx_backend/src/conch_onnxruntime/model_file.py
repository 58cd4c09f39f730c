"""Where a version's ONNX graph is: ``<version>/model.onnx``, or ``model.onnx`` inside that folder."""

from __future__ import annotations

from pathlib import Path

from conch import ConchError, ErrorCode, ModelContext

GRAPH_FILE = "model.onnx"


def graph_path(context: ModelContext) -> Path:
    """The ``.onnx`` file to load; a folder (a graph with external data beside it) holds ``model.onnx``.

    Raises UNAVAILABLE with Triton's text when it is missing.
    """
    path = context.version_dir / (context.config.default_model_filename or GRAPH_FILE)
    if path.is_dir():
        path = path / GRAPH_FILE
    if not path.is_file():
        raise ConchError(f"unable to find '{path}' for model instance '{context.name}'", ErrorCode.UNAVAILABLE)
    return path
