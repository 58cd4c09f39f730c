"""Shared memory between the server and a worker: a ring per direction, and one-off segments.

Tensor bytes never travel through the control socket. The producer writes them into its ring (or,
when too big for it, into a segment of their own) and sends only their place; the consumer reads
them in the order the messages arrive and advances the ring's tail, which lives in the ring's first
eight bytes. Regions are files in ``/dev/shm`` that are unlinked as soon as both sides have mapped
them, so nothing outlives the processes.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
import threading
import time
import uuid
from typing import Any

import numpy as np

from conch import tensors
from conch.errors import ConchError, ErrorCode

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
HEADER = 64
ALIGN = 64
_TAIL = struct.Struct("<Q")

#: Where a tensor's bytes are: None (empty), ("r", offset, size, end) in the ring, ("s", name, size) a segment.
Location = Any


def shm_error(what: str, size: int, exc: OSError) -> ConchError:
    """The error for a region that cannot be created: says how much was needed and how to fix it."""
    try:
        stat = os.statvfs(SHM_DIR)
        free = stat.f_bavail * stat.f_frsize
        total = stat.f_blocks * stat.f_frsize
        where = f"{SHM_DIR} has {free} of {total} bytes free"
    except OSError:
        where = f"{SHM_DIR} is not usable"
    return ConchError(
        f"not enough shared memory for the Python backend: {what} needs {size} bytes, but {where} "
        f"({exc.strerror or exc}). Give the container more shared memory (docker run --shm-size=1g, or a larger "
        "emptyDir with medium: Memory in Kubernetes), or lower --backend-config=python,shm-default-byte-size=<bytes>.",
        ErrorCode.UNAVAILABLE,
    )


def create_region(prefix: str, size: int, what: str) -> tuple[str, mmap.mmap]:
    """Create and map a zero-filled region of ``size`` bytes; its memory is reserved up front."""
    try:
        stat = os.statvfs(SHM_DIR)
        free = stat.f_bavail * stat.f_frsize
    except OSError:
        free = size
    if size > free:
        raise shm_error(what, size, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, max(size, 1))
        except OSError as exc:
            os.unlink(path)
            if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise shm_error(what, size, exc) from None
            raise
        region = mmap.mmap(fd, max(size, 1))
    finally:
        os.close(fd)
    return name, region


def open_region(name: str, unlink: bool = False) -> mmap.mmap:
    """Map a region the other side created; ``unlink`` removes its name once mapped."""
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDWR)
    try:
        region = mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
        if unlink:
            unlink_region(name)
    return region


def unlink_region(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


class Ring:
    """One direction of tensor traffic: the producer allocates, the consumer frees in order."""

    def __init__(self, region: mmap.mmap) -> None:
        self.region = region
        self.size = len(region) - HEADER
        self.view = memoryview(region)
        self.head = 0  # producer only: total bytes handed out
        self.lock = threading.Lock()  # producer side: allocation and send are one step
        self.one_off_limit = self.size // 4

    # -- producer -------------------------------------------------------------------------------

    def _tail(self) -> int:
        return int(_TAIL.unpack_from(self.region, 0)[0])

    def allocate(self, size: int, wait_s: float = 0.005) -> tuple[int, int] | None:
        """(offset, end) for ``size`` bytes, or None when the ring has no room in time."""
        need_size = (size + ALIGN - 1) // ALIGN * ALIGN
        if need_size > self.one_off_limit:
            return None
        deadline = 0.0
        while True:
            position = self.head % self.size
            waste = self.size - position if position + need_size > self.size else 0
            if self.head + waste + need_size - self._tail() <= self.size:
                self.head += waste
                offset = self.head % self.size
                self.head += need_size
                return HEADER + offset, self.head
            if not deadline:
                deadline = time.monotonic() + wait_s
            elif time.monotonic() > deadline:
                return None
            time.sleep(0.0001)

    def put(self, data: bytes | memoryview, segment_prefix: str) -> Location:
        """Write ``data``; its location for the consumer."""
        size = len(data)
        if size == 0:
            return None
        slot = self.allocate(size)
        if slot is None:
            name, region = create_region(segment_prefix, size, "a tensor of this request")
            region[:size] = data
            region.close()
            return ("s", name, size)
        offset, end = slot
        self.view[offset : offset + size] = data
        return ("r", offset, size, end)

    # -- consumer -------------------------------------------------------------------------------

    def take(self, location: Location) -> memoryview | bytearray | bytes:
        """The bytes at ``location``: a copy out of the ring (then freed), or a one-off segment."""
        if location is None:
            return b""
        if location[0] == "s":
            region = open_region(location[1], unlink=True)
            return memoryview(region)[: location[2]]
        _, offset, size, end = location
        data = bytearray(self.view[offset : offset + size])  # writable, as models may change inputs in place
        _TAIL.pack_into(self.region, 0, end)
        return data

    def close(self) -> None:
        self.view.release()
        try:
            self.region.close()
        except BufferError:
            pass


def tensor_bytes(datatype: str, array: np.ndarray) -> bytes | memoryview:
    """The raw bytes of a tensor (BYTES serialised with length prefixes)."""
    return tensors.to_raw(tensors.datatype(datatype), array)


def tensor_array(datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """A numpy array over ``data`` (no copy for non-BYTES tensors)."""
    dt = tensors.datatype(datatype)
    count = tensors.element_count(shape)
    if dt.name == "BYTES":
        return tensors.deserialize_bytes(data, count, "tensor").reshape(shape)
    if count == 0:
        return np.empty(shape, dtype=dt.numpy)
    return np.frombuffer(data, dtype=dt.numpy, count=count).reshape(shape)
