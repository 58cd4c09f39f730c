"""The gRPC frontend against Triton's own clients (tritonclient.grpc, sync and aio) and raw stubs.

A real server (Conch's HTTP/2 transport, and grpcio's asyncio server) runs on a loopback port, in a thread with its own event loop, in front of a
small fake service with echo, decoupled, failing and slow models.
"""

from __future__ import annotations

import asyncio
import errno
import queue
import socket
import threading
import time
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tca
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from conch import tensors
from conch._proto import grpc_service_pb2 as pb
from conch._proto import grpc_service_pb2_grpc as pb_grpc
from conch._proto import model_config_pb2 as mc
from conch.errors import ConchError, ErrorCode
from conch.frontends.grpc import GRPCBindError, start_grpc_server
from conch.inference import InferenceRequest, InferenceResponse, ResponseStream, Tensor
from conch.shared_memory import SharedMemoryRegistry
from conch.tracing import TraceManager
from conch.validation import Signature, validate

ALL_DATATYPES = [row.name for row in tensors.BY_NAME.values()]
POLLING_ERROR = "explicit model load / unload is not allowed if polling is enabled"


# -- the fake service ---------------------------------------------------------------------------


def _config(
    name: str,
    inputs: list[tuple[str, str, list[int], bool]],
    outputs: list[tuple[str, str, list[int]]],
    *,
    max_batch_size: int = 0,
    decoupled: bool = False,
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, max_batch_size=max_batch_size, backend="fake")
    for in_name, datatype, dims, optional in inputs:
        config.input.add(name=in_name, data_type=tensors.BY_NAME[datatype].config_number, dims=dims, optional=optional)
    for out_name, datatype, dims in outputs:
        config.output.add(name=out_name, data_type=tensors.BY_NAME[datatype].config_number, dims=dims)
    if decoupled:
        config.model_transaction_policy.decoupled = True
    return config


class FakeModel:
    def __init__(self, config: mc.ModelConfig, run: Any) -> None:
        self.name = config.name
        self.version = 1
        self.config = config
        self.decoupled = config.model_transaction_policy.decoupled
        self.signature = Signature.from_config(config)
        self.run = run

    def metadata(self) -> dict[str, Any]:
        batch = [-1] if self.config.max_batch_size > 0 else []
        return {
            "name": self.name,
            "versions": [str(self.version)],
            "platform": "fake",
            "inputs": [
                {"name": t.name, "datatype": tensors.config_to_protocol(t.data_type), "shape": batch + list(t.dims)}
                for t in self.config.input
            ],
            "outputs": [
                {"name": t.name, "datatype": tensors.config_to_protocol(t.data_type), "shape": batch + list(t.dims)}
                for t in self.config.output
            ],
        }


async def _echo(service: FakeService, request: InferenceRequest) -> None:
    wanted = request.requested_output_names()
    outputs = []
    for name, tensor in request.inputs.items():
        out = name.replace("INPUT", "OUTPUT")
        if out in wanted:
            outputs.append(Tensor(out, tensor.datatype, request.input_array(name)))
    delay = request.parameters.get("delay_ms", 0)
    if delay:
        await asyncio.sleep(delay / 1000)
    params = {k: v for k, v in request.parameters.items() if k.startswith("my_")}
    request.respond(InferenceResponse(outputs=outputs, parameters=params))


async def _repeat(service: FakeService, request: InferenceRequest) -> None:
    """Decoupled: one response per element of IN, then a final flag without a response."""
    delay = request.parameters.get("delay_ms", 5)
    for value in request.input_array("IN").reshape(-1):
        await asyncio.sleep(delay / 1000)
        request.respond(InferenceResponse(outputs=[Tensor("OUT", "INT32", np.array([value], np.int32))], final=False))
    request.respond(InferenceResponse(final=True))


async def _fail(service: FakeService, request: InferenceRequest) -> None:
    request.fail("boom: the model failed", ErrorCode.INTERNAL)


async def _sleep(service: FakeService, request: InferenceRequest) -> None:
    assert request.stream is not None
    service.sleeping.append(request.stream)
    for _ in range(200):  # until the frontend marks the request cancelled
        if request.stream.cancelled:
            return
        await asyncio.sleep(0.01)
    request.respond(InferenceResponse(outputs=[]))


class FakeService:
    """The InferenceService API with a handful of in-memory models."""

    def __init__(self) -> None:
        self.ready = True
        self.loads: list[tuple[str, dict[str, Any]]] = []
        self.unloads: list[tuple[str, bool]] = []
        self.sleeping: list[ResponseStream] = []
        self.shared_memory = SharedMemoryRegistry()
        self.tracer = TraceManager()
        self._tasks: set[asyncio.Task[None]] = set()
        models = [
            FakeModel(
                _config(f"echo_{dt.lower()}", [("INPUT0", dt, [-1, -1], False)], [("OUTPUT0", dt, [-1, -1])]), _echo
            )
            for dt in ALL_DATATYPES
        ]
        models.append(
            FakeModel(
                _config(
                    "multi",
                    [("INPUT0", "BYTES", [-1], False), ("INPUT1", "FP16", [2], False), ("INPUT2", "BOOL", [1], True)],
                    [("OUTPUT0", "BYTES", [-1]), ("OUTPUT1", "FP16", [2]), ("OUTPUT2", "BOOL", [1])],
                    max_batch_size=4,
                ),
                _echo,
            )
        )
        models.append(
            FakeModel(
                _config("repeat", [("IN", "INT32", [-1], False)], [("OUT", "INT32", [1])], decoupled=True), _repeat
            )
        )
        models.append(FakeModel(_config("fail", [("INPUT0", "FP32", [-1], False)], [("OUTPUT0", "FP32", [-1])]), _fail))
        models.append(
            FakeModel(_config("sleep", [("INPUT0", "FP32", [-1], False)], [("OUTPUT0", "FP32", [-1])]), _sleep)
        )
        self.models = {model.name: model for model in models}

    def is_live(self) -> bool:
        return True

    def is_ready(self) -> bool:
        return self.ready

    def metadata(self) -> dict[str, Any]:
        return {
            "name": "conch",
            "version": "0.1.0",
            "extensions": ["model_configuration", "binary_tensor_data", "parameters"],
        }

    def model(self, name: str, version: int = -1) -> FakeModel:
        model = self.models.get(name)
        if model is None:
            raise ConchError(f"Request for unknown model: '{name}' is not found", ErrorCode.NOT_FOUND)
        if version not in (-1, model.version):
            raise ConchError(f"Request for unknown model: '{name}' version {version} is not found", ErrorCode.NOT_FOUND)
        return model

    def model_ready(self, name: str, version: int = -1) -> bool:
        try:
            self.model(name, version)
        except ConchError:
            return False
        return True

    def model_metadata(self, name: str, version: int = -1) -> dict[str, Any]:
        return self.model(name, version).metadata()

    def model_config(self, name: str, version: int = -1) -> mc.ModelConfig:
        return self.model(name, version).config

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        index = [{"name": name, "version": "1", "state": "READY", "reason": ""} for name in sorted(self.models)]
        if not ready_only:
            index.append({"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": "it broke"})
        return index

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        self.loads.append((name, dict(parameters or {})))
        if name != "loadable":
            raise ConchError(POLLING_ERROR, ErrorCode.UNAVAILABLE)

    async def unload_model(self, name: str, unload_dependents: bool = False) -> None:
        self.unloads.append((name, unload_dependents))
        raise ConchError(POLLING_ERROR, ErrorCode.UNAVAILABLE)

    def submit(self, request: InferenceRequest, model: Any = None) -> ResponseStream:
        model = self.model(request.model_name, request.model_version)
        validate(request, model.signature)
        request.version_label = str(model.version)
        stream = ResponseStream()
        request.stream = stream
        task = asyncio.get_running_loop().create_task(model.run(self, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return stream

    async def infer(self, request: InferenceRequest, model: Any = None) -> InferenceResponse:
        stream = self.submit(request)
        response = await stream.next()
        if response.error is not None:
            raise response.error
        return response


# -- the server, on a thread of its own --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    def __init__(self, service: FakeService, transport: str = "conch") -> None:
        self.service = service
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = free_port()
        future = asyncio.run_coroutine_threadsafe(
            # The fake service has no schedulers: the fast path is tested with real ones
            # (test_grpc_fast_infer.py, tests/test_grpc_fast_path.py); here the servicer answers.
            start_grpc_server(
                service, "127.0.0.1", self.port, health_poll_interval=0.05, transport=transport, fast_infer=False
            ),
            self.loop,
        )
        self.server = future.result(timeout=30)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


@pytest.fixture(scope="module", params=["conch", "grpcio"])
def server(request: pytest.FixtureRequest) -> Any:
    """The same tests on both transports: Conch's HTTP/2 one (the default) and grpcio's asyncio server."""
    running = ServerThread(FakeService(), request.param)
    yield running
    running.stop()


@pytest.fixture
def client(server: ServerThread) -> Any:
    with tc.InferenceServerClient(server.url) as triton:
        yield triton


@pytest.fixture
def stub(server: ServerThread) -> Any:
    options = [("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1)]
    with grpc.insecure_channel(server.url, options=options) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _error(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


def _rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


# -- health and metadata ------------------------------------------------------------------------


def test_live_ready_and_server_metadata(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "conch"
    assert metadata.version == "0.1.0"
    assert list(metadata.extensions) == ["model_configuration", "binary_tensor_data", "parameters"]


def test_model_ready(client: tc.InferenceServerClient) -> None:
    assert client.is_model_ready("echo_fp32")
    assert client.is_model_ready("echo_fp32", "1")
    assert client.is_model_ready("echo_fp32", "01")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("echo_fp32", "7")
    error = _error(client.is_model_ready, "echo_fp32", "abc")
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert error.message() == (
        "failed to get model version from specified version string 'abc' (details: stol), "
        "version should be an integral value > 0"
    )


def test_model_metadata_and_config(client: tc.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("multi")
    assert metadata.name == "multi"
    assert list(metadata.versions) == ["1"]
    assert metadata.platform == "fake"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("INPUT0", "BYTES", [-1, -1]),
        ("INPUT1", "FP16", [-1, 2]),
        ("INPUT2", "BOOL", [-1, 1]),
    ]
    config = client.get_model_config("repeat").config
    assert config.name == "repeat"
    assert config.model_transaction_policy.decoupled
    assert config.input[0].data_type == tensors.BY_NAME["INT32"].config_number
    as_json = client.get_model_config("multi", as_json=True)
    assert as_json["config"]["max_batch_size"] == 4


@pytest.mark.parametrize(
    ("version", "status", "message"),
    [
        ("", "StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found"),
        (
            "abc",
            "StatusCode.INVALID_ARGUMENT",
            "failed to get model version from specified version string 'abc' (details: stol), version should be an integral value > 0",
        ),
        (
            "-1",
            "StatusCode.INVALID_ARGUMENT",
            "invalid model version specified '-1' , version should be an integral value > 0",
        ),
    ],
)
def test_unknown_model_errors(client: tc.InferenceServerClient, version: str, status: str, message: str) -> None:
    for call in (client.get_model_metadata, client.get_model_config):
        error = _error(call, "nope", version)
        assert (error.status(), error.message()) == (status, message)
    data = tc.InferInput("INPUT0", [1, 1], "FP32")
    data.set_data_from_numpy(np.zeros((1, 1), np.float32))
    error = _error(client.infer, "nope", [data], model_version=version)
    assert (error.status(), error.message()) == (status, message)


def test_unknown_version(client: tc.InferenceServerClient) -> None:
    error = _error(client.get_model_metadata, "echo_fp32", "7")
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == "Request for unknown model: 'echo_fp32' version 7 is not found"
    assert client.get_model_metadata("echo_fp32", "01").name == "echo_fp32"


# -- inference ----------------------------------------------------------------------------------


def _sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"", b"\xff\xfe\x00non-utf8", b"plain"], [b"x" * 300, b"", b"\x00"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BF16":
        return np.array([[1.5, -2.25, 3.0], [0.0, 65280.0, -0.5]], dtype=ml_dtypes.bfloat16)
    dtype = tensors.BY_NAME[datatype].numpy
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    return np.array([[info.min, 0, 1], [2, info.max, 3]], dtype=dtype)


@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_infer_every_datatype(client: tc.InferenceServerClient, datatype: str) -> None:
    data = _sample(datatype)
    tensor = tc.InferInput("INPUT0", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    result = client.infer(f"echo_{datatype.lower()}", [tensor], request_id=f"id-{datatype}")
    out = result.as_numpy("OUTPUT0")
    assert out.dtype == data.dtype
    assert out.shape == data.shape
    np.testing.assert_array_equal(out, data)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (
        f"echo_{datatype.lower()}",
        "1",
        f"id-{datatype}",
    )
    output = response.outputs[0]
    assert (output.name, output.datatype, list(output.shape)) == ("OUTPUT0", datatype, [2, 3])
    assert not output.HasField("contents")
    assert len(response.raw_output_contents) == 1


def test_infer_several_outputs_in_order(client: tc.InferenceServerClient) -> None:
    inputs = [
        tc.InferInput("INPUT0", [1, 2], "BYTES"),
        tc.InferInput("INPUT1", [1, 2], "FP16"),
        tc.InferInput("INPUT2", [1, 1], "BOOL"),
    ]
    inputs[0].set_data_from_numpy(np.array([[b"ab", b"c"]], dtype=object))
    inputs[1].set_data_from_numpy(np.array([[1.5, 2.0]], np.float16))
    inputs[2].set_data_from_numpy(np.array([[True]]))
    result = client.infer("multi", inputs)
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1", "OUTPUT2"]
    assert list(response.raw_output_contents) == [b"\x02\x00\x00\x00ab\x01\x00\x00\x00c", b"\x00>\x00@", b"\x01"]
    selected = client.infer("multi", inputs, outputs=[tc.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in selected.get_response().outputs] == ["OUTPUT1"]


def test_infer_parameters(client: tc.InferenceServerClient) -> None:
    tensor = tc.InferInput("INPUT0", [1, 2], "INT32")
    tensor.set_data_from_numpy(np.array([[1, 2]], np.int32))
    result = client.infer(
        "echo_int32", [tensor], parameters={"my_str": "abc", "my_int": 7, "my_bool": True, "my_float": 1.5, "other": 1}
    )
    params = result.get_response().parameters
    assert params["my_str"].string_param == "abc"
    assert params["my_int"].int64_param == 7
    assert params["my_bool"].bool_param is True
    assert params["my_float"].double_param == 1.5
    assert "other" not in params
    assert "triton_final_response" not in params


def test_infer_errors(client: tc.InferenceServerClient) -> None:
    tensor = tc.InferInput("INPUT0", [1, 2], "INT32")
    tensor.set_data_from_numpy(np.array([[1, 2]], np.int32))
    error = _error(client.infer, "echo_fp32", [tensor])
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert (
        error.message()
        == "[request id: <id_unknown>] inference input 'INPUT0' data-type is 'INT32', but model 'echo_fp32' expects 'FP32'"
    )

    data = tc.InferInput("IN", [2], "INT32")
    data.set_data_from_numpy(np.array([1, 2], np.int32))
    error = _error(client.infer, "repeat", [data])
    assert error.status() == "StatusCode.UNIMPLEMENTED"
    assert error.message() == "ModelInfer RPC doesn't support models with decoupled transaction policy"

    data = tc.InferInput("INPUT0", [2], "FP32")
    data.set_data_from_numpy(np.array([1, 2], np.float32))
    error = _error(client.infer, "fail", [data])
    assert (error.status(), error.message()) == ("StatusCode.INTERNAL", "boom: the model failed")


def test_infer_50mb_round_trip(client: tc.InferenceServerClient) -> None:
    data = np.random.default_rng(0).random((50 * 1024 * 1024 // 4 // 1024, 1024), dtype=np.float32)
    tensor = tc.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("echo_fp32", [tensor])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


async def test_aio_client_infer(server: ServerThread) -> None:
    async with tca.InferenceServerClient(server.url) as triton:
        assert await triton.is_server_live()
        assert await triton.is_model_ready("echo_fp64")
        data = np.arange(6, dtype=np.float64).reshape(2, 3)
        tensor = tca.InferInput("INPUT0", [2, 3], "FP64")
        tensor.set_data_from_numpy(data)
        results = await asyncio.gather(*(triton.infer("echo_fp64", [tensor], request_id=str(i)) for i in range(20)))
        assert sorted(r.get_response().id for r in results) == sorted(str(i) for i in range(20))
        for result in results:
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


async def test_cancelled_unary_call_cancels_the_request(server: ServerThread) -> None:
    async with tca.InferenceServerClient(server.url) as triton:
        tensor = tca.InferInput("INPUT0", [1], "FP32")
        tensor.set_data_from_numpy(np.zeros(1, np.float32))
        with pytest.raises(InferenceServerException) as info:
            await triton.infer("sleep", [tensor], client_timeout=0.2)
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    for _ in range(100):
        if server.service.sleeping and server.service.sleeping[-1].cancelled:
            break
        await asyncio.sleep(0.02)
    assert server.service.sleeping[-1].cancelled


# -- typed contents, through a raw stub ---------------------------------------------------------


def _typed_request(model: str, datatype: str, shape: list[int], **contents: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents))
    return request


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [
        ("BOOL", "bool_contents", [True, False, True, True]),
        ("INT8", "int_contents", [-128, -1, 0, 127]),
        ("INT16", "int_contents", [-32768, -1, 0, 32767]),
        ("INT32", "int_contents", [-(2**31), -1, 0, 2**31 - 1]),
        ("INT64", "int64_contents", [-(2**63), -1, 0, 2**63 - 1]),
        ("UINT8", "uint_contents", [0, 1, 200, 255]),
        ("UINT16", "uint_contents", [0, 1, 40000, 65535]),
        ("UINT32", "uint_contents", [0, 1, 2**31, 2**32 - 1]),
        ("UINT64", "uint64_contents", [0, 1, 2**63, 2**64 - 1]),
        ("FP32", "fp32_contents", [0.5, -1.25, 3.0, 2.0**100]),
        ("FP64", "fp64_contents", [0.5, -1.25, 3.0, 1e300]),
        ("BYTES", "bytes_contents", [b"", b"\xff\x00", b"abc", b"x" * 70]),
    ],
)
def test_typed_contents(stub: Any, datatype: str, field: str, values: list[Any]) -> None:
    response = stub.ModelInfer(_typed_request(f"echo_{datatype.lower()}", datatype, [2, 2], **{field: values}))
    assert list(response.outputs[0].shape) == [2, 2]
    row = tensors.BY_NAME[datatype]
    raw = response.raw_output_contents[0]
    if datatype == "BYTES":
        got = list(tensors.deserialize_bytes(raw, 4, "OUTPUT0"))
    else:
        got = np.frombuffer(raw, dtype=row.numpy).tolist()
    assert got == values


def test_typed_int_contents_truncate_like_triton(stub: Any) -> None:
    response = stub.ModelInfer(_typed_request("echo_int8", "INT8", [1, 2], int_contents=[257, -129]))
    assert np.frombuffer(response.raw_output_contents[0], np.int8).tolist() == [1, 127]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            _typed_request("echo_fp32", "FP32", [1, 4], int_contents=[1, 2, 3, 4]),
            "unexpected explicit tensor data for input tensor 'INPUT0' for model 'echo_fp32' of type 'INT32', expected datatype 'FP32'",
        ),
        (
            _typed_request("echo_fp16", "FP16", [1, 2], fp32_contents=[1, 2]),
            "unexpected explicit tensor data for input tensor 'INPUT0' for model 'echo_fp16' of type 'FP32', expected datatype 'FP16'",
        ),
        (
            _typed_request("echo_bf16", "BF16", [1, 2], fp32_contents=[1, 2]),
            "unexpected explicit tensor data for input tensor 'INPUT0' for model 'echo_bf16' of type 'FP32', expected datatype 'BF16'",
        ),
        (
            _typed_request("echo_uint8", "UINT8", [1, 2], int_contents=[1, 2]),
            "unexpected explicit tensor data for input tensor 'INPUT0' for model 'echo_uint8' of type 'INT32', expected datatype 'UINT8'",
        ),
        (
            _typed_request("echo_int64", "INT64", [1, 2], int64_contents=[1, 2], fp32_contents=[1, 2]),
            "unexpected explicit tensor data for input tensor 'INPUT0' for model 'echo_int64', binary data was already supplied.",
        ),
        (
            _typed_request("echo_fp32", "FP32", [1, 4], fp32_contents=[1, 2, 3]),
            "[request id: <id_unknown>] input byte size mismatch for input 'INPUT0' for model 'echo_fp32'. Expected 16, got 12",
        ),
    ],
)
def test_typed_contents_errors(stub: Any, request_: pb.ModelInferRequest, message: str) -> None:
    error = _rpc_error(stub.ModelInfer, request_)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def _raw_request(model: str = "echo_fp32", count: int = 1, **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    for _ in range(count):
        request.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    return request


def test_raw_contents_rules(stub: Any) -> None:
    both = _raw_request()
    both.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])
    error = _rpc_error(stub.ModelInfer, both)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        error.details()
        == "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'echo_fp32'"
    )

    error = _rpc_error(stub.ModelInfer, _raw_request(count=0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "unable to find data for input tensor 'INPUT0' for model 'echo_fp32' in request."

    response = stub.ModelInfer(_raw_request(count=2))  # extra raw entries are ignored, as in Triton 2.51
    assert response.raw_output_contents[0] == np.arange(4, dtype=np.float32).tobytes()

    unknown = _raw_request()
    unknown.inputs[0].datatype = "FOO"
    error = _rpc_error(stub.ModelInfer, unknown)
    assert (
        error.details()
        == "[request id: <id_unknown>] inference input 'INPUT0' data-type is '<invalid>', but model 'echo_fp32' expects 'FP32'"
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "sequence_id",
            pb.InferParameter(bool_param=True),
            "invalid value type for 'sequence_id' parameter, expected int64_param or string_param.",
        ),
        (
            "sequence_start",
            pb.InferParameter(int64_param=1),
            "invalid value type for 'sequence_start' parameter, expected bool_param.",
        ),
        ("priority", pb.InferParameter(int64_param=-1), "invalid value for 'priority', expected value >= 0."),
        (
            "timeout",
            pb.InferParameter(uint64_param=1),
            "invalid value type for 'timeout' parameter, expected int64_param.",
        ),
        (
            "triton_enable_empty_final_response",
            pb.InferParameter(int64_param=1),
            "invalid value type for 'triton_enable_empty_final_response' parameter, expected bool_param.",
        ),
        (
            "custom",
            pb.InferParameter(uint64_param=1),
            "invalid value type for 'custom' parameter, expected int64_param, bool_param, or string_param.",
        ),
        (
            "triton_foo",
            pb.InferParameter(int64_param=1),
            "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following keys starting "
            "with 'triton_' are allowed: triton_enable_empty_final_response",
        ),
        (
            "custom",
            pb.InferParameter(),
            "invalid value type for 'custom' parameter, expected int64_param, bool_param, or string_param.",
        ),
    ],
)
def test_parameter_errors(stub: Any, key: str, value: pb.InferParameter, message: str) -> None:
    request = _raw_request()
    request.parameters[key].CopyFrom(value)
    error = _rpc_error(stub.ModelInfer, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_shared_memory_parameters(stub: Any) -> None:
    request = _raw_request()
    request.inputs[0].parameters["shared_memory_region"].string_param = "region0"
    request.inputs[0].parameters["shared_memory_byte_size"].int64_param = 16
    error = _rpc_error(stub.ModelInfer, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Unable to find shared memory region: 'region0'",
    )


def test_large_raw_request_is_split_on_the_wire(stub: Any) -> None:
    """Above the split threshold the raw contents are cut out of the message; unaligned ones are copied."""
    for pad in range(4):  # shifts the raw bytes' offset in the message
        data = np.random.default_rng(pad).random((1, 100_000), dtype=np.float32)
        request = pb.ModelInferRequest(model_name="echo_fp32", id="x" * pad)
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 100_000])
        request.parameters["my_tag"].string_param = "after"
        request.raw_input_contents.append(data.tobytes())
        request.outputs.add(name="OUTPUT0")
        response = stub.ModelInfer(request)
        assert response.id == "x" * pad
        assert response.parameters["my_tag"].string_param == "after"
        assert response.raw_output_contents[0] == data.tobytes()


# -- streaming ----------------------------------------------------------------------------------


def _int_input(values: list[int]) -> tc.InferInput:
    tensor = tc.InferInput("IN", [len(values)], "INT32")
    tensor.set_data_from_numpy(np.array(values, np.int32))
    return tensor


def test_stream_decoupled_with_tritonclient(client: tc.InferenceServerClient) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer(
            "repeat", [_int_input([10, 20, 30])], request_id="r1", enable_empty_final_response=True
        )
        got = [results.get(timeout=10) for _ in range(4)]
        assert all(error is None for _, error in got)
        responses = [result.get_response() for result, _ in got]
        assert [r.id for r in responses] == ["r1"] * 4
        assert [r.parameters["triton_final_response"].bool_param for r in responses] == [False, False, False, True]
        assert [result.as_numpy("OUT").tolist() for result, _ in got[:3]] == [[10], [20], [30]]
        empty = responses[3]
        assert (empty.model_name, empty.model_version, list(empty.outputs)) == ("repeat", "", [])
        assert [r.model_version for r in responses[:3]] == ["1", "1", "1"]

        # Without the flag, the final flag alone sends nothing.
        client.async_stream_infer("repeat", [_int_input([1, 2])], request_id="r2")
        got = [results.get(timeout=10) for _ in range(2)]
        assert [r.get_response().parameters["triton_final_response"].bool_param for r, _ in got] == [False, False]

        # Errors arrive on the stream, which stays open.
        client.async_stream_infer("nope", [_int_input([1])], request_id="e1")
        result, error = results.get(timeout=10)
        assert result is None
        assert error.message() == "Request for unknown model: 'nope' is not found"
        tensor = tc.InferInput("INPUT0", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[1]], np.int32))
        client.async_stream_infer("echo_fp32", [tensor], request_id="e2")
        result, error = results.get(timeout=10)
        assert (
            error.message()
            == "[request id: e2] inference input 'INPUT0' data-type is 'INT32', but model 'echo_fp32' expects 'FP32'"
        )

        tensor = tc.InferInput("INPUT0", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.array([[5]], np.float32))
        client.async_stream_infer("echo_fp32", [tensor], request_id="ok")
        result, error = results.get(timeout=10)
        assert error is None
        response = result.get_response()
        assert (response.id, response.model_version) == ("ok", "1")
        assert response.parameters["triton_final_response"].bool_param is True
        assert results.empty()
    finally:
        client.stop_stream()


def test_stream_error_messages_match_triton(stub: Any) -> None:
    requests = [_raw_request("nope", id="e1"), _raw_request("fail", id="e2"), _raw_request(id="e3")]
    requests[1].inputs[0].shape[:] = [4]
    bad = _raw_request(id="e4")
    bad.inputs[0].datatype = "INT32"
    requests.append(bad)
    responses = list(stub.ModelStreamInfer(iter(requests)))
    assert len(responses) == 4
    first, second, third, fourth = responses
    assert first.error_message == "Request for unknown model: 'nope' is not found"
    assert first.HasField("infer_response") and first.infer_response.id == "e1"
    assert not first.infer_response.model_name and not first.infer_response.parameters
    assert second.error_message == "boom: the model failed"
    assert (second.infer_response.id, second.infer_response.model_name) == ("e2", "fail")
    assert second.infer_response.parameters["triton_final_response"].bool_param is True
    assert third.error_message == "" and third.infer_response.id == "e3"
    assert fourth.error_message == (
        "[request id: e4] inference input 'INPUT0' data-type is 'INT32', but model 'echo_fp32' expects 'FP32'"
    )


def test_stream_grpc_error_mode_closes_the_stream(stub: Any) -> None:
    request = _raw_request("fail", id="x")
    request.inputs[0].shape[:] = [4]
    call = stub.ModelStreamInfer(iter([request, _raw_request(id="never")]), metadata=[("triton_grpc_error", "true")])
    error = _rpc_error(list, call)
    assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, "boom: the model failed")


def test_stream_non_decoupled_responses_keep_request_order(stub: Any) -> None:
    requests = []
    for i, delay in enumerate([200, 0, 100, 0]):
        request = _raw_request(id=f"n{i}")
        request.parameters["delay_ms"].int64_param = delay
        requests.append(request)
    responses = list(stub.ModelStreamInfer(iter(requests)))
    assert [r.infer_response.id for r in responses] == ["n0", "n1", "n2", "n3"]


async def test_stream_concurrent_requests_with_aio_client(server: ServerThread) -> None:
    async def requests() -> Any:
        for i in range(8):
            tensor = tca.InferInput("IN", [3], "INT32")
            tensor.set_data_from_numpy(np.array([i, i + 100, i + 200], np.int32))
            yield {"model_name": "repeat", "inputs": [tensor], "request_id": f"s{i}", "parameters": {"delay_ms": 20}}

    started = time.perf_counter()
    by_id: dict[str, list[int]] = {}
    async with tca.InferenceServerClient(server.url) as triton:
        async for result, error in triton.stream_infer(requests()):
            assert error is None
            response = result.get_response()
            assert response.parameters["triton_final_response"].bool_param is False
            by_id.setdefault(response.id, []).append(int(result.as_numpy("OUT")[0]))
            if sum(len(v) for v in by_id.values()) == 24:
                break
    elapsed = time.perf_counter() - started
    assert by_id == {f"s{i}": [i, i + 100, i + 200] for i in range(8)}
    assert elapsed < 8 * 3 * 0.02  # the 8 requests ran concurrently


# -- repository, unsupported features -----------------------------------------------------------


def test_repository(client: tc.InferenceServerClient, server: ServerThread, stub: Any) -> None:
    index = client.get_model_repository_index().models
    assert ("broken", "1", "UNAVAILABLE", "it broke") in [(m.name, m.version, m.state, m.reason) for m in index]
    ready = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models
    assert not ready[0].reason and "broken" not in [m.name for m in ready]

    error = _error(client.load_model, "echo_fp32")
    assert (error.status(), error.message()) == ("StatusCode.UNAVAILABLE", POLLING_ERROR)
    client.load_model("loadable", config='{"max_batch_size": 2}', files={"file:1/model.py": b"print()"})
    assert server.service.loads[-1] == ("loadable", {"config": '{"max_batch_size": 2}', "file:1/model.py": b"print()"})
    error = _error(client.unload_model, "echo_fp32", unload_dependents=True)
    assert (error.status(), error.message()) == ("StatusCode.UNAVAILABLE", POLLING_ERROR)
    assert server.service.unloads[-1] == ("echo_fp32", True)

    request = pb.RepositoryModelLoadRequest(model_name="loadable")
    request.parameters["bogus"].string_param = "x"
    error = _rpc_error(stub.RepositoryModelLoad, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "unrecognized load parameter 'bogus'.")
    request = pb.RepositoryModelLoadRequest(model_name="loadable")
    request.parameters["config"].bytes_param = b"{}"
    error = _rpc_error(stub.RepositoryModelLoad, request)
    assert error.details() == "invalid value type for load parameter 'config', expected string_param."
    error = _rpc_error(stub.RepositoryIndex, pb.RepositoryIndexRequest(repository_name="models"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "'repository_name' specification is not supported",
    )


def test_unsupported_features(client: tc.InferenceServerClient) -> None:
    for call, feature in [
        (lambda: client.register_cuda_shared_memory("r", b"aGFuZGxl", 0, 8), "CUDA shared memory"),
    ]:
        error = _error(call)
        assert (error.status(), error.message()) == (
            "StatusCode.UNIMPLEMENTED",
            f"{feature} is not supported by this server yet",
        )


def test_cuda_shared_memory_has_no_regions(client: tc.InferenceServerClient) -> None:
    assert client.get_cuda_shared_memory_status(as_json=True) == {}
    client.unregister_cuda_shared_memory()
    client.unregister_cuda_shared_memory("r")
    error = _error(lambda: client.get_cuda_shared_memory_status("r"))
    assert (error.status(), error.message()) == ("StatusCode.NOT_FOUND", "Unable to find cuda shared memory region: 'r'")


# -- health, reflection, binding ----------------------------------------------------------------


def test_health_follows_readiness(server: ServerThread) -> None:
    with grpc.insecure_channel(server.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest()).status == serving
        assert health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")).status == serving
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == serving
        server.service.ready = False
        try:
            assert health.Check(health_pb2.HealthCheckRequest()).status == not_serving
            assert next(watch).status == not_serving
            assert not tc.InferenceServerClient(server.url).is_server_ready()
        finally:
            server.service.ready = True
            watch.cancel()


def test_reflection(server: ServerThread) -> None:
    with grpc.insecure_channel(server.url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
        ]
        listed, inference, health = list(stub.ServerReflectionInfo(iter(requests)))
    assert sorted(s.name for s in listed.list_services_response.service) == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "inference.GRPCInferenceService",
    ]
    assert len(inference.file_descriptor_response.file_descriptor_proto) == 2  # the service and model_config
    assert len(health.file_descriptor_response.file_descriptor_proto) >= 1


async def test_port_in_use(server: ServerThread) -> None:
    with pytest.raises(GRPCBindError) as info:
        await start_grpc_server(FakeService(), "127.0.0.1", server.port)
    assert str(info.value) == f"Socket '127.0.0.1:{server.port}' already in use "
    assert info.value.errno == errno.EADDRINUSE
    assert isinstance(info.value, OSError)

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(OSError, match=f"Socket '127.0.0.1:{port}' already in use"):
            await start_grpc_server(FakeService(), "127.0.0.1", port)


async def test_server_on_the_test_loop() -> None:
    """The server also runs on the caller's loop, with the aio client beside it."""
    port = free_port()
    grpc_server = await start_grpc_server(
        FakeService(), "127.0.0.1", port, reflection_enabled=False, health=False, fast_infer=False
    )
    try:
        async with tca.InferenceServerClient(f"127.0.0.1:{port}") as triton:
            assert await triton.is_server_ready()
            tensor = tca.InferInput("INPUT0", [1, 3], "BYTES")
            tensor.set_data_from_numpy(np.array([[b"a", b"", b"\xff"]], dtype=object))
            result = await triton.infer("echo_bytes", [tensor])
            assert result.as_numpy("OUTPUT0").tolist() == [[b"a", b"", b"\xff"]]
    finally:
        await grpc_server.stop(None)
