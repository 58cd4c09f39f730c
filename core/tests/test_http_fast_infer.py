"""Which requests the HTTP fast path answers itself, and which it leaves to the app.

In process, against a real server's :class:`FastInfer` (identity models); that both paths answer the same
bytes is checked end to end in ``tests/test_http_fast_path.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conch.frontends.http.fast_infer import FastInfer
from conch.server import Server, ServerOptions

CONFIG = """name: "{name}"
backend: "identity"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
{extra}
"""


@pytest.fixture
async def fast(tmp_path: Path, unused_tcp_port_factory: Any) -> AsyncIterator[FastInfer]:
    for name, extra in (
        ("ident", ""),
        ("batched", "dynamic_batching { max_queue_delay_microseconds: 1000 }"),
        ("decoupled", "model_transaction_policy { decoupled: true }"),
    ):
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "config.pbtxt").write_text(CONFIG.format(name=name, extra=extra))
    options = ServerOptions(
        model_repositories=[tmp_path],
        http_address="127.0.0.1",
        http_port=unused_tcp_port_factory(),
        grpc_address="127.0.0.1",
        grpc_port=unused_tcp_port_factory(),
    )
    options.metrics.port = unused_tcp_port_factory()
    server = Server(options)
    await server.start()
    try:
        handler = server._http.fast
        assert isinstance(handler, FastInfer)
        yield handler
    finally:
        await server.stop(drain=False)


def _body(header: dict[str, Any], array: np.ndarray) -> tuple[list[tuple[bytes, bytes]], bytes]:
    head = json.dumps(header).encode()
    headers = [(b"host", b"x"), (b"inference-header-content-length", str(len(head)).encode())]
    return headers, head + array.tobytes()


ARRAY = np.arange(4, dtype=np.float32).reshape(1, 4)
HEADER = {
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}],
    "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
}


async def _answer(fast: FastInfer, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
    """The handler's result; a response still to come is waited for."""
    result = fast(url, headers, body)
    if result is None or isinstance(result, list):
        return result
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    result.attach(done.set_result)
    return await asyncio.wait_for(done, 5)


async def test_binary_requests_are_answered_and_planned(fast: FastInfer) -> None:
    headers, body = _body(HEADER, ARRAY)
    for _ in range(3):
        wire = await _answer(fast, b"/v2/models/ident/infer", headers, body)
        assert isinstance(wire, list)
        response = b"".join(wire)
        assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(ARRAY.tobytes())
    (plan,) = fast.plans.values()
    assert plan.heads, "the response head is cached after the first request"
    wire = await _answer(fast, b"/v2/models/ident/versions/1/infer?x=1", headers, body)
    assert isinstance(wire, list)


async def test_requests_that_wait_for_a_batch(fast: FastInfer) -> None:
    headers, body = _body(HEADER, ARRAY)
    result = fast(b"/v2/models/batched/infer", headers, body)
    assert result is not None and not isinstance(result, list)  # waits for its batch
    wire = await _answer(fast, b"/v2/models/batched/infer", headers, body)
    assert b"".join(wire).endswith(ARRAY.tobytes())
    answered: list[Any] = []
    result.attach(answered.append)  # its batch ran already: answered at once
    assert len(answered) == 1 and b"".join(answered[0]).endswith(ARRAY.tobytes())


async def test_a_client_gone_cancels_what_waits(fast: FastInfer) -> None:
    headers, body = _body(HEADER, ARRAY)
    result = fast(b"/v2/models/batched/infer", headers, body)
    assert result is not None and not isinstance(result, list)
    answered: list[Any] = []
    result.attach(answered.append)
    result.cancel()  # the connection was lost before the batch ran
    stream = result.stream  # type: ignore[attr-defined]
    assert stream.cancelled and stream.done
    await asyncio.sleep(0.05)
    assert answered == []
    assert fast.service.inflight == 0


@pytest.mark.parametrize(
    ("url", "extra", "change"),
    [
        (b"/v2/models/ident/infer", [(b"content-encoding", b"gzip")], None),
        (b"/v2/models/ident/infer", [(b"accept-encoding", b"gzip")], None),
        (b"/v2/models/decoupled/infer", [], None),
        (b"/v2/models/nope/infer", [], None),
        (b"/v2/models/ident/versions/7/infer", [], None),
        (b"/v2/models/ident/generate", [], None),
        (b"/v2/models/ident/infer", [], "datatype"),
        (b"/v2/models/ident/infer", [], "no_header_length"),
    ],
)
async def test_left_to_the_app(fast: FastInfer, url: bytes, extra: list[tuple[bytes, bytes]], change: str | None) -> None:
    header = json.loads(json.dumps(HEADER))
    if change == "datatype":
        header["inputs"][0]["datatype"] = "INT32"
    headers, body = _body(header, ARRAY)
    if change == "no_header_length":
        headers = headers[:1]
    assert fast(url, headers + extra, body) is None


async def test_tracing_and_size_limit_leave_requests_to_the_app(fast: FastInfer) -> None:
    headers, body = _body(HEADER, ARRAY)
    fast.app.max_input_size = len(body) - 1
    assert fast(b"/v2/models/ident/infer", headers, body) is None
    fast.app.max_input_size = 1 << 26
    tracer = fast.service.tracer
    tracer.active = True  # some setting samples requests: the app's path traces them
    try:
        assert fast(b"/v2/models/ident/infer", headers, body) is None
    finally:
        tracer.active = False
    assert isinstance(await _answer(fast, b"/v2/models/ident/infer", headers, body), list)
