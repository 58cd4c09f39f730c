"""The runner executes fast, small batches on the event loop and everything else on the instance's thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from conch._proto import model_config_pb2 as mc
from conch.backend import Backend, Batching, InstanceContext, ModelContext, ModelInstance
from conch.inference import InferenceRequest, InferenceResponse, InferInput, RequestedOutput, ResponseStream
from conch.scheduling.runner import InstanceRunner


class ThreadRecorder(ModelInstance):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.threads: list[str] = []

    def execute(self, requests: list[InferenceRequest]) -> list[InferenceResponse]:
        self.threads.append(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        return [InferenceResponse() for _ in requests]


class RecorderBackend(Backend):
    name = "recorder"

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return ThreadRecorder(self.delay)


def _runner(delay: float, inline_us: str | None = None) -> InstanceRunner:
    config = mc.ModelConfig(name="m", max_batch_size=0)
    if inline_us is not None:
        config.parameters["inline_max_us"].string_value = inline_us
    model = ModelContext("m", 1, Path("/nonexistent"), config)
    return InstanceRunner(RecorderBackend(delay), InstanceContext(model, "m_0", "m", 0, "CPU"))


async def _run(runner: InstanceRunner, size: int = 4) -> None:
    request = InferenceRequest("m")
    request.inputs["X"] = InferInput("X", "UINT8", [size], np.zeros(size, np.uint8))
    request.stream = ResponseStream()
    await runner.run([request])
    assert (await request.stream.next()).error is None


async def test_fast_small_batches_go_inline_after_the_first() -> None:
    runner = _runner(delay=0)
    await runner.create()
    for _ in range(3):
        await _run(runner)
    threads = runner.instance.threads  # type: ignore[union-attr]
    assert threads[0].startswith("conch-m_0")  # first run: on the instance's thread, to measure it
    assert threads[1:] == [threading.current_thread().name] * 2
    await _run(runner, size=512 * 1024)  # too big to run inline, however fast
    assert threads[-1].startswith("conch-m_0")
    await runner.unload()


async def test_slow_or_disabled_stays_on_the_thread() -> None:
    for runner in (_runner(delay=0.002), _runner(delay=0, inline_us="0")):
        await runner.create()
        for _ in range(3):
            await _run(runner)
        assert all(t.startswith("conch-m_0") for t in runner.instance.threads)  # type: ignore[union-attr]
        await runner.unload()


def test_bad_threshold_is_a_clear_error() -> None:
    import pytest

    from conch.errors import ConchError

    with pytest.raises(ConchError, match="parameter 'inline_max_us' must be a non-negative integer, got 'soon'"):
        _runner(delay=0, inline_us="soon")


async def test_one_slow_execution_does_not_keep_a_fast_model_off_the_loop() -> None:
    runner = _runner(delay=0)
    await runner.create()
    instance = runner.instance
    assert isinstance(instance, ThreadRecorder)
    for _ in range(3):
        await _run(runner)
    instance.delay = 0.005  # preempted, say: once
    await _run(runner)
    instance.delay = 0
    for _ in range(3):
        await _run(runner)
    assert instance.threads[-1] == threading.current_thread().name
    await runner.unload()


class Doubler(ModelInstance):
    """A concatenating instance: OUTPUT0 = 2 * INPUT0; a negative first element makes it fail."""

    def execute_batch(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        array = inputs["INPUT0"]
        if array.flat[0] < 0:
            raise ValueError("negative input")
        return {"OUTPUT0": array * 2}


class DoublerBackend(Backend):
    name = "doubler"
    batching = Batching.CONCATENATE

    def create_instance(self, context: InstanceContext) -> ModelInstance:
        return Doubler()


async def test_respond_now_returns_the_response_and_counts_it() -> None:
    """The HTTP fast path's call: one request executed here, its response returned, statistics kept."""
    config = mc.ModelConfig(name="m", max_batch_size=4)
    config.output.add(name="OUTPUT0", data_type=mc.TYPE_FP32, dims=[2])
    runner = InstanceRunner(
        DoublerBackend(), InstanceContext(ModelContext("m", 1, Path("/nonexistent"), config), "m_0", "m", 0, "CPU")
    )
    await runner.create()
    assert runner.concatenates

    def request(first: float) -> InferenceRequest:
        made = InferenceRequest("m", id="r1", version_label="1")
        made.inputs["INPUT0"] = InferInput("INPUT0", "FP32", [1, 2], np.array([[first, 3]], np.float32))
        made.outputs.append(RequestedOutput("OUTPUT0"))
        made.batch_size = 1
        return made

    response = runner.respond_now(request(1))
    assert (response.model_name, response.model_version, response.id, response.error) == ("m", "1", "r1", None)
    assert [(t.name, t.datatype, t.data.tolist()) for t in response.outputs] == [("OUTPUT0", "FP32", [[2.0, 6.0]])]
    failed = runner.respond_now(request(-1))
    assert failed.error is not None and failed.error.message == "negative input" and not failed.outputs
    assert failed.id == "r1" and not runner.busy
    stats = runner.stats
    assert (stats.success.count, stats.fail.count, stats.execution_count, stats.inference_count) == (1, 1, 1, 1)
    await runner.unload()
