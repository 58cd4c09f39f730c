"""Client system shared memory (Triton's ``system_shared_memory`` extension): the registry of regions.

A client creates a POSIX shared memory object (``/dev/shm/<key>``), registers a slice of it under a
region name, and then names the region in a tensor's parameters instead of sending the tensor's bytes.
Both frontends use the one registry of the server, so a region registered over HTTP serves gRPC
requests too. Inputs are read-only zero-copy views of the mapping; outputs are copied into it once.

Texts and codes are Triton 2.51's (``shared_memory_manager.cc``, recorded in
``docs/dev/triton-observed.md``). Unlike Triton, an offset that is not page-aligned can be registered
(Triton's ``mmap`` refuses it), and one key can back several regions (Triton reuses a closed descriptor).
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from conch.errors import ConchError, ErrorCode

SHM_DIRECTORY = "/dev/shm"


@dataclass(slots=True, eq=False)
class Region:
    """A registered region: ``byte_size`` bytes of the object ``key`` from ``offset``, mapped."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap
    view: memoryview  # exactly the registered bytes

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def close(self) -> None:
        """Unmap now, or, while requests still hold views of it, once the last of them is gone."""
        try:
            self.view.release()
            self.mapping.close()
        except BufferError:
            pass  # numpy views of an in-flight request keep the mapping alive; freeing it unmaps


class SharedMemoryRegistry:
    """Registered system shared memory regions by name; safe to use from any thread."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes of ``/dev/shm/<key>`` from ``offset`` as region ``name``."""
        with self._lock:
            if name in self._regions:
                raise ConchError(f"shared memory region '{name}' already in manager", ErrorCode.ALREADY_EXISTS)
            self._regions[name] = _map(name, key, offset, byte_size)

    def unregister(self, name: str) -> None:
        """Forget a region and unmap it; an unknown name is no error, as in Triton."""
        with self._lock:
            region = self._regions.pop(name, None)
        if region is not None:
            region.close()

    def unregister_all(self) -> None:
        with self._lock:
            regions = list(self._regions.values())
            self._regions.clear()
        for region in regions:
            region.close()

    def status(self, name: str = "") -> list[dict[str, Any]]:
        """``[{"name","key","offset","byte_size"}]`` for every region (by name, as Triton), or the one named."""
        with self._lock:
            if not name:
                return [self._regions[key].status() for key in sorted(self._regions)]
            region = self._regions.get(name)
        if region is None:
            raise ConchError(f"Unable to find system shared memory region: '{name}'", ErrorCode.NOT_FOUND)
        return [region.status()]

    def __contains__(self, name: object) -> bool:
        return name in self._regions

    def view(self, name: str, offset: int, byte_size: int | None) -> memoryview:
        """``byte_size`` bytes of region ``name`` from ``offset`` (``None``: a size the request left out)."""
        region = self._regions.get(name)
        if region is None:
            raise ConchError(f"Unable to find shared memory region: '{name}'", ErrorCode.NOT_FOUND)
        if not 0 <= offset < region.byte_size:  # (negative: a size_t past any region, in Triton)
            raise ConchError(f"Invalid offset for shared memory region: '{name}'", ErrorCode.INVALID_ARG)
        if byte_size is None or not 0 <= offset + byte_size <= region.byte_size or byte_size < 0:
            raise ConchError(f"Invalid offset + byte size for shared memory region: '{name}'", ErrorCode.INVALID_ARG)
        return region.view[offset : offset + byte_size]


def _map(name: str, key: str, offset: int, byte_size: int) -> Region:
    """Open ``key`` as ``shm_open`` would and map the registered bytes (from the page holding ``offset``)."""
    path = _path(key)
    try:
        fd = os.open(path, os.O_RDWR) if path else -1
    except OSError:
        fd = -1
    if fd == -1:
        raise ConchError(f"Unable to open shared memory region: '{key}'", ErrorCode.INTERNAL)
    try:
        try:
            size = os.fstat(fd).st_size
        except OSError:
            raise ConchError(f"Invalid shared memory region: '{key}'", ErrorCode.INTERNAL) from None
        if offset + byte_size > size:
            raise ConchError(f"failed to register shared memory region '{name}': invalid args", ErrorCode.INVALID_ARG)
        if byte_size == 0:  # mmap of no bytes: EINVAL, as Triton reports it
            raise ConchError(
                f"failed to register shared memory region '{name}': unable to process address spaceInvalid argument",
                ErrorCode.INVALID_ARG,
            )
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapping = mmap.mmap(fd, offset - start + byte_size, mmap.MAP_SHARED, offset=start)
        except OSError as exc:
            raise ConchError(
                f"failed to register shared memory region '{name}': unable to process address space{exc.strerror}",
                ErrorCode.INVALID_ARG,
            ) from None
    finally:
        os.close(fd)
    view = memoryview(mapping)[offset - start : offset - start + byte_size]
    return Region(name, key, offset, byte_size, mapping, view)


def _path(key: str) -> str:
    """Where glibc's ``shm_open`` finds ``key``: leading slashes dropped, no other slash allowed."""
    stripped = key.lstrip("/")
    if not stripped or "/" in stripped or stripped in (".", ".."):
        return ""
    return os.path.join(SHM_DIRECTORY, stripped)


def write_output(name: str, destination: memoryview, raw: bytes | memoryview) -> None:
    """Copy an output's wire bytes into its shared memory, with Triton's error when they do not fit."""
    size = len(raw)
    if size > len(destination):
        raise ConchError(
            f"shared memory size specified with the request for output '{name}' ({len(destination)} bytes) "
            f"should be at least {size} bytes to hold the results",
            ErrorCode.INTERNAL,
        )
    if size:
        np.frombuffer(destination, dtype=np.uint8, count=size)[:] = np.frombuffer(raw, dtype=np.uint8)
