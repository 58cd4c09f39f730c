"""DLPack capsules for BF16 tensors, which numpy can neither export nor import.

numpy has no bfloat16, so a BF16 tensor is held as its uint16 bits; exported through numpy's own
``__dlpack__`` it would reach torch as uint16. Here a BF16 tensor leaves as a ``dltensor`` capsule
with DLPack's bfloat type (code 4, 16 bits), and such a capsule (from torch, say) comes back as the
uint16 bits, zero-copy, keeping its producer's memory alive until the array is gone. Other
datatypes go through numpy's DLPack support.
"""

from __future__ import annotations

import ctypes
import itertools
from typing import Any

import numpy as np

KDL_CPU = 1
KDL_BFLOAT = 4
_NAME = b"dltensor"
_USED = b"used_dltensor"


class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _Device),
        ("ndim", ctypes.c_int32),
        ("dtype", _DataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _Managed(ctypes.Structure):
    pass


_Deleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(_Managed))
_Managed._fields_ = [("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter)]
_CapsuleDestructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

_api = ctypes.pythonapi
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _CapsuleDestructor]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_SetName.restype = ctypes.c_int
_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
_raw_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(("PyCapsule_IsValid", _api))
_raw_get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(("PyCapsule_GetPointer", _api))

#: What keeps each exported tensor's memory alive until its consumer calls the deleter.
_exported: dict[int, tuple[_Managed, Any, np.ndarray]] = {}
_keys = itertools.count(1)


def _delete(managed: Any) -> None:
    _exported.pop(managed.contents.manager_ctx or 0, None)


_DELETE = _Deleter(_delete)


def _destroy_capsule(capsule: int) -> None:
    # a capsule nobody consumed still owns its tensor
    if _raw_is_valid(capsule, _NAME):
        pointer = _raw_get_pointer(capsule, _NAME)
        if pointer:
            _delete(ctypes.cast(pointer, ctypes.POINTER(_Managed)))


_DESTROY = _CapsuleDestructor(_destroy_capsule)


def export_bf16(bits: np.ndarray) -> Any:
    """A DLPack capsule of BF16 type over ``bits`` (a C-contiguous uint16 array), zero-copy."""
    array = np.ascontiguousarray(bits, dtype=np.uint16)
    shape = (ctypes.c_int64 * max(array.ndim, 1))(*array.shape)
    key = next(_keys)
    managed = _Managed()
    managed.dl_tensor.data = array.ctypes.data if array.size else None
    managed.dl_tensor.device = _Device(KDL_CPU, 0)
    managed.dl_tensor.ndim = array.ndim
    managed.dl_tensor.dtype = _DataType(KDL_BFLOAT, 16, 1)
    managed.dl_tensor.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
    managed.dl_tensor.strides = None  # compact, row-major
    managed.dl_tensor.byte_offset = 0
    managed.manager_ctx = key
    managed.deleter = _DELETE
    _exported[key] = (managed, shape, array)
    return _api.PyCapsule_New(ctypes.addressof(managed), _NAME, _DESTROY)


class _Owner:
    """Calls the producer's deleter once the imported array is gone."""

    __slots__ = ("_managed",)

    def __init__(self, managed: Any) -> None:
        self._managed = managed

    def __del__(self) -> None:
        managed = self._managed
        if managed and managed.contents.deleter:
            managed.contents.deleter(managed)


def is_bf16_capsule(capsule: Any) -> bool:
    """Whether ``capsule`` is an unconsumed DLPack capsule of BF16 type."""
    if type(capsule).__name__ != "PyCapsule" or not _api.PyCapsule_IsValid(capsule, _NAME):
        return False
    managed = ctypes.cast(_api.PyCapsule_GetPointer(capsule, _NAME), ctypes.POINTER(_Managed))
    dtype = managed.contents.dl_tensor.dtype
    return bool(dtype.code == KDL_BFLOAT and dtype.bits == 16 and dtype.lanes == 1)


def import_bf16(capsule: Any) -> np.ndarray:
    """The uint16 bits of a BF16 capsule (CPU, C-contiguous), zero-copy; the capsule is consumed."""
    managed = ctypes.cast(_api.PyCapsule_GetPointer(capsule, _NAME), ctypes.POINTER(_Managed))
    tensor = managed.contents.dl_tensor
    if tensor.device.device_type != KDL_CPU:
        raise ValueError("only CPU DLPack tensors are supported")
    shape = tuple(tensor.shape[i] for i in range(tensor.ndim))
    if tensor.strides:
        expected = 1
        for axis in reversed(range(tensor.ndim)):
            if shape[axis] != 1 and tensor.strides[axis] != expected:
                raise ValueError(
                    "DLPack tensor is not contiguous. Only contiguous DLPack tensors that are stored in C-Order "
                    "are supported."
                )
            expected *= shape[axis]
    count = int(np.prod(shape, dtype=np.int64))
    _api.PyCapsule_SetName(capsule, _USED)
    owner = _Owner(managed)
    if count == 0 or not tensor.data:
        del owner  # nothing to keep alive: hand the tensor back now
        return np.zeros(shape, dtype=np.uint16)
    buffer = (ctypes.c_uint16 * count).from_address(tensor.data + tensor.byte_offset)
    buffer._conch_owner = owner  # type: ignore[attr-defined]  # released with the last view of the memory
    return np.frombuffer(buffer, dtype=np.uint16).reshape(shape)


def exported_count() -> int:
    """How many exported BF16 tensors are still held for a consumer (for tests)."""
    return len(_exported)
