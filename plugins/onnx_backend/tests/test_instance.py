"""The instance in-process: two instances run at the same time (ONNX Runtime releases the GIL)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
from conch_onnxruntime.instance import OnnxInstance
from conch_onnxruntime.signature import GraphSignature

from conch.config.parse import parse_config_text

ADD_SUB = """name: "m"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""
MATMUL = """name: "m"
max_batch_size: 512
input [ { name: "X" data_type: TYPE_FP32 dims: [ 512 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 512 ] } ]
"""


def _instance(tmp_path: Path, graph: object, config_text: str) -> OnnxInstance:
    path = tmp_path / "model.onnx"
    path.write_bytes(graph.SerializeToString())  # type: ignore[attr-defined]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    config = parse_config_text(config_text, Path("config.pbtxt"))
    return OnnxInstance(session, config, GraphSignature.of(session), None, ort)


def test_two_instances_on_their_threads_overlap(tmp_path: Path, models: SimpleNamespace) -> None:
    """Long runs of two instances execute at the same time (ONNX Runtime releases the GIL)."""
    a = _instance(tmp_path, models.matmul_512(), MATMUL)
    b = _instance(tmp_path, models.matmul_512(), MATMUL)
    active, peak = 0, 0
    lock = threading.Lock()

    def wrap(instance: OnnxInstance) -> None:
        original = instance.run

        def run(inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            try:
                return original(inputs, outputs)
            finally:
                with lock:
                    active -= 1

        instance.run = run  # type: ignore[method-assign]

    wrap(a)
    wrap(b)
    x = {"X": np.ones((1024, 512), np.float32)}

    async def both() -> None:
        # As Conch's runner does for slow runs: each instance on a thread of its own.
        for _ in range(3):
            await asyncio.gather(asyncio.to_thread(a.execute_batch, x, ["Y"]), asyncio.to_thread(b.execute_batch, x, ["Y"]))

    asyncio.run(both())
    assert peak == 2
    a.unload()
    b.unload()
