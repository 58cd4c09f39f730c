"""Server-side conversions: Conch requests to what a model sees, model outputs back to Conch responses.

Outputs are checked against the config as Triton does: only requested outputs are returned, and an
output whose datatype or shape disagrees with the config fails its request with a message naming it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferenceResponse, Tensor
from conch.tensors import config_to_protocol

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig

#: Request parameters Triton turns into request fields (correlation id, flags, timeout) instead.
SCHEDULING_PARAMETERS = frozenset(("sequence_id", "sequence_start", "sequence_end", "priority", "timeout"))


def request_fields(request: InferenceRequest) -> tuple[int | str, int, int, str]:
    """(correlation_id, flags, timeout, parameters JSON) of a request, as pb_utils reports them."""
    params = request.parameters
    if not params:
        return 0, 0, 0, "{}"
    flags = (1 if params.get("sequence_start") else 0) | (2 if params.get("sequence_end") else 0)
    rest = {k: v for k, v in params.items() if k not in SCHEDULING_PARAMETERS}
    return params.get("sequence_id", 0), flags, int(params.get("timeout", 0) or 0), json.dumps(rest)


def error_from(message: str, code_name: str) -> ConchError:
    try:
        code = ErrorCode[code_name]
    except KeyError:
        code = ErrorCode.INTERNAL
    return ConchError(message, code)


class OutputChecker:
    """Checks a model's output tensors against its config."""

    def __init__(self, config: ModelConfig, instance_name: str) -> None:
        self.model = config.name
        self.instance = instance_name
        self.batched = config.max_batch_size > 0
        self.outputs: dict[str, tuple[str, tuple[int, ...] | None]] = {}
        for output in config.output:
            dims = None if output.HasField("reshape") else tuple(int(d) for d in output.dims)
            self.outputs[output.name] = (config_to_protocol(output.data_type), dims)

    def response(self, request: InferenceRequest, tensors: list[tuple[str, str, np.ndarray]], parameters: Any) -> InferenceResponse:
        """The Conch response for a model's outputs; an error response when one is wrong."""
        wanted = request.outputs
        names = {o.name for o in wanted} if wanted else None
        out: list[Tensor] = []
        for name, datatype, array in tensors:
            if names is not None and name not in names:
                continue
            problem = self._problem(name, datatype, array)
            if problem:
                return InferenceResponse(error=ConchError(problem, ErrorCode.INTERNAL))
            out.append(Tensor(name, datatype, array))
        return InferenceResponse(outputs=out, parameters=dict(parameters or {}))

    def _problem(self, name: str, datatype: str, array: np.ndarray) -> str:
        spec = self.outputs.get(name)
        if spec is None:
            return f"{self._where(name)} is not in the model configuration"
        want_type, dims = spec
        if datatype != want_type:
            return f"{self._where(name)} has datatype {datatype}, but the model configuration says {want_type}"
        if dims is None:
            return ""
        shape = array.shape
        expected = ((-1,) if self.batched else ()) + dims
        if len(shape) != len(expected) or any(e != -1 and e != s for e, s in zip(expected, shape, strict=False)):
            return (
                f"{self._where(name)} has shape {list(shape)}, but the model configuration expects {list(expected)}"
                + (" (batch dimension first)" if self.batched else "")
            )
        return ""

    def _where(self, name: str) -> str:
        return f"output '{name}' of model '{self.model}' (instance '{self.instance}')"
