"""Triton's generate extension end to end: ``/generate`` and ``/generate_stream`` (server-sent events)
against Triton Python models, one of them decoupled (a token streamer)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator

import pytest
import requests

from serverkit import RunningServer, start_server, write_model

SHOUT = textwrap.dedent(
    """
    import json
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for request in requests:
                text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0].decode()
                times = pb_utils.get_input_tensor_by_name(request, "times")
                n = 1 if times is None else int(times.as_numpy().reshape(-1)[0])
                shape = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().shape
                out.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("text_output", np.array([[(text.upper() + "!") * n]], dtype=object)),
                    pb_utils.Tensor("seen", np.array([[json.dumps({"params": json.loads(request.parameters()),
                                                                   "shape": list(shape)})]], dtype=object)),
                    pb_utils.Tensor("lengths", np.array([[len(text), n]], dtype=np.int32)),
                ]))
            return out
    """
)

TOKENS = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0].decode()
                sender = request.get_response_sender()
                for word in text.split():
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", np.array([word], dtype=object))]))
                if "fail" in text:
                    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("asked to fail")))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
    """
)


UPPER = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for request in requests:
                word = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()[0].decode()
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("text_output", np.array([word.upper()], dtype=object))]))
            return out
    """
)


@pytest.fixture(scope="module")
def generate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("generate")
    write_model(
        repo,
        "shout",
        'name: "shout"\nbackend: "python"\nmax_batch_size: 4\n'
        'input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },'
        ' { name: "times" data_type: TYPE_INT32 dims: [ 1 ] optional: true } ]\n'
        'output [ { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] },'
        ' { name: "seen" data_type: TYPE_STRING dims: [ 1 ] }, { name: "lengths" data_type: TYPE_INT32 dims: [ 2 ] } ]\n',
        files={"1/model.py": SHOUT},
    )
    write_model(
        repo,
        "tokens",
        'name: "tokens"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        'output [ { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        "model_transaction_policy { decoupled: true }\n",
        files={"1/model.py": TOKENS},
    )
    # An LLM-style pipeline: a decoupled "model" streams words, a post-processing model upper-cases each.
    write_model(
        repo,
        "upper",
        'name: "upper"\nbackend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        'output [ { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] } ]\n',
        files={"1/model.py": UPPER},
    )
    write_model(
        repo,
        "pipeline",
        'name: "pipeline"\nplatform: "ensemble"\nmax_batch_size: 0\n'
        'input [ { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        'output [ { name: "text_output" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
        "ensemble_scheduling { step [ "
        '{ model_name: "tokens" model_version: -1 input_map { key: "text_input" value: "text_input" } '
        'output_map { key: "text_output" value: "word" } }, '
        '{ model_name: "upper" model_version: -1 input_map { key: "text_input" value: "word" } '
        'output_map { key: "text_output" value: "text_output" } } ] }\n',
    )
    server = start_server([repo], tmp_path_factory.mktemp("generate_server"))
    yield server
    assert server.stop() == 0


def test_generate_maps_keys_to_inputs_and_parameters(generate_server: RunningServer) -> None:
    body = {"id": "g1", "text_input": "hi", "parameters": {"times": 2, "temperature": 0.5, "stream": False}, "tag": "x"}
    reply = requests.post(f"{generate_server.base}/v2/models/shout/generate", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    document = reply.json()
    assert document["id"] == "g1"
    assert document["model_name"] == "shout" and document["model_version"] == "1"
    assert document["text_output"] == "HI!HI!"  # one element: the value itself
    assert document["lengths"] == [2, 2]  # several: a flat array
    seen = json.loads(document["seen"])
    assert seen["shape"] == [1, 1]  # batching model, dims [1]: the batch dimension is 1
    assert seen["params"] == {"temperature": 0.5, "stream": False, "tag": "x"}


def test_generate_stream_sends_each_response_as_an_event(generate_server: RunningServer) -> None:
    reply = requests.post(
        f"{generate_server.base}/v2/models/tokens/generate_stream", json={"text_input": "one two three"}, stream=True
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"
    raw = b"".join(reply.iter_content(chunk_size=None)).decode()
    events = [json.loads(chunk[len("data: "):]) for chunk in raw.split("\n\n") if chunk]
    assert [e["text_output"] for e in events] == ["one", "two", "three"]
    assert all(e["model_name"] == "tokens" for e in events)


def test_errors_of_a_stream_arrive_as_events(generate_server: RunningServer) -> None:
    reply = requests.post(f"{generate_server.base}/v2/models/tokens/generate_stream", json={"text_input": "a fail"})
    events = [json.loads(chunk[len("data: "):]) for chunk in reply.text.split("\n\n") if chunk]
    assert events[0]["text_output"] == "a"
    assert events[-1] == {"error": "asked to fail"}


def test_generate_refuses_what_it_cannot_answer(generate_server: RunningServer) -> None:
    base = generate_server.base
    several = requests.post(f"{base}/v2/models/tokens/generate", json={"text_input": "one two"})
    assert several.status_code == 500
    assert "generate expects model to produce exactly 1 response" in several.json()["error"]
    one = requests.post(f"{base}/v2/models/tokens/generate", json={"text_input": "single"})
    assert one.status_code == 200 and one.json()["text_output"] == "single"
    unknown = requests.post(f"{base}/v2/models/nope/generate", json={"text_input": "x"})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "Request for unknown model: 'nope' is not found"
    missing = requests.post(f"{base}/v2/models/shout/generate", json={"tag": "no inputs"})
    assert missing.status_code == 400
    assert "expected number of inputs between 1 and 2 but got 0 inputs for model 'shout'" in missing.json()["error"]
    wrong = requests.post(f"{base}/v2/models/shout/generate", json={"text_input": "x", "times": "two"})
    assert wrong.status_code == 500, wrong.text  # Triton's code for JSON data it cannot read, as on /infer
    assert wrong.json()["error"] == "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer"
    shape = requests.post(f"{base}/v2/models/tokens/generate", json={"text_input": ["a", "b"]})  # dims [1], no batch
    assert shape.status_code == 400
    assert shape.json()["error"] == "The schema can not convert input 'text_input' to tensor with proper shape"
    assert requests.get(f"{base}/v2/models/shout/generate").status_code == 405


def test_generate_stream_through_an_ensemble_with_a_decoupled_step(generate_server: RunningServer) -> None:
    reply = requests.post(
        f"{generate_server.base}/v2/models/pipeline/generate_stream", json={"text_input": "streams are fun"}
    )
    assert reply.status_code == 200
    events = [json.loads(chunk[len("data: "):]) for chunk in reply.text.split("\n\n") if chunk]
    assert [e["text_output"] for e in events] == ["STREAMS", "ARE", "FUN"]
    assert {e["model_name"] for e in events} == {"pipeline"}
