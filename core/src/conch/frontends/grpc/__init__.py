"""The gRPC frontend: Triton's ``inference.GRPCInferenceService`` on grpc.aio, plus health and reflection."""

from conch.frontends.grpc.server import GRPCBindError, ReadinessHealthServicer, start_grpc_server
from conch.frontends.grpc.servicer import GRPCInferenceServicer, rpc_method_handlers

__all__ = [
    "GRPCBindError",
    "GRPCInferenceServicer",
    "ReadinessHealthServicer",
    "rpc_method_handlers",
    "start_grpc_server",
]
