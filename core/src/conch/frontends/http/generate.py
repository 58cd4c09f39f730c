"""Triton's generate extension (``/generate``, ``/generate_stream``): flat JSON in, flat JSON out.

A request is one JSON object. Every key that names a model input (top level, or inside
``"parameters"``) becomes that input: a value or a 1-D array, of the input's datatype, shaped as Triton
does it from the model's metadata (fixed dimensions divide the element count, the innermost variable
dimension takes the rest, other variable dimensions are 1). Every other key becomes a request
parameter (string, integer, boolean or number). A response is an object with ``model_name``,
``model_version``, ``id`` (when the request has one), the response's parameters and one key per
output: its value when the output has one element, else its elements as a flat array.
``/generate_stream`` sends each response as a server-sent event (``data: {...}\\n\\n``); errors after
the first event arrive as ``data: {"error": "..."}`` events.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conch import tensors
from conch.errors import ConchError, ErrorCode
from conch.frontends.http import codec, jsonio
from conch.inference import InferenceRequest, InferenceResponse, InferInput

__all__ = ["generate_request", "response_json", "sse_event"]

#: Only this key of the request is a nested object (the others are inputs or parameters).
PARAMETERS = "parameters"


def generate_request(body: Any, model: Any, max_input_size: int) -> InferenceRequest:
    """The inference request a generate body asks for (``model``: the version the URL names)."""
    if not isinstance(body, dict):
        raise ConchError("generate request must be a JSON object", ErrorCode.INVALID_ARG)
    metadata = {item["name"]: item for item in model.metadata()["inputs"]}
    request = InferenceRequest(model_name=model.name, model_version=model.version)
    identifier = body.get("id")
    if identifier is not None:
        if not isinstance(identifier, str):
            raise ConchError("Unable to parse 'id': attempt to access JSON non-string as string", ErrorCode.INVALID_ARG)
        request.id = identifier
    consumed = [0]
    for key, value in body.items():
        if key == "id":
            continue
        if key == PARAMETERS and key not in metadata:
            if not isinstance(value, dict):
                raise ConchError(f"Expected JSON object for keyword: '{PARAMETERS}'", ErrorCode.INVALID_ARG)
            for inner, item in value.items():
                _map(request, inner, item, metadata, consumed, max_input_size)
            continue
        _map(request, key, value, metadata, consumed, max_input_size)
    return request


def _map(
    request: InferenceRequest, key: str, value: Any, metadata: dict[str, Any], consumed: list[int], limit: int
) -> None:
    """``key`` as an input when the model has one of that name, else as a request parameter."""
    spec = metadata.get(key)
    if spec is None:
        request.parameters[key] = _parameter(key, value)
        return
    values = value if isinstance(value, list) else [value]
    dt = tensors.datatype(spec["datatype"])
    data = codec.json_to_array(values, dt, len(values), key)
    size = len(data) if isinstance(data, bytes) else int(data.nbytes)
    if size + consumed[0] > limit:
        raise ConchError(
            f"request size of {consumed[0]} bytes with input '{key}' of size {size} bytes exceeds the maximum "
            f"allowed input size of {limit}. Use --http-max-input-size to increase the limit.",
            ErrorCode.INVALID_ARG,
        )
    consumed[0] += size
    shape = _shape(key, [int(d) for d in spec["shape"]], len(values))
    if isinstance(data, np.ndarray):
        data = data.reshape(shape) if data.size else data
    request.add_input(InferInput(key, spec["datatype"], shape, data))


def _shape(name: str, dims: list[int], count: int) -> list[int]:
    """Triton's two passes: fixed dimensions divide ``count``; the innermost variable one takes the rest."""
    left = count
    for dim in dims:
        if dim != -1:
            if dim == 0 or left % dim:
                raise ConchError(
                    f"The schema can not convert input '{name}' to tensor with proper shape", ErrorCode.INVALID_ARG
                )
            left //= dim
    shape = list(dims)
    for index in range(len(shape) - 1, -1, -1):
        if shape[index] == -1:
            shape[index] = left
            left = 1
    if left != 1:
        raise ConchError(f"The schema can not convert input '{name}' to tensor with proper shape", ErrorCode.INVALID_ARG)
    return shape


def _parameter(key: str, value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)):
        return value
    raise ConchError(
        f"parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'.", ErrorCode.INVALID_ARG
    )


def response_json(response: InferenceResponse) -> bytes:
    """One generate response as JSON: reserved keys, parameters, then each output."""
    document: dict[str, Any] = {}
    if response.id:
        document["id"] = response.id
    document["model_name"] = response.model_name
    document["model_version"] = response.model_version
    for key, value in response.parameters.items():
        if isinstance(value, (str, bool, int, float)):
            document[key] = value
    for tensor in response.outputs:
        dt = tensors.datatype(tensor.datatype)
        array = tensor.data
        if dt.name == "BYTES":
            values: list[Any] = codec.bytes_to_texts(array)[0]
        elif dt.name in ("FP16", "BF16"):
            raise ConchError(
                f"sending {dt.name} data via JSON is not supported. Please use the binary data format for output",
                ErrorCode.INVALID_ARG,
            )
        else:
            values = np.asarray(array).reshape(-1).tolist()
        document[tensor.name] = values[0] if len(values) == 1 else values
    return jsonio.dumps(document)


def sse_event(payload: bytes) -> bytes:
    """A server-sent event carrying one JSON document."""
    return b"data: " + payload + b"\n\n"
