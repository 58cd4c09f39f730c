"""What a loaded ONNX graph takes and returns: names, datatypes and dims (``-1`` for a free dim)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conch_onnxruntime.datatypes import config_type_name, protocol_datatype


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One graph input or output. ``datatype`` is a protocol name, or ``ort_type`` when it has none."""

    name: str
    datatype: str | None
    ort_type: str
    dims: tuple[int, ...]
    has_default: bool = False  # an overridable initializer: a request may leave it out

    @property
    def type_text(self) -> str:
        """The datatype as config files spell it, for messages."""
        return self.ort_type if self.datatype is None else config_type_name(self.datatype)


@dataclass(frozen=True, slots=True)
class GraphSignature:
    """Inputs (graph inputs, then overridable initializers) and outputs, in graph order."""

    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]

    @classmethod
    def of(cls, session: Any) -> GraphSignature:
        """Read the signature of an ``onnxruntime.InferenceSession``."""
        inputs = {arg.name: _info(arg) for arg in session.get_inputs()}
        for arg in session.get_overridable_initializers():
            inputs.setdefault(arg.name, _info(arg, has_default=True))
        outputs = {arg.name: _info(arg) for arg in session.get_outputs()}
        return cls(inputs, outputs)

    def required_inputs(self) -> list[TensorInfo]:
        return [info for info in self.inputs.values() if not info.has_default]

    def can_batch(self) -> bool:
        """Triton's rule: every (required) input and every output has a free first dimension."""
        tensors = [*self.required_inputs(), *self.outputs.values()]
        return bool(tensors) and all(info.dims and info.dims[0] == -1 for info in tensors)


def _info(arg: Any, has_default: bool = False) -> TensorInfo:
    shape = arg.shape if isinstance(arg.shape, (list, tuple)) else []
    dims = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape)
    return TensorInfo(arg.name, protocol_datatype(arg.type), arg.type, dims, has_default)


def shape_text(dims: tuple[int, ...] | list[int]) -> str:
    """Triton's ``ShapeToString``: ``[-1,3]``."""
    return "[" + ",".join(str(d) for d in dims) + "]"
