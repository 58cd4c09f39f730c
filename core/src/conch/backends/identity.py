"""The built-in ``identity`` backend: each ``INPUT<i>`` comes back as ``OUTPUT<i>``.

It is Conch's test workhorse and the smallest complete example of a backend plugin: a
:class:`~conch.Backend` subclass, a :class:`~conch.ModelInstance` subclass, and the
``conch_register_backends`` hook. Config parameters (as in Triton's identity backend):

- ``execute_delay_ms``: sleep this long in every execution;
- ``instance_wise_delay_multiplier``: instance ``k`` sleeps ``execute_delay_ms * max(k * m, 1)``;
- ``creation_delay_sec``: sleep this long when each instance is created.
"""

from __future__ import annotations

import time

import numpy as np

from conch.backend import Backend, Batching, InstanceContext, ModelInstance
from conch.errors import ConchError, ErrorCode
from conch.hookimpl import hookimpl
from conch.inference import InferenceRequest, InferenceResponse, Tensor
from conch.tensors import config_to_protocol


class IdentityInstance(ModelInstance):
    """Copies inputs to outputs by index; an optional input that is absent yields zeros."""

    def __init__(self, context: InstanceContext) -> None:
        config = context.model.config
        self.batching = config.max_batch_size > 0
        delay_ms = int(context.model.parameter("execute_delay_ms", "0") or 0)
        multiplier = int(context.model.parameter("instance_wise_delay_multiplier", "0") or 0)
        factor = max(multiplier * context.index, 1) if multiplier > 0 else 1
        self.delay_s = delay_ms * factor / 1000.0
        self.output_types = {output.name: config_to_protocol(output.data_type) for output in config.output}
        self.optional_inputs = {
            inp.name: (config_to_protocol(inp.data_type), [max(int(d), 1) for d in inp.dims])
            for inp in config.input
            if inp.optional
        }

    def execute(self, requests: list[InferenceRequest]) -> list[InferenceResponse]:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        return [self._one(request) for request in requests]

    def _one(self, request: InferenceRequest) -> InferenceResponse:
        outputs: list[Tensor] = []
        for name in request.requested_output_names():
            if not name.startswith("OUTPUT"):
                return InferenceResponse(
                    error=ConchError(f"identity: output '{name}' is not named OUTPUT<i>", ErrorCode.INVALID_ARG)
                )
            input_name = "INPUT" + name[len("OUTPUT") :]
            source = request.inputs.get(input_name)
            if source is not None:
                outputs.append(Tensor(name, self.output_types.get(name, source.datatype), request.input_array(input_name)))
            elif input_name in self.optional_inputs:
                datatype, dims = self.optional_inputs[input_name]
                shape = ([request.batch_size] if self.batching else []) + dims
                zeros = np.zeros(shape, dtype=object if datatype == "BYTES" else None)
                if datatype == "BYTES":
                    zeros.fill(b"")
                outputs.append(Tensor(name, datatype, zeros))
        return InferenceResponse(outputs=outputs)


class IdentityBackend(Backend):
    name = "identity"
    platforms = ()
    default_model_filename = "model.identity"
    batching = Batching.REQUESTS

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        delay = float(context.model.parameter("creation_delay_sec", "0") or 0)
        if delay > 0:
            time.sleep(delay)
        return IdentityInstance(context)


@hookimpl
def conch_register_backends() -> list[Backend]:
    return [IdentityBackend()]
