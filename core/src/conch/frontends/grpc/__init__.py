"""The gRPC frontend: Triton's ``inference.GRPCInferenceService`` on grpc.aio, plus health and reflection."""

import os

# grpcio's EventEngine listener (its default) runs socket I/O on threads of its own that then wait for
# the event loop: measured here, a handler that computes for 90 us made a unary call 260 us slower,
# against 110 us with the listener of grpc's poller, and Conch's gRPC calls went from ~1,600 to ~2,500
# a second at concurrency 1. grpcio reads its experiments when first imported, hence here, before any
# import of it; a GRPC_EXPERIMENTS set by the user is kept as it is.
os.environ.setdefault("GRPC_EXPERIMENTS", "-event_engine_listener")

from conch.frontends.grpc.server import (  # noqa: E402 - after the grpcio setting above
    GRPCBindError,
    ReadinessHealthServicer,
    start_grpc_server,
)
from conch.frontends.grpc.servicer import GRPCInferenceServicer, rpc_method_handlers  # noqa: E402

__all__ = [
    "GRPCBindError",
    "GRPCInferenceServicer",
    "ReadinessHealthServicer",
    "rpc_method_handlers",
    "start_grpc_server",
]
