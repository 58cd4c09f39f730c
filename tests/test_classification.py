"""The classification extension end to end: labels from ``label_filename``, over HTTP and gRPC.

Expected answers are what Triton 2.51 returned for the same model and request (triton-reference,
recorded in docs/dev/triton-observed.md).
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serverkit import RunningServer, start_server, write_model

LABELLED = (
    'name: "{name}"\nbackend: "identity"\nmax_batch_size: 4\n'
    'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }} ]\n'
    'output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" }} ]\n'
)
DATA = np.array([[1, 4, 3, 2], [0.5, 0.25, 0.125, 9]], np.float32)
#: Triton 2.51, classification 3 of DATA (the empty third label gives no label)
TOP3 = [
    ["4.000000:1:dog", "3.000000:2", "2.000000:3:fish"],
    ["9.000000:3:fish", "0.500000:0:cat", "0.250000:1:dog"],
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("classification")
    repo = tmp / "repo"
    write_model(repo, "labelled", LABELLED.format(name="labelled"), files={"labels.txt": "cat\ndog\n\nfish\n"})
    write_model(repo, "unlabelled", LABELLED.format(name="unlabelled").replace(' label_filename: "labels.txt"', ""))
    write_model(repo, "missing_labels", LABELLED.format(name="missing_labels"))
    running = start_server([repo], tmp, "--exit-on-error=false", "--strict-readiness=false")
    yield running
    running.stop()


def test_the_extension_is_advertised(server: RunningServer) -> None:
    assert "classification" in requests.get(server.base + "/v2", timeout=10).json()["extensions"]


def test_a_missing_label_file_fails_that_model_with_tritons_text(server: RunningServer, tmp_path: Path) -> None:
    index = requests.post(server.base + "/v2/repository/index", timeout=10).json()
    row = next(r for r in index if r["name"] == "missing_labels")
    assert row["state"] == "UNAVAILABLE"
    assert "failed to open text file for read" in row["reason"]
    assert row["reason"].endswith("missing_labels/labels.txt: No such file or directory")


@pytest.mark.parametrize("binary", [False, True])
def test_http(server: RunningServer, binary: bool) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("INPUT0", list(DATA.shape), "FP32")
    inp.set_data_from_numpy(DATA)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary, class_count=3)
    result = client.infer("labelled", [inp], outputs=[out])
    assert result.get_output("OUTPUT0")["datatype"] == "BYTES"
    assert result.as_numpy("OUTPUT0").astype(str).tolist() == TOP3


def test_http_json_as_triton_answers(server: RunningServer) -> None:
    body = {
        "inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 4, 3, 2]}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"classification": 10}}],
    }
    answer = requests.post(server.base + "/v2/models/labelled/infer", json=body, timeout=10).json()
    assert answer["outputs"] == [
        {
            "name": "OUTPUT0",
            "datatype": "BYTES",
            "shape": [1, 4],
            "data": ["4.000000:1:dog", "3.000000:2", "2.000000:3:fish", "1.000000:0:cat"],
        }
    ]


def test_grpc_unary_and_stream(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("INPUT0", list(DATA.shape), "FP32")
    inp.set_data_from_numpy(DATA)
    out = grpcclient.InferRequestedOutput("OUTPUT0", class_count=3)
    result = client.infer("labelled", [inp], outputs=[out])
    assert result.get_response().outputs[0].datatype == "BYTES"
    assert result.as_numpy("OUTPUT0").astype(str).tolist() == TOP3

    plain = client.infer("unlabelled", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=2)])
    assert plain.as_numpy("OUTPUT0").astype(str).tolist() == [["4.000000:1", "3.000000:2"], ["9.000000:3", "0.500000:0"]]

    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer("labelled", [inp], outputs=[out], request_id="s1")
        streamed, error = results.get(timeout=30)
    finally:
        client.stop_stream()
    assert error is None
    assert streamed.as_numpy("OUTPUT0").astype(str).tolist() == TOP3


def test_unsupported_datatype_is_a_clear_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(
        repo,
        "strings",
        'name: "strings"\nbackend: "identity"\nmax_batch_size: 0\n'
        'input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 2 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 2 ] } ]\n',
    )
    running = start_server([repo], tmp_path)
    try:
        client = grpcclient.InferenceServerClient(running.grpc_url)
        inp = grpcclient.InferInput("INPUT0", [2], "BYTES")
        inp.set_data_from_numpy(np.array([b"a", b"b"], dtype=object))
        with pytest.raises(Exception, match="class result not available for output due to unsupported type 'BYTES'"):
            client.infer("strings", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=1)])
    finally:
        running.stop()
