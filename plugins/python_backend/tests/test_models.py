"""Triton-style Python models served end to end, over HTTP and gRPC."""

from __future__ import annotations

import json
import os
import queue
import time
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from pymodels import DLPACK_TYPES, IDENTITY_TYPES
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from serverkit import RunningServer

PROTOCOLS = ["http", "grpc"]


def client(server: RunningServer, protocol: str) -> Any:
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url, network_timeout=60)
    return grpcclient.InferenceServerClient(server.grpc_url)


def tensor(protocol: str, name: str, array: np.ndarray, datatype: str | None = None) -> Any:
    module = httpclient if protocol == "http" else grpcclient
    inp = module.InferInput(name, list(array.shape), datatype or np_to_triton_dtype(array.dtype))
    inp.set_data_from_numpy(array)
    return inp


def add_sub_inputs(protocol: str, rows: int = 1) -> tuple[list[Any], np.ndarray, np.ndarray]:
    a = np.random.rand(rows, 16).astype(np.float32)
    b = np.random.rand(rows, 16).astype(np.float32)
    return [tensor(protocol, "INPUT0", a), tensor(protocol, "INPUT1", b)], a, b


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["add_sub", "add_sub_inproc", "custom_file", "uses_pybased"])
def test_add_sub(py_server: RunningServer, protocol: str, model: str) -> None:
    inputs, a, b = add_sub_inputs(protocol, rows=3)
    result = client(py_server, protocol).infer(model, inputs)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)


def _sample(datatype: str) -> np.ndarray:
    if datatype == "STRING":
        return np.array([[b"a", b"bc\x00d", "é".encode()]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True]])
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype) or np.dtype(datatype.lower())
    return (np.arange(3).reshape(1, 3) + 1).astype(dtype)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_identity_of_every_datatype(py_server: RunningServer, protocol: str) -> None:
    """One request carries a tensor of each datatype; each comes back unchanged with its datatype."""
    inputs = []
    for i, datatype in enumerate(IDENTITY_TYPES):
        array = _sample(datatype)
        wire_type = "BYTES" if datatype == "STRING" else datatype
        inputs.append(tensor(protocol, f"INPUT{i}", array, wire_type))
    result = client(py_server, protocol).infer("identity", inputs)
    response = result.get_response()
    outputs = response["outputs"] if protocol == "http" else [{"name": o.name, "datatype": o.datatype} for o in response.outputs]
    types = {o["name"]: o["datatype"] for o in outputs}
    for i, datatype in enumerate(IDENTITY_TYPES):
        assert types[f"OUTPUT{i}"] == ("BYTES" if datatype == "STRING" else datatype)
        np.testing.assert_array_equal(result.as_numpy(f"OUTPUT{i}"), _sample(datatype))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_identity_through_dlpack_of_every_datatype_bf16_included(py_server: RunningServer, protocol: str) -> None:
    """``Tensor.from_dlpack(name, tensor.to_dlpack())`` for each datatype; BF16 travels as DLPack bfloat16."""
    inputs = []
    expected = {}
    for i, datatype in enumerate(DLPACK_TYPES):
        array = np.array([[1.0, -2.5, 0.15625]], ml_dtypes.bfloat16) if datatype == "BF16" else _sample(datatype)
        inputs.append(tensor(protocol, f"INPUT{i}", array, datatype))
        expected[f"OUTPUT{i}"] = (datatype, array)
    result = client(py_server, protocol).infer("identity_dlpack", inputs)
    response = result.get_response()
    outputs = response["outputs"] if protocol == "http" else [{"name": o.name, "datatype": o.datatype} for o in response.outputs]
    types = {o["name"]: o["datatype"] for o in outputs}
    for name, (datatype, array) in expected.items():
        assert types[name] == datatype
        np.testing.assert_array_equal(result.as_numpy(name), array)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_strings_and_str_outputs(py_server: RunningServer, protocol: str) -> None:
    words = np.array([b"hello", "wörld".encode(), b""], dtype=object)
    result = client(py_server, protocol).infer("strings", [tensor(protocol, "INPUT0", words, "BYTES")])
    assert list(result.as_numpy("OUTPUT0")) == [b"HELLO", "WÖRLD".encode(), b""]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_optional_input(py_server: RunningServer, protocol: str) -> None:
    c = client(py_server, protocol)
    a = np.array([1, 2], np.int32)
    without = c.infer("optional", [tensor(protocol, "INPUT0", a)])
    assert without.as_numpy("OUTPUT0").tolist() == [101, 102]
    both = c.infer("optional", [tensor(protocol, "INPUT0", a), tensor(protocol, "INPUT1", a)])
    assert both.as_numpy("OUTPUT0").tolist() == [2, 4]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_initialize_args_are_triton_strings(py_server: RunningServer, protocol: str) -> None:
    c = client(py_server, protocol)
    seen = {}
    for _ in range(12):  # two instances: both answer eventually
        result = c.infer("init_args", [tensor(protocol, "IN", np.array([1], np.int32))])
        args = json.loads(result.as_numpy("OUT")[0, 0])
        seen[args["model_instance_name"]] = args
        if len(seen) == 2:
            break
    assert set(seen) == {"grp_0", "grp_1"}
    args = seen["grp_0"]
    assert args["model_name"] == "init_args" and args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU" and args["model_instance_device_id"] == "0"
    assert args["model_repository"].endswith("/init_args")
    config = json.loads(args["model_config"])
    assert config["name"] == "init_args" and config["backend"] == "python"
    assert config["instance_group"][0]["count"] == 2 and config["default_model_filename"] == "model.py"
    assert seen["grp_0"]["pid"] != seen["grp_1"]["pid"], "one worker process per instance"


def test_response_parameters_and_request_parameters(py_server: RunningServer) -> None:
    body = {"inputs": [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [1]}], "parameters": {"echo": "hi"}}
    answer = requests.post(f"{py_server.base}/v2/models/init_args/infer", json=body, timeout=30).json()
    assert answer["parameters"]["echo"] == "hi"
    c = client(py_server, "grpc")
    result = c.infer("init_args", [tensor("grpc", "IN", np.array([1], np.int32))], parameters={"echo": "grpc"})
    assert result.get_response().parameters["echo"].string_param == "grpc"


def _errors(server: RunningServer, protocol: str, mode: int) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        client(server, protocol).infer("errors", [tensor(protocol, "IN", np.array([[mode]], np.int32))])
    return info.value


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_execute_raising_fails_the_request_with_its_message(py_server: RunningServer, protocol: str) -> None:
    error = _errors(py_server, protocol, 0)
    # Triton 2.51's text: the instance, the exception type and message, then the model's frames.
    assert error.message().startswith(
        "Failed to process the request(s) for model 'errors_0', message: TritonModelException: execute failed on "
        "purpose\n\nAt:\n  "
    )
    assert "/errors/1/model.py(" in error.message() and "conch_python" not in error.message()
    assert error.status() == ("500" if protocol == "http" else "StatusCode.INTERNAL")
    assert "ValueError: plain exception from execute" in _errors(py_server, protocol, 1).message()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_count_datatype_and_shape_are_clear_errors(py_server: RunningServer, protocol: str) -> None:
    assert "InferenceRequest(s) size is:1, and InferenceResponse(s) size is:0" in _errors(py_server, protocol, 2).message()
    assert "has datatype FP64, but the model configuration says FP32" in _errors(py_server, protocol, 3).message()
    assert "has shape [1, 5], but the model configuration expects [-1, 1]" in _errors(py_server, protocol, 4).message()
    # The instance keeps serving after every failure.
    assert "error with code 3" in _errors(py_server, protocol, 13).message()


@pytest.mark.parametrize(
    ("code", "http_status", "grpc_status"),
    [
        (0, "400", "UNKNOWN"), (1, "500", "INTERNAL"), (2, "404", "NOT_FOUND"), (3, "400", "INVALID_ARGUMENT"),
        (4, "503", "UNAVAILABLE"), (5, "501", "UNIMPLEMENTED"), (6, "400", "ALREADY_EXISTS"), (7, "400", "CANCELLED"),
    ],  # fmt: skip
)
def test_triton_error_codes_reach_the_client(py_server: RunningServer, code: int, http_status: str, grpc_status: str) -> None:
    http_error = _errors(py_server, "http", 10 + code)
    assert http_error.message() == f"error with code {code}" and http_error.status() == http_status
    grpc_error = _errors(py_server, "grpc", 10 + code)
    assert grpc_error.message() == f"error with code {code}" and grpc_error.status() == f"StatusCode.{grpc_status}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_execute_with_async_bls(py_server: RunningServer, protocol: str) -> None:
    inputs, a, b = add_sub_inputs(protocol)
    result = client(py_server, protocol).infer("async_bls", inputs)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), 2 * (a + b), rtol=1e-6)
    # await async_exec(decoupled=True): the streamed responses of a decoupled model, then the final one
    result = client(py_server, protocol).infer("async_bls", inputs, parameters={"target": "repeat"})
    assert result.as_numpy("OUTPUT0")[0, 0] == 0 + 10 + 20 + 3000


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["sync_bls", "sync_bls_inproc"])
def test_sync_bls_to_another_model(py_server: RunningServer, protocol: str, model: str) -> None:
    inputs, a, b = add_sub_inputs(protocol)
    result = client(py_server, protocol).infer(model, inputs)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a - b, rtol=1e-6)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["sync_bls", "sync_bls_inproc"])
def test_bls_errors_and_decoupled_bls(py_server: RunningServer, protocol: str, model: str) -> None:
    c = client(py_server, protocol)
    inputs, _, _ = add_sub_inputs(protocol)
    with pytest.raises(InferenceServerException, match="BLS failed: Request for unknown model: 'nope' is not found"):
        c.infer(model, inputs, parameters={"target": "nope"})
    result = c.infer(model, inputs, parameters={"target": "repeat"})
    assert result.as_numpy("OUTPUT0")[0, 0] == 0 + 10 + 20 + 3000  # three streamed responses, then the final


def _stream(server: RunningServer, model: str, inputs: list[Any], request_id: str, **kwargs: Any) -> list[Any]:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    got = []
    try:
        c.async_stream_infer(model, inputs, request_id=request_id, **kwargs)
        while True:
            result, error = results.get(timeout=30)
            got.append((result, error))
            if error is not None:
                break
            params = result.get_response().parameters
            if params["triton_final_response"].bool_param:
                break
    finally:
        c.stop_stream()
    return got


@pytest.mark.parametrize("model", ["repeat", "repeat_inproc"])
def test_decoupled_repeat_streams_responses_from_a_thread(py_server: RunningServer, model: str) -> None:
    inputs = [tensor("grpc", "COUNT", np.array([4], np.int32)), tensor("grpc", "DELAY_MS", np.array([5], np.int32))]
    got = _stream(py_server, model, inputs, "rep-1", enable_empty_final_response=True)
    assert all(error is None for _, error in got)
    data = [r for r, _ in got if r.get_response().outputs]
    assert [int(r.as_numpy("IDX")[0]) for r in data] == [0, 1, 2, 3]
    assert [int(r.as_numpy("OUT")[0]) for r in data] == [0, 10, 20, 30]
    assert all(r.get_response().id == "rep-1" for r, _ in got)
    assert got[-1][0].get_response().parameters["triton_final_response"].bool_param
    assert not got[-1][0].get_response().outputs  # the flag-only final


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["sender", "sender_inproc"])
def test_response_sender_of_a_default_mode_model_from_a_thread(py_server: RunningServer, protocol: str, model: str) -> None:
    c = client(py_server, protocol)
    for value in (3, 7):
        result = c.infer(model, [tensor(protocol, "IN", np.array([[value]], np.int32))])
        assert result.as_numpy("OUT").tolist() == [[2 * value]]
    deadline = time.monotonic() + 10
    while "sender: Non-decoupled model cannot send more than one response." not in py_server.log():
        assert time.monotonic() < deadline, "a second response was not refused"
        time.sleep(0.05)


def test_decoupled_zero_responses(py_server: RunningServer) -> None:
    inputs = [tensor("grpc", "COUNT", np.array([0], np.int32)), tensor("grpc", "DELAY_MS", np.array([0], np.int32))]
    got = _stream(py_server, "repeat", inputs, "zero", enable_empty_final_response=True)
    assert len(got) == 1 and not got[0][0].get_response().outputs


def test_decoupled_model_over_http_is_501(py_server: RunningServer) -> None:
    body = {"inputs": [{"name": "COUNT", "shape": [1], "datatype": "INT32", "data": [1]},
                       {"name": "DELAY_MS", "shape": [1], "datatype": "INT32", "data": [1]}]}  # fmt: skip
    answer = requests.post(f"{py_server.base}/v2/models/repeat/infer", json=body, timeout=30)
    assert answer.status_code == 501


def test_auto_complete_config_from_model_py(py_server: RunningServer) -> None:
    config = requests.get(f"{py_server.base}/v2/models/auto/config", timeout=10).json()
    assert config["max_batch_size"] == 4 and "dynamic_batching" in config
    assert [i["name"] for i in config["input"]] == ["IN"]
    result = client(py_server, "grpc").infer("auto", [tensor("grpc", "IN", np.array([[1, 2]], np.float32))])
    assert result.as_numpy("OUT").tolist() == [[2, 4]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_big_tensors_travel_in_their_own_segments(py_server: RunningServer, protocol: str) -> None:
    """Tensors larger than a quarter of the 4 MiB ring go through one-off shared-memory segments."""
    index = IDENTITY_TYPES.index("FP32")
    big = np.random.rand(2, 300_000).astype(np.float32)  # 2.4 MB
    small = np.arange(4, dtype=np.int64).reshape(1, 4)
    c = client(py_server, protocol)
    for _ in range(3):  # several rounds: segments are created, mapped and released each time
        result = c.infer("identity", [tensor(protocol, f"INPUT{index}", big)])
        np.testing.assert_array_equal(result.as_numpy(f"OUTPUT{index}"), big)
        small_index = IDENTITY_TYPES.index("INT64")
        result = c.infer("identity", [tensor(protocol, f"INPUT{small_index}", small)])
        np.testing.assert_array_equal(result.as_numpy(f"OUTPUT{small_index}"), small)
    leftovers = [name for name in os.listdir("/dev/shm") if name.startswith("conch-py-") and str(py_server.process.pid) in name]
    assert leftovers == [], leftovers


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["init_control", "init_control_inproc"])
def test_initialize_may_use_model_control(py_server: RunningServer, protocol: str, model: str) -> None:
    result = client(py_server, protocol).infer(model, [tensor(protocol, "IN", np.array([1], np.int32))])
    seen = json.loads(result.as_numpy("OUT")[0, 0])
    assert seen["nope_ready"] is False and seen["self_ready"] is False  # itself: still loading
    if model == "init_control":  # a worker answers BLS in initialize() with an error, as Triton does not allow it
        assert seen["bls_error"] == "BLS is not supported in initialize(); send BLS requests from execute()"
    else:  # in-process it runs: this request has no inputs
        assert "expected 2 inputs but got 0 inputs" in seen["bls_error"], seen
