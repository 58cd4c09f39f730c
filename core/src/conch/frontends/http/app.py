"""The HTTP/REST frontend: Triton's routes, status codes, error bodies and headers, as an ASGI app.

Routing follows Triton's ``HTTPAPIServer::Handle``: the same regular expressions on the raw (not
percent-decoded) path, tried in the same order, with the method checked by each handler, so a known
path with the wrong method is a 405 and anything else a 404. Errors are ``{"error": "<message>"}``
with the status of the error's code. ``Content-Type`` is what Triton sends: ``application/json`` where
its handler sets it (metadata, config, repository, request parsing and validation errors),
``text/plain`` (its HTTP library's default) elsewhere: health, readiness, unknown routes, 405s of the
health, ready and infer handlers, infer errors before the body is parsed and errors of the response.
Only successful inference responses are compressed, as in Triton.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.types import Message, Receive, Scope, Send

from conch import log as conch_log
from conch import tracing
from conch.errors import ConchError, ErrorCode
from conch.frontends.http import codec, compression, generate, jsonio
from conch.frontends.http.responses import Headers, Response, StreamResponse, request_headers
from conch.inference import InferenceResponse, ResponseStream
from conch.service import parse_version

if TYPE_CHECKING:
    from conch.service import InferenceService
    from conch.tracing import Trace

log = logging.getLogger("conch.http")

JSON = "application/json"
TEXT = "text/plain"
OCTET_STREAM = "application/octet-stream"
_INT64_MAX = (1 << 63) - 1
_HEADER_LENGTH = codec.HEADER_LENGTH_HEADER.lower()  # request headers are looked up by lower-case name

# Triton's route expressions (http_server.cc), matched against the whole raw path.
_MODEL = re.compile(
    r"/v2/models/([^/]+)(?:/versions/([0-9]+))?(?:/(infer|generate|generate_stream|ready|config|stats|trace/setting))?"
)
_SERVER = re.compile(r"/v2(?:/health/(live|ready))?")
_SYSTEM_SHM = re.compile(r"/v2/systemsharedmemory(?:/region/([^/]+))?/(status|register|unregister)")
_CUDA_SHM = re.compile(r"/v2/cudasharedmemory(?:/region/([^/]+))?/(status|register|unregister)")
_REPOSITORY = re.compile(r"/v2/repository(?:/([^/]+))?/(index|models/([^/]+)/(load|unload))")
_TRACE = re.compile(r"/v2/trace/setting")

LOG_FILE_FIXED = "log file location can not be updated through network protocol"

#: Triton features Conch does not have (yet). Statistics (for a service without them) answer as a
#: Triton built without them does (UNAVAILABLE, Triton's text); the others, which Triton cannot be
#: built without, as UNSUPPORTED naming the feature.
MISSING_FEATURES = {
    "statistics": ConchError("the server does not support model statistics", ErrorCode.UNAVAILABLE),
    "cuda": ConchError("CUDA shared memory is not supported by this server yet", ErrorCode.UNSUPPORTED),
}


class _Reply(Exception):
    """An error answer: message, status, and the ``Content-Type`` Triton gives it."""

    def __init__(
        self, message: str, status: int, content_type: str = JSON, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.content_type = content_type
        self.headers = headers

    @classmethod
    def plain(cls, error: ConchError, headers: dict[str, str] | None = None) -> _Reply:
        return cls(error.message, error.code.http_status, TEXT, headers or _extra_headers(error))


class _TooLarge(ConchError):
    """Over ``--http-max-input-size``: answered, then the connection is closed (the rest is unread)."""

    headers = {"Connection": "close"}


def _extra_headers(error: ConchError) -> dict[str, str] | None:
    return error.headers if isinstance(error, _TooLarge) else None


class _ClientGone(Exception):
    pass


def create_app(service: InferenceService, *, max_input_size: int = 1 << 26) -> HTTPApp:
    """The ASGI app serving Triton's HTTP/REST protocol for ``service``.

    ``max_input_size`` (``--http-max-input-size``) bounds a request body, before and after
    decompression.
    """
    return HTTPApp(service, max_input_size=max_input_size)


class HTTPApp:
    """ASGI application; see :func:`create_app`."""

    def __init__(self, service: InferenceService, *, max_input_size: int = 1 << 26) -> None:
        self.service = service
        self.max_input_size = max_input_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = request_headers(scope)
        try:
            response = await self._route(scope, receive, headers)
        except _Reply as reply:
            response = error_response(reply.message, reply.status, reply.content_type, reply.headers)
        except ConchError as exc:
            response = error_response(exc.message, exc.code.http_status, JSON, _extra_headers(exc))
        except _ClientGone:
            return
        except Exception as exc:  # never let a request take the server down
            log.exception("HTTP %s %s failed", scope.get("method"), scope.get("path"))
            response = error_response(str(exc) or type(exc).__name__, 500)
        await response(scope, receive, send)

    # -- routing ----------------------------------------------------------------------------------

    async def _route(
        self, scope: Scope, receive: Receive, headers: Headers
    ) -> Response | StreamResponse | _TracedResponse:
        path = _raw_path(scope)
        method = scope["method"]
        if path == "/v2/models/stats":
            return self._statistics(method, "", "")
        if path == "/v2/logging":
            return await self._logging(method, receive, headers)
        match = _MODEL.fullmatch(path)
        if match is not None:
            name, version_text, kind = match[1], match[2] or "", match[3] or ""
            if kind == "infer":
                _allow(method, "POST", TEXT)
                return await self._infer(receive, headers, name, version_text)
            if kind == "ready":
                _allow(method, "GET", TEXT)
                try:
                    ready = self.service.model_ready(name, parse_version(version_text))
                except ConchError as exc:
                    raise _Reply.plain(exc) from None
                if not ready:
                    raise _Reply("Model version not ready", 400, TEXT)
                return empty_response(TEXT)
            if kind == "config":
                _allow(method, "GET")
                return json_response(_config_json(self.service.model_config(name, parse_version(version_text))))
            if kind == "":
                _allow(method, "GET")
                return json_response(self.service.model_metadata(name, parse_version(version_text)))
            if kind in ("generate", "generate_stream"):
                _allow(method, "POST")
                return await self._generate(receive, headers, name, version_text, kind == "generate_stream")
            if kind == "stats":
                return self._statistics(method, name, version_text)
            if kind == "trace/setting" and not version_text:
                return await self._trace(method, receive, headers, name)
        if path == "/v2":
            _allow(method, "GET")
            return json_response(self.service.metadata())
        match = _SERVER.fullmatch(path)
        if match is not None:
            _allow(method, "GET", TEXT)
            healthy = self.service.is_live() if match[1] == "live" else self.service.is_ready()
            return empty_response(TEXT, 200 if healthy else 400)
        match = _SYSTEM_SHM.fullmatch(path)
        if match is not None:
            return await self._system_shared_memory(receive, headers, method, match[1] or "", match[2])
        match = _CUDA_SHM.fullmatch(path)
        if match is not None:
            return self._cuda_shared_memory(method, match[1] or "", match[2])
        match = _REPOSITORY.fullmatch(path)
        if match is not None:
            _allow(method, "POST")
            if match[2] == "index":
                return await self._repository_index(receive, headers)
            return await self._repository_control(receive, headers, match[1] or "", match[3], match[4])
        if _TRACE.fullmatch(path):
            return await self._trace(method, receive, headers, "")
        if path == "/conch/plugins":
            _allow(method, "GET")
            return json_response({"plugins": self.service.plugin_list()})
        raise _Reply("Not Found", 404, TEXT)

    def _statistics(self, method: str, name: str, version_text: str) -> Response:
        statistics = getattr(self.service, "model_statistics", None)
        if statistics is None:
            return _missing(method, ("GET",), "statistics")
        _allow(method, "GET")
        return json_response(statistics(name, parse_version(version_text)))

    # -- inference -----------------------------------------------------------------------------------

    async def _infer(
        self, receive: Receive, headers: Headers, name: str, version_text: str
    ) -> Response | _TracedResponse:
        tracer = self.service.tracer
        if not tracer.active:
            return await self._infer_one(receive, headers, name, version_text, None)
        received = time.monotonic_ns()
        trace = tracer.sample(name)  # the name in the path, as Triton samples
        if trace is None:
            return await self._infer_one(receive, headers, name, version_text, None)
        trace.stamp("HTTP_RECV_START", received)
        try:
            return _TracedResponse(await self._infer_one(receive, headers, name, version_text, trace), trace)
        except BaseException:
            trace.finish()
            raise

    async def _infer_one(
        self, receive: Receive, headers: Headers, name: str, version_text: str, trace: Trace | None
    ) -> Response:
        # Before the body is parsed, Triton's errors go out without a Content-Type of their own.
        try:
            model = self.service.model(name, parse_version(version_text))
            if model.decoupled:
                raise ConchError(
                    "HTTP end point doesn't support models with decoupled transaction policy", ErrorCode.UNSUPPORTED
                )
            try:
                encoding = compression.request_encoding(headers.get("content-encoding"))
            except ConchError as exc:
                raise _Reply.plain(exc, {"Accept-Encoding": "gzip, deflate"}) from None
            body = await self._read_body(receive, headers)
            if encoding != compression.IDENTITY:
                body = compression.decompress(body, self.max_input_size)
            header_length = codec.parse_header_length(headers.get(_HEADER_LENGTH), len(body))
        except ConchError as exc:
            raise _Reply.plain(exc) from None
        if trace is not None:
            trace.stamp("HTTP_RECV_END")
        # Parsing and validation errors are JSON.
        if header_length == 0:
            decoded = codec.decode_raw_request(body, model.name, model.version, model.config)
        else:
            decoded = codec.decode_infer_request(
                body, header_length, model.name, model.version, self.service.shared_memory
            )
        decoded.request.trace = trace
        stream = self.service.submit(decoded.request, model)
        # Errors of the response (execution, encoding) are plain again.
        try:
            response = await _response_or_disconnect(stream, receive)
            if trace is not None:
                trace.stamp("INFER_RESPONSE_COMPLETE")
            if response.error is not None:
                raise response.error
            encoded = codec.encode_infer_response(
                response,
                decoded,
                batching=model.config.max_batch_size > 0,
                labels=getattr(model, "output_labels", None),
            )
        except ConchError as exc:
            raise _Reply.plain(exc) from None
        out_headers = {}
        if encoded.has_binary:
            out_headers[codec.HEADER_LENGTH_HEADER] = str(len(encoded.header))
            content_type = OCTET_STREAM
        else:
            content_type = JSON
        out_encoding = compression.response_encoding(headers.get("accept-encoding"))
        if out_encoding != compression.IDENTITY:
            content = compression.compress(encoded.body_parts(), out_encoding)
            out_headers["Content-Encoding"] = out_encoding
        else:
            content = encoded.body()
        return Response(content, media_type=content_type, headers=out_headers)

    async def _generate(
        self, receive: Receive, headers: Headers, name: str, version_text: str, streaming: bool
    ) -> Response | StreamResponse:
        """Triton's generate extension (``frontends/http/generate.py``); decoupled models too."""
        model = self.service.model(name, parse_version(version_text))
        if compression.request_encoding(headers.get("content-encoding")) != compression.IDENTITY:
            raise ConchError("Unsupported content-encoding, only 'identity' is supported.", ErrorCode.INVALID_ARG)
        body = await self._read_body(receive, headers)
        request = generate.generate_request(jsonio.loads(body) if len(body) else {}, model, self.max_input_size)
        stream = self.service.submit(request, model)
        first = await _response_or_disconnect(stream, receive)
        status = first.error.code.http_status if first.error is not None else 200
        if streaming:
            return StreamResponse(_events(first, stream), "text/event-stream; charset=utf-8", status)
        responses = [first] if first.outputs or first.error is not None or not first.final else []
        if not first.final:
            async for response in stream:
                if response.outputs or response.error is not None or not response.final:
                    responses.append(response)
        if first.error is not None:
            return Response(jsonio.error_body(first.error.message), status, media_type=JSON)
        if len(responses) != 1:
            return Response(
                jsonio.error_body(
                    "generate expects model to produce exactly 1 response, use generate stream for model that "
                    "generates various number of responses"
                ),
                500,
                media_type=JSON,
            )
        return Response(generate.response_json(responses[0]), media_type=JSON)

    async def _read_body(self, receive: Receive, headers: Headers) -> bytes | memoryview:
        """The whole request body, refused (the rest unread) once it passes ``max_input_size``.

        A body that arrives in one message is used as it is. One in several is copied once: into a
        buffer of the declared ``Content-Length`` (numpy's, which skips zero-filling and gets huge
        pages), or joined at the end when the length is unknown (chunked).
        """
        limit = self.max_input_size
        declared = _content_length(headers)
        if declared is not None and declared > limit:
            raise _too_large(declared, limit)
        chunks: list[bytes] = []
        buffer: memoryview | None = None
        total = 0
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if chunk:
                end = total + len(chunk)
                if end > limit:
                    raise _too_large(end, limit)
                if total == 0 and not more:
                    return chunk
                if total == 0 and declared is not None and declared >= end:
                    buffer = np.empty(declared, dtype=np.uint8).data
                if buffer is not None and end <= len(buffer):
                    buffer[total:end] = chunk
                else:
                    if buffer is not None:  # more than declared: fall back to joining
                        chunks.append(bytes(buffer[:total]))
                        buffer = None
                    chunks.append(chunk)
                total = end
            if not more:
                break
        if buffer is not None:
            return buffer[:total]
        return b"".join(chunks)

    async def _read_json(self, receive: Receive, headers: Headers) -> Any:
        """An optional JSON body (``None`` when empty)."""
        body = await self._read_body(receive, headers)
        return jsonio.loads(body) if len(body) else None

    # -- logging extension ---------------------------------------------------------------------------

    async def _logging(self, method: str, receive: Receive, headers: Headers) -> Response:
        """``GET``/``POST /v2/logging``: the settings, after applying a POST's changes as Triton does."""
        if method not in ("GET", "POST"):
            raise _Reply("Method Not Allowed", 405)
        if method == "POST":
            document = jsonio.loads(await self._read_body(receive, headers))
            if isinstance(document, dict):  # Triton ignores any other document
                for key, value in _log_changes(document):
                    self.service.set_log_setting(key, value)
        return json_response(self.service.log_settings())

    # -- trace extension -----------------------------------------------------------------------------

    async def _trace(self, method: str, receive: Receive, headers: Headers, model: str) -> Response:
        """``GET``/``POST`` the global or a model's trace settings, with Triton's checks and texts."""
        if method not in ("GET", "POST"):
            raise _Reply("Method Not Allowed", 405)
        changes = None
        if method == "POST":
            if model and not self.service.model_ready(model):
                raise ConchError(f"Request for unknown model : {model}", ErrorCode.INVALID_ARG)
            document = jsonio.loads(await self._read_body(receive, headers))
            changes = _trace_changes(document) if isinstance(document, dict) else {}
        return json_response(self.service.trace_settings(model, changes))

    # -- shared memory -------------------------------------------------------------------------------

    async def _system_shared_memory(
        self, receive: Receive, headers: Headers, method: str, region: str, action: str
    ) -> Response:
        """Status (all regions or one), register and unregister (one region or all), as Triton answers."""
        _allow(method, "GET" if action == "status" else "POST")
        regions = self.service.shared_memory
        if action == "status":
            return json_response(regions.status(region))
        if action == "unregister":
            if region:
                regions.unregister(region)
            else:
                regions.unregister_all()
            return empty_response(JSON)
        if not region:
            raise ConchError("'region name' is necessary to register system shared memory region")
        key, offset, byte_size = _register_fields(jsonio.loads(await self._read_body(receive, headers)))
        regions.register(region, key, offset, byte_size)
        return empty_response(JSON)

    def _cuda_shared_memory(self, method: str, region: str, action: str) -> Response:
        """No CUDA region can be registered: status lists none, unregistering is a no-op, registering fails."""
        _allow(method, "GET" if action == "status" else "POST")
        if action == "status":
            if region in self.service.shared_memory:
                raise ConchError(
                    f"The region named '{region}' is registered as system shared memory, not CUDA shared memory",
                    ErrorCode.NOT_FOUND,
                )
            if region:
                raise ConchError(f"Unable to find cuda shared memory region: '{region}'", ErrorCode.NOT_FOUND)
            return json_response([])
        if action == "unregister":
            return empty_response(JSON)
        if not region:
            raise ConchError("'region name' is necessary to register cuda shared memory region")
        raise MISSING_FEATURES["cuda"]

    # -- model repository ----------------------------------------------------------------------------

    async def _repository_index(self, receive: Receive, headers: Headers) -> Response:
        document = await self._read_json(receive, headers)
        ready = False
        if isinstance(document, dict) and "ready" in document:
            ready = document["ready"]
            if type(ready) is not bool:
                raise ConchError("attempt to access JSON non-boolean as boolean", ErrorCode.INTERNAL)
        return json_response(self.service.repository_index(ready))

    async def _repository_control(
        self, receive: Receive, headers: Headers, repository: str, name: str, action: str
    ) -> Response:
        if repository:
            raise ConchError("'repository_name' specification is not supported", ErrorCode.UNSUPPORTED)
        if action == "load":
            document = await self._read_json(receive, headers)
            await self.service.load_model(name, _load_parameters(document))
        else:
            unload_dependents = False
            try:
                document = await self._read_json(receive, headers)
                params = document.get("parameters") if isinstance(document, dict) else None
                if isinstance(params, dict) and params.get("unload_dependents") is True:
                    unload_dependents = True
            except _TooLarge:
                raise
            except ConchError:
                pass  # Triton ignores an unreadable unload body and unloads anyway
            await self.service.unload_model(name, unload_dependents)
        return empty_response(JSON)


# -- helpers ----------------------------------------------------------------------------------------


async def _response_or_disconnect(stream: ResponseStream, receive: Receive) -> InferenceResponse:
    """The request's response; a client that hangs up first cancels the request, as in Triton."""
    if stream.ready():  # executed already: nothing to watch for
        return await stream.next()
    hangup = asyncio.get_running_loop().create_task(_disconnected(receive))

    def on_hangup(task: asyncio.Task[bool]) -> None:
        if not task.cancelled() and task.exception() is None and task.result():
            stream.cancelled = True  # the scheduler drops it if still queued
            stream.fail(ConchError("Request was cancelled", ErrorCode.CANCELLED))

    hangup.add_done_callback(on_hangup)
    try:
        response = await stream.next()
    finally:
        hangup.cancel()
    if stream.cancelled:
        raise _ClientGone
    return response


async def _events(first: InferenceResponse, stream: ResponseStream) -> AsyncIterator[bytes]:
    """Each response of a generate_stream request as a server-sent event (errors as error events)."""
    response: InferenceResponse | None = first
    try:
        while response is not None:
            if response.error is not None:
                yield generate.sse_event(jsonio.error_body(response.error.message))
            elif response.outputs or response.parameters or not response.final:
                yield generate.sse_event(generate.response_json(response))
            response = None if response.final else await stream.next()
    finally:
        if not stream.done:
            stream.cancelled = True  # the client went away: queued work for it is dropped


async def _disconnected(receive: Receive) -> bool:
    """Whether the next message after the body says the client went away (servers send nothing else)."""
    return bool((await receive())["type"] == "http.disconnect")


def _raw_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if raw is None:
        return str(scope["path"])
    return bytes(raw).split(b"?", 1)[0].decode("latin-1")


def _allow(method: str, allowed: str, content_type: str = JSON) -> None:
    if method != allowed:
        raise _Reply("Method Not Allowed", 405, content_type)


def _missing(method: str, methods: tuple[str, ...], feature: str) -> Response:
    if method not in methods:
        raise _Reply("Method Not Allowed", 405)
    raise MISSING_FEATURES[feature]


def _log_changes(document: dict[str, Any]) -> Iterator[tuple[str, bool | int | str]]:
    """Checked changes of a ``POST /v2/logging`` body, in Triton's order, with its texts.

    A change is applied before the next key is checked, so an error leaves the earlier ones in place,
    as in Triton. ``null`` values count as absent; the log file cannot change.
    """
    if document.get("log_file") is not None:
        raise ConchError(LOG_FILE_FIXED, ErrorCode.UNSUPPORTED)
    for key, kind in conch_log.RUNTIME_SETTINGS:
        value = document.get(key)
        if value is None:
            continue
        if kind is bool:
            if type(value) is not bool:
                raise ConchError("attempt to access JSON non-boolean as boolean", ErrorCode.INTERNAL)
        elif kind is int:
            # Any unsigned 64-bit integer RapidJSON reads (conch.log narrows it as Triton does).
            if type(value) is not int or not 0 <= value < 1 << 64:
                raise ConchError("attempt to access JSON non-unsigned-integer as unsigned-integer", ErrorCode.INTERNAL)
        else:
            if type(value) is not str:
                raise ConchError("attempt to access JSON non-string as string", ErrorCode.INTERNAL)
            if value not in conch_log.FORMATS:
                raise ConchError(f"invalid argument for --log_format, got: {value}", ErrorCode.UNAVAILABLE)
        yield key, value


def _trace_changes(document: dict[str, Any]) -> dict[str, int | None]:
    """Checked changes of a trace settings body, in Triton's order with its texts (``null`` clears)."""
    if "trace_file" in document:
        raise ConchError(tracing.FILE_FIXED, ErrorCode.UNSUPPORTED)
    changes: dict[str, int | None] = {}
    for key in tracing.UPDATABLE:
        if key not in document:
            continue
        value = document[key]
        if value is None:
            changes[key] = None
        elif key == "trace_level":
            if not isinstance(value, list):
                raise ConchError("attempt to access JSON non-array as array", ErrorCode.INTERNAL)
            if not all(isinstance(name, str) for name in value):
                raise ConchError("attempt to access JSON non-string as string", ErrorCode.INTERNAL)
            level = tracing.parse_levels(value)
            if level is not None:
                changes[key] = level
        else:
            if not isinstance(value, str):
                raise ConchError("attempt to access JSON non-string as string", ErrorCode.INTERNAL)
            changes[key] = tracing.parse_number(key, value)
    return changes


class _TracedResponse:
    """A traced request's response: sending it is stamped, then the trace is complete."""

    __slots__ = ("response", "trace")

    def __init__(self, response: Response, trace: Trace) -> None:
        self.response = response
        self.trace = trace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.trace.stamp("HTTP_SEND_START")
        try:
            await self.response(scope, receive, send)
        finally:
            self.trace.stamp("HTTP_SEND_END")
            self.trace.finish()


def _shared_memory(method: str, kind: str, region: str, action: str) -> Response:
    """No region can be registered yet: status lists none, unregistering is a no-op, registering fails."""
    _allow(method, "GET" if action == "status" else "POST")
    if action == "status":
        if region:
            raise ConchError(f"Unable to find {kind} shared memory region: '{region}'", ErrorCode.NOT_FOUND)
        return json_response([])
    if action == "unregister":
        return empty_response(JSON)
    if not region:
        raise ConchError(f"'region name' is necessary to register {kind} shared memory region")
    raise MISSING_FEATURES[kind]

def _register_fields(document: Any) -> tuple[str, int, int]:
    """``key``, ``offset`` (default 0) and ``byte_size`` of a register body, with Triton's texts."""
    if not isinstance(document, dict) or "key" not in document:
        raise ConchError("Shared memory register request has no 'key' field")
    key = document["key"]
    if not isinstance(key, str):
        raise ConchError("attempt to access JSON non-string as string", ErrorCode.INTERNAL)
    offset = document.get("offset", 0)
    if "byte_size" not in document:
        raise ConchError("Shared memory register request has no 'byte_size' field")
    byte_size = document["byte_size"]
    for value in (offset, byte_size):
        if type(value) is not int or not 0 <= value < 1 << 64:
            raise ConchError("attempt to access JSON non-unsigned-integer as unsigned-integer", ErrorCode.INTERNAL)
    return key, offset, byte_size


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _too_large(size: int, limit: int) -> _TooLarge:
    return _TooLarge(
        f"request size of {size} bytes exceeds the maximum allowed input size of {limit} bytes. "
        "Use --http-max-input-size to increase the limit.",
        ErrorCode.INVALID_ARG,
    )


def _config_json(config: Any) -> Any:
    from conch.config import config_to_json

    return config_to_json(config)


def _load_parameters(document: Any) -> dict[str, Any]:
    """``{"parameters": {"config": str, "file:<path>": base64}}`` as the service takes them."""
    out: dict[str, Any] = {}
    if not isinstance(document, dict) or "parameters" not in document:
        return out
    params = document["parameters"]
    if not isinstance(params, dict):
        raise ConchError("attempt to get members for non-object", ErrorCode.INTERNAL)
    for key, value in params.items():
        if not isinstance(value, str):
            raise ConchError("attempt to access JSON non-string as string", ErrorCode.INTERNAL)
        if key == "config":
            out[key] = value
        elif key.startswith("file:"):
            out[key] = _b64decode(value)
        else:
            raise ConchError("unexpected error on creating Triton parameter", ErrorCode.INTERNAL)
    return out


def _b64decode(text: str) -> bytes:
    """Lenient base64, as Triton's libb64 decodes: characters outside the alphabet are skipped."""
    cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", text.encode("utf-8", "surrogateescape"))
    if len(cleaned) % 4 == 1:
        cleaned = cleaned[:-1]
    return base64.b64decode(cleaned + b"=" * (-len(cleaned) % 4))


def json_response(value: Any, status: int = 200) -> Response:
    if isinstance(value, (bytes, str)):
        content = value.encode("utf-8") if isinstance(value, str) else value
    else:
        content = jsonio.dumps(value)
    return Response(content, status_code=status, media_type=JSON)


def empty_response(content_type: str, status: int = 200) -> Response:
    return Response(status_code=status, headers={"Content-Type": content_type})


def error_response(
    message: str, status: int, content_type: str = JSON, headers: dict[str, str] | None = None
) -> Response:
    """``{"error": message}``; ``content_type`` is set as is (no charset), as Triton sends it."""
    return Response(
        jsonio.error_body(message), status_code=status, headers={**(headers or {}), "Content-Type": content_type}
    )


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
