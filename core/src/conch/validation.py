"""Request validation against a model's config, in Triton's order and with Triton's messages.

Runs before anything reaches a scheduler or backend. On success every input holds a numpy array
(raw bytes become zero-copy views), ``request.batch_size`` is set and ``request.outputs`` lists the
outputs to produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from conch import tensors
from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferInput, RequestedOutput

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig


@dataclass(frozen=True, slots=True)
class InputSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None
    optional: bool
    is_shape_tensor: bool


@dataclass(frozen=True, slots=True)
class Signature:
    """What validation needs from a ModelConfig, precomputed once per loaded model version."""

    model_name: str
    max_batch_size: int
    inputs: dict[str, InputSpec]
    output_names: tuple[str, ...]
    required_input_count: int

    @classmethod
    def from_config(cls, config: ModelConfig) -> Signature:
        inputs = {
            inp.name: InputSpec(
                name=inp.name,
                datatype=tensors.config_to_protocol(inp.data_type),
                dims=tuple(int(d) for d in inp.dims),
                reshape=tuple(int(d) for d in inp.reshape.shape) if inp.HasField("reshape") else None,
                optional=inp.optional,
                is_shape_tensor=inp.is_shape_tensor,
            )
            for inp in config.input
        }
        return cls(
            model_name=config.name,
            max_batch_size=config.max_batch_size,
            inputs=inputs,
            output_names=tuple(out.name for out in config.output),
            required_input_count=sum(1 for spec in inputs.values() if not spec.optional),
        )


def _dims(shape: list[int] | tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _error(request: InferenceRequest, message: str) -> ConchError:
    return ConchError(request.log_prefix + message, ErrorCode.INVALID_ARG)


def validate(request: InferenceRequest, sig: Signature) -> None:
    """Check ``request`` against ``sig``; raise :class:`ConchError` (INVALID_ARG) with Triton's text."""
    model = sig.model_name
    if request.outputs:
        for output in request.outputs:
            if output.name not in sig.output_names:
                raise ConchError(f"unexpected inference output '{output.name}' for model '{model}'")
    else:
        request.outputs = [RequestedOutput(name) for name in sig.output_names]

    count = len(request.inputs)
    if count > len(sig.inputs) or count < sig.required_input_count:
        _raise_input_count(request, sig)

    batch_size = 0
    for name, tensor in request.inputs.items():
        spec = sig.inputs.get(name)
        if spec is None:
            raise ConchError(f"unexpected inference input '{name}' for model '{model}'")
        if sig.max_batch_size > 0 and not spec.is_shape_tensor:
            if not tensor.shape:
                raise _error(request, f"input '{name}' has no shape but model requires batch dimension for '{model}'")
            if batch_size == 0:
                batch_size = tensor.shape[0]
            elif tensor.shape[0] != batch_size:
                raise _error(request, f"input '{name}' batch size does not match other inputs for '{model}'")
    if batch_size > sig.max_batch_size:
        raise _error(request, f"inference request batch-size must be <= {sig.max_batch_size} for '{model}'")
    request.batch_size = batch_size

    for name, tensor in request.inputs.items():
        spec = sig.inputs[name]
        if tensor.datatype != spec.datatype:
            raise _error(
                request,
                f"inference input '{name}' data-type is '{tensor.datatype}', but model '{model}' "
                f"expects '{spec.datatype}'",
            )
        batched = sig.max_batch_size > 0 and not spec.is_shape_tensor
        shape = tensor.shape[1:] if batched else tensor.shape
        _check_shape(request, sig, spec, tensor.shape, shape)
        _materialise(request, tensor, spec, model, batched)
        if spec.reshape is not None:
            assert isinstance(tensor.data, np.ndarray)
            tensor.data = tensor.data.reshape(_reshaped(spec, shape, tensor.shape[0] if batched else None))


def _reshaped(spec: InputSpec, shape: list[int], batch: int | None) -> list[int]:
    """The shape the backend sees for an input with ``reshape``: variable dims carried over in order."""
    assert spec.reshape is not None
    variable = [got for want, got in zip(spec.dims, shape, strict=False) if want == -1]
    out = [variable.pop(0) if dim == -1 else dim for dim in spec.reshape]
    return ([batch] if batch is not None else []) + out


def _check_shape(
    request: InferenceRequest, sig: Signature, spec: InputSpec, full: list[int], shape: list[int]
) -> None:
    match = len(spec.dims) == len(shape)
    if match:
        for want, got in zip(spec.dims, shape, strict=False):
            if got == -1:
                raise _error(
                    request,
                    f"All input dimensions should be specified for input '{spec.name}' for model "
                    f"'{sig.model_name}', got {_dims(full)}",
                )
            if want != -1 and want != got:
                match = False
                break
    if not match:
        expected = ([-1] if sig.max_batch_size > 0 else []) + list(spec.dims)
        note = (
            "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be "
            "prepended to each input shape. If you want to specify the full shape including the batch dim "
            "in your input dims config, try setting max_batch_size to zero. See the model configuration "
            "docs for more info on max_batch_size."
            if sig.max_batch_size > 0
            else ""
        )
        raise _error(
            request,
            f"unexpected shape for input '{spec.name}' for model '{sig.model_name}'. Expected "
            f"{_dims(expected)}, got {_dims(full)}. {note}",
        )


def _materialise(request: InferenceRequest, tensor: InferInput, spec: InputSpec, model: str, batched: bool) -> None:
    """Turn raw bytes into a numpy view after checking the byte size; check array sizes too."""
    dt = tensors.datatype(spec.datatype)
    data = tensor.data
    if data is None:
        raise _error(request, f"input '{tensor.name}' has no data")
    # Triton quirk kept: a batching model asked for batch 0 is checked against the shape without it.
    zero_batch = batched and request.batch_size == 0
    count = tensors.element_count(tensor.shape[1:] if zero_batch else tensor.shape)
    if isinstance(data, np.ndarray):
        if data.size != count:
            raise _error(
                request,
                f"input byte size mismatch for input '{tensor.name}' for model '{model}'. Expected "
                f"{count * dt.itemsize}, got {data.size * dt.itemsize}",
            )
        if data.shape != tuple(tensor.shape):
            tensor.data = data.reshape(tensor.shape)
        return
    if dt.name == "BYTES":
        tensor.data = _decode_bytes(request, data, count, tensor.name, model).reshape(tensor.shape)
        return
    expected = count * dt.itemsize
    if len(data) != expected:
        raise _error(
            request,
            f"input byte size mismatch for input '{tensor.name}' for model '{model}'. Expected "
            f"{expected}, got {len(data)}",
        )
    tensor.data = np.frombuffer(data, dtype=dt.numpy, count=count).reshape(tensor.shape)


def _decode_bytes(
    request: InferenceRequest, data: bytes | memoryview, count: int, name: str, model: str
) -> np.ndarray:
    try:
        return tensors.deserialize_bytes(data, count, f"inference input '{name}' for model '{model}'")
    except ValueError as exc:
        raise _error(request, str(exc)) from None


def _raise_input_count(request: InferenceRequest, sig: Signature) -> None:
    missing = [name for name, spec in sig.inputs.items() if not spec.optional and name not in request.inputs]
    missing_text = "[" + ",".join(f"'{name}'" for name in missing) + "]" if missing else "]"
    got_text = "[" + ",".join(f"'{name}'" for name in request.inputs) + "]"
    count = len(request.inputs)
    if len(sig.inputs) == sig.required_input_count:
        head = f"expected {len(sig.inputs)} inputs but got {count} inputs for model '{sig.model_name}'."
    else:
        head = (
            f"expected number of inputs between {sig.required_input_count} and {len(sig.inputs)} but got "
            f"{count} inputs for model '{sig.model_name}'."
        )
    raise _error(
        request,
        f"{head} Got input(s) {got_text}, but missing required input(s) {missing_text}. "
        "Please provide all required input(s).",
    )

