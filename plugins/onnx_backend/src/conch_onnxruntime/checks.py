"""Config against graph, at load: every contradiction is an INVALID_ARG naming both sides.

The rules are Triton's (``ValidateInputs``/``ValidateOutputs``): each config tensor must exist in the
graph with the same datatype; its dims (``reshape.shape`` when given), behind a ``-1`` batch dimension
when ``max_batch_size > 0``, must match the graph's shape (a graph ``-1`` accepts any input dim;
outputs must match exactly); a graph scalar takes only 1s; a batching model needs a free first
dimension; optional inputs only for non-batching models. Conch adds one: a graph input without a
default that the config does not list (sequence control and state inputs need not be listed).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from conch import ConchError, ErrorCode
from conch.tensors import config_to_protocol
from conch_onnxruntime.datatypes import config_type_name
from conch_onnxruntime.signature import GraphSignature, TensorInfo, shape_text

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig, ModelInput, ModelOutput


def check_config(config: ModelConfig, signature: GraphSignature) -> None:
    """Raise the first contradiction between ``config`` and the graph's ``signature``."""
    name = config.name
    batching = config.max_batch_size > 0
    for tensor in config.input:
        info = _find(name, "input", tensor.name, signature.inputs)
        if tensor.optional and batching:
            raise _invalid(
                f"unable to load model '{name}', optional input '{tensor.name}' is not supported for models "
                "that support batching"
            )
        _check_tensor(name, "input", tensor, info, batching, exact=False)
    listed = {tensor.name for tensor in config.input}
    provided = listed | sequence_inputs(config)  # the sequence batcher adds its control and state tensors
    for info in signature.required_inputs():
        if info.name not in provided:
            raise _invalid(
                f"unable to load model '{name}', the model requires input '{info.name}' ({info.type_text}, "
                f"shape {shape_text(info.dims)}) but the configuration lists only {_names(listed)}"
            )
    for output in config.output:
        info = _find(name, "output", output.name, signature.outputs)
        _check_tensor(name, "output", output, info, batching, exact=True)


def sequence_inputs(config: ModelConfig) -> set[str]:
    """Graph inputs the sequence batcher feeds: ``control_input`` names and implicit state inputs."""
    sequencing = config.sequence_batching
    return {c.name for c in sequencing.control_input} | {s.input_name for s in sequencing.state}


def _find(model: str, kind: str, tensor: str, graph: dict[str, TensorInfo]) -> TensorInfo:
    info = graph.get(tensor)
    if info is None:
        raise _invalid(
            f"unable to load model '{model}', configuration expects {kind} '{tensor}' but the model's {kind}s "
            f"are {_names(graph)}"
        )
    return info


def _check_tensor(
    model: str, kind: str, tensor: ModelInput | ModelOutput, info: TensorInfo, batching: bool, exact: bool
) -> None:
    wanted = config_to_protocol(tensor.data_type)
    if wanted != info.datatype:
        raise _invalid(
            f"unable to load model '{model}', configuration expects datatype {config_type_name(wanted)} for {kind} "
            f"'{tensor.name}', model provides {info.type_text}"
        )
    dims = [int(d) for d in (tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims)]
    prefix = f"model '{model}', tensor '{tensor.name}'"
    if batching and (not info.dims or info.dims[0] != -1):
        raise _invalid(
            f"{prefix}: for the model to support batching the shape should have at least 1 dimension and the first "
            f"dimension must be -1; but shape expected by the model is {shape_text(info.dims)}"
        )
    if not info.dims:
        if any(d != 1 for d in dims):
            raise _invalid(
                f"unable to load model '{model}', scalar tensor '{tensor.name}', should only provide 1 in the model "
                f"configuration when the model doesn't support batching. Model configuration provided: "
                f"{shape_text(dims)}."
            )
        return
    full = [-1, *dims] if batching else dims
    same = len(full) == len(info.dims) and all(
        got == want for got, want in zip(info.dims, full, strict=True) if exact or got != -1
    )
    if not same:
        if batching:
            specified = (
                f"{len(full)} dimensions (an initial batch dimension because max_batch_size > 0 followed by the "
                f"explicit tensor shape, making complete shape {shape_text(full)})"
            )
        else:
            specified = f"{len(full)} dimensions (shape {shape_text(full)})"
        raise _invalid(
            f"{prefix}: the model expects {len(info.dims)} dimensions (shape {shape_text(info.dims)}) but the model "
            f"configuration specifies {specified}"
        )


def _names(names: Iterable[str]) -> str:
    listed = [f"'{n}'" for n in names]
    return ", ".join(listed) if listed else "none"


def _invalid(message: str) -> ConchError:
    return ConchError(message, ErrorCode.INVALID_ARG)
