"""Tiny ONNX models built at test time with ``onnx.helper``, and repositories of them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]

#: Protocol datatype → ONNX element type, for the identity models.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
    "BF16": TensorProto.BFLOAT16,
}


def _model(nodes: list, inputs: list, outputs: list, initializers: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8  # loadable by every onnxruntime this plugin supports
    onnx.checker.check_model(model)
    return model


def add_sub(dims: tuple = ("batch", 16), elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """Triton's add_sub: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    io = helper.make_tensor_value_info
    return _model(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        [io("INPUT0", elem, list(dims)), io("INPUT1", elem, list(dims))],
        [io("OUTPUT0", elem, list(dims)), io("OUTPUT1", elem, list(dims))],
    )


def identity(datatype: str, dims: tuple = ("batch", "n")) -> onnx.ModelProto:
    """INPUT0 → OUTPUT0 unchanged, of one datatype."""
    io = helper.make_tensor_value_info
    elem = ONNX_TYPES[datatype]
    return _model(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        [io("INPUT0", elem, list(dims))],
        [io("OUTPUT0", elem, list(dims))],
    )


def double(dims: tuple = ("batch", "h", "w")) -> onnx.ModelProto:
    """Y = X * 2 with free dims (variable shapes)."""
    io = helper.make_tensor_value_info
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    return _model(
        [helper.make_node("Mul", ["X", "two"], ["Y"])],
        [io("X", TensorProto.FLOAT, list(dims))],
        [io("Y", TensorProto.FLOAT, list(dims))],
        [two],
    )


def scalar_plus_one(dims: tuple = ()) -> onnx.ModelProto:
    """Y = X + 1 on an INT32 tensor of ``dims`` (``()``: a graph scalar)."""
    io = helper.make_tensor_value_info
    one = numpy_helper.from_array(np.array(1, dtype=np.int32), "one")
    return _model(
        [helper.make_node("Add", ["X", "one"], ["Y"])],
        [io("X", TensorProto.INT32, list(dims))],
        [io("Y", TensorProto.INT32, list(dims))],
        [one],
    )


def optional_bias() -> onnx.ModelProto:
    """Y = A + B where B is an overridable initializer (default [1, 1, 1]): a request may leave B out."""
    io = helper.make_tensor_value_info
    bias = numpy_helper.from_array(np.ones(3, dtype=np.float32), "B")
    return _model(
        [helper.make_node("Add", ["A", "B"], ["Y"])],
        [io("A", TensorProto.FLOAT, [3]), io("B", TensorProto.FLOAT, [3])],
        [io("Y", TensorProto.FLOAT, [3])],
        [bias],
    )


def external_weights() -> onnx.ModelProto:
    """Y = X + W with W (16 floats, 0..15) meant to be saved as external data."""
    io = helper.make_tensor_value_info
    weights = numpy_helper.from_array(np.arange(16, dtype=np.float32), "W")
    return _model(
        [helper.make_node("Add", ["X", "W"], ["Y"])],
        [io("X", TensorProto.FLOAT, ["batch", 16])],
        [io("Y", TensorProto.FLOAT, ["batch", 16])],
        [weights],
    )


def reshape_2x2() -> onnx.ModelProto:
    """Y = reshape(X, [2, 2]): fails inside ONNX Runtime unless X has 4 elements."""
    io = helper.make_tensor_value_info
    shape = numpy_helper.from_array(np.array([2, 2], dtype=np.int64), "shape")
    return _model(
        [helper.make_node("Reshape", ["X", "shape"], ["Y"])],
        [io("X", TensorProto.FLOAT, ["n"])],
        [io("Y", TensorProto.FLOAT, [2, 2])],
        [shape],
    )


def matmul_512() -> onnx.ModelProto:
    """Y = X @ W with W 512x512: milliseconds per run at a few hundred rows, never "short"."""
    io = helper.make_tensor_value_info
    weights = numpy_helper.from_array(np.full((512, 512), 0.001, dtype=np.float32), "W")
    return _model(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        [io("X", TensorProto.FLOAT, ["batch", 512])],
        [io("Y", TensorProto.FLOAT, ["batch", 512])],
        [weights],
    )


def save(repo: Path, name: str, model: onnx.ModelProto, config: str | None = None, external: bool = False) -> Path:
    """Write ``<repo>/<name>/1/model.onnx`` (a folder with ``weights.bin`` when ``external``) and the config."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    if external:
        folder = version / "model.onnx"
        folder.mkdir()
        onnx.save_model(
            model,
            str(folder / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.bin",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(version / "model.onnx"))
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return repo / name


@pytest.fixture(scope="session")
def models() -> SimpleNamespace:
    """The model builders, for tests (test modules cannot import this conftest)."""
    builders: dict[str, Callable[..., object]] = {
        "add_sub": add_sub,
        "identity": identity,
        "double": double,
        "scalar_plus_one": scalar_plus_one,
        "optional_bias": optional_bias,
        "external_weights": external_weights,
        "reshape_2x2": reshape_2x2,
        "matmul_512": matmul_512,
        "save": save,
    }
    return SimpleNamespace(ONNX_TYPES=ONNX_TYPES, **builders)
