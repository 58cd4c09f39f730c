"""Triton's onnxruntime auto-complete: inputs, outputs and ``max_batch_size`` from the graph.

Nothing is filled when the config lists both inputs and outputs. Otherwise: when every input and
output has a free first dimension the model can batch, and a ``max_batch_size`` of 0 becomes the
``default-max-batch-size`` setting (4 unless set); a batching model with ``max_batch_size > 1`` and
no scheduler gets ``dynamic_batching {}``. A graph scalar becomes ``dims: [1]`` (with an empty
``reshape`` when batching). Missing inputs or outputs are filled from the graph, in graph order.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from conch import ConchError, ErrorCode
from conch.tensors import BY_NAME
from conch_onnxruntime.checks import sequence_inputs
from conch_onnxruntime.signature import GraphSignature, TensorInfo

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig, ModelInput, ModelOutput

log = logging.getLogger("conch.onnxruntime")


def needs_graph(config: ModelConfig) -> bool:
    """Whether auto-complete has anything to do (Triton skips configs that list inputs and outputs)."""
    return not (len(config.input) + len(config.batch_input) > 0 and len(config.output) > 0)


def auto_complete(config: ModelConfig, signature: GraphSignature, default_max_batch_size: int) -> None:
    """Fill ``config`` in place from ``signature``; raise INVALID_ARG when batching contradicts the graph."""
    name = config.name
    if signature.can_batch():
        if config.max_batch_size == 0:
            config.max_batch_size = max(default_max_batch_size, 0)
            log.warning(
                "autofilled max_batch_size to %d for model '%s' since batching is supported but no max_batch_size "
                "is specified in model configuration. Must specify max_batch_size to utilize autofill with a larger "
                "max batch size",
                config.max_batch_size,
                name,
            )
        if config.max_batch_size > 1 and not (
            config.HasField("dynamic_batching") or config.HasField("sequence_batching")
        ):
            config.dynamic_batching.SetInParent()
    elif config.max_batch_size != 0:
        raise ConchError(
            f"autofill failed for model '{name}': model does not support batching while non-zero max_batch_size "
            f"is specified (max_batch_size: {config.max_batch_size}; the graph has "
            f"{_first_dims(signature)})",
            ErrorCode.INVALID_ARG,
        )
    batching = config.max_batch_size > 0
    if not config.input:
        fed = sequence_inputs(config)  # the sequence batcher's control and state tensors are not inputs
        for info in signature.required_inputs():
            if info.name not in fed:
                _fill(config.input.add(), info, batching, name)
    if not config.output:
        for info in signature.outputs.values():
            _fill(config.output.add(), info, batching, name)


def _fill(tensor: ModelInput | ModelOutput, info: TensorInfo, batching: bool, model: str) -> None:
    if info.datatype is None:
        raise ConchError(
            f"unable to autofill for '{model}': tensor '{info.name}' has type {info.ort_type}, which has no "
            "Triton datatype",
            ErrorCode.INVALID_ARG,
        )
    tensor.name = info.name
    tensor.data_type = BY_NAME[info.datatype].config_number  # type: ignore[assignment]
    dims = list(info.dims[1:] if batching else info.dims)
    if dims:
        tensor.dims.extend(dims)
    else:
        tensor.dims.append(1)
        if batching:
            tensor.reshape.SetInParent()


def _first_dims(signature: GraphSignature) -> str:
    """Which tensors stop batching, for the error message."""
    fixed = [
        f"'{info.name}' shape [{','.join(map(str, info.dims))}]"
        for info in [*signature.required_inputs(), *signature.outputs.values()]
        if not info.dims or info.dims[0] != -1
    ]
    return "tensors without a free first dimension: " + ", ".join(fixed)
