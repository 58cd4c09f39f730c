"""``pb_utils.MetricFamily`` custom metrics on the server's metrics endpoint, from workers and in-process models."""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from test_models import PROTOCOLS, client, tensor

from serverkit import RunningServer

MODELS = ["metrics", "metrics_inproc"]


def _scrape(server: RunningServer) -> str:
    response = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def _value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}``, or None when the endpoint does not show it."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        if dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")) == labels:
            return float(match.group(3))
    return None


def _infer(server: RunningServer, protocol: str, model: str, value: float, case: str = "") -> dict[str, Any]:
    inputs = [tensor(protocol, "IN", np.array([value], np.float32))]
    result = client(server, protocol).infer(model, inputs, parameters={"case": case} if case else None)
    return {
        "count": float(result.as_numpy("COUNT")[0]),
        "gauge": float(result.as_numpy("GAUGE")[0]),
        "error": result.as_numpy("ERROR")[0].decode(),
    }


def _series(text: str, model: str) -> dict[str, float | None]:
    labels = {"model": model, "version": "1"}
    return {
        "count": _value(text, "requests_total", **labels),
        "gauge": _value(text, "last_input", **labels),
        "le_1": _value(text, "input_values_bucket", le="1", **labels),
        "le_10": _value(text, "input_values_bucket", le="10", **labels),
        "le_inf": _value(text, "input_values_bucket", le="+Inf", **labels),
        "sum": _value(text, "input_values_sum", **labels),
        "n": _value(text, "input_values_count", **labels),
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", MODELS)
def test_counter_gauge_and_histogram_reach_the_endpoint(py_server: RunningServer, protocol: str, model: str) -> None:
    before = _series(_scrape(py_server), model)
    assert None not in before.values(), f"the families created in initialize() exist at load: {before}"
    answers = [_infer(py_server, protocol, model, value) for value in (0.5, 4.0, 20.0)]
    # value() is the server's: every update made before it, from both instances, counts (1 + 0.5 each).
    assert [a["count"] - before["count"] for a in answers] == [1.5, 3.0, 4.5]
    assert [a["gauge"] for a in answers] == [0.5, 4.0, 20.0]
    text = _scrape(py_server)
    after = _series(text, model)
    assert after["count"] == answers[-1]["count"] and after["gauge"] == 20.0
    deltas = {key: after[key] - before[key] for key in ("le_1", "le_10", "le_inf", "sum", "n")}  # type: ignore[operator]
    assert deltas == {"le_1": 1, "le_10": 2, "le_inf": 3, "sum": 24.5, "n": 3}
    # HELP and TYPE lines as Triton writes them; the first description of a shared family stays.
    assert "# HELP requests_total Requests seen by the model\n# TYPE requests_total counter\n" in text
    assert "# HELP last_input The last input\\nof the model\n# TYPE last_input gauge\n" in text
    assert "# HELP input_values Inputs seen\n# TYPE input_values histogram\n" in text
    assert "other text" not in text
    assert text.count("# TYPE requests_total ") == 1  # both models' series in one family


CASES = {
    "counter_decrement": "Failed to increment metric value: Failed to process the request for model '{instance}', "
    "message: TRITONSERVER_METRIC_KIND_COUNTER can only be incremented monotonically by non-negative values. "
    "(metric 'requests_total{{model=\"{model}\",version=\"1\"}}', value -1)",
    "counter_set": "Failed to set metric value: Failed to process the request for model '{instance}', message: "
    "TRITONSERVER_METRIC_KIND_COUNTER does not support Set",
    "gauge_observe": "Failed to observe metric value: Failed to process the request for model '{instance}', message: "
    "TRITONSERVER_METRIC_KIND_GAUGE does not support Observe",
    "histogram_value": "Failed to get metric value: Failed to process the request for model '{instance}', message: "
    "TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Value",
    "histogram_set": "TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Set",
    "histogram_without_buckets": "TritonModelException: Failed to create metric. Missing required buckets. "
    "(metric family 'input_values' is a histogram)",
    "counter_with_buckets": "Failed to create metric. Unexpected buckets found. (metric family 'requests_total' is a "
    "counter)",
    "labels_not_dict": "Failed to create metric. Labels must be a dictionary.",
    "buckets_not_list": "Failed to create metric. Buckets must be a list.",
    "buckets_unsorted": "Error when creating Metric: Failed to process the request for model '{instance}', message: "
    "Bucket Boundaries must be strictly sorted (histogram family 'input_values', buckets [2.0, 1.0])",
    "bad_label_name": "Error when creating Metric: Failed to process the request for model '{instance}', message: "
    "Invalid label name 'bad-name' (metric family 'requests_total')",
    "label_not_str": "Invalid label value for 'x' (metric family 'requests_total'): expected a string, got int",
    "duplicate_other_kind": "Error when creating MetricFamily: Failed to process the request for model '{instance}', "
    "message: Family name already exists with different type: metric family 'requests_total' is a counter, not a gauge",
    "bad_family_name": "Invalid metric name ''",
    "server_family_name": "'nv_inference_count' is one of the server's own metric families",
    "kind_not_a_kind": "TypeError: MetricFamily(): kind must be pb_utils.MetricFamily.COUNTER, GAUGE or HISTOGRAM, "
    "got 7",
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", MODELS)
def test_misuse_raises_triton_errors_naming_the_metric(py_server: RunningServer, protocol: str, model: str) -> None:
    before = _series(_scrape(py_server), model)
    for case, expected in CASES.items():
        answer = _infer(py_server, protocol, model, 1.0, case)
        instance = re.search(r"for model '([^']+)'", answer["error"])
        wanted = expected.format(instance=instance.group(1) if instance else "?", model=model)
        assert wanted in answer["error"], f"{case}: {answer['error']}"
        if "{instance}" in expected:
            assert re.fullmatch(rf"{model}_0_[01]", instance.group(1) if instance else ""), answer["error"]
    assert _series(_scrape(py_server), model) == before, "a refused update changes nothing"


@pytest.mark.parametrize("model", MODELS)
def test_a_deleted_family_leaves_the_endpoint(py_server: RunningServer, model: str) -> None:
    answer = _infer(py_server, "http", model, 3.0, "temporary")
    assert answer["error"] == "3.0"  # the model read its gauge back before deleting it
    deadline = time.monotonic() + 10
    while "temporary_gauge" in _scrape(py_server):
        assert time.monotonic() < deadline, "the deleted MetricFamily is still on the endpoint"
        time.sleep(0.05)


def test_families_go_when_their_models_unload(py_server: RunningServer) -> None:
    c = httpclient.InferenceServerClient(py_server.http_url, network_timeout=60)
    for model in MODELS:
        _infer(py_server, "http", model, 2.0)
    try:
        c.unload_model("metrics")
        text = _scrape(py_server)
        assert _series(text, "metrics") == dict.fromkeys(_series(text, "metrics"))  # all gone
        assert _series(text, "metrics_inproc")["count"] is not None  # the in-process model's are not
        c.unload_model("metrics_inproc")
        text = _scrape(py_server)
        for family in ("requests_total", "last_input", "input_values"):
            assert f"# TYPE {family} " not in text, f"{family} outlived every model that created it"
    finally:
        for model in MODELS:
            c.load_model(model)
    text = _scrape(py_server)
    for model in MODELS:  # created again by initialize(), from zero
        assert _series(text, model) == {"count": 0, "gauge": 0, "le_1": 0, "le_10": 0, "le_inf": 0, "sum": 0, "n": 0}
