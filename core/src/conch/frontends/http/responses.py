"""Request headers and responses for the HTTP app, without a web framework's per-request objects.

:class:`Response` sends the same status, headers (same order, same values) and body as Starlette's
``Response`` with the same arguments would; :func:`request_headers` reads the request's headers once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from starlette.types import Receive, Scope, Send

#: A request's headers by lower-case name; the first of repeated headers wins.
Headers = dict[str, str]


def request_headers(scope: Scope) -> Headers:
    """The request's headers (ASGI gives names in lower case)."""
    headers: Headers = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1")
        if key not in headers:
            headers[key] = value.decode("latin-1")
    return headers


class Response:
    """A complete response: ``content`` (bytes or text), status, headers and media type.

    Headers given are sent first (names in lower case), then ``content-length`` and ``content-type``
    unless given; a ``text/`` media type gets ``; charset=utf-8``.
    """

    __slots__ = ("status_code", "body", "raw_headers")

    def __init__(
        self,
        content: bytes | memoryview | str | None = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.status_code = status_code
        if content is None:
            body: bytes | memoryview = b""
        elif isinstance(content, str):
            body = content.encode("utf-8")
        elif isinstance(content, memoryview):
            body = content.cast("B") if content.c_contiguous else content.tobytes()
        else:
            body = content
        self.body = body
        raw: list[tuple[bytes, bytes]] = []
        has_length = has_type = False
        if headers:
            for key, value in headers.items():
                name = key.lower().encode("latin-1")
                has_length = has_length or name == b"content-length"
                has_type = has_type or name == b"content-type"
                raw.append((name, value.encode("latin-1")))
        if not has_length and not (status_code < 200 or status_code in (204, 304)):
            raw.append((b"content-length", str(len(body)).encode("latin-1")))
        if media_type is not None and not has_type:
            if media_type.startswith("text/") and "charset=" not in media_type.lower():
                media_type += "; charset=utf-8"
            raw.append((b"content-type", media_type.encode("latin-1")))
        self.raw_headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


class StreamResponse:
    """A response whose body is produced piece by piece (chunked transfer encoding), e.g. server-sent events."""

    __slots__ = ("status_code", "media_type", "parts")

    def __init__(self, parts: AsyncIterator[bytes], media_type: str, status_code: int = 200) -> None:
        self.parts = parts
        self.media_type = media_type
        self.status_code = status_code

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", self.media_type.encode("latin-1"))]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        async for part in self.parts:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
