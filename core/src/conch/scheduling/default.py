"""Triton's default scheduler: one queue per model version, each request to the next free instance."""

from __future__ import annotations

import asyncio
from collections import deque

from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferenceResponse
from conch.scheduling.base import Scheduler
from conch.scheduling.runner import InstanceRunner


class DefaultScheduler(Scheduler):
    """No batching across requests; several instances run at once.

    A request goes to an idle instance if there is one, else to an instance that takes more than one
    execution at a time (``ModelInstance.max_inflight``) and has room, else it waits in the queue,
    which each instance's runs drain in order as they finish.
    """

    def __init__(self, runners: list[InstanceRunner]) -> None:
        self.runners = runners
        self._waiting: deque[InferenceRequest] = deque()
        self._load = [0] * len(runners)  # executions handed to each runner and not finished
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = False
        self._turn = 0  # where the search for an idle runner starts

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def enqueue(self, request: InferenceRequest) -> None:
        if not self._accepting:
            raise ConchError("model is not accepting requests", ErrorCode.UNAVAILABLE)
        if not self._waiting:
            index = self._free_runner()
            if index is not None:
                runner = self.runners[index]
                batch = [request]
                if runner.can_run_now(batch):
                    # A fast synchronous instance executes it right here, on the event loop.
                    runner.run_now(batch)
                    return
                self._start(index, request)
                return
        self._waiting.append(request)

    def respond_now(self, request: InferenceRequest) -> InferenceResponse | None:
        """The response of a validated request, executed right here when nothing is queued and an idle
        instance of a concatenating backend runs fast batches on the event loop; else None (submit it)."""
        if not self._accepting or self._waiting:
            return None
        batch = [request]
        for runner in self.runners:
            if runner.concatenates and runner.can_run_now(batch):
                return runner.respond_now(request)
        return None

    def _free_runner(self) -> int | None:
        """The runner for one more execution, or None: an idle one, taken in turns as Triton's instance
        threads take the queue (each instance gets work), else the least loaded one with room whose
        executions are short (``InstanceRunner.takes_more``)."""
        load, count = self._load, len(self._load)
        best: int | None = None
        for step in range(count):
            index = (self._turn + step) % count
            if load[index] == 0:
                self._turn = index + 1
                return index
            runner = self.runners[index]
            if load[index] < runner.depth and runner.takes_more() and (best is None or load[index] < load[best]):
                best = index
        return best

    def _start(self, index: int, request: InferenceRequest) -> None:
        self._load[index] += 1
        task = asyncio.get_running_loop().create_task(self._drive(index, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self, index: int, request: InferenceRequest | None) -> None:
        """Run ``request`` on runner ``index``, then whatever waits, until nothing does."""
        runner = self.runners[index]
        try:
            while request is not None:
                await runner.run([request])
                request = self._next()
                if request is not None and self._waiting:
                    self._fill()  # an instance that has learnt its executions are short takes one more
        finally:
            self._load[index] -= 1

    def _fill(self) -> None:
        """Hand waiting requests to runners with room, oldest first."""
        while self._waiting:
            index = self._free_runner()
            if index is None:
                return
            request = self._next()
            if request is None:
                return
            self._start(index, request)

    def _next(self) -> InferenceRequest | None:
        """The oldest waiting request whose client has not gone."""
        waiting = self._waiting
        while waiting:
            request = waiting.popleft()
            if request.stream is None or not request.stream.cancelled:
                return request
        return None

    async def start(self) -> None:
        self._accepting = True

    async def stop(self) -> None:
        """Let every queued request run (requests may still arrive meanwhile), then stop accepting."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._accepting = False
