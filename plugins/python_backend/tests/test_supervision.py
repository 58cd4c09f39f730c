"""Worker processes: crashes, hangs, readiness, unload, shared-memory limits, cancellation."""

from __future__ import annotations

import os
import queue
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from pymodels import ADD_SUB, ADD_SUB_CONFIG, CRASHER, READY_FILE, scalar_model, write_py_model
from test_models import add_sub_inputs, client
from tritonclient.utils import InferenceServerException

from serverkit import RunningServer, start_server


def _pid(url: str, model: str = "crasher", value: int = 1, protocol: str = "http", grpc_url: str = "") -> int:
    """Ask ``crasher`` for its worker's pid (value 13 or 11 makes the worker kill itself instead)."""
    if protocol == "grpc":
        c: Any = grpcclient.InferenceServerClient(grpc_url)
        inp: Any = grpcclient.InferInput("IN", [1, 1], "INT32")
    else:
        c = httpclient.InferenceServerClient(url, network_timeout=60)
        inp = httpclient.InferInput("IN", [1, 1], "INT32")
    inp.set_data_from_numpy(np.array([[value]], np.int32))
    return int(c.infer(model, [inp]).as_numpy("OUT")[0, 0])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone once reaped, or when its state is Z.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def _wait_ready(server: RunningServer, model: str, want: bool = True, timeout: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        ok = requests.get(f"{server.base}/v2/models/{model}/ready", timeout=5).status_code == 200
        if ok == want:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{model} ready={not want} for {timeout}s")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(("value", "cause"), [(13, "exit code 3"), (11, "killed by signal SIGKILL")])
def test_worker_death_fails_request_then_restarts(py_server: RunningServer, value: int, cause: str, protocol: str) -> None:
    _wait_ready(py_server, "crasher")
    first = _pid(py_server.http_url, protocol=protocol, grpc_url=py_server.grpc_url)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as info:
        _pid(py_server.http_url, value=value, protocol=protocol, grpc_url=py_server.grpc_url)
    assert time.monotonic() - started < 10, "in-flight requests must fail at once"
    assert f"(pid {first}) stopped unexpectedly ({cause}) while running this request" in info.value.message()
    assert info.value.status() == ("500" if protocol == "http" else "StatusCode.INTERNAL")
    # Other models are unaffected while it restarts.
    inputs, a, b = add_sub_inputs(protocol)
    np.testing.assert_allclose(client(py_server, protocol).infer("add_sub", inputs).as_numpy("OUTPUT0"), a + b)
    _wait_ready(py_server, "crasher")
    second = _pid(py_server.http_url, protocol=protocol, grpc_url=py_server.grpc_url)
    assert second != first and _gone(first)
    assert "stopped unexpectedly" in py_server.log() and "restarted the worker" in py_server.log()


def test_cancelled_stream_reaches_is_cancelled(py_server: RunningServer) -> None:
    c = grpcclient.InferenceServerClient(py_server.grpc_url)
    results: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    count = grpcclient.InferInput("COUNT", [1], "INT32")
    count.set_data_from_numpy(np.array([200], np.int32))
    delay = grpcclient.InferInput("DELAY_MS", [1], "INT32")
    delay.set_data_from_numpy(np.array([10], np.int32))
    c.async_stream_infer("repeat", [count, delay], request_id="cancel-me")
    results.get(timeout=30)
    c.stop_stream(cancel_requests=True)
    deadline = time.monotonic() + 10
    while "repeat: cancelled after" not in py_server.log():
        assert time.monotonic() < deadline, "the model never saw is_cancelled()"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:
    repo = tmp_path_factory.mktemp("watched_repo")
    marker = repo / "not-ready"
    write_py_model(repo, "crasher", scalar_model("crasher", "TYPE_INT32", "TYPE_INT64"), CRASHER)
    extra = f'parameters {{ key: "marker" value: {{ string_value: "{marker}" }} }}'
    write_py_model(repo, "ready_file", scalar_model("ready_file", "TYPE_INT32", "TYPE_INT64", extra=extra), READY_FILE)
    server = start_server(
        [repo], tmp_path_factory.mktemp("watched"), "--backend-config=python,stub-timeout-seconds=2",
        "--model-control-mode=explicit", "--load-model=*",
    )  # fmt: skip
    yield server
    server.stop()


def test_hung_worker_is_found_by_health_ping_and_restarted(watched: RunningServer) -> None:
    first = _pid(watched.http_url)
    os.kill(first, signal.SIGSTOP)
    try:
        _wait_ready(watched, "crasher", want=False, timeout=15)
        _wait_ready(watched, "crasher", want=True, timeout=30)
    finally:
        if not _gone(first):
            os.kill(first, signal.SIGCONT)
    assert _pid(watched.http_url) != first
    assert "no answer to a health ping within 2 s; killed" in watched.log()


def test_model_is_ready_hook_feeds_readiness(watched: RunningServer) -> None:
    marker = Path(watched.repos[0]) / "not-ready"
    _wait_ready(watched, "ready_file")
    marker.write_text("")
    try:
        _wait_ready(watched, "ready_file", want=False, timeout=15)
        assert requests.get(f"{watched.base}/v2/health/ready", timeout=5).status_code != 200
        index = requests.post(f"{watched.base}/v2/repository/index", timeout=5).json()
        row = next(r for r in index if r["name"] == "ready_file")
        assert row["reason"] == "is_ready() of Python model instance 'ready_file_0' returned False"
    finally:
        marker.unlink()
    _wait_ready(watched, "ready_file", timeout=15)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_unload_ends_the_worker_and_memory_stays_steady(watched: RunningServer) -> None:
    http = httpclient.InferenceServerClient(watched.http_url, network_timeout=60)
    grpc = grpcclient.InferenceServerClient(watched.grpc_url)
    rss = []
    for cycle in range(30):
        c: Any = http if cycle % 2 else grpc  # the repository API of both protocols
        if not c.is_model_ready("crasher"):
            c.load_model("crasher")
        pid = _pid(watched.http_url)
        c.unload_model("crasher")
        assert _gone(pid), f"cycle {cycle}: worker {pid} still running after unload"
        rss.append(_rss_kb(watched.process.pid))
    growth = rss[-1] - rss[4]
    assert growth < 16 * 1024, f"server RSS grew {growth} kB over 25 load/unload cycles: {rss}"
    http.load_model("crasher")


def test_too_small_dev_shm_is_a_clear_load_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_py_model(repo, "add_sub", ADD_SUB_CONFIG.format(name="add_sub", extra=""), ADD_SUB)
    server = start_server(
        [repo], tmp_path, f"--backend-config=python,shm-default-byte-size={1 << 50}",
        "--model-control-mode=explicit", "--load-model=add_sub", wait_ready=False,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            index = requests.post(f"{server.base}/v2/repository/index", timeout=5).json()
            row = next((r for r in index if r["name"] == "add_sub"), {})
            if row.get("state") == "UNAVAILABLE":
                break
            assert time.monotonic() < deadline, index
            time.sleep(0.1)
        assert "not enough shared memory for the Python backend" in row["reason"]
        assert "--shm-size" in row["reason"]
    finally:
        server.stop()
