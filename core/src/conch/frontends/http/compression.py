"""HTTP body compression as Triton does it: gzip and deflate (a zlib stream) in both directions.

Requests: ``Content-Encoding: gzip`` or ``deflate`` is inflated with zlib's automatic header detection
(Triton's ``inflateInit2(15 | 32)``), so either encoding name accepts either format; ``identity`` or an
empty value means none; anything else is refused. Responses: the encoding is picked from
``Accept-Encoding`` by Triton's rule (highest ``q`` among identity, deflate and gzip; the first listed wins
a tie) and applied at zlib's default level.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from conch.errors import ConchError, ErrorCode

GZIP = "gzip"
DEFLATE = "deflate"
IDENTITY = "identity"

_AUTO_DETECT_WBITS = 15 | 32  # zlib or gzip header, detected
_GZIP_WBITS = 15 | 16
_ZLIB_WBITS = 15
_OUT_STEP = 1 << 20


def request_encoding(header: str | None) -> str:
    """The request body's encoding; raises Triton's UNSUPPORTED error for an unknown one."""
    if header is None or header == "" or header == IDENTITY:
        return IDENTITY
    if header == GZIP or header == DEFLATE:
        return header
    raise ConchError("Unsupported compression type", ErrorCode.UNSUPPORTED)


def decompress(body: bytes | bytearray | memoryview, limit: int) -> bytes:
    """Inflate a gzip or zlib body, refusing output larger than ``limit`` bytes.

    Like Triton, a corrupt stream is not an error here: what inflated before the damage is returned,
    and parsing it reports the problem.
    """
    if len(body) == 0:
        raise ConchError("nothing to be decompressed", ErrorCode.INVALID_ARG)
    inflater = zlib.decompressobj(_AUTO_DETECT_WBITS)
    parts: list[bytes] = []
    total = 0
    data: bytes | bytearray | memoryview = body
    try:
        while True:
            # Bounded steps: a small compressed body may inflate to gigabytes.
            chunk = inflater.decompress(data, min(_OUT_STEP, limit + 1 - total))
            total += len(chunk)
            if total > limit:
                raise ConchError(
                    f"Decompressed data size exceeds the maximum allowed value of {limit} bytes. "
                    "Use --http-max-input-size to increase the limit.",
                    ErrorCode.INVALID_ARG,
                )
            if chunk:
                parts.append(chunk)
            before = len(data)
            data = inflater.unconsumed_tail
            if inflater.eof or (not chunk and len(data) in (0, before)):
                break
    except zlib.error:
        pass
    if len(parts) == 1:
        return parts[0]
    return b"".join(parts)


def response_encoding(accept_encoding: str | None) -> str:
    """Triton's choice of response encoding for an ``Accept-Encoding`` value."""
    if not accept_encoding:
        return IDENTITY
    best = IDENTITY
    best_weight = 0.0
    for item in accept_encoding.split(","):
        start = len(item) - len(item.lstrip(" "))
        if start == len(item):
            continue
        weight_at = item.find(";q=")
        if weight_at != -1 and start >= weight_at:
            continue
        name = item[start:] if weight_at == -1 else item[start:weight_at]
        weight = 1.0
        if weight_at != -1:
            try:
                weight = _parse_weight(item[weight_at + 3 :])
            except ValueError:
                continue
        if name in (IDENTITY, DEFLATE, GZIP) and weight > best_weight:
            best, best_weight = name, weight
    return best


def _parse_weight(text: str) -> float:
    """``std::stod``: leading whitespace, then the longest numeric prefix."""
    text = text.lstrip()
    end = len(text)
    while end > 0:
        try:
            return float(text[:end])
        except ValueError:
            end -= 1
    raise ValueError(text)


def compress(parts: Iterable[bytes | bytearray | memoryview], encoding: str) -> bytes:
    """Compress the concatenation of ``parts`` as ``gzip`` or ``deflate`` (zlib)."""
    compressor = zlib.compressobj(
        zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, _GZIP_WBITS if encoding == GZIP else _ZLIB_WBITS
    )
    out = [compressor.compress(part) for part in parts]
    out.append(compressor.flush())
    return b"".join(out)
