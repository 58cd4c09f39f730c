"""The dynamic batcher end to end: a real server, real tritonclient, statistics and logs checked."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serverkit import RunningServer, identity_config, start_server, write_model


def _delay(ms: int) -> str:
    return f'parameters [ {{ key: "execute_delay_ms" value: {{ string_value: "{ms}" }} }} ]'


def _infer(url: str, model: str, data: np.ndarray, **kwargs: Any) -> np.ndarray:
    client = httpclient.InferenceServerClient(url, network_timeout=60)
    inp = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    return client.infer(model, [inp], **kwargs).as_numpy("OUTPUT0")


def _stats(server: RunningServer, model: str) -> dict[str, Any]:
    body = requests.get(f"{server.base}/v2/models/{model}/stats", timeout=10).json()
    return body["model_stats"][0]


def _batch_sizes(stats: dict[str, Any]) -> dict[int, int]:
    return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}


def _send_in_order(server: RunningServer, model: str, payloads: list[tuple[np.ndarray, dict[str, Any]]]) -> list[float]:
    """Send requests 150 ms apart from threads (the batcher holds them); return each completion time."""
    done: list[float] = [0.0] * len(payloads)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        data, kwargs = payloads[i]
        try:
            out = _infer(server.http_url, model, data, **kwargs)
            assert np.array_equal(out, data)
            done[i] = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = []
    for i in range(len(payloads)):
        thread = threading.Thread(target=one, args=(i,))
        thread.start()
        threads.append(thread)
        time.sleep(0.15)
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return done


@pytest.fixture(scope="module")
def held_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """TRITONSERVER_DELAY_SCHEDULER=4: every model's batcher waits for its first 4 requests."""
    repo = tmp_path_factory.mktemp("held_repo")
    write_model(repo, "pref", identity_config(
        "pref", extra="dynamic_batching { preferred_batch_size: [ 3 ] max_queue_delay_microseconds: 1000000 }"))
    write_model(repo, "shapes", identity_config(
        "shapes", extra="dynamic_batching { max_queue_delay_microseconds: 1000 }"))
    write_model(repo, "ragged", identity_config("ragged", extra="dynamic_batching { max_queue_delay_microseconds: 1000 }")
                .replace('dims: [ -1 ] }', 'dims: [ -1 ] allow_ragged_batch: true }', 1))
    write_model(repo, "prio", identity_config(
        "prio", max_batch_size=1,
        extra="dynamic_batching { priority_levels: 2 default_priority_level: 2 }\n" + _delay(100)))
    running = start_server([repo], tmp_path_factory.mktemp("held"), "--log-verbose=1",
                           env={"TRITONSERVER_DELAY_SCHEDULER": "4"})
    yield running
    running.stop()


def test_preferred_size_then_delay_expiry(held_server: RunningServer) -> None:
    payloads = [(np.full((1, 2), i, np.float32), {}) for i in range(4)]
    _send_in_order(held_server, "pref", payloads)
    stats = _stats(held_server, "pref")
    assert _batch_sizes(stats) == {3: 1, 1: 1}
    assert (stats["inference_count"], stats["execution_count"]) == (4, 2)
    log = held_server.log()
    assert "batch for 'pref': 3 requests, batch size 3, on instance 'pref_0'; closed: preferred size 3" in log
    assert "batch for 'pref': 1 requests, batch size 1, on instance 'pref_0'; closed: delay expired after" in log


@pytest.mark.parametrize(("model", "expected", "reason"), [("shapes", {2: 2}, "shape change"),
                                                           ("ragged", {4: 1}, "delay expired")])
def test_variable_shapes_batch_only_when_ragged(
    held_server: RunningServer, model: str, expected: dict[int, int], reason: str
) -> None:
    payloads = [(np.full((1, width), 1, np.float32), {}) for width in (2, 2, 3, 3)]
    _send_in_order(held_server, model, payloads)
    assert _batch_sizes(_stats(held_server, model)) == expected
    if model == "shapes":
        assert f"batch for '{model}': 2 requests, batch size 2, on instance '{model}_0'; closed: shape change" in (
            held_server.log()
        )
    else:
        assert f"batch for '{model}': 4 requests, batch size 4, on instance '{model}_0'; closed: delay expired" in (
            held_server.log()
        )


def test_priority_level_runs_first(held_server: RunningServer) -> None:
    payloads = [(np.full((1, 2), i, np.float32), {"priority": p}) for i, p in enumerate((2, 0, 1, 1))]
    done = _send_in_order(held_server, "prio", payloads)
    assert max(done[2], done[3]) < min(done[0], done[1]), done


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("batch_repo")
    for action in ("REJECT", "DELAY"):
        write_model(repo, f"timeout_{action.lower()}", identity_config(
            f"timeout_{action.lower()}", max_batch_size=1,
            extra=f"dynamic_batching {{ default_queue_policy {{ timeout_action: {action} "
            "default_timeout_microseconds: 10000000 allow_timeout_override: true } }\n" + _delay(1000)))
    write_model(repo, "qfull", identity_config(
        "qfull", max_batch_size=1, extra="dynamic_batching { default_queue_policy { max_queue_size: 1 } }\n" + _delay(800)))
    for name, preserve in (("ordered", "true"), ("unordered", "false")):
        write_model(repo, name, identity_config(
            name, max_batch_size=1,
            extra=f"dynamic_batching {{ preserve_ordering: {preserve} }}\n"
            "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
            'parameters [ { key: "execute_delay_ms" value: { string_value: "200" } },'
            ' { key: "instance_wise_delay_multiplier" value: { string_value: "5" } } ]'))
    write_model(repo, "busy", identity_config(
        "busy", extra="dynamic_batching { max_queue_delay_microseconds: 500 }\n"
        "instance_group [ { count: 2 kind: KIND_CPU } ]"))
    running = start_server([repo], tmp_path_factory.mktemp("batch"))
    yield running
    running.stop()


def _infer_grpc(url: str, model: str, data: np.ndarray, **kwargs: Any) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    return client.infer(model, [inp], **kwargs).as_numpy("OUTPUT0")


@pytest.mark.parametrize(("action", "protocol"), [("REJECT", "http"), ("DELAY", "http"), ("REJECT", "grpc")])
def test_request_timeout_reject_or_delay(batch_server: RunningServer, action: str, protocol: str) -> None:
    model = f"timeout_{action.lower()}"
    results: dict[str, Any] = {}
    before = _stats(batch_server, model)["inference_stats"]["fail"]["count"]

    def one(name: str, **kwargs: Any) -> None:
        try:
            if protocol == "grpc":
                _infer_grpc(batch_server.grpc_url, model, np.ones((1, 2), np.float32), **kwargs)
            else:
                _infer(batch_server.http_url, model, np.ones((1, 2), np.float32), **kwargs)
            results[name] = time.monotonic()
        except InferenceServerException as exc:
            results[name] = exc

    first = threading.Thread(target=one, args=("first",))
    first.start()  # executes for 1 s
    time.sleep(0.2)
    short = threading.Thread(target=one, args=("short",), kwargs={"timeout": 50_000})  # µs, shorter than default
    short.start()
    time.sleep(0.3)
    later = threading.Thread(target=one, args=("later",))
    later.start()
    for thread in (first, short, later):
        thread.join(30)
    assert isinstance(results["later"], float)
    if action == "REJECT":
        error = results["short"]
        assert isinstance(error, InferenceServerException)
        assert "Request timeout expired" in str(error)
        assert _stats(batch_server, model)["inference_stats"]["fail"]["count"] == before + 1
    else:
        assert isinstance(results["short"], float)
        assert results["later"] < results["short"]  # the expired request ran after the one behind it


def _fill_queue(batch_server: RunningServer, send: Any) -> Any:
    """One request executing, one queued (max_queue_size 1), then ``send()`` the third."""
    threads = [threading.Thread(target=_infer, args=(batch_server.http_url, "qfull", np.ones((1, 2), np.float32)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    try:
        return send()
    finally:
        for thread in threads:
            thread.join(30)


def test_queue_full_is_503_over_http(batch_server: RunningServer) -> None:
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    response = _fill_queue(batch_server, lambda: requests.post(
        f"{batch_server.base}/v2/models/qfull/infer", json=body, timeout=30))
    assert response.status_code == 503
    assert response.json() == {"error": "[request id: <id_unknown>] Exceeds maximum queue size"}


def test_queue_full_is_unavailable_over_grpc(batch_server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(batch_server.grpc_url)
    inp = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
    inp.set_data_from_numpy(np.ones((1, 2), np.float32))
    with pytest.raises(InferenceServerException) as info:
        _fill_queue(batch_server, lambda: client.infer("qfull", [inp], request_id="r7"))
    assert info.value.status() == str(grpc.StatusCode.UNAVAILABLE)
    assert "[request id: r7] Exceeds maximum queue size" in info.value.message()


@pytest.mark.parametrize(("model", "in_order"), [("ordered", True), ("unordered", False)])
def test_preserve_ordering_under_out_of_order_completion(
    batch_server: RunningServer, model: str, in_order: bool
) -> None:
    """WARM takes instance 0 (200 ms), A instance 1 (1 s); B, sent 400 ms after A, runs on instance 0
    and finishes long before A, unless ``preserve_ordering`` holds its response back."""
    done: dict[str, float] = {}
    finished = threading.Event()

    def callback(name: str, result: Any, error: Any) -> None:
        done[name] = time.monotonic() if error is None else -1.0
        if len(done) == 3:
            finished.set()

    client = grpcclient.InferenceServerClient(batch_server.grpc_url)
    inp = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
    inp.set_data_from_numpy(np.ones((1, 2), np.float32))
    for name, pause in (("warm", 0.1), ("a", 0.4), ("b", 0.0)):
        client.async_infer(model, [inp], callback=lambda result, error, n=name: callback(n, result, error))
        time.sleep(pause)
    assert finished.wait(30), done
    assert min(done.values()) > 0, done
    if in_order:  # B's response waited for A's (both then leave together: allow the clients' wake-up jitter)
        assert done["b"] > done["a"] - 0.05, done
    else:  # B finished about 400 ms before A
        assert done["b"] < done["a"] - 0.2, done


def test_no_request_lost_or_answered_twice_under_64_clients(batch_server: RunningServer) -> None:
    """64 clients send distinct tensors for 10 s; every answer is its own request's, and the counts agree."""
    stop_at = time.monotonic() + 10
    sent = [0] * 64
    errors: list[BaseException] = []
    before = _stats(batch_server, "busy")["inference_count"]

    def client(k: int) -> None:
        http = httpclient.InferenceServerClient(batch_server.http_url, network_timeout=60)
        try:
            while time.monotonic() < stop_at:
                width = 1 + (k + sent[k]) % 3
                data = np.full((1, width), k * 1_000_000 + sent[k], np.float32)
                inp = httpclient.InferInput("INPUT0", [1, width], "FP32")
                inp.set_data_from_numpy(data)
                out = http.infer("busy", [inp]).as_numpy("OUTPUT0")
                assert np.array_equal(out, data), (k, sent[k], out)
                sent[k] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    stats = _stats(batch_server, "busy")
    assert stats["inference_count"] - before == sum(sent)
    assert stats["inference_stats"]["fail"]["count"] == 0
    assert max(_batch_sizes(stats)) > 1  # requests really were batched
