"""The default scheduler: idle instances first, in turns; instances that take two executions at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from conch._proto import model_config_pb2 as mc
from conch.backend import Backend, InstanceContext, ModelContext, ModelInstance
from conch.errors import ConchError
from conch.inference import InferenceRequest, InferenceResponse, InferInput, ResponseStream
from conch.scheduling import runner as runner_module
from conch.scheduling.default import DefaultScheduler
from conch.scheduling.runner import InstanceRunner
from conch.stats import ModelStats


class InOrder(ModelInstance):
    """An async instance that runs what it is handed in order, one at a time, like a worker process
    reading its socket; it records how many executions it held at once."""

    def __init__(self, name: str, depth: int, delay: float, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.max_inflight = depth
        self.delay = delay
        self.log = log
        self.held = 0
        self.most_held = 0
        self._previous: asyncio.Future[None] | None = None

    async def execute(self, requests: list[InferenceRequest]) -> list[InferenceResponse]:  # type: ignore[override]
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        previous, done = self._previous, asyncio.get_running_loop().create_future()
        self._previous = done
        try:
            if previous is not None:
                await previous
            self.log.append((self.name, requests[0].id))
            await asyncio.sleep(self.delay)
            return [InferenceResponse() for _ in requests]
        finally:
            self.held -= 1
            done.set_result(None)


class InOrderBackend(Backend):
    name = "inorder"

    def __init__(self, depth: int, delay: float, log: list[tuple[str, str]]) -> None:
        super().__init__()
        self.depth, self.delay, self.log = depth, delay, log

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return InOrder(context.name, self.depth, self.delay, self.log)


async def _scheduler(
    instances: int, depth: int, delay: float = 0.01
) -> tuple[DefaultScheduler, list[tuple[str, str]], ModelStats]:
    log: list[tuple[str, str]] = []
    stats = ModelStats()
    model = ModelContext("m", 1, Path("/nonexistent"), mc.ModelConfig(name="m", max_batch_size=0))
    backend = InOrderBackend(depth, delay, log)
    runners = [InstanceRunner(backend, InstanceContext(model, f"m_{i}", "m", 0, "CPU"), stats) for i in range(instances)]
    for runner in runners:
        await runner.create()
    scheduler = DefaultScheduler(runners)
    await scheduler.start()
    return scheduler, log, stats


def _request(rid: str) -> InferenceRequest:
    request = InferenceRequest("m", id=rid)
    request.inputs["X"] = InferInput("X", "UINT8", [4], np.zeros(4, np.uint8))
    request.stream = ResponseStream()
    return request


async def _answered(requests: list[InferenceRequest]) -> None:
    for request in requests:
        assert request.stream is not None
        response = await asyncio.wait_for(request.stream.next(), 10)
        assert response.error is None, response.error


@pytest.fixture
def short(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test instance's executions (10-20 ms of sleep) count as short."""
    monkeypatch.setattr(runner_module, "PIPELINE_MAX_NS", 10**9)


async def _warm(scheduler: DefaultScheduler, log: list[tuple[str, str]]) -> None:
    """One execution per instance: the scheduler learns how long they take."""
    first = [_request(f"warm{i}") for i in range(len(scheduler.runners))]
    for request in first:
        scheduler.enqueue(request)
    await _answered(first)
    log.clear()


async def test_idle_instances_are_served_first_and_in_turns(short: None) -> None:
    scheduler, log, _ = await _scheduler(instances=2, depth=2)
    await _warm(scheduler, log)
    first = [_request("a"), _request("b")]
    for request in first:
        scheduler.enqueue(request)
    await _answered(first)
    assert sorted(log) == [("m_0", "a"), ("m_1", "b")]  # not both on m_0, though it takes two
    log.clear()
    for rid in "cdef":  # one at a time: each instance gets work
        request = _request(rid)
        scheduler.enqueue(request)
        await _answered([request])
    assert [name for name, _ in log] == ["m_0", "m_1", "m_0", "m_1"]
    await scheduler.stop()


async def test_an_instance_holds_at_most_its_depth_and_runs_everything_in_order(short: None) -> None:
    scheduler, log, _ = await _scheduler(instances=1, depth=2)
    await _warm(scheduler, log)
    requests = [_request(str(i)) for i in range(12)]
    for request in requests:
        scheduler.enqueue(request)
    assert scheduler.pending == 10  # two handed over, the rest waiting
    await _answered(requests)
    instance = scheduler.runners[0].instance
    assert isinstance(instance, InOrder)
    assert instance.most_held == 2
    assert [rid for _, rid in log] == [str(i) for i in range(12)]
    await scheduler.stop()


async def test_depth_one_is_the_default_and_never_overlaps() -> None:
    scheduler, _, _ = await _scheduler(instances=1, depth=1)
    requests = [_request(str(i)) for i in range(5)]
    for request in requests:
        scheduler.enqueue(request)
    assert scheduler.pending == 4
    await _answered(requests)
    instance = scheduler.runners[0].instance
    assert isinstance(instance, InOrder) and instance.most_held == 1
    await scheduler.stop()


async def test_long_executions_are_not_handed_over_early() -> None:
    """Executions longer than PIPELINE_MAX_NS (1 ms): requests wait in the shared queue, where the
    instance that frees first takes them."""
    scheduler, log, _ = await _scheduler(instances=1, depth=2, delay=0.01)
    await _warm(scheduler, log)
    requests = [_request(str(i)) for i in range(4)]
    for request in requests:
        scheduler.enqueue(request)
    assert scheduler.pending == 3  # one running, none committed behind it
    await _answered(requests)
    instance = scheduler.runners[0].instance
    assert isinstance(instance, InOrder) and instance.most_held == 1
    await scheduler.stop()


async def test_overlapping_runs_count_their_wait_as_queue_time_not_compute(short: None) -> None:
    scheduler, log, stats = await _scheduler(instances=1, depth=2, delay=0.02)
    await _warm(scheduler, log)
    stats.compute_infer.ns = stats.compute_infer.count = stats.queue.ns = 0
    requests = [_request(str(i)) for i in range(6)]
    began = time.monotonic_ns()
    for request in requests:
        scheduler.enqueue(request)
    await _answered(requests)
    wall = time.monotonic_ns() - began
    computed = stats.compute_infer.ns
    assert stats.compute_infer.count == 6
    # Six executions of 20 ms, one after another: compute adds up to about 120 ms, never to the
    # ~220 ms that counting each run from its hand-over would give.
    assert 0.10e9 <= computed <= wall + 5_000_000, (computed, wall)
    assert stats.queue.ns > 0
    await scheduler.stop()


async def test_cancelled_waiting_requests_are_dropped_and_stop_drains_the_rest(short: None) -> None:
    scheduler, log, _ = await _scheduler(instances=1, depth=2)
    await _warm(scheduler, log)
    requests = [_request(str(i)) for i in range(5)]
    for request in requests:
        scheduler.enqueue(request)
    assert requests[3].stream is not None
    requests[3].stream.cancelled = True  # waiting, never handed over
    await scheduler.stop()
    assert [rid for _, rid in log] == ["0", "1", "2", "4"]
    await _answered([requests[i] for i in (0, 1, 2, 4)])
    with pytest.raises(ConchError, match="not accepting requests"):
        scheduler.enqueue(_request("late"))
