"""Triton's sequence batcher: every request of a sequence (one correlation ID) goes to the same instance,
in order, with the control tensors the config asks for.

A sequence takes a slot of one instance with its START request and keeps it until its END request has
run, or until it has been idle for ``max_sequence_idle_microseconds`` (default 1 s). Sequences beyond
the free slots wait in a backlog, in arrival order. Each instance forms batches of at most one request
per sequence bound to it (oldest first), so the requests of a sequence never overtake each other.
Slots per instance: ``max_batch_size`` (at least 1) with the ``direct`` strategy, and
``max_candidate_sequences`` with ``oldest``. Unlike Triton's ``direct`` strategy, batches are not padded
with READY=0 requests for empty slots, and a sequence is never force-ended while a request of it runs
(its idle time counts from that request's end).

Implicit state (``sequence_batching.state``): the batcher adds each state input to a request (the
initial state on START) and asks for the state output, which it keeps for the sequence's next request
and leaves out of the response unless the client asked for it. It works for any backend, since to the
backend the state is one more input and output.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from conch._proto.model_config_pb2 import ModelSequenceBatching
from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferenceResponse, InferInput, RequestedOutput, ResponseStream
from conch.scheduling.base import Scheduler
from conch.scheduling.runner import InstanceRunner
from conch.tensors import config_to_protocol, datatype

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig

log = logging.getLogger("conch.scheduling")

DEFAULT_IDLE_US = 1_000_000
_Control = ModelSequenceBatching.Control


@dataclass(frozen=True, slots=True)
class ControlInput:
    """A tensor the batcher adds to each request: START, END, READY (false/true values) or CORRID."""

    name: str
    kind: int
    datatype: str
    false_true: tuple[Any, Any] = (0, 1)


def control_inputs(config: ModelConfig) -> list[ControlInput]:
    """The control tensors of ``sequence_batching.control_input``, in config order."""
    controls: list[ControlInput] = []
    for control_input in config.sequence_batching.control_input:
        for control in control_input.control:
            name, kind = control_input.name, int(control.kind)
            if kind == _Control.CONTROL_SEQUENCE_CORRID:
                controls.append(ControlInput(name, kind, config_to_protocol(control.data_type)))
            elif control.int32_false_true:
                controls.append(ControlInput(name, kind, "INT32", tuple(control.int32_false_true)))
            elif control.fp32_false_true:
                controls.append(ControlInput(name, kind, "FP32", tuple(control.fp32_false_true)))
            else:
                values = tuple(control.bool_false_true) or (False, True)
                controls.append(ControlInput(name, kind, "BOOL", values))
    return controls


@dataclass(frozen=True, slots=True)
class StateSpec:
    """Implicit state: ``output_name`` of one request is ``input_name`` of the sequence's next request."""

    input_name: str
    output_name: str
    datatype: str
    dims: tuple[int, ...]
    initial: np.ndarray | None  # the START request's input state (None: zeros, variable dims as 1)

    def start_value(self) -> np.ndarray:
        if self.initial is not None:
            return self.initial
        return np.zeros([d if d > 0 else 1 for d in self.dims], dtype=datatype(self.datatype).numpy)


def state_specs(config: ModelConfig, model_dir: Path | None) -> list[StateSpec]:
    """``sequence_batching.state`` with each initial state read (``zero_data`` or ``initial_state/<data_file>``)."""
    specs: list[StateSpec] = []
    for state in config.sequence_batching.state:
        kind = config_to_protocol(state.data_type)
        initial: np.ndarray | None = None
        for start in state.initial_state[:1]:
            dims = [int(d) for d in start.dims]
            dtype = datatype(config_to_protocol(start.data_type) if start.data_type else kind).numpy
            if start.WhichOneof("state_data") == "data_file":
                if model_dir is None:
                    raise ConchError(f"model '{config.name}': no folder to read initial state '{start.name}' from")
                path = model_dir / "initial_state" / start.data_file
                try:
                    raw = path.read_bytes()
                except OSError as exc:
                    raise ConchError(
                        f"model '{config.name}': failed to read initial state '{start.name}' from {path}: {exc.strerror}",
                        ErrorCode.INVALID_ARG,
                    ) from None
                initial = np.frombuffer(raw, dtype=dtype).reshape(dims)
            else:
                initial = np.zeros(dims, dtype=dtype)
        specs.append(StateSpec(state.input_name, state.output_name, kind, tuple(int(d) for d in state.dims), initial))
    return specs


@dataclass(eq=False)
class _Sequence:
    correlation_id: int | str
    requests: deque[InferenceRequest] = field(default_factory=deque)
    lane: _Lane | None = None
    last_ns: int = field(default_factory=time.monotonic_ns)
    running: bool = False
    state: dict[str, np.ndarray] = field(default_factory=dict)  # implicit state by input name


class _StateStream(ResponseStream):
    """Stands in for a request's stream: takes its output states out of each response (kept for the
    sequence's next request) and passes the rest on. Cancellation is the client's stream's."""

    __slots__ = ("outer", "sequence", "specs", "hidden", "batched")

    def __init__(
        self, outer: ResponseStream, sequence: _Sequence, specs: list[StateSpec], hidden: set[str], batched: bool
    ) -> None:
        # The base class's queue is not used: every response goes straight on to ``outer``.
        self.outer = outer
        self.sequence = sequence
        self.specs = specs
        self.hidden = hidden
        self.batched = batched  # states travel with the request's batch dimension, and are kept without it

    @property
    def cancelled(self) -> bool:
        return self.outer.cancelled

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        self.outer.cancelled = value

    def send(self, response: InferenceResponse) -> None:
        if response.outputs:
            produced = {tensor.name: tensor for tensor in response.outputs}
            for spec in self.specs:
                tensor = produced.get(spec.output_name)
                if tensor is not None:
                    data = np.array(tensor.data)  # its own copy, not a view of the batch's output
                    self.sequence.state[spec.input_name] = data[0] if self.batched and data.ndim else data
            response.outputs = [t for t in response.outputs if t.name not in self.hidden]
        self.outer.send(response)


@dataclass(eq=False)
class _Lane:
    """One instance, its slots and the sequences bound to it."""

    runner: InstanceRunner
    slots: int
    sequences: list[_Sequence] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def _flag(request: InferenceRequest, name: str) -> bool:
    return bool(request.parameters.get(name))


def _expired(request: InferenceRequest, now_ns: int) -> bool:
    """Whether the request's own ``timeout`` (microseconds, 0: none) has passed."""
    try:
        timeout_us = int(request.parameters.get("timeout", 0) or 0)
    except (TypeError, ValueError):
        return False
    return timeout_us > 0 and now_ns - request.arrival_ns > timeout_us * 1000


class SequenceBatcher(Scheduler):
    """Sequence slots, backlog and per-instance dispatch for one model version."""

    def __init__(self, runners: list[InstanceRunner], config: ModelConfig, model_dir: Path | None = None) -> None:
        sequencing = config.sequence_batching
        self.states = state_specs(config, model_dir)
        self.model = config.name
        self.batch_dim = config.max_batch_size > 0
        self.max_batch = max(int(config.max_batch_size), 1)
        self.idle_ns = int(sequencing.max_sequence_idle_microseconds or DEFAULT_IDLE_US) * 1000
        self.controls = control_inputs(config)
        if sequencing.WhichOneof("strategy_choice") == "oldest":
            slots = max(int(sequencing.oldest.max_candidate_sequences), 1)  # per instance, as in Triton
        else:
            slots = self.max_batch
        self.lanes = [_Lane(runner, slots) for runner in runners]
        self.integer_ids = any(
            c.kind == _Control.CONTROL_SEQUENCE_CORRID and c.datatype != "BYTES" for c in self.controls
        )
        self.active: dict[int | str, _Sequence] = {}
        self.backlog: deque[_Sequence] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = False

    @property
    def pending(self) -> int:
        return sum(len(s.requests) for s in self.active.values()) + sum(len(s.requests) for s in self.backlog)

    # -- requests ------------------------------------------------------------------------------------

    def enqueue(self, request: InferenceRequest) -> None:
        if not self._accepting:
            raise ConchError("model is not accepting requests", ErrorCode.UNAVAILABLE)
        if request.batch_size > 1:
            raise ConchError(
                f"inference request to model '{self.model}' must specify batch-size 1 due to requirements of "
                "sequence batcher",
                ErrorCode.INVALID_ARG,
            )
        correlation_id = request.parameters.get("sequence_id", 0)
        if not correlation_id:
            raise ConchError(
                f"inference request to model '{self.model}' must specify a non-zero or non-empty correlation ID",
                ErrorCode.INVALID_ARG,
            )
        if isinstance(correlation_id, str) and self.integer_ids:
            if not correlation_id.isdigit() or int(correlation_id) >= 1 << 64:
                raise ConchError(
                    f"inference request for sequence {correlation_id} to model '{self.model}': the model's CORRID "
                    "control input is an integer, so a string correlation ID must be a decimal number below 2^64",
                    ErrorCode.INVALID_ARG,
                )
        sequence = self.active.get(correlation_id) or next(
            (s for s in self.backlog if s.correlation_id == correlation_id), None
        )
        if sequence is not None and _flag(request, "sequence_start") and (sequence.requests or sequence.running):
            log.warning(
                "sequence %s for model '%s' has a conflict. The previous sequence did not end before this sequence "
                "start. Previous sequence will be terminated early.", correlation_id, self.model,
            )  # fmt: skip
        if sequence is None:
            if not _flag(request, "sequence_start"):
                raise ConchError(
                    f"inference request for sequence {correlation_id} to model '{self.model}' must specify the "
                    "START flag on the first request of the sequence",
                    ErrorCode.INVALID_ARG,
                )
            sequence = _Sequence(correlation_id)
            self._admit(sequence)
        sequence.requests.append(request)
        sequence.last_ns = time.monotonic_ns()
        if sequence.lane is not None:
            sequence.lane.wake.set()

    def _admit(self, sequence: _Sequence) -> None:
        """Give ``sequence`` a slot on the least loaded instance with one free, else put it in the backlog."""
        free = [lane for lane in self.lanes if len(lane.sequences) < lane.slots]
        if not free:
            self.backlog.append(sequence)
            return
        lane = min(free, key=lambda candidate: len(candidate.sequences))
        sequence.lane = lane
        lane.sequences.append(sequence)
        self.active[sequence.correlation_id] = sequence
        lane.wake.set()

    def _release(self, sequence: _Sequence) -> None:
        """Free the sequence's slot; the oldest sequence of the backlog takes it."""
        lane = sequence.lane
        if lane is None:
            return
        lane.sequences.remove(sequence)
        if self.active.get(sequence.correlation_id) is sequence:
            del self.active[sequence.correlation_id]
        sequence.lane = None
        if self.backlog:
            self._admit(self.backlog.popleft())

    # -- dispatch ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._accepting = True
        self._tasks = [asyncio.create_task(self._work(lane)) for lane in self.lanes]
        self._tasks.append(asyncio.create_task(self._reap()))

    async def _work(self, lane: _Lane) -> None:
        while True:
            batch: list[InferenceRequest] = []
            members: list[_Sequence] = []
            ended: list[_Sequence] = []
            for sequence in sorted(lane.sequences, key=lambda s: s.requests[0].arrival_ns if s.requests else 0):
                while sequence.requests and len(batch) < self.max_batch:
                    request = sequence.requests.popleft()
                    if request.stream is not None and request.stream.cancelled:
                        continue  # dropped: its client went away
                    try:
                        self._add_controls(request, sequence.correlation_id)
                        if self.states:
                            self._add_states(request, sequence)
                    except Exception as exc:  # noqa: BLE001 - one bad request never stops the instance's lane
                        request.fail(f"failed to prepare the sequence request for model '{self.model}': {exc}")
                        continue
                    batch.append(request)
                    members.append(sequence)
                    if _flag(request, "sequence_end"):
                        ended.append(sequence)
                    break  # one request per sequence per batch: its next one waits for this one
            if not batch:
                if not self._accepting and not any(s.requests for s in lane.sequences):
                    return
                lane.wake.clear()
                await lane.wake.wait()
                continue
            for sequence in members:
                sequence.running = True
            try:
                await lane.runner.run(batch)
            finally:
                now = time.monotonic_ns()
                for sequence in members:
                    sequence.running = False
                    sequence.last_ns = now
                for sequence in ended:
                    if not sequence.requests and sequence.lane is lane:
                        self._release(sequence)

    def _add_controls(self, request: InferenceRequest, correlation_id: int | str) -> None:
        shape = [1, 1] if self.batch_dim else [1]
        for control in self.controls:
            if control.kind == _Control.CONTROL_SEQUENCE_CORRID:
                value: Any = int(correlation_id) if control.datatype != "BYTES" else correlation_id
            else:
                if control.kind == _Control.CONTROL_SEQUENCE_START:
                    flag = _flag(request, "sequence_start")
                elif control.kind == _Control.CONTROL_SEQUENCE_END:
                    flag = _flag(request, "sequence_end")
                else:
                    flag = control.kind == _Control.CONTROL_SEQUENCE_READY
                value = control.false_true[1] if flag else control.false_true[0]
            dtype = datatype(control.datatype).numpy
            if control.datatype == "BYTES":
                array = np.array([str(value).encode()], dtype=object).reshape(shape)
            else:
                array = np.array([value], dtype=dtype).reshape(shape)
            request.inputs[control.name] = InferInput(control.name, control.datatype, shape, array)

    def _add_states(self, request: InferenceRequest, sequence: _Sequence) -> None:
        """The sequence's state as the request's input states; its output states asked for and kept back."""
        start = _flag(request, "sequence_start")
        wanted = set(request.requested_output_names())
        hidden: set[str] = set()
        for spec in self.states:
            value = spec.start_value() if start or spec.input_name not in sequence.state else sequence.state[spec.input_name]
            if self.batch_dim:
                value = value.reshape((1, *value.shape))
            request.inputs[spec.input_name] = InferInput(spec.input_name, spec.datatype, list(value.shape), value)
            if spec.output_name not in wanted:
                request.outputs.append(RequestedOutput(spec.output_name))
                hidden.add(spec.output_name)
        if request.stream is not None:
            request.stream = _StateStream(request.stream, sequence, self.states, hidden, self.batch_dim)

    async def _reap(self) -> None:
        """End sequences idle for longer than ``max_sequence_idle_microseconds`` (their slots go to the backlog)
        and fail backlogged sequences whose request ``timeout`` passed."""
        period = min(max(self.idle_ns / 10e9, 0.005), 0.1)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic_ns()
            for sequence in list(self.active.values()):
                if not sequence.requests and not sequence.running and now - sequence.last_ns > self.idle_ns:
                    log.debug("Reaper: CORRID %s: max sequence idle exceeded (model '%s')",
                              sequence.correlation_id, self.model)  # fmt: skip
                    self._release(sequence)
            for sequence in [s for s in self.backlog if any(_expired(r, now) for r in s.requests)]:
                self.backlog.remove(sequence)
                for request in sequence.requests:
                    request.fail("timeout of the corresponding sequence has been expired", ErrorCode.UNAVAILABLE)

    async def stop(self) -> None:
        """Let every queued request run, then end the workers."""
        self._accepting = False
        for lane in self.lanes:
            lane.wake.set()
        workers, reaper = self._tasks[:-1], self._tasks[-1:]
        for sequence in list(self.backlog):  # sequences that never got a slot cannot run now
            for request in sequence.requests:
                request.fail("model is being unloaded", ErrorCode.UNAVAILABLE)
        self.backlog.clear()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*workers)
        for task in reaper:
            task.cancel()
        self._tasks = []

