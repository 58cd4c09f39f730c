"""Server side of BLS: a model's ``InferenceRequest(...).exec()`` as an ordinary request to the server.

The request goes through :meth:`InferenceService.submit`, so it is validated and scheduled (queued,
batched) exactly like a client's; model control calls go to the service's load and unload.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferInput, RequestedOutput
from conch.service import InferenceService, parse_version


def no_service() -> ConchError:
    return ConchError(
        "BLS is not available: this server does not give backends a handle on the inference service",
        ErrorCode.UNSUPPORTED,
    )


def build_request(
    model_name: str,
    version: int,
    request_id: str,
    outputs: list[str],
    tensors: list[tuple[str, str, np.ndarray]],
    parameters: str,
    correlation_id: int | str,
    flags: int,
    timeout: int,
) -> InferenceRequest:
    """A Conch request for a BLS call."""
    params: dict[str, Any] = json.loads(parameters) if parameters else {}
    if correlation_id:
        params["sequence_id"] = correlation_id
    if flags & 1:
        params["sequence_start"] = True
    if flags & 2:
        params["sequence_end"] = True
    if timeout:
        params["timeout"] = timeout
    request = InferenceRequest(model_name=model_name, model_version=version, id=request_id, parameters=params)
    for name, datatype, array in tensors:
        request.add_input(InferInput(name, datatype, list(array.shape), array))
    for name in outputs:
        request.add_output(RequestedOutput(name))
    return request


def load_parameters(name: str, config: str, files: dict[str, bytes] | None) -> dict[str, Any]:
    """``pb_utils.load_model``'s ``config`` and ``files`` as the server's load parameters, the same ones the
    repository API takes: ``{"config": <JSON text>, "file:<path>": <bytes>}``."""
    parameters: dict[str, Any] = {}
    if config:
        if not isinstance(config, str):
            raise ConchError(
                f"load_model('{name}'): config must be the model configuration as a JSON string, got "
                f"{type(config).__name__}",
                ErrorCode.INVALID_ARG,
            )
        parameters["config"] = config
    if files:
        if not isinstance(files, dict):
            raise ConchError(
                f"load_model('{name}'): files must be a dict of 'file:<path>' to bytes, got {type(files).__name__}",
                ErrorCode.INVALID_ARG,
            )
        for key, content in files.items():
            if not isinstance(key, str) or not key.startswith("file:"):
                raise ConchError(
                    f"load_model('{name}'): file key {key!r} must start with 'file:' (e.g. 'file:1/model.onnx')",
                    ErrorCode.INVALID_ARG,
                )
            if not isinstance(content, (bytes, bytearray, memoryview)):
                raise ConchError(
                    f"load_model('{name}'): the content of {key!r} must be bytes, got {type(content).__name__}",
                    ErrorCode.INVALID_ARG,
                )
            parameters[key] = bytes(content)
    return parameters


async def control(service: InferenceService, op: str, args: tuple[Any, ...]) -> Any:
    """``load_model`` / ``unload_model`` / ``is_model_ready`` on the server."""
    if op == "load_model":
        name, config, files = args
        await service.load_model(name, load_parameters(name, config, files))
        if not service.model_ready(name):
            raise ConchError(f"failed to load '{name}'", ErrorCode.INTERNAL)
        return None
    if op == "unload_model":
        await service.unload_model(args[0], bool(args[1]))
        return None
    if op == "is_model_ready":
        return service.model_ready(args[0], parse_version(args[1]) if args[1] else "")
    raise ConchError(f"unknown model control operation '{op}'", ErrorCode.INTERNAL)
