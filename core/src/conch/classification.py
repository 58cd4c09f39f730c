"""Triton's classification extension: an output's top-N classes instead of its values, with labels.

A requested output with ``classification: N`` (HTTP parameter, gRPC int64 parameter) comes back as a
BYTES tensor of ``"<value>:<index>[:<label>]"`` strings, N per batch item, highest value first. Labels
come from the output's ``label_filename`` (in the model folder, one per line; an empty line gives no
label), read once when the model loads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from conch.errors import ConchError, ErrorCode

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig

#: An output's labels by output name, or None.
Labels = Callable[[str], "list[str] | None"]

_CLASSIFIABLE = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP32", "FP64"})


def read_labels(config: ModelConfig, model_dir: Path) -> dict[str, list[str]]:
    """Every output's labels from its ``label_filename``; a missing file fails the load (Triton's text)."""
    labels: dict[str, list[str]] = {}
    for output in config.output:
        if not output.label_filename:
            continue
        path = model_dir / output.label_filename
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise ConchError(
                f"failed to open text file for read {path}: {exc.strerror or exc}", ErrorCode.INTERNAL
            ) from None
        labels[output.name] = text.splitlines()
    return labels


def classify(datatype: str, array: np.ndarray, classes: int, batching: bool, labels: list[str] | None) -> np.ndarray:
    """The top ``classes`` of each batch item (of the whole tensor when ``batching`` is false)."""
    if datatype not in _CLASSIFIABLE:
        raise ConchError(
            f"class result not available for output due to unsupported type '{datatype}'", ErrorCode.INVALID_ARG
        )
    is_float = datatype.startswith("FP")
    batch = int(array.shape[0]) if batching and array.ndim > 0 else 0
    rows = array.reshape(max(batch, 1), -1)
    results: list[bytes] = []
    for row in rows:
        values = row.tolist()
        order = sorted(range(len(values)), key=values.__getitem__, reverse=True)[:classes]
        for index in order:
            text = f"{values[index]:f}:{index}" if is_float else f"{values[index]}:{index}"
            if labels and index < len(labels) and labels[index]:
                text += f":{labels[index]}"
            results.append(text.encode("utf-8"))
    out = np.empty(len(results), dtype=object)
    out[:] = results
    width = min(classes, rows.shape[1])
    return out.reshape([batch, width] if batch else [width])
