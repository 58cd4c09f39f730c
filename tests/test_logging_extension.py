"""The logging extension end to end: ``/v2/logging`` and gRPC ``LogSettings`` as Triton 2.51 answers them.

Every expected text and status below is what the real Triton 2.51 answered to the same request.
Changes must reach the server's own log: verbose batch lines, the info/warning/error switches and the
line format.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serverkit import RunningServer, identity_config, start_server, write_model

DEFAULTS: dict[str, Any] = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "default",
}
LOG_FILE_FIXED = "log file location can not be updated through network protocol"
NON_BOOLEAN = "attempt to access JSON non-boolean as boolean"
NON_UINT = "attempt to access JSON non-unsigned-integer as unsigned-integer"
NON_STRING = "attempt to access JSON non-string as string"
ISO8601_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ [IWE] \d+ \S+:\d+\] ", re.MULTILINE)


@pytest.fixture(scope="module")
def log_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Explicit mode; loading ``scanned`` logs a warning (its ``extra`` folder) and an info line."""
    repo = tmp_path_factory.mktemp("logging_repo")
    write_model(repo, "batched", identity_config("batched", extra="dynamic_batching { }"))
    scanned = write_model(repo, "scanned", identity_config("scanned"))
    (scanned / "extra").mkdir()
    running = start_server(
        [repo], tmp_path_factory.mktemp("logging_server"), "--model-control-mode=explicit", "--load-model=batched"
    )
    yield running
    running.stop()


@pytest.fixture
def server(log_server: RunningServer) -> Iterator[RunningServer]:
    """The logging server, with Triton's default settings back after each test."""
    yield log_server
    reset = {key: value for key, value in DEFAULTS.items() if key != "log_file"}
    assert requests.post(log_server.base + "/v2/logging", json=reset, timeout=10).json() == DEFAULTS


def _post(server: RunningServer, body: str) -> requests.Response:
    return requests.post(server.base + "/v2/logging", data=body, timeout=10)


def _settings(server: RunningServer) -> dict[str, Any]:
    response = requests.get(server.base + "/v2/logging", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    return dict(response.json())


def _grpc_dict(response: Any) -> dict[str, Any]:
    """A LogSettingsResponse as plain values, checking each uses the field Triton uses."""
    fields = {bool: "bool_param", int: "uint32_param", str: "string_param"}
    out = {}
    for key, value in response.settings.items():
        field = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, field)
        assert field == fields[type(DEFAULTS[key])], key
    return out


def _stub(server: RunningServer) -> Any:
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_url))


def _log_settings(server: RunningServer, **settings: tuple[str, Any]) -> Any:
    """Call LogSettings with explicitly typed values: ``key=("bool_param", True)``."""
    request = service_pb2.LogSettingsRequest()
    for key, (field, value) in settings.items():
        setattr(request.settings[key], field, value)
    return _stub(server).LogSettings(request, timeout=10)


def _infer(server: RunningServer, model: str = "batched") -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    response = requests.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text


def _load_scanned(server: RunningServer) -> None:
    response = requests.post(f"{server.base}/v2/repository/models/scanned/load", timeout=60)
    assert response.status_code == 200, response.text


def _new_log(server: RunningServer, action: Callable[[], None], wait_for: str | None = None) -> str:
    """What the server logs while ``action`` runs (until ``wait_for`` appears, when given)."""
    before = len(server.log())
    action()
    deadline = time.monotonic() + 10
    while True:
        text = server.log()[before:]
        if wait_for is None or wait_for in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


# -- reading ---------------------------------------------------------------------------------------


def test_logging_is_advertised_and_the_settings_read_the_same_everywhere(server: RunningServer) -> None:
    assert requests.get(server.base + "/v2", timeout=10).json()["extensions"][-1] == "logging"
    assert "logging" in grpcclient.InferenceServerClient(server.grpc_url).get_server_metadata().extensions
    assert _settings(server) == DEFAULTS
    assert list(_settings(server)) == list(DEFAULTS)  # Triton's key order
    assert httpclient.InferenceServerClient(server.http_url).get_log_settings() == DEFAULTS
    assert _grpc_dict(grpcclient.InferenceServerClient(server.grpc_url).get_log_settings()) == DEFAULTS


def test_log_file_is_the_servers_log_file(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    log_file = tmp_path / "conch.log"
    running = start_server([repo], tmp_path, f"--log-file={log_file}", "--log-format=ISO8601", "--log-verbose=2")
    try:
        expected = {**DEFAULTS, "log_file": str(log_file), "log_format": "ISO8601", "log_verbose_level": 2}
        assert _settings(running) == expected
        assert _grpc_dict(grpcclient.InferenceServerClient(running.grpc_url).get_log_settings()) == expected
        assert ISO8601_LINE.search(log_file.read_text())
    finally:
        running.stop()


# -- changing ----------------------------------------------------------------------------------------


def test_http_post_changes_some_settings_and_answers_all(server: RunningServer) -> None:
    response = _post(server, '{"log_info": false, "log_verbose_level": 3}')
    assert response.status_code == 200
    changed = {**DEFAULTS, "log_info": False, "log_verbose_level": 3}
    assert response.json() == changed
    assert _settings(server) == changed
    assert _grpc_dict(grpcclient.InferenceServerClient(server.grpc_url).get_log_settings()) == changed
    client = httpclient.InferenceServerClient(server.http_url)
    changed.update(log_format="ISO8601", log_error=False)
    assert client.update_log_settings({"log_format": "ISO8601", "log_error": False}) == changed
    assert client.get_log_settings() == changed


def test_grpc_changes_some_settings_and_answers_all(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    response = client.update_log_settings({"log_warning": False, "log_verbose_level": 1, "log_format": "ISO8601"})
    changed = {**DEFAULTS, "log_warning": False, "log_verbose_level": 1, "log_format": "ISO8601"}
    assert _grpc_dict(response) == changed
    assert _settings(server) == changed
    as_json = client.update_log_settings({}, as_json=True)["settings"]
    assert as_json["log_warning"] == {"bool_param": False}
    assert as_json["log_verbose_level"] == {"uint32_param": 1}
    assert as_json["log_format"] == {"string_param": "ISO8601"}


@pytest.mark.parametrize(
    ("body", "level"),
    [("4294967297", 1), ("2147483647", 2147483647), ("2147483648", 0), ("18446744073709551615", 0)],
)
def test_verbose_level_is_narrowed_as_triton_narrows_it(server: RunningServer, body: str, level: int) -> None:
    response = _post(server, f'{{"log_verbose_level": {body}}}')
    assert (response.status_code, response.json()["log_verbose_level"]) == (200, level)


def test_grpc_verbose_level_past_int32_reads_back_as_zero(server: RunningServer) -> None:
    response = _log_settings(server, log_verbose_level=("uint32_param", 2147483648))
    assert _grpc_dict(response)["log_verbose_level"] == 0


@pytest.mark.parametrize("body", ["{}", '{"foo": 1}', "[1]", '"x"', "null", '{"log_info": null, "log_file": null}'])
def test_http_documents_without_changes_answer_the_settings(server: RunningServer, body: str) -> None:
    response = _post(server, body)
    assert (response.status_code, response.json()) == (200, DEFAULTS)


def test_grpc_unknown_keys_are_ignored(server: RunningServer) -> None:
    assert _grpc_dict(_log_settings(server, foo=("uint32_param", 1))) == DEFAULTS


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ('{"log_file": "/tmp/x"}', 501, LOG_FILE_FIXED),
        ('{"log_file": 5}', 501, LOG_FILE_FIXED),
        ('{"log_info": false, "log_file": ""}', 501, LOG_FILE_FIXED),
        ('{"log_info": "yes"}', 500, NON_BOOLEAN),
        ('{"log_warning": 1}', 500, NON_BOOLEAN),
        ('{"log_error": 0}', 500, NON_BOOLEAN),
        ('{"log_verbose_level": -1}', 500, NON_UINT),
        ('{"log_verbose_level": 1.0}', 500, NON_UINT),
        ('{"log_verbose_level": "1"}', 500, NON_UINT),
        ('{"log_verbose_level": true}', 500, NON_UINT),
        ('{"log_verbose_level": 18446744073709551616}', 500, NON_UINT),
        ('{"log_format": 1}', 500, NON_STRING),
        ('{"log_format": "bad"}', 503, "invalid argument for --log_format, got: bad"),
        ('{"log_format": "iso8601"}', 503, "invalid argument for --log_format, got: iso8601"),
        ("", 500, "failed to parse the request JSON buffer: The document is empty. at 0"),
        ("notjson", 500, "failed to parse the request JSON buffer: Invalid value. at 1"),
    ],
)
def test_http_errors_are_tritons(server: RunningServer, body: str, status: int, message: str) -> None:
    response = _post(server, body)
    assert (response.status_code, response.json()) == (status, {"error": message})
    assert response.headers["Content-Type"] == "application/json"
    assert _settings(server) == DEFAULTS


@pytest.mark.parametrize(
    ("body", "applied"),
    [
        ('{"log_verbose_level": -1, "log_info": false}', {"log_info": False}),
        ('{"log_warning": false, "log_error": "x"}', {"log_warning": False}),
        ('{"log_error": false, "log_warning": "x"}', {}),
        ('{"log_format": "bad", "log_verbose_level": 3}', {"log_verbose_level": 3}),
    ],
)
def test_http_error_keeps_the_changes_triton_applied_before_it(
    server: RunningServer, body: str, applied: dict[str, Any]
) -> None:
    assert _post(server, body).status_code in (500, 503)
    assert _settings(server) == {**DEFAULTS, **applied}


def test_http_wrong_method_and_path(server: RunningServer) -> None:
    for method in ("PUT", "DELETE"):
        response = requests.request(method, server.base + "/v2/logging", timeout=10)
        assert (response.status_code, response.json()) == (405, {"error": "Method Not Allowed"})
    for path in ("/v2/logging/", "/v2/logging/x"):
        response = requests.get(server.base + path, timeout=10)
        assert (response.status_code, response.json()) == (404, {"error": "Not Found"})
    response = requests.get(server.base + "/v2/logging", data="notjson", timeout=10)  # a GET's body is ignored
    assert (response.status_code, response.json()) == (200, DEFAULTS)


def test_tritonclient_http_sees_tritons_errors(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as info:
        client.update_log_settings({"log_file": "/tmp/other.log"})
    assert (info.value.status(), info.value.message()) == ("501", LOG_FILE_FIXED)
    with pytest.raises(InferenceServerException) as info:
        client.update_log_settings({"log_format": "json"})
    assert (info.value.status(), info.value.message()) == ("503", "invalid argument for --log_format, got: json")


@pytest.mark.parametrize(
    ("settings", "code", "message"),
    [
        ({"log_file": ("string_param", "/tmp/x")}, "UNIMPLEMENTED", LOG_FILE_FIXED),
        ({"log_file": ("uint32_param", 1)}, "UNIMPLEMENTED", LOG_FILE_FIXED),
        ({"log_info": ("uint32_param", 1)}, "INVALID_ARGUMENT", "expect boolean for 'log_info'"),
        ({"log_warning": ("string_param", "x")}, "INVALID_ARGUMENT", "expect boolean for 'log_warning'"),
        ({"log_error": ("uint32_param", 0)}, "INVALID_ARGUMENT", "expect boolean for 'log_error'"),
        ({"log_verbose_level": ("bool_param", True)}, "INVALID_ARGUMENT", "expect int32 for 'log_verbose_level'"),
        ({"log_verbose_level": ("string_param", "1")}, "INVALID_ARGUMENT", "expect int32 for 'log_verbose_level'"),
        ({"log_format": ("bool_param", True)}, "INVALID_ARGUMENT", "expect string for 'log_format'"),
        ({"log_format": ("string_param", "bad")}, "INVALID_ARGUMENT", "invalid argument for log_format, got: bad"),
    ],
)
def test_grpc_errors_are_tritons(
    server: RunningServer, settings: dict[str, tuple[str, Any]], code: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _log_settings(server, **settings)
    assert (info.value.code(), info.value.details()) == (getattr(grpc.StatusCode, code), message)  # type: ignore[attr-defined]
    assert _settings(server) == DEFAULTS


def test_tritonclient_grpc_sees_tritons_errors(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for settings, status, message in [
        ({"log_file": "/tmp/x"}, "StatusCode.UNIMPLEMENTED", LOG_FILE_FIXED),
        ({"log_info": None}, "StatusCode.INVALID_ARGUMENT", "expect boolean for 'log_info'"),  # no value set
        ({"log_format": "Default"}, "StatusCode.INVALID_ARGUMENT", "invalid argument for log_format, got: Default"),
    ]:
        with pytest.raises(InferenceServerException) as info:
            client.update_log_settings(settings)
        assert (info.value.status(), info.value.message()) == (status, message)
    # As in Triton, a setting applied before the failing one stays.
    with pytest.raises(InferenceServerException):
        client.update_log_settings({"log_info": False, "log_format": "bad"})
    assert _settings(server) == {**DEFAULTS, "log_info": False}


# -- the server's log follows ----------------------------------------------------------------------


def test_verbose_level_turns_the_batchers_lines_on_and_off(server: RunningServer) -> None:
    line = "batch for 'batched': 1 requests, batch size 1"
    assert line not in _new_log(server, lambda: _infer(server))
    grpcclient.InferenceServerClient(server.grpc_url).update_log_settings({"log_verbose_level": 1})
    assert line in _new_log(server, lambda: _infer(server), wait_for=line)
    assert _post(server, '{"log_verbose_level": 0}').status_code == 200
    assert line not in _new_log(server, lambda: _infer(server))


def test_info_and_warning_switches_each_hide_their_own_lines(server: RunningServer) -> None:
    info = "successfully loaded 'scanned'"
    warning = "ignore version directory 'extra' which fails to convert to integral number"
    text = _new_log(server, lambda: _load_scanned(server), wait_for=info)
    assert info in text and warning in text
    assert _post(server, '{"log_info": false}').status_code == 200
    text = _new_log(server, lambda: _load_scanned(server), wait_for=warning)
    assert warning in text and info not in text
    assert _post(server, '{"log_info": true, "log_warning": false}').status_code == 200
    text = _new_log(server, lambda: _load_scanned(server), wait_for=info)
    assert info in text and warning not in text


def test_log_info_off_keeps_verbose_lines(server: RunningServer) -> None:
    assert _post(server, '{"log_info": false, "log_verbose_level": 1}').status_code == 200
    line = "batch for 'batched'"
    assert line in _new_log(server, lambda: _infer(server), wait_for=line)


def test_log_format_switches_the_line_format(server: RunningServer) -> None:
    info = "successfully loaded 'scanned'"
    text = _new_log(server, lambda: _load_scanned(server), wait_for=info)
    assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ models\.py:\d+\] \"successfully loaded", text, re.MULTILINE)
    grpcclient.InferenceServerClient(server.grpc_url).update_log_settings({"log_format": "ISO8601"})
    text = _new_log(server, lambda: _load_scanned(server), wait_for=info)
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I \d+ models\.py:\d+\] \"successfully loaded", text, re.MULTILINE)


def test_inference_is_unaffected_by_the_settings(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.update_log_settings({"log_info": False, "log_warning": False, "log_error": False})
    inp = grpcclient.InferInput("INPUT0", [1, 3], "FP32")
    inp.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))
    assert client.infer("batched", [inp]).as_numpy("OUTPUT0").tolist() == [[1, 2, 3]]
