"""An ensemble checked against the configs of its composing models, once they are loaded.

Triton's ``ValidateEnsembleConfig`` with its messages: every step's maps name inputs and outputs its
model has, every required input is mapped, the batch sizes fit, and each ensemble tensor has one data
type and a compatible shape wherever it appears. The structure of the steps alone (tensors connected
from inputs to outputs) is checked with the rest of the config (``config.validate``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from conch._proto.model_config_pb2 import DataType, ModelConfig
from conch.errors import ConchError, ErrorCode

__all__ = ["check_composing", "cycle_error"]


@dataclass(frozen=True, slots=True)
class _Seen:
    """Where an ensemble tensor's data type and shape were first inferred from."""

    model: str
    data_type: int
    dims: tuple[int, ...]
    full_dims: tuple[int, ...]


def _seen(model: str, batching: bool, data_type: int, dims: Sequence[int]) -> _Seen:
    dims = tuple(int(d) for d in dims)
    return _Seen(model, data_type, dims, ((-1,) if batching else ()) + dims)


def _dims_match(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _dims_text(dims: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _consistent(first: _Seen, other: _Seen, prefix: str) -> None:
    if first.data_type != other.data_type:
        raise ConchError(
            f"{prefix}inconsistent data type: {DataType.Name(first.data_type)} is inferred from model {first.model} "
            f"while {DataType.Name(other.data_type)} is inferred from model {other.model}",
            ErrorCode.INVALID_ARG,
        )
    if not _dims_match(first.dims, other.dims) and not _dims_match(first.full_dims, other.full_dims):
        raise ConchError(
            f"{prefix}inconsistent shape: {_dims_text(first.full_dims)} is inferred from model {first.model} "
            f"while {_dims_text(other.full_dims)} is inferred from model {other.model}",
            ErrorCode.INVALID_ARG,
        )


def check_composing(config: ModelConfig, composing: Mapping[str, ModelConfig]) -> bool:
    """Raise ConchError (INVALID_ARG, Triton's text) when a step does not fit its model's config; return
    whether the ensemble is decoupled (a step's model is).

    ``composing`` holds the config of every step's model, by name.
    """
    name = config.name
    batching = config.max_batch_size > 0
    tensors: dict[str, _Seen] = {}
    for io in (*config.input, *config.output):
        dims = io.reshape.shape if io.HasField("reshape") else io.dims
        tensors[io.name] = _seen(name, batching, io.data_type, dims)
    for step in config.ensemble_scheduling.step:
        model = composing[step.model_name]
        step_name = step.model_name
        if model.max_batch_size != 0 and model.max_batch_size < config.max_batch_size:
            raise ConchError(
                f"ensemble {name} allows maximum batch size {config.max_batch_size}, but it contains model "
                f"{step_name} which only allows maximum batch size to be {model.max_batch_size}",
                ErrorCode.INVALID_ARG,
            )
        step_batching = model.max_batch_size > 0
        inputs = {inp.name: inp for inp in model.input}
        for model_input, tensor in step.input_map.items():
            if model_input not in inputs:
                raise ConchError(
                    f"in ensemble {name}, ensemble tensor {tensor} is mapping to non-existing input {model_input} "
                    f"in model {step_name}",
                    ErrorCode.INVALID_ARG,
                )
        for inp in model.input:
            mapped = [tensor for model_input, tensor in step.input_map.items() if model_input == inp.name]
            if not mapped:
                if inp.optional:
                    continue
                raise ConchError(
                    f"in ensemble {name}, input {inp.name} in model {step_name} is not mapped to any ensemble tensors",
                    ErrorCode.INVALID_ARG,
                )
            _record(tensors, mapped[0], _seen(step_name, step_batching, inp.data_type, inp.dims), name)
        outputs = {out.name: out for out in model.output}
        for model_output, tensor in step.output_map.items():
            out = outputs.get(model_output)
            if out is None:
                raise ConchError(
                    f"in ensemble {name}, ensemble tensor {tensor} is mapped from non-existing output {model_output} "
                    f"in model {step_name}",
                    ErrorCode.INVALID_ARG,
                )
            _record(tensors, tensor, _seen(step_name, step_batching, out.data_type, out.dims), name)
    return _decoupled_flow(config, composing)


def _decoupled_flow(config: ModelConfig, composing: Mapping[str, ModelConfig]) -> bool:
    """Label each ensemble tensor with the decoupled step it comes from (0: none); a step may not read
    tensors of different labels. True when some step is decoupled."""
    labels = {inp.name: 0 for inp in config.input}
    last = 0
    pending = list(config.ensemble_scheduling.step)
    while pending:
        ready = [step for step in pending if all(t in labels for t in step.input_map.values())]
        if not ready:
            break  # not connected: the structural validation reports it
        for step in ready:
            pending.remove(step)
            seen = {labels[t] for t in step.input_map.values()}
            if len(seen) > 1:
                raise ConchError(
                    f"in ensemble {config.name}, step of model '{step.model_name}' receives inputs originated from "
                    "different decoupled models",
                    ErrorCode.INVALID_ARG,
                )
            label = seen.pop() if seen else 0
            if composing[step.model_name].model_transaction_policy.decoupled:
                last += 1
                label = last
            for tensor in step.output_map.values():
                labels[tensor] = label
    return last > 0


def _record(tensors: dict[str, _Seen], tensor: str, seen: _Seen, ensemble: str) -> None:
    first = tensors.get(tensor)
    if first is None:
        tensors[tensor] = seen
    else:
        _consistent(first, seen, f"in ensemble {ensemble}, ensemble tensor {tensor}: ")


def cycle_error(name: str, calls: Mapping[str, Iterable[str]]) -> ConchError | None:
    """Triton's error when ensemble ``name`` reaches itself through ``calls`` (ensemble -> models it calls)."""
    path = [name]

    def walk(current: str, seen: set[str]) -> bool:
        for called in sorted(calls.get(current, ())):
            if called == name:
                return True
            if called not in seen and called in calls:
                seen.add(called)
                path.append(called)
                if walk(called, seen):
                    return True
                path.pop()
        return False

    if not walk(name, {name}):
        return None
    return ConchError(f"circular dependency between ensembles: {name} -> ... -> {path[-1]} -> {name}", ErrorCode.INVALID_ARG)
