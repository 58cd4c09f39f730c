"""Build, bind and start the grpc.aio server: the inference service, ``grpc.health.v1`` and reflection."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer as AsyncReflectionServicer

from conch._proto import POOL
from conch.frontends.grpc.codec import MAX_MESSAGE_SIZE
from conch.frontends.grpc.fast_infer import FastModelInfer
from conch.frontends.grpc.servicer import SERVICE_NAME, GRPCInferenceServicer, rpc_method_handlers
from conch.frontends.grpc.transport import H2GrpcServer

if TYPE_CHECKING:
    from conch.service import InferenceService

log = logging.getLogger(__name__)

#: The gRPC transports ``start_grpc_server`` offers (``--grpc-transport``).
TRANSPORTS = ("conch", "grpcio")
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class GRPCBindError(OSError):
    """The gRPC port could not be bound.

    ``str()`` is Triton's text, trailing space included: ``Socket '0.0.0.0:8001' already in use `` (Triton
    logs it as ``failed to start GRPC service: Unavailable - <text>``); ``errno`` is EADDRINUSE.
    """

    def __init__(self, address: str) -> None:
        super().__init__(errno.EADDRINUSE, f"Socket '{address}' already in use ")

    def __str__(self) -> str:
        return str(self.strerror)


class ReadinessHealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health`` answering from the server's readiness at the moment it is asked.

    As in Triton, the service name in the request is not consulted: SERVING when the server is ready,
    NOT_SERVING otherwise. ``Watch`` re-checks every ``poll_interval`` seconds and writes changes.
    """

    def __init__(self, service: InferenceService, poll_interval: float = 1.0) -> None:
        self.service = service
        self.poll_interval = poll_interval

    def _status(self) -> int:
        try:
            ready = self.service.is_ready()
        except Exception:  # noqa: BLE001 - a health check must answer
            log.exception("readiness check failed")
            return health_pb2.HealthCheckResponse.UNKNOWN
        return health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=self._status())

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            status = self._status()
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(self.poll_interval)


class _Pools:
    """Descriptor lookups in Conch's private pool first, then the default pool (health, reflection)."""

    def __init__(self, *pools: descriptor_pool.DescriptorPool) -> None:
        self._pools = pools

    def _first(self, method: str, *args: Any) -> Any:
        missing: Exception = KeyError(args[0] if args else method)
        for pool in self._pools:
            try:
                return getattr(pool, method)(*args)
            except KeyError as exc:
                missing = exc
        raise missing

    def FindFileByName(self, name: str) -> Any:
        return self._first("FindFileByName", name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        return self._first("FindFileContainingSymbol", symbol)

    def FindMessageTypeByName(self, name: str) -> Any:
        return self._first("FindMessageTypeByName", name)

    def FindExtensionByNumber(self, message: Any, number: int) -> Any:
        return self._first("FindExtensionByNumber", message, number)

    def FindAllExtensions(self, message: Any) -> Any:
        return self._first("FindAllExtensions", message)


def _register(
    server: Any, service: InferenceService, health: bool, health_poll_interval: float, reflection_enabled: bool
) -> None:
    """The inference service, health and reflection on ``server`` (either transport)."""
    handlers = rpc_method_handlers(GRPCInferenceServicer(service))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    names = [SERVICE_NAME]
    if health:
        health_pb2_grpc.add_HealthServicer_to_server(ReadinessHealthServicer(service, health_poll_interval), server)
        names.append(HEALTH_SERVICE_NAME)
    if reflection_enabled:
        names.append(reflection.SERVICE_NAME)
        pool = _Pools(POOL, descriptor_pool.Default())
        if isinstance(server, grpc.aio.Server):
            reflection.enable_server_reflection(names, server, pool=pool)
        else:
            servicer = AsyncReflectionServicer(names, pool=pool)
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)


async def _start_h2(
    service: InferenceService,
    address: str,
    port: int,
    reuse_port: bool,
    health: bool,
    health_poll_interval: float,
    reflection_enabled: bool,
    linger_s: float,
    fast_infer: bool,
) -> H2GrpcServer:
    server = H2GrpcServer(
        max_receive_message_length=MAX_MESSAGE_SIZE, max_send_message_length=MAX_MESSAGE_SIZE, linger_s=linger_s
    )
    _register(server, service, health, health_poll_interval, reflection_enabled)
    if fast_infer:
        server.add_fast_unary(f"/{SERVICE_NAME}/ModelInfer", FastModelInfer(service))
    try:
        bound = await server.bind(address, port, reuse_port=reuse_port)
    except OSError as exc:
        log.debug("binding %s:%d failed: %s", address, port, exc)
        raise GRPCBindError(f"{address}:{port}") from None
    await server.start()
    log.debug("gRPC server (Conch HTTP/2 transport) bound to %s", _host_port(address, bound))
    return server


def _host_port(address: str, port: int) -> str:
    """What gRPC binds: IPv6 literals need brackets."""
    if ":" in address and not address.startswith("["):
        return f"[{address}]:{port}"
    return f"{address}:{port}"


async def start_grpc_server(
    service: InferenceService,
    address: str,
    port: int,
    *,
    credentials: grpc.ServerCredentials | None = None,
    reuse_port: bool = False,
    options: Sequence[tuple[str, Any]] = (),
    health: bool = True,
    health_poll_interval: float = 1.0,
    reflection_enabled: bool = True,
    transport: str = "conch",
    linger_s: float = 0.0,
    fast_infer: bool = True,
) -> grpc.aio.Server | H2GrpcServer:
    """Start serving ``inference.GRPCInferenceService`` on ``address:port`` and return the started server.

    :param service: what the RPCs call.
    :param address: interface to bind, e.g. ``"0.0.0.0"`` (Triton's ``--grpc-address``).
    :param port: port to bind (``--grpc-port``).
    :param credentials: TLS credentials (``--grpc-use-ssl``); plain text when None.
    :param reuse_port: allow several servers on one port (``--grpc-port-reuse``); off, a port in use is
        an error even when the other holder is a gRPC server.
    :param options: extra channel arguments (keepalive and the like), applied after the defaults.
    :param health: serve ``grpc.health.v1.Health`` from ``service.is_ready()``.
    :param health_poll_interval: seconds between readiness checks of a ``Health/Watch`` stream.
    :param reflection_enabled: serve ``grpc.reflection.v1alpha.ServerReflection``.
    :param transport: ``"conch"`` (Conch's own HTTP/2 transport, plain text only) or ``"grpcio"``
        (grpcio's asyncio server, also used whenever ``credentials`` are given).
    :param linger_s: Conch's transport: how long the loop keeps turning after a response for a client in
        a tight loop (:mod:`conch.frontends.linger`); 0 never.
    :param fast_infer: Conch's transport: answer ModelInfer calls through
        :class:`~conch.frontends.grpc.fast_infer.FastModelInfer` first (it needs an
        :class:`InferenceService` with its schedulers; the servicer answers what it declines).
    :return: the started server; stop it with ``await server.stop(grace)``.
    :raises GRPCBindError: (an :class:`OSError`, ``errno`` EADDRINUSE) when the port cannot be bound.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown gRPC transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
    if transport == "conch" and credentials is None:
        return await _start_h2(
            service, address, port, reuse_port, health, health_poll_interval, reflection_enabled, linger_s, fast_infer
        )
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            *options,
        ]
    )
    _register(server, service, health, health_poll_interval, reflection_enabled)

    display = f"{address}:{port}"
    target = _host_port(address, port)
    try:
        if credentials is None:
            bound = server.add_insecure_port(target)
        else:
            bound = server.add_secure_port(target, credentials)
    except RuntimeError as exc:
        log.debug("binding %s failed: %s", target, exc)
        bound = 0
    if bound == 0:
        raise GRPCBindError(display)
    await server.start()
    log.debug("gRPC server bound to %s", _host_port(address, bound))  # the caller logs Triton's "Started ..." line
    return server
