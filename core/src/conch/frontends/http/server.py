"""A small HTTP/1.1 server for the frontend's ASGI app, on httptools and the running event loop.

It does what the inference protocol needs and little else, with as little work per request as it
can: keep-alive (idle connections close after ``keep_alive_s``), pipelined requests served one at a
time and in order, fixed-length and chunked request bodies, ``Expect: 100-continue``, flow control in
both directions, a client that hangs up reported to the app as ``http.disconnect``, and a graceful
shutdown. A response's head and body go out in one write when the app sends them together.
Responses carry only the headers the app gives (plus ``content-length``/``transfer-encoding`` and
``connection: close`` where HTTP needs them), as Triton's server does: no ``date`` or ``server``.
"""

from __future__ import annotations

import asyncio
import http
import logging
import socket
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import httptools
from starlette.types import ASGIApp, Message

from conch.frontends.linger import QUICK_S, Linger

log = logging.getLogger("conch.http")

#: Buffered request body beyond which the connection stops reading until the app takes it.
HIGH_WATER = 64 * 1024

_STATUS_LINES: dict[int, bytes] = {}

#: A complete response as the parts to write (status line to body), for a keep-alive connection: bytes-like
#: objects (bytes, memoryviews, C-contiguous numpy arrays).
Wire = list[Any]


class Pending(Protocol):
    """A fast handler's response still to come: ``attach(deliver)`` has it call ``deliver(wire)`` on the
    loop once it is ready (at once if it is); ``cancel()`` when the client hangs up first."""

    def attach(self, deliver: Callable[[Wire], None]) -> None: ...

    def cancel(self) -> None: ...


#: What a fast handler answers: the response now, one to wait for, or None to leave the request to
#: the app.
FastResult = Wire | Pending | None
#: ``fast(url, headers, body)``: a handler that answers some complete POST requests without the ASGI
#: app's per-request objects (Conch's binary inference requests; see ``frontends/http/fast_infer.py``).
FastHandler = Callable[[bytes, list[tuple[bytes, bytes]], bytes], FastResult]


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")
    return line


def _plain(status: int, text: str) -> bytes:
    """A complete ``text/plain`` response that closes the connection (the server's own errors)."""
    body = text.encode("latin-1")
    return b"".join([
        _status_line(status),
        b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body),
        body,
    ])  # fmt: skip


class HTTPServer:
    """Serves ``app`` on listening sockets: ``await start(sockets)``, later ``await shutdown(timeout)``."""

    def __init__(
        self, app: ASGIApp, *, keep_alive_s: float = 75.0, linger_s: float = 0.0, fast: FastHandler | None = None
    ) -> None:
        self.app = app
        self.fast = fast
        self.keep_alive_s = keep_alive_s
        self.linger = Linger(linger_s)
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # the app calls in progress
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False

    async def start(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            self._servers.append(await loop.create_server(lambda: _Connection(self), sock=sock))
        self._sweep()

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive time (checked every few seconds)."""
        now = time.monotonic()
        for connection in list(self.connections):
            if connection.idle_since and now - connection.idle_since > self.keep_alive_s:
                connection.transport.close()
        if not self._closing:
            interval = min(max(self.keep_alive_s / 4, 0.05), 5.0)
            self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop accepting, let requests in progress finish (up to ``timeout`` s), then close everything."""
        self._closing = True
        self.linger.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.shutdown()
        deadline = None if timeout is None else time.monotonic() + timeout
        while (self.connections or self.tasks) and (deadline is None or time.monotonic() < deadline):
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()
        for task in list(self.tasks):
            task.cancel()
        for server in self._servers:
            await server.wait_closed()
        self._servers = []


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and runs one exchange at a time."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False
        self.exchange: _Exchange | None = None
        self.pipeline: deque[_Exchange] = deque()
        self.read_paused = False
        self.write_paused = False
        self.writable: asyncio.Future[None] | None = None
        self.idle_since = time.monotonic()
        self.responded_at = 0.0  # perf_counter of the last response, while idle
        self.quick = False  # the last request came right after the response before it
        self.local: Any = None
        self.peer: Any = None
        # A request held for the fast handler: its body so far (None: the current request is not held).
        self.held: list[bytes] | None = None
        self.held_size = 0
        self.waiting: Pending | None = None  # the fast handler's response still to come
        self.close_when_answered = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self.local = _address(transport.get_extra_info("sockname"))
        self.peer = _address(transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        self.idle_since = 0.0
        linger = self.server.linger
        if linger.active:
            linger.arrived()
        if self.responded_at:
            self.quick = time.perf_counter() - self.responded_at < QUICK_S
            self.responded_at = 0.0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            log.warning("Unsupported upgrade request.")
        except httptools.HttpParserError:
            log.warning("Invalid HTTP request received.")
            self.transport.write(_plain(400, "Invalid HTTP request received."))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        pending, self.waiting = self.waiting, None
        if pending is not None:
            pending.cancel()
        exchange = self.exchange
        if exchange is not None and not exchange.complete:
            exchange.disconnected = True
            exchange.wake()
        for waiting in self.pipeline:
            waiting.disconnected = True
        self.pipeline.clear()
        self._resume_writing()

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: close ours once written

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self._resume_writing()

    def _resume_writing(self) -> None:
        self.write_paused = False
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    async def drain(self) -> None:
        if self.writable is None:
            self.writable = asyncio.get_running_loop().create_future()
        await self.writable

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        keep_alive = parser.should_keep_alive() and parser.get_http_version() != "1.0"
        if (
            self.server.fast is not None
            and keep_alive
            and not self.expect_continue
            and (self.exchange is None or self.exchange.complete)
            and self.waiting is None
            and self.url.endswith(b"/infer")
            and parser.get_method() == b"POST"
        ):
            self.held = []  # the whole request goes to the fast handler first
            self.held_size = 0
            return
        self._start_exchange()

    def _start_exchange(self) -> _Exchange:
        """The ASGI exchange of the request whose head was just parsed: started, or queued behind the current one."""
        parser = self.parser
        version = parser.get_http_version()
        url = httptools.parse_url(self.url)
        raw_path = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "server": self.local,
            "client": self.peer,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "headers": self.headers,
        }
        keep_alive = version != "1.0" and parser.should_keep_alive()
        exchange = _Exchange(self, scope, keep_alive, self.expect_continue)
        current = self.exchange
        if (current is None or current.complete) and self.waiting is None:
            self.exchange = exchange
            exchange.start()
        else:  # pipelined: waits for the response before it
            self.pipeline.append(exchange)
            self.pause_reading()
        return exchange

    def on_body(self, body: bytes) -> None:
        held = self.held
        if held is not None:
            held.append(body)
            self.held_size += len(body)
            if self.held_size > HIGH_WATER:  # too big to hold: the app reads it as it comes
                self._release()
            return
        exchange = self.pipeline[-1] if self.pipeline else self.exchange
        if exchange is None or exchange.complete:
            return
        exchange.body.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > HIGH_WATER:
            self.pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self._answer_fast(held[0] if len(held) == 1 else b"".join(held))
            return
        exchange = self.pipeline[-1] if self.pipeline else self.exchange
        if exchange is None or exchange.complete:
            return
        exchange.more_body = False
        exchange.wake()

    # -- the fast path --------------------------------------------------------------------------------

    def _release(self) -> _Exchange:
        """Hand a held request to the app after all, with the body held so far."""
        held = self.held or []
        self.held = None
        exchange = self._start_exchange()
        exchange.body = held
        exchange.buffered = self.held_size
        if exchange.buffered > HIGH_WATER:
            self.pause_reading()
        return exchange

    def _answer_fast(self, body: bytes) -> None:
        """A complete held request: the fast handler's answer, or the app's when the handler declines."""
        try:
            result = self.server.fast(self.url, self.headers, body)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - a bug in the handler must not lose the request: the app answers
            log.exception("fast HTTP handler failed; answering through the app")
            result = None
        if result is None:
            self.held = [body] if body else []
            self.held_size = len(body)
            exchange = self._release()
            exchange.more_body = False
            exchange.wake()
        elif isinstance(result, list):
            self.transport.write(b"".join(result))
            self.response_done()
        else:
            self.waiting = result
            result.attach(self._answer_later)

    def _answer_later(self, wire: Wire) -> None:
        """The fast handler's response that had to wait (a queue, a batch, another thread)."""
        if self.waiting is None:  # the client went meanwhile
            return
        self.waiting = None
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(b"".join(wire))
        if self.close_when_answered:
            transport.close()
            return
        self.response_done()

    # -- exchanges ----------------------------------------------------------------------------------

    def response_done(self) -> None:
        """The current response went out: start the next pipelined request, or wait idle."""
        if self.transport.is_closing():
            return
        self.resume_reading()
        if self.pipeline:
            self.exchange = self.pipeline.popleft()
            self.exchange.start()
        else:
            self.idle_since = time.monotonic()
            server = self.server
            if server.linger.seconds:
                self.responded_at = time.perf_counter()
                if self.quick and len(server.tasks) <= 1:  # only this exchange is in flight
                    server.linger.start()

    def shutdown(self) -> None:
        """Close now when idle, else once the response in progress is out."""
        exchange = self.exchange
        if self.waiting is not None:
            self.close_when_answered = True
            self.pipeline.clear()
        elif exchange is None or exchange.complete:
            self.transport.close()
        else:
            exchange.keep_alive = False
            self.pipeline.clear()

    def abort(self) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.task is not None and not exchange.task.done():
            exchange.task.cancel()
        self.transport.close()


class _Exchange:
    """One request and its response: the ASGI ``receive`` and ``send`` of one app call."""

    __slots__ = (
        "connection", "scope", "keep_alive", "expect_continue", "body", "buffered", "more_body",
        "delivered", "disconnected", "started", "complete", "head", "chunked", "length_left", "waiter", "task",
    )  # fmt: skip

    def __init__(self, connection: _Connection, scope: dict[str, Any], keep_alive: bool, expect_continue: bool) -> None:
        self.connection = connection
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.body: list[bytes] = []
        self.buffered = 0
        self.more_body = True
        self.delivered = False  # the last body part went to the app
        self.disconnected = False
        self.started = False
        self.complete = False
        self.head = b""  # the response head, held until the first body part
        self.chunked = False
        self.length_left = 0
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        task = self.task = asyncio.get_running_loop().create_task(self.run())
        tasks = self.connection.server.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    async def run(self) -> None:
        try:
            await self.connection.server.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self.connection.transport.close()
            raise
        except Exception as exc:  # noqa: BLE001 - the app failed: answer 500 if still possible
            log.error("Exception in ASGI application", exc_info=exc)
            if not self.started and not self.disconnected:
                self.connection.transport.write(_plain(500, "Internal Server Error"))
            self.connection.transport.close()
            return
        if not self.complete and not self.disconnected:
            log.error("ASGI callable returned without %s response.", "completing" if self.started else "starting")
            if not self.started:
                self.connection.transport.write(_plain(500, "Internal Server Error"))
            self.connection.transport.close()

    async def receive(self) -> Message:
        connection = self.connection
        if self.expect_continue and not connection.transport.is_closing():
            connection.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.expect_continue = False
        # Body parts as they arrive; once all was delivered, only the client going away (or the
        # response completing) ends the wait, as ASGI servers report it.
        while not self.disconnected and not self.complete and not self.body and (self.more_body or self.delivered):
            if not connection.pipeline:
                connection.resume_reading()
            await self._wait()
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}
        chunks, self.body, self.buffered = self.body, [], 0
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not self.more_body:
            self.delivered = True
        elif not connection.pipeline:
            connection.resume_reading()
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Message) -> None:
        connection = self.connection
        if connection.write_paused and not self.disconnected:
            await connection.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self.started = True
            self.head = self._head(message["status"], message.get("headers", ()))
            return
        if self.complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        parts = [self.head] if self.head else []
        self.head = b""
        if self.scope["method"] == "HEAD":
            self.length_left = 0
        elif self.chunked:
            if body:
                parts += [b"%x\r\n" % len(body), body, b"\r\n"]
            if not more:
                parts.append(b"0\r\n\r\n")
        else:
            if len(body) > self.length_left:
                raise RuntimeError("Response content longer than Content-Length")
            self.length_left -= len(body)
            if body:
                parts.append(body)
        if parts:
            connection.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
        if not more:
            if self.length_left:
                raise RuntimeError("Response content shorter than Content-Length")
            self.complete = True
            self.wake()
            if not self.keep_alive:
                connection.transport.close()
            connection.response_done()

    def _head(self, status: int, headers: Any) -> bytes:
        """Status line and headers; decides the body framing and whether the connection stays open."""
        parts = [_status_line(status)]
        framed = False
        close_sent = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and not framed:
                self.length_left = int(value)
                framed = True
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.length_left = 0
                self.chunked = framed = True
            elif name == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
                self.keep_alive = False
                close_sent = True
            parts += [name, b": ", value, b"\r\n"]
        if not self.keep_alive and not close_sent:
            parts.append(b"connection: close\r\n")
        if not framed and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
