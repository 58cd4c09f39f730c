"""The instance in-process: two instances run at the same time (ONNX Runtime releases the GIL)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from conch_onnxruntime.instance import OnnxInstance, direct_run
from conch_onnxruntime.signature import GraphSignature

from conch import ConchError
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
        original = instance.execute_batch

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

        instance.execute_batch = run  # type: ignore[method-assign]

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


def test_numpy_feeds_go_to_the_sessions_own_run(tmp_path: Path, models: SimpleNamespace) -> None:
    """The C++ run under ``InferenceSession.run`` answers as the wrapper does."""
    instance = _instance(tmp_path, models.add_sub(), ADD_SUB)
    assert instance._direct is not None
    a, b = np.arange(32, dtype=np.float32).reshape(2, 16), np.ones((2, 16), np.float32)
    outputs = instance.execute_batch({"INPUT0": a, "INPUT1": b}, ["OUTPUT1", "OUTPUT0"])
    assert list(outputs) == ["OUTPUT1", "OUTPUT0"]
    np.testing.assert_array_equal(outputs["OUTPUT0"], a + b)
    np.testing.assert_array_equal(outputs["OUTPUT1"], a - b)
    expected = instance.session.run(["OUTPUT0"], {"INPUT0": a, "INPUT1": b})
    np.testing.assert_array_equal(instance.execute_batch({"INPUT0": a, "INPUT1": b}, ["OUTPUT0"])["OUTPUT0"], expected[0])
    instance.unload()


def test_a_failed_direct_run_reports_the_wrappers_error(tmp_path: Path, models: SimpleNamespace) -> None:
    """A missing input fails with ``InferenceSession.run``'s message, not the C++ one."""
    instance = _instance(tmp_path, models.add_sub(), ADD_SUB)
    with pytest.raises(ConchError) as direct:
        instance.execute_batch({"INPUT0": np.ones((1, 16), np.float32)}, ["OUTPUT0"])
    instance._direct = None
    with pytest.raises(ConchError) as wrapped:
        instance.execute_batch({"INPUT0": np.ones((1, 16), np.float32)}, ["OUTPUT0"])
    assert "Required inputs" in direct.value.message
    assert direct.value.message == wrapped.value.message
    instance.unload()


def test_no_direct_run_without_the_inner_session() -> None:
    """A session object without ONNX Runtime's inner ``_sess`` keeps its own ``run``."""
    assert direct_run(SimpleNamespace(run=lambda *args: [])) is None
    capturing = SimpleNamespace(_sess=SimpleNamespace(run=lambda *args: [], is_webgpu_graph_capture_enabled=lambda: True))
    assert direct_run(capturing) is None
