"""Datatypes of the protocol, their numpy and config names, and tensor byte encodings.

Tensors are numpy arrays. BYTES tensors are object arrays of ``bytes``; BF16 tensors have no numpy
dtype and are carried as ``uint16`` arrays holding the raw bfloat16 bits, with the datatype kept beside
them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from conch.errors import invalid_arg


@dataclass(frozen=True, slots=True)
class DataType:
    """One row of Triton's datatype table."""

    name: str  # protocol name, e.g. "FP32"
    config_name: str  # ModelConfig enum name, e.g. "TYPE_FP32"
    config_number: int  # ModelConfig DataType enum number, also TRITONSERVER_DataType
    numpy: np.dtype[Any]  # storage dtype
    itemsize: int  # bytes per element, 0 for BYTES


_ROWS = [
    DataType("BOOL", "TYPE_BOOL", 1, np.dtype(np.bool_), 1),
    DataType("UINT8", "TYPE_UINT8", 2, np.dtype("<u1"), 1),
    DataType("UINT16", "TYPE_UINT16", 3, np.dtype("<u2"), 2),
    DataType("UINT32", "TYPE_UINT32", 4, np.dtype("<u4"), 4),
    DataType("UINT64", "TYPE_UINT64", 5, np.dtype("<u8"), 8),
    DataType("INT8", "TYPE_INT8", 6, np.dtype("<i1"), 1),
    DataType("INT16", "TYPE_INT16", 7, np.dtype("<i2"), 2),
    DataType("INT32", "TYPE_INT32", 8, np.dtype("<i4"), 4),
    DataType("INT64", "TYPE_INT64", 9, np.dtype("<i8"), 8),
    DataType("FP16", "TYPE_FP16", 10, np.dtype("<f2"), 2),
    DataType("FP32", "TYPE_FP32", 11, np.dtype("<f4"), 4),
    DataType("FP64", "TYPE_FP64", 12, np.dtype("<f8"), 8),
    DataType("BYTES", "TYPE_STRING", 13, np.dtype(object), 0),
    DataType("BF16", "TYPE_BF16", 14, np.dtype("<u2"), 2),
]

BY_NAME: dict[str, DataType] = {row.name: row for row in _ROWS}
BY_CONFIG_NUMBER: dict[int, DataType] = {row.config_number: row for row in _ROWS}


def datatype(name: str) -> DataType:
    """The row for a protocol datatype name; raises INVALID_ARG for an unknown name."""
    row = BY_NAME.get(name)
    if row is None:
        raise invalid_arg(f"invalid datatype '{name}'")
    return row


def config_to_protocol(config_number: int) -> str:
    """ModelConfig DataType number (e.g. 11) to protocol name (e.g. "FP32"); "INVALID" when unknown."""
    row = BY_CONFIG_NUMBER.get(config_number)
    return row.name if row else "INVALID"


_PROTOCOL_BY_DTYPE: dict[np.dtype[Any], str] = {}


def numpy_to_protocol(dtype: np.dtype[Any]) -> str:
    """The protocol datatype for a numpy dtype (object and bytes_ map to BYTES)."""
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    name = _PROTOCOL_BY_DTYPE.get(dtype)
    if name is None:  # numeric dtypes are few: remember each answer
        name = _PROTOCOL_BY_DTYPE[dtype] = _protocol_name(dtype)
    return name


def _protocol_name(dtype: np.dtype[Any]) -> str:
    if dtype == np.bool_:
        return "BOOL"
    for row in _ROWS:
        if row.name != "BF16" and row.numpy == dtype.newbyteorder("<"):
            return row.name
    raise invalid_arg(f"unsupported numpy dtype '{dtype}'")


def element_count(shape: Iterable[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES tensor to Triton's wire form: each element as a 4-byte little-endian length and its bytes."""
    parts: list[bytes] = []
    pack = struct.Struct("<I").pack
    for item in array.reshape(-1):
        if isinstance(item, bytes):
            data = item
        elif isinstance(item, str):
            data = item.encode("utf-8")
        elif isinstance(item, (bytearray, memoryview, np.bytes_)):
            data = bytes(item)
        else:
            data = str(item).encode("utf-8")
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int, subject: str) -> np.ndarray:
    """Wire-form BYTES into a flat object array of exactly ``count`` elements.

    ``subject`` names what is decoded in errors, e.g. ``inference input 'X' for model 'm'``; a
    malformed buffer raises ``ValueError`` with Triton's texts.
    """
    view = memoryview(buffer).cast("B")
    size = len(view)
    out = np.empty(count, dtype=object)
    offset = 0
    checked = 0
    while offset < size:
        if size - offset < 4:
            raise ValueError(
                f"incomplete string length indicator for {subject}, expecting 4 bytes but only "
                f"{size - offset} bytes available. Please make sure the string length indicator is in one buffer."
            )
        length = int.from_bytes(view[offset : offset + 4], "little")
        checked += 1
        if checked > count:
            raise ValueError(f"unexpected number of string elements {checked} for {subject}, expecting {count}")
        offset += 4
        out[checked - 1] = bytes(view[offset : offset + length])
        offset += length
    if checked != count:
        raise ValueError(f"expected {count} string elements for {subject}, got {checked}")
    return out


def to_raw(dt: DataType, array: np.ndarray) -> bytes | memoryview:
    """Raw little-endian row-major bytes of a tensor, without a copy where the array allows it."""
    if dt.name == "BYTES":
        return serialize_bytes(array)
    if dt.name == "BOOL":
        array = array.astype(np.bool_, copy=False)
    elif array.dtype != dt.numpy:
        array = array.astype(dt.numpy)
    if array.size == 0:
        return b""
    array = np.ascontiguousarray(array)
    return memoryview(array).cast("B")  # type: ignore[arg-type]
