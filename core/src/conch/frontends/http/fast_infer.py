"""Binary inference requests answered without the ASGI app's per-request objects.

Clients of a fixed-shape workload (perf_analyzer, a tritonclient loop) send the same JSON header with
every request. The first is decoded and validated by the general path's own code (``codec``,
``validation``); what that found is kept as a *plan*, keyed by the URL and the header's exact bytes:
each input's byte range, datatype and shape, the outputs asked for and how. A later request with the
same header becomes an :class:`InferenceRequest` straight from the plan, without a JSON parse or a
second validation, and goes through the model's scheduler like any other request. The response's
status line, headers and JSON header come from a cache keyed by the outputs' names, datatypes and
shapes; the tensors' bytes follow.

The HTTP server calls :meth:`FastInfer.__call__` with the whole request (``frontends/http/server.py``,
only ``POST .../infer`` on keep-alive connections). It answers what it can and returns None for the
rest, which the app then answers from the start, errors with Triton's texts included: anything that
fails to decode or validate, compressed requests or responses, decoupled models, sampled traces,
bodies over ``--http-max-input-size``. Errors after the request was accepted (execution, encoding) it
answers itself, as the app would.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from conch import tensors
from conch.errors import ConchError, ErrorCode
from conch.frontends.http import codec
from conch.frontends.http.app import _MODEL, OCTET_STREAM, TEXT, HTTPApp, error_response
from conch.frontends.http.responses import Response
from conch.frontends.http.server import Wire, _status_line
from conch.inference import InferenceRequest, InferenceResponse, InferInput, RequestedOutput, ResponseStream
from conch.service import parse_version
from conch.validation import validate

if TYPE_CHECKING:
    from conch.models import ModelVersion

log = logging.getLogger("conch.http")

#: Plans kept at most (all are dropped when full: a workload's headers come back at once).
MAX_PLANS = 256
#: Response heads kept per plan at most.
MAX_HEADS = 16

_HEADER_LENGTH = codec.HEADER_LENGTH_HEADER.lower().encode("latin-1")
_DECLINED_HEADERS = (b"content-encoding", b"accept-encoding")


@dataclass(frozen=True, slots=True)
class _InputPlan:
    name: str
    datatype: str
    shape: tuple[int, ...]  # as the request gives it
    array_shape: tuple[int, ...]  # as the backend sees it (after ``reshape``)
    dtype: np.dtype[Any]
    offset: int


@dataclass(slots=True, eq=False)
class _Plan:
    """What one request header asks of one model version."""

    model: weakref.ref[ModelVersion]  # not kept alive by the cache once unloaded
    id: str
    parameters: dict[str, Any]
    inputs: tuple[_InputPlan, ...]
    size: int  # the body's length
    batch_size: int
    requested: tuple[RequestedOutput, ...]
    output_options: dict[str, codec.OutputOptions]
    binary_default: bool
    # outputs' (name, datatype, shape) → the status line to the JSON header, and the numpy dtypes whose
    # bytes are the wire's
    heads: dict[tuple[Any, ...], tuple[bytes, tuple[np.dtype[Any], ...]]]

    def request(self, body: bytes, name: str, version: int) -> InferenceRequest:
        inputs = {}
        for spec in self.inputs:
            data = np.ndarray(spec.array_shape, spec.dtype, body, spec.offset)  # a read-only view of the body
            inputs[spec.name] = InferInput(spec.name, spec.datatype, list(spec.shape), data)
        request = InferenceRequest(
            model_name=name,
            model_version=version,
            id=self.id,
            inputs=inputs,
            outputs=list(self.requested),  # shared: nothing changes a requested output once decoded
            parameters=dict(self.parameters) if self.parameters else {},
        )
        request.batch_size = self.batch_size
        return request


class FastInfer:
    """The fast handler of an :class:`HTTPApp` (see the module's docstring)."""

    def __init__(self, app: HTTPApp) -> None:
        self.app = app
        self.service = app.service
        self.plans: dict[tuple[bytes, bytes], _Plan] = {}
        self.routes: dict[bytes, tuple[str, int] | None] = {}

    def __call__(self, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
        route = self.routes.get(url)
        if route is None:
            route = self._route(url)
            if route is None:
                return None
        service = self.service
        if service.tracer.active or len(body) > self.app.max_input_size:
            return None
        length = b""
        for field, value in headers:
            if field == _HEADER_LENGTH:
                length = value
            elif field in _DECLINED_HEADERS:
                return None
        if not length.isdigit():
            return None
        header_length = int(length)
        if not 0 < header_length <= len(body):
            return None
        name, version = route
        try:
            model = service.models.get(name, version)
        except ConchError:
            return None
        if model.decoupled:
            return None
        key = (url, body[:header_length])
        plan = self.plans.get(key)
        if plan is not None and plan.model() is model and plan.size == len(body):
            request = plan.request(body, name, version)
            decoded = None
        else:
            decoded = self._decode(body, header_length, name, version, model)
            if decoded is None:
                return None
            request = decoded.request
            plan = self._plan(decoded, model, len(body))
            if plan is not None:
                if len(self.plans) >= MAX_PLANS:
                    self.plans.clear()
                self.plans[key] = plan
        response = service.infer_now(request, model)
        if response is not None:
            return self._wire(response, request, model, plan, decoded)
        try:
            stream = service.submit(request, model, checked=True)
        except ConchError:
            return None  # not accepted (shutting down, unloaded meanwhile): the app answers why
        if stream.ready():
            return self._wire(stream.take(), request, model, plan, decoded)
        return _Waiting(self, stream, request, model, plan, decoded)

    def _route(self, url: bytes) -> tuple[str, int] | None:
        match = _MODEL.fullmatch(url.split(b"?", 1)[0].decode("latin-1"))
        if match is None or match[3] != "infer":
            return None
        try:
            route = (match[1], parse_version(match[2] or ""))
        except ConchError:
            return None
        if len(self.routes) >= MAX_PLANS:
            self.routes.clear()
        self.routes[url] = route
        return route

    def _decode(
        self, body: bytes, header_length: int, name: str, version: int, model: ModelVersion
    ) -> codec.DecodedRequest | None:
        """The general path's decoding and validation; None when it fails (the app then answers the error)."""
        try:
            decoded = codec.decode_infer_request(body, header_length, name, version, self.service.shared_memory)
            validate(decoded.request, model.signature)
        except ConchError:
            return None
        return decoded

    def _plan(self, decoded: codec.DecodedRequest, model: ModelVersion, size: int) -> _Plan | None:
        """What a request with the same header will need, if it can be rebuilt from the body alone."""
        request = decoded.request
        if any(o.shared_memory is not None for o in request.outputs) or any(
            o.classification for o in decoded.output_options.values()
        ):
            return None
        inputs: list[_InputPlan] = []
        for tensor in request.inputs.values():
            data = tensor.data
            base = data.base if isinstance(data, np.ndarray) else None
            while isinstance(base, np.ndarray):
                base = base.base
            if not isinstance(data, np.ndarray) or tensor.datatype == "BYTES" or not isinstance(base, memoryview):
                return None  # JSON data, shared memory, strings: decoded each time
            view = base
            body = view.obj
            if not isinstance(body, bytes):
                return None
            offset = _offset(body, view)
            if offset is None:
                return None
            inputs.append(
                _InputPlan(
                    tensor.name, tensor.datatype, tuple(tensor.shape), data.shape, data.dtype, offset
                )
            )
        return _Plan(
            model=weakref.ref(model),
            id=request.id,
            parameters=dict(request.parameters),
            inputs=tuple(inputs),
            size=size,
            batch_size=request.batch_size,
            requested=tuple(RequestedOutput(o.name) for o in request.outputs),
            output_options=dict(decoded.output_options),
            binary_default=decoded.binary_default,
            heads={},
        )

    def _wire(
        self,
        response: InferenceResponse,
        request: InferenceRequest,
        model: ModelVersion,
        plan: _Plan | None,
        decoded: codec.DecodedRequest | None,
    ) -> Wire:
        """The response to write: from the plan's cached head when it has one, else encoded in full."""
        if response.error is not None:
            return _error_wire(response.error)
        outputs = response.outputs
        head_key: tuple[Any, ...] | None = None
        if plan is not None and not response.parameters:
            head_key = (response.model_name, response.model_version, response.id, *[
                (t.name, t.datatype, t.data.shape) for t in outputs
            ])  # fmt: skip
            cached = plan.heads.get(head_key)
            if cached is not None:
                head, dtypes = cached
                wire: Wire = [head]
                for tensor, dtype in zip(outputs, dtypes, strict=True):
                    array = tensor.data
                    if array.dtype == dtype and array.flags.c_contiguous:
                        wire.append(array)  # its buffer, written as it is
                    elif array.size:
                        wire.append(codec.raw_bytes(tensor.datatype, array))
                return wire
        if decoded is None:
            assert plan is not None
            decoded = codec.DecodedRequest(request, plan.output_options, plan.binary_default)
        try:
            encoded = codec.encode_infer_response(
                response, decoded, batching=model.config.max_batch_size > 0, labels=getattr(model, "output_labels", None)
            )
        except ConchError as exc:
            return _error_wire(exc)
        except Exception as exc:  # noqa: BLE001 - as the app: a 500 naming the failure, the server goes on
            log.exception("HTTP POST inference response for '%s' failed", model.name)
            return _wire_of(error_response(str(exc) or type(exc).__name__, 500))
        if encoded.has_binary:
            fields = b"%s: %d\r\ncontent-length: %d\r\ncontent-type: %s\r\n\r\n" % (
                codec.HEADER_LENGTH_HEADER.lower().encode("latin-1"),
                len(encoded.header),
                len(encoded.header) + sum(len(blob) for blob in encoded.blobs),
                OCTET_STREAM.encode("latin-1"),
            )
            head = _status_line(200) + fields + encoded.header
            if (
                head_key is not None
                and len(plan.heads) < MAX_HEADS  # type: ignore[union-attr]
                and all(t.datatype != "BYTES" for t in outputs)
                and len(encoded.blobs) == sum(1 for t in outputs if t.data.size)
            ):
                dtypes = tuple(tensors.datatype(t.datatype).numpy for t in outputs)
                plan.heads[head_key] = (head, dtypes)  # type: ignore[union-attr]
            return [head, *encoded.blobs]
        return _wire_of(Response(encoded.header, media_type="application/json"))


class _Waiting:
    """A response still to come (the request waits in a queue, for a batch, or runs on another thread):
    written by the connection when the stream delivers it, without a task; a client that hangs up first
    cancels the request, as in Triton."""

    __slots__ = ("fast", "stream", "request", "model", "plan", "decoded", "deliver")

    def __init__(
        self,
        fast: FastInfer,
        stream: ResponseStream,
        request: InferenceRequest,
        model: ModelVersion,
        plan: _Plan | None,
        decoded: codec.DecodedRequest | None,
    ) -> None:
        self.fast = fast
        self.stream = stream
        self.request = request
        self.model = model
        self.plan = plan
        self.decoded = decoded
        self.deliver: Callable[[Wire], None] | None = None

    def attach(self, deliver: Callable[[Wire], None]) -> None:
        self.deliver = deliver
        if self.stream.ready():
            self._arrived()
        else:
            self.stream.on_response = self._arrived

    def _arrived(self) -> None:
        stream = self.stream
        stream.on_response = None
        deliver, self.deliver = self.deliver, None
        if deliver is not None:
            deliver(self.fast._wire(stream.take(), self.request, self.model, self.plan, self.decoded))

    def cancel(self) -> None:
        stream = self.stream
        stream.on_response = None
        self.deliver = None
        if not stream.done:
            stream.cancelled = True  # the scheduler drops it if still queued
            stream.fail(ConchError("Request was cancelled", ErrorCode.CANCELLED))


def _offset(body: bytes, view: memoryview) -> int | None:
    """Where ``view`` (a slice of a memoryview of ``body``) starts in ``body``."""
    if not view.contiguous:
        return None
    whole = np.frombuffer(body, np.uint8)
    part = np.frombuffer(view, np.uint8)
    if part.size == 0:
        return None
    start = part.__array_interface__["data"][0] - whole.__array_interface__["data"][0]
    return start if 0 <= start <= len(body) - part.size else None


def _error_wire(error: ConchError) -> Wire:
    """An error of the response, as the app answers it: Triton's status, ``text/plain``."""
    return _wire_of(error_response(error.message, error.code.http_status, TEXT))


def _wire_of(response: Response) -> Wire:
    parts: list[bytes | memoryview] = [_status_line(response.status_code)]
    for name, value in response.raw_headers:
        parts += [name, b": ", value, b"\r\n"]
    parts += [b"\r\n", response.body]
    return parts
