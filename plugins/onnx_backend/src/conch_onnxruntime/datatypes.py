"""ONNX Runtime's tensor type names beside the protocol's datatypes."""

from __future__ import annotations

#: ``NodeArg.type`` of a tensor (as ONNX Runtime's Python API reports it) to the protocol datatype.
ORT_TO_PROTOCOL: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
    "tensor(bfloat16)": "BF16",
}

#: ONNX ``TensorProto.DataType`` number of bfloat16, for OrtValues built from uint16 bits.
ONNX_BFLOAT16 = 16


def protocol_datatype(ort_type: str) -> str | None:
    """The protocol datatype of an ONNX Runtime type name, None for types the protocol lacks."""
    return ORT_TO_PROTOCOL.get(ort_type)


def config_type_name(protocol: str) -> str:
    """``FP32`` → ``TYPE_FP32``, ``BYTES`` → ``TYPE_STRING`` (config spelling, as Triton's messages use)."""
    return "TYPE_STRING" if protocol == "BYTES" else f"TYPE_{protocol}"
