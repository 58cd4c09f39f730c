"""Triton's ensemble scheduler: a request flows through composing models as the steps' maps say.

Each ensemble request runs as one task: a step is submitted to its model (through that model's own
scheduler, so batching and instances apply) as soon as every ensemble tensor it reads is there, steps
that are ready together run at the same time, and only the steps needed for the outputs the client
asked for run at all (Triton prunes the same way). The first error of a step is the request's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
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


class EnsemblePlan:
    """The steps of an ensemble config and which step writes each tensor."""

    def __init__(self, config: ModelConfig) -> None:
        self.name = config.name
        self.steps = [
            EnsembleStep(index, step.model_name, int(step.model_version), dict(step.input_map), dict(step.output_map))
            for index, step in enumerate(config.ensemble_scheduling.step)
        ]
        self.inputs = frozenset(inp.name for inp in config.input)
        self.writer = {tensor: step for step in self.steps for tensor in step.outputs.values()}

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
        try:
            outputs = await self._flow(request)
        except ConchError as exc:
            self._finish(request, start, InferenceResponse(error=exc))
        except Exception as exc:  # noqa: BLE001 - one request's failure never stops the ensemble
            log.exception("ensemble '%s' failed", self.plan.name)
            self._finish(request, start, InferenceResponse(error=ConchError(str(exc) or type(exc).__name__)))
        else:
            self._finish(request, start, InferenceResponse(outputs=outputs))

    def _finish(self, request: InferenceRequest, start: int, response: InferenceResponse) -> None:
        took = time.monotonic_ns() - start
        ok = response.error is None
        if ok:
            self.stats.record_execution(max(request.batch_size, 1), 1, 0, took, 0)
        self.stats.record_request(ok, time.monotonic_ns() - request.arrival_ns, start - request.arrival_ns)
        request.respond(response)

    async def _flow(self, request: InferenceRequest) -> list[Tensor]:
        """Run the needed steps as their inputs become available; the requested outputs."""
        values = {name: Tensor(name, inp.datatype, inp.data) for name, inp in request.inputs.items()}  # type: ignore[arg-type]
        absent = self.plan.inputs - values.keys()  # optional ensemble inputs the client left out
        wanted = request.requested_output_names()
        todo = self.plan.needed(wanted)
        running: dict[asyncio.Task[dict[str, Tensor]], ResponseStream] = {}
        try:
            while todo or running:
                for step in [s for s in todo if all(t in values or t in absent for t in s.inputs.values())]:
                    todo.remove(step)
                    stream = ResponseStream()
                    task = asyncio.get_running_loop().create_task(self._step(request, step, values, stream))
                    running[task] = stream
                if not running:
                    missing = sorted({t for s in todo for t in s.inputs.values()} - values.keys() - absent)
                    raise ConchError(
                        f"in ensemble '{self.plan.name}', ensemble tensors {', '.join(missing)} were never produced",
                        ErrorCode.INTERNAL,
                    )
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                if request.stream is not None and request.stream.cancelled:
                    raise ConchError("Request was cancelled", ErrorCode.CANCELLED)
                for task in done:
                    running.pop(task)
                    values.update(task.result())  # a step's error ends the request here
        finally:
            for task, stream in running.items():  # after an error or a cancellation: drop the rest
                stream.cancelled = True
                task.cancel()
            if running:
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*running, return_exceptions=True)
        return [Tensor(name, values[name].datatype, values[name].data) for name in wanted if name in values]

    async def _step(
        self, request: InferenceRequest, step: EnsembleStep, values: dict[str, Tensor], stream: ResponseStream
    ) -> dict[str, Tensor]:
        """Submit one step to its model; the ensemble tensors its response writes."""
        model = self.lookup(step.model_name, step.model_version)
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
        model.submit(inner)
        response = await stream.next()
        if response.error is not None:
            raise response.error
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
