"""The inference request and response bodies of the HTTP/REST protocol, JSON and binary.

Decoding checks the request in Triton's order (id, parameters, then each input, then the outputs) and
fails with Triton's texts: the ones its JSON reader produces keep Triton's INTERNAL code, so they are
500s as in Triton. Binary inputs stay zero-copy ``memoryview`` slices of the body (validation makes
numpy views of them); JSON ``data`` becomes a numpy array without a Python loop per element for numeric
types. Encoding writes each binary output as one blob after the JSON header, again without a copy until
the final join.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conch import tensors
from conch.classification import Labels, classify
from conch.errors import ConchError, ErrorCode
from conch.frontends.http import jsonio
from conch.inference import InferenceRequest, InferenceResponse, InferInput, RequestedOutput
from conch.shared_memory import SharedMemoryRegistry, write_output

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"
_INT64_MIN = -(1 << 63)
_UINT64_LIMIT = 1 << 64

_NOT_STRING = "attempt to access JSON non-string as string"
_NOT_ARRAY = "attempt to access JSON non-array as array"
_NOT_BOOL = "attempt to access JSON non-boolean as boolean"
_NOT_UINT = "attempt to access JSON non-unsigned-integer as unsigned-integer"
_NOT_INT = "attempt to access JSON non-signed-integer as signed-integer"
_NOT_NUMBER = "attempt to access JSON non-number as double"
_SHAPE_MISMATCH = "Unable to parse 'data': Shape does not match true shape of 'data' field"
_TRITON_PREFIX_ERROR = (
    "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified."
)


@dataclass(slots=True)
class OutputOptions:
    """How the client wants one output back."""

    binary: bool
    classification: int = 0


@dataclass(slots=True)
class DecodedRequest:
    """A decoded request plus what the encoder needs to answer it."""

    request: InferenceRequest
    output_options: dict[str, OutputOptions] = field(default_factory=dict)
    binary_default: bool = False  # for outputs the request does not list (``binary_data_output``)


@dataclass(slots=True)
class EncodedResponse:
    """The JSON header and the binary blobs that follow it, in output order."""

    header: bytes
    blobs: list[bytes | memoryview]

    @property
    def has_binary(self) -> bool:
        return bool(self.blobs)

    def body_parts(self) -> list[bytes | memoryview]:
        return [self.header, *self.blobs]

    def body(self) -> bytes:
        return b"".join(self.body_parts()) if self.blobs else self.header


def _internal(message: str) -> ConchError:
    """An error from Triton's JSON reader: INTERNAL, so HTTP 500, as Triton answers."""
    return ConchError(message, ErrorCode.INTERNAL)


def _invalid(message: str) -> ConchError:
    return ConchError(message, ErrorCode.INVALID_ARG)


# -- headers --------------------------------------------------------------------------------------


def _atoi(text: str) -> int:
    """C's ``atoi`` as Triton 2.51 uses it: ``strtol`` (clamped to 64 bits, 0 without digits), then ``int``."""
    stripped = text.lstrip(" \t\n\v\f\r")
    sign = -1 if stripped[:1] == "-" else 1
    digits = stripped[1:] if stripped[:1] in ("+", "-") else stripped
    end = 0
    while end < len(digits) and digits[end] in "0123456789":
        end += 1
    value = sign * int(digits[:end]) if end else 0
    value = max(-(1 << 63), min(value, (1 << 63) - 1))
    value &= 0xFFFFFFFF  # the narrowing to a 32-bit int
    return value - (1 << 32) if value >= (1 << 31) else value


def parse_header_length(value: str | None, content_length: int) -> int:
    """The JSON header's length from ``Inference-Header-Content-Length`` (the whole body when absent).

    As in Triton 2.51, a value that is not a number reads as 0, which makes a raw binary request.
    """
    if value is None:
        return content_length
    parsed = _atoi(value)
    if parsed < 0 or parsed > content_length:
        raise _invalid(f"inference header size should be in range (0, {content_length}), got: {value}")
    return parsed


# -- JSON accessors with TritonJson's texts ------------------------------------------------------------


def _member(obj: Any, key: str, what: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _internal(f"Unable to parse '{what}': attempt to access non-existing object member '{key}'")
    return obj[key]


def _member_str(obj: Any, key: str, what: str | None = None) -> str:
    value = _member(obj, key, what or key)
    if not isinstance(value, str):
        raise _internal(f"Unable to parse '{what or key}': {_NOT_STRING}")
    return value


def _member_list(obj: Any, key: str) -> list[Any]:
    value = _member(obj, key, key)
    if not isinstance(value, list):
        raise _internal(f"Unable to parse '{key}': {_NOT_ARRAY}")
    return value


def _is_uint(value: Any) -> bool:
    return type(value) is int and 0 <= value < _UINT64_LIMIT


def _is_int(value: Any) -> bool:
    return type(value) is int and _INT64_MIN <= value < (1 << 63)


def _is_number(value: Any) -> bool:
    return type(value) is float or type(value) is int


def _as_uint(value: Any, what: str, prefix: str = "Unable to parse") -> int:
    if not _is_uint(value):
        raise _internal(f"{prefix} '{what}': {_NOT_UINT}")
    return int(value)


def _as_bool(value: Any, what: str, prefix: str = "Unable to parse") -> bool:
    if type(value) is not bool:
        raise _internal(f"{prefix} '{what}': {_NOT_BOOL}")
    return value


def _params(obj: Any) -> dict[str, Any]:
    params = obj.get("parameters") if isinstance(obj, dict) else None
    return params if isinstance(params, dict) else {}


# -- request -------------------------------------------------------------------------------------------


def decode_infer_request(
    body: bytes | bytearray | memoryview,
    header_length: int,
    model_name: str,
    model_version: int = -1,
    regions: SharedMemoryRegistry | None = None,
) -> DecodedRequest:
    """Decode a JSON (``header_length`` = whole body) or JSON-plus-binary request body.

    ``regions`` holds the client shared memory that tensors may name instead of carrying data.
    """
    view = memoryview(body)
    document = jsonio.loads(view[:header_length])
    request = InferenceRequest(model_name=model_name, model_version=model_version)
    decoded = DecodedRequest(request)
    if isinstance(document, dict) and "id" in document:
        if not isinstance(document["id"], str):
            raise _internal(f"Unable to parse 'id': {_NOT_STRING}")
        request.id = document["id"]
    if isinstance(document, dict) and "parameters" in document:
        decoded.binary_default = _decode_parameters(document["parameters"], request.parameters)
    offset = header_length
    for item in _member_list(document, "inputs"):
        offset = _decode_input(item, request, view, offset, header_length, model_name, regions)
    if offset != len(view):
        raise _invalid(f"unexpected additional input data for model '{model_name}'")
    if isinstance(document, dict) and "outputs" in document:
        for item in _member_list(document, "outputs"):
            _decode_output(item, decoded, regions)
    return decoded


def _decode_parameters(params: Any, out: dict[str, Any]) -> bool:
    """Request parameters into ``out``; returns ``binary_data_output``.

    The scheduling ones (``sequence_id``, ``sequence_start``, ``sequence_end``, ``priority``,
    ``timeout``) are checked as Triton checks them and kept under their own names.
    """
    if not isinstance(params, dict):
        raise _internal("failed to get request params.: attempt to get members for non-object")
    binary_default = False
    for key, value in params.items():
        if key == "sequence_id":
            if _is_uint(value) or isinstance(value, str):
                out[key] = value
            else:
                raise _internal(f"Unable to parse 'sequence_id': {_NOT_STRING}")
        elif key in ("sequence_start", "sequence_end"):
            out[key] = _as_bool(value, key)
        elif key in ("priority", "timeout"):
            out[key] = _as_uint(value, key)
        elif key == "binary_data_output":
            binary_default = _as_bool(value, key)
        elif key.startswith("triton_"):
            raise _invalid(_TRITON_PREFIX_ERROR)
        elif isinstance(value, str) or _is_int(value) or type(value) is bool:
            out[key] = value
        elif _is_number(value):
            out[key] = float(value)
        else:
            raise _invalid(f"parameter '{key}' has invalid type. It should be either 'int', 'bool', or 'string'.")
    return binary_default


def _content_kind(item: Any) -> tuple[bool, bool, bool]:
    params = _params(item)
    has_data = isinstance(item, dict) and "data" in item
    has_binary = "binary_data_size" in params
    has_shm = "shared_memory_region" in params
    if has_data + has_binary + has_shm != 1:
        message = (
            "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
            "'shared_memory_region' in 'parameters'. But"
        )
        if not (has_data or has_binary or has_shm):
            message += " no field is set"
        else:
            message += " set"
            message += " 'data'" if has_data else ""
            message += " 'binary_data_size'" if has_binary else ""
            message += " 'shared_memory_region'" if has_shm else ""
        raise _invalid(message)
    return has_data, has_binary, has_shm


def _shared_memory(params: dict[str, Any], regions: SharedMemoryRegistry | None) -> memoryview:
    """The bytes a tensor's ``shared_memory_*`` parameters name, checked as Triton checks them.

    A missing ``shared_memory_byte_size`` is the registry's "offset + byte size" error, as in Triton.
    """
    region = params["shared_memory_region"]
    if not isinstance(region, str):
        raise _internal(f"Unable to parse 'shared_memory_region': {_NOT_STRING}")
    for key in ("shared_memory_offset", "shared_memory_byte_size"):
        if key in params and not _is_uint(params[key]):
            raise _internal(f"Unable to parse '{key}': {_NOT_UINT}")
    if regions is None:
        raise ConchError(f"Unable to find shared memory region: '{region}'", ErrorCode.NOT_FOUND)
    return regions.view(region, params.get("shared_memory_offset", 0), params.get("shared_memory_byte_size"))


def _decode_input(
    item: Any,
    request: InferenceRequest,
    body: memoryview,
    offset: int,
    header_length: int,
    model_name: str,
    regions: SharedMemoryRegistry | None,
) -> int:
    """Add one input to ``request``; returns the offset of the next binary blob."""
    fast = _binary_input(item, request, body, offset) if header_length else None
    if fast is not None:
        return fast
    _, has_binary, has_shm = _content_kind(item)
    name = _member_str(item, "name")
    datatype = _member_str(item, "datatype")
    shape_json = _member_list(item, "shape")
    for dim in shape_json:
        if not _is_uint(dim):
            raise _internal(f"Unable to parse 'shape': {_NOT_UINT}")
    shape = [int(dim) for dim in shape_json]
    dt = tensors.BY_NAME.get(datatype)
    tensor = InferInput(name=name, datatype=dt.name if dt is not None else "<invalid>", shape=shape)
    request.add_input(tensor)
    params = _params(item)
    if has_binary:
        size = _as_uint(params["binary_data_size"], "binary_data_size")
        if size == 0:
            tensor.data = b""
            return offset
        if header_length == 0:
            raise _invalid(
                "must specify valid 'Infer-Header-Content-Length' in request header and 'binary_data_size' when "
                "passing inputs in binary data format"
            )
        available = len(body) - offset
        if size > available:
            raise _invalid(
                f"unexpected size for input '{name}', expecting {size - available} additional bytes for model "
                f"'{model_name}'"
            )
        tensor.data = body[offset : offset + size]
        return offset + size
    if has_shm:
        tensor.data = _shared_memory(params, regions).toreadonly()
        return offset
    count = tensors.element_count(shape)
    if count == 0:
        tensor.data = np.empty(0, dtype=dt.numpy if dt is not None else np.uint8)
        return offset
    data = _member_list(item, "data")
    if dt is None:
        raise _invalid(f"invalid datatype for input {name}")
    tensor.data = json_to_array(data, dt, count, name)
    return offset


def _binary_input(item: Any, request: InferenceRequest, body: memoryview, offset: int) -> int | None:
    """The common input, quickly: well-formed, a known datatype, its bytes in the binary part.

    Returns the next offset, or None (nothing changed) for anything else, which the checked path
    decodes with Triton's errors.
    """
    if type(item) is not dict or "data" in item:
        return None
    params = item.get("parameters")
    if type(params) is not dict or "shared_memory_region" in params:
        return None
    size = params.get("binary_data_size")
    name = item.get("name")
    datatype = item.get("datatype")
    shape = item.get("shape")
    if type(size) is not int or type(name) is not str or type(shape) is not list or name in request.inputs:
        return None
    dt = tensors.BY_NAME.get(datatype) if type(datatype) is str else None
    end = offset + size
    if dt is None or size <= 0 or end > len(body):
        return None
    for dim in shape:
        if type(dim) is not int or dim < 0 or dim >= _UINT64_LIMIT:
            return None
    request.inputs[name] = InferInput(name=name, datatype=dt.name, shape=list(shape), data=body[offset:end])
    return end


def _decode_output(item: Any, decoded: DecodedRequest, regions: SharedMemoryRegistry | None) -> None:
    params = _params(item)
    name = item.get("name") if type(item) is dict else None
    binary = params.get("binary_data", False)
    if (
        type(name) is str
        and type(binary) is bool
        and "shared_memory_region" not in params
        and "classification" not in params
        and name not in decoded.output_options
    ):  # the common output, quickly; anything else goes the checked way
        decoded.request.outputs.append(RequestedOutput(name))
        decoded.output_options[name] = OutputOptions(binary=binary)
        return
    if "shared_memory_region" in params:
        if "classification" in params:
            raise _invalid("Output can't set both 'shared_memory_region' and 'classification'")
        if "binary_data" in params and _as_bool(params["binary_data"], "binary_data", "Unable to set"):
            raise _invalid("Output can't set both 'shared_memory_region' and 'binary_data'")
    name = _member_str(item, "name")
    output = RequestedOutput(name)
    decoded.request.add_output(output)
    classes = 0
    if "classification" in params:
        classes = _as_uint(params["classification"], "classification", "Unable to set")
    if "shared_memory_region" in params:
        output.shared_memory = _shared_memory(params, regions)
    binary = False
    if "binary_data" in params:
        binary = _as_bool(params["binary_data"], "binary_data")
    decoded.output_options[name] = OutputOptions(binary=binary, classification=classes)


def decode_raw_request(
    body: bytes | bytearray | memoryview, model_name: str, model_version: int, config: Any
) -> DecodedRequest:
    """A raw binary request (``Inference-Header-Content-Length: 0``): the body is the model's one input.

    The input's name, datatype and shape come from the model config as Triton deduces them; every
    output is returned in binary.
    """
    request = InferenceRequest(model_name=model_name, model_version=model_version)
    decoded = DecodedRequest(request, binary_default=True)
    if len(config.input) != 1:
        raise _invalid(
            f"{request.log_prefix}Raw request must only have 1 input (found 1) to be deduced but got "
            f"{len(config.input)} inputs in '{model_name}' model configuration"
        )
    spec = config.input[0]
    datatype = tensors.config_to_protocol(spec.data_type)
    shape = [1] if config.max_batch_size != 0 else []
    dynamic_axis = -1
    count = 1
    for dim in spec.dims:
        if dim == -1:
            if dynamic_axis != -1:
                raise _invalid(
                    f"{request.log_prefix}The shape of the raw input '{spec.name}' can not be deduced because "
                    "there are more than one variable-sized dimension"
                )
            dynamic_axis = len(shape)
        else:
            count *= int(dim)
        shape.append(int(dim))
    data: np.ndarray | memoryview
    dt = tensors.BY_NAME.get(datatype)
    if datatype == "BYTES":
        if dynamic_axis != -1 or count != 1:
            raise _invalid(
                f"{request.log_prefix}For BYTE datatype raw input '{spec.name}', the model must have input shape [1]"
            )
        data = np.empty(1, dtype=object)
        data[0] = bytes(body)
    else:
        data = memoryview(body)
        itemsize = dt.itemsize if dt is not None else 0
        if dynamic_axis != -1:
            shape[dynamic_axis] = len(data) // count // itemsize if count and itemsize else 0
        expected = tensors.element_count(shape) * itemsize
        if len(data) != expected:
            # Triton checks this while the input still has its placeholder name.
            raise _invalid(
                f"{request.log_prefix}input byte size mismatch for input 'raw_input' for model '{model_name}'. "
                f"Expected {expected}, got {len(data)}"
            )
    request.add_input(InferInput(name=spec.name, datatype=datatype, shape=shape, data=data))
    return decoded


# -- JSON tensor data ------------------------------------------------------------------------------


def json_to_array(data: list[Any], dt: tensors.DataType, count: int, name: str) -> np.ndarray | bytes:
    """JSON ``data`` (flat or nested, row-major) as a flat array of ``dt``, with Triton's checks.

    BYTES whose element count differs from the shape come back serialized, so that validation reports
    the count as Triton's core does.
    """
    if dt.name == "BYTES":
        return _json_bytes(data, count)
    if dt.name in ("FP16", "BF16"):
        raise _invalid(
            f"receiving {dt.name} data via JSON is not supported. Please use the binary data format for input {name}"
        )
    flat = _flatten(data)
    if flat is not None and len(flat) == count:
        array = _convert_fast(flat, dt)
        if array is not None:
            return array
    return _convert(_walk(data, dt, count), dt)


def _flatten(data: list[Any]) -> list[Any] | None:
    """Uniformly nested lists flattened level by level; None when ragged or too deep (the exact walk decides)."""
    level = data
    depth = 1  # depth of the elements of ``level``; the ``data`` array itself is depth 0
    while level and type(level[0]) is list:
        if depth + 1 >= jsonio.MAX_NESTING_DEPTH or set(map(type, level)) != {list}:
            return None
        level = list(itertools.chain.from_iterable(level))
        depth += 1
    return level


def _convert_fast(flat: list[Any], dt: tensors.DataType) -> np.ndarray | None:
    kinds = set(map(type, flat))
    try:
        if dt.name == "BOOL":
            return np.array(flat, dtype=np.bool_) if kinds <= {bool} else None
        if dt.name in ("FP32", "FP64"):
            if not kinds <= {int, float}:
                return None
            with np.errstate(over="ignore"):
                return np.array(flat, dtype=np.float64).astype(dt.numpy, copy=False)
        if not kinds <= {int}:
            return None
        if dt.name.startswith("U"):
            return np.array(flat, dtype=np.uint64).astype(dt.numpy, copy=False)
        return np.array(flat, dtype=np.int64).astype(dt.numpy, copy=False)
    except OverflowError:
        return None


def _walk(data: list[Any], dt: tensors.DataType, count: int) -> list[Any]:
    """Triton's element-by-element read, for the exact error (type, count or depth) in its order."""
    if dt.name == "BOOL":
        check, message = (lambda v: type(v) is bool), _NOT_BOOL
    elif dt.name.startswith("U"):
        check, message = _is_uint, _NOT_UINT
    elif dt.name.startswith("INT"):
        check, message = _is_int, _NOT_INT
    else:
        check, message = _is_number, _NOT_NUMBER
    out: list[Any] = []

    def visit(value: Any, depth: int) -> None:
        if depth >= jsonio.MAX_NESTING_DEPTH:
            raise _invalid(f"Unable to parse 'data': {jsonio.NESTING_ERROR}")
        if type(value) is list:
            for element in value:
                visit(element, depth + 1)
            return
        if len(out) >= count:
            raise _internal(_SHAPE_MISMATCH)
        if not check(value):
            raise _internal(f"Unable to parse 'data': {message}")
        out.append(value)

    visit(data, 0)
    if len(out) != count:
        raise _internal(_SHAPE_MISMATCH)
    return out


def _convert(values: list[Any], dt: tensors.DataType) -> np.ndarray:
    """Checked values to ``dt``, narrowing as C casts do (Triton does not range-check)."""
    if dt.name == "BOOL":
        return np.array(values, dtype=np.bool_)
    if dt.name in ("FP32", "FP64"):
        with np.errstate(over="ignore"):
            return np.array([float(v) for v in values], dtype=np.float64).astype(dt.numpy, copy=False)
    wide = np.uint64 if dt.name.startswith("U") else np.int64
    return np.array(values, dtype=wide).astype(dt.numpy, copy=False)


def _json_bytes(data: list[Any], count: int) -> np.ndarray | bytes:
    flat = _flatten(data)
    if flat is None or not set(map(type, flat)) <= {str}:
        flat = []

        def visit(value: Any, depth: int) -> None:
            if depth >= jsonio.MAX_NESTING_DEPTH:
                raise _invalid(jsonio.NESTING_ERROR)
            if type(value) is list:
                for element in value:
                    visit(element, depth + 1)
            elif isinstance(value, str):
                flat.append(value)
            else:
                raise _internal(f"Unable to parse JSON bytes array: {_NOT_STRING}")

        visit(data, 0)
    array = np.empty(len(flat), dtype=object)
    array[:] = [jsonio.text_bytes(text) for text in flat]
    if len(flat) != count:
        return tensors.serialize_bytes(array)
    return array


# -- response -----------------------------------------------------------------------------------------




def encode_infer_response(
    response: InferenceResponse,
    decoded: DecodedRequest,
    *,
    batching: bool = False,
    labels: Labels | None = None,
) -> EncodedResponse:
    """The response body: JSON header (Triton's key order) and binary blobs.

    ``batching`` says whether the model's first dimension is the batch (``max_batch_size > 0``), which
    classification needs; ``labels`` gives an output's class labels, if any.
    """
    fast = _binary_response(response, decoded)
    if fast is not None:
        return fast
    request = decoded.request
    parts = [b"{"]
    request_id = response.id or request.id
    if request_id:
        parts += [b'"id":', jsonio.dumps(request_id), b","]
    version = response.model_version or request.version_label or str(request.model_version)
    parts += [
        b'"model_name":',
        jsonio.dumps(response.model_name or request.model_name),
        b',"model_version":',
        jsonio.dumps(version),
    ]
    if response.parameters:
        for value in response.parameters.values():
            if isinstance(value, (bytes, bytearray, memoryview)):
                raise ConchError(
                    "Response parameter of type 'TRITONSERVER_PARAMETER_BYTES' is not currently supported",
                    ErrorCode.UNSUPPORTED,
                )
        parts += [b',"parameters":', jsonio.dumps(response.parameters)]
    parts.append(b',"outputs":[')
    blobs: list[bytes | memoryview] = []
    regions = {o.name: o.shared_memory for o in request.outputs if o.shared_memory is not None}
    for index, tensor in enumerate(response.outputs):
        if index:
            parts.append(b",")
        destination = regions.get(tensor.name) if regions else None
        if destination is not None:  # the bytes go to the client's region, the response has none
            write_output(tensor.name, destination, _raw(tensors.datatype(tensor.datatype), tensor.data))
            shape = [int(d) for d in tensor.data.shape]
            parts.append(jsonio.dumps({"name": tensor.name, "datatype": tensor.datatype, "shape": shape}))
            continue
        options = decoded.output_options.get(tensor.name)
        binary = options.binary if options is not None else decoded.binary_default
        classes = options.classification if options is not None else 0
        array = tensor.data
        datatype = tensor.datatype
        if classes > 0:
            array = classify(datatype, array, classes, batching, labels(tensor.name) if labels else None)
            datatype = "BYTES"
        head: dict[str, Any] = {"name": tensor.name, "datatype": datatype, "shape": [int(d) for d in array.shape]}
        dt = tensors.datatype(datatype)
        if binary:
            raw = _raw(dt, array)
            head["parameters"] = {"binary_data_size": len(raw)}
            if len(raw):
                blobs.append(raw)
            encoded = jsonio.dumps(head)
        else:
            encoded = _json_output(head, dt, array)
        parts.append(encoded)
    parts.append(b"]}")
    return EncodedResponse(b"".join(parts), blobs)


def _binary_response(response: InferenceResponse, decoded: DecodedRequest) -> EncodedResponse | None:
    """The common response quickly: every output in binary, no classification, no parameters.

    The header is one JSON document written at once, the same bytes the general path writes piece by
    piece; None for anything else (which the general path answers, errors included).
    """
    if response.parameters:
        return None
    options = decoded.output_options
    heads: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for tensor in response.outputs:
        option = options.get(tensor.name)
        if (option.binary and not option.classification) if option is not None else decoded.binary_default:
            dt = tensors.BY_NAME.get(tensor.datatype)
            if dt is not None:
                array = tensor.data
                raw = _raw(dt, array)
                heads.append({
                    "name": tensor.name,
                    "datatype": tensor.datatype,
                    "shape": [int(d) for d in array.shape],
                    "parameters": {"binary_data_size": len(raw)},
                })  # fmt: skip
                if len(raw):
                    blobs.append(raw)
                continue
        return None
    request = decoded.request
    document: dict[str, Any] = {}
    request_id = response.id or request.id
    if request_id:
        document["id"] = request_id
    document["model_name"] = response.model_name or request.model_name
    document["model_version"] = response.model_version or request.version_label or str(request.model_version)
    document["outputs"] = heads
    try:
        return EncodedResponse(jsonio.dumps_fast(document), blobs)
    except TypeError:  # text orjson refuses (bytes that are not UTF-8): the general path writes it
        return None


def raw_bytes(datatype: str, array: np.ndarray) -> bytes | memoryview:
    """The wire bytes of an output of protocol datatype ``datatype`` (as the response carries them)."""
    return _raw(tensors.datatype(datatype), array)


def _raw(dt: tensors.DataType, array: np.ndarray) -> bytes | memoryview:
    """The wire bytes of an output: a view of the array where it allows one."""
    if dt.name == "BYTES":
        return tensors.serialize_bytes(array)
    if array.size == 0:
        return b""
    return tensors.to_raw(dt, array.reshape(-1))


def _json_output(head: dict[str, Any], dt: tensors.DataType, array: np.ndarray) -> bytes:
    if dt.name in ("FP16", "BF16"):
        raise _invalid(
            f"sending {dt.name} data via JSON is not supported. Please use the binary data format for output"
        )
    if dt.name == "BYTES":
        texts, clean = bytes_to_texts(array)
        head["data"] = texts
        return jsonio.dumps(head) if clean else jsonio.dumps_slow(head)
    flat = np.ascontiguousarray(array.astype(np.bool_ if dt.name == "BOOL" else dt.numpy, copy=False)).reshape(-1)
    if dt.name in ("FP32", "FP64"):
        flat = flat.astype(np.float64, copy=False)  # Triton writes FP32 values as doubles
        return b"".join((jsonio.dumps(head)[:-1], b',"data":', jsonio.float_array(flat), b"}"))
    head["data"] = flat
    return jsonio.dumps(head)


def bytes_to_texts(array: np.ndarray) -> tuple[list[str], bool]:
    """BYTES elements as JSON strings; ``clean`` is False when some are not UTF-8 (kept via surrogateescape)."""
    texts: list[str] = []
    clean = True
    for item in array.reshape(-1):
        if isinstance(item, str):
            texts.append(item)
            continue
        data = bytes(item) if isinstance(item, (bytes, bytearray, memoryview, np.bytes_)) else str(item).encode()
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(data.decode("utf-8", "surrogateescape"))
            clean = False
    return texts, clean
