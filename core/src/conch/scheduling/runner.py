"""Runs batches on one model instance: on its own thread, or awaited for async instances."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from conch import tracing
from conch.backend import Backend, Batching, InstanceContext, ModelInstance
from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferenceResponse, Tensor
from conch.stats import ModelStats
from conch.tensors import config_to_protocol

log = logging.getLogger("conch.scheduling")

#: A synchronous execution that recently took less than this runs right on the event loop: handing it
#: to the instance's thread and back costs more than the execution itself. The model config parameter
#: ``inline_max_us`` (else the backend setting ``--backend-config=<backend>,inline_max_us=<n>``)
#: changes it; 0 always uses the thread.
DEFAULT_INLINE_MAX_US = 100
#: Batches with more input than this always go to the thread, however fast the last ones were.
INLINE_MAX_INPUT_BYTES = 256 * 1024
#: An instance that takes several executions at once (``ModelInstance.max_inflight``) is handed one more
#: only while its executions usually take less than this: handing one over early saves a round trip
#: (~0.1 ms), which long executions do not notice, and a request committed behind a long one could
#: have gone to another instance that frees sooner.
PIPELINE_MAX_NS = 1_000_000


class InstanceRunner:
    """One instance of a model version and the thread it executes on."""

    def __init__(self, backend: Backend, context: InstanceContext, stats: ModelStats | None = None) -> None:
        self.backend = backend
        self.stats = stats or ModelStats()
        self.context = context
        self.name = context.name
        self.instance: ModelInstance | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"conch-{context.name}")
        self._output_types = {o.name: config_to_protocol(o.data_type) for o in context.model.config.output}
        self._is_async = False
        self._concatenate = backend.batching is Batching.CONCATENATE
        self._inline_max_ns = _inline_max_us(context) * 1000
        self._recent_ns: float | None = None  # what an execution usually takes (see _timed), thread hop excluded
        self.running = 0  # executions handed to the instance and not finished
        self.depth = 1  # how many may be (ModelInstance.max_inflight of async instances), set by create()
        self._last_end = 0  # when the last overlapping run ended (see _in_turn)
        self._usual_ns: float | None = None  # what an async execution usually takes (see _in_turn)

    @property
    def concatenates(self) -> bool:
        """Whether the backend takes batches as concatenated arrays (``execute_batch``)."""
        return self._concatenate

    async def create(self) -> None:
        """Create the backend instance on the instance's own thread."""
        loop = asyncio.get_running_loop()
        self.instance = await loop.run_in_executor(self._executor, self.backend.create_instance, self.context)
        method: Callable[..., object] = (
            self.instance.execute_batch if self._concatenate else self.instance.execute
        )
        self._is_async = inspect.iscoroutinefunction(method)
        if self._is_async:
            self.depth = max(int(getattr(self.instance, "max_inflight", 1)), 1)

    @property
    def busy(self) -> bool:
        """Whether an execution is under way on the instance."""
        return self.running > 0

    def is_ready(self) -> bool:
        return self.instance is not None and self.instance.is_ready()

    async def run(self, requests: list[InferenceRequest], record: bool = True) -> None:
        """Execute a batch and deliver every request's response (errors included); ``record``: count it in
        the statistics (warmup does not)."""
        assert self.instance is not None
        self.running += 1
        start = time.monotonic_ns()
        timing = [0, 0, 0]  # compute input, infer, output (ns); runs of an async instance may overlap
        ok = True
        try:
            if self._concatenate:
                inputs, wanted = self._gather(requests)
                infer_start = time.monotonic_ns()
                outputs = await self._call(requests, self.instance.execute_batch, inputs, wanted)
                self._split(requests, outputs, start, infer_start, timing)
            else:
                begin = time.monotonic_ns()
                responses = await self._call(requests, self.instance.execute, requests)
                timing[1] = time.monotonic_ns() - begin
                self._deliver(requests, responses)
        except Exception as exc:  # noqa: BLE001 - a backend failure fails its batch, never the server
            ok = False
            self._fail(requests, exc)
        finally:
            self.running -= 1
        if self.depth > 1:
            start = self._in_turn(start, timing)
        if tracing.EVER_SAMPLED:
            self._stamp(requests, start, timing)
        if record:
            self._record(requests, start, ok, timing)

    def _in_turn(self, start: int, timing: list[int]) -> int:
        """When this run really began: an instance taking several executions at once runs them in order,
        so one handed over before the previous ended waited for it. That wait is queue time, not compute
        (statistics and traces), so the sums stay within the wall time as in Triton. Also keeps what an
        execution usually takes (see :meth:`takes_more`)."""
        previous, self._last_end = self._last_end, time.monotonic_ns()
        if previous > start:
            timing[1] = max(timing[1] - (previous - start), 0)
            start = previous
        usual = self._usual_ns
        self._usual_ns = timing[1] if usual is None else usual + (timing[1] - usual) / 8
        return start

    def takes_more(self) -> bool:
        """Whether the instance may be handed one more execution now: it takes several at once
        (``depth``), has room, and its executions are usually short (:data:`PIPELINE_MAX_NS`)."""
        usual = self._usual_ns
        return self.running < self.depth and usual is not None and usual < PIPELINE_MAX_NS

    def can_run_now(self, requests: list[InferenceRequest]) -> bool:
        """Whether :meth:`run_now` may execute ``requests``: an idle, synchronous instance whose recent
        executions were fast enough to run on the event loop, and input small enough."""
        recent = self._recent_ns
        return (
            not self.busy
            and not self._is_async
            and recent is not None
            and recent < self._inline_max_ns
            and self.instance is not None
            and _input_bytes(requests) <= INLINE_MAX_INPUT_BYTES
        )

    def run_now(self, requests: list[InferenceRequest]) -> None:
        """:meth:`run` without awaiting: the batch executes on the event loop before this returns.

        Only for batches :meth:`can_run_now` accepted; the scheduler uses it to skip the hop through its
        queue and worker task when an instance is idle.
        """
        assert self.instance is not None
        self.running += 1
        start = time.monotonic_ns()
        timing = [0, 0, 0]
        ok = True
        try:
            if self._concatenate:
                inputs, wanted = self._gather(requests)
                infer_start = time.monotonic_ns()
                outputs = self._timed(self.instance.execute_batch, (inputs, wanted))
                self._split(requests, outputs, start, infer_start, timing)
            else:
                responses = self._timed(self.instance.execute, (requests,))
                timing[1] = time.monotonic_ns() - start
                self._deliver(requests, responses)
        except Exception as exc:  # noqa: BLE001 - a backend failure fails its batch, never the server
            ok = False
            self._fail(requests, exc)
        finally:
            self.running -= 1
        if tracing.EVER_SAMPLED:
            self._stamp(requests, start, timing)
        self._record(requests, start, ok, timing)

    def respond_now(self, request: InferenceRequest) -> InferenceResponse:
        """:meth:`run_now` for one request of a concatenating backend, its response returned to the caller
        instead of sent on a stream (the HTTP fast path writes it at once). Statistics as for any run."""
        assert self.instance is not None and self._concatenate
        self.running += 1
        start = time.monotonic_ns()
        timing = [0, 0, 0]
        ok = True
        try:
            inputs = {name: tensor.data for name, tensor in request.inputs.items()}
            outputs = self._timed(self.instance.execute_batch, (inputs, [o.name for o in request.outputs]))
            infer_end = time.monotonic_ns()
            response = InferenceResponse(request.model_name, request.version_label, request.id,
                                         self._tensors(request, outputs, 0))  # fmt: skip
            timing[1], timing[2] = infer_end - start, time.monotonic_ns() - infer_end
        except Exception as exc:  # noqa: BLE001 - a backend failure fails the request, never the server
            ok = False
            response = InferenceResponse(request.model_name, request.version_label, request.id, error=self._error(exc))
        finally:
            self.running -= 1
        if tracing.EVER_SAMPLED:
            self._stamp([request], start, timing)
        self._record([request], start, ok, timing)
        return response

    def _stamp(self, requests: list[InferenceRequest], start: int, timing: list[int]) -> None:
        """The compute timestamps of the batch's traced requests (Triton's names), then REQUEST_END."""
        input_end = start + timing[0]
        output_start = input_end + timing[1]
        end = time.monotonic_ns()
        for request in requests:
            trace = request.trace
            if trace is not None:
                trace.stamp("COMPUTE_START", start)
                trace.stamp("COMPUTE_INPUT_END", input_end)
                trace.stamp("COMPUTE_OUTPUT_START", max(output_start, input_end))
                trace.stamp("COMPUTE_END", end)
                trace.stamp("REQUEST_END", end)

    def _fail(self, requests: list[InferenceRequest], exc: Exception) -> None:
        error = self._error(exc)
        for request in requests:
            request.respond(InferenceResponse(error=error))

    def _error(self, exc: Exception) -> ConchError:
        if isinstance(exc, ConchError):
            return exc
        log.exception("model instance '%s' failed to execute", self.name, exc_info=exc)
        return ConchError(str(exc) or type(exc).__name__, ErrorCode.INTERNAL)

    def _record(self, requests: list[InferenceRequest], start: int, ok: bool, timing: list[int]) -> None:
        stats = self.stats
        end = time.monotonic_ns()
        if ok:
            batch = (
                max(requests[0].batch_size, 1) if len(requests) == 1 else sum(max(r.batch_size, 1) for r in requests)
            )
            compute_input, compute_infer, compute_output = timing
            if not compute_infer:
                compute_infer = end - start - compute_input - compute_output
            stats.record_execution(batch, len(requests), compute_input, compute_infer, compute_output)
        for request in requests:
            stats.record_request(ok, end - request.arrival_ns, start - request.arrival_ns)

    async def _call(self, requests: list[InferenceRequest], function: Callable[..., object], *args: object) -> object:
        """Run the instance's method: awaited if async, inline if recently fast and small, else on its thread."""
        if self._is_async:
            return await function(*args)  # type: ignore[misc]
        recent = self._recent_ns
        if recent is not None and recent < self._inline_max_ns and _input_bytes(requests) <= INLINE_MAX_INPUT_BYTES:
            return self._timed(function, args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed, function, args)

    def _timed(self, function: Callable[..., object], args: tuple[object, ...]) -> object:
        begin = time.perf_counter_ns()
        try:
            return function(*args)
        finally:
            took = time.perf_counter_ns() - begin
            recent = self._recent_ns
            # What an execution usually takes: falls at once, rises by an eighth of the difference, so that
            # one slowed by preemption or by waiting for the GIL on the thread does not keep a fast model
            # off the event loop (a moving average did: after a few slow samples the model stayed on its
            # thread, where every sample is slow).
            self._recent_ns = took if recent is None or took < recent else recent + (took - recent) / 8

    def _deliver(self, requests: list[InferenceRequest], responses: object) -> None:
        """Hand each request its response from ``execute`` (None: the backend responded itself)."""
        if responses is None:
            return  # the backend responds through request.respond (decoupled)
        if not isinstance(responses, list) or len(responses) != len(requests):
            got = len(responses) if isinstance(responses, list) else type(responses).__name__
            raise ConchError(
                f"model instance '{self.name}' returned {got} responses for {len(requests)} requests",
                ErrorCode.INTERNAL,
            )
        for request, response in zip(requests, responses, strict=False):
            request.respond(response)

    def _gather(self, requests: list[InferenceRequest]) -> tuple[dict[str, np.ndarray], list[str]]:
        """The batch's inputs (concatenated along the batch dimension) and the outputs any request wants."""
        if len(requests) == 1:
            request = requests[0]
            return {name: tensor.data for name, tensor in request.inputs.items()}, [o.name for o in request.outputs]  # type: ignore[misc]
        names = requests[0].inputs.keys()
        inputs = {name: np.concatenate([r.input_array(name) for r in requests], axis=0) for name in names}
        wanted: list[str] = []
        for request in requests:
            for name in request.requested_output_names():
                if name not in wanted:
                    wanted.append(name)
        return inputs, wanted

    def _split(
        self, requests: list[InferenceRequest], outputs: object, begin: int, infer_start: int, timing: list[int]
    ) -> None:
        """Each request's rows of the batch's outputs, as its response; fills in the compute ``timing``."""
        infer_end = time.monotonic_ns()
        offset = 0
        for request in requests:
            request.respond(InferenceResponse(outputs=self._tensors(request, outputs, offset)))
            offset += max(request.batch_size, 1)
        timing[:] = [infer_start - begin, infer_end - infer_start, time.monotonic_ns() - infer_end]

    def _tensors(self, request: InferenceRequest, outputs: object, offset: int) -> list[Tensor]:
        """The request's rows (from ``offset``) of each output it asked for, from a batch's outputs."""
        if not isinstance(outputs, dict):
            raise ConchError(
                f"model instance '{self.name}' returned {type(outputs).__name__}, expected a dict of outputs",
                ErrorCode.INTERNAL,
            )
        types = self._output_types
        rows = max(request.batch_size, 1)
        batched = request.batch_size > 0
        tensors = []
        for output in request.outputs:
            name = output.name
            array = outputs[name]
            if batched and not (offset == 0 and array.ndim and array.shape[0] == rows):
                array = array[offset : offset + rows]  # a lone request's rows are the whole array
            tensors.append(Tensor(name, types.get(name, "FP32"), array))
        return tensors

    async def unload(self) -> None:
        """Release the instance on its own thread, then end the thread."""
        instance, self.instance = self.instance, None
        if instance is not None:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._executor, instance.unload)
            except Exception:  # noqa: BLE001
                log.exception("model instance '%s' failed to unload", self.name)
        self._executor.shutdown(wait=False)


def _inline_max_us(context: InstanceContext) -> int:
    model = context.model
    default = model.backend_settings.get("inline_max_us", str(DEFAULT_INLINE_MAX_US))
    text = model.parameter("inline_max_us", default) or ""
    try:
        value = int(text.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ConchError(
            f"model '{model.name}': parameter 'inline_max_us' must be a non-negative integer, got '{text}'",
            ErrorCode.INVALID_ARG,
        )
    return value


def _input_bytes(requests: list[InferenceRequest]) -> int:
    total = 0
    for request in requests:
        for tensor in request.inputs.values():
            data = tensor.data
            total += data.nbytes if isinstance(data, np.ndarray) else 0
    return total
