"""The shared memory registry on its own: mapping, views, unmapping, Triton's texts."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conch.errors import ConchError, ErrorCode
from conch.shared_memory import SharedMemoryRegistry, write_output


@pytest.fixture
def key() -> Iterator[str]:
    """A 3-page POSIX shared memory object holding 0, 1, 2, ... as bytes."""
    name = f"conch_unit_{os.getpid()}"
    path = Path("/dev/shm") / name
    path.write_bytes(bytes(range(256)) * (3 * mmap.PAGESIZE // 256))
    yield "/" + name
    path.unlink()


def _error(call: object, *args: object) -> ConchError:
    with pytest.raises(ConchError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


def test_views_are_the_registered_bytes(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register("a", key, mmap.PAGESIZE + 3, 100)  # an offset that is not page-aligned
    view = registry.view("a", 4, 8)
    assert bytes(view) == bytes(range(7, 15))
    assert registry.status() == [{"name": "a", "key": key, "offset": mmap.PAGESIZE + 3, "byte_size": 100}]
    registry.register("b", key.lstrip("/"), 0, 16)  # the key as shm_open reads it, and a second region of it
    assert [s["name"] for s in registry.status()] == ["a", "b"]
    write_output("OUT", registry.view("b", 0, 16), np.arange(4, dtype=np.uint32).data.cast("B"))
    assert np.frombuffer(bytes(registry.view("b", 0, 16)), dtype=np.uint32).tolist() == [0, 1, 2, 3]


def test_errors_have_tritons_texts(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register("a", key, 0, 64)
    cases = [
        (lambda: registry.register("a", key, 0, 8), "shared memory region 'a' already in manager",
         ErrorCode.ALREADY_EXISTS),
        (lambda: registry.register("b", "/conch_missing", 0, 8), "Unable to open shared memory region: '/conch_missing'",
         ErrorCode.INTERNAL),
        (lambda: registry.register("b", "/a/b", 0, 8), "Unable to open shared memory region: '/a/b'", ErrorCode.INTERNAL),
        (lambda: registry.register("b", key, 3 * mmap.PAGESIZE, 1), "failed to register shared memory region 'b': invalid args",
         ErrorCode.INVALID_ARG),
        (lambda: registry.status("b"), "Unable to find system shared memory region: 'b'", ErrorCode.NOT_FOUND),
        (lambda: registry.view("b", 0, 8), "Unable to find shared memory region: 'b'", ErrorCode.NOT_FOUND),
        (lambda: registry.view("a", 64, 8), "Invalid offset for shared memory region: 'a'", ErrorCode.INVALID_ARG),
        (lambda: registry.view("a", -1, 8), "Invalid offset for shared memory region: 'a'", ErrorCode.INVALID_ARG),
        (lambda: registry.view("a", 60, 8), "Invalid offset + byte size for shared memory region: 'a'",
         ErrorCode.INVALID_ARG),
        (lambda: registry.view("a", 0, None), "Invalid offset + byte size for shared memory region: 'a'",
         ErrorCode.INVALID_ARG),
        (lambda: write_output("O", registry.view("a", 0, 8), b"x" * 16),
         "shared memory size specified with the request for output 'O' (8 bytes) should be at least 16 bytes to hold "
         "the results", ErrorCode.INTERNAL),
    ]  # fmt: skip
    for call, message, code in cases:
        error = _error(call)
        assert (error.message, error.code) == (message, code)


def test_unregister_unmaps_once_no_request_holds_a_view(key: str) -> None:
    registry = SharedMemoryRegistry()
    registry.register("a", key, 0, 64)
    held = np.frombuffer(registry.view("a", 0, 8), dtype=np.uint8)  # an in-flight request's input
    registry.unregister("a")
    registry.unregister("never")  # unknown names are no error
    assert registry.status() == []
    assert held.tolist() == list(range(8))  # still readable: the mapping lives while the view does
    registry.register("a", key, 0, 64)
    registry.unregister_all()
    assert registry.status() == []
