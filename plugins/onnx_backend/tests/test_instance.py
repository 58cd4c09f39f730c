"""The instance in-process: short runs stay on the event loop, long ones go to the instance's thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
from conch_onnxruntime.inline import MAX_INLINE_BYTES, InlinePolicy
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


def _instance(tmp_path: Path, graph: object, config_text: str, inline_max_us: int) -> OnnxInstance:
    path = tmp_path / "model.onnx"
    path.write_bytes(graph.SerializeToString())  # type: ignore[attr-defined]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    config = parse_config_text(config_text, Path("config.pbtxt"))
    return OnnxInstance(session, config, GraphSignature.of(session), None, ort, inline_max_us=inline_max_us)


async def _threads_used(instance: OnnxInstance, feed: dict[str, np.ndarray], names: list[str], runs: int) -> set[str]:
    seen: set[str] = set()
    original = instance.run

    def spy(inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        seen.add(threading.current_thread().name)
        return original(inputs, outputs)

    instance.run = spy  # type: ignore[method-assign]
    for _ in range(runs):
        await instance.execute_batch(feed, names)
    return seen


async def test_short_runs_go_inline_after_the_first(tmp_path: Path, models: SimpleNamespace) -> None:
    instance = _instance(tmp_path, models.add_sub(), ADD_SUB, inline_max_us=100_000)
    feed = {"INPUT0": np.ones((2, 16), np.float32), "INPUT1": np.ones((2, 16), np.float32)}
    first = await _threads_used(instance, feed, ["OUTPUT0"], 1)
    assert first != {threading.current_thread().name}  # unknown cost: the instance's thread
    later = await _threads_used(instance, feed, ["OUTPUT0"], 5)
    assert later == {threading.current_thread().name}
    out = await instance.execute_batch(feed, ["OUTPUT0", "OUTPUT1"])
    assert out["OUTPUT0"].tolist() == [[2.0] * 16] * 2 and out["OUTPUT1"].tolist() == [[0.0] * 16] * 2
    instance.unload()


async def test_inline_off_and_slow_models_stay_on_the_thread(tmp_path: Path, models: SimpleNamespace) -> None:
    off = _instance(tmp_path, models.add_sub(), ADD_SUB, inline_max_us=0)
    feed = {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.ones((1, 16), np.float32)}
    assert threading.current_thread().name not in await _threads_used(off, feed, ["OUTPUT0"], 5)
    off.unload()
    slow = _instance(tmp_path, models.matmul_512(), MATMUL, inline_max_us=100)
    x = {"X": np.ones((120, 512), np.float32)}  # ~60 MFLOP a run: far above 100 µs
    assert threading.current_thread().name not in await _threads_used(slow, x, ["Y"], 4)
    assert slow.inline.recent_ns > 100_000
    slow.unload()


def test_big_batches_never_inline() -> None:
    policy = InlinePolicy(max_us=1000)
    policy.observe(10_000)
    assert policy.allows({"X": np.zeros(16, np.float32)})
    assert not policy.allows({"X": np.zeros(MAX_INLINE_BYTES // 4 + 1, np.float32)})


def test_two_instances_on_their_threads_overlap(tmp_path: Path, models: SimpleNamespace) -> None:
    """Long runs of two instances execute at the same time (ONNX Runtime releases the GIL)."""
    a = _instance(tmp_path, models.matmul_512(), MATMUL, inline_max_us=0)
    b = _instance(tmp_path, models.matmul_512(), MATMUL, inline_max_us=0)
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
        for _ in range(3):
            await asyncio.gather(a.execute_batch(x, ["Y"]), b.execute_batch(x, ["Y"]))

    asyncio.run(both())
    assert peak == 2
    a.unload()
    b.unload()
