"""Load/unload cycles return memory: worker processes end, the server's RSS stays bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import requests
from onnx import TensorProto, helper

from serverkit import RunningServer, start_server, write_model

CYCLES = 50
WARM_CYCLES = 5
#: Allowed growth of the server's RSS between cycle 5 and cycle 50. A leak of one model's session
#: or of a worker's shared-memory rings per cycle would exceed it several times over.
RSS_BOUND_MB = 24
#: Allowed spread of a Python worker's RSS across cycles (each cycle starts a new worker process).
WORKER_SPREAD_MB = 16

ADD_SUB_PY = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.ballast = b"\x01" * (32 * 1024 * 1024)  # 32 MiB, touched: a leaked worker would show at once

    def execute(self, requests):
        out = []
        for r in requests:
            a = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(r, "INPUT1").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]))
        return out
"""


def _add_sub_onnx() -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 16]) for n in ("INPUT0", "INPUT1")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]), helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]
    graph = helper.make_graph(nodes, "add_sub", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _config(name: str, backend: str) -> str:
    return (
        f'name: "{name}"\nbackend: "{backend}"\nmax_batch_size: 8\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]\n'
    )


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _cycle(server: RunningServer) -> float:
    """Load, infer and unload both models; the worker's RSS (MB) while the Python model was loaded."""
    a = np.arange(16, dtype=np.float32)
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": a.tolist()},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": (a * 2).tolist()},
        ]
    }
    for model in ("add_sub_py", "add_sub_onnx"):
        response = requests.post(f"{server.base}/v2/repository/models/{model}/load", timeout=120)
        assert response.status_code == 200, response.text
        result = requests.post(f"{server.base}/v2/models/{model}/infer", json=body, timeout=30).json()
        assert result["outputs"][0]["data"] == (a * 3).tolist()
    workers = _children(server.process.pid)
    assert len(workers) == 1, workers
    worker_mb = _rss_mb(workers[0])
    for model in ("add_sub_py", "add_sub_onnx"):
        response = requests.post(f"{server.base}/v2/repository/models/{model}/unload", timeout=120)
        assert response.status_code == 200, response.text
    return worker_mb


def test_fifty_load_unload_cycles_keep_memory_bounded(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add_sub_py", _config("add_sub_py", "python"), files={"1/model.py": ADD_SUB_PY})
    onnx_dir = write_model(repo, "add_sub_onnx", _config("add_sub_onnx", "onnxruntime"))
    onnx.save(_add_sub_onnx(), str(onnx_dir / "1" / "model.onnx"))
    server = start_server([repo], tmp_path, "--model-control-mode=explicit")
    pid = server.process.pid
    try:
        for _ in range(WARM_CYCLES):
            _cycle(server)
        baseline = _rss_mb(pid)
        workers: list[float] = []
        for _ in range(CYCLES - WARM_CYCLES):
            workers.append(_cycle(server))
            assert _children(pid) == [], "a worker process outlived its model's unload"
        grown = _rss_mb(pid) - baseline
        assert grown < RSS_BOUND_MB, f"server RSS grew {grown:.1f} MB over {CYCLES - WARM_CYCLES} cycles"
        # Every worker starts afresh: the 32 MiB ballast is there, and nothing accumulates across cycles.
        assert min(workers) > 40
        assert max(workers) - min(workers) < WORKER_SPREAD_MB, workers
    finally:
        server.stop()
