"""Which ModelInfer calls the gRPC fast path answers itself, and which it leaves to the servicer.

In process, against a real server's :class:`FastModelInfer` (identity models) with a stand-in for the
transport's call; that both paths answer the same messages is checked end to end in
``tests/test_grpc_fast_path.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from conch._proto import grpc_service_pb2 as pb
from conch.frontends.grpc.fast_infer import FastModelInfer
from conch.server import Server, ServerOptions

CONFIG = """name: "{name}"
backend: "identity"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
{extra}
"""

PATH = "/inference.GRPCInferenceService/ModelInfer"


class FakeCall:
    """What the fast handler uses of the transport's ``Call``."""

    def __init__(self) -> None:
        self.pending: Any = None
        self.answer: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()

    def reply(self, data: bytes, parts: list[Any] | None = None) -> None:
        self.pending = None
        self.answer.set_result(("OK", data if parts is None else b"".join(parts)))

    def finish(self, code: grpc.StatusCode, details: str) -> None:
        self.answer.set_result((code.name, details))


@pytest.fixture
async def fast(tmp_path: Path, unused_tcp_port_factory: Any) -> AsyncIterator[FastModelInfer]:
    for name, extra in (
        ("ident", ""),
        ("batched", "dynamic_batching { max_queue_delay_microseconds: 1000 }"),
        ("slow", 'parameters [ { key: "execute_delay_ms" value: { string_value: "300" } } ]'),
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
        handler = server._grpc._fast[PATH]
        assert isinstance(handler, FastModelInfer)
        yield handler
    finally:
        await server.stop(drain=False)


ARRAY = np.arange(4, dtype=np.float32).reshape(1, 4)


def _message(model: str = "ident", **change: Any) -> bytes:
    request = pb.ModelInferRequest(model_name=model, id=change.pop("id", ""))
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(ARRAY.tobytes())
    for key, value in change.items():
        request.parameters[key].string_param = value
    return request.SerializeToString()


def _plans(fast: FastModelInfer) -> list[Any]:
    return [plan for plans in fast.plans.values() for plan in plans]


async def _call(fast: FastModelInfer, data: bytes) -> tuple[bool, FakeCall]:
    call = FakeCall()
    return fast(data, call), call  # type: ignore[arg-type]


async def test_raw_requests_are_answered_planned_and_their_heads_cached(fast: FastModelInfer) -> None:
    taken, call = await _call(fast, _message())
    assert taken  # the identity instance's first run is on its thread: answered when it ends
    first = await asyncio.wait_for(call.answer, 5)
    assert first[0] == "OK"
    response = pb.ModelInferResponse.FromString(first[1])
    assert response.raw_output_contents[0] == ARRAY.tobytes() and list(response.outputs[0].shape) == [1, 4]
    (plan,) = _plans(fast)
    assert plan.heads  # the first answer's header is kept
    for _ in range(2):  # later messages: from the plan and the cached header, the same bytes, at once
        taken, call = await _call(fast, _message())
        assert taken and call.answer.done() and call.answer.result() == first
    other = np.full((1, 4), 7, np.float32)
    request = pb.ModelInferRequest.FromString(_message())
    request.raw_input_contents[0] = other.tobytes()
    taken, call = await _call(fast, request.SerializeToString())
    answer = call.answer.result()
    assert pb.ModelInferResponse.FromString(answer[1]).raw_output_contents[0] == other.tobytes()
    assert len(_plans(fast)) == 1  # same plan: only the raw bytes differ


async def test_ids_change_without_a_new_plan_and_are_echoed(fast: FastModelInfer) -> None:
    ids = ["", "a", "req-2", "x" * 200, "é-ü", "req-2"]  # 200 bytes: a two-byte length
    for request_id in ids:
        taken, call = await _call(fast, _message(id=request_id))
        assert taken
        code, data = await asyncio.wait_for(call.answer, 5)
        response = pb.ModelInferResponse.FromString(data)
        assert code == "OK" and response.id == request_id and response.raw_output_contents[0] == ARRAY.tobytes()
        want = pb.ModelInferResponse(model_name="ident", model_version="1", id=request_id)
        want.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 4])
        want.raw_output_contents.append(ARRAY.tobytes())
        assert data == want.SerializeToString()  # the cached header, its id swapped, is protobuf's own bytes
    assert len(_plans(fast)) == 1


async def test_request_parameters_are_planned_too(fast: FastModelInfer) -> None:
    data = _message(custom="x", triton_enable_empty_final_response="")  # perf_analyzer sends the latter
    request = pb.ModelInferRequest.FromString(data)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    data = request.SerializeToString()
    for _ in range(2):
        taken, call = await _call(fast, data)
        assert taken and (await asyncio.wait_for(call.answer, 5))[0] == "OK"
    (plan,) = _plans(fast)
    assert plan.parameters == {"custom": "x"}


async def test_requests_that_wait_are_answered_when_their_batch_runs(fast: FastModelInfer) -> None:
    calls = [await _call(fast, _message("batched")) for _ in range(3)]
    for taken, call in calls:
        assert taken and not call.answer.done() and call.pending is not None
    for _, call in calls:
        code, data = await asyncio.wait_for(call.answer, 5)
        assert code == "OK" and pb.ModelInferResponse.FromString(data).raw_output_contents[0] == ARRAY.tobytes()
        assert call.pending is None


async def test_a_call_that_ends_first_cancels_its_request(fast: FastModelInfer) -> None:
    taken, call = await _call(fast, _message("slow"))
    assert taken and call.pending is not None
    waiting = call.pending
    waiting.cancel()  # what the transport does on a reset or an expired deadline
    assert waiting.stream.cancelled and waiting.stream.done
    await asyncio.sleep(0.4)  # the execution ends: nothing is answered on the finished call
    assert not call.answer.done()


@pytest.mark.parametrize(
    "data",
    [
        _message("nope"),  # unknown model
        _message("decoupled"),
        _message(model="ident")[:-3],  # does not parse
        pb.ModelInferRequest(model_name="ident").SerializeToString(),  # no inputs: a validation error
    ],
)
async def test_left_to_the_servicer(fast: FastModelInfer, data: bytes) -> None:
    taken, call = await _call(fast, data)
    assert not taken and not call.answer.done() and call.pending is None


async def test_tracing_leaves_calls_to_the_servicer(fast: FastModelInfer) -> None:
    tracer = fast.service.tracer
    tracer.active = True  # some setting samples requests: the servicer's path traces them
    try:
        taken, _ = await _call(fast, _message())
        assert not taken
    finally:
        tracer.active = False
