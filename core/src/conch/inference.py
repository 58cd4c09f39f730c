"""The protocol-neutral request and response that travel from a frontend to a backend and back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from conch.errors import ConchError, ErrorCode

if TYPE_CHECKING:
    from conch.tracing import Trace

log = logging.getLogger("conch.inference")


@dataclass(slots=True)
class Tensor:
    """A named tensor: a numpy array plus its protocol datatype (BF16 arrays hold uint16 bits)."""

    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)


@dataclass(slots=True)
class InferInput:
    """An input as the frontend decoded it.

    ``data`` is a numpy array (from JSON or typed gRPC contents) or still raw bytes (binary extension,
    ``raw_input_contents``); validation turns raw bytes into a zero-copy numpy view.
    """

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | bytes | memoryview | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asks for; ``shared_memory`` is the client's region its bytes go to, if any."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    shared_memory: memoryview | None = None


@dataclass(slots=True)
class InferenceResponse:
    """One response: output tensors or an error. ``final`` marks the last response of a request."""

    model_name: str = ""
    model_version: str = ""
    id: str = ""
    outputs: list[Tensor] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    error: ConchError | None = None
    final: bool = True


def call_on_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    """Call ``callback(*args)`` now when running on ``loop``, else schedule it there (from any thread)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        callback(*args)
    else:
        loop.call_soon_threadsafe(callback, *args)


class ResponseStream:
    """Where a request's responses go; safe to call ``send`` from any thread.

    The frontend awaits ``next()`` (unary) or iterates (streaming); the scheduler or backend sends.
    One consumer at a time: a deque and a single waiting future, lighter than an ``asyncio.Queue``.
    """

    __slots__ = ("_loop", "_items", "_waiter", "done", "cancelled", "on_done", "on_response")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._items: deque[InferenceResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.done = False
        self.cancelled = False
        self.on_done: Callable[[], None] | None = None  # called on the loop after the final response
        # Called on the loop after each response arrives: a consumer that takes responses as they come
        # (``take()``) instead of awaiting ``next()``.
        self.on_response: Callable[[], None] | None = None

    def send(self, response: InferenceResponse) -> None:
        """Deliver a response; after one with ``final`` set, further sends are ignored."""
        if self.done:
            return
        if response.final:
            self.done = True
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._deliver(response)
        else:
            self._loop.call_soon_threadsafe(self._deliver, response)

    def _deliver(self, response: InferenceResponse) -> None:
        self._items.append(response)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if response.final and self.on_done is not None:
            self.on_done()
        if self.on_response is not None:
            try:
                self.on_response()
            except Exception:  # noqa: BLE001 - the consumer's failure is not the producer's
                log.exception("response consumer failed")

    def fail(self, error: ConchError) -> None:
        self.send(InferenceResponse(error=error, final=True))

    def ready(self) -> bool:
        """Whether ``next()`` would return without waiting."""
        return bool(self._items)

    def take(self) -> InferenceResponse:
        """The next response, which must be here already (see :meth:`ready`)."""
        return self._items.popleft()

    async def next(self) -> InferenceResponse:
        items = self._items
        while not items:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return items.popleft()

    async def __aiter__(self) -> AsyncIterator[InferenceResponse]:
        while True:
            response = await self.next()
            yield response
            if response.final:
                return


@dataclass(slots=True, eq=False)
class InferenceRequest:
    """A request after decoding; after validation every input's ``data`` is a numpy array."""

    model_name: str
    model_version: int = -1  # -1: the version policy picks the latest ready version
    id: str = ""
    inputs: dict[str, InferInput] = field(default_factory=dict)
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    # Filled in by validation and scheduling.
    batch_size: int = 0
    version_label: str = ""  # the version that serves it, as the response reports it
    arrival_ns: int = field(default_factory=time.monotonic_ns)
    stream: ResponseStream | None = None
    trace: Trace | None = None  # set by the frontend when the request is sampled (conch.tracing)

    @property
    def log_prefix(self) -> str:
        """Triton's prefix for request errors: ``[request id: <id>] ``."""
        return f"[request id: {self.id or '<id_unknown>'}] "

    def add_input(self, tensor: InferInput) -> None:
        if tensor.name in self.inputs:
            raise ConchError(f"{self.log_prefix}input '{tensor.name}' already exists in request", ErrorCode.INVALID_ARG)
        self.inputs[tensor.name] = tensor

    def add_output(self, output: RequestedOutput) -> None:
        name = output.name
        for existing in self.outputs:
            if existing.name == name:
                raise ConchError(f"{self.log_prefix}output '{name}' already exists in request", ErrorCode.INVALID_ARG)
        self.outputs.append(output)

    def input_array(self, name: str) -> np.ndarray:
        data = self.inputs[name].data
        assert isinstance(data, np.ndarray), "request not validated"
        return data

    def requested_output_names(self) -> list[str]:
        return [output.name for output in self.outputs]

    def respond(self, response: InferenceResponse) -> None:
        """Send a response for this request, filling in model name, version and id."""
        if self.stream is None:
            raise RuntimeError("request has no response stream")
        response.model_name = response.model_name or self.model_name
        response.model_version = response.model_version or self.version_label
        response.id = self.id
        self.stream.send(response)

    def fail(self, message: str, code: ErrorCode = ErrorCode.INTERNAL) -> None:
        self.respond(InferenceResponse(error=ConchError(message, code), final=True))
