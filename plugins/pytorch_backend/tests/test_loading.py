"""Load-time behaviour end to end: bad files and configs fail only their model, with a reason naming it."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serverkit import RunningServer, start_server


def _wait_loaded(server: RunningServer, names: list[str], timeout: float = 60) -> dict[str, dict[str, Any]]:
    """The repository index once every model in ``names`` left LOADING."""
    deadline = time.monotonic() + timeout
    while True:
        rows = requests.post(f"{server.base}/v2/repository/index", timeout=10).json()
        index = {row["name"]: row for row in rows}
        if all(index.get(n, {}).get("state") in ("READY", "UNAVAILABLE") for n in names):
            return index
        if time.monotonic() > deadline:
            raise AssertionError(f"models still loading: {index}")
        time.sleep(0.1)


IO = ([("INPUT__0", "TYPE_FP32", "[ 16 ]"), ("INPUT__1", "TYPE_FP32", "[ 16 ]")],
      [("OUTPUT__0", "TYPE_FP32", "[ 16 ]"), ("OUTPUT__1", "TYPE_FP32", "[ 16 ]")])  # fmt: skip


def test_bad_models_fail_alone_with_reasons(tmp_path: Path, models: SimpleNamespace) -> None:
    repo = tmp_path / "repo"
    save, config = models.save, models.config
    save(repo, "good", models.AddSub(), config("good", *IO, "max_batch_size: 4"))
    save(repo, "corrupt", models.AddSub(), config("corrupt", *IO, "max_batch_size: 4"))
    (repo / "corrupt" / "1" / "model.pt").write_bytes(b"this is not a TorchScript archive")
    save(
        repo,
        "wrong_names",
        models.AddSub(),
        config("wrong_names", [("first", "TYPE_FP32", "[ 16 ]"), ("IN1", "TYPE_FP32", "[ 16 ]")], IO[1]),
    )
    save(
        repo,
        "gap",
        models.AddSub(),
        config("gap", [("INPUT__0", "TYPE_FP32", "[ 16 ]"), ("INPUT__2", "TYPE_FP32", "[ 16 ]")], IO[1]),
    )
    save(repo, "no_outputs", models.AddSub(), 'name: "no_outputs"\nplatform: "pytorch_libtorch"\nmax_batch_size: 4\n')
    save(
        repo,
        "strings",
        models.Identity(),
        config("strings", [("INPUT__0", "TYPE_STRING", "[ 1 ]")], [("OUTPUT__0", "TYPE_STRING", "[ 1 ]")]),
    )
    save(
        repo,
        "bad_param",
        models.AddSub(),
        config("bad_param", *IO, 'parameters { key: "INFERENCE_MODE" value: { string_value: "maybe" } }'),
    )
    save(
        repo,
        "bad_threads",
        models.AddSub(),
        config("bad_threads", *IO, 'parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "-2" } }'),
    )
    (repo / "no_file" / "1").mkdir(parents=True)
    (repo / "no_file" / "config.pbtxt").write_text(config("no_file", *IO))

    names = ["good", "corrupt", "wrong_names", "gap", "no_outputs", "strings", "bad_param", "bad_threads", "no_file"]
    server = start_server([repo], tmp_path, "--exit-on-error=false", wait_ready=False)
    try:
        index = _wait_loaded(server, names)
        assert index["good"]["state"] == "READY"
        reasons = {name: index[name].get("reason", "") for name in names[1:]}
        for name, reason in reasons.items():
            assert index[name]["state"] == "UNAVAILABLE", (name, index[name])
            assert f"'{name}'" in reason, (name, reason)
        assert "unable to load model 'corrupt'" in reasons["corrupt"]
        assert "'first'" in reasons["wrong_names"] and "'a', 'b'" in reasons["wrong_names"]
        assert "without gaps" in reasons["gap"]
        assert "does not auto-complete" in reasons["no_outputs"]
        assert "TYPE_STRING" in reasons["strings"]
        assert "INFERENCE_MODE" in reasons["bad_param"] and "maybe" in reasons["bad_param"]
        assert "INTRA_OP_THREAD_COUNT" in reasons["bad_threads"]
        assert "unable to find" in reasons["no_file"] and "model.pt" in reasons["no_file"]

        for module, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
            client: Any = module.InferenceServerClient(url)
            inputs = [module.InferInput(n, [1, 16], "FP32") for n in ("INPUT__0", "INPUT__1")]
            for tensor in inputs:
                tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
            assert client.infer("good", inputs).as_numpy("OUTPUT__0").tolist() == [[2.0] * 16]
            with pytest.raises(InferenceServerException) as caught:
                client.infer("corrupt", inputs)
            assert "corrupt" in str(caught.value)
    finally:
        server.stop()


def test_kind_gpu_without_cuda_fails_the_load_clearly(tmp_path: Path, models: SimpleNamespace) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    repo = tmp_path / "repo"
    models.save(repo, "on_gpu", models.AddSub(), models.config("on_gpu", *IO, "instance_group [ { kind: KIND_GPU } ]"))
    models.save(repo, "on_cpu", models.AddSub(), models.config("on_cpu", *IO, "instance_group [ { kind: KIND_CPU } ]"))
    # The core counts GPUs with NVML; pretend there is one so that the backend is asked.
    server = start_server([repo], tmp_path, "--exit-on-error=false", wait_ready=False, env={"CONCH_GPU_COUNT": "1"})
    try:
        index = _wait_loaded(server, ["on_gpu", "on_cpu"])
        assert index["on_cpu"]["state"] == "READY"
        assert index["on_gpu"]["state"] == "UNAVAILABLE"
        reason = index["on_gpu"]["reason"]
        assert "'on_gpu'" in reason and "KIND_GPU" in reason and "CUDA" in reason, reason
    finally:
        server.stop()


def test_output_datatype_mismatch_is_a_request_error(tmp_path: Path, models: SimpleNamespace) -> None:
    repo = tmp_path / "repo"
    models.save(
        repo,
        "says_int",
        models.Identity(),
        models.config(
            "says_int",
            [("INPUT__0", "TYPE_FP32", "[ 2 ]")],
            [("OUTPUT__0", "TYPE_INT32", "[ 2 ]")],
            "max_batch_size: 2",
        ),
    )
    server = start_server([repo], tmp_path)
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        tensor = httpclient.InferInput("INPUT__0", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 2), np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("says_int", [tensor])
        message = str(caught.value)
        assert "TYPE_FP32" in message and "TYPE_INT32" in message and "'says_int'" in message, message
    finally:
        server.stop()
