"""Load-time behaviour end to end: bad files and contradicting configs fail only their model, settings apply."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import requests
import tritonclient.http as httpclient

from serverkit import RunningServer, start_server


def _config(name: str, body: str) -> str:
    return f'name: "{name}"\nbackend: "onnxruntime"\n{body}\n'


IO_FP32 = """
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""


def _wait_loaded(server: RunningServer, names: list[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
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


def test_bad_models_fail_alone_with_reasons_naming_both_sides(tmp_path: Path, models: SimpleNamespace) -> None:
    repo = tmp_path / "repo"
    save = models.save
    save(repo, "good", models.add_sub())
    garbage = repo / "garbage" / "1"
    garbage.mkdir(parents=True)
    (garbage / "model.onnx").write_bytes(b"this is not an onnx graph")
    save(
        repo,
        "wrong_type",
        models.add_sub(),
        _config("wrong_type", "max_batch_size: 4\n" + IO_FP32.replace("TYPE_FP32", "TYPE_INT32", 1)),
    )
    save(
        repo,
        "wrong_name",
        models.add_sub(),
        _config("wrong_name", "max_batch_size: 4\n" + IO_FP32.replace('"INPUT1"', '"IN1"')),
    )
    save(
        repo,
        "wrong_rank",
        models.add_sub(),
        _config("wrong_rank", "max_batch_size: 4\n" + IO_FP32.replace("dims: [ 16 ] }, {", "dims: [ 4, 4 ] }, {", 1)),
    )
    save(repo, "cannot_batch", models.add_sub((2, 3)), _config("cannot_batch", "max_batch_size: 8"))
    save(
        repo,
        "bad_accelerator",
        models.add_sub(),
        _config(
            "bad_accelerator",
            'optimization { execution_accelerators { cpu_execution_accelerator [ { name: "bogus" } ] } }',
        ),
    )
    save(
        repo,
        "bad_mode",
        models.add_sub(),
        _config("bad_mode", 'parameters { key: "execution_mode" value: { string_value: "7" } }'),
    )
    save(
        repo,
        "optional_batching",
        models.optional_bias(),
        _config(
            "optional_batching",
            """max_batch_size: 2
input [ { name: "B" data_type: TYPE_FP32 dims: [ 3 ] optional: true }, { name: "A" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] } ]""",
        ),
    )
    (repo / "no_file" / "1").mkdir(parents=True)
    (repo / "no_file" / "config.pbtxt").write_text(_config("no_file", "max_batch_size: 0\n" + IO_FP32))

    names = ["good", "garbage", "wrong_type", "wrong_name", "wrong_rank", "cannot_batch", "bad_accelerator",
             "bad_mode", "optional_batching", "no_file"]  # fmt: skip
    server = start_server([repo], tmp_path, "--exit-on-error=false", wait_ready=False)
    try:
        index = _wait_loaded(server, names)
        assert index["good"]["state"] == "READY"
        reasons = {name: index[name].get("reason", "") for name in names[1:]}
        for name, reason in reasons.items():
            assert index[name]["state"] == "UNAVAILABLE", (name, index[name])
            assert f"'{name}'" in reason, (name, reason)
        assert "onnx runtime error" in reasons["garbage"]
        assert "TYPE_INT32" in reasons["wrong_type"] and "TYPE_FP32" in reasons["wrong_type"]
        assert "'IN1'" in reasons["wrong_name"] and "'INPUT1'" in reasons["wrong_name"]
        assert "[-1,16]" in reasons["wrong_rank"] and "[-1,4,4]" in reasons["wrong_rank"]
        assert "does not support batching" in reasons["cannot_batch"] and "[2,3]" in reasons["cannot_batch"]
        assert "unknown Execution Accelerator 'bogus'" in reasons["bad_accelerator"]
        assert "execution_mode" in reasons["bad_mode"] and "7" in reasons["bad_mode"]
        assert "optional input 'B'" in reasons["optional_batching"]
        assert "unable to find" in reasons["no_file"] and "model.onnx" in reasons["no_file"]

        client = httpclient.InferenceServerClient(server.http_url)
        a = np.ones((1, 16), np.float32)
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(a)
        assert client.infer("good", inputs).as_numpy("OUTPUT0").tolist() == (2 * a).tolist()
    finally:
        server.stop()


def test_contradictions_are_caught_with_auto_complete_disabled(tmp_path: Path, models: SimpleNamespace) -> None:
    repo = tmp_path / "repo"
    models.save(repo, "good", models.add_sub(), _config("good", "max_batch_size: 4\n" + IO_FP32))
    models.save(
        repo,
        "wrong_type",
        models.add_sub(),
        _config("wrong_type", "max_batch_size: 4\n" + IO_FP32.replace("TYPE_FP32", "TYPE_FP64")),
    )
    server = start_server([repo], tmp_path, "--exit-on-error=false", "--disable-auto-complete-config", wait_ready=False)
    try:
        index = _wait_loaded(server, ["good", "wrong_type"])
        assert index["good"]["state"] == "READY"
        assert index["wrong_type"]["state"] == "UNAVAILABLE"
        assert "TYPE_FP64" in index["wrong_type"]["reason"] and "TYPE_FP32" in index["wrong_type"]["reason"]
    finally:
        server.stop()


def test_default_max_batch_size_settings(tmp_path: Path, models: SimpleNamespace) -> None:
    repo = tmp_path / "repo"
    models.save(repo, "add_sub", models.add_sub())
    server = start_server([repo], tmp_path, "--backend-config=onnxruntime,default-max-batch-size=8")
    try:
        config = requests.get(f"{server.base}/v2/models/add_sub/config", timeout=10).json()
        assert config["max_batch_size"] == 8 and config["dynamic_batching"]["preferred_batch_size"] == [8]
    finally:
        server.stop()
    server = start_server([repo], tmp_path, "--backend-config=default-max-batch-size=0")
    try:
        config = requests.get(f"{server.base}/v2/models/add_sub/config", timeout=10).json()
        assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
        assert config["input"][0]["dims"] == [-1, 16]
        client = httpclient.InferenceServerClient(server.http_url)
        inputs = [httpclient.InferInput(n, [3, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(np.full((3, 16), 2, np.float32))
        assert client.infer("add_sub", inputs).as_numpy("OUTPUT0").tolist() == [[4.0] * 16] * 3
    finally:
        server.stop()
