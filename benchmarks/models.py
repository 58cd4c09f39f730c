"""The benchmark models, and their repositories for Conch, Triton and MLServer, written at run time.

Every server serves each model under the same name with the same inputs and outputs, so one
perf_analyzer command line measures any of them:

- ``add_sub_python`` / ``add_sub_python_dyn``: Triton's add_sub ``model.py`` (two FP32 ``[batch, 16]``
  inputs, their sum and difference), one instance, without and with ``dynamic_batching {}``;
- ``add_sub_onnx`` / ``add_sub_onnx_dyn``: the same computation as an ONNX graph, two CPU instances;
- ``identity``: Conch's built-in identity backend on the same signature (no model at all: the server alone);
- ``mlp``: a 5.2-million-parameter MLP (FP32 ``[batch, 256]`` in and out, two hidden layers of 2,048)
  as an ONNX graph, one instance, dynamic batching: compute dominates.

Conch serves the ONNX graphs with its onnxruntime backend. The Triton build here has only the Python
backend, so for Triton an ONNX model is a ``model.py`` that runs the graph with ONNX Runtime (one
``run`` per ``execute``, the batch concatenated); MLServer gets custom runtimes doing the same.
Every ONNX Runtime session, on every server and in the raw loop, has the same threads (cores divided
among the instances) and does not spin (``NO_SPINNING``; Conch's ONNX Runtime backend does not by default).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADD_SUB_PY = ROOT / "examples" / "model_repository" / "add_sub" / "1" / "model.py"
MLP_WIDTH, MLP_HIDDEN = 256, 2048
#: ONNX Runtime's session entry set on every server (and the raw loop) alike: intra-op threads sleep
#: between runs instead of spinning, which on a small shared machine steals the cores the server and the
#: client need (measured: 1.8x the MLP's throughput at concurrency 16 on 2 cores; docs/performance.md).
NO_SPINNING = ("session.intra_op.allow_spinning", "0")


@dataclass(frozen=True)
class Model:
    """One benchmark model and how each server serves it."""

    name: str
    kind: str  # "python", "onnx", "identity"
    graph: str | None  # "add_sub" or "mlp" for ONNX models
    dynamic: bool
    instances: int
    max_batch_size: int
    #: input and output names with their width (FP32 ``[batch, width]``)
    inputs: tuple[tuple[str, int], ...]
    outputs: tuple[tuple[str, int], ...]
    #: peers that can serve it
    peers: tuple[str, ...]
    about: str

    @property
    def raw(self) -> bool:
        """Whether there is a framework call to compare with (all but the identity backend)."""
        return self.kind != "identity"


_ADD_SUB_IO = dict(inputs=(("INPUT0", 16), ("INPUT1", 16)), outputs=(("OUTPUT0", 16), ("OUTPUT1", 16)))
MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("add_sub_python", "python", None, False, 1, 8, **_ADD_SUB_IO, peers=("triton", "mlserver"),
              about="Triton's add_sub model.py, Python backend, 1 instance"),
        Model("add_sub_python_dyn", "python", None, True, 1, 8, **_ADD_SUB_IO, peers=("triton", "mlserver"),
              about="the same with dynamic batching"),
        Model("add_sub_onnx", "onnx", "add_sub", False, 2, 8, **_ADD_SUB_IO, peers=("triton", "mlserver"),
              about="add_sub as an ONNX graph, 2 instances"),
        Model("add_sub_onnx_dyn", "onnx", "add_sub", True, 2, 8, **_ADD_SUB_IO, peers=("triton", "mlserver"),
              about="the same with dynamic batching"),
        Model("identity", "identity", None, False, 1, 8, **_ADD_SUB_IO, peers=(),
              about="Conch's identity backend, add_sub's signature: the server alone"),
        Model("mlp", "onnx", "mlp", True, 1, 32, inputs=(("INPUT0", MLP_WIDTH),), outputs=(("OUTPUT0", MLP_WIDTH),),
              peers=("triton", "mlserver"), about="5.2 M-parameter MLP (ONNX), 1 instance, dynamic batching"),
    )
}  # fmt: skip


def threads(model: Model) -> int:
    """ONNX Runtime's intra-op threads per instance: the cores divided among the instances, as Conch does."""
    return max(1, len(os.sched_getaffinity(0)) // model.instances)


# -- ONNX graphs ----------------------------------------------------------------------------------


def write_graph(model: Model, path: Path) -> None:
    """The model's ONNX graph at ``path`` (the MLP's weights are random, seeded)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    io = helper.make_tensor_value_info
    batch: list[str | int] = ["batch"]
    if model.graph == "add_sub":
        nodes = [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
                 helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])]  # fmt: skip
        weights = []
    else:
        rng = np.random.default_rng(7)
        sizes = [MLP_WIDTH, MLP_HIDDEN, MLP_HIDDEN, MLP_WIDTH]
        nodes, weights, previous = [], [], "INPUT0"
        for layer, (fan_in, fan_out) in enumerate(pairwise(sizes)):
            w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
            weights += [numpy_helper.from_array(w, f"w{layer}"),
                        numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{layer}")]  # fmt: skip
            last = layer == len(sizes) - 2
            out = "OUTPUT0" if last else f"h{layer}"
            nodes.append(helper.make_node("Gemm", [previous, f"w{layer}", f"b{layer}"], [out if last else f"g{layer}"]))
            if not last:
                nodes.append(helper.make_node("Relu", [f"g{layer}"], [out]))
            previous = out
    graph = helper.make_graph(
        nodes, model.name,
        [io(name, TensorProto.FLOAT, batch + [width]) for name, width in model.inputs],
        [io(name, TensorProto.FLOAT, batch + [width]) for name, width in model.outputs],
        initializer=weights,
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))


def parameters(model: Model) -> int:
    """The MLP's parameter count (0 for the others)."""
    if model.graph != "mlp":
        return 0
    sizes = [MLP_WIDTH, MLP_HIDDEN, MLP_HIDDEN, MLP_WIDTH]
    return sum(a * b + b for a, b in pairwise(sizes))


# -- Conch and Triton -----------------------------------------------------------------------------


def config(model: Model, backend: str) -> str:
    """config.pbtxt, the same for Conch and Triton but for the backend."""
    tensor = '{{ name: "{}" data_type: TYPE_FP32 dims: [ {} ] }}'
    lines = [
        f'name: "{model.name}"',
        f'backend: "{backend}"',
        f"max_batch_size: {model.max_batch_size}",
        "input [ " + ", ".join(tensor.format(n, w) for n, w in model.inputs) + " ]",
        "output [ " + ", ".join(tensor.format(n, w) for n, w in model.outputs) + " ]",
        f"instance_group [ {{ count: {model.instances} kind: KIND_CPU }} ]",
    ]
    if model.dynamic:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


# For Triton's Python backend: an ONNX graph through ONNX Runtime, the requests of a batch concatenated
# into one run, as Conch's onnxruntime backend does.
TRITON_ONNX_PY = '''"""Runs model.onnx with ONNX Runtime: one session.run per execute, the requests concatenated."""

import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

THREADS = {threads}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        options.add_session_config_entry("{spin_key}", "{spin_value}")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        arrays = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs] for r in requests]
        if len(requests) == 1:
            feed = dict(zip(self.inputs, arrays[0]))
        else:
            feed = {{name: np.concatenate([a[i] for a in arrays]) for i, name in enumerate(self.inputs)}}
        results = self.session.run(self.outputs, feed)
        responses, start = [], 0
        for a in arrays:
            end = start + a[0].shape[0]
            tensors = [pb_utils.Tensor(name, r[start:end]) for name, r in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = end
        return responses
'''


def write_conch(root: Path, models: list[Model], graphs: dict[str, Path]) -> Path:
    """Conch's repository: Python models with add_sub's model.py, ONNX ones with their graph."""
    for model in models:
        version = root / model.name / "1"
        version.mkdir(parents=True)
        backend = {"python": "python", "onnx": "onnxruntime", "identity": "identity"}[model.kind]
        (root / model.name / "config.pbtxt").write_text(config(model, backend))
        if model.kind == "python":
            (version / "model.py").write_text(ADD_SUB_PY.read_text())
        elif model.kind == "onnx":
            (version / "model.onnx").symlink_to(graphs[model.name])
    return root


def write_triton(root: Path, models: list[Model], graphs: dict[str, Path]) -> Path:
    """Triton's repository: every model on the Python backend (ONNX ones through the wrapper above)."""
    for model in models:
        if "triton" not in model.peers:
            continue
        version = root / model.name / "1"
        version.mkdir(parents=True)
        (root / model.name / "config.pbtxt").write_text(config(model, "python"))
        if model.kind == "python":
            (version / "model.py").write_text(ADD_SUB_PY.read_text())
        else:
            (version / "model.py").write_text(
                TRITON_ONNX_PY.format(threads=threads(model), spin_key=NO_SPINNING[0], spin_value=NO_SPINNING[1])
            )
            (version / "model.onnx").symlink_to(graphs[model.name])
    return root


# -- MLServer -------------------------------------------------------------------------------------

MLSERVER_RUNTIME = '''"""MLServer custom runtimes for the benchmark: add_sub in numpy, and an ONNX graph through ONNX Runtime."""

import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class AddSub(MLModel):
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, as Triton's add_sub model.py."""

    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        inputs = {{tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}}
        a, b = inputs["INPUT0"], inputs["INPUT1"]
        outputs = [NumpyCodec.encode_output("OUTPUT0", a + b), NumpyCodec.encode_output("OUTPUT1", a - b)]
        return InferenceResponse(model_name=self.name, outputs=outputs)


class OnnxGraph(MLModel):
    """model.onnx beside model-settings.json, one session.run per (possibly adaptive-batched) request."""

    async def load(self) -> bool:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(self.settings.parameters.extra["threads"])
        options.inter_op_num_threads = 1
        for key, value in self.settings.parameters.extra["session_config"].items():
            options.add_session_config_entry(key, value)
        path = await get_model_uri(self.settings)
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {{tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}}
        results = self.session.run(self.output_names, feed)
        outputs = [NumpyCodec.encode_output(name, r) for name, r in zip(self.output_names, results)]
        return InferenceResponse(model_name=self.name, outputs=outputs)
'''


def write_mlserver(root: Path, models: list[Model], graphs: dict[str, Path]) -> Path:
    """MLServer's model folders: model-settings.json and the runtime module; ``root`` holds settings.json."""
    for model in models:
        if "mlserver" not in model.peers:
            continue
        folder = root / model.name
        folder.mkdir(parents=True)
        (folder / "bench_runtime.py").write_text(MLSERVER_RUNTIME.format())
        settings: dict[str, object] = {
            "name": model.name,
            "implementation": "bench_runtime." + ("AddSub" if model.kind == "python" else "OnnxGraph"),
            "inputs": [{"name": n, "datatype": "FP32", "shape": [-1, w]} for n, w in model.inputs],
            "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, w]} for n, w in model.outputs],
            "parameters": {
                "uri": "./model.onnx",
                "extra": {"threads": threads(model), "session_config": dict([NO_SPINNING])},
            },
        }
        if model.dynamic:  # MLServer's adaptive batching: what is queued within 1 ms, up to max_batch_size
            settings.update(max_batch_size=model.max_batch_size, max_batch_time=0.001)
        if model.kind == "onnx":
            (folder / "model.onnx").symlink_to(graphs[model.name])
        (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))
        as_json, as_proto = triton_config(model)  # for mlserver_shim.py: perf_analyzer reads the config
        (folder / "triton-config.json").write_text(json.dumps(as_json))
        (folder / "triton-config.pb").write_bytes(as_proto)
    return root


def triton_config(model: Model) -> tuple[dict[str, object], bytes]:
    """The model's configuration as Triton answers it: JSON, and a serialised gRPC ``ModelConfigResponse``."""
    from conch._proto import grpc_service_pb2, model_config_pb2

    fp32 = model_config_pb2.DataType.TYPE_FP32
    proto = model_config_pb2.ModelConfig(
        name=model.name, backend="python", max_batch_size=model.max_batch_size,
        input=[model_config_pb2.ModelInput(name=n, data_type=fp32, dims=[w]) for n, w in model.inputs],
        output=[model_config_pb2.ModelOutput(name=n, data_type=fp32, dims=[w]) for n, w in model.outputs],
    )  # fmt: skip
    as_json: dict[str, object] = {
        "name": model.name, "platform": "", "backend": "python", "max_batch_size": model.max_batch_size,
        "input": [{"name": n, "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [w]} for n, w in model.inputs],
        "output": [{"name": n, "data_type": "TYPE_FP32", "dims": [w]} for n, w in model.outputs],
    }  # fmt: skip
    return as_json, grpc_service_pb2.ModelConfigResponse(config=proto).SerializeToString()
