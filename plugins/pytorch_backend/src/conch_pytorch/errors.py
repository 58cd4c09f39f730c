"""torch exceptions as Triton-style errors that name the model."""

from __future__ import annotations

from conch import ConchError, ErrorCode


def torch_error_text(exc: BaseException) -> str:
    """The first meaningful lines of a torch failure (TorchScript appends the model's traceback)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    # TorchScript errors read "The following operation failed in the TorchScript interpreter. ...
    # RuntimeError: <the model's message>": the last line holds what the model said.
    if len(lines) > 1 and "TorchScript interpreter" in lines[0]:
        last = lines[-1].strip()
        return last.removeprefix("builtins.")
    return text


def load_error(model: str, exc: BaseException) -> ConchError:
    """A failure to load ``model``'s file (not TorchScript, truncated, made by a newer torch)."""
    return ConchError(f"unable to load model '{model}': {torch_error_text(exc)}", ErrorCode.INTERNAL)


def run_error(model: str, exc: BaseException) -> ConchError:
    """A failure of ``forward()`` for ``model``."""
    return ConchError(f"PyTorch execute failure: {torch_error_text(exc)} (model '{model}')", ErrorCode.INTERNAL)
