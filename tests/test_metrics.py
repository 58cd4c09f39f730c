"""Prometheus metrics and statistics end to end: values after a known sequence, load and unload, flags."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serverkit import RunningServer, free_port, identity_config, start_server, write_model

HELP = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count": "Number of model executions performed (does not include cached requests)",
    "nv_inference_request_duration_us":
        "Cumulative inference request duration in microseconds (includes cached requests)",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds (includes cached requests)",
    "nv_inference_pending_request_count": "Instantaneous number of pending requests awaiting execution per-model.",
    "nv_model_load_duration_secs": "Model load time in seconds",
    "nv_cpu_utilization": "CPU utilization rate [0.0 - 1.0]",
    "nv_cpu_memory_total_bytes": "CPU total memory (RAM), in bytes",
}


def _metrics(server: RunningServer) -> str:
    response = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    return response.text


def _value(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


def _infer(url: str, model: str, rows: int) -> None:
    client = httpclient.InferenceServerClient(url)
    data = np.ones((rows, 2), np.float32)
    inp = httpclient.InferInput("INPUT0", [rows, 2], "FP32")
    inp.set_data_from_numpy(data)
    assert np.array_equal(client.infer(model, [inp]).as_numpy("OUTPUT0"), data)


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("metrics_repo")
    write_model(repo, "counted", identity_config("counted", extra="dynamic_batching { }"))
    write_model(repo, "other", identity_config("other"))
    running = start_server([repo], tmp_path_factory.mktemp("metrics"), "--model-control-mode=explicit",
                           "--load-model=counted", "--metrics-interval-ms=100")
    yield running
    running.stop()


def test_series_exist_at_zero_on_load(metrics_server: RunningServer) -> None:
    text = _metrics(metrics_server)
    for name, help_text in HELP.items():
        assert f"# HELP {name} {help_text}\n" in text, name
    assert "# TYPE nv_inference_request_success counter" in text
    assert "# TYPE nv_inference_pending_request_count gauge" in text
    requests.post(f"{metrics_server.base}/v2/repository/models/other/load", timeout=30).raise_for_status()
    text = _metrics(metrics_server)
    labels = {"model": "other", "version": "1"}
    for name in ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
                 "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_pending_request_count"):
        assert _value(text, name, **labels) == 0, name
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        assert _value(text, "nv_inference_request_failure", reason=reason, **labels) == 0
    load = _value(text, "nv_model_load_duration_secs", **labels)
    assert load is not None and load > 0
    assert "Started Metrics Service at 127.0.0.1:" in metrics_server.log()


def test_values_after_a_known_sequence(metrics_server: RunningServer) -> None:
    for rows in (1, 2, 3):
        _infer(metrics_server.http_url, "counted", rows)
    text = _metrics(metrics_server)
    labels = {"model": "counted", "version": "1"}
    assert _value(text, "nv_inference_request_success", **labels) == 3
    assert _value(text, "nv_inference_count", **labels) == 6
    assert _value(text, "nv_inference_exec_count", **labels) == 3
    assert _value(text, "nv_inference_request_failure", reason="BACKEND", **labels) == 0
    duration = _value(text, "nv_inference_request_duration_us", **labels)
    assert duration is not None and duration > 0
    assert _value(text, "conch_inference_batch_size_bucket", le="1", **labels) == 1
    assert _value(text, "conch_inference_batch_size_bucket", le="2", **labels) == 2
    assert _value(text, "conch_inference_batch_size_bucket", le="+Inf", **labels) == 3
    assert _value(text, "conch_inference_batch_size_sum", **labels) == 6
    # The statistics extension agrees, over HTTP and gRPC.
    http_stats = requests.get(f"{metrics_server.base}/v2/models/counted/stats", timeout=10).json()["model_stats"][0]
    assert (http_stats["inference_count"], http_stats["execution_count"]) == (6, 3)
    assert http_stats["inference_stats"]["success"]["count"] == 3
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in http_stats["batch_stats"]} == {1: 1, 2: 1, 3: 1}
    grpc_stats = grpcclient.InferenceServerClient(metrics_server.grpc_url).get_inference_statistics(
        "counted", as_json=True)["model_stats"][0]
    assert int(grpc_stats["inference_count"]) == 6
    assert int(grpc_stats["execution_count"]) == 3
    assert _value(text, "nv_cpu_memory_total_bytes") is not None
    try:
        import pynvml  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        assert "nv_gpu_utilization" not in text  # no NVML: absent, without error


def test_series_removed_on_unload(metrics_server: RunningServer) -> None:
    requests.post(f"{metrics_server.base}/v2/repository/models/other/load", timeout=30).raise_for_status()
    assert 'model="other"' in _metrics(metrics_server)
    requests.post(f"{metrics_server.base}/v2/repository/models/other/unload", timeout=30).raise_for_status()
    text = _metrics(metrics_server)
    assert 'model="other"' not in text
    assert 'model="counted"' in text


def test_other_paths_answer_empty(metrics_server: RunningServer) -> None:
    response = requests.get(f"http://127.0.0.1:{metrics_server.metrics_port}/v2/health/live", timeout=10)
    assert (response.status_code, response.content) == (200, b"")


def test_metrics_config_summaries_and_no_counters(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", identity_config("m"))
    server = start_server([repo], tmp_path, "--metrics-config=summary_latencies=true",
                          "--metrics-config", "counter_latencies=false")
    try:
        for _ in range(4):
            _infer(server.http_url, "m", 1)
        text = _metrics(server)
    finally:
        server.stop()
    assert "nv_inference_request_duration_us" not in text
    assert "# TYPE nv_inference_request_summary_us summary" in text
    assert _value(text, "nv_inference_request_summary_us_count", model="m", version="1") == 4
    assert _value(text, "nv_inference_queue_summary_us", model="m", version="1", quantile="0.99") is not None


def test_metrics_config_first_response_histogram(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", identity_config("m"))
    write_model(repo, "slow", identity_config(
        "slow", extra='parameters [ { key: "execute_delay_ms" value: { string_value: "150" } } ]'))
    server = start_server([repo], tmp_path, "--metrics-config=histogram_latencies=true")
    try:
        for _ in range(3):
            _infer(server.http_url, "m", 1)
        _infer(server.http_url, "slow", 1)
        text = _metrics(server)
    finally:
        server.stop()
    name = "nv_inference_first_response_histogram_ms"
    assert f"# TYPE {name} histogram" in text
    assert _value(text, f"{name}_count", model="m", version="1") == 3
    assert _value(text, f"{name}_bucket", model="m", version="1", le="100") == 3
    # the slow model's request took over 150 ms: above the first bound, within the second
    assert _value(text, f"{name}_bucket", model="slow", version="1", le="100") == 0
    assert _value(text, f"{name}_bucket", model="slow", version="1", le="500") == 1
    assert _value(text, f"{name}_bucket", model="slow", version="1", le="+Inf") == 1


def test_allow_metrics_false_opens_no_port(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", identity_config("m"))
    server = start_server([repo], tmp_path, "--allow-metrics=false")
    try:
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5)
        assert "Started Metrics Service" not in server.log()
        assert "--allow-metrics" not in server.log()  # implemented: no "not implemented" warning
    finally:
        server.stop()


def test_metrics_port_in_use_fails_start_up(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "m", identity_config("m"))
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        result = subprocess.run(
            [sys.executable, "-m", "conch", "serve", f"--model-repository={repo}", "--http-address=127.0.0.1",
             f"--http-port={free_port()}", f"--grpc-port={free_port()}", "--grpc-address=127.0.0.1",
             f"--metrics-port={port}"],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode != 0
    assert f"failed to start Metrics service: Unavailable - Socket '127.0.0.1:{port}' already in use" in (
        result.stdout + result.stderr
    )


def test_bad_metrics_config_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conch", "serve", "--model-repository=/nonexistent", "--metrics-config=nope=1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "--metrics-config 'nope=1': unknown key 'nope'" in result.stderr
