"""A gRPC server on Conch's own HTTP/2 transport, with the part of grpc.aio.Server's API Conch uses.

Servicers register exactly as with grpc.aio (``add_generic_rpc_handlers``,
``add_registered_method_handlers``, the generated ``add_*Servicer_to_server`` functions), so the same
servicer objects run on either transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import grpc

from conch.frontends.grpc.transport.calls import CallSettings, FastUnary, open_call
from conch.frontends.grpc.transport.connection import H2Connection, Stream, StreamHandler
from conch.frontends.grpc.transport.headers import Headers
from conch.frontends.linger import Linger

log = logging.getLogger(__name__)


class _CallDetails(NamedTuple):
    method: str
    invocation_metadata: Sequence[tuple[str, Any]]


class H2GrpcServer:
    """Serves registered gRPC methods over HTTP/2 (plain text) on the running event loop."""

    def __init__(
        self, *, max_receive_message_length: int, max_send_message_length: int, linger_s: float = 0.0
    ) -> None:
        self.linger = Linger(linger_s)
        self._settings = CallSettings(max_receive_message_length, max_send_message_length)
        self._generic: list[grpc.GenericRpcHandler] = []
        self._registered: dict[str, grpc.RpcMethodHandler] = {}
        self._methods: dict[str, grpc.RpcMethodHandler | None] = {}
        self._fast: dict[str, FastUnary] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self.connections: set[H2Connection] = set()
        self._stopped: asyncio.Event | None = None

    # -- registration (grpc.aio.Server's names) --------------------------------------------------

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)
        self._methods.clear()

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._registered[f"/{service}/{name}"] = handler
        self._methods.clear()

    def add_fast_unary(self, path: str, handler: FastUnary) -> None:
        """Let ``handler`` answer the unary method at ``path`` first (see ``FastUnary``); the registered
        handler still answers what it declines."""
        self._fast[path] = handler

    def lookup(self, path: str) -> grpc.RpcMethodHandler | None:
        """The handler of ``/package.Service/Method``, or None."""
        try:
            return self._methods[path]
        except KeyError:
            pass
        handler = self._registered.get(path)
        if handler is None:
            details = _CallDetails(path, ())
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    break
        if len(self._methods) < 1024:
            self._methods[path] = handler
        return handler

    # -- serving ---------------------------------------------------------------------------------

    async def bind(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (not serving until :meth:`start`); returns the bound port."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._connection,
            host=host or None,
            port=port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
            start_serving=False,
        )
        self._servers.append(server)
        sockets = server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def start(self) -> None:
        for server in self._servers:
            await server.start_serving()

    def _connection(self) -> H2Connection:
        connection = H2Connection(self._open, self.connections.discard, self.linger)
        self.connections.add(connection)
        return connection

    def _open(self, conn: H2Connection, stream: Stream, headers: Headers, end_stream: bool) -> StreamHandler:
        return open_call(conn, stream, headers, end_stream, self.lookup, self._settings, self._fast.get)

    async def stop(self, grace: float | None) -> None:
        """Stop listening; calls in flight get ``grace`` seconds (None: none) before they are cancelled."""
        self.linger.stop()
        for server in self._servers:
            server.close()
        connections = list(self.connections)
        for connection in connections:
            connection.shutdown()
        if grace and connections:
            waits = [asyncio.ensure_future(c.idle.wait()) for c in connections]
            _, pending = await asyncio.wait(waits, timeout=grace)
            for wait in pending:
                wait.cancel()
        for connection in list(self.connections):
            connection.abort()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._stopped is not None:
            self._stopped.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        if self._stopped is None:
            self._stopped = asyncio.Event()
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

