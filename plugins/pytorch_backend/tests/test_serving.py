"""End to end: TorchScript models scripted at test time, served by ``conch serve``, queried with tritonclient.

Results are compared with the same TorchScript file called directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import requests
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serverkit import RunningServer, start_server

DATATYPES = ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
PROTOCOLS = ["http", "grpc"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, models: SimpleNamespace) -> Path:
    root = tmp_path_factory.mktemp("pytorch_repo")
    save, config = models.save, models.config
    fp32_16 = [("INPUT__0", "TYPE_FP32", "[ 16 ]"), ("INPUT__1", "TYPE_FP32", "[ 16 ]")]
    out_16 = [("OUTPUT__0", "TYPE_FP32", "[ 16 ]"), ("OUTPUT__1", "TYPE_FP32", "[ 16 ]")]
    save(
        root,
        "add_sub",
        models.AddSub(),
        config("add_sub", fp32_16, out_16, "max_batch_size: 8\ninstance_group [ { count: 2 kind: KIND_CPU } ]"),
    )
    fixed_in = [(n, t, "[ -1, 16 ]") for n, t, _ in fp32_16]
    fixed_out = [(n, t, "[ -1, 16 ]") for n, t, _ in out_16]
    save(root, "add_sub_fixed", models.AddSub(), config("add_sub_fixed", fixed_in, fixed_out, "max_batch_size: 0"))
    save(
        root,
        "named",
        models.Named(),
        config(
            "named",
            [("offset", "TYPE_FP32", "[ 3 ]"), ("x", "TYPE_FP32", "[ 3 ]"), ("scale", "TYPE_FP32", "[ 3 ]")],
            [("y", "TYPE_FP32", "[ 3 ]")],
            'max_batch_size: 4\nparameters [ { key: "INFERENCE_MODE" value: { string_value: "false" } }, '
            '{ key: "DISABLE_OPTIMIZED_EXECUTION" value: { string_value: "true" } } ]',
        ),
    )
    save(
        root,
        "dict_out",
        models.DictOut(),
        config(
            "dict_out",
            [("INPUT__0", "TYPE_FP32", "[ 4 ]")],
            [("max", "TYPE_FP32", "[ 1 ]"), ("sum", "TYPE_FP32", "[ 1 ]")],
            "max_batch_size: 4",
        ),
    )
    save(
        root,
        "dict_in",
        models.DictIn(),
        config(
            "dict_in",
            [("A", "TYPE_INT64", "[ -1 ]"), ("B", "TYPE_INT64", "[ -1 ]")],
            [("OUTPUT__0", "TYPE_INT64", "[ -1 ]")],
            "max_batch_size: 4",
        ),
    )
    for datatype in DATATYPES:
        type_name = models.DATATYPES[datatype][0]
        name = f"identity_{datatype.lower()}"
        save(
            root,
            name,
            models.Identity(),
            config(
                name, [("INPUT__0", type_name, "[ -1 ]")], [("OUTPUT__0", type_name, "[ -1 ]")], "max_batch_size: 8"
            ),
        )
    save(
        root,
        "raises",
        models.Raises(),
        config(
            "raises", [("INPUT__0", "TYPE_FP32", "[ 2 ]")], [("OUTPUT__0", "TYPE_FP32", "[ 2 ]")], "max_batch_size: 4"
        ),
    )
    save(
        root,
        "linear",
        models.Linear(),
        config(
            "linear",
            [("INPUT__0", "TYPE_FP32", "[ 16 ]")],
            [("OUTPUT__0", "TYPE_FP32", "[ 4 ]")],
            "max_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: 20000 }\n"
            "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
            'parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "1" } }',
        ),
    )
    return root


@pytest.fixture(scope="module")
def server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server([repo], tmp_path_factory.mktemp("pytorch_server"))
    yield running
    running.stop()


def direct(repo: Path, model: str, *args: Any) -> Any:
    """The same TorchScript file, called in this process."""
    module = torch.jit.load(str(repo / model / "1" / "model.pt"))
    with torch.no_grad():
        return module(*[torch.from_numpy(np.array(a)) if isinstance(a, np.ndarray) else a for a in args])


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


def test_metadata_and_config(server: RunningServer) -> None:
    config = requests.get(f"{server.base}/v2/models/add_sub/config", timeout=10).json()
    assert config["platform"] == "pytorch_libtorch" and config["backend"] == "pytorch"
    assert config["default_model_filename"] == "model.pt"
    metadata = requests.get(f"{server.base}/v2/models/add_sub", timeout=10).json()
    assert metadata["platform"] == "pytorch_libtorch"
    assert [(t["name"], t["shape"]) for t in metadata["inputs"]] == [("INPUT__0", [-1, 16]), ("INPUT__1", [-1, 16])]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["add_sub", "add_sub_fixed"])
def test_add_sub_by_position(server: RunningServer, repo: Path, protocol: str, model: str) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 16), dtype=np.float32), rng.standard_normal((3, 16), dtype=np.float32)
    result = infer(server, protocol, model, {"INPUT__0": (a, "FP32"), "INPUT__1": (b, "FP32")})
    want = direct(repo, model, a, b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), want[0].numpy())
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), want[1].numpy())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inputs_bound_by_forward_argument_names(server: RunningServer, repo: Path, protocol: str) -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    scale = np.full((2, 3), 10, np.float32)
    offset = np.array([[0.5, 0.25, 0.125]] * 2, np.float32)
    result = infer(server, protocol, "named", {"offset": (offset, "FP32"), "x": (x, "FP32"), "scale": (scale, "FP32")})
    np.testing.assert_array_equal(result.as_numpy("y"), direct(repo, "named", x, scale, offset).numpy())
    np.testing.assert_array_equal(result.as_numpy("y"), x * 10 + offset)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dict_output_by_name(server: RunningServer, repo: Path, protocol: str) -> None:
    x = np.array([[1, 9, 3, 4], [-1, -2, -3, -4]], np.float32)
    result = infer(server, protocol, "dict_out", {"INPUT__0": (x, "FP32")})
    want = direct(repo, "dict_out", x)
    np.testing.assert_array_equal(result.as_numpy("sum"), want["sum"].numpy())
    np.testing.assert_array_equal(result.as_numpy("max"), want["max"].numpy())
    assert result.as_numpy("max").tolist() == [[9.0], [-1.0]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_dict_input(server: RunningServer, repo: Path, protocol: str) -> None:
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    b = np.full((2, 3), 3, np.int64)
    result = infer(server, protocol, "dict_in", {"A": (a, "INT64"), "B": (b, "INT64")})
    want = direct(repo, "dict_in", {"A": torch.from_numpy(a), "B": torch.from_numpy(b)})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), want.numpy())


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("datatype", DATATYPES)
def test_identity_every_datatype(server: RunningServer, repo: Path, protocol: str, datatype: str) -> None:
    rng = np.random.default_rng(11)
    if datatype == "BOOL":
        data = rng.integers(0, 2, (2, 5)).astype(bool)
    elif datatype.startswith("FP"):
        data = rng.standard_normal((2, 5)).astype(
            {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[datatype]
        )
    else:
        dtype = np.dtype(datatype.lower())
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, (2, 5), dtype=dtype, endpoint=True)
    model = f"identity_{datatype.lower()}"
    got = infer(server, protocol, model, {"INPUT__0": (data, datatype)}).as_numpy("OUTPUT__0")
    assert got.dtype == data.dtype
    np.testing.assert_array_equal(got, direct(repo, model, data).numpy())
    np.testing.assert_array_equal(got, data)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_model_error_names_the_model_and_server_keeps_serving(server: RunningServer, protocol: str) -> None:
    bad = np.array([[1, -1]], np.float32)
    with pytest.raises(InferenceServerException) as caught:
        infer(server, protocol, "raises", {"INPUT__0": (bad, "FP32")})
    message = str(caught.value)
    assert "negative values are not allowed" in message and "'raises'" in message, message
    assert "PyTorch execute failure" in message
    good = np.array([[1, 2]], np.float32)
    assert infer(server, protocol, "raises", {"INPUT__0": (good, "FP32")}).as_numpy("OUTPUT__0").tolist() == [[2, 4]]
    assert requests.get(f"{server.base}/v2/health/ready", timeout=10).status_code == 200


def test_dynamic_batching_concurrent_clients_split_back(server: RunningServer, repo: Path) -> None:
    before = requests.get(f"{server.base}/v2/models/linear/stats", timeout=10).json()["model_stats"][0]
    rng = np.random.default_rng(5)
    batches = [rng.standard_normal((1 + i % 3, 16), dtype=np.float32) for i in range(48)]
    module = torch.jit.load(str(repo / "linear" / "1" / "model.pt"))

    def one(index: int) -> tuple[int, np.ndarray]:
        protocol = PROTOCOLS[index % 2]
        result = infer(server, protocol, "linear", {"INPUT__0": (batches[index], "FP32")})
        return index, result.as_numpy("OUTPUT__0")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(len(batches))))
    for index, got in results:
        with torch.no_grad():
            want = module(torch.from_numpy(batches[index])).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    after = requests.get(f"{server.base}/v2/models/linear/stats", timeout=10).json()["model_stats"][0]
    inferences = int(after["inference_count"]) - int(before.get("inference_count", 0))
    executions = int(after["execution_count"]) - int(before.get("execution_count", 0))
    assert inferences == sum(len(b) for b in batches)
    assert executions < len(batches), (executions, len(batches))  # requests were batched together
