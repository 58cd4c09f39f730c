"""Conch's HTTP/1.1 server (``conch.frontends.http.server``) over real sockets, with small ASGI apps."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conch.frontends.http.server import HIGH_WATER, HTTPServer

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the method, path and the whole request body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    content = f"{scope['method']} {scope['path']} ".encode() + body
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(content))]})
    await send({"type": "http.response.body", "body": content})


class Running:
    def __init__(self, server: HTTPServer, port: int) -> None:
        self.server = server
        self.port = port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    servers: list[HTTPServer] = []

    async def start(app: App, **options: Any) -> Running:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        server = HTTPServer(app, **options)  # type: ignore[arg-type]
        await server.start([sock])
        servers.append(server)
        return Running(server, sock.getsockname()[1])

    yield start
    for server in servers:
        await server.shutdown(timeout=1)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = b""
    return status, headers, body


async def test_keep_alive_and_pipelining(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve(echo)
    reader, writer = await running.connect()
    writer.write(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert await read_response(reader) == (200, {"content-length": "11"}, b"POST /a abc")
    # Two requests in one write: answered in order, on the same connection.
    writer.write(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nzz")
    assert (await read_response(reader))[2] == b"GET /b "
    assert (await read_response(reader))[2] == b"POST /c zz"
    writer.close()


async def test_chunked_body_and_percent_decoded_path(serve: Callable[..., Awaitable[Running]]) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        await echo(scope, receive, send)

    running = await serve(app)
    reader, writer = await running.connect()
    writer.write(b"POST /m%20x?q=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await asyncio.sleep(0.02)
    writer.write(b"2\r\nde\r\n0\r\n\r\n")
    assert (await read_response(reader))[2] == b"POST /m x abcde"
    assert seen[0]["raw_path"] == b"/m%20x" and seen[0]["query_string"] == b"q=1"
    assert (b"transfer-encoding", b"chunked") in seen[0]["headers"]
    writer.close()


async def test_large_body_flows_through(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve(echo)
    reader, writer = await running.connect()
    data = bytes(range(256)) * (4 * HIGH_WATER // 256)
    writer.write(b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    status, _, body = await read_response(reader)
    assert status == 200 and body == b"PUT /big " + data
    writer.close()


async def test_expect_continue(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve(echo)
    reader, writer = await running.connect()
    writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"ok")
    assert (await read_response(reader))[2] == b"POST /e ok"
    writer.close()


async def test_client_hanging_up_is_reported_to_the_app(serve: Callable[..., Awaitable[Running]]) -> None:
    messages: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        messages.append(await receive())
        messages.append(await receive())  # blocks until the client goes away
        done.set()

    running = await serve(app)
    reader, writer = await running.connect()
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.05)
    writer.close()
    await asyncio.wait_for(done.wait(), 5)
    assert messages == [{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}]


async def test_bad_request_and_http_1_0(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve(echo)
    reader, writer = await running.connect()
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, body) == (400, b"Invalid HTTP request received.")
    assert headers["connection"] == "close" and headers["content-type"] == "text/plain; charset=utf-8"
    assert await reader.read() == b""
    reader, writer = await running.connect()
    writer.write(b"GET /old HTTP/1.0\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], body) == (200, "close", b"GET /old ")
    assert await reader.read() == b""


async def test_framing_and_connection_close_from_the_app(serve: Callable[..., Awaitable[Running]]) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        headers = [(b"Connection", b"close")] if scope["path"] == "/close" else []
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b"part1", "more_body": True})
        await send({"type": "http.response.body", "body": b"part2"})

    running = await serve(app)
    reader, writer = await running.connect()
    writer.write(b"GET /chunks HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)  # no length given: chunked
    assert (status, headers["transfer-encoding"], body) == (201, "chunked", b"part1part2")
    writer.write(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (headers["connection"], body) == ("close", b"part1part2")
    assert await reader.read() == b""


async def test_app_failure_is_a_500(serve: Callable[..., Awaitable[Running]]) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise ValueError("broken")

    running = await serve(app)
    reader, writer = await running.connect()
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, body, headers["connection"]) == (500, b"Internal Server Error", "close")


async def test_idle_connections_close_after_keep_alive(serve: Callable[..., Awaitable[Running]]) -> None:
    running = await serve(echo, keep_alive_s=0.1)
    reader, writer = await running.connect()
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_shutdown_finishes_requests_in_progress(serve: Callable[..., Awaitable[Running]]) -> None:
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        if scope["path"] == "/slow":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    running = await serve(app)
    idle_reader, idle_writer = await running.connect()
    idle_writer.write(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(idle_reader))[2] == b"ok"
    reader, writer = await running.connect()
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(running.server.shutdown(timeout=5))
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # the idle connection closes at once
    await asyncio.sleep(0.05)
    assert not stopping.done()
    release.set()
    status, headers, body = await read_response(reader)
    assert (status, body, headers["connection"]) == (200, b"ok", "close")
    await asyncio.wait_for(stopping, 5)
    with pytest.raises(OSError):
        await running.connect()
