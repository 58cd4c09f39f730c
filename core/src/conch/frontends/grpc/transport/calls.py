"""gRPC calls over an HTTP/2 stream: message framing, the servicer context, running the handler, status.

Handlers are grpc's ``RpcMethodHandler`` objects with asyncio behaviours, the same ones grpc.aio runs,
so a servicer works unchanged on either transport. Status codes and texts follow grpc-core where the
client can see them (``Method not found!``, ``Deadline Exceeded``, ``Received message larger than max``).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import struct
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from conch.frontends.grpc.transport.headers import Headers, encode, literal, percent_encode

if TYPE_CHECKING:
    from conch.frontends.grpc.transport.connection import Chunk, H2Connection, Stream

log = logging.getLogger(__name__)

_PREFIX = struct.Struct(">BL")
_JOIN_LIMIT = 64 * 1024
RESPONSE_HEADERS = encode([(b":status", b"200"), (b"content-type", b"application/grpc")])
OK_TRAILERS = literal(b"grpc-status", b"0")
#: Request headers that are not metadata the handler sees.
_NOT_METADATA = frozenset({"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"})
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class Pending(Protocol):
    """An answer a fast handler gives later (``Call.pending``); cancelled when the call ends first."""

    def cancel(self) -> None: ...


#: A unary method's fast handler, run as soon as the request message is complete, without a task: it
#: answers through ``Call.reply``/``Call.finish`` now, or later after setting ``Call.pending``, and
#: returns True; False leaves the call to its ``RpcMethodHandler`` (nothing may have been sent).
FastUnary = Callable[[bytes, "Call"], bool]


class CallSettings:
    """Limits the calls of one server share."""

    __slots__ = ("max_receive", "max_send")

    def __init__(self, max_receive: int, max_send: int) -> None:
        self.max_receive = max_receive
        self.max_send = max_send


def status_trailers(code: grpc.StatusCode, details: str, metadata: Sequence[tuple[str, Any]] = ()) -> bytes:
    """The trailers block carrying a status (and trailing metadata)."""
    block = literal(b"grpc-status", str(code.value[0]).encode())
    if details:
        block += literal(b"grpc-message", percent_encode(details))
    return block + metadata_block(metadata)


def metadata_block(metadata: Sequence[tuple[str, Any]]) -> bytes:
    """Custom metadata as header literals; ``-bin`` keys carry base64 of their bytes."""
    parts = []
    for key, value in metadata:
        name = key.lower().encode("ascii")
        if key.endswith("-bin"):
            raw = value if isinstance(value, bytes) else str(value).encode()
            data = base64.b64encode(raw).rstrip(b"=")
        else:
            data = value.encode("ascii") if isinstance(value, str) else bytes(value)
        parts.append(literal(name, data))
    return b"".join(parts)


def parse_timeout(value: str) -> float | None:
    """Seconds of a ``grpc-timeout`` value (``100m``, ``5S``...); None when malformed."""
    if len(value) < 2 or len(value) > 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def _metadata_value(key: str, value: str) -> str | bytes:
    if key.endswith("-bin"):
        return base64.b64decode(value + "=" * (-len(value) % 4))
    return value


class ServicerContext:
    """What a handler gets as ``context``: grpc.aio's ``ServicerContext`` API, on Conch's transport."""

    __slots__ = ("_call", "_metadata", "_code", "_details", "_trailing", "_initial_sent", "_callbacks")

    def __init__(self, call: Call, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self._call = call
        self._metadata = metadata
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Sequence[tuple[str, Any]] = ()
        self._initial_sent = False
        self._callbacks: list[Callable[[Any], None]] = []

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, Any]] = ()
    ) -> None:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs a status other than OK")
        self._code = code
        self._details = details
        if trailing_metadata:
            self._trailing = trailing_metadata
        raise grpc.aio.AbortError(f"aborted with {code}")

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, Any]]) -> None:
        self._trailing = trailing_metadata

    def trailing_metadata(self) -> Sequence[tuple[str, Any]]:
        return self._trailing

    async def send_initial_metadata(self, initial_metadata: Sequence[tuple[str, Any]]) -> None:
        if self._initial_sent:
            raise grpc.aio.UsageError("initial metadata was already sent")
        self._call.send_response_headers(metadata_block(initial_metadata))

    async def write(self, message: Any) -> None:
        await self._call.write(message)

    async def read(self) -> Any:
        requests = self._call.requests
        if requests is None:
            raise grpc.aio.UsageError("read() is for calls with a request stream")
        try:
            return await requests.__anext__()
        except StopAsyncIteration:
            return grpc.aio.EOF

    def peer(self) -> str:
        return self._call.conn.peer

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline
        return None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.finished

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)

    def set_compression(self, compression: Any) -> None:
        """Responses are sent uncompressed."""

    def disable_next_message_compression(self) -> None:
        """Responses are sent uncompressed."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None


class _Requests:
    """The request stream of a streaming call, as an async iterator of deserialized messages."""

    __slots__ = ("_items", "_waiter", "_ended", "_deserialize")

    def __init__(self, deserialize: Callable[[bytes], Any] | None) -> None:
        self._items: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._deserialize = deserialize

    def push(self, raw: bytes) -> None:
        self._items.append(raw)
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        raw = self._items.popleft()
        return raw if self._deserialize is None else self._deserialize(raw)


class Call:
    """One gRPC call on one stream."""

    __slots__ = (
        "conn", "stream", "handler", "settings", "context", "task", "requests", "deadline", "cancelled",
        "finished", "fast", "pending", "_buffer", "_message", "_count", "_encoding", "_timer", "_headers_sent",
        "_ready",
    )

    def __init__(
        self,
        conn: H2Connection,
        stream: Stream,
        handler: grpc.RpcMethodHandler,
        settings: CallSettings,
        metadata: tuple[tuple[str, str | bytes], ...],
        encoding: str | None,
        timeout: float | None,
        fast: FastUnary | None = None,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.handler = handler
        self.settings = settings
        self.context = ServicerContext(self, metadata)
        self.task: asyncio.Task[None] | None = None
        self.requests: _Requests | None = None
        self.cancelled = False
        self.finished = False
        self.fast = fast
        self.pending: Pending | None = None  # a fast handler's answer still to come
        self._buffer: bytearray | None = None
        self._message: bytes | None = None
        self._count = 0
        self._encoding = encoding
        self._headers_sent = False
        self._ready = False  # the unary request is complete and its handler started
        self.deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        if timeout is not None:
            loop = asyncio.get_running_loop()
            self.deadline = loop.time() + timeout
            self._timer = loop.call_later(timeout, self._expire)
        if handler.request_streaming:
            self.requests = _Requests(handler.request_deserializer)
            self._start(self._run())

    # -- from the connection ----------------------------------------------------------------------

    def on_data(self, source: bytes | bytearray, start: int, end: int, end_stream: bool) -> None:
        if self.finished:
            return
        if self._buffer is None and end - start >= 5:
            flag, length = _PREFIX.unpack_from(source, start)
            if start + 5 + length == end:  # exactly one whole message: the common case, one copy
                self._take(flag, bytes(source[start + 5 : end]))
                if end_stream:
                    self.on_end()
                return
        if self._buffer is None:
            self._buffer = bytearray()
        buffer = self._buffer
        buffer += source[start:end]
        pos = 0
        while len(buffer) - pos >= 5 and not self.finished:
            flag, length = _PREFIX.unpack_from(buffer, pos)
            if length > self.settings.max_receive:
                self._too_large(length)
                return
            if len(buffer) - pos - 5 < length:
                break
            self._take(flag, bytes(memoryview(buffer)[pos + 5 : pos + 5 + length]))
            pos += 5 + length
        if len(buffer) - pos >= 5 and not self.finished:
            length = _PREFIX.unpack_from(buffer, pos)[1]
            if length > self.settings.max_receive:
                self._too_large(length)
                return
        del buffer[:pos]
        if end_stream:
            self.on_end()

    def on_end(self) -> None:
        if self.finished:
            return
        if self._buffer:
            self.finish(grpc.StatusCode.INTERNAL, "Incomplete message at the end of the request stream")
            return
        if self.requests is not None:
            self.requests.end()
        elif not self._ready:
            if self._count != 1:
                self.finish(grpc.StatusCode.UNIMPLEMENTED, f"Expected one request message, got {self._count}")
                return
            self._ready = True
            message, self._message = self._message, None
            assert message is not None
            if self.fast is not None:
                try:
                    if self.fast(message, self):
                        return  # answered, or to be answered through reply()/finish() without a task
                except Exception:  # noqa: BLE001 - a bug in the fast handler must not lose the call
                    log.exception("fast gRPC handler failed; answering through the method's handler")
                    if self.finished:
                        return
                    self.pending = None
            self._start(self._run(message))

    def on_reset(self) -> None:
        self.cancelled = True
        self._drop_pending()
        self._end()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.requests is not None:
            self.requests.end()

    # -- messages in -----------------------------------------------------------------------------

    def _take(self, flag: int, payload: bytes) -> None:
        if len(payload) > self.settings.max_receive:
            self._too_large(len(payload))
            return
        if flag:
            try:
                payload = self._decompress(payload)
            except (zlib.error, ValueError) as exc:
                self.finish(grpc.StatusCode.INTERNAL, f"Failed to decompress the request message: {exc}")
                return
        elif flag not in (0, 1):
            self.finish(grpc.StatusCode.INTERNAL, f"Bad compressed-flag {flag} in a request message")
            return
        self._count += 1
        if self.requests is not None:
            self.requests.push(payload)
        else:
            self._message = payload

    def _decompress(self, payload: bytes) -> bytes:
        encoding = self._encoding
        if encoding == "gzip":
            data = zlib.decompress(payload, 31)
        elif encoding == "deflate":
            data = zlib.decompress(payload)
        else:
            raise ValueError(f"a compressed message with grpc-encoding {encoding or 'identity'}")
        if len(data) > self.settings.max_receive:
            raise ValueError(f"decompressed message larger than max ({len(data)} vs. {self.settings.max_receive})")
        return data

    def _too_large(self, length: int) -> None:
        self.finish(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max ({length} vs. {self.settings.max_receive})",
        )

    # -- running the handler ---------------------------------------------------------------------

    def _start(self, coroutine: Any) -> None:
        self.task = asyncio.get_running_loop().create_task(coroutine)

    async def _run(self, raw: bytes | None = None) -> None:
        """Run the handler (any of the four kinds) and end the call with its status."""
        handler = self.handler
        context = self.context
        if self.requests is not None:
            request: Any = self.requests
        else:
            try:
                request = raw if handler.request_deserializer is None else handler.request_deserializer(raw)
            except Exception:  # noqa: BLE001 - a bad message fails its call
                log.debug("request of a gRPC call could not be deserialized", exc_info=True)
                self.finish(grpc.StatusCode.INTERNAL, "Exception deserializing request!")
                return
        try:
            result = _behaviour(handler)(request, context)
            if inspect.isasyncgen(result):
                if not handler.response_streaming:
                    raise TypeError("a unary-response handler must not be a generator")
                async for response in result:
                    await self.write(response)
            else:
                response = await result
                if not handler.response_streaming and not self.finished and context._code in (None, grpc.StatusCode.OK):
                    self._send_message(self._serialize(response))
        except grpc.aio.AbortError:
            self.finish(context._code or grpc.StatusCode.UNKNOWN, context._details)
            return
        except asyncio.CancelledError:
            if self.cancelled:
                return
            raise
        except SendTooLarge as exc:
            self.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            return
        except _SerializeFailed:
            log.exception("response of a gRPC call could not be serialized")
            self.finish(grpc.StatusCode.INTERNAL, "Exception serializing response!")
            return
        except Exception as exc:  # noqa: BLE001 - anything a handler raises becomes a status
            log.exception("unexpected error in a gRPC handler")
            self.finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
            return
        self.finish(context._code or grpc.StatusCode.OK, context._details)

    def _serialize(self, message: Any) -> Any:
        serializer = self.handler.response_serializer
        if serializer is None:
            return message
        try:
            return serializer(message)
        except Exception as exc:  # noqa: BLE001
            raise _SerializeFailed from exc

    # -- messages out ----------------------------------------------------------------------------

    def send_response_headers(self, extra: bytes = b"") -> None:
        if not self._headers_sent:
            self._headers_sent = True
            self.context._initial_sent = True
            self.conn.send_headers(self.stream, RESPONSE_HEADERS + extra)

    def _send_message(self, data: Any) -> None:
        size = len(data)
        if size > self.settings.max_send:
            raise SendTooLarge(size, self.settings.max_send)
        self.send_response_headers()
        prefix = _PREFIX.pack(0, size)
        chunks: list[Chunk] = [prefix + data] if size <= _JOIN_LIMIT else [prefix, data]
        self.conn.send_data(self.stream, chunks, size + 5)

    async def write(self, message: Any) -> None:
        """Send one message of a streamed response (waits while the peer is slow to take them)."""
        if self.finished:
            raise grpc.aio.AbortError("the call is already over") if not self.cancelled else asyncio.CancelledError()
        self._send_message(self._serialize(message))
        self.conn.flush_soon()
        if self.stream.out_size > 0:
            await self.conn.writable(self.stream)

    def reply(self, data: bytes, parts: list[Chunk] | None = None) -> None:
        """End a unary call with one serialized response message and status OK, as the handler path does.

        ``parts``: the message as pieces (``data`` then unused), queued without joining them.
        """
        if self.finished:
            return
        self.pending = None
        if parts is None:
            size = len(data)
        else:
            size = sum(len(part) for part in parts)
        if size > self.settings.max_send:
            self.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, str(SendTooLarge(size, self.settings.max_send)))
            return
        if parts is None:
            self._send_message(data)
        else:
            self.send_response_headers()
            self.conn.send_data(self.stream, [_PREFIX.pack(0, size), *parts], size + 5)
        self.finish(grpc.StatusCode.OK, "")

    def _drop_pending(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()

    def finish(self, code: grpc.StatusCode, details: str) -> None:
        """End the call with a status (trailers-only when nothing was sent yet)."""
        if self.finished:
            return
        self._end()
        block = status_trailers(code, details, self.context._trailing)
        if self._headers_sent:
            self.conn.send_trailers(self.stream, block)
        else:
            self.conn.send_headers(self.stream, RESPONSE_HEADERS + block, end_stream=True)
        self.conn.flush_soon()

    def _end(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        callbacks = self.context._callbacks
        if callbacks:
            for callback in callbacks:
                try:
                    callback(self.context)
                except Exception:  # noqa: BLE001
                    log.exception("a gRPC done callback failed")

    def _expire(self) -> None:
        self._timer = None
        if self.finished:
            return
        self.cancelled = True
        self._drop_pending()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.requests is not None:
            self.requests.end()
        self.finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


class _SerializeFailed(Exception):
    """The handler's response could not be serialized."""


class SendTooLarge(Exception):
    """A response message above the server's send limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"Sent message larger than max ({size} vs. {limit})")


def _behaviour(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary
    return handler.unary_stream if handler.response_streaming else handler.unary_unary


def open_call(
    conn: H2Connection,
    stream: Stream,
    headers: Headers,
    end_stream: bool,
    lookup: Callable[[str], grpc.RpcMethodHandler | None],
    settings: CallSettings,
    fast: Callable[[str], FastUnary | None] | None = None,
) -> Call | _Refused:
    """Start the call a new stream's request headers ask for, or answer at once why not."""
    path = method = content_type = encoding = timeout_text = None
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name[0] == ":":
            if name == ":path":
                path = value
            elif name == ":method":
                method = value
        elif name in _NOT_METADATA:
            if name == "content-type":
                content_type = value
            elif name == "grpc-timeout":
                timeout_text = value
            elif name == "grpc-encoding":
                encoding = value
        else:
            metadata.append((name, _metadata_value(name, value)))
    if method != "POST":
        return _Refused(conn, stream, b"405")
    if content_type is None or not content_type.startswith("application/grpc"):
        return _Refused(conn, stream, b"415")
    handler = lookup(path) if path else None
    if handler is None:
        return _Refused(conn, stream, None, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    if encoding not in (None, "identity", "gzip", "deflate"):
        return _Refused(
            conn, stream, None, grpc.StatusCode.UNIMPLEMENTED, f"Compression algorithm '{encoding}' is not supported"
        )
    timeout = None
    if timeout_text is not None:
        timeout = parse_timeout(timeout_text)
        if timeout is None:
            return _Refused(conn, stream, None, grpc.StatusCode.INTERNAL, f"Bad grpc-timeout '{timeout_text}'")
    unary = fast(path) if fast is not None and path and not handler.request_streaming else None
    call = Call(conn, stream, handler, settings, tuple(metadata), encoding, timeout, unary)
    if end_stream:
        call.on_end()
    return call


class _Refused:
    """A stream answered at once (HTTP error or a trailers-only gRPC status); further data is ignored."""

    __slots__ = ()

    def __init__(
        self,
        conn: H2Connection,
        stream: Stream,
        http_status: bytes | None,
        code: grpc.StatusCode = grpc.StatusCode.OK,
        details: str = "",
    ) -> None:
        if http_status is not None:
            conn.send_headers(stream, encode([(b":status", http_status)]), end_stream=True)
        else:
            conn.send_headers(stream, RESPONSE_HEADERS + status_trailers(code, details), end_stream=True)

    def on_data(self, source: bytes | bytearray, start: int, end: int, end_stream: bool) -> None:
        pass

    def on_end(self) -> None:
        pass

    def on_reset(self) -> None:
        pass

