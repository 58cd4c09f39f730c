"""The HTTP frontend's pure pieces: JSON reading, request decoding, response encoding, compression."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from typing import Any

import numpy as np
import pytest

from conch._proto.model_config_pb2 import DataType, ModelConfig, ModelInput
from conch.errors import ConchError, ErrorCode
from conch.frontends.http import codec, compression, jsonio
from conch.inference import InferenceResponse, Tensor
from conch.tensors import BY_NAME

# -- helpers --------------------------------------------------------------------------------------


def decode(document: dict[str, Any], blobs: bytes = b"", model: str = "m") -> codec.DecodedRequest:
    header = json.dumps(document).encode()
    return codec.decode_infer_request(header + blobs, len(header), model)


def error_of(fn: Any, *args: Any, **kwargs: Any) -> ConchError:
    with pytest.raises(ConchError) as info:
        fn(*args, **kwargs)
    return info.value


def json_data(datatype: str, data: Any, shape: list[int]) -> Any:
    count = int(np.prod(shape))
    return codec.json_to_array(data, BY_NAME[datatype], count, "INPUT0")


def serialize(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def parsed_header(encoded: codec.EncodedResponse) -> dict[str, Any]:
    return json.loads(encoded.header)


# -- Inference-Header-Content-Length -------------------------------------------------------------------


def test_header_length_absent_means_whole_body() -> None:
    assert codec.parse_header_length(None, 120) == 120


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("17", 17),
        (" 17", 17),
        ("+17", 17),
        ("17abc", 17),
        ("120", 120),
        ("abc", 0),
        ("", 0),
        ("4294967296", 0),
    ],
)
def test_header_length_parses_like_atoi(value: str, expected: int) -> None:
    # Triton 2.51 reads the header with atoi: no digits is 0 (a raw binary request), and the value is
    # narrowed to a 32-bit int.
    assert codec.parse_header_length(value, 120) == expected


@pytest.mark.parametrize("value", ["121", "-1", "-5", "99999999999"])
def test_header_length_out_of_range(value: str) -> None:
    error = error_of(codec.parse_header_length, value, 120)
    assert (error.message, error.code) == (
        f"inference header size should be in range (0, 120), got: {value}",
        ErrorCode.INVALID_ARG,
    )


# -- JSON parsing ------------------------------------------------------------------------------------

PARSE_ERRORS = [
    (b"", "The document is empty. at 0"),
    (b"  ", "The document is empty. at 2"),
    (b"abc", "Invalid value. at 0"),
    (b"{", "Missing a name for object member. at 1"),
    (b'{"a"', "Missing a colon after a name of object member. at 4"),
    (b'{"a":1', "Missing a comma or '}' after an object member. at 6"),
    (b"[1,2", "Missing a comma or ']' after an array element. at 4"),
    (b'{"a":[1,2}', "Missing a comma or ']' after an array element. at 9"),
    (b'{"a":{"b":[1,{"c":2]}}', "Missing a comma or '}' after an object member. at 19"),
    (b'{"a":1} x', "The document root must not be followed by other values. at 8"),
    (b'"abc', "Missing a closing quotation mark in string. at 4"),
    (b'"a\\x"', "Invalid escape character in string. at 2"),
    (b'"\\uZZZZ"', "Incorrect hex digit after \\u escape in string. at 1"),
    (b'"a\x01b"', "Invalid encoding in string. at 2"),
    (b"[1.]", "Miss fraction part in number. at 3"),
    (b"[1e+]", "Miss exponent in number. at 4"),
    (b"[-]", "Invalid value. at 2"),
    (b"[tru]", "Invalid value. at 4"),
    (b"[1,]", "Invalid value. at 3"),
    (b'{"\xc3\xa9":1 2}', "Missing a comma or '}' after an object member. at 8"),
    (b'["]" 1]', "Missing a comma or ']' after an array element. at 5"),
]


@pytest.mark.parametrize(("document", "expected"), PARSE_ERRORS)
def test_parse_errors_are_rapidjsons(document: bytes, expected: str) -> None:
    error = error_of(jsonio.loads, document)
    assert error.message == f"failed to parse the request JSON buffer: {expected}"
    assert error.code is ErrorCode.INTERNAL  # Triton's JSON reader errors are INTERNAL: HTTP 500


@pytest.mark.parametrize(("document", "expected"), PARSE_ERRORS)
def test_parse_errors_agree_with_real_rapidjson(document: bytes, expected: str) -> None:
    rapidjson = pytest.importorskip("rapidjson")
    with pytest.raises(rapidjson.JSONDecodeError) as info:
        rapidjson.loads(document, number_mode=rapidjson.NM_NAN)
    offset, message = str(info.value).removeprefix("Parse error at offset ").split(": ", 1)
    assert expected == f"{message} at {offset}"


def test_parse_accepts_nan_infinity_and_non_utf8_strings() -> None:
    value = jsonio.loads(b'{"a":[NaN,Infinity,-Infinity],"s":"\xff\xfe"}')
    assert np.isnan(value["a"][0]) and value["a"][1:] == [float("inf"), float("-inf")]
    assert jsonio.text_bytes(value["s"]) == b"\xff\xfe"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (b"\x00\x00\x80?\x00\x00\x00@", "The document is empty. at 0"),  # raw float32 bytes sent without a header
        (b'{"a":\x00}', "Invalid value. at 5"),
        (b'{"a":"x\x00"}', "Missing a closing quotation mark in string. at 7"),
    ],
)
def test_parse_stops_at_nul_like_rapidjson(document: bytes, expected: str) -> None:
    assert error_of(jsonio.loads, document).message == f"failed to parse the request JSON buffer: {expected}"
    assert jsonio.loads(b'{"a":1}\x00trailing') == {"a": 1}


def test_parse_of_absurd_nesting_is_an_error_not_a_crash() -> None:
    error = error_of(jsonio.loads, b"[" * 100_000 + b"]" * 100_000)
    assert jsonio.NESTING_ERROR in error.message


# -- JSON tensor data -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("FP32", [1, 2.5, -3], np.array([1, 2.5, -3], dtype=np.float32)),
        ("FP64", [0.1, 1e300], np.array([0.1, 1e300])),
        ("INT8", [1, -2, 300], np.array([1, -2, 300 - 256], dtype=np.int8)),  # narrowed like a C cast
        ("INT64", [-(2**63), 2**63 - 1], np.array([-(2**63), 2**63 - 1], dtype=np.int64)),
        ("UINT64", [0, 2**64 - 1], np.array([0, 2**64 - 1], dtype=np.uint64)),
        ("UINT16", [65535, 7], np.array([65535, 7], dtype=np.uint16)),
        ("BOOL", [True, False], np.array([True, False])),
    ],
)
def test_json_data_flat(datatype: str, data: list[Any], expected: np.ndarray) -> None:
    array = json_data(datatype, data, [len(data)])
    assert array.dtype == BY_NAME[datatype].numpy
    np.testing.assert_array_equal(array, expected)


def test_json_data_nested_is_row_major() -> None:
    array = json_data("INT32", [[1, 2, 3], [4, 5, 6]], [2, 3])
    np.testing.assert_array_equal(array, np.arange(1, 7, dtype=np.int32))


def test_json_data_ragged_nesting_still_counts_elements_in_order() -> None:
    array = json_data("INT32", [[1, [2, 3]], 4], [4])
    np.testing.assert_array_equal(array, [1, 2, 3, 4])


@pytest.mark.parametrize(
    ("datatype", "data", "message", "code"),
    [
        (
            "FP32",
            [1, 2, 3],
            "Unable to parse 'data': Shape does not match true shape of 'data' field",
            ErrorCode.INTERNAL,
        ),
        ("FP32", [1], "Unable to parse 'data': Shape does not match true shape of 'data' field", ErrorCode.INTERNAL),
        ("FP32", [1, True], "Unable to parse 'data': attempt to access JSON non-number as double", ErrorCode.INTERNAL),
        ("FP32", [1, "2"], "Unable to parse 'data': attempt to access JSON non-number as double", ErrorCode.INTERNAL),
        (
            "INT32",
            [1, 2.5],
            "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer",
            ErrorCode.INTERNAL,
        ),
        (
            "INT64",
            [1, 2**63],
            "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer",
            ErrorCode.INTERNAL,
        ),
        (
            "UINT8",
            [1, -1],
            "Unable to parse 'data': attempt to access JSON non-unsigned-integer as unsigned-integer",
            ErrorCode.INTERNAL,
        ),
        (
            "BOOL",
            [True, 1],
            "Unable to parse 'data': attempt to access JSON non-boolean as boolean",
            ErrorCode.INTERNAL,
        ),
        (
            "FP16",
            [1, 2],
            "receiving FP16 data via JSON is not supported. Please use the binary data format for input INPUT0",
            ErrorCode.INVALID_ARG,
        ),
        (
            "BF16",
            [1, 2],
            "receiving BF16 data via JSON is not supported. Please use the binary data format for input INPUT0",
            ErrorCode.INVALID_ARG,
        ),
    ],
)
def test_json_data_errors(datatype: str, data: list[Any], message: str, code: ErrorCode) -> None:
    error = error_of(json_data, datatype, data, [2])
    assert (error.message, error.code) == (message, code)


def test_json_data_type_error_before_a_later_count_error() -> None:
    # Triton reads element by element: the bad second element is seen before the surplus third.
    error = error_of(json_data, "INT32", [1, "x", 3], [2])
    assert error.message == "Unable to parse 'data': attempt to access JSON non-signed-integer as signed-integer"
    error = error_of(json_data, "INT32", [1, 2, "x"], [2])
    assert error.message == "Unable to parse 'data': Shape does not match true shape of 'data' field"


def nested(depth: int, value: Any) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def test_json_nesting_depth_limit() -> None:
    assert json_data("INT64", nested(50, 123), [1, 1]).tolist() == [123]
    error = error_of(json_data, "INT64", nested(120, 123), [1, 1])
    assert (error.message, error.code) == (
        "Unable to parse 'data': JSON nesting depth exceeds maximum allowed limit (100)",
        ErrorCode.INVALID_ARG,
    )
    assert json_data("BYTES", nested(50, "hello"), [1, 1]).tolist() == [b"hello"]
    error = error_of(json_data, "BYTES", nested(120, "hello"), [1, 1])
    assert (error.message, error.code) == (
        "JSON nesting depth exceeds maximum allowed limit (100)",
        ErrorCode.INVALID_ARG,
    )


def test_json_bytes_elements_are_utf8_bytes_including_empty() -> None:
    array = json_data("BYTES", [["héllo", ""], ["x", "\x00"]], [2, 2])
    assert array.dtype == object
    assert array.tolist() == ["héllo".encode(), b"", b"x", b"\x00"]


def test_json_bytes_with_wrong_count_is_left_for_validation_to_report() -> None:
    raw = json_data("BYTES", ["a", "bc", "d"], [2])
    assert raw == serialize([b"a", b"bc", b"d"])


def test_json_bytes_must_be_strings() -> None:
    error = error_of(json_data, "BYTES", ["a", 1], [2])
    assert error.message == "Unable to parse JSON bytes array: attempt to access JSON non-string as string"


def test_json_bytes_non_utf8_survive() -> None:
    document = b'{"inputs":[{"name":"I","datatype":"BYTES","shape":[1],"data":["\xff\\u0000a"]}]}'
    decoded = codec.decode_infer_request(document, len(document), "m")
    assert decoded.request.inputs["I"].data.tolist() == [b"\xff\x00a"]  # type: ignore[union-attr]


# -- request decoding ------------------------------------------------------------------------------


def test_decode_json_request() -> None:
    decoded = decode(
        {
            "id": "r1",
            "parameters": {"sequence_id": 7, "sequence_start": True, "priority": 2, "custom": "x", "f": 1.5},
            "inputs": [{"name": "INPUT0", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True, "classification": 2}}],
        }
    )
    request = decoded.request
    assert request.id == "r1"
    assert request.parameters == {"sequence_id": 7, "sequence_start": True, "priority": 2, "custom": "x", "f": 1.5}
    tensor = request.inputs["INPUT0"]
    assert (tensor.datatype, tensor.shape) == ("FP32", [2, 2])
    np.testing.assert_array_equal(tensor.data, [1, 2, 3, 4])  # type: ignore[arg-type]
    assert request.requested_output_names() == ["OUTPUT0"]
    assert decoded.output_options["OUTPUT0"] == codec.OutputOptions(binary=True, classification=2)
    assert decoded.binary_default is False


def test_binary_inputs_are_zero_copy_slices_of_the_body() -> None:
    a = np.arange(4, dtype=np.float32)
    b = np.array([1, 2], dtype=np.int64)
    document = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {"name": "A", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}},
            {"name": "E", "shape": [0], "datatype": "FP32", "parameters": {"binary_data_size": 0}},
            {"name": "B", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": b.nbytes}},
        ],
    }
    header = json.dumps(document).encode()
    body = bytearray(header + a.tobytes() + b.tobytes())
    decoded = codec.decode_infer_request(body, len(header), "m")
    inputs = decoded.request.inputs
    assert isinstance(inputs["A"].data, memoryview) and inputs["A"].data.obj is body
    assert bytes(inputs["A"].data) == a.tobytes()
    assert bytes(inputs["B"].data) == b.tobytes()  # type: ignore[arg-type]
    assert inputs["E"].data == b""
    assert decoded.binary_default is True


@pytest.mark.parametrize(
    ("document", "blobs", "message", "code"),
    [
        (
            {"id": 5, "inputs": []},
            b"",
            "Unable to parse 'id': attempt to access JSON non-string as string",
            ErrorCode.INTERNAL,
        ),
        (
            {},
            b"",
            "Unable to parse 'inputs': attempt to access non-existing object member 'inputs'",
            ErrorCode.INTERNAL,
        ),
        (
            {"parameters": {"triton_enable_x": True}, "inputs": []},
            b"",
            "parameter keys starting with 'triton_' are reserved for Triton usage and should not be specified.",
            ErrorCode.INVALID_ARG,
        ),
        (
            {"parameters": {"x": [1]}, "inputs": []},
            b"",
            "parameter 'x' has invalid type. It should be either 'int', 'bool', or 'string'.",
            ErrorCode.INVALID_ARG,
        ),
        (
            {"parameters": {"sequence_id": -1}, "inputs": []},
            b"",
            "Unable to parse 'sequence_id': attempt to access JSON non-string as string",
            ErrorCode.INTERNAL,
        ),
        (
            {"parameters": {"priority": "high"}, "inputs": []},
            b"",
            "Unable to parse 'priority': attempt to access JSON non-unsigned-integer as unsigned-integer",
            ErrorCode.INTERNAL,
        ),
        (
            {"parameters": {"binary_data_output": 1}, "inputs": []},
            b"",
            "Unable to parse 'binary_data_output': attempt to access JSON non-boolean as boolean",
            ErrorCode.INTERNAL,
        ),
        (
            {"parameters": [], "inputs": []},
            b"",
            "failed to get request params.: attempt to get members for non-object",
            ErrorCode.INTERNAL,
        ),
        (
            {"inputs": [{"name": "I", "shape": [1], "datatype": "FP32"}]},
            b"",
            "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
            "'shared_memory_region' in 'parameters'. But no field is set",
            ErrorCode.INVALID_ARG,
        ),
        (
            {
                "inputs": [
                    {"name": "I", "shape": [1], "datatype": "FP32", "data": [1], "parameters": {"binary_data_size": 4}}
                ]
            },
            b"",
            "Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
            "'shared_memory_region' in 'parameters'. But set 'data' 'binary_data_size'",
            ErrorCode.INVALID_ARG,
        ),
        (
            {"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]},
            b"",
            "Unable to parse 'name': attempt to access non-existing object member 'name'",
            ErrorCode.INTERNAL,
        ),
        (
            {"inputs": [{"name": "I", "shape": [2, -5], "datatype": "FP32", "data": [1]}]},
            b"",
            "Unable to parse 'shape': attempt to access JSON non-unsigned-integer as unsigned-integer",
            ErrorCode.INTERNAL,
        ),
        (
            {"inputs": [{"name": "I", "shape": [1], "datatype": "FP32", "data": 1}]},
            b"",
            "Unable to parse 'data': attempt to access JSON non-array as array",
            ErrorCode.INTERNAL,
        ),
        (
            {"inputs": [{"name": "I", "shape": [1], "datatype": "NOPE", "data": [1]}]},
            b"",
            "invalid datatype for input I",
            ErrorCode.INVALID_ARG,
        ),
        (
            {
                "inputs": [
                    {"name": "I", "shape": [1], "datatype": "FP32", "data": [1]},
                    {"name": "I", "shape": [1], "datatype": "FP32", "data": [1]},
                ]
            },
            b"",
            "[request id: <id_unknown>] input 'I' already exists in request",
            ErrorCode.INVALID_ARG,
        ),
        (
            {"inputs": [{"name": "I", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]},
            b"1234",
            "unexpected size for input 'I', expecting 4 additional bytes for model 'm'",
            ErrorCode.INVALID_ARG,
        ),
        (
            {"inputs": [{"name": "I", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
            b"12345",
            "unexpected additional input data for model 'm'",
            ErrorCode.INVALID_ARG,
        ),
        (
            {"inputs": [{"name": "I", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": -4}}]},
            b"",
            "Unable to parse 'binary_data_size': attempt to access JSON non-unsigned-integer as unsigned-integer",
            ErrorCode.INTERNAL,
        ),
        (
            {"inputs": [{"name": "I", "shape": [1], "datatype": "FP32", "parameters": {"shared_memory_region": "r"}}]},
            b"",
            "Unable to find shared memory region: 'r'",
            ErrorCode.NOT_FOUND,
        ),
        (
            {"id": "x", "inputs": [], "outputs": [{"name": "O"}, {"name": "O"}]},
            b"",
            "[request id: x] output 'O' already exists in request",
            ErrorCode.INVALID_ARG,
        ),
        (
            {"inputs": [], "outputs": [{"name": "O", "parameters": {"binary_data": "yes"}}]},
            b"",
            "Unable to parse 'binary_data': attempt to access JSON non-boolean as boolean",
            ErrorCode.INTERNAL,
        ),
        (
            {"inputs": [], "outputs": [{"name": "O", "parameters": {"classification": -1}}]},
            b"",
            "Unable to set 'classification': attempt to access JSON non-unsigned-integer as unsigned-integer",
            ErrorCode.INTERNAL,
        ),
        (
            {
                "inputs": [],
                "outputs": [{"name": "O", "parameters": {"shared_memory_region": "r", "classification": 1}}],
            },
            b"",
            "Output can't set both 'shared_memory_region' and 'classification'",
            ErrorCode.INVALID_ARG,
        ),
    ],
)
def test_decode_errors(document: dict[str, Any], blobs: bytes, message: str, code: ErrorCode) -> None:
    error = error_of(decode, document, blobs)
    assert (error.message, error.code) == (message, code)


def test_unknown_datatype_with_binary_data_is_left_for_validation_as_triton_names_it() -> None:
    decoded = decode(
        {"inputs": [{"name": "I", "shape": [1], "datatype": "NOPE", "parameters": {"binary_data_size": 4}}]}, b"abcd"
    )
    assert decoded.request.inputs["I"].datatype == "<invalid>"


def test_zero_element_json_input_ignores_data() -> None:
    decoded = decode({"inputs": [{"name": "I", "shape": [0, 3], "datatype": "FP32", "data": ["not", "read"]}]})
    assert decoded.request.inputs["I"].data.size == 0  # type: ignore[union-attr]


# -- raw binary requests ------------------------------------------------------------------------------


def raw_config(*inputs: tuple[str, int, list[int]], max_batch_size: int = 0) -> ModelConfig:
    config = ModelConfig(name="m", max_batch_size=max_batch_size)
    for name, data_type, dims in inputs:
        config.input.append(ModelInput(name=name, data_type=data_type, dims=dims))
    return config


def test_raw_request_byte_size_is_checked_under_the_placeholder_name() -> None:
    config = raw_config(("INPUT0", DataType.TYPE_FP32, [4]), max_batch_size=8)
    for body in (b"", b"\0" * 99):
        error = error_of(codec.decode_raw_request, body, "ident_fp32", 1, config)
        assert (error.message, error.code) == (
            "[request id: <id_unknown>] input byte size mismatch for input 'raw_input' for model 'ident_fp32'. "
            f"Expected 16, got {len(body)}",
            ErrorCode.INVALID_ARG,
        )


def test_raw_request_deduces_the_variable_dimension() -> None:
    body = np.arange(8, dtype=np.float32).tobytes()
    decoded = codec.decode_raw_request(body, "m", 1, raw_config(("INPUT0", DataType.TYPE_FP32, [-1]), max_batch_size=4))
    tensor = decoded.request.inputs["INPUT0"]
    assert (tensor.datatype, tensor.shape, bytes(tensor.data)) == ("FP32", [1, 8], body)  # type: ignore[arg-type]
    assert decoded.binary_default is True


def test_raw_request_bytes_input_is_one_element() -> None:
    decoded = codec.decode_raw_request(b"427", "m", 1, raw_config(("INPUT0", DataType.TYPE_STRING, [1])))
    tensor = decoded.request.inputs["INPUT0"]
    assert (tensor.datatype, tensor.shape, tensor.data.tolist()) == ("BYTES", [1], [b"427"])  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            raw_config(("A", DataType.TYPE_FP32, [8]), ("B", DataType.TYPE_FP32, [8]), ("C", DataType.TYPE_FP32, [8])),
            "[request id: <id_unknown>] Raw request must only have 1 input (found 1) to be deduced but got 3 inputs in "
            "'m' model configuration",
        ),
        (
            raw_config(("INPUT0", DataType.TYPE_FP16, [-1, -1])),
            "[request id: <id_unknown>] The shape of the raw input 'INPUT0' can not be deduced because there are "
            "more than one variable-sized dimension",
        ),
        (
            raw_config(("INPUT0", DataType.TYPE_STRING, [-1])),
            "[request id: <id_unknown>] For BYTE datatype raw input 'INPUT0', the model must have input shape [1]",
        ),
    ],
)
def test_raw_request_errors(config: ModelConfig, message: str) -> None:
    error = error_of(codec.decode_raw_request, b"\0" * 32, "m", 1, config)
    assert (error.message, error.code) == (message, ErrorCode.INVALID_ARG)


# -- response encoding --------------------------------------------------------------------------------


def response_of(*tensors: Tensor, **kwargs: Any) -> InferenceResponse:
    return InferenceResponse(model_name="m", model_version="3", outputs=list(tensors), **kwargs)


def test_encode_json_response_in_tritons_key_order() -> None:
    decoded = decode({"inputs": []})
    out = Tensor("OUT", "FP32", np.array([[0.1, 2], [3, 4]], dtype=np.float32))
    encoded = codec.encode_infer_response(response_of(out), decoded)
    assert not encoded.has_binary
    assert encoded.header.startswith(
        b'{"model_name":"m","model_version":"3","outputs":[{"name":"OUT","datatype":"FP32"'
    )
    body = parsed_header(encoded)
    assert "id" not in body
    assert body["outputs"][0]["shape"] == [2, 2]
    assert body["outputs"][0]["data"] == [float(np.float32(0.1)), 2.0, 3.0, 4.0]  # FP32 written as doubles


def test_encode_id_and_parameters() -> None:
    decoded = decode({"id": "abc", "inputs": []})
    response = response_of(Tensor("B", "BOOL", np.array([True, False])), parameters={"p": 1, "q": "s", "r": True})
    body = parsed_header(codec.encode_infer_response(response, decoded))
    assert list(body) == ["id", "model_name", "model_version", "parameters", "outputs"]
    assert body["id"] == "abc" and body["parameters"] == {"p": 1, "q": "s", "r": True}
    assert body["outputs"][0]["data"] == [True, False]


def test_encode_binary_outputs_follow_the_header_in_order() -> None:
    decoded = decode(
        {"inputs": [], "outputs": [{"name": "A", "parameters": {"binary_data": True}}, {"name": "B"}, {"name": "C"}]}
    )
    a = np.arange(3, dtype=np.int32)
    c = np.array([b"", b"xy", b"\xff"], dtype=object)
    decoded.output_options["C"].binary = True
    response = response_of(Tensor("A", "INT32", a), Tensor("B", "INT64", np.array([5])), Tensor("C", "BYTES", c))
    encoded = codec.encode_infer_response(response, decoded)
    body = parsed_header(encoded)
    assert body["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert "data" not in body["outputs"][0]
    assert body["outputs"][1]["data"] == [5]
    assert body["outputs"][2]["parameters"] == {"binary_data_size": 4 + 6 + 5}
    assert encoded.body() == encoded.header + a.tobytes() + serialize([b"", b"xy", b"\xff"])


def test_binary_data_output_is_the_default_for_unlisted_outputs() -> None:
    decoded = decode({"parameters": {"binary_data_output": True}, "inputs": [], "outputs": [{"name": "J"}]})
    decoded.output_options["J"].binary = False
    response = response_of(
        Tensor("J", "INT8", np.array([1], dtype=np.int8)), Tensor("K", "INT8", np.array([2], np.int8))
    )
    body = parsed_header(codec.encode_infer_response(response, decoded))
    assert body["outputs"][0]["data"] == [1]
    assert body["outputs"][1]["parameters"] == {"binary_data_size": 1}


def test_empty_binary_output_has_no_blob_and_stays_json() -> None:
    decoded = decode({"parameters": {"binary_data_output": True}, "inputs": []})
    encoded = codec.encode_infer_response(response_of(Tensor("E", "FP32", np.zeros((0, 2), np.float32))), decoded)
    assert not encoded.has_binary
    assert parsed_header(encoded)["outputs"][0] == {
        "name": "E",
        "datatype": "FP32",
        "shape": [0, 2],
        "parameters": {"binary_data_size": 0},
    }


def test_fp16_and_bf16_outputs_binary_but_not_json() -> None:
    half = np.array([1.5, -2], dtype=np.float16)
    bf16 = np.array([0x3F80], dtype=np.uint16)
    decoded = decode({"parameters": {"binary_data_output": True}, "inputs": []})
    encoded = codec.encode_infer_response(response_of(Tensor("H", "FP16", half), Tensor("Z", "BF16", bf16)), decoded)
    assert encoded.body()[len(encoded.header) :] == half.tobytes() + bf16.tobytes()
    for datatype, array in (("FP16", half), ("BF16", bf16)):
        error = error_of(codec.encode_infer_response, response_of(Tensor("H", datatype, array)), decode({"inputs": []}))
        assert error.message == (
            f"sending {datatype} data via JSON is not supported. Please use the binary data format for output"
        )
        assert error.code is ErrorCode.INVALID_ARG


def test_json_bytes_output_non_utf8_is_written_raw_like_triton() -> None:
    array = np.array([b"ok", b"", "str", b"\xff\xfe"], dtype=object)
    encoded = codec.encode_infer_response(response_of(Tensor("S", "BYTES", array)), decode({"inputs": []}))
    assert b'"data":["ok","","str","\xff\xfe"]' in encoded.header
    assert json.loads(encoded.header.decode("utf-8", "surrogateescape"))["outputs"][0]["shape"] == [4]


def test_json_non_finite_floats_as_rapidjson_writes_them() -> None:
    array = np.array([np.nan, np.inf, -np.inf, 1], dtype=np.float32)
    encoded = codec.encode_infer_response(response_of(Tensor("F", "FP32", array)), decode({"inputs": []}))
    assert b'"data":[NaN,Infinity,-Infinity,1.0]' in encoded.header


def test_json_floats_written_as_rapidjson_writes_them() -> None:
    values = [1e-7, 1.5e-6, 1e-5, 0.1, 1e15, 1.5e16, 1e20, 1e21, 3.0000000054977558e38, -2.5e-8, 0.0, -0.0, 1.0]
    encoded = codec.encode_infer_response(response_of(Tensor("F", "FP64", np.array(values))), decode({"inputs": []}))
    assert encoded.header.endswith(
        b'"data":[1e-7,0.0000015,0.00001,0.1,1000000000000000.0,15000000000000000.0,100000000000000000000.0,1e21,'
        b"3.0000000054977558e38,-2.5e-8,0.0,-0.0,1.0]}]}"
    )
    assert json.loads(encoded.header)["outputs"][0]["data"] == values


def test_bytes_response_parameter_is_unsupported() -> None:
    error = error_of(codec.encode_infer_response, response_of(parameters={"b": b"x"}), decode({"inputs": []}))
    assert error.code is ErrorCode.UNSUPPORTED


def test_classification() -> None:
    decoded = decode({"inputs": [], "outputs": [{"name": "P", "parameters": {"classification": 2}}]})
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    response = response_of(Tensor("P", "FP32", probabilities))
    encoded = codec.encode_infer_response(response, decoded, batching=True, labels=lambda name: ["cat", "dog"])
    output = parsed_header(encoded)["outputs"][0]
    assert (output["datatype"], output["shape"]) == ("BYTES", [2, 2])
    assert output["data"] == ["0.700000:1:dog", "0.200000:2", "0.500000:0:cat", "0.250000:1:dog"]
    ints = response_of(Tensor("P", "INT32", np.array([3, 9, 1], dtype=np.int32)))
    output = parsed_header(codec.encode_infer_response(ints, decoded))["outputs"][0]
    assert (output["shape"], output["data"]) == ([2], ["9:1", "3:0"])


# -- compression -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pack", [gzip.compress, zlib.compress])
@pytest.mark.parametrize("header", ["gzip", "deflate"])
def test_decompress_detects_the_format(pack: Any, header: str) -> None:
    data = b"x" * 5000 + bytes(range(256))
    assert compression.request_encoding(header) == header
    assert compression.decompress(pack(data), 1 << 20) == data


def test_decompress_limit_stops_a_bomb() -> None:
    bomb = zlib.compress(b"\0" * (8 << 20))
    error = error_of(compression.decompress, bomb, 1 << 20)
    assert error.message == (
        "Decompressed data size exceeds the maximum allowed value of 1048576 bytes. "
        "Use --http-max-input-size to increase the limit."
    )
    assert error.code is ErrorCode.INVALID_ARG


def test_decompress_empty_and_corrupt() -> None:
    assert error_of(compression.decompress, b"", 100).message == "nothing to be decompressed"
    assert compression.decompress(b"not compressed at all", 100) == b""


@pytest.mark.parametrize("header", [None, "", "identity"])
def test_identity_encodings(header: str | None) -> None:
    assert compression.request_encoding(header) == "identity"


def test_unknown_request_encoding() -> None:
    error = error_of(compression.request_encoding, "br")
    assert (error.message, error.code) == ("Unsupported compression type", ErrorCode.UNSUPPORTED)


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "identity"),
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("gzip, deflate", "gzip"),
        ("deflate, gzip", "deflate"),
        ("gzip;q=0.5, deflate", "deflate"),
        ("gzip;q=0", "identity"),
        ("br", "identity"),
        ("identity;q=0.9, gzip;q=0.8", "identity"),
        ("gzip;q=abc, deflate;q=0.1", "deflate"),
    ],
)
def test_response_encoding_choice(accept: str | None, chosen: str) -> None:
    assert compression.response_encoding(accept) == chosen


def test_compress_round_trip_over_parts() -> None:
    parts = [b"header", memoryview(np.arange(100, dtype=np.float32)).cast("B")]
    expected = b"header" + np.arange(100, dtype=np.float32).tobytes()
    assert gzip.decompress(compression.compress(parts, "gzip")) == expected
    assert zlib.decompress(compression.compress(parts, "deflate")) == expected


@pytest.mark.parametrize(
    "request_id",
    ["", "r1", "caf\u00e9", "bad\udcff"],  # the last holds a byte that is not UTF-8 (kept via surrogateescape)
)
def test_binary_responses_take_a_fast_path_with_the_same_bytes(
    request_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = json.dumps({
        "id": request_id,
        "inputs": [],
        "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in ("A", "B", "C")],
    }, ensure_ascii=False).encode("utf-8", "surrogateescape")  # fmt: skip
    decoded = codec.decode_infer_request(header, len(header), "m", 3)
    decoded.request.version_label = "3"
    strings = np.empty(2, dtype=object)
    strings[:] = [b"x", b"\xff"]
    response = InferenceResponse(outputs=[
        Tensor("A", "FP32", np.arange(4, dtype=np.float32).reshape(2, 2)),
        Tensor("B", "BYTES", strings),
        Tensor("C", "INT8", np.zeros((0, 3), np.int8)),
    ])  # fmt: skip
    fast = codec.encode_infer_response(response, decoded)
    monkeypatch.setattr(codec, "_binary_response", lambda *_: None)
    general = codec.encode_infer_response(response, decoded)
    assert fast.header == general.header and fast.body() == general.body()
    assert json.loads(fast.header.decode("utf-8", "surrogateescape"))["outputs"][2]["shape"] == [0, 3]
