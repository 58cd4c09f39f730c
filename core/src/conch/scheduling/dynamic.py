"""Triton's dynamic batcher: requests queued per model version are combined into batches.

One dispatcher task per model version forms a batch whenever an instance is free: the largest
preferred size that can be formed goes at once; otherwise it waits for more requests, but never longer
than ``max_queue_delay_microseconds`` after the oldest request of the pending batch arrived. Requests
whose variable-size inputs differ in shape never share a batch unless the input allows ragged batches.
At ``--log-verbose=1`` (or ``log_verbose_level`` 1 set through the logging extension) every batch is
logged with its size and the reason it closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest
from conch.scheduling.base import Scheduler
from conch.scheduling.ordering import ResponseOrderer
from conch.scheduling.queues import Entry, PriorityQueue
from conch.scheduling.runner import InstanceRunner

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig
    from conch.stats import ModelStats

log = logging.getLogger("conch.scheduling")

#: Model config parameter: a request waiting longer than this (ms) goes ahead of every priority level.
AGING_PARAMETER = "conch_priority_aging_ms"
DEFAULT_AGING_MS = 1000


def _env_count(name: str) -> int:
    try:
        return max(int(os.environ.get(name, "0") or 0), 0)
    except ValueError:
        return 0


class DynamicBatcher(Scheduler):
    """Queue, batch formation and dispatch to free instances for one model version."""

    def __init__(
        self,
        runners: list[InstanceRunner],
        config: ModelConfig,
        stats: ModelStats,
        concatenate: bool = False,
    ) -> None:
        batching = config.dynamic_batching
        self.runners = runners
        self.stats = stats
        self.model = f"'{config.name}'"
        self.max_batch = max(int(config.max_batch_size), 1)
        self.batch_dim = config.max_batch_size > 0
        self.preferred = sorted({int(s) for s in batching.preferred_batch_size if 0 < s <= self.max_batch})
        self.max_preferred = self.preferred[-1] if self.preferred else self.max_batch
        self.delay_ns = int(batching.max_queue_delay_microseconds) * 1000
        self.preserve_ordering = bool(batching.preserve_ordering)
        aging_ms = DEFAULT_AGING_MS
        if AGING_PARAMETER in config.parameters:
            with contextlib.suppress(ValueError):
                aging_ms = int(config.parameters[AGING_PARAMETER].string_value)
        self.queue = PriorityQueue(batching, aging_ns=max(aging_ms, 0) * 1_000_000)
        # Inputs whose shape must match across a batch: variable dims, unless ragged batching is allowed
        # (a concatenating backend cannot take ragged inputs, so there every variable input must match).
        self._checked = [
            i.name for i in config.input if any(d < 0 for d in i.dims) and (concatenate or not i.allow_ragged_batch)
        ]
        self._has_optional = any(i.optional for i in config.input)
        self._delay_count = _env_count("TRITONSERVER_DELAY_SCHEDULER")
        self._backlog_count = _env_count("TRITONSERVER_BACKLOG_DELAY_SCHEDULER")
        self._free = set(range(len(runners)))
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._orderer = ResponseOrderer() if self.preserve_ordering else None
        self._kicked = False

    @property
    def pending(self) -> int:
        return len(self.queue)

    # -- queueing -----------------------------------------------------------------------------

    def _shape_key(self, request: InferenceRequest) -> Any:
        inputs = request.inputs
        start = 1 if self.batch_dim else 0
        key = tuple(tuple(inputs[n].shape[start:]) if n in inputs else None for n in self._checked)
        if self._has_optional:
            return (key, frozenset(inputs))
        return key

    def enqueue(self, request: InferenceRequest) -> None:
        if self._task is None or self._stopping:
            raise ConchError("model is not accepting requests", ErrorCode.UNAVAILABLE)
        now = time.monotonic_ns()
        try:
            entry = self.queue.push(request, max(request.batch_size, 1), self._shape_key(request), now)
        except ConchError:
            self.stats.record_failure("REJECTED", now - request.arrival_ns)
            raise
        # With every instance busy there is nothing to launch: the batch forms when one frees (it wakes
        # the dispatcher). Only timeouts and priority aging need a look at the queue sooner.
        if self._free or entry.deadline_ns or self.queue.level_count:
            # One look at the queue once this loop turn's reads are done (call_soon runs after the I/O
            # callbacks of the same poll): requests read in the same turn join the batch. Waking the
            # dispatcher task instead costs two more loop turns (measured side by side: c=1 ONNX p50
            # 212 → 187 µs, c=16 level or better).
            if not self._kicked:
                self._kicked = True
                asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        self._kicked = False
        if self._task is not None and not self._stopping:
            self._step()

    # -- the dispatcher -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._delay_count:
            log.debug("Delaying batcher for %s until %d queued requests...", self.model, self._delay_count)
        self._task = asyncio.create_task(self._dispatch())

    def _wake_at(self, at_ns: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(at_ns - time.monotonic_ns(), 0) / 1e9
        self._timer = asyncio.get_running_loop().call_later(delay, self._wake.set)

    async def _dispatch(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(0)  # requests that arrived in the same loop turn join this batch
            self._wake.clear()
            if not self._step() and self._stopping and not len(self.queue):
                return

    def _step(self) -> bool:
        """Form and launch batches while possible; returns whether anything is left to do."""
        while True:
            now = time.monotonic_ns()
            rejected, cancelled = self.queue.apply_policies(now)
            for entry in rejected:
                self.stats.record_failure("REJECTED", now - entry.request.arrival_ns)
                entry.request.fail("Request timeout expired", ErrorCode.UNAVAILABLE)
            for entry in cancelled:
                self.stats.record_failure("CANCELED", now - entry.request.arrival_ns)
            if not len(self.queue):
                return bool(self._running)
            if not self._stopping and self._held():
                self._wake_at(now + 10_000_000)
                return True
            if not self._free:
                return True
            count, wait_ns, reason = self._form(now)
            if not count:
                soonest = self.queue.next_deadline()
                at = now + wait_ns if wait_ns else 0
                if soonest and (not at or soonest < at):
                    at = soonest
                if at:
                    self._wake_at(at)
                return True
            self._launch(self.queue.take(count), reason)

    def _held(self) -> bool:
        """The test hooks: hold batches until enough requests are queued."""
        if self._delay_count:
            if len(self.queue) < self._delay_count:
                return True
            self._delay_count = 0
            return False
        return bool(self._backlog_count) and len(self.queue) < self._backlog_count

    def _form(self, now: int) -> tuple[int, int, str]:
        """Triton's batch search: (requests to send now, or 0 and how long to wait; why it closed)."""
        count = rows = 0
        best_count = 0
        best_reason = ""
        stop_reason = ""
        first_key: Any = None
        oldest = now
        aged = False
        for entry in self.queue.ordered():
            if count == 0:
                first_key = entry.shape_key
            else:
                if rows + entry.size > self.max_preferred and not best_count:
                    best_count, best_reason = count, f"next request exceeds largest preferred size {self.max_preferred}"
                if rows + entry.size > self.max_batch:
                    stop_reason = f"max batch size {self.max_batch}"
                    break
                if entry.shape_key != first_key:
                    stop_reason = "shape change"
                    break
            rows += entry.size
            count += 1
            oldest = min(oldest, entry.enqueued_ns)
            aged = aged or entry.aged
            if rows in self.preferred:
                best_count, best_reason = count, f"preferred size {rows}"
        if not count:
            return 0, 0, ""
        waited = now - oldest
        expired = self.delay_ns > 0 and waited >= self.delay_ns
        suffix = " (priority aging)" if aged else ""
        if best_count and not expired:
            return best_count, 0, best_reason + suffix
        if stop_reason:
            return count, 0, stop_reason + suffix
        if expired:
            return count, 0, f"delay expired after {waited // 1000} us" + suffix
        if rows >= self.max_preferred:
            return count, 0, (f"preferred size {rows}" if rows in self.preferred else "max batch size") + suffix
        if self.delay_ns == 0:
            return count, 0, "no queue delay configured" + suffix
        if self._stopping:
            return count, 0, "model unloading"
        return 0, self.delay_ns - waited, ""

    def _launch(self, entries: list[Entry], reason: str) -> None:
        index = min(self._free)
        self._free.discard(index)
        runner = self.runners[index]
        requests = [entry.request for entry in entries]
        if self._orderer is not None:
            for request in requests:
                self._orderer.attach(request)
        if log.isEnabledFor(logging.DEBUG):  # asked per batch: the logging extension changes it at run time
            rows = sum(entry.size for entry in entries)
            log.debug(
                "batch for %s: %d requests, batch size %d, on instance '%s'; closed: %s",
                self.model, len(requests), rows, runner.name, reason,
            )
        if runner.can_run_now(requests):  # a fast synchronous instance: the batch runs right here
            try:
                runner.run_now(requests)
            finally:
                self._free.add(index)
            return
        task = asyncio.get_running_loop().create_task(self._run(index, runner, requests))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, index: int, runner: InstanceRunner, requests: list[InferenceRequest]) -> None:
        try:
            await runner.run(requests)
        finally:
            self._free.add(index)
            task = asyncio.current_task()
            if task is not None:
                self._running.discard(task)  # before the dispatcher looks again
            self._wake.set()

    async def stop(self) -> None:
        """Send everything queued (without waiting for the delay), let batches finish, end the dispatcher."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        self._task = None
