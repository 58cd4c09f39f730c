"""The gRPC fast path for ModelInfer answers message for message as the servicer's path does.

Two servers over one repository: one as shipped (fast path on), one with ``CONCH_GRPC_FAST=0``. Every
request message goes three times over one channel to each (the first builds the fast path's plan, the
later ones use it), and the answers — the serialized response message, or the status code and details
— must be equal. The cases cover what the fast path answers itself (raw inputs, cached plans, waiting
requests, execution errors) and what it leaves to the servicer (errors, parameters, typed contents,
decoupled models, messages that do not parse).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import requests
from test_http_fast_path import _add_sub_onnx, identity_config_json
from tritonclient.grpc import service_pb2 as pb

from serverkit import RunningServer, identity_config, start_server, write_model

METHOD = "/inference.GRPCInferenceService/ModelInfer"

DECOUPLED_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc_fast_repo")
    for datatype in ("FP32", "FP16", "FP64", "BOOL", "INT64", "BF16", "STRING", "UINT8"):
        name = f"identity_{datatype.lower()}"
        write_model(root, name, identity_config(name, f"TYPE_{datatype}"))
    write_model(root, "identity_multi", identity_config("identity_multi", "TYPE_FP32", "[ -1 ]", inputs=3))
    write_model(root, "identity_nobatch", identity_config("identity_nobatch", "TYPE_INT32", "[ -1, 2 ]", max_batch_size=0))
    write_model(
        root,
        "identity_reshape",
        'name: "identity_reshape"\nbackend: "identity"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2, 2 ] } ]\n',
    )
    write_model(
        root,
        "identity_bad_output",  # OTHER is not OUTPUT<i>: the identity backend fails the request
        'name: "identity_bad_output"\nbackend: "identity"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "OTHER" data_type: TYPE_FP32 dims: [ -1 ] } ]\n',
    )
    write_model(
        root,
        "identity_batched",  # requests wait for their batch: the fast path's answer comes later
        identity_config("identity_batched", extra="dynamic_batching { max_queue_delay_microseconds: 20000 }"),
    )
    write_model(root, "identity_slow", identity_config("identity_slow", extra='parameters [ { key: "execute_delay_ms" value: { string_value: "400" } } ]'))
    model = write_model(
        root,
        "add_sub",
        'name: "add_sub"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]\n',
    )
    onnx.save(_add_sub_onnx(), str(model / "1" / "model.onnx"))
    decoupled = write_model(
        root,
        "decoupled",
        'name: "decoupled"\nbackend: "python"\nmax_batch_size: 8\nmodel_transaction_policy { decoupled: true }\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n',
    )
    (decoupled / "1" / "model.py").write_text(DECOUPLED_MODEL)
    return root


@pytest.fixture(scope="module")
def servers(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, RunningServer]]:
    tmp = tmp_path_factory.mktemp("grpc_fast_servers")
    fast = start_server([repo], tmp)
    try:
        plain = start_server([repo], tmp, env={"CONCH_GRPC_FAST": "0"})
    except BaseException:
        fast.stop()
        raise
    yield fast, plain
    fast.stop()
    plain.stop()


def _answers(server: RunningServer, message: bytes, times: int = 3, timeout: float = 10) -> list[tuple[str, Any]]:
    """Send ``message`` ``times`` times over one channel; each answer as ("OK", bytes) or (code, details)."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
        answers: list[tuple[str, Any]] = []
        for _ in range(times):
            try:
                answers.append(("OK", call(message, timeout=timeout)))
            except grpc.RpcError as exc:
                answers.append((exc.code().name, exc.details()))
        return answers


def _same(servers: tuple[RunningServer, RunningServer], message: bytes, times: int = 3) -> list[tuple[str, Any]]:
    fast, plain = servers
    got, want = _answers(fast, message, times), _answers(plain, message, times)
    assert got == want
    return got


def _message(model: str, *tensors: tuple[str, str, np.ndarray], outputs: tuple[str, ...] = (), **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    for name, datatype, array in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def _response(answer: tuple[str, Any]) -> pb.ModelInferResponse:
    assert answer[0] == "OK", answer
    return pb.ModelInferResponse.FromString(answer[1])


FP32 = np.arange(8, dtype=np.float32).reshape(1, 8)


def test_outputs_ids_and_versions(servers: tuple[RunningServer, RunningServer]) -> None:
    fp32 = ("INPUT0", "FP32", FP32)
    answers = _same(servers, _message("identity_fp32", fp32).SerializeToString())
    response = _response(answers[2])
    assert response.model_name == "identity_fp32" and response.model_version == "1"
    assert response.raw_output_contents[0] == FP32.tobytes()
    assert answers[0] == answers[1] == answers[2]
    _same(servers, _message("identity_fp32", fp32, outputs=("OUTPUT0",), id="req-7", model_version="1").SerializeToString())
    three = [(f"INPUT{i}", "FP32", FP32 + i) for i in range(3)]
    answers = _same(servers, _message("identity_multi", *three, outputs=("OUTPUT2", "OUTPUT0")).SerializeToString())
    assert [o.name for o in _response(answers[0]).outputs] == ["OUTPUT2", "OUTPUT0"]
    _same(servers, _message("identity_multi", *three, model_version="3").SerializeToString())  # unknown version


@pytest.mark.parametrize(
    ("model", "datatype", "array"),
    [
        ("identity_fp16", "FP16", np.ones((2, 3), np.float16)),
        ("identity_fp64", "FP64", np.arange(5, dtype=np.float64).reshape(1, 5)),
        ("identity_bool", "BOOL", np.array([[True, False, True]])),
        ("identity_int64", "INT64", np.arange(-3, 3, dtype=np.int64).reshape(1, 6)),
        ("identity_bf16", "BF16", np.array([[0x3F80, 0x4000]], dtype=np.uint16)),
        ("identity_uint8", "UINT8", np.zeros((1, 0), np.uint8)),
        ("identity_nobatch", "INT32", np.arange(6, dtype=np.int32).reshape(3, 2)),
        ("identity_reshape", "FP32", np.arange(8, dtype=np.float32).reshape(2, 4)),
    ],
)
def test_datatypes_and_shapes(servers: tuple[RunningServer, RunningServer], model: str, datatype: str, array: np.ndarray) -> None:
    for request_id in ("", "a", "ab", "abc"):  # moves the raw bytes to every alignment
        answers = _same(servers, _message(model, ("INPUT0", datatype, array), id=request_id).SerializeToString())
        assert _response(answers[2]).raw_output_contents[0] == array.tobytes()


def test_strings(servers: tuple[RunningServer, RunningServer]) -> None:
    items = [b"", b"abc", b"\x00\xff"]
    blob = b"".join(len(item).to_bytes(4, "little") + item for item in items)
    request = pb.ModelInferRequest(model_name="identity_string")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 3])
    request.raw_input_contents.append(blob)
    answers = _same(servers, request.SerializeToString())
    assert _response(answers[2]).raw_output_contents[0] == blob


def _error_case(case: str) -> bytes:
    fp32 = ("INPUT0", "FP32", FP32)
    if case == "datatype":
        return _message("identity_fp32", ("INPUT0", "INT32", FP32.astype(np.int32))).SerializeToString()
    if case == "shape":
        request = _message("identity_fp32", fp32)
        request.inputs[0].shape[:] = [2, 8]
        return request.SerializeToString()
    if case == "missing":
        return _message("identity_multi", fp32).SerializeToString()
    if case == "output":
        return _message("identity_fp32", fp32, outputs=("NOPE",)).SerializeToString()
    if case == "short":
        request = _message("identity_fp32", fp32)
        request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
        return request.SerializeToString()
    if case == "extra_entry":  # ignored, as Triton does
        request = _message("identity_fp32", fp32)
        request.raw_input_contents.append(b"\x00" * 4)
        return request.SerializeToString()
    if case == "reserved":
        request = _message("identity_fp32", fp32)
        request.parameters["triton_x"].bool_param = True
        return request.SerializeToString()
    if case == "parameters":  # planned with their values
        request = _message("identity_fp32", fp32)
        request.parameters["custom"].string_param = "x"
        request.parameters["triton_enable_empty_final_response"].bool_param = True
        return request.SerializeToString()
    if case == "bad_parameter":
        request = _message("identity_fp32", fp32)
        request.parameters["priority"].string_param = "high"
        return request.SerializeToString()
    if case == "contents_and_raw":
        request = _message("identity_fp32", fp32)
        request.inputs[0].contents.fp32_contents.extend(FP32.ravel().tolist())
        return request.SerializeToString()
    if case == "contents":
        request = pb.ModelInferRequest(model_name="identity_fp32")
        tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 8])
        tensor.contents.fp32_contents.extend(FP32.ravel().tolist())
        return request.SerializeToString()
    if case == "unknown_model":
        return _message("nope", fp32).SerializeToString()
    if case == "decoupled":
        return _message("decoupled", fp32).SerializeToString()
    if case == "garbage":
        return b"\x0a\xff\xff"
    if case == "two_ids":  # the last id field counts (protobuf): decoded each time
        request = _message("identity_fp32", fp32, id="first")
        data = request.SerializeToString()
        header_end = data.index(b"\x3a")
        return data[:header_end] + b"\x1a\x06second" + data[header_end:]
    if case == "bad_utf8_id":
        data = _message("identity_fp32", fp32, id="ab").SerializeToString()
        return data.replace(b"\x1a\x02ab", b"\x1a\x02\xff\xfe", 1)
    if case == "raw_first":  # raw contents before the other fields: valid protobuf, decoded each time
        request = _message("identity_fp32", fp32)
        raw = request.raw_input_contents[0]
        del request.raw_input_contents[:]
        return b"\x3a" + bytes([len(raw)]) + raw + request.SerializeToString()
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    ["datatype", "shape", "missing", "output", "short", "extra_entry", "reserved", "parameters", "bad_parameter",
     "contents_and_raw",
     "contents", "unknown_model", "decoupled", "garbage", "raw_first", "two_ids", "bad_utf8_id"],
)  # fmt: skip
def test_what_the_servicer_answers(servers: tuple[RunningServer, RunningServer], case: str) -> None:
    answers = _same(servers, _error_case(case))
    ok = case in ("extra_entry", "parameters", "contents", "raw_first", "two_ids")
    assert (answers[0][0] == "OK") == ok, answers[0]


def test_every_call_with_its_own_id(servers: tuple[RunningServer, RunningServer]) -> None:
    """Clients that number their requests: each message differs in its id; the answers echo them."""
    fast, plain = servers
    for server in (fast, plain):
        with grpc.insecure_channel(server.grpc_url) as channel:
            call = channel.unary_unary(METHOD)
            for index in range(20):
                request_id = f"req-{index}" + "x" * (index * 10)  # up to 190 bytes: one and two-byte lengths
                array = np.full((1, 8), index, np.float32)
                raw = call(_message("identity_fp32", ("INPUT0", "FP32", array), id=request_id).SerializeToString())
                response = pb.ModelInferResponse.FromString(raw)
                assert response.id == request_id and response.raw_output_contents[0] == array.tobytes()
    message = _message("identity_fp32", ("INPUT0", "FP32", FP32), id="é" * 70).SerializeToString()
    _same(servers, message)


def test_execution_error(servers: tuple[RunningServer, RunningServer]) -> None:
    answers = _same(servers, _message("identity_bad_output", ("INPUT0", "FP32", FP32), outputs=("OTHER",)).SerializeToString())
    assert answers[0][0] == "INVALID_ARGUMENT" and "is not named OUTPUT" in answers[0][1]


def test_large_messages(servers: tuple[RunningServer, RunningServer]) -> None:
    big = np.arange(40000, dtype=np.float32).reshape(1, 40000)  # 160 KB: split on the wire, sent in pieces
    answers = _same(servers, _message("identity_fp32", ("INPUT0", "FP32", big)).SerializeToString())
    assert _response(answers[2]).raw_output_contents[0] == big.tobytes()


def test_waiting_for_a_batch(servers: tuple[RunningServer, RunningServer]) -> None:
    message = _message("identity_batched", ("INPUT0", "FP32", FP32)).SerializeToString()
    _same(servers, message)
    results = []
    for server in servers:
        with grpc.insecure_channel(server.grpc_url) as channel:
            call = channel.unary_unary(METHOD)
            futures = [call.future(message, timeout=10) for _ in range(6)]  # batched together
            results.append([future.result() for future in futures])
    assert results[0] == results[1]


def test_deadline_while_waiting_and_cancel(servers: tuple[RunningServer, RunningServer]) -> None:
    message = _message("identity_slow", ("INPUT0", "FP32", FP32)).SerializeToString()
    fast, plain = servers
    for server in servers:
        assert _answers(server, message, times=1, timeout=0.1) == [("DEADLINE_EXCEEDED", "Deadline Exceeded")]
    with grpc.insecure_channel(fast.grpc_url) as channel:
        future = channel.unary_unary(METHOD).future(message, timeout=10)
        time.sleep(0.05)
        future.cancel()  # executing for 400 ms when the client cancels
    assert _same(servers, message, times=1)[0][0] == "OK"  # both still serve
    assert "Traceback" not in fast.log()


def test_onnx_results_statistics_and_concurrency(servers: tuple[RunningServer, RunningServer]) -> None:
    fast, _ = servers
    a = np.random.default_rng(1).random((1, 16), dtype=np.float32)
    b = np.random.default_rng(2).random((1, 16), dtype=np.float32)
    message = _message("add_sub", ("INPUT0", "FP32", a), ("INPUT1", "FP32", b)).SerializeToString()
    before = requests.get(f"{fast.base}/v2/models/add_sub/stats").json()["model_stats"][0]
    answers = _same(servers, message, times=20)
    response = _response(answers[-1])
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32), (a + b).ravel())
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[1], np.float32), (a - b).ravel())
    after = requests.get(f"{fast.base}/v2/models/add_sub/stats").json()["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 20
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 20
    # Many clients at once, each with its own inputs: every answer is its own.
    rng = np.random.default_rng(3)
    pairs = [(rng.random((1, 16), dtype=np.float32), rng.random((1, 16), dtype=np.float32)) for _ in range(64)]
    with grpc.insecure_channel(fast.grpc_url) as channel:
        call = channel.unary_unary(METHOD)

        def one(pair: tuple[np.ndarray, np.ndarray]) -> bytes:
            return call(_message("add_sub", ("INPUT0", "FP32", pair[0]), ("INPUT1", "FP32", pair[1])).SerializeToString(), timeout=10)

        with ThreadPoolExecutor(8) as pool:
            for (x, y), raw in zip(pairs, pool.map(one, pairs), strict=True):
                got = pb.ModelInferResponse.FromString(raw)
                np.testing.assert_array_equal(np.frombuffer(got.raw_output_contents[0], np.float32), (x + y).ravel())


def test_plan_follows_a_reload(repo: Path, tmp_path: Path) -> None:
    """A plan belongs to one model version: after a reload with another datatype, validation runs again."""
    message = _message("identity_fp32", ("INPUT0", "FP32", FP32)).SerializeToString()
    answers: list[list[tuple[str, Any]]] = []
    for env in ({}, {"CONCH_GRPC_FAST": "0"}):
        server = start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=identity_fp32", env=env)
        try:
            before = _answers(server, message)
            config = json.loads(identity_config_json("identity_fp32", "TYPE_INT32"))
            reply = requests.post(
                f"{server.base}/v2/repository/models/identity_fp32/load",
                json={"parameters": {"config": json.dumps(config)}},
            )
            assert reply.status_code == 200, reply.text
            answers.append(before + _answers(server, message))
        finally:
            server.stop()
    assert answers[0] == answers[1]
    assert answers[0][0][0] == "OK" and answers[0][3][0] == "INVALID_ARGUMENT"
