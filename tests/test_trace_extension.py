"""The trace extension end to end: settings over HTTP and gRPC, and the trace files of traced requests.

Every expected text, status and layout below is what the real Triton 2.51 answered or wrote for the
same request (``--trace-config triton,file=...``; its Python backend, ``tritonclient`` 2.51).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serverkit import RunningServer, identity_config, start_server, write_model

UPDATABLE = ("trace_level", "trace_rate", "trace_count", "log_frequency")
CLEAR = dict.fromkeys(UPDATABLE)
FILE_FIXED = "trace file location can not be updated through network protocol"
HTTP_ORDER = [
    "HTTP_RECV_START",
    "HTTP_RECV_END",
    "REQUEST_START",
    "QUEUE_START",
    "COMPUTE_START",
    "COMPUTE_INPUT_END",
    "COMPUTE_OUTPUT_START",
    "COMPUTE_END",
    "REQUEST_END",
    "INFER_RESPONSE_COMPLETE",
    "HTTP_SEND_START",
    "HTTP_SEND_END",
]


def settings(file: str, level: str = "TIMESTAMPS", rate: str = "1", count: str = "-1", freq: str = "0") -> dict[str, Any]:
    return {
        "trace_level": [level],
        "trace_rate": rate,
        "trace_count": count,
        "log_frequency": freq,
        "trace_file": file,
        "trace_mode": "triton",
    }


def _repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    write_model(repo, "ident", identity_config("ident"))
    write_model(repo, "other", identity_config("other"))
    return repo


def _post(server: RunningServer, body: Any, model: str = "") -> requests.Response:
    path = f"/v2/models/{model}/trace/setting" if model else "/v2/trace/setting"
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(server.base + path, data=data)


def _infer_http(server: RunningServer, model: str = "ident", request_id: str = "") -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    tensor = httpclient.InferInput("INPUT0", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))
    client.infer(model, [tensor], request_id=request_id)


def _infer_grpc(server: RunningServer, model: str = "ident", request_id: str = "") -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))
    client.infer(model, [tensor], request_id=request_id)


def _read(path: Path, wait: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + wait
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(json.loads(path.read_text()))


def _traces(entries: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Entries grouped by trace id, in file order."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        grouped.setdefault(entry["id"], []).append(entry)
    return grouped


def _names(entries: list[dict[str, Any]]) -> list[str]:
    return [entry["timestamps"][0]["name"] for entry in entries if "timestamps" in entry]


@pytest.fixture(scope="module")
def trace_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("trace")
    running = start_server(
        [_repo(tmp)],
        tmp,
        "--trace-config",
        f"triton,file={tmp / 'trace.json'}",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=1",
    )
    running.trace_file = str(tmp / "trace.json")  # type: ignore[attr-defined]
    yield running
    running.stop()


@pytest.fixture
def server(trace_server: RunningServer) -> Iterator[RunningServer]:
    """The trace server with its start-up settings back (global and per model) after each test."""
    yield trace_server
    for model in ("ident", "other"):
        _post(trace_server, CLEAR, model)
    _post(trace_server, CLEAR)


def test_default_settings_as_triton(tmp_path: Path) -> None:
    srv = start_server([_repo(tmp_path)], tmp_path)
    try:
        reply = requests.get(srv.base + "/v2/trace/setting")
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/json"
        assert reply.text == (
            '{"trace_level":["OFF"],"trace_rate":"1000","trace_count":"-1","log_frequency":"0",'
            '"trace_file":"","trace_mode":"triton"}'
        )
        reply = _post(srv, {"trace_level": ["TIMESTAMPS"]})
        assert (reply.status_code, reply.json()) == (
            400,
            {"error": "Attempting to set invalid trace setting :trace file name is not given"},
        )
        assert "trace" in requests.get(srv.base + "/v2").json()["extensions"]
    finally:
        srv.stop()


def test_startup_settings(server: RunningServer) -> None:
    file = server.trace_file  # type: ignore[attr-defined]
    assert requests.get(server.base + "/v2/trace/setting").json() == settings(file)
    assert requests.get(server.base + "/v2/models/ident/trace/setting").json() == settings(file)


@pytest.mark.parametrize(
    ("body", "status", "answer"),
    [
        ("", 500, "failed to parse the request JSON buffer: The document is empty. at 0"),
        ("xx", 500, "failed to parse the request JSON buffer: Invalid value. at 0"),
        ({"trace_rate": "abc"}, 400, "Unable to parse 'trace_rate', got: abc"),
        ({"trace_rate": 5}, 500, "attempt to access JSON non-string as string"),
        ({"trace_rate": "0"}, 400, "Attempting to set invalid trace setting :sample rate must be non-zero"),
        ({"trace_rate": "-1"}, 200, {"trace_rate": "4294967295"}),
        (
            {"trace_rate": "99999999999"},
            400,
            "Unable to parse 'trace_rate', value is out of range [ 0, 4294967295 ], got: 99999999999",
        ),
        ({"trace_rate": "12x"}, 200, {"trace_rate": "12"}),
        ({"trace_count": "-2"}, 400, "Unable to parse 'trace_count'. Expecting value >= -1, got:-2"),
        ({"trace_count": "abc"}, 400, "Unable to parse 'trace_count', got: abc"),
        ({"trace_count": "0"}, 400, "Attempting to set invalid trace setting :"),
        ({"log_frequency": "-1"}, 200, {"log_frequency": "4294967295"}),
        ({"log_frequency": "x"}, 400, "Unable to parse 'log_frequency', got: x"),
        ({"trace_level": "TIMESTAMPS"}, 500, "attempt to access JSON non-array as array"),
        ({"trace_level": ["BAD"]}, 200, {"trace_level": ["TIMESTAMPS"]}),
        ({"trace_level": [1]}, 500, "attempt to access JSON non-string as string"),
        ({"trace_level": ["OFF", "TIMESTAMPS"]}, 400, "Expect only one trace level 'OFF' is specified"),
        ({"trace_level": ["TENSORS", "TIMESTAMPS"]}, 200, {"trace_level": ["TIMESTAMPS", "TENSORS"]}),
        ({"trace_level": ["OFF"]}, 200, {"trace_level": ["OFF"]}),
        ({"trace_mode": "opentelemetry", "foo": "1"}, 200, {}),
        ({"trace_file": "/tmp/x.json"}, 501, FILE_FIXED),
        ({"trace_file": None}, 501, FILE_FIXED),
        ([], 200, {}),
        # Every value is checked before any is applied.
        ({"trace_rate": "3", "trace_count": "bad"}, 400, "Unable to parse 'trace_count', got: bad"),
    ],
)
def test_http_updates_and_errors(server: RunningServer, body: Any, status: int, answer: Any) -> None:
    file = server.trace_file  # type: ignore[attr-defined]
    reply = _post(server, body)
    assert reply.status_code == status
    assert reply.headers["content-type"] == "application/json"
    if isinstance(answer, str):
        assert reply.json() == {"error": answer}
        assert requests.get(server.base + "/v2/trace/setting").json() == settings(file)
    else:
        assert reply.json() == {**settings(file), **answer}


def test_http_model_paths(server: RunningServer) -> None:
    for method in ("GET", "POST"):
        reply = requests.request(method, server.base + "/v2/models/nosuch/trace/setting", data="{}")
        assert (reply.status_code, reply.json()) == (400, {"error": "Request for unknown model : nosuch"})
    assert requests.get(server.base + "/v2/models/ident/versions/1/trace/setting").status_code == 404
    assert requests.put(server.base + "/v2/trace/setting").status_code == 405


def test_model_override_and_null_clearing(server: RunningServer) -> None:
    file = server.trace_file  # type: ignore[attr-defined]
    assert _post(server, {"trace_rate": "3"}, "ident").json() == settings(file, rate="3")
    assert _post(server, {"trace_file": "/tmp/m.json"}, "ident").status_code == 501
    # The global setting and other models are untouched; a global change reaches what the model mirrors.
    assert requests.get(server.base + "/v2/models/other/trace/setting").json() == settings(file)
    assert _post(server, {"trace_rate": "7", "trace_count": "9"}).json() == settings(file, rate="7", count="9")
    ident = requests.get(server.base + "/v2/models/ident/trace/setting").json()
    assert ident == settings(file, rate="3", count="9")
    # null clears the model's value back to the global one, and the global one back to start-up.
    assert _post(server, {"trace_rate": None}, "ident").json() == settings(file, rate="7", count="9")
    assert _post(server, {"trace_rate": None, "trace_count": None}).json() == settings(file)
    assert requests.get(server.base + "/v2/models/ident/trace/setting").json() == settings(file)


def test_grpc_round_trip_and_errors(server: RunningServer) -> None:
    file = server.trace_file  # type: ignore[attr-defined]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    as_lists = {k: v if isinstance(v, list) else [v] for k, v in settings(file).items()}
    got = client.get_trace_settings(as_json=True)["settings"]
    assert {k: v["value"] for k, v in got.items()} == as_lists
    updated = client.update_trace_settings(model_name="ident", settings={"trace_rate": "5"}, as_json=True)
    assert updated["settings"]["trace_rate"]["value"] == ["5"]
    cleared = client.update_trace_settings(model_name="ident", settings={"trace_rate": None}, as_json=True)
    assert cleared["settings"]["trace_rate"]["value"] == ["1"]
    for model, change, code, message in [
        ("", {"trace_count": "-2"}, "INVALID_ARGUMENT", "Unable to parse 'trace_count'. Expecting value >= -1, got: -2"),
        ("", {"trace_rate": ["1", "2"]}, "INVALID_ARGUMENT", "expect only 1 value for 'trace_rate'"),
        ("", {"trace_rate": "x"}, "INVALID_ARGUMENT", "Unable to parse 'trace_rate', got: x"),
        ("", {"trace_file": "f"}, "UNIMPLEMENTED", FILE_FIXED),
        ("", {"trace_level": ["OFF", "TIMESTAMPS"]}, "INVALID_ARGUMENT", "Expect only one trace level 'OFF' is specified"),
        ("nosuch", {}, "INVALID_ARGUMENT", "Request for unknown model : nosuch"),
        ("", {"trace_count": "0"}, "INVALID_ARGUMENT", "Attempting to set invalid trace setting :"),
        (
            "",
            {"trace_count": "99999999999"},
            "INVALID_ARGUMENT",
            "Unable to parse 'trace_count', value is out of range [ -1, 2147483647 ], got: 99999999999",
        ),
        ("", {"trace_rate": "0"}, "INVALID_ARGUMENT", "Attempting to set invalid trace setting :sample rate must be non-zero"),
    ]:
        with pytest.raises(InferenceServerException) as caught:
            client.update_trace_settings(model_name=model or None, settings=change)
        assert (caught.value.status(), caught.value.message()) == (f"StatusCode.{code}", message)


def test_http_client_round_trip(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    file = server.trace_file  # type: ignore[attr-defined]
    assert client.get_trace_settings() == settings(file)
    assert client.update_trace_settings(settings={"log_frequency": "4"}) == settings(file, freq="4")
    assert client.update_trace_settings(model_name="other", settings={"trace_level": ["OFF"]}) == settings(
        file, level="OFF", freq="4"
    )
    assert client.get_trace_settings(model_name="ident") == settings(file, freq="4")


def _check_http_trace(entries: list[dict[str, Any]], request_id: str) -> None:
    assert entries[2] == {"id": entries[0]["id"], "model_name": "ident", "model_version": 1, "request_id": request_id}
    assert _names(entries) == HTTP_ORDER
    stamps = [e["timestamps"][0]["ns"] for e in entries if "timestamps" in e]
    assert stamps == sorted(stamps)
    assert abs(stamps[0] - time.monotonic_ns()) < 120 * 10**9  # Triton's steady clock: monotonic ns


def test_traced_requests_rate_count_and_files(tmp_path: Path) -> None:
    file = tmp_path / "t.json"
    srv = start_server(
        [_repo(tmp_path)], tmp_path, f"--trace-config=triton,file={file}", "--trace-config=level=TIMESTAMPS",
        "--trace-config=rate=2", "--trace-config=count=2",
    )
    try:
        for i in range(6):
            _infer_http(srv, request_id=f"r{i}")
        assert requests.get(srv.base + "/v2/trace/setting").json()["trace_count"] == "0"
        assert not file.exists()  # as Triton: at rate 2 a used-up count does not write at once
        # A new setting starts counting afresh; the old one's traces go to the file (log_frequency 0).
        _post(srv, {"trace_rate": "1", "trace_count": "-1", "log_frequency": "1"})
        traces = _traces(_read(file))
        assert len(traces) == 2  # requests 2 and 4 of 6
        ids = sorted(traces)
        _check_http_trace(traces[ids[0]], "r1")
        _check_http_trace(traces[ids[1]], "r3")
        # log_frequency=1 writes each trace to the next numbered file.
        _infer_grpc(srv, request_id="g1")
        grpc_trace = _read(Path(f"{file}.0"))
        assert grpc_trace[0] == {
            "id": grpc_trace[0]["id"], "model_name": "ident", "model_version": 1, "request_id": "g1"
        }
        assert _names(grpc_trace) == [*HTTP_ORDER[2:-2], "GRPC_SEND_START", "GRPC_SEND_END"]
        _infer_http(srv)  # no request id: no request_id key, as in Triton
        plain = _read(Path(f"{file}.1"))
        assert plain[2] == {"id": plain[0]["id"], "model_name": "ident", "model_version": 1}
        # At rate 1 a used-up count writes at once, whatever log_frequency says.
        _post(srv, {"trace_count": "2", "log_frequency": "0"})
        _infer_http(srv, request_id="c1")
        _infer_http(srv, request_id="c2")
        assert len(_traces(_read(Path(f"{file}.2")))) == 2
    finally:
        srv.stop()


def test_log_frequency_zero_writes_at_shutdown(tmp_path: Path) -> None:
    file = tmp_path / "t.json"
    srv = start_server(
        [_repo(tmp_path)], tmp_path, "--trace-file", str(file), "--trace-level=TIMESTAMPS", "--trace-rate=1",
    )
    try:
        assert "Warning: '--trace-file' has been deprecated and will be removed in future releases." in srv.log()
        assert requests.get(srv.base + "/v2/trace/setting").json() == settings(str(file))
        _infer_http(srv, request_id="a")
        _infer_grpc(srv, request_id="b")
        assert not file.exists()
    finally:
        assert srv.stop() == 0
    traces = _traces(_read(file))
    assert len(traces) == 2
    assert [t[2 if "HTTP_RECV_START" in _names(t) else 0]["request_id"] for t in traces.values()] == ["a", "b"]


def test_per_model_tracing_only(tmp_path: Path) -> None:
    file = tmp_path / "t.json"
    srv = start_server([_repo(tmp_path)], tmp_path, f"--trace-config=triton,file={file}", "--trace-config=rate=1")
    try:
        _post(srv, {"trace_level": ["TIMESTAMPS"], "log_frequency": "1"}, "other")
        _infer_http(srv, "ident")
        _infer_http(srv, "other")
        entries = _read(Path(f"{file}.0"))
        assert {e["model_name"] for e in entries if "model_name" in e} == {"other"}
        # Clearing every value of the model drops its own setting: tracing is off again.
        _post(srv, CLEAR, "other")
        assert requests.get(srv.base + "/v2/models/other/trace/setting").json()["trace_level"] == ["OFF"]
        _infer_http(srv, "other")
    finally:
        srv.stop()
    assert not Path(f"{file}.1").exists()


def test_grpc_trace_on_grpcio_transport(tmp_path: Path) -> None:
    file = tmp_path / "t.json"
    srv = start_server(
        [_repo(tmp_path)], tmp_path, "--grpc-transport=grpcio", f"--trace-config=triton,file={file}",
        "--trace-config=level=TIMESTAMPS", "--trace-config=rate=1", "--trace-config=triton,log-frequency=1",
    )
    try:
        _infer_grpc(srv, request_id="g")
        entries = _read(Path(f"{file}.0"))
        assert _names(entries) == [*HTTP_ORDER[2:-2], "GRPC_SEND_START", "GRPC_SEND_END"]
        stamps = [e["timestamps"][0]["ns"] for e in entries if "timestamps" in e]
        assert stamps == sorted(stamps)
    finally:
        srv.stop()
