"""Model warmup: run a config's ``model_warmup`` samples on every instance before the model is READY.

Each sample's inputs are zeros, random values, or the raw row-major contents of
``<model>/warmup/<input_data_file>`` (BYTES elements with their 4-byte length prefix) for one batch
item, repeated ``batch_size`` times as Triton does. A sample runs ``count`` times (at least once) on
each instance; a failure fails the load with ``failed to run warmup sample '<name>': ...``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from conch.errors import ConchError, ErrorCode
from conch.inference import InferenceRequest, InferInput, ResponseStream
from conch.tensors import BY_CONFIG_NUMBER, DataType, deserialize_bytes, element_count
from conch.validation import Signature, validate

if TYPE_CHECKING:
    from conch._proto.model_config_pb2 import ModelConfig, ModelWarmup
    from conch.scheduling import InstanceRunner

__all__ = ["WarmupSample", "run_warmup", "warmup_samples"]

log = logging.getLogger("conch.warmup")

WARMUP_FOLDER = "warmup"


@dataclass(frozen=True)
class WarmupSample:
    """One ``model_warmup`` entry with its input arrays built."""

    name: str
    count: int
    inputs: dict[str, tuple[str, np.ndarray]]  # name -> (protocol datatype, array with batch dim if any)


def warmup_samples(config: ModelConfig, model_dir: Path) -> list[WarmupSample]:
    """Build every sample of ``config.model_warmup``; raises ConchError naming the sample and input."""
    return [_sample(config, warmup, model_dir) for warmup in config.model_warmup]


def _sample(config: ModelConfig, warmup: ModelWarmup, model_dir: Path) -> WarmupSample:
    name = warmup.name
    batched = config.max_batch_size > 0
    batch = max(int(warmup.batch_size), 1)
    if batched and batch > config.max_batch_size:
        raise _fail(name, f"batch_size {batch} is more than max_batch_size {config.max_batch_size}")
    inputs: dict[str, tuple[str, np.ndarray]] = {}
    rng = np.random.default_rng()
    for input_name, spec in sorted(warmup.inputs.items()):
        row = BY_CONFIG_NUMBER.get(spec.data_type)
        if row is None:
            raise _fail(name, f"input '{input_name}' has no valid data_type")
        dims = [int(d) for d in spec.dims]
        if any(d < 0 for d in dims):
            raise _fail(name, f"all variable-size dimensions of input '{input_name}' must be given in dims, got {dims}")
        choice = spec.WhichOneof("input_data_type")
        if choice == "zero_data":
            item = _zeros(row, dims)
        elif choice == "random_data":
            item = _random(row, dims, rng)
        elif choice == "input_data_file":
            item = _from_file(row, dims, model_dir / WARMUP_FOLDER / spec.input_data_file, name, input_name)
        else:
            raise _fail(name, f"input '{input_name}' needs one of zero_data, random_data or input_data_file")
        array = np.broadcast_to(item, (batch, *dims)).copy() if batched else item
        inputs[input_name] = (row.name, array)
    return WarmupSample(name, max(int(warmup.count), 1), inputs)


def _zeros(row: DataType, dims: list[int]) -> np.ndarray:
    if row.name == "BYTES":
        array = np.empty(dims, dtype=object)
        array.fill(b"")
        return array
    return np.zeros(dims, dtype=row.numpy)


def _random(row: DataType, dims: list[int], rng: np.random.Generator) -> np.ndarray:
    if row.name == "BYTES":
        array = np.empty(dims, dtype=object)
        array.fill(b"")
        return array
    if row.name == "BOOL":
        return rng.integers(0, 2, size=dims).astype(np.bool_)
    if row.numpy.kind == "f":
        return rng.random(size=dims).astype(row.numpy)
    return rng.integers(0, 8, size=dims).astype(row.numpy)  # small values: safe as indices, lengths, ids


def _from_file(row: DataType, dims: list[int], path: Path, sample: str, input_name: str) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(sample, f"cannot read input_data_file of input '{input_name}': {path}: {exc.strerror}") from None
    count = element_count(dims)
    if row.name == "BYTES":
        try:
            return deserialize_bytes(data, count, f"warmup input '{input_name}'").reshape(dims)
        except ValueError as exc:
            raise _fail(sample, f"{path}: {exc}") from None
    needed = count * row.itemsize
    if len(data) < needed:
        raise _fail(
            sample,
            f"input '{input_name}' expects {needed} bytes, but the data provided from {path} only has {len(data)} bytes",
        )
    return np.frombuffer(data[:needed], dtype=row.numpy).reshape(dims)


async def run_warmup(
    runners: list[InstanceRunner], samples: list[WarmupSample], model: str, signature: Signature
) -> None:
    """Run every sample ``count`` times on every instance; raise on the first failure."""
    for runner in runners:
        for sample in samples:
            for iteration in range(sample.count):
                log.info("'%s' is running warmup sample '%s' for iteration %d", runner.name, sample.name, iteration + 1)
                await _run_once(runner, sample, model, signature)


async def _run_once(runner: InstanceRunner, sample: WarmupSample, model: str, signature: Signature) -> None:
    request = InferenceRequest(model_name=model, id=f"warmup:{sample.name}")
    for name, (datatype, array) in sample.inputs.items():
        request.add_input(InferInput(name, datatype, list(array.shape), array))
    try:
        validate(request, signature)
    except ConchError as exc:
        raise _fail(sample.name, exc.message) from None
    stream = ResponseStream()
    request.stream = stream
    await runner.run([request], record=False)
    async for response in stream:
        if response.error is not None:
            raise _fail(sample.name, response.error.message)


def _fail(sample: str, detail: str) -> ConchError:
    return ConchError(f"failed to run warmup sample '{sample}': {detail}", ErrorCode.INVALID_ARG)
