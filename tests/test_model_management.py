"""Model management end to end: control modes, the repository API with overrides, reloads, unloads, warmup."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serverkit import RunningServer, identity_config, start_server, write_model

SLOW_LOAD = 'parameters [ { key: "creation_delay_sec" value: { string_value: "%s" } } ]'


def _infer(server: RunningServer, model: str, value: float = 1.0) -> requests.Response:
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [value, value]}]}
    return requests.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=30)


def _load(server: RunningServer, model: str, parameters: dict[str, Any] | None = None) -> requests.Response:
    body = {"parameters": parameters} if parameters is not None else None
    return requests.post(f"{server.base}/v2/repository/models/{model}/load", json=body, timeout=120)


def _unload(server: RunningServer, model: str) -> requests.Response:
    return requests.post(f"{server.base}/v2/repository/models/{model}/unload", timeout=120)


def _index(server: RunningServer, ready: bool | None = None) -> list[dict[str, str]]:
    body = {"ready": ready} if ready is not None else {}
    response = requests.post(f"{server.base}/v2/repository/index", json=body, timeout=10)
    assert response.status_code == 200, response.text
    rows: list[dict[str, str]] = response.json()
    return rows


def _state(server: RunningServer, model: str) -> str:
    rows = [row for row in _index(server) if row["name"] == model]
    return rows[-1].get("state", "") if rows else ""


def _wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _config_json(name: str, max_batch_size: int = 8, extra: dict[str, Any] | None = None) -> str:
    document: dict[str, Any] = {
        "name": name,
        "backend": "identity",
        "max_batch_size": str(max_batch_size),  # int64 as a string, as Triton's own clients send it
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
    }
    document.update(extra or {})
    return json.dumps(document)


# -- control modes ------------------------------------------------------------------------------------


def test_explicit_mode_loads_named_models_and_lists_the_others(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in ("alpha", "beta", "gamma"):
        write_model(repo, name, identity_config(name))
    server = start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=alpha")
    try:
        rows = {row["name"]: row for row in _index(server)}
        assert rows["alpha"]["state"] == "READY"
        assert rows["beta"] == {"name": "beta"} and rows["gamma"] == {"name": "gamma"}
        assert [row["name"] for row in _index(server, ready=True)] == ["alpha"]
        assert _infer(server, "beta").status_code == 404

        # A model folder added after start-up is listed and loadable.
        write_model(repo, "delta", identity_config("delta"))
        assert {"name": "delta"} in _index(server)

        # HTTP load and unload.
        assert _load(server, "beta").status_code == 200
        assert _infer(server, "beta").status_code == 200
        assert _unload(server, "beta").status_code == 200
        response = _infer(server, "beta")
        assert response.status_code == 404
        assert response.json()["error"] == "Request for unknown model: 'beta' has no available versions"
        assert {"name": "beta", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in _index(server)

        # gRPC load and unload.
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.load_model("gamma")
        assert client.is_model_ready("gamma")
        client.unload_model("gamma", unload_dependents=True)
        assert not client.is_model_ready("gamma")
        client.load_model("delta")
        assert client.is_model_ready("delta")
        states = {m.name: m.state for m in client.get_model_repository_index().models if m.version}
        assert states == {"alpha": "READY", "beta": "UNAVAILABLE", "gamma": "UNAVAILABLE", "delta": "READY"}

        # Unknown models: load names what failed; unload of a name no repository has is an error.
        response = _load(server, "nope")
        assert response.status_code == 500
        assert response.json()["error"] == (
            "failed to load 'nope', failed to poll from model repository: model not found in any model repository"
        )
        with pytest.raises(InferenceServerException, match="failed to load 'nope'"):
            client.load_model("nope")
        response = _unload(server, "nope")
        assert response.status_code == 400
        assert "Model to be unloaded has not been served" in response.json()["error"]
        assert _unload(server, "gamma").status_code == 200  # known but not loaded: nothing to do
        # A broken model fails alone, with the reason.
        (repo / "gamma" / "config.pbtxt").write_text("max_batch_size: [")
        response = _load(server, "gamma")
        assert response.status_code == 500
        assert "failed to load 'gamma', failed to poll from model repository:" in response.json()["error"]
        assert "config.pbtxt" in response.json()["error"]
        assert _infer(server, "alpha").status_code == 200
        assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
    finally:
        server.stop()


def test_explicit_mode_load_all_and_wildcard_must_stand_alone(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in ("alpha", "beta"):
        write_model(repo, name, identity_config(name))
    server = start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=*")
    try:
        assert {row["name"] for row in _index(server, ready=True)} == {"alpha", "beta"}
    finally:
        server.stop()
    with pytest.raises(RuntimeError, match="Wildcard model name '\\*' must be the ONLY startup model"):
        start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=*", "--load-model=alpha")


def test_mode_none_refuses_load_and_unload(server: RunningServer) -> None:
    for action in ("load", "unload"):
        response = requests.post(f"{server.base}/v2/repository/models/identity_fp32/{action}", timeout=10)
        assert response.status_code == 503
        assert response.json() == {"error": "explicit model load / unload is not allowed if polling is enabled"}
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed"):
        client.load_model("identity_fp32")


# -- overrides ----------------------------------------------------------------------------------------


def test_config_and_file_overrides_over_http_and_grpc(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "ident", identity_config("ident"))
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    server = start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=ident")
    try:
        # A config override replaces config.pbtxt; auto-complete still fills the gaps (instance_group).
        assert _load(server, "ident", {"config": _config_json("ident", 16)}).status_code == 200
        config = requests.get(f"{server.base}/v2/models/ident/config", timeout=5).json()
        assert config["max_batch_size"] == 16
        assert config["instance_group"][0]["count"] == 1

        # A new version uploaded as an override file serves; the repository is never written to.
        model_py = (
            "import triton_python_backend_utils as pb_utils\n"
            "class TritonPythonModel:\n"
            "    def execute(self, requests):\n"
            "        return [pb_utils.InferenceResponse([pb_utils.Tensor('OUTPUT0',\n"
            "            pb_utils.get_input_tensor_by_name(r, 'INPUT0').as_numpy() * 2)]) for r in requests]\n"
        )
        python_config = _config_json("ident", 8, {"backend": "python"})
        files = {"config": python_config, "file:3/model.py": base64.b64encode(model_py.encode()).decode()}
        response = _load(server, "ident", files)
        assert response.status_code == 200, response.text
        result = _infer(server, "ident", 2.0).json()
        assert result["model_version"] == "3" and result["outputs"][0]["data"] == [4.0, 4.0]
        assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before

        # gRPC: bytes, not base64.
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.load_model("ident", config=python_config, files={"file:5/model.py": model_py.encode()})
        assert client.get_model_metadata("ident").versions == ["5"]
        # A plain load goes back to the repository's folder and config.
        client.load_model("ident")
        assert client.get_model_metadata("ident").versions == ["1"]
        assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before

        # A model that no repository has can be loaded from override files alone.
        client.load_model("fresh", config=python_config.replace('"ident"', '"fresh"'), files={"file:1/model.py": model_py.encode()})
        assert client.is_model_ready("fresh")
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"config": "{bad"}, "Invalid config override:"),
        ({"config": '{"nofield": 1}'}, "Invalid config override:"),
        ({"config": '{"name": "other", "backend": "identity"}'}, "directory name must equal model name"),
        ({"file:1/model.identity": "aGk="}, "Load parameter 'config' must be specified for model file override"),
        ({"config": "{}", "file:../escape.txt": "aGk="}, "Invalid file parameter 'file:../escape.txt'"),
        ({"config": "{}", "file:1/../../escape.txt": "aGk="}, "Invalid file parameter 'file:1/../../escape.txt'"),
        ({"config": "{}", "file:/tmp/escape.txt": "aGk="}, "Invalid file parameter 'file:/tmp/escape.txt'"),
    ],
)
def test_bad_overrides_are_refused_and_the_old_version_keeps_serving(
    override_server: RunningServer, parameters: dict[str, str], expected: str
) -> None:
    response = _load(override_server, "ident", parameters)
    assert response.status_code in (400, 500)
    error = response.json()["error"]
    assert error.startswith("failed to load 'ident'") and expected in error, error
    assert _infer(override_server, "ident").status_code == 200
    assert not (override_server.repos[0].parent / "escape.txt").exists()
    assert not Path("/tmp/escape.txt").exists()


@pytest.fixture(scope="module")
def override_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("overrides")
    repo = tmp / "repo"
    write_model(repo, "ident", identity_config("ident"))
    server = start_server([repo], tmp, "--model-control-mode=explicit", "--load-model=ident")
    yield server
    server.stop()


@pytest.mark.parametrize("name", ["..", "..%2F..%2Fetc", "%2e%2e", "a%5Cb"])
def test_model_names_in_urls_cannot_leave_the_repository(override_server: RunningServer, name: str) -> None:
    response = requests.post(f"{override_server.base}/v2/repository/models/{name}/load", timeout=10)
    assert response.status_code in (400, 404, 500)
    if response.status_code != 404:
        assert "failed to load" in response.json()["error"]
    assert _infer(override_server, "ident").status_code == 200


@pytest.mark.parametrize("name", ["..", "../repo/ident", "/etc", "a\\b"])
def test_model_names_over_grpc_cannot_leave_the_repository(override_server: RunningServer, name: str) -> None:
    client = grpcclient.InferenceServerClient(override_server.grpc_url)
    with pytest.raises(InferenceServerException, match="invalid model name"):
        client.load_model(name)
    assert client.is_model_ready("ident")


# -- reload, unload, concurrency -------------------------------------------------------------------------


def test_reload_under_load_from_16_clients_fails_no_request(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "ident", identity_config("ident", extra=SLOW_LOAD % "0.5"))
    server = start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=ident")
    failures: list[str] = []
    done = threading.Event()
    counts = [0] * 16

    def client(index: int) -> None:
        session = requests.Session()
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [float(index)]}]}
        while not done.is_set():
            response = session.post(f"{server.base}/v2/models/ident/infer", json=body, timeout=30)
            if response.status_code != 200 or response.json()["outputs"][0]["data"] != [float(index)]:
                failures.append(f"{response.status_code}: {response.text}")
            counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        for batch in (8, 4, 16):  # each reload changes the config, so a new set of instances takes over
            response = _load(server, "ident", {"config": _config_json("ident", batch, {"parameters": {}})})
            assert response.status_code == 200, response.text
            time.sleep(0.3)
        # A failed reload keeps the old version serving and says why.
        response = _load(server, "ident", {"config": _config_json("ident", 8, {"backend": "no_such_backend"})})
        assert response.status_code == 500
        assert "unable to find backend library for backend 'no_such_backend'" in response.json()["error"]
        time.sleep(0.3)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    try:
        assert failures == []
        assert min(counts) > 0
        assert _state(server, "ident") == "READY"
        config = requests.get(f"{server.base}/v2/models/ident/config", timeout=5).json()
        assert config["max_batch_size"] == 16
        assert server.log().count("successfully unloaded 'ident' version 1") == 3
    finally:
        server.stop()


def test_failed_reload_of_a_version_keeps_the_old_instances(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    model_py = (
        "import os\nimport triton_python_backend_utils as pb_utils\n"
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        if os.path.exists(os.path.join(args['model_repository'], 'FAIL')):\n"
        "            raise RuntimeError('refusing to start: FAIL marker present')\n"
        "    def execute(self, requests):\n"
        "        return [pb_utils.InferenceResponse([pb_utils.Tensor('OUTPUT0',\n"
        "            pb_utils.get_input_tensor_by_name(r, 'INPUT0').as_numpy())]) for r in requests]\n"
    )
    config = identity_config("pym").replace('backend: "identity"', 'backend: "python"')
    write_model(repo, "pym", config, files={"1/model.py": model_py})
    server = start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=pym")
    try:
        (repo / "pym" / "FAIL").write_text("")
        response = _load(server, "pym")
        assert response.status_code == 400
        error = response.json()["error"]
        assert error.startswith("load failed for model 'pym': version 1 is at UNAVAILABLE state:")
        assert "refusing to start: FAIL marker present" in error
        assert _infer(server, "pym").status_code == 200
        assert _state(server, "pym") == "READY"
        assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
    finally:
        server.stop()


def test_concurrent_loads_of_one_model_load_it_once(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "slow", identity_config("slow", extra=SLOW_LOAD % "1"))
    server = start_server([repo], tmp_path, "--model-control-mode=explicit")
    try:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(_load(server, "slow").status_code)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [200] * 4
        assert server.log().count("successfully loaded 'slow' version 1") == 1
    finally:
        server.stop()


def test_a_slow_load_never_delays_inference_on_other_models(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "fast", identity_config("fast"))
    write_model(repo, "slow", identity_config("slow", extra=SLOW_LOAD % "4"))
    server = start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=fast")
    try:
        loader = threading.Thread(target=_load, args=(server, "slow"))
        loader.start()
        _wait_for(lambda: _state(server, "slow") == "LOADING")
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        inputs = [grpcclient.InferInput("INPUT0", [1, 2], "FP32")]
        inputs[0].set_data_from_numpy(np.ones((1, 2), np.float32))
        for _ in range(20):
            assert _infer(server, "fast").status_code == 200
            grpc.infer("fast", inputs)
        # All of that happened while the slow model was still loading; the server stayed ready.
        assert _state(server, "slow") == "LOADING"
        assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
        loader.join()
        assert _state(server, "slow") == "READY"
    finally:
        server.stop()


@pytest.mark.parametrize("threads", [1, 3])
def test_loads_run_in_parallel_up_to_the_load_thread_count(tmp_path: Path, threads: int) -> None:
    repo = tmp_path / "repo"
    names = [f"slow{i}" for i in range(3)]
    for name in names:
        write_model(repo, name, identity_config(name, extra=SLOW_LOAD % "1.5"))
    server = start_server(
        [repo], tmp_path, "--model-control-mode=explicit", f"--model-load-thread-count={threads}"
    )
    try:
        loaders = [threading.Thread(target=_load, args=(server, name)) for name in names]
        for loader in loaders:
            loader.start()
        most = 0
        while any(loader.is_alive() for loader in loaders):
            most = max(most, sum(1 for row in _index(server) if row.get("state") == "LOADING"))
            time.sleep(0.05)
        for loader in loaders:
            loader.join()
        assert most == threads
        assert all(_state(server, name) == "READY" for name in names)
    finally:
        server.stop()


def test_unload_finishes_inflight_requests_and_refuses_new_ones(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    extra = 'parameters [ { key: "execute_delay_ms" value: { string_value: "1500" } } ]'
    write_model(repo, "slowexec", identity_config("slowexec", extra=extra))
    server = start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=slowexec")
    try:
        results: list[requests.Response] = []
        inflight = threading.Thread(target=lambda: results.append(_infer(server, "slowexec", 7.0)))
        inflight.start()
        time.sleep(0.5)
        unloader = threading.Thread(target=_unload, args=(server, "slowexec"))
        unloader.start()
        _wait_for(lambda: _state(server, "slowexec") in ("UNLOADING", "UNAVAILABLE"))
        refused = _infer(server, "slowexec")
        assert refused.status_code == 404
        assert refused.json()["error"] == "Request for unknown model: 'slowexec' has no available versions"
        inflight.join()
        unloader.join()
        assert results[0].status_code == 200 and results[0].json()["outputs"][0]["data"] == [7.0, 7.0]
        assert _state(server, "slowexec") == "UNAVAILABLE"
    finally:
        server.stop()


# -- warmup ---------------------------------------------------------------------------------------------

COUNTING_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.calls = 0
        self.first = None

    def execute(self, requests):
        responses = []
        for request in requests:
            self.calls += 1
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if self.first is None:
                self.first = data.copy()
            if float(data.flat[0]) == 99.0:
                raise pb_utils.TritonModelException("warmup input rejected")
            out = np.array([[float(self.calls), float(self.first.flat[0])]], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", out)]))
        return responses
"""


def _warmup_config(name: str, sample: str) -> str:
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 4\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        f"model_warmup [ {sample} ]\n"
    )


def test_warmup_runs_before_ready_and_a_failing_warmup_fails_the_load(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    zeros = '{ name: "zeros" batch_size: 1 count: 3 inputs { key: "INPUT0" value { data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } } }'
    from_file = '{ name: "file" batch_size: 2 inputs { key: "INPUT0" value { data_type: TYPE_FP32 dims: [ 2 ] input_data_file: "in0" } } }'
    write_model(repo, "warm", _warmup_config("warm", zeros), files={"1/model.py": COUNTING_MODEL})
    write_model(repo, "warmfile", _warmup_config("warmfile", from_file), files={"1/model.py": COUNTING_MODEL})
    (repo / "warmfile" / "warmup").mkdir()
    (repo / "warmfile" / "warmup" / "in0").write_bytes(np.array([5.0, 6.0], np.float32).tobytes())
    write_model(repo, "warmfail", _warmup_config("warmfail", from_file), files={"1/model.py": COUNTING_MODEL})
    (repo / "warmfail" / "warmup").mkdir()
    (repo / "warmfail" / "warmup" / "in0").write_bytes(np.array([99.0, 0.0], np.float32).tobytes())
    write_model(repo, "warmshort", _warmup_config("warmshort", from_file), files={"1/model.py": COUNTING_MODEL})
    (repo / "warmshort" / "warmup").mkdir()
    (repo / "warmshort" / "warmup" / "in0").write_bytes(b"\x00\x00")
    server = start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=warm")
    try:
        # Three warmup executions ran before the first request; statistics do not count them.
        first = _infer(server, "warm", 1.0).json()["outputs"][0]["data"]
        assert first == [4.0, 0.0]
        stats = requests.get(f"{server.base}/v2/models/warm/stats", timeout=5).json()["model_stats"][0]
        assert stats["inference_count"] == 1
        assert "is running warmup sample 'zeros'" in server.log()

        assert _load(server, "warmfile").status_code == 200
        assert _infer(server, "warmfile").json()["outputs"][0]["data"] == [2.0, 5.0]

        response = _load(server, "warmfail")
        assert response.status_code == 400
        error = response.json()["error"]
        assert "failed to run warmup sample 'file'" in error and "warmup input rejected" in error
        assert _state(server, "warmfail") == "UNAVAILABLE"

        response = _load(server, "warmshort")
        assert "failed to run warmup sample 'file': input 'INPUT0' expects 8 bytes" in response.json()["error"]
        assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
    finally:
        server.stop()


# -- poll mode --------------------------------------------------------------------------------------------


def test_poll_mode_picks_up_new_changed_and_removed_models(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "stays", identity_config("stays"))
    write_model(repo, "goes", identity_config("goes"))
    server = start_server([repo], tmp_path, "--model-control-mode=poll", "--repository-poll-secs=1")
    try:
        assert _load(server, "stays").status_code == 503
        # A new model.
        write_model(repo, "added", identity_config("added"))
        _wait_for(lambda: _state(server, "added") == "READY")
        assert _infer(server, "added").status_code == 200
        # A new version.
        (repo / "stays" / "2").mkdir()
        _wait_for(lambda: requests.get(f"{server.base}/v2/models/stays", timeout=5).json()["versions"] == ["2"])
        # A changed config.
        (repo / "stays" / "config.pbtxt").write_text(identity_config("stays", max_batch_size=2))
        _wait_for(
            lambda: requests.get(f"{server.base}/v2/models/stays/config", timeout=5).json()["max_batch_size"] == 2
        )
        # A broken config keeps the old model serving.
        (repo / "stays" / "config.pbtxt").write_text("max_batch_size: [")
        _wait_for(lambda: "failed to load 'stays'" in server.log())
        assert _infer(server, "stays").status_code == 200
        # A removed model.
        import shutil

        shutil.rmtree(repo / "goes")
        _wait_for(lambda: all(row["name"] != "goes" for row in _index(server)))
        assert _infer(server, "goes").status_code == 404
    finally:
        server.stop()


def test_http_client_load_with_config_override(override_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(override_server.http_url)
    client.load_model("ident", config=_config_json("ident", 4))
    assert client.get_model_config("ident")["max_batch_size"] == 4
    client.load_model("ident")
    assert client.get_model_config("ident")["max_batch_size"] == 8


LOADER_MODEL = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

CHILD = """
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor('OUTPUT0',
            pb_utils.get_input_tensor_by_name(r, 'INPUT0').as_numpy() + 100)]) for r in requests]
"""

class TritonPythonModel:
    def execute(self, requests):
        config = {
            "backend": "python", "max_batch_size": 8,
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        }
        pb_utils.load_model("child", config=json.dumps(config), files={"file:1/model.py": CHILD.encode()})
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            child = pb_utils.InferenceRequest(model_name="child", requested_output_names=["OUTPUT0"], inputs=[data])
            answer = child.exec()
            if answer.has_error():
                raise pb_utils.TritonModelException(answer.error().message())
            out = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", out)]))
        return responses
'''


def test_python_model_loads_another_from_override_files(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    config = identity_config("loader").replace('backend: "identity"', 'backend: "python"')
    write_model(repo, "loader", config, files={"1/model.py": LOADER_MODEL})
    server = start_server([repo], tmp_path, "--model-control-mode=explicit", "--load-model=loader")
    try:
        response = _infer(server, "loader", 1.0)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [101.0, 101.0]
        assert _state(server, "child") == "READY"
        assert not (repo / "child").exists()
    finally:
        server.stop()
