"""The HTTP/REST frontend end to end over ASGI (and over a real socket for chunking and tritonclient).

The service is a small fake with echo models (OUTPUT<i> = INPUT<i>) that still runs Conch's request
validation, so its errors are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from conch._proto.model_config_pb2 import DataType, ModelConfig, ModelInput, ModelOutput
from conch.errors import ConchError, ErrorCode
from conch.frontends.http import create_app
from conch.inference import InferenceRequest, InferenceResponse, ResponseStream, Tensor
from conch.shared_memory import SharedMemoryRegistry
from conch.tracing import TraceManager
from conch.validation import Signature, validate

# -- the fake service ------------------------------------------------------------------------------


class FakeModel:
    def __init__(
        self,
        name: str,
        inputs: list[tuple[str, int, list[int]]],
        *,
        max_batch_size: int = 0,
        decoupled: bool = False,
        ready: bool = True,
        labels: dict[str, list[str]] | None = None,
    ) -> None:
        config = ModelConfig(name=name, backend="identity", max_batch_size=max_batch_size)
        for index, (input_name, data_type, dims) in enumerate(inputs):
            config.input.append(ModelInput(name=input_name, data_type=data_type, dims=dims))
            config.output.append(ModelOutput(name=f"OUTPUT{index}", data_type=data_type, dims=dims))
        config.model_transaction_policy.decoupled = decoupled
        self.name = name
        self.version = 1
        self.config = config
        self.decoupled = decoupled
        self.ready = ready
        self.labels = labels or {}
        self.signature = Signature.from_config(config)

    def is_ready(self) -> bool:
        return self.ready

    def output_labels(self, output: str) -> list[str] | None:
        return self.labels.get(output)


def models() -> dict[str, FakeModel]:
    fp32, string, boolean = DataType.TYPE_FP32, DataType.TYPE_STRING, DataType.TYPE_BOOL
    return {
        model.name: model
        for model in [
            FakeModel("echo", [("INPUT0", fp32, [-1])], max_batch_size=8),
            FakeModel("ident_fp32", [("INPUT0", fp32, [4])], max_batch_size=8),  # as in triton-observed.md
            FakeModel("echo_nobatch", [("INPUT0", fp32, [-1])]),
            FakeModel("echo_bytes", [("INPUT0", string, [-1])]),
            FakeModel("echo_one_string", [("INPUT0", string, [1])]),
            FakeModel("echo_bool", [("INPUT0", boolean, [-1])]),
            FakeModel("echo_fp16", [("INPUT0", DataType.TYPE_FP16, [-1])]),
            FakeModel("echo_bf16", [("INPUT0", DataType.TYPE_BF16, [-1])]),
            FakeModel("echo_int64", [("INPUT0", DataType.TYPE_INT64, [-1])]),
            FakeModel("echo_uint8", [("INPUT0", DataType.TYPE_UINT8, [-1])]),
            FakeModel("echo_matrix", [("INPUT0", DataType.TYPE_INT32, [2, 3])]),
            FakeModel("two", [("INPUT0", fp32, [-1]), ("INPUT1", string, [-1])]),
            FakeModel("decoupled", [("INPUT0", fp32, [-1])], decoupled=True),
            FakeModel("loading", [("INPUT0", fp32, [-1])], ready=False),
            FakeModel("classes", [("INPUT0", fp32, [3])], max_batch_size=4, labels={"OUTPUT0": ["a", "b", "c"]}),
        ]
    }


class FakeService:
    def __init__(self) -> None:
        self.models = models()
        self.live = True
        self.ready = True
        self.requests: list[InferenceRequest] = []
        self.calls: list[tuple[Any, ...]] = []
        self.fail_with: Exception | None = None
        self.hold = False  # leave requests unanswered
        self.shared_memory = SharedMemoryRegistry()
        self.tracer = TraceManager()

    def is_live(self) -> bool:
        return self.live

    def is_ready(self) -> bool:
        return self.ready

    def metadata(self) -> dict[str, Any]:
        return {"name": "conch", "version": "0.1.0", "extensions": ["binary_tensor_data"]}

    def model(self, name: str, version: str | int | None = "") -> FakeModel:
        model = self.models.get(name)
        if model is None:
            raise ConchError(f"Request for unknown model: '{name}' is not found", ErrorCode.NOT_FOUND)
        if version not in ("", None, -1, 1):
            raise ConchError(f"Request for unknown model: '{name}' version {version} is not found", ErrorCode.NOT_FOUND)
        return model

    def model_ready(self, name: str, version: str | int | None = "") -> bool:
        try:
            return self.model(name, version).is_ready()
        except ConchError:
            return False

    def model_metadata(self, name: str, version: str | int | None = "") -> dict[str, Any]:
        model = self.model(name, version)
        return {"name": model.name, "versions": ["1"], "platform": "identity", "inputs": [], "outputs": []}

    def model_config(self, name: str, version: str | int | None = "") -> ModelConfig:
        return self.model(name, version).config

    def model_statistics(self, name: str = "", version: str | int | None = "") -> dict[str, Any]:
        if name and name not in self.models:
            raise ConchError(f"requested model '{name}' is not available", ErrorCode.INVALID_ARG)
        names = [name] if name else sorted(self.models)
        return {"model_stats": [{"name": n, "version": "1", "inference_count": 0} for n in names]}

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        self.calls.append(("index", ready_only))
        return [{"name": name, "version": "1", "state": "READY"} for name in self.models]

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        self.calls.append(("load", name, parameters))
        if name == "broken":
            raise ConchError("failed to load 'broken', no version is available", ErrorCode.INVALID_ARG)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self.calls.append(("unload", name, unload_dependents))

    def plugin_list(self) -> list[dict[str, Any]]:
        return [{"name": "identity", "kind": "backend"}]

    def submit(self, request: InferenceRequest, model: Any = None) -> ResponseStream:
        """Validate (errors raised, as the real service does) and answer at once on a stream."""
        if isinstance(self.fail_with, ConchError) and self.fail_with.code is ErrorCode.UNAVAILABLE:
            raise self.fail_with  # e.g. a full queue: refused at submission
        model = self.model(request.model_name, request.model_version)
        validate(request, model.signature)
        request.version_label = str(model.version)
        request.stream = ResponseStream()
        self.requests.append(request)
        if self.hold:
            return request.stream
        if self.fail_with is not None:  # an execution error: arrives as the response
            error = self.fail_with if isinstance(self.fail_with, ConchError) else ConchError(str(self.fail_with))
            request.fail(error.message, error.code)
            return request.stream
        outputs = []
        for name in request.requested_output_names():
            tensor = request.inputs[f"INPUT{name[len('OUTPUT') :]}"]
            assert isinstance(tensor.data, np.ndarray)
            outputs.append(Tensor(name, tensor.datatype, tensor.data))
        request.respond(InferenceResponse(outputs=outputs))
        return request.stream

    async def infer(self, request: InferenceRequest, model: Any = None) -> InferenceResponse:
        response = await self.submit(request).next()
        if response.error is not None:
            raise response.error
        return response


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def client(service: FakeService) -> Iterator[TestClient]:
    with TestClient(create_app(service)) as test_client:  # type: ignore[arg-type]
        yield test_client


def infer_json(name: str, datatype: str, shape: list[int], data: Any, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}], **extra}


def binary_body(document: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(document).encode()
    return header + b"".join(blobs), {"Inference-Header-Content-Length": str(len(header))}


def split_binary(response: Any) -> tuple[dict[str, Any], bytes]:
    length = int(response.headers["inference-header-content-length"])
    return json.loads(response.content[:length]), response.content[length:]


def serialize(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


JSON = "application/json"
OCTET_STREAM = "application/octet-stream"
TEXT = "text/plain"  # what Triton's HTTP library sends when a handler sets no type


def assert_error(response: Any, status: int, message: str, content_type: str = JSON) -> None:
    assert response.status_code == status, response.content
    assert response.headers["content-type"] == content_type
    assert response.json() == {"error": message}


# -- health, metadata, routing ------------------------------------------------------------------


def test_health(client: TestClient, service: FakeService) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/health/live?x=1"):
        response = client.get(path)
        assert (response.status_code, response.content) == (200, b"")
        assert response.headers["content-type"] == TEXT
    service.live = service.ready = False
    assert client.get("/v2/health/live").status_code == 400
    assert client.get("/v2/health/ready").status_code == 400


def test_server_metadata(client: TestClient) -> None:
    response = client.get("/v2")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json()["name"] == "conch"


def test_model_metadata_and_versions(client: TestClient) -> None:
    assert client.get("/v2/models/echo").json()["name"] == "echo"
    assert client.get("/v2/models/echo/versions/1").json()["versions"] == ["1"]
    assert_error(client.get("/v2/models/nope"), 404, "Request for unknown model: 'nope' is not found")
    assert_error(
        client.get("/v2/models/echo/versions/7"), 404, "Request for unknown model: 'echo' version 7 is not found"
    )


def test_model_names_are_not_url_decoded_as_in_triton(client: TestClient, service: FakeService) -> None:
    service.models["my_model"] = service.models["echo"]
    assert_error(client.get("/v2/models/my%5Fmodel"), 404, "Request for unknown model: 'my%5Fmodel' is not found")
    assert client.get("/v2/models/my_model/versions/01").status_code == 200


def test_version_beyond_int64(client: TestClient) -> None:
    assert_error(
        client.get("/v2/models/echo/versions/99999999999999999999/ready"),
        400,
        "failed to get model version from specified version string '99999999999999999999' (details: stol), "
        "version should be an integral value > 0",
        TEXT,
    )


def test_model_ready(client: TestClient) -> None:
    response = client.get("/v2/models/echo/ready")
    assert (response.status_code, response.content, response.headers["content-type"]) == (200, b"", TEXT)
    assert_error(client.get("/v2/models/loading/ready"), 400, "Model version not ready", TEXT)
    assert_error(client.get("/v2/models/nope/versions/2/ready"), 400, "Model version not ready", TEXT)


def test_model_config_is_tritons_json(client: TestClient) -> None:
    config = client.get("/v2/models/echo/config").json()
    assert config["name"] == "echo" and config["max_batch_size"] == 8
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == [-1]


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("POST", "/v2/health/live", TEXT),
        ("DELETE", "/v2/health/ready", TEXT),
        ("POST", "/v2", JSON),
        ("OPTIONS", "/v2", JSON),
        ("DELETE", "/v2/models/echo", JSON),
        ("GET", "/v2/models/echo/infer", TEXT),
        ("PUT", "/v2/models/echo/infer", TEXT),
        ("POST", "/v2/models/echo/ready", TEXT),
        ("POST", "/v2/models/echo/config", JSON),
        ("GET", "/v2/repository/index", JSON),
        ("GET", "/v2/repository/models/echo/load", JSON),
        ("POST", "/v2/models/stats", JSON),
        ("DELETE", "/v2/trace/setting", JSON),
        ("PUT", "/v2/logging", JSON),
        ("POST", "/v2/systemsharedmemory/status", JSON),
        ("GET", "/v2/cudasharedmemory/region/r/register", JSON),
        ("GET", "/v2/models/echo/generate", JSON),
        ("POST", "/conch/plugins", JSON),
    ],
)
def test_wrong_method(client: TestClient, method: str, path: str, content_type: str) -> None:
    assert_error(client.request(method, path), 405, "Method Not Allowed", content_type)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v2/",
        "/notapi/v2",
        "/v2/notapi",
        "/v2/models/notapi/foo",
        "/v2/models/echo/versions/abc",
        "/v2/models/echo/versions/1/trace/setting",
        "/base_path/v2/health/live",
        "/v2/health/alive",
        "/v2/health",
        "/v2/models",
        "/v2/models/echo/",
        "/v2/models/echo/versions/-1",
        "//v2",
        "/metrics",
    ],
)
def test_unknown_routes(client: TestClient, path: str) -> None:
    assert_error(client.get(path), 404, "Not Found", TEXT)


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/v2/trace/setting", 500, "failed to parse the request JSON buffer: The document is empty. at 0"),
        (
            "POST",
            "/v2/systemsharedmemory/region/r/register",
            500,
            "failed to parse the request JSON buffer: The document is empty. at 0",
        ),
        (
            "POST",
            "/v2/cudasharedmemory/region/r/register",
            501,
            "CUDA shared memory is not supported by this server yet",
        ),
        (
            "POST",
            "/v2/systemsharedmemory/register",
            400,
            "'region name' is necessary to register system shared memory region",
        ),
        ("GET", "/v2/systemsharedmemory/region/r/status", 404, "Unable to find system shared memory region: 'r'"),
        ("GET", "/v2/cudasharedmemory/region/r/status", 404, "Unable to find cuda shared memory region: 'r'"),
    ],
)
def test_features_conch_does_not_have_yet_and_edges(
    client: TestClient, method: str, path: str, status: int, message: str
) -> None:
    assert_error(client.request(method, path), status, message)


def test_statistics(client: TestClient, service: FakeService) -> None:
    assert [row["name"] for row in client.get("/v2/models/stats").json()["model_stats"]][:1] == ["classes"]
    assert client.get("/v2/models/echo/versions/1/stats").json() == {
        "model_stats": [{"name": "echo", "version": "1", "inference_count": 0}]
    }
    assert_error(client.get("/v2/models/nope/stats"), 400, "requested model 'nope' is not available")


class WithoutStatistics:
    """A service without ``model_statistics``."""

    def __init__(self, inner: FakeService) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "model_statistics":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_statistics_missing_from_the_service(service: FakeService) -> None:
    with TestClient(create_app(WithoutStatistics(service))) as client:  # type: ignore[arg-type]
        # Answered as a Triton built without statistics answers.
        assert_error(client.get("/v2/models/stats"), 503, "the server does not support model statistics")
        assert_error(client.get("/v2/models/echo/stats"), 503, "the server does not support model statistics")


def test_shared_memory_without_regions(client: TestClient) -> None:
    for kind in ("system", "cuda"):
        response = client.get(f"/v2/{kind}sharedmemory/status")
        assert (response.status_code, response.json(), response.headers["content-type"]) == (200, [], JSON)
        for path in (f"/v2/{kind}sharedmemory/unregister", f"/v2/{kind}sharedmemory/region/r/unregister"):
            response = client.post(path)
            assert (response.status_code, response.content) == (200, b"")


def test_plugins(client: TestClient) -> None:
    assert client.get("/conch/plugins").json() == {"plugins": [{"name": "identity", "kind": "backend"}]}


# -- model repository -------------------------------------------------------------------------


def test_repository_index(client: TestClient, service: FakeService) -> None:
    assert client.post("/v2/repository/index").json()[0] == {"name": "echo", "version": "1", "state": "READY"}
    client.post("/v2/repository/index", json={"ready": True})
    client.post("/v2/repository/myrepo/index", json={})
    assert service.calls == [("index", False), ("index", True), ("index", False)]
    assert_error(
        client.post("/v2/repository/index", json={"ready": "yes"}), 500, "attempt to access JSON non-boolean as boolean"
    )
    assert_error(
        client.post("/v2/repository/index", content=b"{"),
        500,
        "failed to parse the request JSON buffer: Missing a name for object member. at 1",
    )


def test_repository_load_and_unload(client: TestClient, service: FakeService) -> None:
    response = client.post("/v2/repository/models/echo/load")
    assert (response.status_code, response.content) == (200, b"")
    files = {"config": '{"max_batch_size": 2}', "file:1/model.py": "aGVsbG8="}
    assert client.post("/v2/repository/models/echo/load", json={"parameters": files}).status_code == 200
    assert client.post("/v2/repository/models/echo/unload").status_code == 200
    body = {"parameters": {"unload_dependents": True}}
    assert client.post("/v2/repository/models/echo/unload", json=body).status_code == 200
    # Triton unloads even when it cannot read the body.
    assert client.post("/v2/repository/models/echo/unload", content=b"nonsense").status_code == 200
    assert service.calls == [
        ("load", "echo", {}),
        ("load", "echo", {"config": '{"max_batch_size": 2}', "file:1/model.py": b"hello"}),
        ("unload", "echo", False),
        ("unload", "echo", True),
        ("unload", "echo", False),
    ]


def test_repository_errors(client: TestClient) -> None:
    assert_error(
        client.post("/v2/repository/models/broken/load"), 400, "failed to load 'broken', no version is available"
    )
    assert_error(
        client.post("/v2/repository/myrepo/models/echo/load"), 501, "'repository_name' specification is not supported"
    )
    assert_error(
        client.post("/v2/repository/models/echo/load", json={"parameters": {"other": "x"}}),
        500,
        "unexpected error on creating Triton parameter",
    )


# -- inference: JSON ----------------------------------------------------------------------------


def test_infer_json_flat(client: TestClient) -> None:
    response = client.post("/v2/models/echo/infer", json=infer_json("INPUT0", "FP32", [1, 3], [1, 2.5, 3]))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == {
        "model_name": "echo",
        "model_version": "1",
        "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.5, 3.0]}],
    }


def test_infer_json_nested_with_id_and_version(client: TestClient, service: FakeService) -> None:
    document = infer_json("INPUT0", "INT32", [2, 3], [[1, 2, 3], [4, 5, 6]], id="req-1")
    response = client.post("/v2/models/echo_matrix/versions/1/infer", json=document)
    assert response.json()["id"] == "req-1"
    assert response.json()["outputs"][0]["data"] == [1, 2, 3, 4, 5, 6]
    assert service.requests[0].model_version == 1


def test_infer_json_bool(client: TestClient) -> None:
    response = client.post("/v2/models/echo_bool/infer", json=infer_json("INPUT0", "BOOL", [3], [True, False, True]))
    assert response.json()["outputs"][0]["data"] == [True, False, True]


def test_infer_json_bytes_with_empty_element(client: TestClient) -> None:
    response = client.post("/v2/models/echo_bytes/infer", json=infer_json("INPUT0", "BYTES", [3], ["a", "", "héllo"]))
    assert response.json()["outputs"][0] == {
        "name": "OUTPUT0",
        "datatype": "BYTES",
        "shape": [3],
        "data": ["a", "", "héllo"],
    }


def test_infer_json_shape_mismatch(client: TestClient) -> None:
    response = client.post("/v2/models/echo/infer", json=infer_json("INPUT0", "FP32", [1, 3], [1, 2]))
    assert_error(response, 500, "Unable to parse 'data': Shape does not match true shape of 'data' field")
    response = client.post("/v2/models/echo_bytes/infer", json=infer_json("INPUT0", "BYTES", [3], ["a", "b"]))
    assert_error(
        response,
        400,
        "[request id: <id_unknown>] expected 3 string elements for inference input 'INPUT0' for model 'echo_bytes', got 2",
    )


def test_infer_json_fp16_rejected(client: TestClient) -> None:
    response = client.post("/v2/models/echo_fp16/infer", json=infer_json("INPUT0", "FP16", [2], [1.0, 2.0]))
    assert_error(
        response,
        400,
        "receiving FP16 data via JSON is not supported. Please use the binary data format for input INPUT0",
    )


def test_infer_fp16_output_in_json_rejected(client: TestClient) -> None:
    half = np.array([1, 2], dtype=np.float16)
    document = {
        "inputs": [{"name": "INPUT0", "datatype": "FP16", "shape": [2], "parameters": {"binary_data_size": 4}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}],
    }
    content, headers = binary_body(document, half.tobytes())
    assert_error(
        client.post("/v2/models/echo_fp16/infer", content=content, headers=headers),
        400,
        "sending FP16 data via JSON is not supported. Please use the binary data format for output",
        TEXT,  # an error of the response, as in Triton
    )


def test_infer_validation_errors_come_through(client: TestClient) -> None:
    response = client.post("/v2/models/echo/infer", json=infer_json("INPUT0", "INT32", [1, 1], [1]))
    assert_error(
        response,
        400,
        "[request id: <id_unknown>] inference input 'INPUT0' data-type is 'INT32', but model 'echo' expects 'FP32'",
    )


def test_infer_triton_parameters_rejected(client: TestClient) -> None:
    document = infer_json("INPUT0", "FP32", [1, 1], [1], parameters={"triton_x": 1})
    assert_error(
        client.post("/v2/models/echo/infer", json=document),
        400,
        "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified.",
    )


def test_infer_parameters_reach_the_request(client: TestClient, service: FakeService) -> None:
    params = {"sequence_id": "s1", "sequence_start": True, "sequence_end": False, "priority": 1, "timeout": 100, "k": 2}
    client.post("/v2/models/echo/infer", json=infer_json("INPUT0", "FP32", [1, 1], [1], parameters=params))
    assert service.requests[0].parameters == params


def test_infer_unknown_model_and_decoupled(client: TestClient) -> None:
    document = infer_json("INPUT0", "FP32", [1], [1])
    assert_error(
        client.post("/v2/models/nope/infer", json=document), 404, "Request for unknown model: 'nope' is not found", TEXT
    )
    assert_error(
        client.post("/v2/models/echo/versions/7/infer", json=document),
        404,
        "Request for unknown model: 'echo' version 7 is not found",
        TEXT,
    )
    assert_error(
        client.post("/v2/models/decoupled/infer", json=document),
        501,
        "HTTP end point doesn't support models with decoupled transaction policy",
        TEXT,
    )


def test_infer_invalid_json(client: TestClient) -> None:
    assert_error(
        client.post("/v2/models/echo/infer", content=b'{"inputs": [}'),
        500,
        "failed to parse the request JSON buffer: Invalid value. at 12",
    )


def test_errors_of_execution_and_of_submission(client: TestClient, service: FakeService) -> None:
    document = infer_json("INPUT0", "FP32", [1, 1], [1])
    service.fail_with = ConchError(
        "Failed to process the request(s) for model 'echo', message: boom", ErrorCode.INTERNAL
    )
    assert_error(
        client.post("/v2/models/echo/infer", json=document),
        500,
        "Failed to process the request(s) for model 'echo', message: boom",
        TEXT,
    )
    service.fail_with = ConchError("Exceeds maximum queue size", ErrorCode.UNAVAILABLE)
    assert_error(client.post("/v2/models/echo/infer", json=document), 503, "Exceeds maximum queue size")


def test_unexpected_exception_is_a_500_and_the_server_lives_on(client: TestClient, service: FakeService) -> None:
    def explode(request: InferenceRequest, model: Any = None) -> None:
        raise RuntimeError("scheduler exploded")

    service.submit = explode  # type: ignore[assignment,method-assign]
    assert_error(
        client.post("/v2/models/echo/infer", json=infer_json("INPUT0", "FP32", [1], [1])), 500, "scheduler exploded"
    )
    assert client.get("/v2/health/live").status_code == 200


# -- inference: binary ------------------------------------------------------------------------


def test_infer_binary_in_and_out(client: TestClient) -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    document = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }
    content, headers = binary_body(document, data.tobytes())
    response = client.post("/v2/models/echo/infer", content=content, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    header, blob = split_binary(response)
    assert header["outputs"] == [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}}
    ]
    assert blob == data.tobytes()


def test_header_name_is_case_insensitive(client: TestClient) -> None:
    data = np.arange(2, dtype=np.float32)
    document = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]
    }
    content, headers = binary_body(document, data.tobytes())
    headers = {"inference-header-content-length": headers["Inference-Header-Content-Length"]}
    response = client.post("/v2/models/echo/infer", content=content, headers=headers)
    assert response.json()["outputs"][0]["data"] == [0.0, 1.0]  # no binary_data_output: JSON


def test_infer_binary_bytes_with_empty_and_non_utf8(client: TestClient) -> None:
    items = [b"", b"\xff\xfe\x00", "héllo".encode()]
    raw = serialize(items)
    document = {
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(raw)}}],
    }
    content, headers = binary_body(document, raw)
    response = client.post("/v2/models/echo_bytes/infer", content=content, headers=headers)
    header, blob = split_binary(response)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": len(raw)}
    assert blob == raw
    # The same output as JSON: Triton writes the bytes raw, so the body is not UTF-8.
    document["parameters"] = {"binary_data_output": False}
    content, headers = binary_body(document, raw)
    response = client.post("/v2/models/echo_bytes/infer", content=content, headers=headers)
    assert b'"data":["","\xff\xfe\\u0000","h\xc3\xa9llo"]' in response.content


@pytest.mark.parametrize(
    ("model", "datatype", "array"),
    [
        ("echo_fp16", "FP16", np.array([1.5, -2.25, 65504], dtype=np.float16)),
        ("echo_bf16", "BF16", np.array([0x3F80, 0xC000, 0x7F80], dtype=np.uint16)),
        ("echo_bool", "BOOL", np.array([True, False, True])),
        ("echo_int64", "INT64", np.array([-(2**62), 0, 2**62], dtype=np.int64)),
        ("echo_uint8", "UINT8", np.array([0, 7, 255], dtype=np.uint8)),
    ],
)
def test_infer_binary_datatypes(client: TestClient, model: str, datatype: str, array: np.ndarray) -> None:
    document = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {"name": "INPUT0", "datatype": datatype, "shape": [3], "parameters": {"binary_data_size": array.nbytes}}
        ],
    }
    content, headers = binary_body(document, array.tobytes())
    response = client.post(f"/v2/models/{model}/infer", content=content, headers=headers)
    assert response.status_code == 200, response.content
    header, blob = split_binary(response)
    assert header["outputs"][0]["datatype"] == datatype
    assert blob == array.tobytes()


def test_infer_binary_byte_size_mismatch(client: TestClient) -> None:
    document = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 8}}]
    }
    content, headers = binary_body(document, b"\0" * 8)
    assert_error(
        client.post("/v2/models/echo/infer", content=content, headers=headers),
        400,
        "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model 'echo'. Expected 12, got 8",
    )


def test_infer_header_length_out_of_range(client: TestClient) -> None:
    document = infer_json("INPUT0", "FP32", [1, 1], [1])
    content = json.dumps(document).encode()
    headers = {"Inference-Header-Content-Length": str(len(content) + 1)}
    assert_error(
        client.post("/v2/models/echo/infer", content=content, headers=headers),
        400,
        f"inference header size should be in range (0, {len(content)}), got: {len(content) + 1}",
        TEXT,
    )


def test_raw_binary_request(client: TestClient) -> None:
    data = np.arange(8, dtype=np.float32)
    response = client.post(
        "/v2/models/echo/infer", content=data.tobytes(), headers={"Inference-Header-Content-Length": "0"}
    )
    header, blob = split_binary(response)
    assert header["outputs"][0]["shape"] == [1, 8]
    assert blob == data.tobytes()
    response = client.post(
        "/v2/models/echo_one_string/infer", content=b"427", headers={"Inference-Header-Content-Length": "0"}
    )
    header, blob = split_binary(response)
    assert blob[4:] == b"427"


def test_raw_binary_request_errors(client: TestClient) -> None:
    headers = {"Inference-Header-Content-Length": "0"}
    assert_error(
        client.post("/v2/models/echo_bytes/infer", content=b"427", headers=headers),
        400,
        "[request id: <id_unknown>] For BYTE datatype raw input 'INPUT0', the model must have input shape [1]",
    )
    assert_error(
        client.post("/v2/models/two/infer", content=b"\0" * 8, headers=headers),
        400,
        "[request id: <id_unknown>] Raw request must only have 1 input (found 1) to be deduced but got 2 inputs in "
        "'two' model configuration",
    )


def test_classification_output(client: TestClient) -> None:
    document = infer_json(
        "INPUT0",
        "FP32",
        [2, 3],
        [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]],
        outputs=[{"name": "OUTPUT0", "parameters": {"classification": 2}}],
    )
    output = client.post("/v2/models/classes/infer", json=document).json()["outputs"][0]
    assert (output["datatype"], output["shape"]) == ("BYTES", [2, 2])
    assert output["data"] == ["0.700000:1:b", "0.200000:2:c", "0.600000:0:a", "0.300000:1:b"]


# -- compression, limits, chunking ----------------------------------------------------------------


@pytest.mark.parametrize(("encoding", "pack"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_request(client: TestClient, encoding: str, pack: Any) -> None:
    data = np.arange(4, dtype=np.float32)
    document = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]
    }
    content, headers = binary_body(document, data.tobytes())
    headers["Content-Encoding"] = encoding
    response = client.post("/v2/models/echo/infer", content=pack(content), headers=headers)
    assert response.json()["outputs"][0]["data"] == [0.0, 1.0, 2.0, 3.0]


def test_unsupported_request_encoding(client: TestClient) -> None:
    response = client.post(
        "/v2/models/echo/infer", json=infer_json("INPUT0", "FP32", [1], [1]), headers={"Content-Encoding": "br"}
    )
    assert_error(response, 501, "Unsupported compression type", TEXT)
    assert response.headers["accept-encoding"] == "gzip, deflate"


@pytest.mark.parametrize("accept", ["gzip", "deflate"])
def test_compressed_response(client: TestClient, accept: str) -> None:
    data = np.zeros(1000, dtype=np.float32)
    document = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 1000], "parameters": {"binary_data_size": 4000}}
        ],
    }
    content, headers = binary_body(document, data.tobytes())
    headers["Accept-Encoding"] = accept
    response = client.post("/v2/models/echo/infer", content=content, headers=headers)
    assert response.headers["content-encoding"] == accept
    assert response.num_bytes_downloaded < 1000  # the client decompressed it for us
    header, blob = split_binary(response)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 4000}
    assert blob == data.tobytes()


def test_errors_are_not_compressed(client: TestClient) -> None:
    response = client.post("/v2/models/nope/infer", json={}, headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in response.headers
    assert response.status_code == 404


class Receiver:
    """An ASGI ``receive`` that hands out the body in given chunks and counts what was taken."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.taken = 0

    async def __call__(self) -> dict[str, Any]:
        if not self.chunks:
            await asyncio.sleep(3600)
        chunk = self.chunks.pop(0)
        self.taken += 1
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}


def call_app(
    service: FakeService, path: str, chunks: list[bytes], headers: dict[str, str], max_input_size: int = 1 << 26
) -> tuple[int, dict[str, str], bytes, Receiver]:
    app = create_app(service, max_input_size=max_input_size)  # type: ignore[arg-type]
    receiver = Receiver(chunks)
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(app(scope, receiver, send))  # type: ignore[arg-type]
    start = messages[0]
    out_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], out_headers, b"".join(m.get("body", b"") for m in messages[1:]), receiver


def test_body_in_many_chunks(service: FakeService) -> None:
    data = np.arange(1000, dtype=np.float32)
    document = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1000], "parameters": {"binary_data_size": 4000}}]
    }
    content, headers = binary_body(document, data.tobytes())
    chunks = [content[i : i + 333] for i in range(0, len(content), 333)]
    for declared in (True, False):  # with Content-Length, and chunked (none)
        request_headers = dict(headers, **({"Content-Length": str(len(content))} if declared else {}))
        status, _, body, _ = call_app(service, "/v2/models/echo/infer", chunks, request_headers)
        assert status == 200, body
        assert json.loads(body)["outputs"][0]["data"] == data.tolist()


def test_body_limit_by_content_length_reads_nothing(service: FakeService) -> None:
    status, headers, body, receiver = call_app(
        service, "/v2/models/echo/infer", [b"x" * 100] * 20, {"Content-Length": "2000"}, max_input_size=1000
    )
    assert status == 400 and receiver.taken == 0
    assert headers["connection"] == "close"
    assert json.loads(body) == {
        "error": "request size of 2000 bytes exceeds the maximum allowed input size of 1000 bytes. "
        "Use --http-max-input-size to increase the limit."
    }


def test_body_limit_when_streamed_stops_reading(service: FakeService) -> None:
    status, _, body, receiver = call_app(service, "/v2/models/echo/infer", [b"x" * 100] * 20, {}, max_input_size=1000)
    assert status == 400 and receiver.taken == 11
    assert "exceeds the maximum allowed input size of 1000 bytes" in json.loads(body)["error"]


def test_body_limit_applies_after_decompression(service: FakeService) -> None:
    document = infer_json("INPUT0", "FP32", [1, 1000], [0.0] * 1000)
    packed = gzip.compress(json.dumps(document).encode())
    status, _, body, _ = call_app(
        service, "/v2/models/echo/infer", [packed], {"Content-Encoding": "gzip"}, max_input_size=2000
    )
    assert status == 400
    assert json.loads(body)["error"].startswith(
        "Decompressed data size exceeds the maximum allowed value of 2000 bytes"
    )


def test_client_hanging_up_cancels_the_request(service: FakeService) -> None:
    service.hold = True
    app = create_app(service)  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": IDENT_JSON, "more_body": False}, {"type": "http.disconnect"}]

    async def receive() -> dict[str, Any]:
        if len(messages) == 1:
            await asyncio.sleep(0.05)  # the client hangs up while the request waits
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "raw_path": b"/v2/models/ident_fp32/infer", "headers": []}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 5))  # type: ignore[arg-type]
    assert sent == []
    assert service.requests[0].stream is not None and service.requests[0].stream.cancelled


# -- captures from real Triton 2.51 (docs/dev/triton-observed.md), byte for byte ---------------

IDENT_JSON = b'{"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}'
IDENT_RESPONSE = (
    b'{"model_name":"ident_fp32","model_version":"1","outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[1,4],'
    b'"data":[1.0,2.0,3.0,4.0]}]}'
)
IDENT_BINARY = (
    b'{"model_name":"ident_fp32","model_version":"1","outputs":[{"name":"OUTPUT0","datatype":"FP32","shape":[1,4],'
    b'"parameters":{"binary_data_size":16}}]}\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@'
)
IDENT_GZIP = (
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xabV\xca\xcdOI\xcd\x89\xcfK\xccMU\xb2R\xcaLI\xcd+\x89O+06R"
    b"\xd2\x81\xca\x94\xa5\x16\x15g\xe6\xe7\x01%\r\x81b\xf9\xa5%\x05\xa5%\xc5JV\xd1\xd5JP=\xfe\xa1!\x01\xa1!"
    b'\x06@\xc9\x94\xc4\x92\xc4\x92\xca\x02\x90\xa0[\x00\xd8\x88\xe2\x8cD\x107\xdaP\xc7$\x16"\x0f\xe2\xe8'
    b"\x19\xe8\x18\x01\xb11\x10\x9b\xe8\x19\xc4\xd6\xc6\xd6\x02\x00\x90\xd3\x06\x82\x87\x00\x00\x00"
)


@pytest.mark.parametrize(
    ("body", "headers", "status", "content_type", "expected"),
    [
        (IDENT_JSON, {}, 200, JSON, IDENT_RESPONSE),
        (
            IDENT_JSON.replace(b"{", b'{"id": "my-req-42", ', 1),
            {},
            200,
            JSON,
            b'{"id":"my-req-42",' + IDENT_RESPONSE[1:],
        ),
        (IDENT_JSON.replace(b"{", b'{"id": "", ', 1), {}, 200, JSON, IDENT_RESPONSE),
        (
            IDENT_JSON.replace(b"{", b'{"parameters": {"binary_data_output": true}, ', 1),
            {},
            200,
            OCTET_STREAM,
            IDENT_BINARY,
        ),
        (
            np.array([1, 2, 3, 4], np.float32).tobytes(),
            {"Inference-Header-Content-Length": "0"},
            200,
            OCTET_STREAM,
            IDENT_BINARY,
        ),
        (IDENT_JSON, {"Accept-Encoding": "gzip, deflate"}, 200, JSON, IDENT_GZIP),
        (IDENT_JSON, {"Accept-Encoding": "gzip;q=0, identity"}, 200, JSON, IDENT_RESPONSE),
        (IDENT_JSON, {"Accept-Encoding": "*"}, 200, JSON, IDENT_RESPONSE),
        (
            b"",
            {},
            400,
            JSON,
            b'{"error":"[request id: <id_unknown>] input byte size mismatch for input \'raw_input\' for model '
            b"'ident_fp32'. Expected 16, got 0\"}",
        ),
        (
            IDENT_JSON,
            {"Inference-Header-Content-Length": "abc"},
            400,
            JSON,
            b'{"error":"[request id: <id_unknown>] input byte size mismatch for input \'raw_input\' for model '
            b"'ident_fp32'. Expected 16, got 99\"}",
        ),
        (
            IDENT_JSON,
            {"Content-Encoding": "gzip"},  # not actually gzip: inflates to nothing, a raw request
            400,
            JSON,
            b'{"error":"[request id: <id_unknown>] input byte size mismatch for input \'raw_input\' for model '
            b"'ident_fp32'. Expected 16, got 0\"}",
        ),
        (
            np.array([1, 2, 3, 4], np.float32).tobytes(),
            {},
            500,
            JSON,
            b'{"error":"failed to parse the request JSON buffer: The document is empty. at 0"}',
        ),
        (
            IDENT_JSON,
            {"Inference-Header-Content-Length": "10"},
            500,
            JSON,
            b'{"error":"failed to parse the request JSON buffer: Invalid value. at 10"}',
        ),
        (
            IDENT_JSON.replace(b"}]}", b'}], "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 2}}]}'),
            {},
            200,
            JSON,
            b'{"model_name":"ident_fp32","model_version":"1","outputs":[{"name":"OUTPUT0","datatype":"BYTES","shape":[1,2],'
            b'"data":["4.000000:3","3.000000:2"]}]}',
        ),
        (
            b'{"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}'
            + b"\0" * 16,
            {"Inference-Header-Content-Length": "109"},
            400,
            JSON,
            b'{"error":"unexpected additional input data for model \'ident_fp32\'"}',
        ),
        (
            IDENT_JSON,
            {"Inference-Header-Content-Length": "199"},
            400,
            TEXT,
            b'{"error":"inference header size should be in range (0, 99), got: 199"}',
        ),
    ],
)
def test_as_triton_answered(
    service: FakeService, body: bytes, headers: dict[str, str], status: int, content_type: str, expected: bytes
) -> None:
    headers = dict(headers, **{"Content-Length": str(len(body))})
    got_status, got_headers, got_body, _ = call_app(service, "/v2/models/ident_fp32/infer", [body], headers)
    assert (got_status, got_headers["content-type"], got_body) == (status, content_type, expected)
    assert got_headers["content-length"] == str(len(expected))
    if content_type == OCTET_STREAM:
        assert got_headers["inference-header-content-length"] == "147"
    if expected == IDENT_GZIP:
        assert got_headers["content-encoding"] == "gzip"


# -- over a real socket: chunked transfer encoding and tritonclient ------------------------------


@pytest.fixture
def server(service: FakeService) -> Iterator[tuple[str, int]]:
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(service), log_config=None, access_log=False, lifespan="off")  # type: ignore[arg-type]
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert uv.started
    try:
        yield sock.getsockname()
    finally:
        uv.should_exit = True
        thread.join(10)
        sock.close()


def test_chunked_request_over_a_socket(server: tuple[str, int]) -> None:
    data = np.arange(8, dtype=np.float32).tobytes()
    connection = http.client.HTTPConnection(*server, timeout=10)
    with contextlib.closing(connection):
        connection.putrequest("POST", "/v2/models/echo/infer")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.putheader("Inference-Header-Content-Length", "0")
        connection.endheaders()
        for piece in (data[:5], data[5:20], data[20:]):
            connection.send(b"%X\r\n%s\r\n" % (len(piece), piece))
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body
        length = int(response.getheader("Inference-Header-Content-Length"))
        assert body[length:] == data
        # Keep-alive: the same connection serves the next request.
        connection.request("GET", "/v2/health/live")
        assert connection.getresponse().status == 200


def test_body_limit_closes_the_connection(server: tuple[str, int], service: FakeService) -> None:
    connection = http.client.HTTPConnection(*server, timeout=10)
    with contextlib.closing(connection):
        connection.putrequest("POST", "/v2/models/echo/infer")
        connection.putheader("Content-Length", str((1 << 26) + 1))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 400
        assert response.getheader("Connection") == "close"
        assert "exceeds the maximum allowed input size" in json.loads(response.read())["error"]


def test_tritonclient(server: tuple[str, int]) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(f"{server[0]}:{server[1]}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("echo") and not client.is_model_ready("loading")
        assert client.get_model_metadata("echo")["name"] == "echo"
        assert client.get_model_config("echo")["max_batch_size"] == 8
        data = np.arange(12, dtype=np.float32).reshape(3, 4)
        for binary in (True, False):
            for compression in (None, "gzip", "deflate"):
                inputs = [httpclient.InferInput("INPUT0", [3, 4], "FP32")]
                inputs[0].set_data_from_numpy(data, binary_data=binary)
                outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
                result = client.infer(
                    "echo",
                    inputs,
                    outputs=outputs,
                    request_id="r7",
                    request_compression_algorithm=compression,
                    response_compression_algorithm=compression,
                )
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
                assert result.get_response()["id"] == "r7"
        strings = np.array([b"", b"\xff\x00", b"abc"], dtype=object)
        inputs = [httpclient.InferInput("INPUT0", [3], "BYTES")]
        inputs[0].set_data_from_numpy(strings)
        result = client.infer("echo_bytes", inputs)  # no outputs named: binary_data_output
        assert result.as_numpy("OUTPUT0").tolist() == strings.tolist()
        half = np.array([1.5, 2.5], dtype=np.float16)
        inputs = [httpclient.InferInput("INPUT0", [2], "FP16")]
        inputs[0].set_data_from_numpy(half)
        np.testing.assert_array_equal(client.infer("echo_fp16", inputs).as_numpy("OUTPUT0"), half)
        with pytest.raises(InferenceServerException) as info:
            client.infer(
                "decoupled",
                [httpclient.InferInput("INPUT0", [1], "FP32").set_data_from_numpy(half[:1].astype(np.float32))],
            )
        assert info.value.status() == "501"
        assert "decoupled transaction policy" in info.value.message()
        assert [m["name"] for m in client.get_model_repository_index()][:1] == ["echo"]
        client.load_model("echo")
        client.unload_model("echo", unload_dependents=True)
    finally:
        client.close()
