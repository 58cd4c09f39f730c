"""Conch: a pip-installable inference server that speaks NVIDIA Triton's protocol.

The public facade for plugin authors: the hook marker, the backend and instance base classes, and the
request, response and tensor types a backend sees.
"""

from conch.backend import Backend, Batching, InstanceContext, ModelContext, ModelInstance
from conch.errors import ConchError, ErrorCode
from conch.hookimpl import hookimpl
from conch.inference import InferenceRequest, InferenceResponse, InferInput, RequestedOutput, Tensor

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "Batching",
    "ConchError",
    "ErrorCode",
    "InferInput",
    "InferenceRequest",
    "InferenceResponse",
    "InstanceContext",
    "ModelContext",
    "ModelInstance",
    "RequestedOutput",
    "Tensor",
    "__version__",
    "hookimpl",
]
