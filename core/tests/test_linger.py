"""Lingering after a response (``conch.frontends.linger``): on its own, in the HTTP server and in the gRPC transport."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import grpc

from conch.frontends.grpc.transport import H2GrpcServer
from conch.frontends.http.server import HTTPServer
from conch.frontends.linger import QUICK_S, Linger


async def test_lingering_ends_when_something_arrives() -> None:
    linger = Linger(5.0)
    linger.start()
    assert linger.active and linger.starts == 1
    linger.start()  # already lingering: not a second task
    assert linger.starts == 1
    await asyncio.sleep(0)
    linger.arrived()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not linger.active


async def test_a_response_in_the_turn_that_ended_lingering_lingers_again() -> None:
    """A request that arrives while lingering and is answered at once, in the same loop turn (the fast
    paths), must not leave the next one without lingering."""
    linger = Linger(5.0)
    linger.start()
    await asyncio.sleep(0)
    linger.arrived()  # the request comes in...
    linger.start()  # ...and is answered before the polling callback saw it arrive
    for _ in range(5):
        await asyncio.sleep(0)
    assert linger.active and linger.starts == 1  # the same chain, going on
    linger.arrived()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not linger.active


async def test_lingering_is_bounded_and_lets_other_work_run() -> None:
    linger = Linger(0.005)
    ran: list[str] = []
    started = time.perf_counter()
    linger.start()
    asyncio.get_running_loop().call_soon(ran.append, "other work")
    while linger.active:
        await asyncio.sleep(0.001)
    assert ran == ["other work"]
    assert time.perf_counter() - started < 1.0


async def test_disabled_or_stopped_lingering_never_starts() -> None:
    off = Linger(0.0)
    off.start()
    assert not off.active and off.starts == 0
    stopped = Linger(1.0)
    stopped.stop()
    stopped.start()
    assert not stopped.active and stopped.starts == 0


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _http_server(linger_s: float) -> tuple[HTTPServer, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    server = HTTPServer(_ok, linger_s=linger_s)  # type: ignore[arg-type]
    await server.start([sock])
    return server, sock.getsockname()[1]


async def _http_requests(port: int, count: int, pause_s: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(count):
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(2) == b"ok"
            if pause_s:
                await asyncio.sleep(pause_s)
    finally:
        writer.close()


async def test_http_lingers_only_for_a_client_in_a_tight_loop() -> None:
    server, port = await _http_server(0.0002)
    try:
        await _http_requests(port, 5, 0.0)
        assert server.linger.starts >= 1  # every request after the second followed its response at once
        before = server.linger.starts
        await _http_requests(port, 4, QUICK_S * 5)  # a client that pauses between requests
        assert server.linger.starts == before
    finally:
        await server.shutdown(timeout=1)


async def test_http_linger_zero_never_lingers() -> None:
    server, port = await _http_server(0.0)
    try:
        await _http_requests(port, 5, 0.0)
        assert server.linger.starts == 0
    finally:
        await server.shutdown(timeout=1)


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _grpc_calls(port: int, count: int, pause_s: float) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/test.Echo/Unary")
        for index in range(count):
            assert await call(b"%d" % index) == b"%d" % index
            if pause_s:
                await asyncio.sleep(pause_s)


async def test_grpc_transport_lingers_only_for_a_client_in_a_tight_loop() -> None:
    server = H2GrpcServer(max_receive_message_length=1 << 20, max_send_message_length=1 << 20, linger_s=0.0002)
    handlers = {"Unary": grpc.unary_unary_rpc_method_handler(_echo)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = await server.bind("127.0.0.1", 0)
    await server.start()
    try:
        await _grpc_calls(port, 20, 0.0)
        assert server.linger.starts >= 1
        before = server.linger.starts
        await _grpc_calls(port, 4, QUICK_S * 5)
        assert server.linger.starts == before
    finally:
        await server.stop(None)
