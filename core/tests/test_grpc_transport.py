"""Conch's HTTP/2 gRPC transport on its own: grpcio clients (C core) and a raw HTTP/2 client (h2).

A small echo service, registered as grpc.aio servicers are, runs on the transport on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
import zlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from conch.frontends.grpc.transport import H2GrpcServer

SERVICE = "test.Echo"
LIMIT = 4 * 1024 * 1024


async def _unary(request: bytes, context: Any) -> bytes:
    return request


async def _metadata(request: bytes, context: Any) -> bytes:
    pairs = [[k, v.decode("latin-1") if isinstance(v, bytes) else v] for k, v in context.invocation_metadata()]
    return json.dumps({"metadata": pairs, "remaining": context.time_remaining()}).encode()


async def _abort(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("why", "asked"),))
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.decode())
    raise AssertionError("abort returned")


async def _raise(request: bytes, context: Any) -> bytes:
    raise ValueError("broken handler")


async def _slow(request: bytes, context: Any) -> bytes:
    try:
        await asyncio.sleep(float(request.decode()))
    except asyncio.CancelledError:
        CANCELLED.append(True)
        raise
    return b"done"


async def _server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for index in range(int(request.decode())):
        yield str(index).encode()


async def _server_stream_by_write(request: bytes, context: Any) -> None:
    for index in range(int(request.decode())):
        await context.write(str(index).encode())


async def _bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request[::-1]


async def _client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return b"|".join([request async for request in requests])


CANCELLED: list[bool] = []

HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(_unary),
    "Metadata": grpc.unary_unary_rpc_method_handler(_metadata),
    "Abort": grpc.unary_unary_rpc_method_handler(_abort),
    "Raise": grpc.unary_unary_rpc_method_handler(_raise),
    "Slow": grpc.unary_unary_rpc_method_handler(_slow),
    "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
    "ServerStreamByWrite": grpc.unary_stream_rpc_method_handler(_server_stream_by_write),
    "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
    "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
}


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = H2GrpcServer(max_receive_message_length=LIMIT, max_send_message_length=LIMIT)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
    bound = await server.bind("127.0.0.1", 0)
    await server.start()
    CANCELLED.clear()
    yield bound
    await server.stop(None)


def _method(channel: grpc.aio.Channel, name: str, kind: str = "unary_unary") -> Any:
    return getattr(channel, kind)(f"/{SERVICE}/{name}")


async def test_unary_round_trips_of_every_size(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = _method(channel, "Unary")
        for size in (0, 1, 5, 16_383, 16_384, 65_536, 1_000_000, LIMIT - 5):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            assert await unary(payload) == payload


async def test_many_concurrent_calls_on_one_connection(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = _method(channel, "Unary")
        payloads = [str(i).encode() * (i % 7 + 1) * 1000 for i in range(300)]
        assert await asyncio.gather(*(unary(p) for p in payloads)) == payloads


async def test_metadata_reaches_the_handler_and_changes_between_calls(port: int) -> None:
    """Custom headers change from call to call: each call must see its own (the HPACK cache must not lie)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = _method(channel, "Metadata")
        for index in range(40):
            metadata = (("x-index", str(index % 5)), ("x-bin", bytes([index, 0, 255])), ("x-const", "same"))
            seen = json.loads(await call(b"", metadata=metadata))
            pairs = {key: value for key, value in seen["metadata"]}
            assert pairs["x-index"] == str(index % 5)
            assert pairs["x-bin"] == bytes([index, 0, 255]).decode("latin-1")
            assert pairs["x-const"] == "same"
            assert seen["remaining"] is None
        seen = json.loads(await call(b"", timeout=30))
        assert 25 < seen["remaining"] <= 31  # the client rounds its grpc-timeout up


async def test_abort_and_exceptions_become_statuses(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _method(channel, "Abort")("bad input: café 100%\nline two".encode())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "bad input: café 100%\nline two"
        assert ("why", "asked") in tuple(info.value.trailing_metadata())

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _method(channel, "Raise")(b"")
        assert info.value.code() == grpc.StatusCode.UNKNOWN
        assert "broken handler" in info.value.details()

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(f"/{SERVICE}/Nope")(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert info.value.details() == "Method not found!"


async def test_deadline_cancels_the_handler(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _method(channel, "Slow")(b"5", timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(100):
            if CANCELLED:
                break
            await asyncio.sleep(0.01)
        assert CANCELLED == [True]
        assert await _method(channel, "Slow")(b"0.01", timeout=5) == b"done"


async def test_client_cancel_cancels_the_handler(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = _method(channel, "Slow")(b"5")
        await asyncio.sleep(0.2)
        call.cancel()
        for _ in range(100):
            if CANCELLED:
                break
            await asyncio.sleep(0.01)
        assert CANCELLED == [True]


async def test_too_large_request_is_resource_exhausted(port: int) -> None:
    options = [("grpc.max_send_message_length", 2 * LIMIT)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _method(channel, "Unary")(bytes(LIMIT + 1))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == f"Received message larger than max ({LIMIT + 1} vs. {LIMIT})"
        assert await _method(channel, "Unary")(b"still serving") == b"still serving"


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
async def test_compressed_requests(port: int, compression: grpc.Compression) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", compression=compression) as channel:
        payload = b"squeeze me " * 10_000
        assert await _method(channel, "Unary")(payload) == payload


@pytest.mark.parametrize("name", ["ServerStream", "ServerStreamByWrite"])
async def test_server_streaming(port: int, name: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        responses = [r async for r in _method(channel, name, "unary_stream")(b"50")]
        assert responses == [str(i).encode() for i in range(50)]
        assert [r async for r in _method(channel, name, "unary_stream")(b"0")] == []


async def test_bidirectional_and_client_streaming(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = _method(channel, "Bidi", "stream_stream")()
        for index in range(20):
            await call.write(f"message {index}".encode() * (index * 500 + 1))
            expected = (f"message {index}".encode() * (index * 500 + 1))[::-1]
            assert await call.read() == expected
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK

        async def parts() -> AsyncIterator[bytes]:
            for piece in (b"a", b"b" * 100_000, b"c"):
                yield piece

        assert await _method(channel, "ClientStream", "stream_unary")(parts()) == b"a|" + b"b" * 100_000 + b"|c"


async def test_graceful_stop_lets_calls_in_flight_finish() -> None:
    server = H2GrpcServer(max_receive_message_length=LIMIT, max_send_message_length=LIMIT)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
    port = await server.bind("127.0.0.1", 0)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = _method(channel, "Slow")(b"0.3")
        await asyncio.sleep(0.1)
        await server.stop(5.0)
        assert await call == b"done"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _method(channel, "Unary")(b"x", timeout=2)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


# -- raw HTTP/2 ----------------------------------------------------------------------------------


class RawClient:
    """A blocking h2 client on a plain socket, for what grpcio never sends."""

    def __init__(self, port: int, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.sock.sendall(self.conn.data_to_send())
        self.events: list[Any] = []

    def send(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def call(self, path: str, message: bytes, content_type: str = "application/grpc", flag: int = 0) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "test"),
                   ("content-type", content_type), ("te", "trailers")]
        if flag:
            headers.append(("grpc-encoding", "gzip"))
        self.conn.send_headers(stream_id, headers)
        body = bytes([flag]) + len(message).to_bytes(4, "big") + message
        while body:
            room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.pump()
                continue
            self.conn.send_data(stream_id, body[:room], end_stream=len(body) <= room)
            body = body[room:]
            self.send()
        self.send()
        return stream_id

    def pump(self) -> list[Any]:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("closed")
        events = self.conn.receive_data(data)
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.send()
        self.events.extend(events)
        return events

    def response(self, stream_id: int) -> tuple[dict[str, str], bytes, dict[str, str]]:
        headers: dict[str, str] = {}
        body = bytearray()
        trailers: dict[str, str] = {}
        done = False
        while not done:
            for event in self.pump():
                if getattr(event, "stream_id", None) != stream_id:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    headers = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    done = True
        return headers, bytes(body), trailers

    def close(self) -> None:
        self.sock.close()


async def _in_thread(function: Any, *args: Any) -> Any:
    return await asyncio.to_thread(function, *args)


async def test_small_peer_window_and_frame_size_are_respected(port: int) -> None:
    def run() -> None:
        client = RawClient(port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000,
                                  h2.settings.SettingCodes.MAX_FRAME_SIZE: 16_384})
        message = bytes(range(256)) * 4000  # about 1 MB: many window updates from this side
        stream_id = client.call(f"/{SERVICE}/Unary", message)
        headers, body, trailers = client.response(stream_id)
        assert headers[":status"] == "200"
        assert body[5:] == message and int.from_bytes(body[1:5], "big") == len(message)
        assert trailers["grpc-status"] == "0"
        client.close()

    await _in_thread(run)


async def test_ping_is_acknowledged_and_bad_content_type_is_415(port: int) -> None:
    def run() -> None:
        client = RawClient(port)
        client.conn.ping(b"12345678")
        client.send()
        while not any(isinstance(e, h2.events.PingAckReceived) for e in client.events):
            client.pump()
        ack = next(e for e in client.events if isinstance(e, h2.events.PingAckReceived))
        assert ack.ping_data == b"12345678"

        stream_id = client.call(f"/{SERVICE}/Unary", b"x", content_type="text/plain")
        headers, _, _ = client.response(stream_id)
        assert headers[":status"] == "415"

        stream_id = client.call(f"/{SERVICE}/Unary", _gzip(b"z" * 1000),
                                flag=1)
        _, body, trailers = client.response(stream_id)
        assert trailers["grpc-status"] == "0" and body[5:] == b"z" * 1000
        client.close()

    await _in_thread(run)


def _gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=31)
    return compressor.compress(data) + compressor.flush()


async def test_a_protocol_error_closes_only_that_connection(port: int) -> None:
    def run() -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.close()
        kinds = []
        pos = 0
        while pos + 9 <= len(data):
            length = int.from_bytes(data[pos : pos + 3], "big")
            kinds.append((data[pos + 3], data[pos + 9 : pos + 9 + length]))
            pos += 9 + length
        assert [kind for kind, _ in kinds] == [4, 8, 7]  # SETTINGS, WINDOW_UPDATE, GOAWAY, then the close
        goaway = kinds[-1][1]
        assert int.from_bytes(goaway[4:8], "big") == 1  # PROTOCOL_ERROR
        assert b"preface" in goaway[8:]

    await _in_thread(run)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert await _method(channel, "Unary")(b"fine") == b"fine"


class _Later:
    """A fast handler's answer still to come; records a cancellation."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


async def test_fast_unary_handlers_answer_now_later_or_leave_the_call() -> None:
    """``add_fast_unary``: what the fast handler takes it answers (at once or later, without a task);
    what it declines, or fails on, the method's handler answers; a call that ends first cancels it."""
    later: list[tuple[Any, _Later]] = []

    def fast(message: bytes, call: Any) -> bool:
        if message == b"now":
            call.reply(b"fast:" + message)
            return True
        if message == b"big":
            call.reply(b"", [b"x" * 70_000, memoryview(b"y" * 10)])
            return True
        if message == b"error":
            call.finish(grpc.StatusCode.INVALID_ARGUMENT, "no")
            return True
        if message.startswith(b"later"):
            waiting = _Later()
            call.pending = waiting
            later.append((call, waiting))
            return True
        if message == b"bug":
            raise RuntimeError("a bug in the fast handler")
        return False

    server = H2GrpcServer(max_receive_message_length=LIMIT, max_send_message_length=LIMIT)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, HANDLERS),))
    server.add_fast_unary(f"/{SERVICE}/Unary", fast)
    port = await server.bind("127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = _method(channel, "Unary")
            assert await unary(b"now") == b"fast:now"
            assert await unary(b"big") == b"x" * 70_000 + b"y" * 10
            assert await unary(b"declined") == b"declined"  # the handler echoes it
            assert await unary(b"bug") == b"bug"  # logged, then the handler answers
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(b"error")
            assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "no")
            answer = asyncio.ensure_future(unary(b"later"))
            while not later:
                await asyncio.sleep(0.01)
            call, waiting = later.pop()
            call.reply(b"answered later")
            assert await answer == b"answered later" and not waiting.cancelled
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await unary(b"later, too late", timeout=0.2)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            _, waiting = later.pop()
            assert waiting.cancelled
            assert await _method(channel, "Metadata")(b"") != b""  # other methods: their handlers only
    finally:
        await server.stop(None)
