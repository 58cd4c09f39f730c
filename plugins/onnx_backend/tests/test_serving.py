"""End to end: ONNX models built at test time, served by ``conch serve``, queried with tritonclient.

Results are compared with ONNX Runtime called directly on the same file.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serverkit import RunningServer, start_server

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16"]  # fmt: skip

ADD_SUB_CONFIG = """
name: "add_sub_cfg"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 3 kind: KIND_CPU } ]
optimization { graph { level: 1 } }
parameters [
  { key: "intra_op_thread_count" value: { string_value: "1" } },
  { key: "execution_mode" value: { string_value: "1" } },
  { key: "enable_mem_arena" value: { string_value: "1" } },
  { key: "memory.enable_memory_arena_shrinkage" value: { string_value: "cpu:0" } }
]
"""

OPTIONAL_CONFIG = """
platform: "onnxruntime_onnx"
input [ { name: "A" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 3 ] optional: true } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, models: SimpleNamespace) -> Path:
    """Every kind of model the issue lists; only two have a config.pbtxt."""
    root = tmp_path_factory.mktemp("onnx_repo")
    save = models.save
    save(root, "add_sub", models.add_sub())
    save(root, "add_sub_cfg", models.add_sub(), ADD_SUB_CONFIG)
    for datatype in DATATYPES:
        save(root, f"identity_{datatype.lower()}", models.identity(datatype))
    save(root, "dynamic", models.double())
    save(root, "fixed", models.add_sub((2, 3)))
    save(root, "scalar", models.scalar_plus_one())
    save(root, "rows", models.scalar_plus_one(("batch",)))
    save(root, "optional", models.optional_bias(), OPTIONAL_CONFIG)
    save(root, "external", models.external_weights(), external=True)
    save(root, "reshape", models.reshape_2x2())
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server([repo], tmp_path_factory.mktemp("onnx_server"))
    yield running
    running.stop()


def direct(repo: Path, model: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime on the same file, no server."""
    path = repo / model / "1" / "model.onnx"
    if path.is_dir():
        path = path / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def infer(server: RunningServer, protocol: str, model: str, inputs: dict[str, tuple[np.ndarray, str]]) -> Any:
    """One request with tritonclient over ``protocol``; the result object."""
    module: Any = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    tensors = []
    for name, (array, datatype) in inputs.items():
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client.infer(model, tensors)


def config_of(server: RunningServer, model: str) -> dict[str, Any]:
    return requests.get(f"{server.base}/v2/models/{model}/config", timeout=10).json()


# -- auto-complete ---------------------------------------------------------------------------------


def test_auto_complete_fills_io_batching_and_dynamic_batcher(server: RunningServer) -> None:
    config = config_of(server, "add_sub")
    assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert config["max_batch_size"] == 4
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [16]),
        ("INPUT1", "TYPE_FP32", [16]),
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("OUTPUT0", "TYPE_FP32", [16]),
        ("OUTPUT1", "TYPE_FP32", [16]),
    ]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    assert config["instance_group"][0]["kind"] == "KIND_CPU" and config["instance_group"][0]["count"] == 2
    metadata = requests.get(f"{server.base}/v2/models/add_sub", timeout=10).json()
    assert metadata["inputs"][0]["shape"] == [-1, 16]


def test_auto_complete_non_batching_scalars_and_types(server: RunningServer) -> None:
    fixed = config_of(server, "fixed")
    assert fixed["max_batch_size"] == 0 and "dynamic_batching" not in fixed
    assert fixed["input"][0]["dims"] == [2, 3]
    scalar = config_of(server, "scalar")
    assert scalar["max_batch_size"] == 0 and scalar["input"][0]["dims"] == [1] and "reshape" not in scalar["input"][0]
    rows = config_of(server, "rows")
    assert rows["max_batch_size"] == 4
    assert rows["input"][0]["dims"] == [1] and rows["input"][0]["reshape"] == {"shape": []}
    assert config_of(server, "dynamic")["input"][0]["dims"] == [-1, -1]
    assert config_of(server, "identity_bytes")["input"][0]["data_type"] == "TYPE_STRING"
    assert config_of(server, "identity_bf16")["output"][0]["data_type"] == "TYPE_BF16"


def test_config_given_is_kept(server: RunningServer) -> None:
    config = config_of(server, "add_sub_cfg")
    assert config["max_batch_size"] == 8
    assert config["instance_group"][0]["count"] == 3
    assert "dynamic_batching" not in config  # inputs and outputs given: Triton auto-completes nothing


# -- execution -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["add_sub", "add_sub_cfg"])
def test_add_sub_matches_onnxruntime(server: RunningServer, repo: Path, protocol: str, model: str) -> None:
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((3, 16), dtype=np.float32), rng.standard_normal((3, 16), dtype=np.float32)
    result = infer(server, protocol, model, {"INPUT0": (a, "FP32"), "INPUT1": (b, "FP32")})
    want = direct(repo, model, {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), want["OUTPUT0"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), want["OUTPUT1"])


def _sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"", b"hello"], ["ünïcode".encode(), b"x" * 300]], dtype=object)
    if datatype == "BF16":
        return np.array([[1.0, -2.5], [0.0, 3.140625]], dtype=ml_dtypes.bfloat16)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    dtype = np.dtype(
        {
            "UINT8": "u1",
            "UINT16": "u2",
            "UINT32": "u4",
            "UINT64": "u8",
            "INT8": "i1",
            "INT16": "i2",
            "INT32": "i4",
            "INT64": "i8",
            "FP16": "f2",
            "FP32": "f4",
            "FP64": "f8",
        }[datatype]  # fmt: skip
    )
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    return np.array([[0, 1], [info.max, info.min]], dtype=dtype)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_identity_every_datatype(server: RunningServer, repo: Path, protocol: str, datatype: str) -> None:
    data = _sample(datatype)
    result = infer(server, protocol, f"identity_{datatype.lower()}", {"INPUT0": (data, datatype)})
    got = result.as_numpy("OUTPUT0")
    assert got.shape == data.shape
    if datatype == "BF16":  # numpy has no bfloat16 for ONNX Runtime to return: compare the values sent
        assert got.astype(np.float32).tolist() == data.astype(np.float32).tolist()
        return
    feed = data if datatype != "BYTES" else np.array([[v.decode() for v in row] for row in data], dtype=object)
    want = direct(repo, f"identity_{datatype.lower()}", {"INPUT0": feed})
    if datatype == "BYTES":
        assert got.tolist() == [[s.encode() for s in row] for row in want["OUTPUT0"].tolist()] == data.tolist()
    else:
        np.testing.assert_array_equal(got, want["OUTPUT0"])
        assert got.dtype == want["OUTPUT0"].dtype


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_string_tensor_that_is_not_utf8_is_a_clear_error(server: RunningServer, protocol: str) -> None:
    data = np.array([[b"ok", b"\xff\xfe"]], dtype=object)
    with pytest.raises(InferenceServerException) as error:
        infer(server, protocol, "identity_bytes", {"INPUT0": (data, "BYTES")})
    assert "identity_bytes" in str(error.value) and "UTF-8" in str(error.value)
    assert "INPUT0" in str(error.value)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_variable_dimensions(server: RunningServer, repo: Path, protocol: str) -> None:
    for shape in [(1, 2, 3), (2, 5, 1), (4, 1, 7)]:
        x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        got = infer(server, protocol, "dynamic", {"X": (x, "FP32")}).as_numpy("Y")
        np.testing.assert_array_equal(got, direct(repo, "dynamic", {"X": x})["Y"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_non_batching_and_scalar_models(server: RunningServer, repo: Path, protocol: str) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = infer(server, protocol, "fixed", {"INPUT0": (a, "FP32"), "INPUT1": (a * 3, "FP32")})
    np.testing.assert_array_equal(
        result.as_numpy("OUTPUT1"), direct(repo, "fixed", {"INPUT0": a, "INPUT1": a * 3})["OUTPUT1"]
    )
    # A graph scalar is dims [1] in the config: [1] in, [1] out.
    got = infer(server, protocol, "scalar", {"X": (np.array([41], dtype=np.int32), "INT32")}).as_numpy("Y")
    assert got.shape == (1,) and got.tolist() == [42]
    # One scalar per row of a batch: [B, 1] in the protocol, [B] in the graph (reshape: []).
    rows = np.array([[1], [2], [3]], dtype=np.int32)
    got = infer(server, protocol, "rows", {"X": (rows, "INT32")}).as_numpy("Y")
    assert got.shape == (3, 1) and got.tolist() == [[2], [3], [4]]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_optional_input(server: RunningServer, repo: Path, protocol: str) -> None:
    a = np.array([1, 2, 3], dtype=np.float32)
    b = np.array([10, 20, 30], dtype=np.float32)
    without = infer(server, protocol, "optional", {"A": (a, "FP32")}).as_numpy("Y")
    assert without.tolist() == [2, 3, 4] == direct(repo, "optional", {"A": a})["Y"].tolist()
    given = infer(server, protocol, "optional", {"A": (a, "FP32"), "B": (b, "FP32")}).as_numpy("Y")
    assert given.tolist() == [11, 22, 33]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_external_data_folder(server: RunningServer, repo: Path, protocol: str) -> None:
    assert (repo / "external" / "1" / "model.onnx" / "weights.bin").is_file()
    x = np.ones((2, 16), dtype=np.float32)
    got = infer(server, protocol, "external", {"X": (x, "FP32")}).as_numpy("Y")
    assert got.tolist() == (x + np.arange(16, dtype=np.float32)).tolist()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_onnxruntime_run_error_names_the_model(server: RunningServer, protocol: str) -> None:
    with pytest.raises(InferenceServerException) as error:
        infer(server, protocol, "reshape", {"X": (np.ones(3, dtype=np.float32), "FP32")})
    text = str(error.value)
    assert "onnx runtime error" in text and "'reshape'" in text, text
    assert error.value.status() in ("500", "StatusCode.INTERNAL"), error.value.status()
    # The model still serves afterwards.
    ok = infer(server, protocol, "reshape", {"X": (np.arange(4, dtype=np.float32), "FP32")}).as_numpy("Y")
    assert ok.tolist() == [[0, 1], [2, 3]]


def test_concurrent_requests_all_correct(server: RunningServer) -> None:
    """Many requests at once over both instances (and through the batcher when it batches)."""

    def one(i: int) -> bool:
        a = np.full((1 + i % 4, 16), i, dtype=np.float32)
        result = infer(server, "http" if i % 2 else "grpc", "add_sub", {"INPUT0": (a, "FP32"), "INPUT1": (a, "FP32")})
        return bool((result.as_numpy("OUTPUT0") == 2 * a).all() and (result.as_numpy("OUTPUT1") == 0).all())

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(64)))
    stats = requests.get(f"{server.base}/v2/models/add_sub/stats", timeout=10).json()
    assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= 64
