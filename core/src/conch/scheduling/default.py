"""Triton's default scheduler: one queue per model version, each request to the next free instance."""

from __future__ import annotations

import asyncio
import contextlib

from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferenceResponse
from conch.scheduling.base import Scheduler
from conch.scheduling.runner import InstanceRunner


class DefaultScheduler(Scheduler):
    """No batching across requests; instances pull from a shared queue, so several run at once."""

    def __init__(self, runners: list[InstanceRunner]) -> None:
        self.runners = runners
        self._queue: asyncio.Queue[InferenceRequest | None] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def enqueue(self, request: InferenceRequest) -> None:
        if not self._workers:
            raise ConchError("model is not accepting requests", ErrorCode.UNAVAILABLE)
        if self._queue.empty():
            # Nothing waits ahead of it: an idle instance that runs fast batches on the event loop executes
            # it right here, without the hop through the queue and a worker task.
            batch = [request]
            for runner in self.runners:
                if runner.can_run_now(batch):
                    runner.run_now(batch)
                    return
        self._queue.put_nowait(request)

    def respond_now(self, request: InferenceRequest) -> InferenceResponse | None:
        """The response of a validated request, executed right here when nothing is queued and an idle
        instance of a concatenating backend runs fast batches on the event loop; else None (submit it)."""
        if not self._workers or not self._queue.empty():
            return None
        batch = [request]
        for runner in self.runners:
            if runner.concatenates and runner.can_run_now(batch):
                return runner.respond_now(request)
        return None

    async def start(self) -> None:
        self._workers = [asyncio.create_task(self._work(runner)) for runner in self.runners]

    async def _work(self, runner: InstanceRunner) -> None:
        while True:
            request = await self._queue.get()
            if request is None:
                return
            if request.stream is not None and request.stream.cancelled:
                continue
            await runner.run([request])

    async def stop(self) -> None:
        """Let every queued request run, then end the workers."""
        for _ in self._workers:
            self._queue.put_nowait(None)
        if self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._workers)
        self._workers = []
