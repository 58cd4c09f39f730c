"""The HTTP fast path for binary inference requests answers byte for byte as the app's path does.

Two servers over one repository: one as shipped (fast path on), one with ``CONCH_HTTP_FAST=0``. Every
request goes three times over one keep-alive connection to each (the first builds the fast path's
plan, the later ones use it), and the raw responses — status line, headers and body — must be equal.
The cases cover what the fast path answers itself (binary inputs, cached plans, execution errors) and
what it leaves to the app (validation errors, JSON bodies, compression, ``Connection: close``).
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper

from serverkit import RunningServer, identity_config, start_server, write_model


def _add_sub_onnx() -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 16]) for n in ("INPUT0", "INPUT1")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    graph = helper.make_graph(nodes, "add_sub", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fast_repo")
    for datatype in ("FP32", "FP16", "BOOL", "INT64", "BF16", "STRING", "UINT8"):
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
    return root


@pytest.fixture(scope="module")
def servers(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, RunningServer]]:
    tmp = tmp_path_factory.mktemp("fast_servers")
    fast = start_server([repo], tmp)
    try:
        plain = start_server([repo], tmp, env={"CONCH_HTTP_FAST": "0"})
    except BaseException:
        fast.stop()
        raise
    yield fast, plain
    fast.stop()
    plain.stop()


# -- raw HTTP ---------------------------------------------------------------------------------------


def _read_response(sock: socket.socket, buffer: bytearray) -> bytes:
    """One response off ``sock`` (``buffer`` keeps what came after it)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed mid-response: {bytes(buffer)!r}")
        buffer += chunk
    head_end = buffer.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buffer[:head_end]).split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(buffer) < head_end + length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    response = bytes(buffer[: head_end + length])
    del buffer[: head_end + length]
    return response


def _exchange(server: RunningServer, raw: bytes, times: int = 3, pipelined: bool = False) -> list[bytes]:
    """Send ``raw`` ``times`` times on one connection (all at once when ``pipelined``); the responses."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        buffer = bytearray()
        if pipelined:
            sock.sendall(raw * times)
            return [_read_response(sock, buffer) for _ in range(times)]
        answers = []
        for _ in range(times):
            sock.sendall(raw)
            answers.append(_read_response(sock, buffer))
        return answers


def _request(
    model: str,
    header: dict[str, Any] | bytes,
    blobs: bytes = b"",
    *,
    extra_headers: str = "",
    version: str = "",
    header_length: int | None = None,
    http: str = "HTTP/1.1",
) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = head + blobs
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    length = len(head) if header_length is None else header_length
    fields = f"Host: x\r\nInference-Header-Content-Length: {length}\r\nContent-Length: {len(body)}\r\n{extra_headers}"
    return f"POST {path} {http}\r\n{fields}\r\n".encode() + body


def _binary(name: str, datatype: str, array: np.ndarray) -> tuple[dict[str, Any], bytes]:
    raw = array.tobytes()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "parameters": {"binary_data_size": len(raw)}}, raw


def _same(servers: tuple[RunningServer, RunningServer], raw: bytes, **kwargs: Any) -> list[bytes]:
    fast, plain = servers
    got, want = _exchange(fast, raw, **kwargs), _exchange(plain, raw, **kwargs)
    assert got == want
    return got


FP32 = np.arange(8, dtype=np.float32).reshape(1, 8)


def test_binary_outputs(servers: tuple[RunningServer, RunningServer]) -> None:
    tensor, blob = _binary("INPUT0", "FP32", FP32)
    answers = _same(servers, _request("identity_fp32", {"inputs": [tensor], "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}, blob))
    assert answers[0].startswith(b"HTTP/1.1 200 OK\r\n") and answers[0].endswith(blob)
    assert answers[0] == answers[1] == answers[2]


def test_json_outputs_and_defaults(servers: tuple[RunningServer, RunningServer]) -> None:
    tensor, blob = _binary("INPUT0", "FP32", FP32)
    answers = _same(servers, _request("identity_fp32", {"inputs": [tensor]}, blob))
    assert b'"data":[0.0,1.0,2.0' in answers[2]
    _same(servers, _request("identity_fp32", {"inputs": [tensor], "parameters": {"binary_data_output": True}}, blob))


def test_id_parameters_versions_and_mixed_outputs(servers: tuple[RunningServer, RunningServer]) -> None:
    inputs, blobs = zip(*(_binary(f"INPUT{i}", "FP32", FP32 + i) for i in range(3)), strict=True)
    header = {
        "id": "req-7",
        "parameters": {"custom": "x", "n": 3},
        "inputs": list(inputs),
        "outputs": [{"name": "OUTPUT2", "parameters": {"binary_data": True}}, {"name": "OUTPUT0"}],
    }
    answers = _same(servers, _request("identity_multi", header, b"".join(blobs), version="1"))
    assert b'"id":"req-7"' in answers[2]
    _same(servers, _request("identity_multi", header, b"".join(blobs), version="3"))  # unknown version


@pytest.mark.parametrize(
    ("model", "datatype", "array"),
    [
        ("identity_fp16", "FP16", np.ones((2, 3), np.float16)),
        ("identity_bool", "BOOL", np.array([[True, False, True]])),
        ("identity_int64", "INT64", np.arange(-3, 3, dtype=np.int64).reshape(1, 6)),
        ("identity_bf16", "BF16", np.array([[0x3F80, 0x4000]], dtype=np.uint16)),
        ("identity_uint8", "UINT8", np.zeros((1, 0), np.uint8)),
        ("identity_nobatch", "INT32", np.arange(6, dtype=np.int32).reshape(3, 2)),
        ("identity_reshape", "FP32", np.arange(8, dtype=np.float32).reshape(2, 4)),
    ],
)
def test_datatypes_and_shapes(servers: tuple[RunningServer, RunningServer], model: str, datatype: str, array: np.ndarray) -> None:
    tensor, blob = _binary("INPUT0", datatype, array)
    for outputs in ([{"name": "OUTPUT0", "parameters": {"binary_data": True}}], [{"name": "OUTPUT0"}]):
        _same(servers, _request(model, {"inputs": [tensor], "outputs": outputs}, blob))


def test_strings(servers: tuple[RunningServer, RunningServer]) -> None:
    items = [b"", b"abc", b"\x00\xff"]
    blob = b"".join(struct.pack("<I", len(item)) + item for item in items)
    tensor = {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 3], "parameters": {"binary_data_size": len(blob)}}
    answers = _same(servers, _request("identity_string", {"inputs": [tensor], "parameters": {"binary_data_output": True}}, blob))
    assert answers[2].endswith(blob)


@pytest.mark.parametrize(
    "case",
    ["datatype", "shape", "missing", "output", "short", "extra", "id", "reserved", "bad_json", "length", "unknown_model"],
)
def test_request_errors(servers: tuple[RunningServer, RunningServer], case: str) -> None:
    tensor, blob = _binary("INPUT0", "FP32", FP32)
    header: dict[str, Any] | bytes = {"inputs": [tensor]}
    model, length = "identity_fp32", None
    if case == "datatype":
        header = {"inputs": [dict(tensor, datatype="INT32")]}
    elif case == "shape":
        header = {"inputs": [dict(tensor, shape=[2, 8])]}
    elif case == "missing":
        model = "identity_multi"
    elif case == "output":
        header = {"inputs": [tensor], "outputs": [{"name": "NOPE"}]}
    elif case == "short":
        blob = blob[:-4]
    elif case == "extra":
        blob += b"\x00" * 4
    elif case == "id":
        header = {"id": 5, "inputs": [tensor]}
    elif case == "reserved":
        header = {"parameters": {"triton_x": 1}, "inputs": [tensor]}
    elif case == "bad_json":
        header = b'{"inputs": ['
    elif case == "length":
        length = 100000
    elif case == "unknown_model":
        model = "nope"
    answers = _same(servers, _request(model, header, blob, header_length=length))
    assert not answers[0].startswith(b"HTTP/1.1 200"), answers[0]


def test_execution_error(servers: tuple[RunningServer, RunningServer]) -> None:
    tensor, blob = _binary("INPUT0", "FP32", FP32)
    answers = _same(servers, _request("identity_bad_output", {"inputs": [tensor], "outputs": [{"name": "OTHER"}]}, blob))
    assert answers[0].startswith(b"HTTP/1.1 400") and b"is not named OUTPUT" in answers[0]


def test_what_the_app_answers(servers: tuple[RunningServer, RunningServer]) -> None:
    """JSON bodies, raw binary bodies, compression asked for, Connection: close, HTTP/1.0."""
    tensor, blob = _binary("INPUT0", "FP32", FP32)
    json_body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    _same(servers, _request("identity_fp32", json_body))
    _same(servers, _request("identity_fp32", b"", blob, header_length=0))
    _same(servers, _request("identity_fp32", {"inputs": [tensor]}, blob, extra_headers="Accept-Encoding: gzip\r\n"))
    close = _request("identity_fp32", {"inputs": [tensor]}, blob, extra_headers="Connection: close\r\n")
    assert _same(servers, close, times=1)[0].count(b"connection: close") == 1
    _same(servers, _request("identity_fp32", {"inputs": [tensor]}, blob, http="HTTP/1.0"), times=1)


def test_large_body_and_pipelining(servers: tuple[RunningServer, RunningServer]) -> None:
    big = np.arange(40000, dtype=np.float32).reshape(1, 40000)  # 160 KB: more than the server holds back
    tensor, blob = _binary("INPUT0", "FP32", big)
    answers = _same(servers, _request("identity_fp32", {"inputs": [tensor], "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}, blob))
    assert answers[0].endswith(blob)
    small, small_blob = _binary("INPUT0", "FP32", FP32)
    raw = _request("identity_fp32", {"inputs": [small], "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}, small_blob)
    answers = _same(servers, raw, times=5, pipelined=True)
    assert len(set(answers)) == 1


def test_waiting_for_a_batch(servers: tuple[RunningServer, RunningServer]) -> None:
    tensor, blob = _binary("INPUT0", "FP32", FP32)
    _same(servers, _request("identity_batched", {"inputs": [tensor], "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}, blob))
    _same(servers, _request("identity_batched", {"inputs": [tensor]}, blob), times=4, pipelined=True)


def test_client_gone_while_waiting(servers: tuple[RunningServer, RunningServer]) -> None:
    fast, _ = servers
    tensor, blob = _binary("INPUT0", "FP32", FP32)
    raw = _request("identity_slow", {"inputs": [tensor]}, blob)
    with socket.create_connection(("127.0.0.1", fast.http_port)) as sock:
        sock.sendall(raw)  # executing for 400 ms when the client goes
    answers = _exchange(fast, raw, times=1)  # the server still answers the next one
    assert answers[0].startswith(b"HTTP/1.1 200")
    assert "Traceback" not in fast.log()


def test_onnx_model_results_and_statistics(servers: tuple[RunningServer, RunningServer]) -> None:
    fast, _ = servers
    a = np.random.default_rng(1).random((1, 16), dtype=np.float32)
    b = np.random.default_rng(2).random((1, 16), dtype=np.float32)
    (t0, blob0), (t1, blob1) = _binary("INPUT0", "FP32", a), _binary("INPUT1", "FP32", b)
    outputs = [{"name": n, "parameters": {"binary_data": True}} for n in ("OUTPUT0", "OUTPUT1")]
    before = requests.get(f"{fast.base}/v2/models/add_sub/stats").json()["model_stats"][0]
    answers = _same(servers, _request("add_sub", {"inputs": [t0, t1], "outputs": outputs}, blob0 + blob1), times=20)
    body = answers[-1].split(b"\r\n\r\n", 1)[1]
    header_length = int(answers[-1].split(b"inference-header-content-length: ")[1].split(b"\r\n")[0])
    result = np.frombuffer(body[header_length:], np.float32)
    np.testing.assert_array_equal(result[:16], (a + b).ravel())
    np.testing.assert_array_equal(result[16:], (a - b).ravel())
    after = requests.get(f"{fast.base}/v2/models/add_sub/stats").json()["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 20
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 20


def test_plan_follows_a_reload(repo: Path, tmp_path: Path) -> None:
    """A plan belongs to one model version: after a reload with another datatype, validation runs again."""
    tensor, blob = _binary("INPUT0", "FP32", FP32)
    raw = _request("identity_fp32", {"inputs": [tensor]}, blob)
    answers: list[list[bytes]] = []
    for env in ({}, {"CONCH_HTTP_FAST": "0"}):
        server = start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=identity_fp32", env=env)
        try:
            before = _exchange(server, raw)
            config = json.loads(identity_config_json("identity_fp32", "TYPE_INT32"))
            reply = requests.post(
                f"{server.base}/v2/repository/models/identity_fp32/load",
                json={"parameters": {"config": json.dumps(config)}},
            )
            assert reply.status_code == 200, reply.text
            answers.append(before + _exchange(server, raw))
        finally:
            server.stop()
    assert answers[0] == answers[1]
    assert answers[0][0].startswith(b"HTTP/1.1 200") and answers[0][3].startswith(b"HTTP/1.1 400")


def identity_config_json(name: str, datatype: str) -> str:
    tensor = {"data_type": datatype, "dims": [-1]}
    return json.dumps({
        "name": name,
        "backend": "identity",
        "max_batch_size": 8,
        "input": [dict(tensor, name="INPUT0")],
        "output": [dict(tensor, name="OUTPUT0")],
    })
