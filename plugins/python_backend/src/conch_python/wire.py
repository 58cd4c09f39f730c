"""The control channel between the server and a worker: length-prefixed pickles of small tuples.

Messages carry names, shapes, flags and the *place* of tensor bytes in shared memory
(:mod:`conch_python.shm`), never the bytes themselves.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from typing import Any

import numpy as np

from conch_python.shm import Ring, tensor_array, tensor_bytes

_LENGTH = struct.Struct("<I")

#: (name, datatype, shape, location)
TensorDesc = tuple[str, str, list[int], Any]


class ChannelClosed(Exception):
    """The other side went away."""


class Channel:
    """One end of the control socket; ``send`` may be called from any thread."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self._reader = sock.makefile("rb", buffering=1 << 16)
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            try:
                self.sock.sendall(_LENGTH.pack(len(payload)) + payload)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None

    def recv(self) -> tuple[Any, ...]:
        try:
            header = self._reader.read(4)
            if len(header) < 4:
                raise ChannelClosed("end of stream")
            (length,) = _LENGTH.unpack(header)
            payload = self._reader.read(length)
        except (OSError, ValueError) as exc:
            raise ChannelClosed(str(exc)) from None
        if len(payload) < length:
            raise ChannelClosed("end of stream")
        return pickle.loads(payload)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.close()
        self.sock.close()


def frames(buffer: bytearray) -> list[tuple[Any, ...]]:
    """Take every complete message out of ``buffer`` (bytes read from a non-framed stream)."""
    out = []
    offset = 0
    size = len(buffer)
    while size - offset >= 4:
        (length,) = _LENGTH.unpack_from(buffer, offset)
        if size - offset - 4 < length:
            break
        out.append(pickle.loads(memoryview(buffer)[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    if offset:
        del buffer[:offset]
    return out


def put_tensors(ring: Ring, prefix: str, tensors: list[tuple[str, str, np.ndarray]]) -> list[TensorDesc]:
    """Write tensors into shared memory; their descriptors for a message."""
    out: list[TensorDesc] = []
    for name, datatype, array in tensors:
        data = tensor_bytes(datatype, array)
        out.append((name, datatype, list(array.shape), ring.put(data, prefix)))
    return out


def take_tensors(ring: Ring, descs: list[TensorDesc]) -> list[tuple[str, str, np.ndarray]]:
    """Read the tensors a message describes (freeing their ring space)."""
    return [(name, datatype, tensor_array(datatype, shape, ring.take(loc))) for name, datatype, shape, loc in descs]
