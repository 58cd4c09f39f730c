"""Every datatype, both protocols, real tritonclient: through the identity backend and back."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from serverkit import RunningServer

NUMERIC = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
BYTES_DATA = np.array([[b"", b"hello", b"\xff\xfe\x00binary", "ünïcode".encode()]], dtype=object)
BYTES_JSON_DATA = np.array([[b"", b"hello", b"with \x00 nul", "ünïcode".encode()]], dtype=object)


def _sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return BYTES_DATA
    if datatype == "BF16":
        # tritonclient takes bfloat16 arrays from ml_dtypes; values chosen to be exact in bfloat16.
        import ml_dtypes

        return np.array([[1.0, -2.5, 0.0, 3.140625]], dtype=ml_dtypes.bfloat16)
    dtype = NUMERIC[datatype]
    if dtype is np.bool_:
        return np.array([[True, False, True, True]])
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    return np.array([[0, 1, info.max, info.min if np.issubdtype(dtype, np.signedinteger) else 3]], dtype=dtype)


def _plain(array: np.ndarray) -> list:
    """Comparable Python values (bfloat16 through float32)."""
    if array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    if array.dtype == object:  # tritonclient gives str for JSON BYTES outputs, bytes for binary ones
        return [[v.encode() if isinstance(v, str) else v for v in row] for row in array.tolist()]
    return array.tolist()


def _model(datatype: str) -> str:
    return "identity_" + ("string" if datatype == "BYTES" else datatype.lower())


ALL = [*NUMERIC, "BYTES", "BF16"]
JSON_OK = [t for t in ALL if t not in ("FP16", "BF16")]


# FP16 and BF16 have no JSON form in Triton's protocol (their rejection is tested below).
HTTP_CASES = [(t, True) for t in ALL] + [(t, False) for t in JSON_OK]


@pytest.mark.parametrize(
    ("datatype", "binary"), HTTP_CASES, ids=[f"{t}-{'binary' if b else 'json'}" for t, b in HTTP_CASES]
)
def test_http_every_datatype(server: RunningServer, datatype: str, binary: bool) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    data = _sample(datatype)
    if datatype == "BYTES" and not binary:
        data = BYTES_JSON_DATA  # JSON strings carry UTF-8 text only; non-UTF-8 goes binary
    inp = httpclient.InferInput("INPUT0", list(data.shape), datatype)
    inp.set_data_from_numpy(data, binary_data=binary)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
    result = client.infer(_model(datatype), [inp], outputs=[out])
    got = result.as_numpy("OUTPUT0")
    assert got.shape == data.shape
    assert _plain(got) == _plain(data)
    assert result.get_output("OUTPUT0")["datatype"] == datatype


@pytest.mark.parametrize("datatype", ALL)
def test_grpc_every_datatype(server: RunningServer, datatype: str) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    data = _sample(datatype)
    inp = grpcclient.InferInput("INPUT0", list(data.shape), datatype)
    inp.set_data_from_numpy(data)
    result = client.infer(_model(datatype), [inp])
    got = result.as_numpy("OUTPUT0")
    assert _plain(got) == _plain(data)
    assert result.get_output("OUTPUT0").datatype == datatype


async def test_asyncio_clients(server: RunningServer) -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    hclient = httpaio.InferenceServerClient(server.http_url)
    gclient = grpcaio.InferenceServerClient(server.grpc_url)
    try:
        assert await hclient.is_server_ready()
        assert await gclient.is_server_ready()
        hin = httpaio.InferInput("INPUT0", [2, 3], "FP32")
        hin.set_data_from_numpy(data)
        gin = grpcaio.InferInput("INPUT0", [2, 3], "FP32")
        gin.set_data_from_numpy(data)
        results = await asyncio.gather(
            *[hclient.infer("identity_fp32", [hin]) for _ in range(5)],
            *[gclient.infer("identity_fp32", [gin]) for _ in range(5)],
        )
        for r in results:
            assert r.as_numpy("OUTPUT0").tolist() == data.tolist()
    finally:
        await hclient.close()
        await gclient.close()


def test_nested_json_and_request_id(server: RunningServer) -> None:
    import requests

    body = {
        "id": "req-42",
        "inputs": [{"name": "INPUT0", "shape": [2, 2], "datatype": "INT32", "data": [[1, 2], [3, 4]]}],
    }
    r = requests.post(f"{server.base}/v2/models/identity_int32/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-42"
    assert out["model_name"] == "identity_int32" and out["model_version"] == "1"
    assert out["outputs"][0]["data"] == [1, 2, 3, 4]
    assert out["outputs"][0]["shape"] == [2, 2]


def test_fp16_json_rejected(server: RunningServer) -> None:
    import requests

    body = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP16", "data": [1.0, 2.0]}]}
    r = requests.post(f"{server.base}/v2/models/identity_fp16/infer", json=body)
    assert r.status_code == 400
    assert r.json()["error"] == (
        "receiving FP16 data via JSON is not supported. Please use the binary data format for input INPUT0"
    )


def test_fifty_megabyte_tensor_both_protocols(server: RunningServer) -> None:
    data = np.random.default_rng(0).random((1, 50 * 1024 * 1024 // 4), dtype=np.float32)
    h = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    hin = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    hin.set_data_from_numpy(data)
    assert np.array_equal(h.infer("identity_fp32", [hin]).as_numpy("OUTPUT0"), data)
    g = grpcclient.InferenceServerClient(server.grpc_url)
    gin = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    gin.set_data_from_numpy(data)
    assert np.array_equal(g.infer("identity_fp32", [gin]).as_numpy("OUTPUT0"), data)


def test_metadata_and_config_both_protocols(server: RunningServer) -> None:
    h = httpclient.InferenceServerClient(server.http_url)
    g = grpcclient.InferenceServerClient(server.grpc_url)
    assert h.is_server_live() and g.is_server_live()
    assert h.is_server_ready() and g.is_server_ready()
    assert h.is_model_ready("identity_fp32") and g.is_model_ready("identity_fp32")
    assert not h.is_model_ready("nope") and not g.is_model_ready("nope")
    meta = h.get_server_metadata()
    assert meta["name"] == "conch"
    assert "binary_tensor_data" in meta["extensions"]
    assert g.get_server_metadata().name == "conch"
    model = h.get_model_metadata("identity_fixed")
    assert model["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]}]
    assert model["versions"] == ["1"] and model["platform"] == "identity"
    gmodel = g.get_model_metadata("identity_fixed")
    assert list(gmodel.inputs[0].shape) == [-1, 4]
    config = h.get_model_config("identity_fixed")
    assert config["max_batch_size"] == 8
    assert config["input"][0]["dims"] == [4]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    gconfig = g.get_model_config("identity_fixed").config
    assert gconfig.max_batch_size == 8 and list(gconfig.input[0].dims) == [4]


def _both_errors(server: RunningServer, model: str, inputs: list[tuple[str, list[int], str, np.ndarray]],
                 outputs: list[str] | None = None) -> tuple[InferenceServerException, InferenceServerException]:
    h = httpclient.InferenceServerClient(server.http_url)
    g = grpcclient.InferenceServerClient(server.grpc_url)
    hin, gin = [], []
    for name, shape, dt, arr in inputs:
        a = httpclient.InferInput(name, shape, dt)
        a.set_data_from_numpy(arr)
        hin.append(a)
        b = grpcclient.InferInput(name, shape, dt)
        b.set_data_from_numpy(arr)
        gin.append(b)
    hout = [httpclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    gout = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    with pytest.raises(InferenceServerException) as he:
        h.infer(model, hin, outputs=hout)
    with pytest.raises(InferenceServerException) as ge:
        g.infer(model, gin, outputs=gout)
    return he.value, ge.value


def test_shape_error_text_and_codes(server: RunningServer) -> None:
    arr = np.zeros((1, 3), np.float32)
    he, ge = _both_errors(server, "identity_fixed", [("INPUT0", [1, 3], "FP32", arr)])
    expected = (
        "[request id: <id_unknown>] unexpected shape for input 'INPUT0' for model 'identity_fixed'. "
        "Expected [-1,4], got [1,3]. NOTE: Setting a non-zero max_batch_size in the model config requires a "
        "batch dimension to be prepended to each input shape. If you want to specify the full shape including "
        "the batch dim in your input dims config, try setting max_batch_size to zero. See the model "
        "configuration docs for more info on max_batch_size."
    )
    assert he.message() == expected and he.status() == "400"
    assert ge.message() == expected and ge.status() == "StatusCode.INVALID_ARGUMENT"


def test_datatype_error_text_and_codes(server: RunningServer) -> None:
    arr = np.zeros((1, 4), np.int32)
    he, ge = _both_errors(server, "identity_fixed", [("INPUT0", [1, 4], "INT32", arr)])
    expected = (
        "[request id: <id_unknown>] inference input 'INPUT0' data-type is 'INT32', but model "
        "'identity_fixed' expects 'FP32'"
    )
    assert he.message() == expected and he.status() == "400"
    assert ge.message() == expected and ge.status() == "StatusCode.INVALID_ARGUMENT"


def test_unknown_input_and_output_errors(server: RunningServer) -> None:
    arr = np.zeros((1, 4), np.float32)
    he, ge = _both_errors(server, "identity_fixed", [("NOPE", [1, 4], "FP32", arr)])
    assert he.message() == "unexpected inference input 'NOPE' for model 'identity_fixed'"
    assert ge.message() == he.message() and ge.status() == "StatusCode.INVALID_ARGUMENT"
    he, ge = _both_errors(server, "identity_fixed", [("INPUT0", [1, 4], "FP32", arr)], outputs=["NOPE"])
    assert he.message() == "unexpected inference output 'NOPE' for model 'identity_fixed'"
    assert ge.message() == he.message()


def test_missing_input_and_batch_size_errors(server: RunningServer) -> None:
    arr = np.zeros((1, 3), np.float32)
    he, ge = _both_errors(server, "identity_multi", [("INPUT0", [1, 3], "FP32", arr)])
    expected = (
        "[request id: <id_unknown>] expected 3 inputs but got 1 inputs for model 'identity_multi'. Got input(s) "
        "['INPUT0'], but missing required input(s) ['INPUT1','INPUT2']. Please provide all required input(s)."
    )
    assert he.message() == expected and ge.message() == expected
    big = np.zeros((9, 4), np.float32)
    he, ge = _both_errors(server, "identity_fixed", [("INPUT0", [9, 4], "FP32", big)])
    expected = "[request id: <id_unknown>] inference request batch-size must be <= 8 for 'identity_fixed'"
    assert he.message() == expected and he.status() == "400"
    assert ge.message() == expected and ge.status() == "StatusCode.INVALID_ARGUMENT"


def test_unknown_model_errors(server: RunningServer) -> None:
    arr = np.zeros((1, 4), np.float32)
    he, ge = _both_errors(server, "nope", [("INPUT0", [1, 4], "FP32", arr)])
    assert he.message() == "Request for unknown model: 'nope' is not found"
    assert he.status() == "404"
    assert ge.message() == he.message() and ge.status() == "StatusCode.NOT_FOUND"


def test_optional_input_absent_gives_zeros(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("INPUT0", [2, 3], "FP32")
    inp.set_data_from_numpy(np.ones((2, 3), np.float32))
    result = client.infer("identity_optional", [inp])
    assert result.as_numpy("OUTPUT0").tolist() == [[1.0] * 3] * 2
    assert result.as_numpy("OUTPUT1").tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_requested_output_subset(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = []
    for i in range(3):
        inp = grpcclient.InferInput(f"INPUT{i}", [1, 2], "FP32")
        inp.set_data_from_numpy(np.full((1, 2), i, np.float32))
        inputs.append(inp)
    result = client.infer("identity_multi", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT2")])
    assert result.as_numpy("OUTPUT2").tolist() == [[2.0, 2.0]]
    assert result.as_numpy("OUTPUT0") is None
