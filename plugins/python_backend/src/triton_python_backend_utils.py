"""``triton_python_backend_utils``: the module Triton Python models import as ``pb_utils``.

Conch's own implementation of Triton's Python backend API, with the same names and behaviour: the
pure-Python helpers (type converters, byte-tensor (de)serialisation, config lookups, ``ModelConfig``
for auto-complete), and the classes Triton implements natively (``Tensor``, ``InferenceRequest``,
``InferenceResponse``, ``TritonError``, ``Logger``, ``ResponseSender``). Whatever needs the server
(response senders, cancellation, BLS, model control) goes through the runtime the host installs
with :func:`_set_runtime`: a worker process or the in-process mode of ``conch_python``.
"""

from __future__ import annotations

import enum
import json
import logging
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from conch_python import dlpack as _dlpack

from conch import custom_metrics as _custom_metrics
from conch import tensors as _tensors
from conch.errors import ConchError, ErrorCode

__all__ = [
    "InferenceRequest",
    "InferenceResponse",
    "Logger",
    "Metric",
    "MetricFamily",
    "MetricKind",
    "ModelConfig",
    "PreferredMemory",
    "ResponseSender",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "deserialize_bytes_tensor",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "is_model_ready",
    "load_model",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "unload_model",
    "using_decoupled_model_transaction_policy",
]

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2
TRITONSERVER_MEMORY_GPU = 0
TRITONSERVER_MEMORY_CPU = 1

TRITON_STRING_TO_NUMPY: dict[str, Any] = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

_CODE_TO_NUMPY: dict[int, Any] = {
    1: np.bool_, 2: np.uint8, 3: np.uint16, 4: np.uint32, 5: np.uint64, 6: np.int8, 7: np.int16,
    8: np.int32, 9: np.int64, 10: np.float16, 11: np.float32, 12: np.float64, 13: np.object_,
}  # fmt: skip

_log = logging.getLogger("conch.python.model")

# The host (worker process or in-process mode) that connects models to the server; see _set_runtime.
_runtime: Any = None


def _set_runtime(runtime: Any) -> None:
    """Install what BLS, model control and response senders talk to (called by ``conch_python``)."""
    global _runtime
    _runtime = runtime


def _require_runtime(what: str) -> Any:
    if _runtime is None:
        raise TritonModelException(f"{what} is only available in a model served by Conch's Python backend")
    return _runtime


# -- pure-Python helpers --------------------------------------------------------------------------


def serialize_byte_tensor(input_tensor: np.ndarray) -> Any:
    """A BYTES tensor as Triton's wire form (4-byte little-endian length + bytes per element, C order).

    Returns an empty tuple for an empty tensor and None for a tensor that is not object or bytes_.
    """
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype != np.object_ and input_tensor.dtype.type != np.bytes_:
        return None
    parts: list[bytes] = []
    pack = struct.Struct("<I").pack
    is_object = input_tensor.dtype == np.object_
    for item in np.ascontiguousarray(input_tensor).reshape(-1):
        if is_object:
            data = item if type(item) is bytes else str(item).encode("utf-8")
        else:
            data = bytes(item)
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor: bytes | bytearray | memoryview) -> np.ndarray:
    """Triton's wire form back into a flat object array of ``bytes``."""
    view = memoryview(encoded_tensor).cast("B")
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        items.append(bytes(view[offset : offset + length]))
        offset += length
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


def get_input_tensor_by_name(inference_request: Any, name: str) -> Tensor | None:
    """The request's input called ``name``, or None."""
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: Any, name: str) -> Tensor | None:
    """The response's output called ``name``, or None."""
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``input`` entry of a config dict called ``name``, or None."""
    for properties in model_config.get("input", ()):
        if properties["name"] == name:
            return properties
    return None


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``output`` entry of a config dict called ``name``, or None."""
    for properties in model_config.get("output", ()):
        if properties["name"] == name:
            return properties
    return None


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    """Whether a config dict sets ``model_transaction_policy { decoupled: true }``."""
    if "model_transaction_policy" in model_config:
        return bool(model_config["model_transaction_policy"].get("decoupled", False))
    return False


def triton_to_numpy_type(data_type: int) -> Any:
    """TRITONSERVER_DataType number to numpy type (13, BYTES, is ``np.object_``); None when unknown."""
    return _CODE_TO_NUMPY.get(data_type)


def numpy_to_triton_type(data_type: Any) -> int | None:
    """Numpy type to TRITONSERVER_DataType number; None when there is none."""
    if data_type == np.object_ or data_type == np.bytes_:
        return 13
    for code, numpy_type in _CODE_TO_NUMPY.items():
        if code != 13 and data_type == numpy_type:
            return code
    return None


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """``"TYPE_FP32"`` to ``np.float32``; a KeyError for names without a numpy type (TYPE_BF16)."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


class ModelConfig:
    """The model configuration handed to ``auto_complete_config``, with Triton's setters and checks."""

    def __init__(self, model_config: str | dict[str, Any]) -> None:
        self._model_config: dict[str, Any] = (
            json.loads(model_config) if isinstance(model_config, (str, bytes)) else model_config
        )

    def as_dict(self) -> dict[str, Any]:
        return self._model_config

    def _name(self) -> str:
        return str(self._model_config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = self._model_config.get("max_batch_size", 0)
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in auto-complete-config function for "
                f"model '{self._name()}' specified max_batch_size {max_batch_size}"
            )
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for scheduler in ("sequence_batching", "ensemble_scheduling"):
            if scheduler in self._model_config:
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{scheduler}', but auto-complete-config "
                    f"function for model '{self._name()}' tries to set scheduling_choice as 'dynamic_batching'"
                )
        self._model_config.setdefault("dynamic_batching", {})

    def add_input(self, input: dict[str, Any]) -> None:  # noqa: A002 - Triton's parameter name
        self._add_tensor("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict[str, Any]) -> None:
        self._add_tensor("output", output, ("name", "data_type", "dims"))

    def _add_tensor(self, kind: str, tensor: dict[str, Any], valid: tuple[str, ...]) -> None:
        model = self._name()
        for key in tensor:
            if key not in valid:
                allowed = "'name', 'data_type', 'dims' and 'optional'" if kind == "input" else "'name', 'data_type' and 'dims'"
                raise ValueError(
                    f"{kind} '{tensor.get('name', '')}' in auto-complete-config function for model '{model}' "
                    f"contains property other than {allowed}."
                )
        if "name" not in tensor:
            raise ValueError(f"{kind} in auto-complete-config function for model '{model}' is missing 'name' property.")
        for key in ("data_type", "dims"):
            if key not in tensor:
                raise ValueError(
                    f"{kind} '{tensor['name']}' in auto-complete-config function for model '{model}' is missing "
                    f"'{key}' property."
                )
        existing_list = self._model_config.setdefault(kind, [])
        for current in existing_list:
            if current["name"] != tensor["name"]:
                continue
            if current.get("data_type", "TYPE_INVALID") not in ("TYPE_INVALID", tensor["data_type"]):
                raise ValueError(
                    f"unable to load model '{model}', configuration expects datatype {current['data_type']} for "
                    f"{kind} '{tensor['name']}', model provides {tensor['data_type']}"
                )
            if current.get("dims") and list(current["dims"]) != list(tensor["dims"]):
                raise ValueError(
                    f"model '{model}', tensor '{tensor['name']}': the model expects dims {tensor['dims']} but the "
                    f"model configuration specifies dims {current['dims']}"
                )
            if "optional" in current and "optional" in tensor and current["optional"] != tensor["optional"]:
                raise ValueError(
                    f"model '{model}', tensor '{tensor['name']}': the model expects optional {tensor['optional']} "
                    f"but the model configuration specifies optional {current['optional']}"
                )
            current["data_type"] = tensor["data_type"]
            current["dims"] = tensor["dims"]
            if "optional" in tensor:
                current["optional"] = tensor["optional"]
            return
        existing_list.append(tensor)

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        model = self._name()
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(
                    f"model transaction property in auto-complete-config function for model '{model}' contains "
                    "property other than 'decoupled'."
                )
        policy = self._model_config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            wanted = transaction_policy_dict["decoupled"]
            if "decoupled" in policy and policy["decoupled"] != wanted:
                raise ValueError(
                    f"trying to change decoupled property in auto-complete-config for model '{model}', which is "
                    f"already set to '{policy['decoupled']}'."
                )
            policy["decoupled"] = wanted


# -- errors and logging ---------------------------------------------------------------------------


class TritonError(Exception):
    """An error with a Triton error code, returned in a response or raised."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self._message = str(message)
        self._code = int(code)

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


#: Code number to Conch's ErrorCode name.
ERROR_CODE_NAMES = {
    0: "UNKNOWN", 1: "INTERNAL", 2: "NOT_FOUND", 3: "INVALID_ARG",
    4: "UNAVAILABLE", 5: "UNSUPPORTED", 6: "ALREADY_EXISTS", 7: "CANCELLED",
}  # fmt: skip


class TritonModelException(Exception):
    """Raised by models (and by this module) to fail a load or the requests of an execute."""


class Logger:
    """Messages into the server log, obeying its log settings."""

    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3
    _LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.DEBUG}

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        _log.log(Logger._LEVELS.get(level, logging.INFO), "%s", message, stacklevel=2)

    @staticmethod
    def log_info(message: str) -> None:
        _log.info("%s", message, stacklevel=2)

    @staticmethod
    def log_warn(message: str) -> None:
        _log.warning("%s", message, stacklevel=2)

    @staticmethod
    def log_error(message: str) -> None:
        _log.error("%s", message, stacklevel=2)

    @staticmethod
    def log_verbose(message: str) -> None:
        _log.debug("%s", message, stacklevel=2)


# -- tensors ----------------------------------------------------------------------------------------


class _Capsule:
    """Wraps a bare DLPack capsule so ``np.from_dlpack`` can read it (CPU only)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, stream: Any = None, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)


class Tensor:
    """A named tensor. BYTES tensors are object arrays; other dtypes keep their numpy dtype."""

    __slots__ = ("_name", "_array", "_datatype")

    def __init__(self, name: str, array: Any, *_: Any) -> None:
        if not isinstance(name, str) or not name:
            raise TritonModelException("Tensor name cannot be an empty string.")
        array = np.asarray(array)
        if array.dtype.kind in ("O", "S", "U"):
            datatype = "BYTES"
            if array.dtype.kind == "U":
                array = array.astype(np.object_)
        else:
            try:
                datatype = _tensors.numpy_to_protocol(array.dtype)
            except Exception as exc:  # noqa: BLE001
                raise TritonModelException(f"Tensor '{name}': unsupported numpy dtype {array.dtype}") from exc
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        self._name = name
        self._array = array
        self._datatype = datatype

    @classmethod
    def _wrap(cls, name: str, datatype: str, array: np.ndarray) -> Tensor:
        """A tensor with a known protocol datatype (BF16 arrays hold uint16 bits)."""
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._array = array
        tensor._datatype = datatype
        return tensor

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if self._datatype == "BF16":
            raise TritonModelException("Tensor dtype BF16 is not supported by as_numpy(); use to_dlpack() instead.")
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int:
        return _tensors.BY_NAME[self._datatype].config_number

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        if self._datatype == "BYTES":
            raise TritonModelException("DLPack does not have support for string tensors.")
        if self._datatype == "BF16":
            return _dlpack.export_bf16(self._array)
        return self._array.__dlpack__()

    def __dlpack__(self, stream: Any = None) -> Any:
        return self.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)

    @staticmethod
    def from_dlpack(name: str, dlpack_object: Any) -> Tensor:
        capsule = dlpack_object.__dlpack__() if hasattr(dlpack_object, "__dlpack__") else dlpack_object
        try:
            if _dlpack.is_bf16_capsule(capsule):
                return Tensor._wrap(name, "BF16", _dlpack.import_bf16(capsule))
            array = np.from_dlpack(_Capsule(capsule))
        except Exception as exc:  # noqa: BLE001
            if "not contiguous" in str(exc):
                raise TritonModelException(str(exc)) from None
            raise TritonModelException(f"Tensor '{name}': cannot import the DLPack tensor: {exc}") from exc
        if not array.flags.c_contiguous:
            raise TritonModelException("DLPack tensor is not contiguous. Only contiguous DLPack tensors that are stored in C-Order are supported.")
        return Tensor(name, array)

    def __repr__(self) -> str:
        return f"Tensor(name={self._name!r}, datatype={self._datatype}, shape={self.shape()})"


class PreferredMemory:
    """Where BLS outputs should live; Conch serves CPU memory only."""

    def __init__(self, preferred_memory_type: int = TRITONSERVER_MEMORY_CPU, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


# -- responses --------------------------------------------------------------------------------------


class InferenceResponse:
    """A model's response: output tensors, or an error."""

    __slots__ = ("_outputs", "_error", "_parameters")

    def __init__(
        self,
        output_tensors: Iterable[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        self._outputs = list(output_tensors or [])
        for tensor in self._outputs:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    f"InferenceResponse output_tensors must be pb_utils.Tensor objects, got {type(tensor).__name__}"
                )
        if error is not None and not isinstance(error, TritonError):
            error = TritonError(str(error))
        self._error = error
        if isinstance(parameters, str):
            parameters = json.loads(parameters) if parameters else {}
        for key, value in (parameters or {}).items():
            if not isinstance(key, str) or not isinstance(value, (bool, int, str)):
                raise TritonModelException(
                    "Expect parameters keys to have type str and values to have type bool/int/str, found "
                    f"{type(key).__name__}: {type(value).__name__}"
                )
        self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


class ResponseSender:
    """Sends responses of one request, from ``execute`` or any thread after it returns."""

    def __init__(self, request: InferenceRequest, decoupled: bool) -> None:
        self._request = request
        self._decoupled = decoupled
        self._closed = False
        self._sent = 0

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(
                f"ResponseSender.send expects a pb_utils.InferenceResponse, got {type(response).__name__}"
            )
        if not self._decoupled:
            if response is not None and self._sent:
                raise TritonModelException("Non-decoupled model cannot send more than one response.")
            if final and response is None and not self._sent:
                raise TritonModelException("Non-decoupled model cannot send complete final before sending a response.")
        if response is None and not final:
            raise TritonModelException("Response must be provided when the flags are not COMPLETE_FINAL.")
        if response is not None:
            self._sent += 1
        if final:
            self._closed = True
        host = self._request._host
        if host is None:
            raise TritonModelException("Unable to send response: the request is not attached to a server.")
        host.send(self._request, response, flags)

    def is_cancelled(self) -> bool:
        return self._request.is_cancelled()


# -- requests -------------------------------------------------------------------------------------


class InferenceRequest:
    """A request: received by ``execute``, or built by the model for BLS (``exec``/``async_exec``)."""

    def __init__(
        self,
        model_name: str = "",
        requested_output_names: Iterable[str] = (),
        inputs: Iterable[Tensor] = (),
        request_id: str = "",
        correlation_id: int | str = 0,
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: PreferredMemory | None = None,
        trace: Any = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        self._model_name = model_name
        self._requested_output_names = list(requested_output_names)
        self._inputs = list(inputs)
        self._request_id = request_id
        self._correlation_id = correlation_id
        self._model_version = model_version
        self._flags = flags
        self._timeout = timeout
        self._preferred_memory = preferred_memory or PreferredMemory()
        self._trace = trace
        if isinstance(parameters, dict):
            parameters = json.dumps(parameters)
        self._parameters = parameters or "{}"
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        self._host: Any = None  # set on requests handed to execute
        self._key: Any = None
        self._sender: ResponseSender | None = None
        self._decoupled = False

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested_output_names

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def model_name(self) -> str:
        return self._model_name

    def model_version(self) -> int:
        return self._model_version

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return self._parameters

    def trace(self) -> Any:
        return self._trace

    def set_release_flags(self, flags: int) -> None:
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException("Request rescheduling is not supported by Conch yet.")
        self._release_flags = flags

    def get_response_sender(self) -> ResponseSender:
        if self._host is None:
            raise TritonModelException("get_response_sender() is only available on requests received by execute")
        if self._sender is None:
            self._sender = ResponseSender(self, self._decoupled)
        return self._sender

    def is_cancelled(self) -> bool:
        if self._host is None:
            return False
        return bool(self._host.is_cancelled(self))

    def exec(self, decoupled: bool = False) -> Any:
        """Run this request on a model of the server (BLS); a response, or an iterator when decoupled."""
        return _require_runtime("BLS").bls(self, decoupled)

    def async_exec(self, decoupled: bool = False) -> Any:
        """Like :meth:`exec`, as an awaitable (use it from ``async def execute``)."""
        return _require_runtime("BLS").bls_async(self, decoupled)


class _ResponseIterator:
    """The responses of a decoupled BLS request, ending with the (possibly empty) final one."""

    def __init__(self, next_response: Any, cancel: Any) -> None:
        self._next = next_response
        self._cancel = cancel
        self._done = False

    def __iter__(self) -> Iterator[InferenceResponse]:
        return self

    def __next__(self) -> InferenceResponse:
        if self._done:
            raise StopIteration
        response, final = self._next()
        if final:
            self._done = True
        return response

    def cancel(self) -> None:
        self._cancel()


# -- model control and metrics ----------------------------------------------------------------------


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    """Load (or reload) a model of the server; needs ``--model-control-mode=explicit``.

    ``config`` (the model configuration as JSON text) and ``files`` (``{"file:<path>": bytes}``, paths
    relative to the model folder) go to the server's load API as its ``config`` and ``file:`` parameters,
    exactly as a client's repository load request would send them.
    """
    _require_runtime("load_model").load_model(model_name, config, files)


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload a model of the server; needs ``--model-control-mode=explicit``."""
    _require_runtime("unload_model").unload_model(model_name, unload_dependents)


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    """Whether a model (version) of the server is ready."""
    return bool(_require_runtime("is_model_ready").is_model_ready(model_name, str(model_version)))


class MetricKind(enum.IntEnum):
    """The kind of a :class:`MetricFamily` (``MetricFamily.COUNTER`` and so on)."""

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


def _metric_failure(what: str, instance: str, exc: ConchError) -> TritonModelException:
    """Triton's text for a failed metric call: ``<what>: Failed to process the request for model ...``."""
    where = f"Failed to process the request for model '{instance}', message: " if instance else ""
    return TritonModelException(f"{what}: {where}{exc.message}")


class MetricFamily:
    """A custom Prometheus metric family, shown on the server's metrics endpoint next to Triton's.

    The same name and kind give the same family (the first description stays); another kind is an
    error. The family lives while this object or one of its metrics does, and at most as long as the
    model instance that created it.
    """

    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: MetricKind) -> None:
        self._ref: Any = None
        if isinstance(kind, bool) or not isinstance(kind, int) or kind not in (0, 1, 2):
            raise TypeError(
                f"MetricFamily(): kind must be pb_utils.MetricFamily.COUNTER, GAUGE or HISTOGRAM, got {kind!r} "
                f"(metric family {name!r})"
            )
        if not isinstance(name, str) or not isinstance(description, str):
            raise TypeError(
                f"MetricFamily(): name and description must be strings, got {type(name).__name__} and "
                f"{type(description).__name__}"
            )
        self._kind = MetricKind(kind)
        self._core_kind = _CORE_KINDS[self._kind]
        self._name = name
        self._client = _require_runtime("MetricFamily").metrics
        self._instance = self._client.instance_name()
        try:
            self._ref = self._client.new_family(name, description, self._core_kind.value)
        except ConchError as exc:
            raise _metric_failure("Error when creating MetricFamily", self._instance, exc) from None

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:  # noqa: N802 - Triton's name
        """A metric (one series) of this family; a histogram needs ``buckets``, the others take none."""
        family = f"metric family '{self._name}'"
        if labels is not None and not isinstance(labels, dict):
            raise TritonModelException(
                f"Failed to create metric. Labels must be a dictionary. ({family}, got {type(labels).__name__})"
            )
        if buckets is not None:
            if not isinstance(buckets, list):
                raise TritonModelException(
                    f"Failed to create metric. Buckets must be a list. ({family}, got {type(buckets).__name__})"
                )
            if self._kind is not MetricKind.HISTOGRAM:
                raise TritonModelException(
                    f"Failed to create metric. Unexpected buckets found. ({family} is a {self._core_kind.value})"
                )
        elif self._kind is MetricKind.HISTOGRAM:
            raise TritonModelException(f"Failed to create metric. Missing required buckets. ({family} is a histogram)")
        return Metric(self, dict(labels or {}), buckets)

    def __del__(self) -> None:
        if self._ref is not None:
            self._client.release(self._ref)


_CORE_KINDS = {
    MetricKind.COUNTER: _custom_metrics.MetricKind.COUNTER,
    MetricKind.GAUGE: _custom_metrics.MetricKind.GAUGE,
    MetricKind.HISTOGRAM: _custom_metrics.MetricKind.HISTOGRAM,
}


class Metric:
    """One series of a :class:`MetricFamily`: ``increment``, ``set``, ``observe``, ``value``.

    Updates are checked here and sent without waiting; ``value()`` asks the server, so it sees every
    update made before it, from any instance.
    """

    def __init__(self, family: MetricFamily, labels: dict[str, str], buckets: list[float] | None) -> None:
        self._ref: Any = None
        self._family = family  # keeps the family alive as long as its metrics
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items(), key=lambda kv: str(kv[0])))
        self._display = f"'{family._name}{{{inner}}}'" if inner else f"'{family._name}'"
        try:
            self._ref = family._client.new_metric(family._ref, labels, buckets)
        except ConchError as exc:
            raise _metric_failure("Error when creating Metric", family._instance, exc) from None

    def increment(self, value: float) -> None:
        """Add ``value``; a counter only takes non-negative values."""
        self._update("increment", value, "Failed to increment metric value")

    def set(self, value: float) -> None:
        """Set a gauge to ``value``."""
        self._update("set", value, "Failed to set metric value")

    def observe(self, value: float) -> None:
        """Count ``value`` in a histogram."""
        self._update("observe", value, "Failed to observe metric value")

    def value(self) -> float:
        """The current value of a counter or gauge, as the server has it."""
        family = self._family
        try:
            self._check("value", 0.0)
            return float(family._client.value(self._ref))
        except ConchError as exc:
            raise _metric_failure("Failed to get metric value", family._instance, exc) from None

    def _update(self, op: str, value: float, what: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"Metric.{op}() expects a number, got {type(value).__name__} (metric {self._display})")
        family = self._family
        try:
            self._check(op, float(value))
            family._client.update(self._ref, op, float(value))
        except ConchError as exc:
            raise _metric_failure(what, family._instance, exc) from None

    def _check(self, op: str, value: float) -> None:
        error = _custom_metrics.update_error(self._family._core_kind, op, value, self._display)
        if error is not None:
            raise ConchError(error, ErrorCode.INVALID_ARG)

    def __del__(self) -> None:
        if self._ref is not None:
            self._family._client.release(self._ref)
