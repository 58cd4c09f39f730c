"""HPACK (RFC 7541) for a gRPC server: decoding with a cache, encoding without the dynamic table.

gRPC clients send the same few headers on every call, and after the first call they are all references
to the dynamic table: a block made only of one-byte indexed fields does not change the table, so its
decoding is cached and reused until a block that may change the table arrives. Responses are encoded as
literals that are never indexed, so the peer's table size does not matter to the encoder.
"""

from __future__ import annotations

import hpack

from conch.frontends.grpc.transport.frames import COMPRESSION_ERROR, ProtocolViolation

Headers = list[tuple[str, str]]

#: Bytes an indexed field of index 1..126 can be: anything else may add to or resize the table.
_ONE_BYTE_INDEXED = bytes(range(0x81, 0xFF))
_CACHE_LIMIT = 256


class HeaderDecoder:
    """One connection's HPACK decoder."""

    def __init__(self, max_header_list_size: int) -> None:
        self._decoder = hpack.Decoder(max_header_list_size=max_header_list_size)
        self._cache: dict[bytes, Headers] = {}

    def decode(self, block: bytes) -> Headers:
        """The (name, value) pairs of a complete header block; the list is shared, do not change it."""
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        try:
            headers: Headers = list(self._decoder.decode(block))  # type: ignore[arg-type]
        except (hpack.HPACKError, UnicodeDecodeError, IndexError, ValueError) as exc:
            raise ProtocolViolation(COMPRESSION_ERROR, f"bad header block: {exc}") from None
        if block.translate(None, _ONE_BYTE_INDEXED):
            self._cache.clear()  # the table may have changed: earlier indexes may mean something else now
        elif len(self._cache) < _CACHE_LIMIT:
            self._cache[block] = headers
        return headers


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A field as a never-indexed literal with a literal name (no Huffman coding)."""
    return b"\x10" + _integer(len(name), 7) + name + _integer(len(value), 7) + value


def encode(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of literals; ``:status: 200`` becomes its static-table index."""
    return b"".join(b"\x88" if (name, value) == (b":status", b"200") else literal(name, value) for name, value in headers)


def _unreserved(byte: int) -> bool:
    return 0x20 <= byte <= 0x7E and byte != 0x25


def percent_encode(text: str) -> bytes:
    """``grpc-message`` encoding: UTF-8, with bytes outside printable ASCII and ``%`` as ``%XX``."""
    data = text.encode("utf-8", "replace")
    if all(_unreserved(byte) for byte in data):
        return data
    return b"".join(bytes((byte,)) if _unreserved(byte) else b"%%%02X" % byte for byte in data)
