"""System shared memory end to end: tritonclient's shm utilities and clients against a real server.

Regions are registered over HTTP or gRPC (one registry for both), inputs are read from them and
outputs written into them, for Conch's identity backend and a Triton Python model. The error texts
are the ones Triton 2.51 answers (docs/dev/triton-observed.md, "System shared memory").
"""

from __future__ import annotations

import json
import os
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from conch._proto import grpc_service_pb2 as pb
from conch._proto import grpc_service_pb2_grpc as pb_grpc
from serverkit import RunningServer, identity_config, start_server, write_model

PY_IDENTITY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())])
            for r in requests
        ]
'''

PROTOCOLS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("shm_repo")
    write_model(repo, "identity_fp32", identity_config("identity_fp32"))
    write_model(repo, "identity_pair", identity_config("identity_pair", inputs=2))
    write_model(repo, "identity_bytes", identity_config("identity_bytes", "TYPE_STRING"))
    write_model(
        repo,
        "py_identity",
        identity_config("py_identity").replace('backend: "identity"', 'backend: "python"'),
        files={"1/model.py": PY_IDENTITY},
    )
    running = start_server([repo], tmp_path_factory.mktemp("shm_server"))
    yield running
    running.stop()


@pytest.fixture
def regions() -> Iterator[dict[str, Any]]:
    """Client regions by name, each its own key; destroyed (and so unlinked) after the test."""
    made: dict[str, Any] = {}
    yield made
    for handle in made.values():
        shm.destroy_shared_memory_region(handle)


def _region(regions: dict[str, Any], name: str, size: int) -> Any:
    handle = shm.create_shared_memory_region(name, f"/conch_test_{os.getpid()}_{name}", size)
    regions[name] = handle
    return handle


def _key(name: str) -> str:
    return f"/conch_test_{os.getpid()}_{name}"


def _client(server: RunningServer, protocol: str) -> Any:
    url = server.http_url if protocol == "http" else server.grpc_url
    return PROTOCOLS[protocol].InferenceServerClient(url)


@pytest.fixture(autouse=True)
def _clean(shm_server: RunningServer) -> Iterator[None]:
    yield
    requests.post(shm_server.base + "/v2/systemsharedmemory/unregister")


def _statuses(client: Any, protocol: str, name: str = "") -> list[dict[str, Any]]:
    if protocol == "http":
        return list(client.get_system_shared_memory_status(name))
    answer = client.get_system_shared_memory_status(name, as_json=True)
    return sorted(
        (
            {"name": r["name"], "key": r["key"], "offset": int(r.get("offset", 0)), "byte_size": int(r["byte_size"])}
            for r in answer.get("regions", {}).values()
        ),
        key=lambda region: region["name"],
    )


# -- registry -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_register_status_unregister(shm_server: RunningServer, regions: dict[str, Any], protocol: str) -> None:
    _region(regions, "a", 64)
    _region(regions, "b", 8192)
    client = _client(shm_server, protocol)
    assert _statuses(client, protocol) == []
    client.register_system_shared_memory("a", _key("a"), 64)
    client.register_system_shared_memory("b", _key("b"), 32, offset=4100)  # not page-aligned: Conch maps it
    assert _statuses(client, protocol) == [
        {"name": "a", "key": _key("a"), "offset": 0, "byte_size": 64},
        {"name": "b", "key": _key("b"), "offset": 4100, "byte_size": 32},
    ]
    assert _statuses(client, protocol, "b") == [{"name": "b", "key": _key("b"), "offset": 4100, "byte_size": 32}]
    client.unregister_system_shared_memory("a")
    client.unregister_system_shared_memory("never_registered")  # no error, as in Triton
    assert [s["name"] for s in _statuses(client, protocol)] == ["b"]
    client.unregister_system_shared_memory()
    assert _statuses(client, protocol) == []
    assert "system_shared_memory" in requests.get(shm_server.base + "/v2").json()["extensions"]


def test_regions_are_shared_between_protocols(shm_server: RunningServer, regions: dict[str, Any]) -> None:
    handle = _region(regions, "io", 32)
    shm.set_shared_memory_region(handle, [np.arange(4, dtype=np.float32)])
    http, grpc = _client(shm_server, "http"), _client(shm_server, "grpc")
    http.register_system_shared_memory("io", _key("io"), 32)
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_shared_memory("io", 16)
    out = grpcclient.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("io", 16, offset=16)
    grpc.infer("identity_fp32", [inp], outputs=[out])
    assert shm.get_contents_as_numpy(handle, np.float32, [1, 4], offset=16).tolist() == [[0, 1, 2, 3]]
    grpc.unregister_system_shared_memory("io")
    assert http.get_system_shared_memory_status() == []


# -- inference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["identity_fp32", "py_identity"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_infer_inputs_and_outputs_in_shared_memory(
    shm_server: RunningServer, regions: dict[str, Any], protocol: str, model: str
) -> None:
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    handle_in = _region(regions, "in", data.nbytes + 16)
    handle_out = _region(regions, "out", data.nbytes + 16)
    shm.set_shared_memory_region(handle_in, [data], offset=16)
    client = _client(shm_server, protocol)
    client.register_system_shared_memory("in", _key("in"), data.nbytes + 16)
    client.register_system_shared_memory("out", _key("out"), data.nbytes + 16)
    module = PROTOCOLS[protocol]
    inp = module.InferInput("INPUT0", [3, 4], "FP32")
    inp.set_shared_memory("in", data.nbytes, offset=16)
    out = module.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("out", data.nbytes + 8)  # bigger than needed is fine
    result = client.infer(model, [inp], outputs=[out])
    # The bytes are in the region, not in the response: HTTP has no data, gRPC an empty raw entry (as Triton).
    output = result.get_output("OUTPUT0")
    if protocol == "http":
        assert output == {"name": "OUTPUT0", "datatype": "FP32", "shape": [3, 4]}
    else:
        assert (output.datatype, list(output.shape), output.parameters) == ("FP32", [3, 4], {})
        assert list(result.get_response().raw_output_contents) == [b""]
    assert np.array_equal(shm.get_contents_as_numpy(handle_out, np.float32, [3, 4]), data)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shared_memory_beside_other_outputs(
    shm_server: RunningServer, regions: dict[str, Any], protocol: str
) -> None:
    """One input and one output through shared memory, the others on the wire, in the same request."""
    handle = _region(regions, "pair", 32)
    shm.set_shared_memory_region(handle, [np.array([[7, 8, 9, 10]], dtype=np.float32)])
    client = _client(shm_server, protocol)
    client.register_system_shared_memory("pair", _key("pair"), 32)
    module = PROTOCOLS[protocol]
    in0 = module.InferInput("INPUT0", [1, 4], "FP32")
    in0.set_shared_memory("pair", 16)
    in1 = module.InferInput("INPUT1", [1, 4], "FP32")
    in1.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32))
    out0 = module.InferRequestedOutput("OUTPUT0")
    out0.set_shared_memory("pair", 16, offset=16)
    out1 = module.InferRequestedOutput("OUTPUT1")
    result = client.infer("identity_pair", [in0, in1], outputs=[out0, out1])
    assert result.as_numpy("OUTPUT1").tolist() == [[1, 2, 3, 4]]
    assert shm.get_contents_as_numpy(handle, np.float32, [1, 4], offset=16).tolist() == [[7, 8, 9, 10]]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bytes_tensors_in_shared_memory(shm_server: RunningServer, regions: dict[str, Any], protocol: str) -> None:
    words = np.array([[b"conch", b"", b"shared memory"]], dtype=np.object_)
    serialized = serialize_byte_tensor(words)  # what a client puts in a region: one object, the wire bytes
    size = len(serialized.item())
    handle_in, handle_out = _region(regions, "s_in", size), _region(regions, "s_out", size)
    shm.set_shared_memory_region(handle_in, [serialized])
    client = _client(shm_server, protocol)
    client.register_system_shared_memory("s_in", _key("s_in"), size)
    client.register_system_shared_memory("s_out", _key("s_out"), size)
    module = PROTOCOLS[protocol]
    inp = module.InferInput("INPUT0", [1, 3], "BYTES")
    inp.set_shared_memory("s_in", size)
    out = module.InferRequestedOutput("OUTPUT0")
    out.set_shared_memory("s_out", size)
    client.infer("identity_bytes", [inp], outputs=[out])
    assert shm.get_contents_as_numpy(handle_out, np.object_, [1, 3]).tolist() == words.tolist()


def test_unregistering_during_use_keeps_serving(shm_server: RunningServer, regions: dict[str, Any]) -> None:
    """A region unregistered and registered again (same name, same key) serves the next request."""
    handle = _region(regions, "again", 16)
    client = _client(shm_server, "http")
    for value in (1.0, 2.0):
        shm.set_shared_memory_region(handle, [np.full(4, value, dtype=np.float32)])
        client.register_system_shared_memory("again", _key("again"), 16)
        inp = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_shared_memory("again", 16)
        assert client.infer("identity_fp32", [inp]).as_numpy("OUTPUT0").tolist() == [[value] * 4]
        client.unregister_system_shared_memory("again")


# -- errors, with Triton's texts --------------------------------------------------------------------


def _http(server: RunningServer, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
    data = None if body is None else json.dumps(body)
    response = requests.request(method, server.base + path, data=data)
    content = response.json() if response.content else None
    return response.status_code, response.headers["content-type"], content


def test_registration_errors_http(shm_server: RunningServer, regions: dict[str, Any]) -> None:
    _region(regions, "e", 64)
    base = "/v2/systemsharedmemory"
    register = f"{base}/region/e/register"
    good = {"key": _key("e"), "offset": 0, "byte_size": 64}
    assert _http(shm_server, "POST", register, good) == (200, "application/json", None)
    cases = [
        (register, good, 400, "shared memory region 'e' already in manager"),
        (f"{base}/region/f/register", {"offset": 0, "byte_size": 8}, 400,
         "Shared memory register request has no 'key' field"),
        (f"{base}/region/f/register", {"key": _key("e")}, 400,
         "Shared memory register request has no 'byte_size' field"),
        (f"{base}/region/f/register", {"key": 1, "byte_size": 8}, 500,
         "attempt to access JSON non-string as string"),
        (f"{base}/region/f/register", {"key": _key("e"), "byte_size": -1}, 500,
         "attempt to access JSON non-unsigned-integer as unsigned-integer"),
        (f"{base}/region/f/register", None, 500, "failed to parse the request JSON buffer: The document is empty. at 0"),
        (f"{base}/region/f/register", {"key": "/conch_no_such_key", "byte_size": 8}, 500,
         "Unable to open shared memory region: '/conch_no_such_key'"),
        (f"{base}/region/f/register", {"key": _key("e"), "offset": 32, "byte_size": 64}, 400,
         "failed to register shared memory region 'f': invalid args"),
        (f"{base}/register", good, 400, "'region name' is necessary to register system shared memory region"),
    ]  # fmt: skip
    for path, body, status, message in cases:
        assert _http(shm_server, "POST", path, body) == (status, "application/json", {"error": message}), path
    assert _http(shm_server, "GET", f"{base}/region/f/status") == (
        404, "application/json", {"error": "Unable to find system shared memory region: 'f'"}
    )  # fmt: skip
    assert _http(shm_server, "GET", "/v2/cudasharedmemory/region/e/status") == (
        404,
        "application/json",
        {"error": "The region named 'e' is registered as system shared memory, not CUDA shared memory"},
    )
    assert _http(shm_server, "POST", f"{base}/region/f/unregister") == (200, "application/json", None)
    assert _http(shm_server, "GET", register)[0] == 405


def test_registration_errors_grpc(shm_server: RunningServer, regions: dict[str, Any]) -> None:
    _region(regions, "g", 64)
    client = _client(shm_server, "grpc")
    client.register_system_shared_memory("g", _key("g"), 64)
    cases = [
        (("g", _key("g"), 64), "StatusCode.ALREADY_EXISTS", "shared memory region 'g' already in manager"),
        (("h", "", 8), "StatusCode.INTERNAL", "Unable to open shared memory region: ''"),
        (("h", _key("g"), 128), "StatusCode.INVALID_ARGUMENT", "failed to register shared memory region 'h': invalid args"),
    ]  # fmt: skip
    for args, status, message in cases:
        with pytest.raises(InferenceServerException) as caught:
            client.register_system_shared_memory(*args)
        assert (caught.value.status(), caught.value.message()) == (status, message)
    with pytest.raises(InferenceServerException) as caught:
        client.get_system_shared_memory_status("h")
    assert (caught.value.status(), caught.value.message()) == (
        "StatusCode.NOT_FOUND",
        "Unable to find system shared memory region: 'h'",
    )


def _infer_json(server: RunningServer, body: dict[str, Any]) -> tuple[int, str, Any]:
    return _http(server, "POST", "/v2/models/identity_fp32/infer", body)


def test_inference_errors_http(shm_server: RunningServer, regions: dict[str, Any]) -> None:
    _region(regions, "r", 64)
    requests.post(shm_server.base + "/v2/systemsharedmemory/region/r/register", json={"key": _key("r"), "byte_size": 64})

    def inp(**params: Any) -> dict[str, Any]:
        return {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "parameters": params}

    data_in = {"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}

    def out(**params: Any) -> list[dict[str, Any]]:
        return [{"name": "OUTPUT0", "parameters": params}]

    cases = [
        ({"inputs": [inp(shared_memory_region="nope", shared_memory_byte_size=16)]}, 404,
         "Unable to find shared memory region: 'nope'"),
        ({"inputs": [inp(shared_memory_region="r", shared_memory_byte_size=8)]}, 400,
         "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model 'identity_fp32'. "
         "Expected 16, got 8"),
        ({"inputs": [inp(shared_memory_region="r", shared_memory_byte_size=16, shared_memory_offset=56)]}, 400,
         "Invalid offset + byte size for shared memory region: 'r'"),
        ({"inputs": [inp(shared_memory_region="r", shared_memory_byte_size=16, shared_memory_offset=64)]}, 400,
         "Invalid offset for shared memory region: 'r'"),
        ({"inputs": [inp(shared_memory_region="r")]}, 400, "Invalid offset + byte size for shared memory region: 'r'"),
        ({"inputs": [inp(shared_memory_byte_size=16)]}, 400,
         "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
         "'shared_memory_region' in 'parameters'. But no field is set"),
        ({"inputs": [{**inp(shared_memory_region="r", shared_memory_byte_size=16), "data": [1, 2, 3, 4]}]}, 400,
         "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
         "'shared_memory_region' in 'parameters'. But set 'data' 'shared_memory_region'"),
        ({"inputs": [inp(shared_memory_region=5, shared_memory_byte_size=16)]}, 500,
         "Unable to parse 'shared_memory_region': attempt to access JSON non-string as string"),
        ({"inputs": [data_in], "outputs": out(shared_memory_region="r", shared_memory_byte_size=16, binary_data=True)},
         400, "Output can't set both 'shared_memory_region' and 'binary_data'"),
        ({"inputs": [data_in], "outputs": out(shared_memory_region="nope", shared_memory_byte_size=16)}, 404,
         "Unable to find shared memory region: 'nope'"),
        ({"inputs": [data_in], "outputs": out(shared_memory_region="r", shared_memory_byte_size=16,
                                              shared_memory_offset=56)}, 400,
         "Invalid offset + byte size for shared memory region: 'r'"),
    ]  # fmt: skip
    for body, status, message in cases:
        assert _infer_json(shm_server, body) == (status, "application/json", {"error": message}), body
    # An output region too small fails once the output exists: an error of the response, text/plain as in Triton.
    too_small = {"inputs": [data_in], "outputs": out(shared_memory_region="r", shared_memory_byte_size=8)}
    assert _infer_json(shm_server, too_small) == (
        500,
        "text/plain",
        {
            "error": "shared memory size specified with the request for output 'OUTPUT0' (8 bytes) should be at "
            "least 16 bytes to hold the results"
        },
    )
    # binary_data false and binary_data_output beside a shm output: no data either way, as in Triton.
    for extra in ({"outputs": out(shared_memory_region="r", shared_memory_byte_size=16, binary_data=False)},
                  {"outputs": out(shared_memory_region="r", shared_memory_byte_size=16),
                   "parameters": {"binary_data_output": True}}):  # fmt: skip
        status, _, answer = _infer_json(shm_server, {"inputs": [data_in], **extra})
        assert (status, answer["outputs"]) == (200, [{"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 4]}])


def test_inference_errors_grpc(shm_server: RunningServer, regions: dict[str, Any]) -> None:
    _region(regions, "r", 64)
    client = _client(shm_server, "grpc")
    client.register_system_shared_memory("r", _key("r"), 64)

    def infer(in_params: dict[str, Any] | None, out_params: dict[str, Any] | None) -> tuple[str, str]:
        inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        if in_params is None:
            inp.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        else:
            inp.set_shared_memory(**in_params)
        outputs = None
        if out_params is not None:
            output = grpcclient.InferRequestedOutput("OUTPUT0")
            output.set_shared_memory(**out_params)
            outputs = [output]
        with pytest.raises(InferenceServerException) as caught:
            client.infer("identity_fp32", [inp], outputs=outputs, request_id="q")
        return caught.value.status(), caught.value.message()

    assert infer({"region_name": "nope", "byte_size": 16}, None) == (
        "StatusCode.NOT_FOUND", "Unable to find shared memory region: 'nope'"
    )  # fmt: skip
    assert infer({"region_name": "r", "byte_size": 8}, None) == (
        "StatusCode.INVALID_ARGUMENT",
        "[request id: q] input byte size mismatch for input 'INPUT0' for model 'identity_fp32'. Expected 16, got 8",
    )
    assert infer({"region_name": "r", "byte_size": 16, "offset": 56}, None) == (
        "StatusCode.INVALID_ARGUMENT", "Invalid offset + byte size for shared memory region: 'r'"
    )  # fmt: skip
    assert infer({"region_name": "r", "byte_size": 16, "offset": 64}, None) == (
        "StatusCode.INVALID_ARGUMENT", "Invalid offset for shared memory region: 'r'"
    )  # fmt: skip
    assert infer(None, {"region_name": "r", "byte_size": 8}) == (
        "StatusCode.INTERNAL",
        "shared memory size specified with the request for output 'OUTPUT0' (8 bytes) should be at least 16 bytes "
        "to hold the results",
    )
    assert infer(None, {"region_name": "nope", "byte_size": 16}) == (
        "StatusCode.NOT_FOUND", "Unable to find shared memory region: 'nope'"
    )  # fmt: skip


def test_grpc_parameters_without_their_partner(shm_server: RunningServer, regions: dict[str, Any]) -> None:
    """Region without byte size and byte size without region: Triton's ParseSharedMemoryParams texts."""
    _region(regions, "r", 64)
    requests.post(shm_server.base + "/v2/systemsharedmemory/region/r/register", json={"key": _key("r"), "byte_size": 64})
    with grpc.insecure_channel(shm_server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for params, message in [
            ({"shared_memory_region": "r"},
             "'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor "
             "'INPUT0'"),
            ({"shared_memory_byte_size": 16},
             "'shared_memory_byte_size' can not be specified without 'shared_memory_region' parameter for tensor "
             "'INPUT0'"),
        ]:  # fmt: skip
            request = pb.ModelInferRequest(model_name="identity_fp32")
            tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
            for key, value in params.items():
                if isinstance(value, str):
                    tensor.parameters[key].string_param = value
                else:
                    tensor.parameters[key].int64_param = value
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request)
            assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_regions_are_unmapped_on_unregister(shm_server: RunningServer, regions: dict[str, Any]) -> None:
    """After unregistering, the server holds no mapping of the object (checked in its /proc maps)."""
    _region(regions, "m", 64)
    client = _client(shm_server, "http")
    client.register_system_shared_memory("m", _key("m"), 64)
    maps = Path(f"/proc/{shm_server.process.pid}/maps")
    assert _key("m") in maps.read_text()
    client.unregister_system_shared_memory("m")
    assert _key("m") not in maps.read_text()


def test_grpc_stream_writes_outputs_to_shared_memory(shm_server: RunningServer, regions: dict[str, Any]) -> None:
    """ModelStreamInfer reads and writes regions as ModelInfer does."""
    handle = _region(regions, "st", 32)
    shm.set_shared_memory_region(handle, [np.array([[3, 1, 4, 1]], dtype=np.float32)])
    client = _client(shm_server, "grpc")
    client.register_system_shared_memory("st", _key("st"), 32)
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_shared_memory("st", 16)
        out = grpcclient.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("st", 16, offset=16)
        client.async_stream_infer("identity_fp32", [inp], outputs=[out])
        result, error = answers.get(timeout=10)
    finally:
        client.stop_stream()
    assert error is None
    assert list(result.get_response().raw_output_contents) == [b""]
    assert shm.get_contents_as_numpy(handle, np.float32, [1, 4], offset=16).tolist() == [[3, 1, 4, 1]]
