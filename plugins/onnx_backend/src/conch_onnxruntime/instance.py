"""One model instance: an ``InferenceSession`` running concatenated batches.

Inputs arrive concatenated along the batch dimension as numpy arrays and go to ``session.run``
as they are (ONNX Runtime reads numpy memory in place on CPU); outputs come back as the arrays
ONNX Runtime returns. Only what ONNX Runtime's Python API cannot take is converted:

- BYTES: the protocol carries ``bytes``, ONNX Runtime string tensors take and give ``str`` (UTF-8);
- graph scalars: a ``[1]`` tensor of the config feeds a rank-0 graph input, and a rank-0 output
  takes the config's dims;
- output ``reshape``: the graph's shape becomes the config's ``dims``;
- BF16: numpy has no bfloat16, so such models run through ``OrtValue`` holding the uint16 bits.

``execute_batch`` is synchronous: Conch's runner calls it on the instance's own thread, or right on
the event loop when recent runs were shorter than a thread hop (the core's ``inline_max_us``).

Numpy feeds go straight to the session's C++ ``run`` (see :func:`direct_run`): the Python wrapper's
checks cost more than the run of a small graph. A run that fails there is run again through the
wrapper, so that errors (and its execution-provider fallback) are the wrapper's own.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from conch import ConchError, ErrorCode, ModelInstance
from conch_onnxruntime.datatypes import ONNX_BFLOAT16
from conch_onnxruntime.errors import run_error
from conch_onnxruntime.signature import GraphSignature

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig

Fix = Callable[[np.ndarray], Any]

_DECODE = np.frompyfunc(bytes.decode, 1, 1)
_ENCODE = np.frompyfunc(str.encode, 1, 1)


class OnnxInstance(ModelInstance):
    """Runs concatenated batches through one session."""

    def __init__(
        self,
        session: Any,
        config: ModelConfig,
        signature: GraphSignature,
        run_options: Any,
        ort: Any,
        *,
        name: str = "",
    ):
        self.session = session
        self.model = config.name
        self._ort = ort
        self._run = session.run
        self._direct = direct_run(session)
        self._run_options = run_options
        self._bf16 = any(info.datatype == "BF16" for info in [*signature.inputs.values(), *signature.outputs.values()])
        if self._bf16 and any(
            info.datatype == "BYTES" for info in [*signature.inputs.values(), *signature.outputs.values()]
        ):
            raise ConchError(
                f"unable to load model '{self.model}': models with both BF16 and string tensors are not supported "
                "by the onnxruntime backend yet",
                ErrorCode.UNSUPPORTED,
            )
        self._input_fixes = _input_fixes(config, signature, self.model)
        self._output_fixes = _output_fixes(config, signature)

    def run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Run one batch on the calling thread; ONNX Runtime failures become the model's errors."""
        feed = inputs
        if self._input_fixes:
            feed = dict(inputs)
            for name, fix in self._input_fixes.items():
                if name in feed:
                    feed[name] = fix(feed[name])
        try:
            if self._bf16:
                results = self._run_ort_values(feed, output_names)
            elif self._direct is not None and output_names:
                try:
                    results = self._direct(output_names, feed, self._run_options)
                except Exception:  # noqa: BLE001 - the wrapper's checks, errors and fallback decide
                    results = self._run(output_names, feed, self._run_options)
            else:
                results = self._run(output_names, feed, self._run_options)
        except ConchError:
            raise
        except Exception as exc:  # noqa: BLE001 - every ONNX Runtime failure becomes the model's error
            raise run_error(self.model, exc) from None
        outputs = dict(zip(output_names, results, strict=True))
        for name, fix in self._output_fixes.items():
            if name in outputs:
                outputs[name] = fix(outputs[name])
        return outputs

    execute_batch = run  # the runner's call, without a frame of its own

    def _run_ort_values(self, feed: dict[str, Any], output_names: list[str]) -> list[np.ndarray]:
        values = self._ort.OrtValue
        bound = {
            name: array if isinstance(array, values) else values.ortvalue_from_numpy(np.ascontiguousarray(array))
            for name, array in feed.items()
        }
        results = self.session.run_with_ort_values(output_names, bound, self._run_options)
        return [_bf16_array(value) if value.element_type() == ONNX_BFLOAT16 else value.numpy() for value in results]

    def unload(self) -> None:
        self.session = None
        self._run = None
        self._direct = None


def direct_run(session: Any) -> Callable[..., list[Any]] | None:
    """The C++ ``run`` under ``session.run``, or None where the wrapper does more than check its arguments.

    ``InferenceSession.run`` checks that no required input is missing and that OrtValue feeds belong to
    the session, fills in all outputs when none are named, and refuses WebGPU graph capture; then it
    calls ``session._sess.run``. Feeds here are numpy arrays and outputs are named, so a successful
    call is the same either way.
    """
    inner = getattr(session, "_sess", None)
    run = getattr(inner, "run", None)
    if run is None:
        return None
    capture = getattr(inner, "is_webgpu_graph_capture_enabled", None)
    try:
        if capture is not None and capture():
            return None
    except Exception:  # noqa: BLE001 - cannot tell: keep the wrapper
        return None
    return run


def _input_fixes(config: ModelConfig, signature: GraphSignature, model: str) -> dict[str, Fix]:
    fixes: dict[str, Fix] = {}
    for tensor in config.input:
        info = signature.inputs[tensor.name]
        steps: list[Fix] = []
        if info.datatype == "BYTES":
            steps.append(_decoder(tensor.name, model))
        if not info.dims:
            steps.append(lambda array: array.reshape(()))
        if info.datatype == "BF16":
            steps.append(_bf16_value)
        if steps:
            fixes[tensor.name] = _chain(steps)
    return fixes


def _output_fixes(config: ModelConfig, signature: GraphSignature) -> dict[str, Fix]:
    batching = config.max_batch_size > 0
    fixes: dict[str, Fix] = {}
    for tensor in config.output:
        info = signature.outputs[tensor.name]
        steps: list[Fix] = []
        if info.datatype == "BYTES":
            steps.append(_encode)
        dims = [int(d) for d in tensor.dims]
        if tensor.HasField("reshape"):
            steps.append(_reshaper(dims, [int(d) for d in tensor.reshape.shape], batching))
        elif not info.dims:
            steps.append(_reshaper(dims, [], batching))
        if steps:
            fixes[tensor.name] = _chain(steps)
    return fixes


def _chain(steps: list[Fix]) -> Fix:
    if len(steps) == 1:
        return steps[0]

    def run(array: np.ndarray) -> Any:
        for step in steps:
            array = step(array)
        return array

    return run


def _decoder(name: str, model: str) -> Fix:
    def decode(array: np.ndarray) -> np.ndarray:
        try:
            text = _DECODE(array)
        except UnicodeDecodeError as exc:
            raise ConchError(
                f"input '{name}' for model '{model}': ONNX Runtime string tensors hold UTF-8 text, got bytes that "
                f"are not UTF-8 ({exc.reason} at byte {exc.start})",
                ErrorCode.INVALID_ARG,
            ) from None
        except TypeError:  # elements that are not bytes: take their text
            text = np.frompyfunc(_as_text, 1, 1)(array)
        return text if isinstance(text, np.ndarray) else np.array(text, dtype=object)

    return decode


def _as_text(item: Any) -> str:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item).decode("utf-8")
    return str(item)


def _encode(array: np.ndarray) -> np.ndarray:
    data = _ENCODE(array)
    return data if isinstance(data, np.ndarray) else np.array(data, dtype=object)


def _reshaper(dims: list[int], reshape: list[int], batching: bool) -> Fix:
    """Graph output shaped as ``reshape`` → the config's ``dims``, free dims carried over in order."""

    def apply(array: np.ndarray) -> np.ndarray:
        body = array.shape[1:] if batching else array.shape
        free = [got for want, got in zip(reshape, body, strict=False) if want == -1]
        shape = [free.pop(0) if dim == -1 and free else dim for dim in dims]
        return array.reshape(([array.shape[0]] if batching else []) + shape)

    return apply


def _bf16_value(array: np.ndarray) -> Any:
    import onnxruntime

    return onnxruntime.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(array), ONNX_BFLOAT16)


def _bf16_array(value: Any) -> np.ndarray:
    """A bfloat16 OrtValue's bits as a uint16 array (a copy, so the OrtValue may go)."""
    shape = tuple(value.shape())
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.zeros(shape, dtype=np.uint16)
    buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
    return np.ctypeslib.as_array(buffer).reshape(shape).copy()
