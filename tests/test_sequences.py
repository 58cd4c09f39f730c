"""The sequence batcher end to end: a Triton Python model that keeps a running sum per sequence,
driven by tritonclient over HTTP and gRPC with ``sequence_id``, ``sequence_start`` and ``sequence_end``."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serverkit import RunningServer, start_server, write_model

ACCUMULATE = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            self.sums = {}

        def execute(self, requests):
            responses = []
            for request in requests:
                value = int(pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().flat[0])
                start = int(pb_utils.get_input_tensor_by_name(request, "START").as_numpy().flat[0])
                end = int(pb_utils.get_input_tensor_by_name(request, "END").as_numpy().flat[0])
                ready = int(pb_utils.get_input_tensor_by_name(request, "READY").as_numpy().flat[0])
                corrid = int(pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy().flat[0])
                if ready != 1 or str(corrid) != str(request.correlation_id()):
                    raise pb_utils.TritonModelException(f"bad controls: ready={ready} corrid={corrid}")
                if start:
                    self.sums[corrid] = 0
                self.sums[corrid] += value
                total = self.sums[corrid]
                if end:
                    del self.sums[corrid]
                shape = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().shape
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUTPUT", np.full(shape, total, np.int32)),
                    pb_utils.Tensor("ENDED", np.full(shape, end, np.int32)),
                ]))
            return responses
    """
)


def _config(name: str, max_batch_size: int, idle_us: int = 1_000_000) -> str:
    controls = (
        '{ name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] }, '
        '{ name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] }, '
        '{ name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }, '
        '{ name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }'
    )
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        'input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "ENDED" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        f"sequence_batching {{ max_sequence_idle_microseconds: {idle_us} control_input [ {controls} ] }}\n"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )


@pytest.fixture(scope="module")
def sequence_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("sequences")
    write_model(repo, "acc", _config("acc", 4), files={"1/model.py": ACCUMULATE})
    write_model(repo, "acc_one_slot", _config("acc_one_slot", 1), files={"1/model.py": ACCUMULATE})
    write_model(repo, "acc_idle", _config("acc_idle", 4, idle_us=200_000), files={"1/model.py": ACCUMULATE})
    write_model(repo, "acc_nobatch", _config("acc_nobatch", 0).replace("dims: [ 1 ]", "dims: [ 1 ]"),
                files={"1/model.py": ACCUMULATE})  # fmt: skip
    server = start_server([repo], tmp_path_factory.mktemp("sequence_server"))
    yield server
    assert server.stop() == 0


def _client(server: RunningServer, protocol: str) -> tuple[object, object]:
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_url)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)


def _send(module: object, client: object, model: str, value: int, batch: bool = True, **sequence: object) -> int:
    data = np.array([[value]] if batch else [value], dtype=np.int32)
    tensor = module.InferInput("INPUT", list(data.shape), "INT32")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(data)
    result = client.infer(model, [tensor], **sequence)  # type: ignore[attr-defined]
    return int(result.as_numpy("OUTPUT").flat[0])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_interleaved_sequences_keep_their_own_state(sequence_server: RunningServer, protocol: str) -> None:
    module, client = _client(sequence_server, protocol)
    a, b = (101, 102) if protocol == "http" else (201, 202)
    assert _send(module, client, "acc", 1, sequence_id=a, sequence_start=True) == 1
    assert _send(module, client, "acc", 10, sequence_id=b, sequence_start=True) == 10
    assert _send(module, client, "acc", 2, sequence_id=a) == 3
    assert _send(module, client, "acc", 20, sequence_id=b) == 30
    assert _send(module, client, "acc", 3, sequence_id=a, sequence_end=True) == 6
    assert _send(module, client, "acc", 30, sequence_id=b, sequence_end=True) == 60


def test_non_batching_model_gets_controls_of_shape_1(sequence_server: RunningServer) -> None:
    module, client = _client(sequence_server, "grpc")
    assert _send(module, client, "acc_nobatch", 4, batch=False, sequence_id=7, sequence_start=True) == 4
    assert _send(module, client, "acc_nobatch", 5, batch=False, sequence_id=7, sequence_end=True) == 9


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_requests_the_sequence_batcher_refuses(sequence_server: RunningServer, protocol: str) -> None:
    module, client = _client(sequence_server, protocol)
    with pytest.raises(InferenceServerException, match="inference request to model 'acc' must specify a non-zero or "
                                                      "non-empty correlation ID"):  # fmt: skip
        _send(module, client, "acc", 1)
    with pytest.raises(InferenceServerException, match="inference request for sequence 999 to model 'acc' must "
                                                      "specify the START flag on the first request of the sequence"):  # fmt: skip
        _send(module, client, "acc", 1, sequence_id=999)
    data = np.ones((2, 1), np.int32)
    tensor = module.InferInput("INPUT", [2, 1], "INT32")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(data)
    with pytest.raises(InferenceServerException, match="must specify batch-size 1 due to requirements of sequence "
                                                      "batcher"):  # fmt: skip
        client.infer("acc", [tensor], sequence_id=5, sequence_start=True)  # type: ignore[attr-defined]


def test_a_sequence_is_gone_after_its_end_and_after_idling(sequence_server: RunningServer) -> None:
    module, client = _client(sequence_server, "grpc")
    assert _send(module, client, "acc", 1, sequence_id=301, sequence_start=True) == 1
    assert _send(module, client, "acc", 1, sequence_id=301, sequence_end=True) == 2
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        _send(module, client, "acc", 1, sequence_id=301)
    assert _send(module, client, "acc_idle", 5, sequence_id=302, sequence_start=True) == 5
    time.sleep(0.8)  # idle limit 200 ms
    with pytest.raises(InferenceServerException, match="must specify the START flag"):
        _send(module, client, "acc_idle", 1, sequence_id=302)


def test_a_sequence_without_a_free_slot_waits_in_the_backlog(sequence_server: RunningServer) -> None:
    module, client = _client(sequence_server, "grpc")
    assert _send(module, client, "acc_one_slot", 1, sequence_id=401, sequence_start=True) == 1
    answers: list[int] = []

    def second() -> None:
        _, own = _client(sequence_server, "grpc")
        answers.append(_send(module, own, "acc_one_slot", 7, sequence_id=402, sequence_start=True))

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.4)
    assert answers == []  # the only slot belongs to sequence 401
    assert _send(module, client, "acc_one_slot", 1, sequence_id=401, sequence_end=True) == 2
    thread.join(10)
    assert answers == [7]
    assert _send(module, client, "acc_one_slot", 1, sequence_id=402, sequence_end=True) == 8


def _onnx_int32_model(repo: Path, name: str, config: str, nodes: list[object], inputs: list[str],
                      outputs: list[str]) -> Path:  # fmt: skip
    """``<repo>/<name>`` with ``config`` and a graph of INT32 ``[batch, 1]`` tensors built from ``nodes``."""
    from onnx import TensorProto, helper

    io = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "g",
        [io(n, TensorProto.INT32, ["batch", 1]) for n in inputs],
        [io(n, TensorProto.INT32, ["batch", 1]) for n in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_dir = write_model(repo, name, config)
    (model_dir / "1" / "model.onnx").write_bytes(model.SerializeToString())
    return model_dir


def test_onnx_sequence_model_gets_control_tensors_in_its_batch(tmp_path: Path) -> None:
    """A concatenating backend (ONNX Runtime): the control tensors are [1, 1] per request, [B, 1] batched."""
    from onnx import TensorProto, helper

    repo = tmp_path / "repo"
    config = (
        'name: "onnx_seq"\nbackend: "onnxruntime"\nmax_batch_size: 4\n'
        'input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        "sequence_batching { control_input [ "
        '{ name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] }, '
        '{ name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] } ] }\n'
    )
    nodes = [
        helper.make_node("Constant", [], ["hundred"], value=helper.make_tensor("h", TensorProto.INT32, [], [100])),
        helper.make_node("Mul", ["START", "hundred"], ["start100"]),
        helper.make_node("Add", ["INPUT", "start100"], ["with_start"]),
        helper.make_node("Add", ["with_start", "END"], ["OUTPUT"]),
    ]
    _onnx_int32_model(repo, "onnx_seq", config, nodes, ["INPUT", "START", "END"], ["OUTPUT"])
    server = start_server([repo], tmp_path)
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert _send(grpcclient, client, "onnx_seq", 5, sequence_id=1, sequence_start=True) == 105
        assert _send(grpcclient, client, "onnx_seq", 5, sequence_id=1) == 5
        assert _send(grpcclient, client, "onnx_seq", 5, sequence_id=1, sequence_end=True) == 6
    finally:
        assert server.stop() == 0


def test_implicit_state_carries_the_output_state_to_the_next_request(tmp_path: Path) -> None:
    """``sequence_batching.state``: OUTPUT_STATE of one request is INPUT_STATE of the next; START gets the
    initial state; the client never sees the state unless it asks for it."""
    from onnx import helper

    repo = tmp_path / "repo"
    config = (
        'name: "stateful"\nbackend: "onnxruntime"\nmax_batch_size: 4\n'
        'input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
        "sequence_batching { state [ { input_name: \"INPUT_STATE\" output_name: \"OUTPUT_STATE\" "
        'data_type: TYPE_INT32 dims: [ 1 ] initial_state [ { data_type: TYPE_INT32 dims: [ 1 ] '
        'data_file: "hundred" name: "start at 100" } ] } ] }\n'
    )
    nodes = [
        helper.make_node("Add", ["INPUT", "INPUT_STATE"], ["OUTPUT_STATE"]),
        helper.make_node("Identity", ["OUTPUT_STATE"], ["OUTPUT"]),
    ]
    model_dir = _onnx_int32_model(repo, "stateful", config, nodes, ["INPUT", "INPUT_STATE"], ["OUTPUT", "OUTPUT_STATE"])
    (model_dir / "initial_state").mkdir()
    (model_dir / "initial_state" / "hundred").write_bytes(np.array([100], np.int32).tobytes())
    server = start_server([repo], tmp_path)
    try:
        for protocol in ("http", "grpc"):
            module, client = _client(server, protocol)
            a, b = (11, 12) if protocol == "http" else (21, 22)
            assert _send(module, client, "stateful", 1, sequence_id=a, sequence_start=True) == 101
            assert _send(module, client, "stateful", 5, sequence_id=b, sequence_start=True) == 105
            assert _send(module, client, "stateful", 2, sequence_id=a) == 103
            assert _send(module, client, "stateful", 5, sequence_id=b) == 110
            data = np.array([[3]], np.int32)
            tensor = module.InferInput("INPUT", [1, 1], "INT32")  # type: ignore[attr-defined]
            tensor.set_data_from_numpy(data)
            result = client.infer("stateful", [tensor], sequence_id=a, sequence_end=True)  # type: ignore[attr-defined]
            assert int(result.as_numpy("OUTPUT").flat[0]) == 106
            assert result.as_numpy("OUTPUT_STATE") is None  # kept back: the client did not ask for it
            assert _send(module, client, "stateful", 7, sequence_id=a, sequence_start=True) == 107  # a new sequence
    finally:
        assert server.stop() == 0


def test_a_non_numeric_string_id_on_an_integer_corrid_model_is_refused_and_the_model_serves_on(
    sequence_server: RunningServer,
) -> None:
    module, client = _client(sequence_server, "grpc")
    with pytest.raises(InferenceServerException, match="the model's CORRID control input is an integer"):
        _send(module, client, "acc", 1, sequence_id="abc", sequence_start=True)
    assert _send(module, client, "acc", 4, sequence_id="12345", sequence_start=True) == 4  # a decimal string is fine
    assert _send(module, client, "acc", 4, sequence_id="12345", sequence_end=True) == 8
    assert _send(module, client, "acc", 1, sequence_id=501, sequence_start=True, sequence_end=True) == 1


def test_a_backlogged_sequence_whose_request_times_out_is_refused(sequence_server: RunningServer) -> None:
    module, client = _client(sequence_server, "http")
    assert _send(module, client, "acc_one_slot", 1, sequence_id=601, sequence_start=True) == 1
    started = time.monotonic()
    with pytest.raises(InferenceServerException, match="timeout of the corresponding sequence has been expired"):
        _send(module, client, "acc_one_slot", 1, sequence_id=602, sequence_start=True, timeout=200_000)
    assert time.monotonic() - started < 5
    assert _send(module, client, "acc_one_slot", 1, sequence_id=601, sequence_end=True) == 2
