"""``EXECUTION_ENV_PATH``: a model's own packages (a conda-pack archive or a folder) in front of the server's."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from pymodels import write_py_model

from serverkit import RunningServer, start_server

PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"

CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 2 }} ]
parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{env}" }} }}
{extra}
"""

MODEL = """
import json
import os

import numpy as np
import onnx  # the environment's own, which shadows the server's
import envlib
import pthlib  # found through a .pth file of the environment's site-packages
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        facts = {
            "envlib": envlib.WHERE,
            "onnx": onnx.__version__,
            "pthlib": pthlib.WHERE,
            "conda_prefix": os.environ.get("CONDA_PREFIX", ""),
            "path_first": os.environ["PATH"].split(os.pathsep)[0],
        }
        out = np.array([json.dumps(facts).encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]) for _ in requests]
"""


def _write_env(root: Path, python: str = PYTHON) -> Path:
    site = root / "lib" / python / "site-packages"
    (site / "envlib").mkdir(parents=True)
    (site / "envlib" / "__init__.py").write_text('WHERE = "from the env"\n')
    (site / "onnx").mkdir()
    (site / "onnx" / "__init__.py").write_text('__version__ = "env-0"\n')
    extra = root / "extra"
    extra.mkdir()
    (extra / "pthlib.py").write_text('WHERE = "from a .pth file"\n')
    (site / "extra.pth").write_text(str(extra) + "\n")
    (root / "bin").mkdir()
    return root


def _pack(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return archive


@pytest.fixture(scope="module")
def env_server(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunningServer, Path]:
    repo = tmp_path_factory.mktemp("env_repo")
    packed = write_py_model(repo, "packed", CONFIG.format(name="packed", env="$$TRITON_MODEL_DIRECTORY/env.tar.gz", extra=""), MODEL)
    _pack(_write_env(tmp_path_factory.mktemp("env_src")), packed / "env.tar.gz")
    folder = _write_env(tmp_path_factory.mktemp("env_folder"))
    write_py_model(repo, "unpacked", CONFIG.format(name="unpacked", env=str(folder), extra=""), MODEL)
    cache = tmp_path_factory.mktemp("env_cache")
    server = start_server([repo], tmp_path_factory.mktemp("env_server"), env={"CONCH_ENV_CACHE": str(cache)})
    yield server, cache
    server.stop()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["packed", "unpacked"])
def test_the_model_sees_its_environment_first(env_server: tuple[RunningServer, Path], model: str, protocol: str) -> None:
    server, cache = env_server
    if protocol == "grpc":
        client: object = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("IN", [1], "INT32")
    else:
        client = httpclient.InferenceServerClient(server.http_url)
        tensor = httpclient.InferInput("IN", [1], "INT32")
    tensor.set_data_from_numpy(np.array([1], np.int32))
    for _ in range(4):  # both instances (worker processes) answer alike
        facts = json.loads(client.infer(model, [tensor]).as_numpy("OUT")[0])  # type: ignore[attr-defined]
        assert facts["envlib"] == "from the env" and facts["onnx"] == "env-0"
        assert facts["pthlib"] == "from a .pth file"
        assert facts["conda_prefix"] and facts["path_first"] == str(Path(facts["conda_prefix"]) / "bin")
    if model == "packed":
        unpacked = [p for p in cache.iterdir() if not p.name.startswith(".")]
        assert len(unpacked) == 1, unpacked  # two instances, one archive: unpacked once
        assert facts["conda_prefix"] == str(unpacked[0])


def _load_error(tmp_path: Path, config: str, files: dict[str, bytes] | None = None) -> str:
    repo = tmp_path / "repo"
    model = write_py_model(repo, "m", config, MODEL)
    for name, data in (files or {}).items():
        (model / name).write_bytes(data)
    server = start_server(
        [repo], tmp_path, "--model-control-mode=explicit", env={"CONCH_ENV_CACHE": str(tmp_path / "cache")}
    )
    try:
        reply = requests.post(f"{server.base}/v2/repository/models/m/load", timeout=120)
        assert reply.status_code == 400, reply.text
        return str(reply.json()["error"])
    finally:
        server.stop()


def _evil_archive() -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        payload = b"outside"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return data.getvalue()


def test_environment_errors_name_the_model_the_parameter_and_the_fix(tmp_path: Path) -> None:
    missing = _load_error(tmp_path / "a", CONFIG.format(name="m", env="$$TRITON_MODEL_DIRECTORY/nope.tar.gz", extra=""))
    assert "model 'm': parameter EXECUTION_ENV_PATH" in missing and "nope.tar.gz': no such file or folder" in missing

    old = _write_env(tmp_path / "old_env", python="python3.9")
    version = _load_error(tmp_path / "b", CONFIG.format(name="m", env=str(old), extra=""))
    assert f"the environment must have the server's Python ({PYTHON}" in version and "python3.9" in version

    evil = _load_error(
        tmp_path / "c", CONFIG.format(name="m", env="$$TRITON_MODEL_DIRECTORY/env.tar.gz", extra=""),
        {"env.tar.gz": _evil_archive()},
    )  # fmt: skip
    assert "could not unpack it" in evil
    assert not (tmp_path / "c" / "escape.txt").exists() and not (tmp_path / "c" / "cache" / ".." / "escape.txt").exists()

    folder = _write_env(tmp_path / "env")
    in_process = 'parameters { key: "CONCH_IN_PROCESS" value: { string_value: "true" } }'
    mixed = _load_error(tmp_path / "d", CONFIG.format(name="m", env=str(folder), extra=in_process))
    assert "EXECUTION_ENV_PATH needs the model's own worker processes" in mixed
