"""ONNX Runtime exceptions as Triton-style errors that name the model."""

from __future__ import annotations

import re

from conch import ConchError, ErrorCode

# ONNX Runtime's Python exceptions read "[ONNXRuntimeError] : <code> : <CODE_NAME> : <message>".
_ORT_MESSAGE = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*(\d+)\s*:\s*\w+\s*:\s*(.*)$", re.DOTALL)


def ort_error_text(exc: BaseException) -> str:
    """Triton's wording of an ONNX Runtime failure: ``onnx runtime error <code>: <message>``."""
    text = str(exc).strip()
    match = _ORT_MESSAGE.match(text)
    if match:
        return f"onnx runtime error {match.group(1)}: {match.group(2).strip()}"
    return f"onnx runtime error: {text or type(exc).__name__}"


def load_error(model: str, exc: BaseException) -> ConchError:
    """A failure to create a session for ``model`` (bad file, unsupported operator, bad option)."""
    return ConchError(f"unable to load model '{model}': {ort_error_text(exc)}", ErrorCode.INTERNAL)


def run_error(model: str, exc: BaseException) -> ConchError:
    """A failure of ``InferenceSession.run`` for ``model``."""
    return ConchError(f"{ort_error_text(exc)} (model '{model}')", ErrorCode.INTERNAL)
