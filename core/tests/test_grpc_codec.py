"""The gRPC wire codec on its own: request splitting, decoding rules, response framing."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as tc_pb

from conch._proto import grpc_service_pb2 as pb
from conch.errors import ConchError, ErrorCode
from conch.frontends.grpc import codec
from conch.inference import InferenceResponse, Tensor
from conch.service import parse_version


@pytest.mark.parametrize(
    ("text", "version"),
    [("", -1), ("1", 1), ("01", 1), ("0", 0), (" 7", 7), ("+3", 3), ("12abc", 12), (str(2**63 - 1), 2**63 - 1)],
)
def test_parse_version_reads_like_stol(text: str, version: int) -> None:
    assert parse_version(text) == version


@pytest.mark.parametrize("text", ["abc", " ", "x1", str(2**63), "-"])
def test_parse_version_errors(text: str) -> None:
    with pytest.raises(ConchError) as info:
        parse_version(text)
    assert info.value.code is ErrorCode.INVALID_ARG
    assert info.value.message == (
        f"failed to get model version from specified version string '{text}' (details: stol), "
        "version should be an integral value > 0"
    )


def test_parse_version_negative() -> None:
    with pytest.raises(
        ConchError, match=r"^invalid model version specified '-2' , version should be an integral value > 0$"
    ):
        parse_version("-2")


def _big_request(pad: str = "") -> tuple[pb.ModelInferRequest, list[bytes]]:
    request = pb.ModelInferRequest(model_name="m", model_version="1", id=pad)
    request.parameters["p"].int64_param = 5
    blobs = []
    for index in range(3):
        request.inputs.add(name=f"IN{index}", datatype="FP32", shape=[1, 40_000])
        blob = np.full(40_000, index, np.float32).tobytes()
        blobs.append(blob)
        request.raw_input_contents.append(blob)
    request.outputs.add(name="OUT")
    return request, blobs


def test_large_request_is_split_without_copying() -> None:
    request, blobs = _big_request()
    data = request.SerializeToString()
    wire = codec.parse_infer_request(data)
    assert wire.views
    assert all(isinstance(raw, memoryview) and raw.obj is data for raw in wire.raw)
    assert [bytes(raw) for raw in wire.raw] == blobs
    expected = pb.ModelInferRequest()
    expected.CopyFrom(request)
    del expected.raw_input_contents[:]
    assert wire.message == expected


def test_fields_after_the_raw_contents_are_kept() -> None:
    request, blobs = _big_request()
    tail = pb.ModelInferRequest(id="after")
    tail.outputs.add(name="LATE")
    data = request.SerializeToString() + tail.SerializeToString()  # concatenation merges messages
    wire = codec.parse_infer_request(data)
    assert wire.views and wire.message.id == "after"
    assert [o.name for o in wire.message.outputs] == ["OUT", "LATE"]
    assert [bytes(raw) for raw in wire.raw] == blobs


def test_small_request_is_parsed_by_protobuf() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.raw_input_contents.append(b"\x00" * 16)
    wire = codec.parse_infer_request(request.SerializeToString())
    assert not wire.views and wire.raw == [b"\x00" * 16]
    assert not wire.message.raw_input_contents


def test_malformed_large_request_raises() -> None:
    request, _ = _big_request()
    with pytest.raises(Exception):  # noqa: B017 - protobuf's DecodeError; grpc turns it into a status
        codec.parse_infer_request(request.SerializeToString()[:-10])


@pytest.mark.parametrize("pad", ["", "x", "xx", "xxx"])
def test_unaligned_raw_inputs_are_copied(pad: str) -> None:
    request, blobs = _big_request(pad)
    wire = codec.parse_infer_request(request.SerializeToString())
    decoded, _ = codec.decode_request(wire, 1)
    for index, blob in enumerate(blobs):
        data = decoded.inputs[f"IN{index}"].data
        assert isinstance(data, (bytes, memoryview)) and bytes(data) == blob
        assert np.frombuffer(data, np.float32).flags.aligned


def test_decode_request_fields() -> None:
    request = pb.ModelInferRequest(model_name="m", id="r")
    request.parameters["sequence_id"].string_param = "seq"
    request.parameters["sequence_start"].bool_param = True
    request.parameters["priority"].uint64_param = 2
    request.parameters["k"].double_param = 1.5
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    tensor = request.inputs.add(name="A", datatype="BF16", shape=[2])
    tensor.parameters["note"].string_param = "x"
    request.raw_input_contents.append(b"\x80\x3f\x00\x40")
    output = request.outputs.add(name="B")
    output.parameters["classification"].int64_param = 3
    decoded, empty_final = codec.decode_request(codec.parse_infer_request(request.SerializeToString()), 3)
    assert empty_final
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", 3, "r")
    assert decoded.parameters == {"sequence_id": "seq", "sequence_start": True, "priority": 2, "k": 1.5}
    (only,) = decoded.inputs.values()
    assert (only.name, only.datatype, only.shape, only.data, only.parameters) == (
        "A",
        "BF16",
        [2],
        b"\x80\x3f\x00\x40",
        {"note": "x"},
    )
    assert [(o.name, o.parameters) for o in decoded.outputs] == [("B", {"classification": 3})]


def test_duplicate_inputs_and_outputs() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="A", datatype="FP32", shape=[1])
    request.inputs.add(name="A", datatype="FP32", shape=[1])
    with pytest.raises(ConchError, match=r"^\[request id: <id_unknown>\] input 'A' already exists in request$"):
        codec.decode_request(codec.parse_infer_request(request.SerializeToString()), -1)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            pb.InferParameter(string_param="2"),
            "invalid value type for 'classification' parameter, expected int64_param",
        ),
        (pb.InferParameter(int64_param=0), "invalid value for 'classification' parameter, expected >= 0"),
    ],
)
def test_classification_parameter_checks(value: pb.InferParameter, message: str) -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.outputs.add(name="B").parameters["classification"].CopyFrom(value)
    with pytest.raises(ConchError) as info:
        codec.decode_request(codec.parse_infer_request(request.SerializeToString()), -1)
    assert info.value.message == message


def _response() -> InferenceResponse:
    return InferenceResponse(
        model_name="m",
        model_version="2",
        id="abc",
        outputs=[
            Tensor("F", "FP32", np.arange(6, dtype=np.float32).reshape(2, 3)),
            Tensor("S", "BYTES", np.array([b"", b"\xff"], dtype=object)),
            Tensor("H", "BF16", np.array([0x3F80], np.uint16)),
            Tensor("N", "INT64", np.arange(4, dtype=np.int64)[::2]),  # not contiguous
        ],
        parameters={"b": True, "i": 3, "u": 2**64 - 1, "s": "x", "d": 0.25, "nb": np.bool_(False), "ni": np.int32(4)},
    )


def test_encoded_response_parses_with_tritonclient_messages() -> None:
    encoded = codec.encode_response(_response(), model_name="ignored", model_version="9", request_id="ignored")
    data = b"".join(encoded.parts)
    assert len(data) == encoded.size
    parsed = tc_pb.ModelInferResponse.FromString(data)
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("m", "2", "abc")
    assert [(o.name, o.datatype, list(o.shape)) for o in parsed.outputs] == [
        ("F", "FP32", [2, 3]),
        ("S", "BYTES", [2]),
        ("H", "BF16", [1]),
        ("N", "INT64", [2]),
    ]
    assert list(parsed.raw_output_contents) == [
        np.arange(6, dtype=np.float32).tobytes(),
        b"\x00\x00\x00\x00\x01\x00\x00\x00\xff",
        b"\x80\x3f",
        np.array([0, 2], np.int64).tobytes(),
    ]
    params = parsed.parameters
    assert params["b"].bool_param and params["i"].int64_param == 3 and params["u"].uint64_param == 2**64 - 1
    assert params["s"].string_param == "x" and params["d"].double_param == 0.25
    assert params["nb"].WhichOneof("parameter_choice") == "bool_param" and params["ni"].int64_param == 4
    assert "triton_final_response" not in params


def test_stream_framing() -> None:
    response = InferenceResponse(outputs=[Tensor("F", "FP32", np.ones(3, np.float32))])
    encoded = codec.stream_wrap(
        codec.encode_response(response, model_name="m", model_version="1", request_id="r", final=False)
    )
    data = b"".join(encoded.parts)
    assert len(data) == encoded.size
    parsed = tc_pb.ModelStreamInferResponse.FromString(data)
    assert parsed.error_message == ""
    infer = parsed.infer_response
    assert (infer.model_name, infer.model_version, infer.id) == ("m", "1", "r")
    assert infer.parameters["triton_final_response"].bool_param is False
    assert infer.raw_output_contents[0] == np.ones(3, np.float32).tobytes()


def test_bytes_response_parameter_is_refused() -> None:
    with pytest.raises(ConchError) as info:
        codec.encode_response(
            InferenceResponse(parameters={"raw": b"x"}), model_name="m", model_version="1", request_id=""
        )
    assert info.value.code is ErrorCode.UNSUPPORTED
    assert info.value.message == "Response parameter of type 'TRITONSERVER_PARAMETER_BYTES' is not currently supported"


def test_response_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_MESSAGE_SIZE", 100)
    response = InferenceResponse(model_name="m", outputs=[Tensor("F", "FP32", np.zeros(64, np.float32))])
    with pytest.raises(ConchError) as info:
        codec.encode_response(response, model_name="m", model_version="1", request_id="")
    assert info.value.code is ErrorCode.INVALID_ARG
    assert info.value.message.startswith("Response has byte size 27")
    assert info.value.message.endswith(" which exceeds gRPC's byte size limit 100.")
