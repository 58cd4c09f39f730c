"""Conch's own HTTP/2 transport for gRPC: leaner per call than grpcio's asyncio server.

:mod:`.frames` (HTTP/2 framing), :mod:`.headers` (HPACK), :mod:`.connection` (streams and flow
control), :mod:`.calls` (gRPC messages, status, the servicer context) and :mod:`.server` (registration
and serving, with grpc.aio.Server's names).
"""

from conch.frontends.grpc.transport.server import H2GrpcServer

__all__ = ["H2GrpcServer"]
