"""Ensembles (``platform: "ensemble"``) end to end: a real server, tritonclient over HTTP and gRPC.

The pipeline: a Triton Python ``add_sub`` model, then a Python ``double`` on the sum and Conch's
identity backend on the difference, each a model of its own with its own scheduler.
"""

from __future__ import annotations

import queue
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serverkit import RunningServer, identity_config, start_server, write_model

ADD_SUB = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
                if float(a.flat[0]) == -1.0:
                    raise pb_utils.TritonModelException("add_sub refuses -1")
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUTPUT0", (a + b).astype(np.float32)),
                    pb_utils.Tensor("OUTPUT1", (a - b).astype(np.float32)),
                ]))
            return responses
    """
)

DOUBLE = textwrap.dedent(
    """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                tag = request.parameters()
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * 2)], parameters=tag))
            return out
    """
)


REPEAT = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                sender = request.get_response_sender()
                for i in range(int(x.flat[0])):
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x + i)]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
    """
)

def _python_config(name: str, inputs: int, outputs: int) -> str:
    ins = ", ".join(f'{{ name: "INPUT{i}" data_type: TYPE_FP32 dims: [ 16 ] }}' for i in range(inputs))
    outs = ", ".join(f'{{ name: "OUTPUT{i}" data_type: TYPE_FP32 dims: [ 16 ] }}' for i in range(outputs))
    return f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\ninput [ {ins} ]\noutput [ {outs} ]\n'


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version}{maps} }}'


def _ensemble(name: str, steps: list[str], inputs: list[str], outputs: list[str], max_batch_size: int = 8,
              datatype: str = "TYPE_FP32") -> str:  # fmt: skip
    ins = ", ".join(f'{{ name: "{n}" data_type: {datatype} dims: [ 16 ] }}' for n in inputs)
    outs = ", ".join(f'{{ name: "{n}" data_type: {datatype} dims: [ 16 ] }}' for n in outputs)
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\ninput [ {ins} ]\n'
        f"output [ {outs} ]\nensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n"
    )


PIPELINE_STEPS = [
    _step("add_sub", {"INPUT0": "IN0", "INPUT1": "IN1"}, {"OUTPUT0": "sum", "OUTPUT1": "diff"}),
    _step("double", {"INPUT0": "sum"}, {"OUTPUT0": "OUT_SUM2"}),
    _step("identity16", {"INPUT0": "diff"}, {"OUTPUT0": "OUT_DIFF"}),
]


#: preprocessing (add_sub) -> a decoupled model answering N times -> postprocessing (double) per answer
STREAM_STEPS = [
    _step("add_sub", {"INPUT0": "IN0", "INPUT1": "IN1"}, {"OUTPUT0": "sum"}),
    _step("repeat", {"INPUT0": "sum"}, {"OUTPUT0": "counted"}),
    _step("double", {"INPUT0": "counted"}, {"OUTPUT0": "OUT"}),
]
#: a step that reads both an ensemble input and a decoupled step's output: refused, as in Triton
MIXED_STEPS = [
    _step("repeat", {"INPUT0": "IN0"}, {"OUTPUT0": "counted"}),
    _step("add_sub", {"INPUT0": "counted", "INPUT1": "IN1"}, {"OUTPUT0": "OUT"}),
]


def _write_composing(repo: Path) -> None:
    write_model(repo, "add_sub", _python_config("add_sub", 2, 2), files={"1/model.py": ADD_SUB})
    write_model(repo, "double", _python_config("double", 1, 1), files={"1/model.py": DOUBLE})
    write_model(repo, "identity16", identity_config("identity16", dims="[ 16 ]"))
    write_model(repo, "repeat", _python_config("repeat", 1, 1) + "model_transaction_policy { decoupled: true }\n",
                files={"1/model.py": REPEAT})  # fmt: skip


@pytest.fixture(scope="module")
def ensemble_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("ensembles")
    _write_composing(repo)
    write_model(repo, "pipeline", _ensemble("pipeline", PIPELINE_STEPS, ["IN0", "IN1"], ["OUT_SUM2", "OUT_DIFF"]))
    # Broken ensembles: each is UNAVAILABLE with Triton's reason; the rest serves.
    write_model(repo, "missing_model", _ensemble("missing_model", [_step("nope", {"INPUT0": "IN0"}, {"OUTPUT0": "OUT"})],
                                                 ["IN0"], ["OUT"]))  # fmt: skip
    write_model(repo, "bad_input", _ensemble("bad_input", [_step("identity16", {"WRONG": "IN0"}, {"OUTPUT0": "OUT"})],
                                             ["IN0"], ["OUT"]))  # fmt: skip
    write_model(repo, "bad_type", _ensemble("bad_type", [_step("identity16", {"INPUT0": "IN0"}, {"OUTPUT0": "OUT"})],
                                            ["IN0"], ["OUT"], datatype="TYPE_INT32"))  # fmt: skip
    write_model(repo, "bad_version", _ensemble("bad_version", [_step("identity16", {"INPUT0": "IN0"}, {"OUTPUT0": "OUT"},
                                                                     version=7)], ["IN0"], ["OUT"]))  # fmt: skip
    write_model(repo, "streamer", _ensemble("streamer", STREAM_STEPS, ["IN0", "IN1"], ["OUT"]))
    write_model(repo, "mixed", _ensemble("mixed", MIXED_STEPS, ["IN0", "IN1"], ["OUT"]))
    write_model(repo, "ring_a", _ensemble("ring_a", [_step("ring_b", {"IN0": "IN0"}, {"OUT": "OUT"})], ["IN0"], ["OUT"]))
    write_model(repo, "ring_b", _ensemble("ring_b", [_step("ring_a", {"IN0": "IN0"}, {"OUT": "OUT"})], ["IN0"], ["OUT"]))
    server = start_server([repo], tmp_path_factory.mktemp("ensemble_server"), "--exit-on-error=false",
                          "--strict-readiness=false")  # fmt: skip
    yield server
    assert server.stop() == 0


def _inputs(module: object, a: np.ndarray, b: np.ndarray) -> list[object]:
    tensors = []
    for name, value in (("IN0", a), ("IN1", b)):
        tensor = module.InferInput(name, list(value.shape), "FP32")  # type: ignore[attr-defined]
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    return tensors


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_pipeline_runs_every_step(ensemble_server: RunningServer, protocol: str) -> None:
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.float32)
    if protocol == "http":
        client = httpclient.InferenceServerClient(ensemble_server.http_url)
        result = client.infer("pipeline", _inputs(httpclient, a, b))
    else:
        client = grpcclient.InferenceServerClient(ensemble_server.grpc_url)
        result = client.infer("pipeline", _inputs(grpcclient, a, b))
    np.testing.assert_array_equal(result.as_numpy("OUT_SUM2"), (a + b) * 2)
    np.testing.assert_array_equal(result.as_numpy("OUT_DIFF"), a - b)


def test_metadata_config_and_readiness(ensemble_server: RunningServer) -> None:
    base = ensemble_server.base
    metadata = requests.get(f"{base}/v2/models/pipeline").json()
    assert metadata["platform"] == "ensemble"
    assert [i["name"] for i in metadata["inputs"]] == ["IN0", "IN1"]
    assert metadata["outputs"][0]["shape"] == [-1, 16]
    config = requests.get(f"{base}/v2/models/pipeline/config").json()
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["add_sub", "double", "identity16"]
    assert requests.get(f"{base}/v2/models/pipeline/ready").status_code == 200


def _count(base: str, model: str) -> int:
    stats = requests.get(f"{base}/v2/models/{model}/stats").json()["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def test_only_the_steps_the_requested_outputs_need_run(ensemble_server: RunningServer) -> None:
    base = ensemble_server.base
    before = {m: _count(base, m) for m in ("add_sub", "double", "identity16", "pipeline")}
    client = httpclient.InferenceServerClient(ensemble_server.http_url)
    a = np.full((1, 16), 5, np.float32)
    b = np.full((1, 16), 2, np.float32)
    result = client.infer("pipeline", _inputs(httpclient, a, b), outputs=[httpclient.InferRequestedOutput("OUT_DIFF")])
    np.testing.assert_array_equal(result.as_numpy("OUT_DIFF"), a - b)
    assert result.as_numpy("OUT_SUM2") is None
    after = {m: _count(base, m) for m in before}
    assert after["add_sub"] == before["add_sub"] + 1
    assert after["identity16"] == before["identity16"] + 1
    assert after["double"] == before["double"]  # not needed for OUT_DIFF
    assert after["pipeline"] == before["pipeline"] + 1


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_step_error_reaches_the_client_and_the_ensemble_serves_on(ensemble_server: RunningServer, protocol: str) -> None:
    module = httpclient if protocol == "http" else grpcclient
    url = ensemble_server.http_url if protocol == "http" else ensemble_server.grpc_url
    client = module.InferenceServerClient(url)  # type: ignore[attr-defined]
    bad = np.full((1, 16), -1, np.float32)
    with pytest.raises(InferenceServerException, match="in ensemble 'pipeline', .*add_sub refuses -1"):
        client.infer("pipeline", _inputs(module, bad, bad))
    good = np.ones((1, 16), np.float32)
    result = client.infer("pipeline", _inputs(module, good, good))
    np.testing.assert_array_equal(result.as_numpy("OUT_DIFF"), np.zeros((1, 16), np.float32))


def test_request_parameters_reach_the_steps(ensemble_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(ensemble_server.grpc_url)
    ones = np.ones((1, 16), np.float32)
    result = client.infer("pipeline", _inputs(grpcclient, ones, ones), parameters={"tag": "abc"})
    np.testing.assert_array_equal(result.as_numpy("OUT_SUM2"), ones * 4)


def test_bad_ensembles_are_unavailable_with_tritons_reasons(ensemble_server: RunningServer) -> None:
    index = {row["name"]: row for row in requests.post(f"{ensemble_server.base}/v2/repository/index").json()}
    assert index["pipeline"]["state"] == "READY"
    expected = {
        "missing_model": "ensemble missing_model contains models that are not available or ambiguous: nope",
        "bad_input": "in ensemble bad_input, ensemble tensor IN0 is mapping to non-existing input WRONG in model identity16",
        "bad_type": "in ensemble bad_type, ensemble tensor IN0: inconsistent data type: TYPE_INT32 is inferred from "
        "model bad_type while TYPE_FP32 is inferred from model identity16",
        "bad_version": "ensemble 'bad_version' depends on 'identity16' whose required version 7 is not loaded.",
        "mixed": "in ensemble mixed, step of model 'add_sub' receives inputs originated from different decoupled models",
    }
    for name, reason in expected.items():
        assert index[name]["state"] == "UNAVAILABLE", index[name]
        assert reason in index[name]["reason"], index[name]
    for name, other in (("ring_a", "ring_b"), ("ring_b", "ring_a")):
        assert index[name]["state"] == "UNAVAILABLE", index[name]
        cycle = f"circular dependency between ensembles: {name} -> ... -> {other} -> {name}"
        assert cycle in index[name]["reason"], index[name]


def test_explicit_mode_loads_composing_models_and_unloads_with_them(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _write_composing(repo)
    write_model(repo, "pipeline", _ensemble("pipeline", PIPELINE_STEPS, ["IN0", "IN1"], ["OUT_SUM2", "OUT_DIFF"]))
    server = start_server([repo], tmp_path, "--model-control-mode=explicit")

    def ready(model: str) -> bool:
        return requests.get(f"{server.base}/v2/models/{model}/ready").status_code == 200

    try:
        base = server.base
        assert requests.post(f"{base}/v2/repository/models/identity16/load").status_code == 200
        assert requests.post(f"{base}/v2/repository/models/pipeline/load").status_code == 200
        assert all(ready(m) for m in ("add_sub", "double", "identity16", "pipeline"))
        client = grpcclient.InferenceServerClient(server.grpc_url)
        twos = np.full((1, 16), 2, np.float32)
        np.testing.assert_array_equal(client.infer("pipeline", _inputs(grpcclient, twos, twos)).as_numpy("OUT_SUM2"),
                                      twos * 4)  # fmt: skip
        # A composing model leaves: the ensemble goes with it, and comes back with it (as in Triton).
        assert requests.post(f"{base}/v2/repository/models/identity16/unload").status_code == 200
        assert not ready("identity16") and not ready("pipeline")
        assert ready("add_sub") and ready("double")
        assert requests.post(f"{base}/v2/repository/models/identity16/load").status_code == 200
        deadline = time.monotonic() + 20
        while not ready("pipeline") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready("pipeline")
        # unload_dependents on the ensemble: the models loaded only for it go; identity16, loaded on its own, stays.
        body = {"parameters": {"unload_dependents": True}}
        assert requests.post(f"{base}/v2/repository/models/pipeline/unload", json=body).status_code == 200
        assert not ready("pipeline") and not ready("add_sub") and not ready("double")
        assert ready("identity16")
    finally:
        assert server.stop() == 0


def test_a_decoupled_step_streams_each_answer_through_the_steps_after_it(ensemble_server: RunningServer) -> None:
    config = requests.get(f"{ensemble_server.base}/v2/models/streamer/config").json()
    assert config["model_transaction_policy"]["decoupled"] is True
    client = grpcclient.InferenceServerClient(ensemble_server.grpc_url)
    results: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        a = np.full((1, 16), 2, np.float32)
        b = np.full((1, 16), 1, np.float32)  # sum 3: the decoupled step answers 3 times
        client.async_stream_infer("streamer", _inputs(grpcclient, a, b), request_id="s1",
                                  enable_empty_final_response=True)  # fmt: skip
        outs = []
        while True:
            result, error = results.get(timeout=10)
            assert error is None, error
            response = result.get_response()  # type: ignore[attr-defined]
            if response.parameters["triton_final_response"].bool_param and not response.outputs:
                break
            outs.append(float(result.as_numpy("OUT").flat[0]))  # type: ignore[attr-defined]
            assert response.id == "s1"
        assert outs == [6.0, 8.0, 10.0]  # (3 + i) * 2 for i = 0, 1, 2, in order
    finally:
        client.stop_stream()


def test_http_refuses_a_decoupled_ensemble(ensemble_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(ensemble_server.http_url)
    ones = np.ones((1, 16), np.float32)
    with pytest.raises(InferenceServerException, match="doesn't support models with decoupled transaction policy"):
        client.infer("streamer", _inputs(httpclient, ones, ones))


def test_the_example_repository_serves_its_ensemble(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples" / "model_repository"
    server = start_server([examples], tmp_path)
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        a = np.arange(16, dtype=np.float32).reshape(1, 16)
        b = np.full((1, 16), 3, np.float32)
        tensors = []
        for name, value in (("INPUT0", a), ("INPUT1", b)):
            tensor = httpclient.InferInput(name, [1, 16], "FP32")
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        result = client.infer("add_sub_ensemble", tensors)
        np.testing.assert_array_equal(result.as_numpy("SUM"), a + b)
        np.testing.assert_array_equal(result.as_numpy("DIFF"), a - b)
    finally:
        assert server.stop() == 0
