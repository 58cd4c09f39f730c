"""Triton's ensemble scheduler: a request flows through composing models as the steps' maps say.

Each ensemble request runs as one task: a step is submitted to its model (through that model's own
scheduler, so batching and instances apply) as soon as every ensemble tensor it reads is there, steps
that are ready together run at the same time, and only the steps needed for the outputs the client
asked for run at all (Triton prunes the same way). The first error of a step is the request's error.

A decoupled step (0..N responses) makes the ensemble decoupled: each of its responses runs the steps
that depend on it once more, in order, and every such run that completes is a response of the
ensemble; a flag-only final response ends the request. (Triton forbids a step to read tensors that
come from different decoupled steps, so a run after a response needs nothing but that response.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferenceResponse, InferInput, RequestedOutput, ResponseStream, Tensor
from conch.scheduling.base import Scheduler

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig
    from conch.stats import ModelStats

log = logging.getLogger("conch.ensemble")

#: Finds the composing model version a step names (``name``, ``version`` or -1): raises ConchError.
Lookup = Callable[[str, int], Any]


@dataclass(frozen=True, slots=True)
class EnsembleStep:
    """One step: the model it calls and how its inputs and outputs map to ensemble tensors."""

    index: int
    model_name: str
    model_version: int  # -1: the latest ready version
    inputs: dict[str, str]  # the step model's input -> the ensemble tensor it reads
    outputs: dict[str, str]  # the step model's output -> the ensemble tensor it writes
    decoupled: bool = False  # its model answers 0..N times


class EnsemblePlan:
    """The steps of an ensemble config and which step writes each tensor."""

    def __init__(self, config: ModelConfig, decoupled_models: frozenset[str] | set[str] = frozenset()) -> None:
        self.name = config.name
        self.steps = [
            EnsembleStep(
                index,
                step.model_name,
                int(step.model_version),
                dict(step.input_map),
                dict(step.output_map),
                step.model_name in decoupled_models,
            )
            for index, step in enumerate(config.ensemble_scheduling.step)
        ]
        self.decoupled = any(step.decoupled for step in self.steps)
        self.inputs = frozenset(inp.name for inp in config.input)
        self.writer = {tensor: step for step in self.steps for tensor in step.outputs.values()}
        self.after = {step.index: self._after(step) for step in self.steps if step.decoupled}

    def _after(self, step: EnsembleStep) -> frozenset[int]:
        """The steps that read, directly or not, what ``step`` writes."""
        tensors = set(step.outputs.values())
        found: set[int] = set()
        changed = True
        while changed:
            changed = False
            for other in self.steps:
                if other.index not in found and tensors.intersection(other.inputs.values()):
                    found.add(other.index)
                    tensors.update(other.outputs.values())
                    changed = True
        return frozenset(found)

    def needed(self, outputs: list[str]) -> list[EnsembleStep]:
        """The steps that ``outputs`` depend on, in config order."""
        wanted: set[int] = set()
        todo = list(outputs)
        while todo:
            step = self.writer.get(todo.pop())
            if step is not None and step.index not in wanted:
                wanted.add(step.index)
                todo.extend(step.inputs.values())
        return [step for step in self.steps if step.index in wanted]


class EnsembleScheduler(Scheduler):
    """Runs each request of an ensemble through its steps; nothing is queued here."""

    def __init__(self, plan: EnsemblePlan, lookup: Lookup, stats: ModelStats) -> None:
        self.plan = plan
        self.lookup = lookup
        self.stats = stats
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = False

    @property
    def pending(self) -> int:
        return 0

    async def start(self) -> None:
        self._accepting = True

    async def stop(self) -> None:
        """Let every ensemble request in flight finish."""
        self._accepting = False
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def enqueue(self, request: InferenceRequest) -> None:
        if not self._accepting:
            raise ConchError("model is not accepting requests", ErrorCode.UNAVAILABLE)
        task = asyncio.get_running_loop().create_task(self._run(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, request: InferenceRequest) -> None:
        start = time.monotonic_ns()
        wanted = request.requested_output_names()
        values = {name: Tensor(name, inp.datatype, inp.data) for name, inp in request.inputs.items()}  # type: ignore[arg-type]
        answered = False
        try:
            async with contextlib.aclosing(self._graph(request, values, self.plan.needed(wanted))) as runs:
                async for run in runs:
                    outputs = [Tensor(name, run[name].datatype, run[name].data) for name in wanted if name in run]
                    if self.plan.decoupled:
                        if outputs:
                            request.respond(InferenceResponse(outputs=outputs, final=False))
                    else:
                        self._finish(request, start, InferenceResponse(outputs=outputs))
                        answered = True
            if self.plan.decoupled:
                self._finish(request, start, InferenceResponse(final=True))
            elif not answered:
                raise ConchError(f"in ensemble '{self.plan.name}', no response was produced", ErrorCode.INTERNAL)
        except ConchError as exc:
            self._finish(request, start, InferenceResponse(error=exc))
        except Exception as exc:  # noqa: BLE001 - one request's failure never stops the ensemble
            log.exception("ensemble '%s' failed", self.plan.name)
            self._finish(request, start, InferenceResponse(error=ConchError(str(exc) or type(exc).__name__)))

    def _finish(self, request: InferenceRequest, start: int, response: InferenceResponse) -> None:
        took = time.monotonic_ns() - start
        ok = response.error is None
        if ok:
            self.stats.record_execution(max(request.batch_size, 1), 1, 0, took, 0)
        self.stats.record_request(ok, time.monotonic_ns() - request.arrival_ns, start - request.arrival_ns)
        request.respond(response)

    async def _graph(
        self, request: InferenceRequest, values: dict[str, Tensor], steps: list[EnsembleStep]
    ) -> AsyncGenerator[dict[str, Tensor], None]:
        """Run ``steps`` over ``values``; yield the tensors of every completed run: one, or one per response
        of each decoupled step (the steps after it run again for each, in order)."""
        absent = self.plan.inputs - values.keys()  # optional ensemble inputs the client left out
        todo = list(steps)
        running: dict[asyncio.Task[dict[str, Tensor]], ResponseStream] = {}
        forks: list[tuple[EnsembleStep, ResponseStream]] = []  # decoupled steps submitted, answers unread
        loop = asyncio.get_running_loop()
        alone: ResponseStream | None = None  # the stream of a step awaited directly (the only one to run)
        try:
            while True:
                ready = [s for s in todo if all(t in values or t in absent for t in s.inputs.values())]
                if len(ready) == 1 and not running and not ready[0].decoupled:
                    # One step can run and nothing else is: await it here, without a task (a chain of
                    # steps, the common shape, runs without one).
                    step = ready[0]
                    todo.remove(step)
                    alone = ResponseStream()
                    values.update(await self._step(request, step, values, alone))
                    alone = None
                    self._check_cancelled(request)
                    continue
                for step in ready:
                    todo.remove(step)
                    stream = ResponseStream()
                    if step.decoupled:
                        self._submit(request, step, values, stream)
                        forks.append((step, stream))
                    else:
                        running[loop.create_task(self._step(request, step, values, stream))] = stream
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                self._check_cancelled(request)
                for task in done:
                    running.pop(task)
                    values.update(task.result())  # a step's error ends the request here
            later = set().union(*(self.plan.after[step.index] for step, _ in forks)) if forks else set()
            stuck = [s for s in todo if s.index not in later]
            if stuck:
                missing = sorted({t for s in stuck for t in s.inputs.values()} - values.keys() - absent)
                raise ConchError(
                    f"in ensemble '{self.plan.name}', ensemble tensors {', '.join(missing)} were never produced",
                    ErrorCode.INTERNAL,
                )
            if not forks:
                yield values
                return
            for step, stream in forks:
                after = [s for s in todo if s.index in self.plan.after[step.index]]
                async for response in stream:
                    if response.error is not None:
                        raise self._in_ensemble(response.error)
                    self._check_cancelled(request)
                    if not response.outputs:
                        continue  # the final flag alone
                    run = dict(values)
                    run.update(self._written(step, response))
                    async with contextlib.aclosing(self._graph(request, run, after)) as runs:
                        async for completed in runs:
                            yield completed
        finally:
            if alone is not None:
                alone.cancelled = True
            for stream in [*running.values(), *(stream for _, stream in forks)]:  # error or cancellation: drop the rest
                stream.cancelled = True
            for task in running:
                task.cancel()
            if running:
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*running, return_exceptions=True)

    @staticmethod
    def _check_cancelled(request: InferenceRequest) -> None:
        if request.stream is not None and request.stream.cancelled:
            raise ConchError("Request was cancelled", ErrorCode.CANCELLED)

    async def _step(
        self, request: InferenceRequest, step: EnsembleStep, values: dict[str, Tensor], stream: ResponseStream
    ) -> dict[str, Tensor]:
        """Run one (non-decoupled) step; the ensemble tensors its response writes."""
        self._submit(request, step, values, stream)
        response = await stream.next()
        if response.error is not None:
            raise self._in_ensemble(response.error)
        return self._written(step, response)

    def _in_ensemble(self, error: ConchError) -> ConchError:
        """A step's error as the ensemble's: Triton's ``in ensemble '<name>', `` before the step's message."""
        return ConchError(f"in ensemble '{self.plan.name}', {error.message}", error.code)

    def _submit(self, request: InferenceRequest, step: EnsembleStep, values: dict[str, Tensor], stream: ResponseStream) -> None:
        """Submit a step's request to its model (through that model's scheduler); answers go to ``stream``."""
        try:
            model = self.lookup(step.model_name, step.model_version)
        except ConchError as exc:
            raise self._in_ensemble(exc) from None
        inner = InferenceRequest(
            model_name=step.model_name,
            model_version=step.model_version,
            id=request.id,
            parameters=dict(request.parameters),
        )
        for model_input, tensor_name in step.inputs.items():
            tensor = values.get(tensor_name)
            if tensor is not None:
                inner.inputs[model_input] = InferInput(model_input, tensor.datatype, list(tensor.data.shape), tensor.data)
        inner.outputs = [RequestedOutput(name) for name in step.outputs]
        inner.stream = stream
        try:
            model.submit(inner)
        except ConchError as exc:
            raise self._in_ensemble(exc) from None

    def _written(self, step: EnsembleStep, response: InferenceResponse) -> dict[str, Tensor]:
        """The ensemble tensors a step's response writes (every output the step maps must be there)."""
        produced = {tensor.name: tensor for tensor in response.outputs}
        written: dict[str, Tensor] = {}
        for output, tensor_name in step.outputs.items():
            tensor = produced.get(output)
            if tensor is None:
                raise ConchError(
                    f"in ensemble '{self.plan.name}', model '{step.model_name}' returned no output '{output}'",
                    ErrorCode.INTERNAL,
                )
            written[tensor_name] = Tensor(tensor_name, tensor.datatype, tensor.data)
        return written
