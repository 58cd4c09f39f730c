"""One HTTP/2 server connection (RFC 9113) as an asyncio protocol: frames, streams and flow control.

What a stream carries is left to a :class:`StreamHandler` (a gRPC call). Frames are parsed straight
from what the socket delivered; everything a pass over the input produces (acknowledgements, window
updates, responses finished on the spot) leaves in one write at its end, and a response finished later
leaves in one write too.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

from conch.frontends.grpc.transport import frames as f
from conch.frontends.grpc.transport.headers import HeaderDecoder, Headers
from conch.frontends.linger import QUICK_S, Linger

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

#: What this server advertises and grants.
STREAM_WINDOW = 8 * 1024 * 1024
CONNECTION_WINDOW = 32 * 1024 * 1024
MAX_FRAME = 4 * 1024 * 1024
MAX_STREAMS = 4096
MAX_HEADER_LIST = 64 * 1024
#: A writer of a streamed response waits while more than this is queued for its stream.
HIGH_WATER = 4 * 1024 * 1024
_JOIN_LIMIT = 64 * 1024

Chunk = bytes | bytearray | memoryview


class StreamHandler(Protocol):
    """What runs on a stream (a gRPC call): told of its data, its end and its reset."""

    def on_data(self, source: bytes | bytearray, start: int, end: int, end_stream: bool) -> None:
        """``source[start:end]`` arrived; copy what is kept, ``source`` is reused."""

    def on_end(self) -> None:
        """The peer closed its side with a trailers block."""

    def on_reset(self) -> None:
        """The stream was reset by the peer, or the connection was lost."""


class Stream:
    """One stream's state on this side."""

    __slots__ = (
        "id", "handler", "send_window", "out", "out_size", "trailers", "recv_unacked", "remote_closed", "closed",
        "writable",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.handler: StreamHandler | None = None
        self.send_window = send_window
        self.out: deque[Chunk] = deque()
        self.out_size = 0
        self.trailers: bytes | None = None  # sent once ``out`` has drained
        self.recv_unacked = 0
        self.remote_closed = False
        self.closed = False
        self.writable: asyncio.Future[None] | None = None


class H2Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection."""

    def __init__(
        self,
        opener: Callable[[H2Connection, Stream, Headers, bool], StreamHandler],
        on_closed: Callable[[H2Connection], None],
        linger: Linger | None = None,
    ) -> None:
        self._opener = opener
        self._linger = linger
        self._responded_at = 0.0  # perf_counter of the last response that left this connection idle
        self._quick = False  # the last stream opened right after such a response
        self._on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self.peer: str = ""
        self._buffer = bytearray()
        self._preface = False
        self._decoder = HeaderDecoder(MAX_HEADER_LIST)
        self.streams: dict[int, Stream] = {}
        self._last_stream_id = 0
        self._send_window = f.DEFAULT_WINDOW
        self._peer_stream_window = f.DEFAULT_WINDOW
        self._peer_max_frame = f.DEFAULT_MAX_FRAME
        self._recv_unacked = 0
        self._blocked: dict[int, Stream] = {}
        self._out: list[Chunk] = []
        self._out_size = 0
        self._receiving = False
        self._continuing: tuple[int, int, bytearray] | None = None  # stream id, flags, fragments so far
        self.closing = False
        self._close_wanted = False
        self._flush_scheduled = False
        self.idle: asyncio.Event = asyncio.Event()

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            host = f"[{peer[0]}]" if ":" in str(peer[0]) else peer[0]
            self.peer = f"ipv6:{host}:{peer[1]}" if ":" in str(peer[0]) else f"ipv4:{host}:{peer[1]}"
        self._write(f.settings({
            f.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            f.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            f.MAX_FRAME_SIZE: MAX_FRAME,
            f.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        }))
        self._write(f.window_update(0, CONNECTION_WINDOW - f.DEFAULT_WINDOW))
        self.flush()

    def data_received(self, data: bytes) -> None:
        source: bytes | bytearray
        if self._buffer:
            self._buffer += data
            source = self._buffer
        else:
            source = data
        size = len(source)
        pos = 0
        if not self._preface:
            if size < len(f.PREFACE):
                if not f.PREFACE.startswith(bytes(source)):
                    self._abort_connection(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                self._keep(source, 0)
                return
            if source[: len(f.PREFACE)] != f.PREFACE:
                self._abort_connection(f.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            self._preface = True
            pos = len(f.PREFACE)
        unpack = f.HEADER.unpack_from
        self._receiving = True
        try:
            while size - pos >= f.HEADER_SIZE:
                high, low, kind, flags, stream_id = unpack(source, pos)
                length = high << 16 | low
                if length > MAX_FRAME:
                    raise f.ProtocolViolation(f.FRAME_SIZE_ERROR, f"frame of {length} bytes, more than {MAX_FRAME}")
                end = pos + f.HEADER_SIZE + length
                if end > size:
                    break
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, source, pos + f.HEADER_SIZE, end)
                pos = end
        except f.ProtocolViolation as exc:
            self._receiving = False
            self._abort_connection(exc.code, str(exc))
            return
        finally:
            self._receiving = False
        self._keep(source, pos)
        self.flush()

    def _keep(self, source: bytes | bytearray, pos: int) -> None:
        if source is self._buffer:
            del self._buffer[:pos]
        elif pos < len(source):
            self._buffer += memoryview(source)[pos:]

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        streams = list(self.streams.values())
        self.streams.clear()
        self._blocked.clear()
        for stream in streams:
            stream.closed = True
            _wake(stream)
            if stream.handler is not None:
                stream.handler.on_reset()
        self.idle.set()
        self._on_closed(self)

    # -- frames in -------------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, src: bytes | bytearray, start: int, end: int) -> None:
        if self._continuing is not None and kind != f.CONTINUATION:
            raise f.ProtocolViolation(f.PROTOCOL_ERROR, "header block interrupted by another frame")
        if kind == f.DATA:
            self._data(flags, stream_id, src, start, end)
        elif kind == f.HEADERS:
            self._headers_frame(flags, stream_id, src, start, end)
        elif kind == f.CONTINUATION:
            self._continuation(flags, stream_id, src, start, end)
        elif kind == f.WINDOW_UPDATE:
            self._window_update(stream_id, src, start, end)
        elif kind == f.SETTINGS:
            self._settings(flags, stream_id, src, start, end)
        elif kind == f.PING:
            if end - start != 8 or stream_id != 0:
                raise f.ProtocolViolation(f.FRAME_SIZE_ERROR, "PING payload must be 8 bytes on stream 0")
            if not flags & f.ACK:
                self._write(f.frame(f.PING, f.ACK, 0, bytes(src[start:end])))
        elif kind == f.RST_STREAM:
            self._rst_stream(stream_id, src, start, end)
        elif kind == f.GOAWAY:
            self.closing = True
            self._close_if_idle()
        elif kind == f.PUSH_PROMISE:
            raise f.ProtocolViolation(f.PROTOCOL_ERROR, "a client must not send PUSH_PROMISE")
        # PRIORITY and unknown types are ignored

    def _data(self, flags: int, stream_id: int, src: bytes | bytearray, start: int, end: int) -> None:
        if stream_id == 0:
            raise f.ProtocolViolation(f.PROTOCOL_ERROR, "DATA on stream 0")
        length = end - start
        self._recv_unacked += length
        if self._recv_unacked >= CONNECTION_WINDOW // 2:
            self._write(f.window_update(0, self._recv_unacked))
            self._recv_unacked = 0
        if flags & f.PADDED:
            if length < 1 or src[start] >= length:
                raise f.ProtocolViolation(f.PROTOCOL_ERROR, "bad DATA padding")
            end -= src[start]
            start += 1
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self._last_stream_id:
                raise f.ProtocolViolation(f.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream this side has closed or reset: frames still in flight are ignored
        end_stream = bool(flags & f.END_STREAM)
        if end_stream:
            stream.remote_closed = True
        else:
            stream.recv_unacked += length
            if stream.recv_unacked >= STREAM_WINDOW // 2:
                self._write(f.window_update(stream_id, stream.recv_unacked))
                stream.recv_unacked = 0
        assert stream.handler is not None
        stream.handler.on_data(src, start, end, end_stream)
        if end_stream and stream.closed:
            self._forget(stream)

    def _headers_frame(self, flags: int, stream_id: int, src: bytes | bytearray, start: int, end: int) -> None:
        if stream_id == 0:
            raise f.ProtocolViolation(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & f.PADDED:
            if end - start < 1 or src[start] >= end - start:
                raise f.ProtocolViolation(f.PROTOCOL_ERROR, "bad HEADERS padding")
            end -= src[start]
            start += 1
        if flags & f.PRIORITY_FLAG:
            start += 5
        if flags & f.END_HEADERS:
            self._header_block(flags, stream_id, bytes(src[start:end]))
        else:
            self._continuing = (stream_id, flags, bytearray(src[start:end]))

    def _continuation(self, flags: int, stream_id: int, src: bytes | bytearray, start: int, end: int) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise f.ProtocolViolation(f.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block = self._continuing[2]
        block += src[start:end]
        if len(block) > MAX_HEADER_LIST * 2:
            raise f.ProtocolViolation(f.PROTOCOL_ERROR, "header block too large")
        if flags & f.END_HEADERS:
            first_flags = self._continuing[1]
            self._continuing = None
            self._header_block(first_flags, stream_id, bytes(block))

    def _header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        headers = self._decoder.decode(block)  # always: the decoder's table must follow every block
        end_stream = bool(flags & f.END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers of the request
            if stream.remote_closed or not end_stream:
                self.reset(stream, f.PROTOCOL_ERROR)
                return
            stream.remote_closed = True
            assert stream.handler is not None
            stream.handler.on_end()
            if stream.closed:
                self._forget(stream)
            return
        if stream_id % 2 == 0 or stream_id <= self._last_stream_id:
            raise f.ProtocolViolation(f.PROTOCOL_ERROR, f"HEADERS opening stream {stream_id} out of order")
        self._last_stream_id = stream_id
        if self.closing or len(self.streams) >= MAX_STREAMS:
            self._write(f.rst_stream(stream_id, f.REFUSED_STREAM))
            return
        linger = self._linger
        if linger is not None:
            if linger.active:
                linger.arrived()
            if self._responded_at:
                self._quick = time.perf_counter() - self._responded_at < QUICK_S
                self._responded_at = 0.0
        stream = Stream(stream_id, self._peer_stream_window)
        stream.remote_closed = end_stream
        self.streams[stream_id] = stream
        self.idle.clear()
        stream.handler = self._opener(self, stream, headers, end_stream)

    def _window_update(self, stream_id: int, src: bytes | bytearray, start: int, end: int) -> None:
        if end - start != 4:
            raise f.ProtocolViolation(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
        increment = f.u32(src, start) & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise f.ProtocolViolation(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                raise f.ProtocolViolation(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            for blocked in list(self._blocked.values()):
                self._pump(blocked)
                if self._send_window <= 0:
                    break
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if increment == 0:
            self.reset(stream, f.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.out:
            self._pump(stream)

    def _settings(self, flags: int, stream_id: int, src: bytes | bytearray, start: int, end: int) -> None:
        if stream_id != 0:
            raise f.ProtocolViolation(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            return
        for key, value in f.parse_settings(memoryview(bytes(src[start:end]))):
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise f.ProtocolViolation(f.FLOW_CONTROL_ERROR, "initial window above 2^31-1")
                delta = value - self._peer_stream_window
                self._peer_stream_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                    raise f.ProtocolViolation(f.PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
                self._peer_max_frame = value
        self._write(f.frame(f.SETTINGS, f.ACK, 0))
        for blocked in list(self._blocked.values()):
            self._pump(blocked)

    def _rst_stream(self, stream_id: int, src: bytes | bytearray, start: int, end: int) -> None:
        if end - start != 4 or stream_id == 0:
            raise f.ProtocolViolation(f.FRAME_SIZE_ERROR, "bad RST_STREAM")
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.closed = True
        self._forget(stream)
        _wake(stream)
        if stream.handler is not None:
            stream.handler.on_reset()

    # -- frames out ------------------------------------------------------------------------------

    def send_headers(self, stream: Stream, block: bytes, end_stream: bool = False) -> None:
        """A header block (split into CONTINUATION frames when larger than the peer's frame size)."""
        if stream.closed:
            return
        limit = self._peer_max_frame
        end_flag = f.END_STREAM if end_stream else 0
        if len(block) <= limit:
            self._write(f.head(f.HEADERS, f.END_HEADERS | end_flag, stream.id, len(block)))
            self._write(block)
        else:
            pieces = [block[i : i + limit] for i in range(0, len(block), limit)]
            for index, piece in enumerate(pieces):
                kind = f.HEADERS if index == 0 else f.CONTINUATION
                flags = (end_flag if index == 0 else 0) | (f.END_HEADERS if index == len(pieces) - 1 else 0)
                self._write(f.head(kind, flags, stream.id, len(piece)))
                self._write(piece)
        if end_stream:
            self._finish(stream)

    def send_data(self, stream: Stream, chunks: list[Chunk], size: int) -> None:
        """Queue ``chunks`` (``size`` bytes in all) on the stream; they leave as flow control allows."""
        if stream.closed:
            return
        stream.out.extend(chunks)
        stream.out_size += size
        self._pump(stream)

    def send_trailers(self, stream: Stream, block: bytes) -> None:
        """End the stream with ``block`` once everything queued has left."""
        if stream.closed:
            return
        if stream.out:
            stream.trailers = block
        else:
            self.send_headers(stream, block, end_stream=True)

    def reset(self, stream: Stream, code: int) -> None:
        """Reset the stream (RST_STREAM); its handler is not told (it asked, or is told otherwise)."""
        if not stream.closed:
            stream.closed = True
            self._write(f.rst_stream(stream.id, code))
        self._forget(stream)
        _wake(stream)

    async def writable(self, stream: Stream) -> None:
        """Wait until the stream has room for more (below :data:`HIGH_WATER` queued) or is closed."""
        while stream.out_size > HIGH_WATER and not stream.closed:
            if stream.writable is None:
                stream.writable = asyncio.get_running_loop().create_future()
            await stream.writable

    def flush(self) -> None:
        """Write what is waiting, in one go; inside :meth:`data_received` that happens at its end."""
        if self._receiving:
            return
        if self._out:
            self._write_out()
        if self._close_wanted and self.transport is not None:
            self.transport.close()

    def flush_soon(self) -> None:
        """Write what is waiting now when no other stream is open; otherwise at the end of this turn of
        the event loop, together with whatever else finishes in it (the responses of one batch leave
        in one write, not one each)."""
        if not self.streams:
            self.flush()  # nothing else in flight here: nothing to wait for
            linger = self._linger
            if linger is not None and linger.seconds:
                self._responded_at = time.perf_counter()
                if self._quick:
                    linger.start()
            return
        if not self._flush_scheduled and not self._receiving:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def _write_out(self) -> None:
        out = self._out
        self._out = []
        size = self._out_size
        self._out_size = 0
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if size <= _JOIN_LIMIT or len(out) == 1:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        else:
            transport.writelines(out)

    def _write(self, data: Chunk) -> None:
        self._out.append(data)
        self._out_size += len(data)

    def _pump(self, stream: Stream) -> None:
        out = stream.out
        while out:
            budget = min(self._send_window, stream.send_window, self._peer_max_frame)
            if budget <= 0:
                self._blocked[stream.id] = stream
                return
            parts: list[Chunk] = []
            taken = 0
            while out and taken < budget:
                chunk = out[0]
                room = budget - taken
                if len(chunk) <= room:
                    out.popleft()
                    parts.append(chunk)
                    taken += len(chunk)
                else:
                    view = memoryview(chunk)
                    parts.append(view[:room])
                    out[0] = view[room:]
                    taken += room
            stream.out_size -= taken
            self._send_window -= taken
            stream.send_window -= taken
            self._write(f.head(f.DATA, 0, stream.id, taken))
            for part in parts:
                self._write(part)
        self._blocked.pop(stream.id, None)
        if stream.writable is not None and stream.out_size <= HIGH_WATER:
            _wake(stream)
        if stream.trailers is not None:
            trailers, stream.trailers = stream.trailers, None
            self.send_headers(stream, trailers, end_stream=True)

    def _finish(self, stream: Stream) -> None:
        """This side has ended the stream; a stream the peer has not ended yet is reset with NO_ERROR."""
        stream.closed = True
        if not stream.remote_closed:
            self._write(f.rst_stream(stream.id, f.NO_ERROR))
        self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self._blocked.pop(stream.id, None)
        if not self.streams:
            self.idle.set()
            self._close_if_idle()

    # -- the connection as a whole ---------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop taking new streams (GOAWAY); close once the open ones are done."""
        if self.transport is None:
            return
        if not self.closing:
            self.closing = True
            self._write(f.goaway(self._last_stream_id, f.NO_ERROR))
            self.flush()
        self._close_if_idle()

    def abort(self) -> None:
        """Close now; open streams are reset."""
        if self.transport is not None:
            self.transport.close()

    def _close_if_idle(self) -> None:
        if self.closing and not self.streams:
            self._close_wanted = True
            self.flush()

    def _abort_connection(self, code: int, message: str) -> None:
        log.debug("HTTP/2 connection error from %s: %s", self.peer, message)
        self._write(f.goaway(self._last_stream_id, code, message.encode()[:256]))
        self._close_wanted = True
        self.flush()


def _wake(stream: Stream) -> None:
    waiter = stream.writable
    if waiter is not None:
        stream.writable = None
        if not waiter.done():
            waiter.set_result(None)

