"""The dynamic batcher in-process: batch formation, priorities, queue policies, ordering, unloading."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from conch._proto.model_config_pb2 import ModelConfig
from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferenceResponse, InferInput, RequestedOutput, ResponseStream
from conch.scheduling.dynamic import DynamicBatcher
from conch.scheduling.queues import PriorityQueue, QueuePolicy
from conch.stats import ModelStats


class FakeRunner:
    """Records the batches it is given; answers every request after ``delay`` seconds."""

    def __init__(self, name: str, delay: float = 0.0, inline: bool = False) -> None:
        self.name = name
        self.delay = delay
        self.inline = inline  # a fast synchronous instance: batches run in the dispatcher (run_now)
        self.ran_now = 0
        self.batches: list[list[str]] = []

    def can_run_now(self, requests: list[InferenceRequest]) -> bool:
        return self.inline

    def run_now(self, requests: list[InferenceRequest]) -> None:
        self.batches.append([r.id for r in requests])
        self.ran_now += 1
        for request in requests:
            request.respond(InferenceResponse())

    async def run(self, requests: list[InferenceRequest]) -> None:
        self.batches.append([r.id for r in requests])
        if self.delay:
            await asyncio.sleep(self.delay)
        for request in requests:
            request.respond(InferenceResponse())


def config(text: str, max_batch_size: int = 8, dims: str = "[ -1 ]", ragged: bool = False) -> ModelConfig:
    cfg = ModelConfig()
    text_format.Parse(
        f'name: "m" max_batch_size: {max_batch_size} '
        f'input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: {dims} allow_ragged_batch: {str(ragged).lower()} }} ] '
        f"dynamic_batching {{ {text} }}",
        cfg,
    )
    return cfg


def request(rid: str, rows: int = 1, width: int = 2, **parameters: Any) -> InferenceRequest:
    data = np.zeros((rows, width), dtype=np.float32)
    req = InferenceRequest("m", id=rid, parameters=dict(parameters))
    req.add_input(InferInput("INPUT0", "FP32", [rows, width], data))
    req.add_output(RequestedOutput("OUTPUT0"))
    req.batch_size = rows
    try:
        req.stream = ResponseStream(asyncio.get_running_loop())
    except RuntimeError:
        pass  # a queue-only test: no responses
    return req


def make(cfg: ModelConfig, runners: list[FakeRunner], monkeypatch: pytest.MonkeyPatch, hold: int = 0) -> DynamicBatcher:
    if hold:
        monkeypatch.setenv("TRITONSERVER_DELAY_SCHEDULER", str(hold))
    else:
        monkeypatch.delenv("TRITONSERVER_DELAY_SCHEDULER", raising=False)
    monkeypatch.delenv("TRITONSERVER_BACKLOG_DELAY_SCHEDULER", raising=False)
    return DynamicBatcher(runners, cfg, ModelStats())  # type: ignore[arg-type]


async def finish(batcher: DynamicBatcher, requests: list[InferenceRequest]) -> list[InferenceResponse]:
    responses = []
    for req in requests:
        assert req.stream is not None
        responses.append(await asyncio.wait_for(req.stream.next(), 5))
    await batcher.stop()
    return responses


def test_preferred_size_goes_at_once_then_the_rest_after_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> list[list[str]]:
        runner = FakeRunner("m_0")
        batcher = make(config("preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 100000"), [runner],
                       monkeypatch, hold=7)
        await batcher.start()
        reqs = [request(str(i)) for i in range(7)]
        for r in reqs:
            batcher.enqueue(r)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await finish(batcher, reqs)
        assert loop.time() - started >= 0.09  # the last request waited for the delay
        return runner.batches

    assert asyncio.run(main()) == [["0", "1", "2", "3"], ["4", "5"], ["6"]]


def test_max_batch_size_and_rows_count_not_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> list[list[str]]:
        runner = FakeRunner("m_0")
        batcher = make(config("max_queue_delay_microseconds: 1000"), [runner], monkeypatch, hold=3)
        await batcher.start()
        reqs = [request(str(i), rows=3) for i in range(3)]
        for r in reqs:
            batcher.enqueue(r)
        await finish(batcher, reqs)
        return runner.batches

    assert asyncio.run(main()) == [["0", "1"], ["2"]]


@pytest.mark.parametrize(("ragged", "expected"), [(False, [["0", "1"], ["2", "3"]]), (True, [["0", "1", "2", "3"]])])
def test_variable_shapes_split_batches_unless_ragged(
    monkeypatch: pytest.MonkeyPatch, ragged: bool, expected: list[list[str]]
) -> None:
    async def main() -> list[list[str]]:
        runner = FakeRunner("m_0")
        batcher = make(config("max_queue_delay_microseconds: 1000", ragged=ragged), [runner], monkeypatch, hold=4)
        await batcher.start()
        reqs = [request("0", width=2), request("1", width=2), request("2", width=3), request("3", width=3)]
        for r in reqs:
            batcher.enqueue(r)
        await finish(batcher, reqs)
        return runner.batches

    assert asyncio.run(main()) == expected


def test_no_delay_sends_what_is_queued_when_an_instance_frees(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> list[list[str]]:
        runner = FakeRunner("m_0", delay=0.05)
        batcher = make(config(""), [runner], monkeypatch)
        await batcher.start()
        first = request("0")
        batcher.enqueue(first)
        await asyncio.sleep(0.01)
        rest = [request(str(i)) for i in range(1, 4)]
        for r in rest:
            batcher.enqueue(r)
        await finish(batcher, [first, *rest])
        return runner.batches

    assert asyncio.run(main()) == [["0"], ["1", "2", "3"]]


def test_fast_synchronous_instances_run_batches_in_the_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """No task per batch for an instance that can run now; requests of one loop turn still share a batch."""

    async def main() -> tuple[list[list[str]], int]:
        runner = FakeRunner("m_0", inline=True)
        batcher = make(config(""), [runner], monkeypatch)
        await batcher.start()
        first = [request(str(i)) for i in range(3)]
        for r in first:
            batcher.enqueue(r)
        await asyncio.wait_for(first[-1].stream.next(), 5)  # type: ignore[union-attr]
        alone = request("3")
        batcher.enqueue(alone)
        await finish(batcher, [*first[:-1], alone])
        assert not batcher._running
        return runner.batches, runner.ran_now

    assert asyncio.run(main()) == ([["0", "1", "2"], ["3"]], 2)


def test_priority_levels_order_and_default_level(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> list[list[str]]:
        runner = FakeRunner("m_0")
        cfg = config("priority_levels: 3 default_priority_level: 2 preferred_batch_size: [ 1 ]", max_batch_size=1)
        batcher = make(cfg, [runner], monkeypatch, hold=5)
        await batcher.start()
        reqs = [request("low", priority=3), request("default"), request("high", priority=1),
                request("beyond", priority=9), request("high2", priority=1)]
        for r in reqs:
            batcher.enqueue(r)
        await finish(batcher, reqs)
        return runner.batches

    assert asyncio.run(main()) == [["high"], ["high2"], ["default"], ["beyond"], ["low"]]


def test_aging_keeps_a_low_priority_from_starving(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> tuple[list[list[str]], float]:
        runner = FakeRunner("m_0", delay=0.02)
        cfg = config("priority_levels: 2 default_priority_level: 1", max_batch_size=1)
        cfg.parameters["conch_priority_aging_ms"].string_value = "100"
        batcher = make(cfg, [runner], monkeypatch)
        await batcher.start()
        low = request("low", priority=2)
        batcher.enqueue(request("busy", priority=1))
        batcher.enqueue(low)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert low.stream is not None
        waiter = asyncio.ensure_future(low.stream.next())
        n = 0
        while not waiter.done() and loop.time() - started < 3:  # a steady stream of high-priority work
            n += 1
            batcher.enqueue(request(f"h{n}", priority=1))
            await asyncio.sleep(0.005)
        elapsed = loop.time() - started
        await batcher.stop()
        return runner.batches, elapsed

    batches, elapsed = asyncio.run(main())
    assert ["low"] in batches
    assert 0.1 <= elapsed < 1.0


def test_queue_policy_timeout_override_only_shortens() -> None:
    policy = QueuePolicy(default_timeout_us=1000, allow_timeout_override=True)
    assert policy.timeout_us(500) == 500
    assert policy.timeout_us(5000) == 1000
    assert policy.timeout_us(0) == 1000
    assert QueuePolicy(default_timeout_us=1000).timeout_us(500) == 1000
    assert QueuePolicy(allow_timeout_override=True).timeout_us(500) == 0  # Triton: no default, no timeout


def test_max_queue_size_rejects_with_triton_text(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        batcher = make(config("default_queue_policy { max_queue_size: 2 }"), [FakeRunner("m_0")], monkeypatch,
                       hold=100)
        await batcher.start()
        batcher.enqueue(request("0"))
        batcher.enqueue(request("1"))
        with pytest.raises(ConchError) as info:
            batcher.enqueue(request("2"))
        assert info.value.code is ErrorCode.UNAVAILABLE
        assert info.value.message == "[request id: 2] Exceeds maximum queue size"
        assert batcher.stats.failures["REJECTED"] == 1
        await batcher.stop()

    asyncio.run(main())


@pytest.mark.parametrize("action", ["REJECT", "DELAY"])
def test_timeout_reject_or_delay(monkeypatch: pytest.MonkeyPatch, action: str) -> None:
    async def main() -> tuple[list[list[str]], InferenceResponse, InferenceResponse]:
        runner = FakeRunner("m_0", delay=0.3)
        cfg = config(
            f"default_queue_policy {{ timeout_action: {action} default_timeout_microseconds: 10000000 "
            "allow_timeout_override: true }",
            max_batch_size=1,
        )
        batcher = make(cfg, [runner], monkeypatch)
        await batcher.start()
        first, short, later = request("first"), request("short", timeout=50000), request("later")
        batcher.enqueue(first)
        await asyncio.sleep(0.01)
        batcher.enqueue(short)
        await asyncio.sleep(0.1)
        batcher.enqueue(later)
        responses = await finish(batcher, [first, short, later])
        return runner.batches, responses[1], responses[2]

    batches, short, later = asyncio.run(main())
    assert later.error is None
    if action == "REJECT":
        assert short.error is not None and short.error.message == "Request timeout expired"
        assert short.error.code is ErrorCode.UNAVAILABLE
        assert batches == [["first"], ["later"]]
    else:
        assert short.error is None
        assert batches == [["first"], ["later"], ["short"]]  # expired requests go after the others


def test_preserve_ordering_holds_later_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    class SlowFirst(FakeRunner):
        async def run(self, requests: list[InferenceRequest]) -> None:
            await asyncio.sleep(0.2 if requests[0].id == "a" else 0.0)
            await super().run(requests)

    async def order(preserve: bool) -> list[str]:
        runners = [SlowFirst("m_0"), SlowFirst("m_1")]
        batcher = make(config(f"preserve_ordering: {str(preserve).lower()}", max_batch_size=1), runners, monkeypatch)
        await batcher.start()
        a, b = request("a"), request("b")
        seen: list[str] = []
        streams = {"a": a.stream, "b": b.stream}
        batcher.enqueue(a)
        batcher.enqueue(b)

        async def wait(name: str) -> None:
            stream = streams[name]
            assert stream is not None
            await stream.next()
            seen.append(name)

        await asyncio.gather(wait("a"), wait("b"))
        await batcher.stop()
        return seen

    assert asyncio.run(order(False)) == ["b", "a"]
    assert asyncio.run(order(True)) == ["a", "b"]


def test_cancelled_requests_are_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> tuple[list[list[str]], int]:
        runner = FakeRunner("m_0")
        batcher = make(config(""), [runner], monkeypatch)
        await batcher.start()
        gone, kept = request("gone"), request("kept")
        assert gone.stream is not None
        gone.stream.cancelled = True
        batcher.enqueue(gone)
        batcher.enqueue(kept)
        await finish(batcher, [kept])
        return runner.batches, batcher.stats.failures["CANCELED"]

    assert asyncio.run(main()) == ([["kept"]], 1)


def test_unload_sends_what_is_queued_without_waiting_for_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> float:
        runner = FakeRunner("m_0")
        batcher = make(config("max_queue_delay_microseconds: 10000000"), [runner], monkeypatch)
        await batcher.start()
        req = request("0")
        batcher.enqueue(req)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0.01)
        await batcher.stop()
        assert req.stream is not None and (await req.stream.next()).error is None
        with pytest.raises(ConchError):
            batcher.enqueue(request("late"))
        return loop.time() - started

    assert asyncio.run(main()) < 1.0


def test_priority_queue_levels_clamp_like_triton() -> None:
    cfg = config("priority_levels: 4 default_priority_level: 3")
    queue = PriorityQueue(cfg.dynamic_batching)
    assert queue.level_of(request("a", priority=0)) == 3
    assert queue.level_of(request("a", priority=2)) == 2
    assert queue.level_of(request("a", priority=5)) == 3
    assert PriorityQueue(config("").dynamic_batching).level_of(request("a", priority=2)) == 0


def test_backlog_delay_hook_holds_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRITONSERVER_BACKLOG_DELAY_SCHEDULER=n: each batch waits until n requests are queued (a test hook)."""

    async def main() -> list[list[str]]:
        runner = FakeRunner("m_0")
        batcher = make(config(""), [runner], monkeypatch)
        batcher._backlog_count = 2  # as read from the environment at load
        await batcher.start()
        first = request("0")
        batcher.enqueue(first)
        await asyncio.sleep(0.05)
        assert runner.batches == []  # held: one queued
        second = request("1")
        batcher.enqueue(second)
        await asyncio.wait_for(asyncio.gather(first.stream.next(), second.stream.next()), 5)  # type: ignore[union-attr]
        await batcher.stop()
        return runner.batches

    assert asyncio.run(main()) == [["0", "1"]]


def test_backlog_delay_hook_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> int:
        monkeypatch.setenv("TRITONSERVER_BACKLOG_DELAY_SCHEDULER", "3")
        return DynamicBatcher([], config(""), ModelStats())._backlog_count

    assert asyncio.run(main()) == 3


def test_cancelled_after_aging_or_delay_is_dropped_and_counted() -> None:
    """Requests moved ahead by aging, or parked by a DELAY timeout, still leave the queue when cancelled."""
    batching = config(
        "priority_levels: 2 default_priority_level: 2 "
        "default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 1000 }"
    ).dynamic_batching
    queue = PriorityQueue(batching, aging_ns=1_000)
    aged, delayed = request("aged"), request("delayed", priority=1)
    loop = asyncio.new_event_loop()
    aged.stream, delayed.stream = ResponseStream(loop), ResponseStream(loop)
    queue.push(aged, 1, None, now_ns=0)
    queue.push(delayed, 1, None, now_ns=0)
    queue.apply_policies(now_ns=2_000_000)  # aged past 1 µs; the other's 1 ms timeout expired: DELAY
    assert len(queue) == 2
    for req in (aged, delayed):
        assert req.stream is not None
        req.stream.cancelled = True
    rejected, cancelled = queue.apply_policies(now_ns=2_000_001)
    assert rejected == []
    assert sorted(e.request.id for e in cancelled) == ["aged", "delayed"]
    assert len(queue) == 0 and list(queue.ordered()) == []
    loop.close()
