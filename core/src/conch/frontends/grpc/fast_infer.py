"""ModelInfer calls answered without a task, a protobuf parse per request or a second validation.

The gRPC twin of ``frontends/http/fast_infer.py``. Clients of a fixed-shape workload (perf_analyzer, a
tritonclient loop) send ModelInferRequest messages that differ only in their ``raw_input_contents``
and perhaps their ``id``. The first such message is decoded and validated by the general path's own
code (``codec``, ``validation``); what that found is kept as a *plan*: the header's bytes after the id
field, the framing of each raw entry, and each input's place, datatype and shape, filed under the
bytes before the id field. A later message with the same bytes around its id, framing its raw entries
the same way, becomes an :class:`InferenceRequest` straight from the plan, its inputs numpy views of
the message, and goes through the model's scheduler like any other request. The response's protobuf
header (name, version, output metadata; the id spliced in) comes from a cache keyed by the outputs'
names, datatypes and shapes; the tensors' bytes follow, framed by hand as the general path frames them.

The transport calls :meth:`FastModelInfer.__call__` with the whole message as soon as it is complete
(``transport/calls.py``, ``FastUnary``). It answers what it can and returns False for the rest, which
the servicer then answers from the start, errors with Triton's texts included: messages that do not
parse, decode or validate, unknown or decoupled models, shared memory, classification, typed
``contents``, sampled traces. Errors after the request was accepted (execution,
encoding) it answers itself, with the status the servicer would give.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from conch import tensors
from conch.errors import ConchError, ErrorCode
from conch.frontends.grpc import codec
from conch.inference import InferenceRequest, InferenceResponse, InferInput, RequestedOutput, ResponseStream
from conch.service import parse_version
from conch.validation import validate

if TYPE_CHECKING:
    from conch.frontends.grpc.transport.calls import Call
    from conch.models import ModelVersion
    from conch.service import InferenceService

log = logging.getLogger("conch.grpc")

#: Plans kept at most (all are dropped when full: a workload's messages come back at once).
MAX_PLANS = 256
#: Plans kept per model name and version at most (the oldest goes).
MAX_PLANS_PER_PREFIX = 8
#: Response heads kept per plan at most.
MAX_HEADS = 16
#: Responses bigger than this are queued as pieces instead of joined into one message.
JOIN_LIMIT = 64 * 1024

_RAW_INPUT_TAG = 0x3A  # ModelInferRequest field 7 (raw_input_contents), length-delimited


@dataclass(frozen=True, slots=True)
class _InputPlan:
    name: str
    datatype: str
    shape: tuple[int, ...]  # as the request gives it
    array_shape: tuple[int, ...]  # as the backend sees it (after ``reshape``)
    dtype: np.dtype[Any]
    offset: int  # where its bytes start, counted from the end of the message's header
    nbytes: int


@dataclass(slots=True, eq=False)
class _Plan:
    """What one request message asks of one model version, its id and raw contents aside.

    A message is ``prefix`` (model name and version fields), its id field (any id), ``after`` (the
    rest of the header), then the raw entries, framed as ``frames`` say.
    """

    after: bytes  # the header's bytes after the id field
    raw_size: int  # the bytes after the header
    frames: tuple[tuple[int, bytes], ...]  # (position after the header, tag and length) per raw entry
    model: weakref.ref[ModelVersion]  # not kept alive by the cache once unloaded
    name: str
    version: int
    parameters: dict[str, Any]  # as decoded (perf_analyzer sends triton_enable_empty_final_response)
    inputs: tuple[_InputPlan, ...]
    batch_size: int
    requested: tuple[RequestedOutput, ...]
    # (model name, version, then each output's name, datatype, shape) → the serialized response header
    # around its id field, and per output the numpy dtype whose bytes are the wire's and the raw
    # entry's framing
    heads: dict[tuple[Any, ...], tuple[bytes, bytes, tuple[tuple[np.dtype[Any], bytes], ...]]]

    def header_end(self, data: bytes, id_end: int) -> int:
        """Where the raw entries start in ``data`` if it is a message of this plan, else -1."""
        header_end = id_end + len(self.after)
        if len(data) - header_end != self.raw_size or not data.startswith(self.after, id_end):
            return -1
        for position, frame in self.frames:
            if not data.startswith(frame, header_end + position):
                return -1
        return header_end

    def request(self, data: bytes, header_end: int, request_id: str) -> InferenceRequest:
        inputs = {}
        for spec in self.inputs:
            offset = header_end + spec.offset
            if offset % spec.dtype.itemsize == 0:
                array = np.ndarray(spec.array_shape, spec.dtype, data, offset)  # a read-only view
            else:  # an address that does not suit the element size: copied, as the general path does
                array = np.frombuffer(data[offset : offset + spec.nbytes], spec.dtype).reshape(spec.array_shape)
            inputs[spec.name] = InferInput(spec.name, spec.datatype, list(spec.shape), array)
        request = InferenceRequest(
            model_name=self.name,
            model_version=self.version,
            id=request_id,
            inputs=inputs,
            outputs=list(self.requested),  # shared: nothing changes a requested output once decoded
            parameters=dict(self.parameters) if self.parameters else {},
        )
        request.batch_size = self.batch_size
        return request


class FastModelInfer:
    """The fast handler of ``inference.GRPCInferenceService/ModelInfer`` (see the module's docstring)."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.plans: dict[bytes, list[_Plan]] = {}  # by the message's bytes before its id field
        self._count = 0

    def __call__(self, data: bytes, call: Call) -> bool:
        service = self.service
        if service.tracer.active:
            return False
        plan = None
        span = _id_span(data)
        if span is not None:
            id_start, id_bytes, id_end = span
            prefix = data[:id_start]
            for candidate in self.plans.get(prefix, ()):
                header_end = candidate.header_end(data, id_end)
                if header_end >= 0:
                    plan = candidate
                    break
        model: ModelVersion | None = None
        if plan is not None:
            try:
                model = service.models.get(plan.name, plan.version)
            except ConchError:
                return False  # unloaded meanwhile: the servicer answers why
            if plan.model() is not model:  # reloaded: this plan is stale, decode again
                self.plans[prefix].remove(plan)
                self._count -= 1
                plan = None
        if plan is not None and model is not None:
            try:
                request_id = data[id_bytes:id_end].decode()
            except UnicodeDecodeError:
                return False  # not a valid protobuf string: the servicer reports it
            request = plan.request(data, header_end, request_id)
        else:
            built = self._decode(data)
            if built is None:
                return False
            request, model, plan = built
        response = service.infer_now(request, model)
        if response is None:
            try:
                stream = service.submit(request, model, checked=True)
            except ConchError:
                return False  # not accepted (shutting down, unloaded meanwhile): the servicer answers why
            if not stream.ready():
                waiting = _Waiting(self, stream, request, model, plan, call)
                call.pending = waiting
                stream.on_response = waiting.arrived
                return True
            response = stream.take()
        self.answer(call, response, request, model, plan)
        return True

    def _decode(self, data: bytes) -> tuple[InferenceRequest, ModelVersion, _Plan | None] | None:
        """The general path's parsing, decoding and validation; None when the servicer should answer."""
        service = self.service
        try:
            wire = codec.parse_infer_request(data)
        except Exception:  # noqa: BLE001 - the servicer reports a message that does not parse
            return None
        message = wire.message
        if any(t.parameters or t.HasField("contents") for t in message.inputs):
            return None  # shared memory, typed contents: the servicer's
        if any(o.parameters for o in message.outputs):
            return None  # classification, shared memory outputs
        try:
            version = parse_version(message.model_version)
            model = service.models.get(message.model_name, version)
            if model.decoupled:
                return None
            request, _ = codec.decode_request(wire, version, service.shared_memory)
            validate(request, model.signature)
        except ConchError:
            return None
        built = self._plan(data, request, model, version)
        if built is None:
            return request, model, None
        prefix, plan = built
        if self._count >= MAX_PLANS:
            self.plans.clear()
            self._count = 0
        same = self.plans.setdefault(prefix, [])
        if len(same) >= MAX_PLANS_PER_PREFIX:
            same.pop(0)
            self._count -= 1
        same.append(plan)
        self._count += 1
        return request, model, plan

    def _plan(
        self, data: bytes, request: InferenceRequest, model: ModelVersion, version: int
    ) -> tuple[bytes, _Plan] | None:
        """What a message that differs only in its id and raw bytes will need, if that is all it takes;
        with the bytes before its id field, which the plan is filed under."""
        layout = _layout(data)
        span = _id_span(data)
        if layout is None or span is None:
            return None
        header_end, entries = layout
        id_start, _, id_end = span
        if id_end > header_end or len(entries) != len(request.inputs):
            return None  # raw entries beyond the inputs (ignored, as Triton does): decoded each time
        inputs: list[_InputPlan] = []
        frames: list[tuple[int, bytes]] = []
        for tensor, (frame_start, start, end) in zip(request.inputs.values(), entries, strict=True):
            array = tensor.data
            if tensor.datatype == "BYTES" or not isinstance(array, np.ndarray) or array.nbytes != end - start:
                return None  # strings: decoded each time
            inputs.append(
                _InputPlan(
                    tensor.name, tensor.datatype, tuple(tensor.shape), array.shape, array.dtype, start - header_end,
                    end - start,
                )
            )  # fmt: skip
            frames.append((frame_start - header_end, data[frame_start:start]))
        plan = _Plan(
            after=data[id_end:header_end],
            raw_size=len(data) - header_end,
            frames=tuple(frames),
            model=weakref.ref(model),
            name=request.model_name,
            version=version,
            parameters=dict(request.parameters),
            inputs=tuple(inputs),
            batch_size=request.batch_size,
            requested=tuple(RequestedOutput(o.name) for o in request.outputs),
            heads={},
        )
        return data[:id_start], plan

    def answer(
        self,
        call: Call,
        response: InferenceResponse,
        request: InferenceRequest,
        model: ModelVersion,
        plan: _Plan | None,
    ) -> None:
        """End ``call`` with ``response``: from the plan's cached header when it has one, else encoded in full."""
        error = response.error
        if error is not None:
            call.finish(getattr(grpc.StatusCode, error.code.grpc_status), error.message)
            return
        outputs = response.outputs
        head_key: tuple[Any, ...] | None = None
        if plan is not None and not response.parameters:
            head_key = (response.model_name, response.model_version, *[
                (t.name, t.datatype, t.data.shape) for t in outputs
            ])  # fmt: skip
            cached = plan.heads.get(head_key)
            if cached is not None:
                before, after, layouts = cached
                answer_id = (response.id or request.id).encode()
                head = before + _id_field(answer_id) + after if answer_id else before + after
                parts: list[Any] = [head]
                size = len(head)
                for tensor, (dtype, frame) in zip(outputs, layouts, strict=True):
                    array = tensor.data
                    if array.dtype == dtype and array.flags.c_contiguous:
                        raw: Any = memoryview(array).cast("B") if array.size else b""  # type: ignore[arg-type]
                    else:
                        raw = tensors.to_raw(tensors.datatype(tensor.datatype), array)
                    parts += (frame, raw)
                    size += len(frame) + len(raw)
                _reply(call, parts, size)
                return
        try:
            encoded = codec.encode_response(
                response,
                model_name=request.model_name,
                model_version=str(model.version),
                request_id=request.id,
            )
        except ConchError as exc:
            call.finish(getattr(grpc.StatusCode, exc.code.grpc_status), exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - as the servicer: a status naming the failure, the server goes on
            log.exception("unexpected error in a gRPC call", exc_info=exc)
            call.finish(grpc.StatusCode.INTERNAL, str(exc) or type(exc).__name__)
            return
        if head_key is not None and plan is not None and len(plan.heads) < MAX_HEADS:
            found = _layouts(outputs, encoded.parts)
            head = bytes(encoded.parts[0])
            span = _id_span(head)  # ModelInferResponse numbers its name, version and id fields as the request
            if found is not None and span is not None:
                plan.heads[head_key] = (head[: span[0]], head[span[2] :], found)
        _reply(call, encoded.parts, encoded.size)


class _Waiting:
    """A response still to come (the request waits in a queue, for a batch, or runs elsewhere): the call
    is answered when the stream delivers it, without a task; a call that ends first (the client cancels,
    hangs up, or its deadline passes) cancels the request, as the servicer's path does."""

    __slots__ = ("fast", "stream", "request", "model", "plan", "call")

    def __init__(
        self,
        fast: FastModelInfer,
        stream: ResponseStream,
        request: InferenceRequest,
        model: ModelVersion,
        plan: _Plan | None,
        call: Call,
    ) -> None:
        self.fast = fast
        self.stream = stream
        self.request = request
        self.model = model
        self.plan = plan
        self.call: Call | None = call

    def arrived(self) -> None:
        stream = self.stream
        stream.on_response = None
        call, self.call = self.call, None
        if call is not None:
            self.fast.answer(call, stream.take(), self.request, self.model, self.plan)

    def cancel(self) -> None:
        stream = self.stream
        stream.on_response = None
        self.call = None
        if not stream.done:
            stream.cancelled = True  # the scheduler drops it if still queued
            stream.fail(ConchError("Request was cancelled", ErrorCode.CANCELLED))


def _reply(call: Call, parts: list[Any], size: int) -> None:
    """Small responses as one joined message (as the servicer sends them), big ones as their pieces."""
    if size <= JOIN_LIMIT:
        call.reply(b"".join(parts))
    else:
        call.reply(b"", parts)


def _layouts(outputs: list[Any], parts: list[Any]) -> tuple[tuple[np.dtype[Any], bytes], ...] | None:
    """Per output, the numpy dtype whose bytes the wire carries and its raw entry's tag and length, as
    ``codec.encode_response`` framed them (parts: header, then tag, length, bytes per output)."""
    if len(parts) != 1 + 3 * len(outputs):
        return None
    layouts = []
    for index, tensor in enumerate(outputs):
        if tensor.datatype == "BYTES":
            return None  # a string's bytes depend on its values
        tag, length = parts[1 + 3 * index], parts[2 + 3 * index]
        layouts.append((tensors.datatype(tensor.datatype).numpy, bytes(tag) + bytes(length)))
    return tuple(layouts)


def _id_span(data: bytes) -> tuple[int, int, int] | None:
    """Where a serialized ModelInferRequest's (or ModelInferResponse's) id field is: (field start, id
    bytes start, field end), the three equal where the message has no id; None if it is not there in
    the order serializers write (name, version, id)."""
    size = len(data)
    pos = 0
    while pos < size and data[pos] in (0x0A, 0x12, 0x1A):  # model_name, model_version, id
        key = data[pos]
        if pos + 1 >= size:
            return None
        length = data[pos + 1]
        start = pos + 2
        if length >= 0x80:  # a longer varint (a name or id of 128 bytes or more)
            length &= 0x7F
            shift = 7
            while True:
                if start >= size or shift > 28:
                    return None
                byte = data[start]
                start += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    break
                shift += 7
        end = start + length
        if end > size:
            return None
        if key == 0x1A:
            return pos, start, end
        pos = end
    return pos, pos, pos


def _id_field(value: bytes) -> bytes:
    """A ModelInferResponse's id field (tag, length, bytes)."""
    return b"\x1a" + _varint(len(value)) + value


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _layout(data: bytes) -> tuple[int, list[tuple[int, int, int]]] | None:
    """Where a serialized ModelInferRequest's raw entries are: the end of the fields before them, and per
    entry (frame start, bytes start, bytes end); None unless every raw entry comes after every other
    field (how protobuf serializers write it) and the message is well formed."""
    size = len(data)
    pos = 0
    header_end = -1
    ids = 0
    entries: list[tuple[int, int, int]] = []
    try:
        while pos < size:
            start = pos
            key = data[pos]
            if key >= 0x80:
                return None  # field numbers above 15: not a ModelInferRequest field
            pos += 1
            wire_type = key & 7
            if wire_type == 2:
                length = 0
                shift = 0
                while True:
                    byte = data[pos]
                    pos += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                    if shift > 35:
                        return None
                end = pos + length
                if end > size:
                    return None
                if key == _RAW_INPUT_TAG:
                    if header_end < 0:
                        header_end = start
                    entries.append((start, pos, end))
                elif header_end >= 0:
                    return None  # another field after a raw entry
                elif key == 0x1A:
                    ids += 1
                    if ids > 1:
                        return None  # two id fields (the last one counts): decoded each time
                pos = end
            else:
                return None  # ModelInferRequest has only length-delimited fields
    except IndexError:
        return None
    if header_end < 0:
        return None
    return header_end, entries
