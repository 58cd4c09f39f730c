"""The protocol's datatypes beside torch dtypes, and numpy <-> torch without copies where possible."""

from __future__ import annotations

import warnings

import numpy as np
import torch

#: Protocol datatype → torch dtype. BF16 travels as uint16 bits (numpy has no bfloat16) and is viewed as bfloat16.
PROTOCOL_TO_TORCH: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}
# Unsigned 16/32/64-bit tensors exist from torch 2.3 on (with few kernels); serve them where torch has them.
for _name, _attr in (("UINT16", "uint16"), ("UINT32", "uint32"), ("UINT64", "uint64")):
    if hasattr(torch, _attr):
        PROTOCOL_TO_TORCH[_name] = getattr(torch, _attr)

TORCH_TO_PROTOCOL: dict[torch.dtype, str] = {dtype: name for name, dtype in PROTOCOL_TO_TORCH.items()}

# Request tensors are often read-only views of the request body; torch reads them in place and the
# backend never writes its inputs, so torch's warning about non-writable arrays says nothing here.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


def config_type_name(protocol: str) -> str:
    """``FP32`` → ``TYPE_FP32``, ``BYTES`` → ``TYPE_STRING`` (config spelling, as Triton's messages use)."""
    return "TYPE_STRING" if protocol == "BYTES" else f"TYPE_{protocol}"


def to_torch(array: np.ndarray, datatype: str) -> torch.Tensor:
    """A tensor over ``array``'s memory (a copy only when torch cannot take its layout)."""
    try:
        tensor = torch.from_numpy(array)
    except (ValueError, TypeError):  # negative strides, non-native byte order
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")))
    if datatype == "BF16":
        tensor = tensor.view(torch.bfloat16)
    return tensor


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor's memory as an array (a copy from a GPU); bfloat16 as its uint16 bits."""
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.uint16) if hasattr(torch, "uint16") else tensor.view(torch.int16)
        array = tensor.numpy()
        return array if array.dtype == np.uint16 else array.view(np.uint16)
    return tensor.numpy()
