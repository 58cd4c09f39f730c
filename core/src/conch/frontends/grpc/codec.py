"""ModelInferRequest bytes to :class:`InferenceRequest`, and :class:`InferenceResponse` to response bytes.

The tensor bytes never go through protobuf objects on the hot path. A large request is split on the
wire: its ``raw_input_contents`` entries become zero-copy ``memoryview`` slices of the received message
and only the small remainder is parsed with protobuf. A response is written as the protobuf-serialized
header (name, version, id, parameters, output metadata) followed by hand-framed
``raw_output_contents`` entries, so each output is copied once, into the message. Triton answers with
``raw_output_contents`` only (never typed contents), one entry per output in order, and so does this.

Every error text and code here is Triton 2.51's (``src/grpc/infer_handler.cc``, ``src/common.cc``,
``src/grpc/grpc_utils.h``; recorded in ``docs/dev/triton-observed.md`` section 6).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conch import tensors
from conch._proto.grpc_service_pb2 import (
    InferParameter,
    ModelInferRequest,
    ModelInferResponse,
    ModelStreamInferResponse,
)
from conch.classification import Labels, classify
from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferenceResponse, InferInput, RequestedOutput
from conch.shared_memory import SharedMemoryRegistry, write_output

#: Triton's gRPC message size limit (``MAX_GRPC_MESSAGE_SIZE``), also the server's send/receive limit.
MAX_MESSAGE_SIZE = 2**31 - 1

#: Requests at least this big are split on the wire instead of parsed whole by protobuf.
SPLIT_THRESHOLD = 64 * 1024

#: The only ``triton_`` request parameter a client may send (Triton's ``TRITON_RESERVED_REQUEST_PARAMS``).
EMPTY_FINAL_KEY = "triton_enable_empty_final_response"
FINAL_RESPONSE_KEY = "triton_final_response"

_RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
_RAW_OUTPUT_TAG = b"\x32"  # ModelInferResponse.raw_output_contents: field 6, length-delimited
_INFER_RESPONSE_TAG = b"\x12"  # ModelStreamInferResponse.infer_response: field 2, length-delimited
_INT64_MAX = 2**63 - 1
_INVALID_DATATYPE = "<invalid>"  # TRITONSERVER_DataTypeString(TRITONSERVER_TYPE_INVALID)


# -- versions -----------------------------------------------------------------------------------



# -- request: wire split ------------------------------------------------------------------------


class WireInferRequest:
    """A received ModelInferRequest: the message without its raw contents, and the raw contents.

    ``raw`` entries are ``bytes`` (small requests) or zero-copy ``memoryview`` slices of the received
    message (large ones); ``views`` tells which.
    """

    __slots__ = ("message", "raw", "views")

    def __init__(self, message: ModelInferRequest, raw: list[bytes | memoryview], views: bool) -> None:
        self.message = message
        self.raw = raw
        self.views = views


class _WireError(Exception):
    pass


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _WireError("varint too long")


def _split_raw(data: bytes) -> tuple[bytes, list[bytes | memoryview]]:
    """Cut the ``raw_input_contents`` entries out of a serialized ModelInferRequest, without copying them."""
    view = memoryview(data)
    size = len(data)
    header: list[memoryview] = []
    raw: list[bytes | memoryview] = []
    pos = 0
    kept = 0  # start of the header bytes not yet collected
    try:
        while pos < size:
            start = pos
            key, pos = _read_varint(data, pos)
            wire_type = key & 7
            if wire_type == 2:
                length, pos = _read_varint(data, pos)
                end = pos + length
                if end > size:
                    raise _WireError("truncated field")
                if key >> 3 == _RAW_INPUT_FIELD:
                    if kept < start:
                        header.append(view[kept:start])
                    raw.append(view[pos:end])
                    kept = end
                pos = end
            elif wire_type == 0:
                _, pos = _read_varint(data, pos)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            else:
                raise _WireError("group wire type")
    except IndexError:
        raise _WireError("truncated varint") from None
    if pos != size:
        raise _WireError("truncated field")
    if kept == 0:
        return data, raw
    if kept < size:
        header.append(view[kept:size])
    return b"".join(header), raw


def parse_infer_request(data: bytes) -> WireInferRequest:
    """The gRPC request deserializer for ModelInfer and ModelStreamInfer."""
    if len(data) >= SPLIT_THRESHOLD:
        try:
            header, raw = _split_raw(data)
        except _WireError:
            pass  # let protobuf parse it and report what is wrong
        else:
            return WireInferRequest(ModelInferRequest.FromString(header), raw, views=True)
    message = ModelInferRequest.FromString(data)
    raw = list(message.raw_input_contents)
    del message.raw_input_contents[:]
    return WireInferRequest(message, raw, views=False)


# -- request: decoding --------------------------------------------------------------------------


def _value(param: Any) -> Any:
    choice = param.WhichOneof("parameter_choice")
    return None if choice is None else getattr(param, choice)


def _invalid(message: str) -> ConchError:
    return ConchError(message, ErrorCode.INVALID_ARG)


def _request_parameters(message: ModelInferRequest) -> tuple[dict[str, Any], bool]:
    """Request parameters checked as Triton's ``SetInferenceRequestMetadata``; and the empty-final flag."""
    parameters: dict[str, Any] = {}
    empty_final = False
    for key, param in message.parameters.items():
        choice = param.WhichOneof("parameter_choice")
        if key == "sequence_id":
            if choice not in ("int64_param", "string_param"):
                raise _invalid("invalid value type for 'sequence_id' parameter, expected int64_param or string_param.")
        elif key in ("sequence_start", "sequence_end"):
            if choice != "bool_param":
                raise _invalid(f"invalid value type for '{key}' parameter, expected bool_param.")
        elif key == "priority":
            if choice == "int64_param":
                if param.int64_param < 0:
                    raise _invalid("invalid value for 'priority', expected value >= 0.")
            elif choice != "uint64_param":
                raise _invalid("invalid value type for 'priority' parameter, expected int64_param or uint64_param.")
        elif key == "timeout":
            if choice != "int64_param":
                raise _invalid("invalid value type for 'timeout' parameter, expected int64_param.")
        elif key.startswith("triton_"):
            if key != EMPTY_FINAL_KEY:
                raise _invalid(
                    "parameter keys starting with 'triton_' are reserved for Triton usage. Only the following "
                    f"keys starting with 'triton_' are allowed: {EMPTY_FINAL_KEY}"
                )
            if choice != "bool_param":
                raise _invalid(f"invalid value type for '{key}' parameter, expected bool_param.")
            empty_final = param.bool_param
            continue  # a frontend setting, not passed to the model
        elif choice not in ("int64_param", "bool_param", "string_param", "double_param"):
            raise _invalid(
                f"invalid value type for '{key}' parameter, expected int64_param, bool_param, or string_param."
            )
        parameters[key] = getattr(param, choice)
    return parameters, empty_final


def _shared_memory(tensor: Any, regions: SharedMemoryRegistry | None) -> memoryview | None:
    """The region bytes a tensor's parameters name (None: none named), as Triton's ``ParseSharedMemoryParams``."""
    params = tensor.parameters
    name = tensor.name
    region = params.get("shared_memory_region")
    if region is not None and region.WhichOneof("parameter_choice") != "string_param":
        raise _invalid(
            f"invalid value type for 'shared_memory_region' parameter for tensor '{name}', expected string_param."
        )
    for key in ("shared_memory_offset", "shared_memory_byte_size"):
        param = params.get(key)
        if param is None:
            continue
        if region is None:
            raise _invalid(f"'{key}' can not be specified without 'shared_memory_region' parameter for tensor '{name}'")
        if param.WhichOneof("parameter_choice") != "int64_param":
            raise _invalid(f"invalid value type for '{key}' parameter for tensor '{name}', expected int64_param.")
    if region is None:
        return None
    size = params.get("shared_memory_byte_size")
    if size is None:
        raise _invalid(
            f"'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for "
            f"tensor '{name}'"
        )
    if regions is None:
        raise ConchError(f"Unable to find shared memory region: '{region.string_param}'", ErrorCode.NOT_FOUND)
    offset = params.get("shared_memory_offset")
    return regions.view(region.string_param, offset.int64_param if offset is not None else 0, size.int64_param)


def shared_memory_outputs(request: InferenceRequest) -> dict[str, memoryview] | None:
    """The outputs a request wants written to client shared memory, with their regions (None: none)."""
    targets = {o.name: o.shared_memory for o in request.outputs if o.shared_memory is not None}
    return targets or None


def classification_counts(request: InferenceRequest) -> dict[str, int] | None:
    """The outputs a request asks for as classifications, with their class counts (None: none)."""
    counts = {o.name: int(o.parameters["classification"]) for o in request.outputs if "classification" in o.parameters}
    return counts or None


def _check_classification(output: Any) -> None:
    param = output.parameters.get("classification")
    if param is None:
        return
    if param.WhichOneof("parameter_choice") != "int64_param":
        raise _invalid("invalid value type for 'classification' parameter, expected int64_param")
    if param.int64_param <= 0:
        raise _invalid("invalid value for 'classification' parameter, expected >= 0")


# Typed contents fields in Triton's order; None: the datatype depends on the input's (INT8/16, UINT8/16).
_TYPED_FIELDS: tuple[tuple[str, str | None], ...] = (
    ("bool_contents", "BOOL"),
    ("int_contents", None),
    ("int64_contents", "INT64"),
    ("uint_contents", None),
    ("uint64_contents", "UINT64"),
    ("fp32_contents", "FP32"),
    ("fp64_contents", "FP64"),
    ("bytes_contents", "BYTES"),
)
_WIRE_DTYPE = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype("<i4"),
    "int64_contents": np.dtype("<i8"),
    "uint_contents": np.dtype("<u4"),
    "uint64_contents": np.dtype("<u8"),
    "fp32_contents": np.dtype("<f4"),
    "fp64_contents": np.dtype("<f8"),
}


def _typed_contents(tensor: Any, datatype: str, model_name: str) -> np.ndarray | bytes:
    """An input's typed ``contents`` as a numpy array of its datatype, with Triton's checks."""
    contents = tensor.contents
    data: np.ndarray | None = None
    for field, kind in _TYPED_FIELDS:
        values = getattr(contents, field)
        if not values:
            continue
        if kind is None:
            narrow = ("INT8", "INT16") if field == "int_contents" else ("UINT8", "UINT16")
            kind = datatype if datatype in narrow else ("INT32" if field == "int_contents" else "UINT32")
        prefix = f"unexpected explicit tensor data for input tensor '{tensor.name}' for model '{model_name}'"
        if data is not None:
            raise _invalid(f"{prefix}, binary data was already supplied.")
        if kind != datatype:
            raise _invalid(f"{prefix} of type '{kind}', expected datatype '{datatype}'")
        if field == "bytes_contents":
            data = np.empty(len(values), dtype=object)
            data[:] = list(values)
        else:
            data = np.fromiter(values, dtype=_WIRE_DTYPE[field], count=len(values))
            if data.dtype != tensors.BY_NAME[datatype].numpy:
                data = data.astype(tensors.BY_NAME[datatype].numpy)  # keeps the low bytes, as Triton does
    return b"" if data is None else data


def _aligned(view: bytes | memoryview, itemsize: int) -> bytes | memoryview:
    """A raw input view, copied when its address does not suit the element size (numpy's aligned flag)."""
    if itemsize <= 1 or len(view) == 0:
        return view
    address = np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]
    return bytes(view) if address % itemsize else view


def decode_request(
    wire: WireInferRequest, version: int, regions: SharedMemoryRegistry | None = None
) -> tuple[InferenceRequest, bool]:
    """Build the :class:`InferenceRequest`; also return the ``triton_enable_empty_final_response`` flag.

    ``regions`` holds the client shared memory that tensors may name instead of carrying data.

    Checks run in Triton's order: parameters, inputs and outputs (duplicates), each input's data
    (shared memory, typed contents, raw contents), then the outputs' parameters. Raw bytes are left for
    validation to view with ``np.frombuffer``.
    """
    message = wire.message
    model_name = message.model_name
    request = InferenceRequest(model_name=model_name, model_version=version, id=message.id)
    if message.parameters:
        request.parameters, empty_final = _request_parameters(message)
    else:
        empty_final = False

    inputs = message.inputs
    outputs = message.outputs
    for tensor in inputs:
        datatype = tensor.datatype
        params = tensor.parameters
        request.add_input(
            InferInput(
                name=tensor.name,
                datatype=datatype if datatype in tensors.BY_NAME else _INVALID_DATATYPE,
                shape=list(tensor.shape),
                parameters={key: _value(p) for key, p in params.items()} if params else {},
            )
        )
    for output in outputs:
        params = output.parameters
        request.add_output(
            RequestedOutput(output.name, parameters={key: _value(p) for key, p in params.items()} if params else {})
        )

    raw = wire.raw
    index = 0
    for tensor in inputs:
        target = request.inputs[tensor.name]
        if tensor.parameters:
            region = _shared_memory(tensor, regions)
            if region is not None:  # raw contents are not consumed, as in Triton
                target.data = region.toreadonly()
                continue
        if tensor.HasField("contents"):
            if raw:
                raise _invalid(
                    f"contents field must not be specified when using raw_input_contents for '{tensor.name}' "
                    f"for model '{model_name}'"
                )
            target.data = _typed_contents(tensor, target.datatype, model_name)
        elif index < len(raw):
            data = raw[index]
            index += 1
            if wire.views:
                row = tensors.BY_NAME.get(target.datatype)
                data = _aligned(data, row.itemsize if row else 1)
            target.data = data
        else:
            raise _invalid(f"unable to find data for input tensor '{tensor.name}' for model '{model_name}' in request.")
    # Raw entries beyond the inputs are ignored, as Triton 2.51 does.

    for output, requested in zip(outputs, request.outputs, strict=True):
        if output.parameters:
            requested.shared_memory = _shared_memory(output, regions)
            _check_classification(output)
    return request, empty_final


# -- response -----------------------------------------------------------------------------------


_SMALL_VARINTS = [bytes([n]) for n in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def set_parameter(param: InferParameter, key: str, value: Any) -> None:
    """A response parameter value into an InferParameter (bool, int, str, float; bytes are refused)."""
    if isinstance(value, (bool, np.bool_)):
        param.bool_param = bool(value)
    elif isinstance(value, (int, np.integer)):
        if int(value) > _INT64_MAX:
            param.uint64_param = int(value)
        else:
            param.int64_param = int(value)
    elif isinstance(value, str):
        param.string_param = value
    elif isinstance(value, (float, np.floating)):
        param.double_param = float(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raise ConchError(
            "Response parameter of type 'TRITONSERVER_PARAMETER_BYTES' is not currently supported",
            ErrorCode.UNSUPPORTED,
        )
    else:
        raise ConchError(
            f"response parameter '{key}' has unsupported type '{type(value).__name__}'", ErrorCode.INTERNAL
        )


class EncodedResponse:
    """A serialized ModelInferResponse as a list of buffers to join, and its total size."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes | memoryview], size: int) -> None:
        self.parts = parts
        self.size = size


def encode_response(
    response: InferenceResponse,
    *,
    model_name: str,
    model_version: str,
    request_id: str,
    final: bool | None = None,
    classes: dict[str, int] | None = None,
    batching: bool = False,
    labels: Labels | None = None,
    regions: dict[str, memoryview] | None = None,
) -> EncodedResponse:
    """Encode a successful response; ``final`` (streaming only) adds ``triton_final_response``.

    ``classes`` maps outputs asked for as classifications to their class count (``batching``: the
    model's first dimension is the batch; ``labels``: an output's class labels, if any). ``regions``
    maps outputs asked for in client shared memory to their bytes there: those are written, and their
    ``raw_output_contents`` entries are empty, as Triton's.

    Raises Triton's INVALID_ARG error when the message would exceed gRPC's 2 GiB limit.
    """
    header = ModelInferResponse(
        model_name=response.model_name or model_name,
        model_version=response.model_version or model_version,
        id=response.id or request_id,
    )
    if response.parameters:
        for key, value in response.parameters.items():
            set_parameter(header.parameters[key], key, value)
    if final is not None:
        header.parameters[FINAL_RESPONSE_KEY].bool_param = final
    raws: list[bytes | memoryview] = []
    for tensor in response.outputs:
        data = tensor.data
        row = tensors.datatype(tensor.datatype)
        if classes and tensor.name in classes:
            data = classify(row.name, data, classes[tensor.name], batching, labels(tensor.name) if labels else None)
            row = tensors.datatype("BYTES")
        output = header.outputs.add()
        output.name = tensor.name
        output.datatype = row.name
        output.shape.extend(data.shape)
        destination = regions.get(tensor.name) if regions else None
        if destination is not None:
            write_output(tensor.name, destination, tensors.to_raw(row, data))
            raws.append(b"")
        else:
            raws.append(tensors.to_raw(row, data))
    head = header.SerializeToString()
    parts: list[bytes | memoryview] = [head]
    size = len(head)
    for raw in raws:
        length = _varint(len(raw))
        parts += (_RAW_OUTPUT_TAG, length, raw)
        size += 1 + len(length) + len(raw)
    if size > MAX_MESSAGE_SIZE:
        raise _invalid(f"Response has byte size {size} which exceeds gRPC's byte size limit {MAX_MESSAGE_SIZE}.")
    return EncodedResponse(parts, size)


def stream_wrap(encoded: EncodedResponse) -> EncodedResponse:
    """A ModelInferResponse encoding wrapped as a ModelStreamInferResponse's ``infer_response``."""
    length = _varint(encoded.size)
    return EncodedResponse([_INFER_RESPONSE_TAG, length, *encoded.parts], 1 + len(length) + encoded.size)


def stream_error(
    message: str, request_id: str, *, model_name: str = "", model_version: str = "", final: bool | None = None
) -> bytes:
    """A ModelStreamInferResponse carrying an error, as Triton writes one (the id lets clients match it)."""
    response = ModelStreamInferResponse(error_message=message)
    infer = response.infer_response
    infer.SetInParent()
    infer.id = request_id
    infer.model_name = model_name
    infer.model_version = model_version
    if final is not None:
        infer.parameters[FINAL_RESPONSE_KEY].bool_param = final
    return response.SerializeToString()


def empty_final(request_id: str, model_name: str, model_version: str) -> bytes:
    """The empty final response of a decoupled request (``triton_enable_empty_final_response``)."""
    response = ModelStreamInferResponse()
    infer = response.infer_response
    infer.id = request_id
    infer.model_name = model_name
    infer.model_version = model_version
    infer.parameters[FINAL_RESPONSE_KEY].bool_param = True
    return response.SerializeToString()
