"""The raw in-process baseline of each framework model: its call in a loop, no server (the physical limit).

- Python models: the add_sub ``TritonPythonModel.execute`` on one request, with conch-python's ``pb_utils``;
- ONNX models: ``InferenceSession.run`` at batch 1 with the session options of one Conch instance
  (its intra-op threads, no spinning).
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .models import ADD_SUB_PY, NO_SPINNING, Model, threads


@dataclass
class Baseline:
    """Per-call latency of the framework call, single thread, and the calls per second that makes."""

    model: str
    call: str
    median_us: float
    p99_us: float
    calls_per_s: float


def measure(model: Model, graph: Path | None, seconds: float) -> Baseline:
    call, what = _python(model) if model.kind == "python" else _onnx(model, graph)
    for _ in range(300):
        call()
    samples: list[float] = []
    clock = time.perf_counter_ns
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(200):
            start = clock()
            call()
            samples.append((clock() - start) / 1000)
    samples.sort()
    return Baseline(model.name, what, statistics.median(samples), samples[int(len(samples) * 0.99)],
                    1e6 / statistics.fmean(samples))  # fmt: skip


def _python(model: Model) -> tuple[Callable[[], object], str]:
    import triton_python_backend_utils as pb_utils

    spec = importlib.util.spec_from_file_location("bench_add_sub_model", ADD_SUB_PY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    instance = module.TritonPythonModel()
    outputs = [{"name": name, "data_type": "TYPE_FP32", "dims": [width]} for name, width in model.outputs]
    instance.initialize({"model_config": json.dumps({"name": model.name, "output": outputs})})
    rng = np.random.default_rng(0)
    inputs = [pb_utils.Tensor(name, rng.random((1, width), np.float32)) for name, width in model.inputs]
    request = pb_utils.InferenceRequest(model_name=model.name, inputs=inputs,
                                        requested_output_names=[name for name, _ in model.outputs])  # fmt: skip
    return (lambda: instance.execute([request])), "model.py execute(), 1 request (pb_utils in-process)"


def _onnx(model: Model, graph: Path | None) -> tuple[Callable[[], object], str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads(model)
    options.inter_op_num_threads = 1
    options.add_session_config_entry(*NO_SPINNING)
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {name: rng.random((1, width), np.float32) for name, width in model.inputs}
    names = [name for name, _ in model.outputs]
    return (lambda: session.run(names, feed)), f"InferenceSession.run, batch 1, {threads(model)} intra-op thread(s)"
